//! The consumer Lambda: SQS batches → `casefeed::consumer` → partial batch failures.
//! Wiring only: every decision lives in the `casefeed` library.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use casefeed::consumer::{Consumer, InMessage, SqsWork};
use casefeed::{api::HttpApi, s3::S3Store};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use tracing::{error, info};

type App = Consumer<S3Store, HttpApi, SqsWork>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    casefeed::app::init_tracing();
    let sdk = casefeed::app::aws_config().await;
    let app = match casefeed::app::consumer_from_env(&sdk).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "consumer start-up failed");
            return Err(format!("consumer start-up failed: {e}").into());
        }
    };
    info!(concurrency = app.settings.concurrency, "consumer ready");
    let app = &app;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<SqsEvent>| {
        handle(app, ev.payload)
    }))
    .await
}

async fn handle(app: &App, event: SqsEvent) -> Result<SqsBatchResponse, Error> {
    let mut messages = Vec::with_capacity(event.records.len());
    let mut response = SqsBatchResponse::default();
    for r in event.records {
        let Some(message_id) = r.message_id.clone() else {
            // without an id the message cannot be reported: fail the batch so SQS retries
            return Err("an SQS record without messageId".into());
        };
        let receive_count = r
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let attributes = r
            .message_attributes
            .iter()
            .filter_map(|(k, v)| v.string_value.clone().map(|s| (k.clone(), s)))
            .collect();
        messages.push(InMessage {
            message_id,
            receipt_handle: r.receipt_handle.clone().unwrap_or_default(),
            body: r.body.clone().unwrap_or_default(),
            receive_count,
            attributes,
        });
    }
    let result = app.process_batch(messages).await;
    casefeed::metrics::emit_batch(&result.stats);
    info!(
        applied = result.stats.applied,
        duplicates = result.stats.duplicates,
        dead_lettered = result.stats.dead_lettered,
        retried = result.stats.retried,
        circuit_opened = result.stats.circuit_opened,
        "batch finished"
    );
    for id in result.failures {
        let mut f = BatchItemFailure::default();
        f.item_identifier = id;
        response.batch_item_failures.push(f);
    }
    Ok(response)
}
