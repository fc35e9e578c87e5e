//! `casefeed failures list|retry`: the splitter-failures queue.
//!
//! The splitter is invoked asynchronously by S3 notifications; when an invocation still
//! fails after Lambda's retries (`MaximumRetryAttempts: 2` in template.yaml), Lambda's
//! on-failure destination puts an *invocation record* into `<stack>-splitter-failures`:
//!
//! ```text
//! {"version":"1.0","timestamp":…,
//!  "requestContext":{"requestId":…,"functionArn":…,"condition":"RetriesExhausted","approximateInvokeCount":3},
//!  "requestPayload":{<the original S3 event>},
//!  "responseContext":{"statusCode":200,"executedVersion":"$LATEST","functionError":"Unhandled"},
//!  "responsePayload":{"errorType":…,"errorMessage":…}}
//! ```
//!
//! `list` shows each record's context, error and the S3 objects of its event (bucket, key,
//! version) — an S3 event holds no row values. `retry` re-invokes the splitter function
//! asynchronously (`Invoke`, `InvocationType=Event`) with the original event (the
//! `requestPayload`; a message that is itself an S3 event is sent as it is), and deletes the
//! record only after Lambda accepted the invocation. Re-processing is safe: the splitter
//! finds a file it already committed `noop`, and re-sent rows carry the same idempotency
//! keys. The function comes from `--function` / `SPLITTER_FUNCTION_NAME` (the stack output
//! `SplitterFunctionName`); Lambda's endpoint, like every client's, from the standard AWS
//! configuration (`AWS_ENDPOINT_URL_LAMBDA` aims it at a local Runtime Interface Emulator,
//! whose function is named `function`).

use crate::audit::{AuditLog, AuditRecord, Counts, MessageEntry};
use crate::ops::queue::{self, Msg, SqsError, Walk};
use crate::ops::{caller, print_json, progress, reason, sdk_message, OutputError};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct FailuresArgs {
    #[command(subcommand)]
    pub command: FailuresCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum FailuresCommand {
    /// List the failed splitter invocations: when, why, and which uploads (nothing is
    /// consumed).
    List {
        #[arg(long, env = "SPLITTER_FAILURES_QUEUE_URL")]
        failures_queue_url: String,
        /// At most this many messages.
        #[arg(long, alias = "max", default_value_t = 10_000)]
        limit: usize,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-invoke the splitter with each failed invocation's original S3 event, then delete
    /// the record.
    Retry {
        #[arg(long, env = "SPLITTER_FAILURES_QUEUE_URL")]
        failures_queue_url: String,
        /// The splitter function (name or ARN).
        #[arg(long, env = "SPLITTER_FUNCTION_NAME")]
        function: Option<String>,
        /// At most this many messages.
        #[arg(long, alias = "max")]
        limit: Option<usize>,
        /// Change nothing; say what would be retried (no audit record).
        #[arg(long)]
        dry_run: bool,
        /// Why (written to the audit record).
        #[arg(long)]
        reason: String,
        /// The data bucket the audit record goes to.
        #[arg(long, env = "DATA_BUCKET")]
        bucket: Option<String>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FailuresError {
    #[error(transparent)]
    Sqs(#[from] SqsError),
    #[error("--reason must say why (it goes to the audit record)")]
    NoReason,
    #[error(
        "failures retry writes an audit record: give the data bucket with --bucket or DATA_BUCKET"
    )]
    NoAuditBucket,
    #[error("failures retry needs the splitter function: --function or SPLITTER_FUNCTION_NAME (the stack output SplitterFunctionName)")]
    NoFunction,
    #[error("failures retry stopped after {done} of {matched} message(s), {failed} failed: {error}{}", key.as_ref().map(|k| format!(" (audit record {k})")).unwrap_or_default())]
    Stopped {
        done: usize,
        matched: usize,
        failed: usize,
        error: String,
        key: Option<String>,
    },
    #[error("failures retry did its work ({done} message(s)) but its audit record was not written: {source}")]
    AuditNotWritten {
        done: usize,
        #[source]
        source: crate::audit::AuditError,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// An S3 object an event names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    pub bucket: String,
    /// As the event spells it (URL-encoded, `+` for a space).
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
}

/// What a splitter-failures message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A Lambda on-failure destination record (the original event in `requestPayload`).
    InvocationRecord,
    /// An S3 event notification itself.
    S3Event,
    /// Neither: it cannot be retried by this command.
    Unknown,
}

/// One failed splitter invocation, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitterFailure {
    pub message_id: String,
    pub kind: Kind,
    pub receive_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// When the invocation failed (the record's `timestamp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// `RetriesExhausted`, `EventAgeExceeded`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approximate_invoke_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The function's error message (the splitter's messages hold no row values), at most
    /// 300 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    pub objects: Vec<ObjectRef>,
}

/// The event to re-invoke the splitter with, and what kind of message held it.
pub fn payload(body: &str) -> (Kind, Option<Value>) {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return (Kind::Unknown, None);
    };
    if let Some(p) = v.get("requestPayload").filter(|p| is_s3_event(p)) {
        return (Kind::InvocationRecord, Some(p.clone()));
    }
    if is_s3_event(&v) {
        return (Kind::S3Event, Some(v));
    }
    (Kind::Unknown, None)
}

fn is_s3_event(v: &Value) -> bool {
    v.get("Records")
        .and_then(Value::as_array)
        .is_some_and(|rs| !rs.is_empty() && rs.iter().all(|r| r.get("s3").is_some()))
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().map(str::to_string)
}

/// The listing of one message.
pub fn describe(m: &Msg) -> SplitterFailure {
    let v: Value = serde_json::from_str(&m.body).unwrap_or(Value::Null);
    let (kind, event) = payload(&m.body);
    let objects = event
        .as_ref()
        .and_then(|e| e.get("Records"))
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .map(|r| ObjectRef {
                    bucket: text(r, &["s3", "bucket", "name"]).unwrap_or_default(),
                    key: text(r, &["s3", "object", "key"]).unwrap_or_default(),
                    version_id: text(r, &["s3", "object", "versionId"]),
                    event_time: text(r, &["eventTime"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let error_message = text(&v, &["responsePayload", "errorMessage"])
        .map(|s| s.chars().take(300).collect::<String>());
    SplitterFailure {
        message_id: m.message_id.clone(),
        kind,
        receive_count: m.receive_count,
        sent_at: m.sent_timestamp_ms.and_then(queue::rfc3339_ms),
        timestamp: text(&v, &["timestamp"]),
        condition: text(&v, &["requestContext", "condition"]),
        approximate_invoke_count: v
            .get("requestContext")
            .and_then(|c| c.get("approximateInvokeCount"))
            .and_then(Value::as_u64),
        function_arn: text(&v, &["requestContext", "functionArn"]),
        request_id: text(&v, &["requestContext", "requestId"]),
        error_type: text(&v, &["responsePayload", "errorType"])
            .or_else(|| text(&v, &["responseContext", "functionError"])),
        error_message,
        objects,
    }
}

/// Read the failures queue without consuming it.
pub async fn list(
    client: &aws_sdk_sqs::Client,
    url: &str,
    limit: usize,
) -> Result<Vec<SplitterFailure>, FailuresError> {
    let total = queue::visible(client, url).await?;
    let mut walk = Walk::new(
        client,
        url,
        30,
        progress(total, "reading splitter failures"),
    );
    let mut out = Vec::new();
    let result = loop {
        if out.len() >= limit {
            break Ok(());
        }
        match walk.next().await {
            Ok(Some(batch)) => {
                for m in batch {
                    walk.keep(&m);
                    if out.len() < limit {
                        out.push(describe(&m));
                    }
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    walk.finish().await;
    result?;
    Ok(out)
}

/// One message a retry handled.
#[derive(Debug, Clone, Serialize)]
pub struct Retried {
    pub failure: SplitterFailure,
    /// `retried`, `would retry`, `skipped: …` or `failed: …`.
    pub outcome: String,
}

/// What a retry did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetryReport {
    pub matched: usize,
    pub done: Vec<Retried>,
    /// Failed (left in the queue).
    pub failed: Vec<Retried>,
    /// Not retryable (neither an invocation record nor an S3 event): left in the queue.
    pub skipped: Vec<Retried>,
    pub would: Vec<Retried>,
    pub stopped: Option<String>,
}

/// Re-invoke `function` with each message's event (at most `limit`); delete a message only
/// after Lambda accepted its invocation.
pub async fn retry(
    sqs: &aws_sdk_sqs::Client,
    lambda: Option<(&aws_sdk_lambda::Client, &str)>,
    url: &str,
    limit: Option<usize>,
) -> RetryReport {
    let mut rep = RetryReport::default();
    let total = queue::visible(sqs, url).await.unwrap_or(0);
    let dry_run = lambda.is_none();
    let visibility = if dry_run { 30 } else { 300 };
    let mut walk = Walk::new(sqs, url, visibility, progress(total, "retrying"));
    'walk: loop {
        if limit.is_some_and(|n| rep.matched >= n) {
            break;
        }
        let batch = match walk.next().await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                rep.stopped = Some(e.to_string());
                break;
            }
        };
        for m in batch {
            if limit.is_some_and(|n| rep.matched >= n) {
                walk.keep(&m);
                continue;
            }
            rep.matched += 1;
            let failure = describe(&m);
            let (_, event) = payload(&m.body);
            let Some(event) = event else {
                walk.keep(&m);
                rep.skipped.push(Retried {
                    failure,
                    outcome: "skipped: neither an invocation record nor an S3 event".into(),
                });
                continue;
            };
            let Some((client, function)) = lambda else {
                walk.keep(&m);
                rep.would.push(Retried {
                    failure,
                    outcome: "would retry".into(),
                });
                continue;
            };
            if let Err(e) = invoke(client, function, &event).await {
                walk.keep(&m);
                rep.failed.push(Retried {
                    failure,
                    outcome: format!("failed: {e}"),
                });
                rep.stopped = Some(e);
                break 'walk;
            }
            match queue::delete(sqs, url, &[&m]).await {
                Ok(o) if o.first().is_some_and(Result::is_ok) => rep.done.push(Retried {
                    failure,
                    outcome: "retried".into(),
                }),
                other => {
                    let why = match other {
                        Ok(o) => o
                            .into_iter()
                            .find_map(Result::err)
                            .unwrap_or_else(|| "no answer".into()),
                        Err(e) => e.to_string(),
                    };
                    walk.keep(&m);
                    let e = format!(
                        "invoked, but the record was not deleted (a second retry invokes again; \
                         the splitter finds the file done): {why}"
                    );
                    rep.failed.push(Retried {
                        failure,
                        outcome: format!("failed: {e}"),
                    });
                    rep.stopped = Some(e);
                    break 'walk;
                }
            }
        }
    }
    walk.finish().await;
    rep
}

/// Invoke the function asynchronously with `event`; `Err` unless Lambda accepted it.
async fn invoke(
    client: &aws_sdk_lambda::Client,
    function: &str,
    event: &Value,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let out = client
        .invoke()
        .function_name(function)
        .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
        .payload(aws_smithy_types::Blob::new(bytes))
        .send()
        .await
        .map_err(|e| format!("Lambda Invoke {function}: {}", sdk_message(&e)))?;
    if let Some(err) = out.function_error() {
        return Err(format!("Lambda Invoke {function}: function error {err}"));
    }
    // a synchronous emulator answers with the result: an error object is a failure
    if let Some(p) = out.payload() {
        if let Ok(v) = serde_json::from_slice::<Value>(p.as_ref()) {
            if let Some(t) = v.get("errorType").or_else(|| v.get("errorMessage")) {
                return Err(format!(
                    "Lambda Invoke {function}: the function failed: {t}"
                ));
            }
        }
    }
    if !(200..300).contains(&out.status_code()) {
        return Err(format!(
            "Lambda Invoke {function}: status {}",
            out.status_code()
        ));
    }
    Ok(())
}

/// The audit record of a retry.
pub fn audit_record(
    who: crate::ops::caller::Caller,
    reason: &str,
    limit: Option<usize>,
    targets: BTreeMap<String, String>,
    rep: &RetryReport,
) -> AuditRecord {
    let mut rec = AuditRecord::new("failures retry", who, reason);
    if let Some(n) = limit {
        rec.filters.insert("limit".into(), n.to_string());
    }
    rec.targets = targets;
    rec.messages = rep
        .done
        .iter()
        .chain(rep.failed.iter())
        .chain(rep.skipped.iter())
        .map(|r| MessageEntry {
            message_id: r.failure.message_id.clone(),
            idempotency_key: None,
            outcome: r.outcome.clone(),
            new_message_id: None,
            objects: r
                .failure
                .objects
                .iter()
                .map(|o| format!("{}/{}", o.bucket, o.key))
                .collect(),
        })
        .collect();
    rec.counts = Counts {
        matched: rep.matched as u64,
        done: rep.done.len() as u64,
        failed: rep.failed.len() as u64,
        skipped: rep.skipped.len() as u64,
        ..Counts::default()
    };
    let error = rep.stopped.clone().or_else(|| {
        (!rep.failed.is_empty()).then(|| format!("{} message(s) failed", rep.failed.len()))
    });
    rec.finish(error);
    rec
}

#[derive(Serialize)]
struct ListOutput<'a> {
    queue: &'a str,
    total: usize,
    messages: &'a [SplitterFailure],
}

#[derive(Serialize)]
struct RetryOutput<'a> {
    command: &'static str,
    dry_run: bool,
    queue: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    function: Option<&'a str>,
    matched: usize,
    done: usize,
    failed: usize,
    skipped: usize,
    messages: Vec<&'a Retried>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn print_failures(items: &[&SplitterFailure], outcome: &[&str]) {
    println!(
        "{:<38} {:<17} {:<26} {:>8}  {:<24} objects",
        "message id", "condition", "failed at", "invokes", "error"
    );
    for (i, f) in items.iter().enumerate() {
        let objects: Vec<String> = f
            .objects
            .iter()
            .map(|o| format!("s3://{}/{}", o.bucket, o.key))
            .collect();
        println!(
            "{:<38} {:<17} {:<26} {:>8}  {:<24} {}{}",
            f.message_id,
            f.condition.as_deref().unwrap_or("-"),
            f.timestamp
                .as_deref()
                .or(f.sent_at.as_deref())
                .unwrap_or("-"),
            f.approximate_invoke_count
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            f.error_type.as_deref().unwrap_or("-"),
            if objects.is_empty() {
                format!("({:?}: nothing to retry)", f.kind)
            } else {
                objects.join(" ")
            },
            outcome
                .get(i)
                .map(|o| format!("  [{o}]"))
                .unwrap_or_default()
        );
        if let Some(m) = &f.error_message {
            println!("{:<38} {m}", "");
        }
    }
}

pub async fn run(args: FailuresArgs) -> Result<(), FailuresError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    match args.command {
        FailuresCommand::List {
            failures_queue_url,
            limit,
            json,
        } => {
            let items = list(&sqs, &failures_queue_url, limit).await?;
            if json {
                print_json(&ListOutput {
                    queue: &failures_queue_url,
                    total: items.len(),
                    messages: &items,
                })?;
                return Ok(());
            }
            print_failures(&items.iter().collect::<Vec<_>>(), &[]);
            println!("total {} failed splitter invocation(s)", items.len());
        }
        FailuresCommand::Retry {
            failures_queue_url,
            function,
            limit,
            dry_run,
            reason: given,
            bucket,
            json,
        } => {
            let why = reason(&given).ok_or(FailuresError::NoReason)?;
            let (log, lambda, function) = if dry_run {
                (None, None, None)
            } else {
                let bucket = bucket.ok_or(FailuresError::NoAuditBucket)?;
                let function = function.ok_or(FailuresError::NoFunction)?;
                (
                    Some(AuditLog::new(crate::audit::s3_client(&conf), bucket)),
                    Some(aws_sdk_lambda::Client::new(&conf)),
                    Some(function),
                )
            };
            let who = match log {
                Some(_) => Some(caller::caller(&conf).await),
                None => None,
            };
            let target = lambda.as_ref().zip(function.as_deref());
            let rep = retry(&sqs, target, &failures_queue_url, limit).await;
            let mut key = None;
            if let (Some(log), Some(who)) = (&log, who) {
                let mut targets =
                    BTreeMap::from([("failures_queue".to_string(), failures_queue_url.clone())]);
                if let Some(f) = &function {
                    targets.insert("function".into(), f.clone());
                }
                targets.insert("audit_bucket".into(), log.bucket().to_string());
                let rec = audit_record(who, &why, limit, targets, &rep);
                key = Some(log.write(&rec).await.map_err(|source| {
                    FailuresError::AuditNotWritten {
                        done: rep.done.len(),
                        source,
                    }
                })?);
            }
            if json {
                let messages = if dry_run {
                    rep.would.iter().chain(rep.skipped.iter()).collect()
                } else {
                    rep.done
                        .iter()
                        .chain(rep.failed.iter())
                        .chain(rep.skipped.iter())
                        .collect()
                };
                print_json(&RetryOutput {
                    command: "failures retry",
                    dry_run,
                    queue: &failures_queue_url,
                    function: function.as_deref(),
                    matched: rep.matched,
                    done: rep.done.len(),
                    failed: rep.failed.len(),
                    skipped: rep.skipped.len(),
                    messages,
                    audit_key: key.as_deref(),
                    error: rep.stopped.as_deref(),
                })?;
            } else {
                let shown: Vec<&Retried> = if dry_run {
                    rep.would.iter().chain(rep.skipped.iter()).collect()
                } else {
                    rep.done
                        .iter()
                        .chain(rep.failed.iter())
                        .chain(rep.skipped.iter())
                        .collect()
                };
                if dry_run {
                    println!(
                        "dry run: would re-invoke the splitter for {} message(s); nothing changed, no audit record",
                        rep.would.len()
                    );
                } else {
                    println!(
                        "re-invoked {} for {} of {} message(s)",
                        function.as_deref().unwrap_or("the splitter"),
                        rep.done.len(),
                        rep.matched
                    );
                }
                let items: Vec<&SplitterFailure> = shown.iter().map(|r| &r.failure).collect();
                let outcomes: Vec<&str> = shown.iter().map(|r| r.outcome.as_str()).collect();
                print_failures(&items, &outcomes);
                if let (Some(k), Some(log)) = (&key, &log) {
                    println!("audit record s3://{}/{k}", log.bucket());
                }
            }
            if rep.stopped.is_some() || !rep.failed.is_empty() {
                return Err(FailuresError::Stopped {
                    done: rep.done.len(),
                    matched: rep.matched,
                    failed: rep.failed.len(),
                    error: rep
                        .stopped
                        .clone()
                        .unwrap_or_else(|| format!("{} message(s) failed", rep.failed.len())),
                    key,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_event() -> Value {
        serde_json::json!({"Records": [{
            "eventSource": "aws:s3", "eventTime": "2026-12-01T10:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "data"}, "object": {"key": "incoming/lab_results/export-0002.csv", "versionId": "v7", "size": 10}}
        }]})
    }

    fn record() -> String {
        serde_json::json!({
            "version": "1.0", "timestamp": "2026-12-01T10:05:00.000Z",
            "requestContext": {"requestId": "req-1", "functionArn": "arn:aws:lambda:us-east-1:1:function:splitter:$LATEST",
                               "condition": "RetriesExhausted", "approximateInvokeCount": 3},
            "requestPayload": s3_event(),
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": {"errorType": "SplitError", "errorMessage": "S3 GetObject: timeout"}
        })
        .to_string()
    }

    fn msg(body: String) -> Msg {
        Msg {
            message_id: "m-1".into(),
            receipt_handle: "h".into(),
            body,
            attributes: BTreeMap::new(),
            receive_count: 1,
            sent_timestamp_ms: Some(1_796_000_000_000),
        }
    }

    #[test]
    fn an_invocation_record_is_retried_with_its_original_event() {
        let (kind, p) = payload(&record());
        assert_eq!(kind, Kind::InvocationRecord);
        assert_eq!(p, Some(s3_event()));
        let f = describe(&msg(record()));
        assert_eq!(f.condition.as_deref(), Some("RetriesExhausted"));
        assert_eq!(f.approximate_invoke_count, Some(3));
        assert_eq!(f.error_type.as_deref(), Some("SplitError"));
        assert_eq!(f.error_message.as_deref(), Some("S3 GetObject: timeout"));
        assert_eq!(
            f.objects,
            vec![ObjectRef {
                bucket: "data".into(),
                key: "incoming/lab_results/export-0002.csv".into(),
                version_id: Some("v7".into()),
                event_time: Some("2026-12-01T10:00:00.000Z".into()),
            }]
        );
        assert!(f.sent_at.is_some());
    }

    #[test]
    fn an_s3_event_is_retried_as_it_is_and_anything_else_is_not() {
        let (kind, p) = payload(&s3_event().to_string());
        assert_eq!((kind, p), (Kind::S3Event, Some(s3_event())));
        for body in [
            "not json",
            "{}",
            r#"{"Records": []}"#,
            r#"{"requestPayload": {"x": 1}}"#,
        ] {
            assert_eq!(payload(body), (Kind::Unknown, None), "{body}");
            let f = describe(&msg(body.to_string()));
            assert_eq!(f.kind, Kind::Unknown);
            assert!(f.objects.is_empty());
        }
    }

    #[test]
    fn a_retry_audit_record_names_the_messages_and_their_objects() {
        let who = crate::ops::caller::Caller {
            identity: "access-key-id:test".into(),
            account: None,
            source: "credentials".into(),
            profile: None,
            os_user: Some("ops".into()),
        };
        let rep = RetryReport {
            matched: 2,
            done: vec![Retried {
                failure: describe(&msg(record())),
                outcome: "retried".into(),
            }],
            skipped: vec![Retried {
                failure: describe(&msg("junk".into())),
                outcome: "skipped: neither".into(),
            }],
            ..RetryReport::default()
        };
        let rec = audit_record(who, "config fixed", Some(5), BTreeMap::new(), &rep);
        assert_eq!(rec.command, "failures retry");
        assert_eq!(rec.counts.matched, 2);
        assert_eq!(
            (rec.counts.done, rec.counts.failed, rec.counts.skipped),
            (1, 0, 1)
        );
        assert_eq!(
            rec.result.status,
            crate::audit::Status::Ok,
            "a skipped message is no failure"
        );
        assert_eq!(rec.messages.len(), 2);
        assert_eq!(
            rec.messages[0].objects,
            vec!["data/incoming/lab_results/export-0002.csv".to_string()]
        );
        assert_eq!(rec.filters["limit"], "5");
    }
}
