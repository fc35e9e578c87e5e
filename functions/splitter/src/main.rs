//! The splitter Lambda: S3 `ObjectCreated` events → `casefeed::splitter`.
//! Wiring only: every decision lives in the `casefeed` library.

use aws_lambda_events::event::s3::S3Event;
use casefeed::event::{decode_s3_key, ObjectEvent};
use casefeed::splitter::{Outcome, Splitter};
use casefeed::{queue::SqsQueue, s3::S3Store};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use tracing::{error, info, warn};

type App = Splitter<S3Store, SqsQueue>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    casefeed::app::init_tracing();
    let sdk = casefeed::app::aws_config().await;
    let app = match casefeed::app::splitter_from_env(&sdk).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "splitter start-up failed");
            return Err(format!("splitter start-up failed: {e}").into());
        }
    };
    info!(feeds = app.config.feeds.len(), "splitter ready");
    let app = &app;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| {
        handle(app, ev.payload)
    }))
    .await
}

async fn handle(app: &App, payload: Value) -> Result<Value, Error> {
    if payload.get("Records").is_none() {
        if payload.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
            info!("ignored the S3 test event");
            return Ok(json!({"results": [], "ignored": "s3:TestEvent"}));
        }
        return Err("unsupported event: expected an S3 event notification with `Records`".into());
    }
    let event: S3Event = serde_json::from_value(payload)
        .map_err(|e| format!("malformed S3 event notification: {e}"))?;
    let mut results = Vec::new();
    let mut first_error: Option<String> = None;
    for record in event.records {
        let event_name = record.event_name.clone().unwrap_or_default();
        let (Some(bucket), Some(raw_key)) =
            (record.s3.bucket.name.clone(), record.s3.object.key.clone())
        else {
            warn!(event_name, "skipped a record without bucket or key");
            results.push(json!({"skipped": "record without bucket or key"}));
            continue;
        };
        let Some(key) = decode_s3_key(&raw_key) else {
            warn!(
                bucket,
                "skipped a record whose key is not valid URL-encoded UTF-8"
            );
            results.push(json!({"skipped": "key is not valid URL-encoded UTF-8"}));
            continue;
        };
        if !event_name.is_empty() && !event_name.starts_with("ObjectCreated:") {
            info!(key, event_name, "skipped: not an ObjectCreated event");
            results.push(json!({"key": key, "skipped": "not an ObjectCreated event"}));
            continue;
        }
        let ev = ObjectEvent {
            bucket,
            key,
            etag: record.s3.object.e_tag.clone().filter(|s| !s.is_empty()),
            version_id: record
                .s3
                .object
                .version_id
                .clone()
                .filter(|s| !s.is_empty()),
            sequencer: record.s3.object.sequencer.clone().filter(|s| !s.is_empty()),
            size: record.s3.object.size.and_then(|s| u64::try_from(s).ok()),
            event_name: Some(event_name),
            event_time: (record.event_time.timestamp() > 0).then(|| {
                record
                    .event_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }),
        };
        match app.process(&ev).await {
            Ok(Outcome::Skipped { key, reason }) => {
                info!(key, reason, "skipped");
                results.push(json!({"key": key, "skipped": reason}));
            }
            Ok(Outcome::Report(r)) => results.push(json!({
                "key": r.source.key, "feed": r.feed, "run": r.run, "status": r.status,
                "reason": r.reason, "counts": r.counts, "schema": r.schema,
                "guards": r.guards, "held": r.held,
            })),
            Err(e) => {
                error!(key = ev.key, retryable = e.retryable(), error = %e, "processing failed");
                results.push(
                    json!({"key": ev.key, "error": e.to_string(), "retryable": e.retryable()}),
                );
                first_error.get_or_insert_with(|| format!("{}: {e}", ev.key));
            }
        }
    }
    match first_error {
        // Fail the invocation: Lambda retries the event (records already done are no-ops
        // the second time) and, after its retries, the on-failure destination keeps it.
        Some(e) => Err(e.into()),
        None => Ok(json!({ "results": results })),
    }
}
