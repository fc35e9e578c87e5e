//! The splitter Lambda: S3 `ObjectCreated` events → `casefeed::splitter`.
//! Wiring only: the event translation and every decision live in the `casefeed` library.

use casefeed::adapters::{env, lambda};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;
use tracing::{error, info};

#[tokio::main]
async fn main() -> Result<(), Error> {
    env::init_tracing();
    let sdk = env::aws_config().await;
    let app = match env::splitter_from_env(&sdk).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "splitter start-up failed");
            return Err(format!("splitter start-up failed: {e}").into());
        }
    };
    info!(feeds = app.config.feeds.len(), "splitter ready");
    let app = &app;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| async move {
        lambda::handle_s3(app, ev.payload)
            .await
            .map_err(Error::from)
    }))
    .await
}
