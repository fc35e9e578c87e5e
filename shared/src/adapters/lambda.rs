//! Lambda events ↔ the core's types: an S3 event notification becomes [`ObjectEvent`]s (or
//! the reason a record is skipped), an SQS event becomes [`InMessage`]s, and the consumer's
//! [`BatchResult`] becomes the `SqsBatchResponse` that reports partial batch failures. The
//! binaries call [`handle_s3`] and [`handle_sqs`] and do nothing else.

use crate::consumer::{BatchResult, Consumer, InMessage};
use crate::contract::event::{decode_s3_key, ObjectEvent};
use crate::ports::api::Api;
use crate::ports::gate::GateTable;
use crate::ports::ledger::LedgerTable;
use crate::ports::queue::{MessageQueue, WorkQueue};
use crate::ports::store::ObjectStore;
use crate::splitter::{Outcome, SplitError, Splitter};
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::BatchItemFailure;
/// The event types the binaries name, re-exported so they need no Lambda-events dependency.
pub use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use serde_json::{json, Value};
use tracing::{error, info, warn};

/// An invocation the function cannot take: it fails, so Lambda records it.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Neither an S3 event notification nor S3's test event.
    #[error("unsupported event: expected an S3 event notification with `Records`")]
    Unsupported,
    /// `Records` is there, but not in the shape of an S3 event notification.
    #[error("malformed S3 event notification: {0}")]
    Malformed(String),
    /// An SQS record without `messageId` cannot be reported as a failure on its own.
    #[error("an SQS record without messageId")]
    NoMessageId,
    /// At least one object failed; the first failure is named (Lambda retries the event).
    #[error("{key}: {error}")]
    Object {
        /// The object whose processing failed first.
        key: String,
        /// Why it failed.
        error: SplitError,
    },
}

/// What one record of an S3 event asks of the splitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Record {
    /// An object to process.
    Object(ObjectEvent),
    /// A record that is not the splitter's to process, and why (logged, not an error).
    Skip {
        /// The decoded key, when the record has a usable one.
        key: Option<String>,
        /// Why it is skipped.
        reason: &'static str,
    },
}

/// The records of an S3 invocation; `None` for S3's `s3:TestEvent` (sent when a bucket's
/// notification is configured), which is acknowledged and ignored.
pub fn s3_records(payload: Value) -> Result<Option<Vec<S3Record>>, EventError> {
    if payload.get("Records").is_none() {
        if payload.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
            return Ok(None);
        }
        return Err(EventError::Unsupported);
    }
    let event: S3Event =
        serde_json::from_value(payload).map_err(|e| EventError::Malformed(e.to_string()))?;
    Ok(Some(event.records.into_iter().map(s3_record).collect()))
}

fn s3_record(record: aws_lambda_events::event::s3::S3EventRecord) -> S3Record {
    let event_name = record.event_name.clone().unwrap_or_default();
    let object = record.s3.object;
    let (Some(bucket), Some(raw_key)) = (record.s3.bucket.name, object.key) else {
        return S3Record::Skip {
            key: None,
            reason: "record without bucket or key",
        };
    };
    let Some(key) = decode_s3_key(&raw_key) else {
        return S3Record::Skip {
            key: None,
            reason: "key is not valid URL-encoded UTF-8",
        };
    };
    if !event_name.is_empty() && !event_name.starts_with("ObjectCreated:") {
        return S3Record::Skip {
            key: Some(key),
            reason: "not an ObjectCreated event",
        };
    }
    S3Record::Object(ObjectEvent {
        bucket,
        key,
        etag: object.e_tag.filter(|s| !s.is_empty()),
        version_id: object.version_id.filter(|s| !s.is_empty()),
        sequencer: object.sequencer.filter(|s| !s.is_empty()),
        size: object.size.and_then(|s| u64::try_from(s).ok()),
        event_name: Some(event_name),
        event_time: (record.event_time.timestamp() > 0).then(|| {
            record
                .event_time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
    })
}

/// The splitter's invocation: every record processed in turn; the answer lists each
/// record's result. Any failed record fails the invocation, so Lambda retries the event
/// (records already done are no-ops the second time) and, after its retries, the on-failure
/// destination keeps it.
pub async fn handle_s3<S: ObjectStore, Q: MessageQueue>(
    app: &Splitter<S, Q>,
    payload: Value,
) -> Result<Value, EventError> {
    let Some(records) = s3_records(payload)? else {
        info!("ignored the S3 test event");
        return Ok(json!({"results": [], "ignored": "s3:TestEvent"}));
    };
    let mut results = Vec::new();
    let mut first_error: Option<EventError> = None;
    for record in records {
        let ev = match record {
            S3Record::Skip { key, reason } => {
                warn!(key, reason, "skipped a record");
                results.push(json!({"key": key, "skipped": reason}));
                continue;
            }
            S3Record::Object(ev) => ev,
        };
        match app.process(&ev).await {
            Ok(outcome) => results.push(outcome_json(&outcome)),
            Err(e) => {
                error!(key = ev.key, retryable = e.retryable(), error = %e, "processing failed");
                results.push(
                    json!({"key": ev.key, "error": e.to_string(), "retryable": e.retryable()}),
                );
                if first_error.is_none() {
                    first_error = Some(EventError::Object {
                        key: ev.key.clone(),
                        error: e,
                    });
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(json!({ "results": results })),
    }
}

/// One processed record as the splitter's answer shows it (counts and names, no values).
fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Skipped { key, reason } => {
            info!(key, reason, "skipped");
            json!({"key": key, "skipped": reason})
        }
        Outcome::Report(r) => json!({
            "key": r.source.key, "feed": r.feed, "run": r.run, "status": r.status,
            "reason": r.reason, "counts": r.counts, "schema": r.schema,
            "guards": r.guards, "held": r.held,
        }),
    }
}

/// The messages of an SQS event.
pub fn in_messages(event: SqsEvent) -> Result<Vec<InMessage>, EventError> {
    let mut messages = Vec::with_capacity(event.records.len());
    for r in event.records {
        // without an id the message cannot be reported: fail the batch so SQS retries it
        let message_id = r.message_id.ok_or(EventError::NoMessageId)?;
        let receive_count = r
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let sent_timestamp_ms = r
            .attributes
            .get("SentTimestamp")
            .and_then(|v| v.parse().ok());
        let attributes = r
            .message_attributes
            .into_iter()
            .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
            .collect();
        messages.push(InMessage {
            message_id,
            receipt_handle: r.receipt_handle.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
            receive_count,
            attributes,
            sent_timestamp_ms,
        });
    }
    Ok(messages)
}

/// The partial batch response: the messages to retry.
pub fn batch_response(result: &BatchResult) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for id in &result.failures {
        let mut f = BatchItemFailure::default();
        f.item_identifier = id.clone();
        response.batch_item_failures.push(f);
    }
    response
}

/// The consumer's invocation: the batch processed by the invocation's deadline (Unix
/// epoch ms, from the Lambda context; 0: none), its metrics emitted, the messages to retry
/// reported.
pub async fn handle_sqs<L: LedgerTable, G: GateTable, A: Api, Q: WorkQueue>(
    app: &Consumer<L, G, A, Q>,
    event: SqsEvent,
    deadline_ms: u64,
) -> Result<SqsBatchResponse, EventError> {
    let messages = in_messages(event)?;
    let deadline = (deadline_ms > 0).then(|| {
        let left = deadline_ms as i64 - chrono::Utc::now().timestamp_millis();
        tokio::time::Instant::now() + std::time::Duration::from_millis(left.max(0) as u64)
    });
    let result = app.process_batch_until(messages, deadline).await;
    crate::metrics::emit_batch(&result);
    info!(
        applied = result.stats.applied,
        duplicates = result.stats.duplicates,
        superseded = result.stats.superseded,
        dead_lettered = result.stats.dead_lettered,
        retried = result.stats.retried,
        unfinished = result.stats.unfinished,
        circuit_opened = result.stats.circuit_opened,
        "batch finished"
    );
    Ok(batch_response(&result))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S3_PUT: &str = include_str!("../../../events/s3-put.json");
    const SQS_BATCH: &str = include_str!("../../../events/sqs-batch.json");

    #[test]
    fn the_sample_s3_event_becomes_one_object_event() {
        let records = s3_records(serde_json::from_str(S3_PUT).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            records,
            vec![S3Record::Object(ObjectEvent {
                bucket: "casefeed-local".into(),
                key: "incoming/lab_results/export-0002.csv".into(),
                etag: Some("7e1c5d0a9b3f4e2d8c6a1b0f9e8d7c6b-13".into()),
                version_id: None,
                sequencer: Some("0067C6D6BF4A1E2B37".into()),
                size: Some(104_857_342),
                event_name: Some("ObjectCreated:Put".into()),
                event_time: Some("2025-03-04T10:30:07.412Z".into()),
            })]
        );
    }

    #[test]
    fn keys_are_decoded_and_foreign_records_skipped() {
        let mut v: Value = serde_json::from_str(S3_PUT).unwrap();
        let mut second = v["Records"][0].clone();
        v["Records"][0]["s3"]["object"]["key"] = json!("incoming/lab_results/export+1%2B2.csv");
        v["Records"][0]["s3"]["object"]["versionId"] = json!("3HL4kqtJvjVBH40Nrjfkd");
        second["eventName"] = json!("ObjectRemoved:Delete");
        let mut third = second.clone();
        third["eventName"] = json!("ObjectCreated:Put");
        third["s3"]["object"]["key"] = json!("bad%FF");
        v["Records"].as_array_mut().unwrap().extend([second, third]);
        let records = s3_records(v).unwrap().unwrap();
        let S3Record::Object(ev) = &records[0] else {
            panic!("{records:?}")
        };
        assert_eq!(ev.key, "incoming/lab_results/export 1+2.csv");
        assert_eq!(ev.version_id.as_deref(), Some("3HL4kqtJvjVBH40Nrjfkd"));
        assert_eq!(
            records[1],
            S3Record::Skip {
                key: Some("incoming/lab_results/export-0002.csv".into()),
                reason: "not an ObjectCreated event"
            }
        );
        assert_eq!(
            records[2],
            S3Record::Skip {
                key: None,
                reason: "key is not valid URL-encoded UTF-8"
            }
        );
    }

    #[test]
    fn the_test_event_is_ignored_and_other_payloads_refused() {
        let test = json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"});
        assert!(s3_records(test).unwrap().is_none());
        assert!(matches!(
            s3_records(json!({"hello": 1})),
            Err(EventError::Unsupported)
        ));
        assert!(matches!(
            s3_records(json!({"Records": "nope"})),
            Err(EventError::Malformed(_))
        ));
    }

    #[test]
    fn the_sample_sqs_batch_becomes_three_messages() {
        let event: SqsEvent = serde_json::from_str(SQS_BATCH).unwrap();
        let messages = in_messages(event).unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[0].message_id,
            "5b0e7a3c-0001-4f6e-9a21-000000000001"
        );
        assert_eq!(
            messages[0].receipt_handle,
            "AQEB5b0e7a3c00014f6e9a21000000000001LOCALSAMPLE"
        );
        assert_eq!(messages[0].receive_count, 1);
        assert_eq!(messages[0].attributes["feed"], "lab_results");
        assert!(messages[0].body.starts_with("{\"v\":2,"));
        assert!(crate::contract::envelope::Envelope::decode(&messages[0].body).is_ok());
        assert!(crate::contract::envelope::Envelope::decode(&messages[1].body).is_err());
    }

    #[test]
    fn an_sqs_record_without_an_id_fails_the_batch() {
        let mut v: Value = serde_json::from_str(SQS_BATCH).unwrap();
        v["Records"][1].as_object_mut().unwrap().remove("messageId");
        let event: SqsEvent = serde_json::from_value(v).unwrap();
        assert!(matches!(in_messages(event), Err(EventError::NoMessageId)));
    }

    #[test]
    fn only_retried_messages_are_reported_as_failures() {
        let result = BatchResult {
            failures: vec!["m2".into(), "m3".into()],
            ..BatchResult::default()
        };
        let response = batch_response(&result);
        let ids: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(ids, ["m2", "m3"]);
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(json["batchItemFailures"][0]["itemIdentifier"], "m2");
    }
}
