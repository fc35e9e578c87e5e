//! The consumer Lambda: SQS batches → `casefeed::consumer` → partial batch failures.
//! Wiring only: the event translation and every decision live in the `casefeed` library.

use casefeed::adapters::env;
use casefeed::adapters::lambda::{self, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use tracing::{error, info};

#[tokio::main]
async fn main() -> Result<(), Error> {
    env::init_tracing();
    let sdk = env::aws_config().await;
    let app = match env::consumer_from_env(&sdk).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "consumer start-up failed");
            return Err(format!("consumer start-up failed: {e}").into());
        }
    };
    info!(concurrency = app.settings.concurrency, "consumer ready");
    let app = &app;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<SqsEvent>| async move {
        lambda::handle_sqs(app, ev.payload, ev.context.deadline)
            .await
            .map_err(Error::from)
    }))
    .await
}
