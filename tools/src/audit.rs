//! Audit records of operator actions, and `casefeed audit`, which lists them.
//!
//! Every `dlq replay`, `dlq purge`, `approve`, `discard` and `failures retry` (not a dry run)
//! writes one JSON object to the data bucket: `audit/<yyyy>/<mm>/<dd>/<id>.json`, with who
//! (the caller identity, see [`crate::ops::caller`]), when (RFC 3339 UTC), what (the command,
//! its filters and targets, the message ids and idempotency keys, the counts; for approve and
//! discard the held objects' keys and version ids), why (`--reason`) and the result (`ok`,
//! `partial` or `failed`, with the error). Never a row value: messages are named by their ids
//! and keys, held files by their object keys.
//!
//! The id is `<yyyymmddThhmmssmmmZ>-<8 hex digits>`: it sorts by time and is unique (the
//! suffix is random, and the object is written with `If-None-Match: *`).

use crate::ops::caller::Caller;
use crate::ops::{print_json, progress, sdk_message, OutputError};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where audit records live in the data bucket.
pub const AUDIT_PREFIX: &str = "audit/";

/// The record format this build writes (its `v`).
pub const AUDIT_VERSION: u32 = 1;

/// A new audit id at `at`: sortable by time, unique by its random suffix.
pub fn new_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:08x}",
        at.format("%Y%m%dT%H%M%S%3fZ"),
        rand::random::<u32>()
    )
}

/// The key of record `id` written at `at`: `audit/<yyyy>/<mm>/<dd>/<id>.json`.
pub fn record_key(at: DateTime<Utc>, id: &str) -> String {
    format!("{AUDIT_PREFIX}{}/{id}.json", at.format("%Y/%m/%d"))
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Everything it meant to do was done.
    Ok,
    /// Some of it was done, then it stopped on `error`.
    Partial,
    /// Nothing was done.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Partial => "partial",
            Status::Failed => "failed",
        }
    }
}

/// The result of the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One message the action handled (or tried to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEntry {
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// `replayed`, `purged`, `retried`, or `failed: <why>`.
    pub outcome: String,
    /// The copy's message id in the work queue (replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_message_id: Option<String>,
    /// The S3 objects a retried splitter event names (`bucket/key`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
}

/// The held file an approve or discard acted on: its objects' exact keys and version ids
/// (read before the action, which deletes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTarget {
    pub feed: String,
    pub id: String,
    pub manifest_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_version_id: Option<String>,
    pub copy_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_version_id: Option<String>,
    /// The upload that was held, and its version id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version_id: Option<String>,
    /// The run that held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_run: Option<String>,
    /// The run of the approval or discard (its report is `runs/<feed>/<run>.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// Counts of the action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages (or held files) the filters selected.
    pub matched: u64,
    /// Those the action completed for.
    pub done: u64,
    /// Those it failed for.
    pub failed: u64,
    /// Rows sent (approve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    /// Left alone: nothing this command can do with them (`failures retry`: a message that
    /// is neither an invocation record nor an S3 event).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One audit record: `audit/<yyyy>/<mm>/<dd>/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub v: u32,
    pub id: String,
    /// When (RFC 3339 UTC, ms).
    pub at: String,
    pub who: Caller,
    /// `dlq replay`, `dlq purge`, `approve`, `discard`, `failures retry`.
    pub command: String,
    /// Why: the operator's `--reason`.
    pub reason: String,
    /// The filters and limits the command was given, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filters: BTreeMap<String, String>,
    /// What it acted on: queue URLs, the bucket, the function.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MessageEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldTarget>,
    pub counts: Counts,
    pub result: Outcome,
}

impl AuditRecord {
    /// A record of `command` started now by `who`, for `reason`; the caller fills in the rest.
    pub fn new(command: &str, who: Caller, reason: &str) -> AuditRecord {
        let now = Utc::now();
        AuditRecord {
            v: AUDIT_VERSION,
            id: new_id(now),
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            who,
            command: command.to_string(),
            reason: reason.to_string(),
            filters: BTreeMap::new(),
            targets: BTreeMap::new(),
            messages: Vec::new(),
            held: None,
            counts: Counts::default(),
            result: Outcome {
                status: Status::Ok,
                error: None,
            },
        }
    }

    /// Set the result from what was done and the error that stopped it, if any.
    pub fn finish(&mut self, error: Option<String>) {
        let status = match (&error, self.counts.done) {
            (None, _) if self.counts.failed == 0 => Status::Ok,
            (_, 0) => Status::Failed,
            _ => Status::Partial,
        };
        self.result = Outcome { status, error };
    }

    /// Its key in the bucket.
    pub fn key(&self) -> String {
        let at = DateTime::parse_from_rfc3339(&self.at)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        record_key(at, &self.id)
    }
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("S3 {op} s3://{bucket}/{key}: {message}")]
    S3 {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("the audit record cannot be serialised: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("--since {0:?}: expected a date (2026-12-01) or an RFC 3339 time")]
    Since(String),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// The audit records in a data bucket.
pub struct AuditLog {
    s3: aws_sdk_s3::Client,
    bucket: String,
}

/// An S3 client for `conf`; path-style when an endpoint is configured (moto, LocalStack).
pub fn s3_client(conf: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(conf);
    if conf.endpoint_url().is_some() {
        b = b.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

impl AuditLog {
    pub fn new(s3: aws_sdk_s3::Client, bucket: impl Into<String>) -> AuditLog {
        AuditLog {
            s3,
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Write a record (never over another: `If-None-Match: *`); returns its key.
    pub async fn write(&self, rec: &AuditRecord) -> Result<String, AuditError> {
        let key = rec.key();
        let body = serde_json::to_vec_pretty(rec)?;
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .if_none_match("*")
            .body(body.into())
            .send()
            .await
            .map_err(|e| AuditError::S3 {
                op: "PutObject",
                bucket: self.bucket.clone(),
                key: key.clone(),
                message: sdk_message(&e),
            })?;
        Ok(key)
    }

    /// Every record key from `since` (a day) on, oldest first.
    pub async fn keys(&self, since: Option<NaiveDate>) -> Result<Vec<String>, AuditError> {
        let start_after = since.map(|d| format!("{AUDIT_PREFIX}{}/", d.format("%Y/%m/%d")));
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(AUDIT_PREFIX)
                .set_start_after(start_after.clone())
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| AuditError::S3 {
                    op: "ListObjectsV2",
                    bucket: self.bucket.clone(),
                    key: AUDIT_PREFIX.into(),
                    message: sdk_message(&e),
                })?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter(|k| k.ends_with(".json"))
                    .map(str::to_string),
            );
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Read one record; `Ok(None)` when it is not an audit record this build reads.
    pub async fn read(&self, key: &str) -> Result<Option<AuditRecord>, AuditError> {
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| AuditError::S3 {
                op: "GetObject",
                bucket: self.bucket.clone(),
                key: key.to_string(),
                message: sdk_message(&e),
            })?;
        let bytes = out.body.collect().await.map_err(|e| AuditError::S3 {
            op: "GetObject body",
            bucket: self.bucket.clone(),
            key: key.to_string(),
            message: e.to_string(),
        })?;
        Ok(serde_json::from_slice(&bytes.into_bytes()).ok())
    }
}

/// `--since`: a day (`2026-12-01`) or an RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Day(NaiveDate),
    Time(DateTime<Utc>),
}

impl Since {
    pub fn parse(s: &str) -> Result<Since, AuditError> {
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(Since::Day(d));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Since::Time(t.with_timezone(&Utc)))
            .map_err(|_| AuditError::Since(s.to_string()))
    }

    fn day(self) -> NaiveDate {
        match self {
            Since::Day(d) => d,
            Since::Time(t) => t.date_naive(),
        }
    }

    /// Whether a record written at `at` (RFC 3339) is at or after this.
    pub fn admits(self, at: &str) -> bool {
        let Ok(t) = DateTime::parse_from_rfc3339(at).map(|t| t.with_timezone(&Utc)) else {
            return false;
        };
        match self {
            Since::Day(d) => t.date_naive() >= d,
            Since::Time(s) => t >= s,
        }
    }
}

/// Records newest first (by id, which sorts by time).
pub fn newest_first(mut recs: Vec<AuditRecord>) -> Vec<AuditRecord> {
    recs.sort_by(|a, b| b.id.cmp(&a.id));
    recs
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The data bucket (holds audit/).
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    /// Only records from this day (2026-12-01) or time (RFC 3339) on.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many records (the newest).
    #[arg(long)]
    pub limit: Option<usize>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct AuditList<'a> {
    bucket: &'a str,
    count: usize,
    records: &'a [AuditRecord],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreadable: Vec<String>,
}

/// `casefeed audit`.
pub async fn run(args: AuditArgs) -> Result<(), AuditError> {
    let since = args.since.as_deref().map(Since::parse).transpose()?;
    let conf = casefeed::adapters::env::aws_config().await;
    let log = AuditLog::new(s3_client(&conf), &args.bucket);
    let keys = log.keys(since.map(Since::day)).await?;
    let bar = progress(keys.len() as u64, "reading audit records");
    let mut recs = Vec::new();
    let mut unreadable = Vec::new();
    // newest first, so that --limit reads only what it shows
    for key in keys.iter().rev() {
        if args.limit.is_some_and(|n| recs.len() >= n) {
            break;
        }
        bar.inc(1);
        match log.read(key).await? {
            Some(r) if since.is_none_or(|s| s.admits(&r.at)) => recs.push(r),
            Some(_) => {}
            None => unreadable.push(key.clone()),
        }
    }
    bar.finish_and_clear();
    let recs = newest_first(recs);
    if args.json {
        print_json(&AuditList {
            bucket: &args.bucket,
            count: recs.len(),
            records: &recs,
            unreadable,
        })?;
        return Ok(());
    }
    println!(
        "{:<28} {:<24} {:<15} {:<8} {:>7} {:>7}  {:<40} reason",
        "id", "at", "command", "result", "done", "failed", "who"
    );
    for r in &recs {
        println!(
            "{:<28} {:<24} {:<15} {:<8} {:>7} {:>7}  {:<40} {}",
            r.id,
            r.at,
            r.command,
            r.result.status.as_str(),
            r.counts.done,
            r.counts.failed,
            r.who.identity,
            r.reason
        );
    }
    println!(
        "{} audit record(s) in s3://{}/{AUDIT_PREFIX}",
        recs.len(),
        args.bucket
    );
    for k in &unreadable {
        eprintln!("warning: {k} is not an audit record this build reads");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Caller {
        Caller {
            identity: "arn:aws:sts::123456789012:assumed-role/ops/alice".into(),
            account: Some("123456789012".into()),
            source: "sts:GetCallerIdentity".into(),
            profile: None,
            os_user: Some("alice".into()),
        }
    }

    #[test]
    fn ids_sort_by_time_and_differ() {
        let t1 = DateTime::parse_from_rfc3339("2026-12-01T10:15:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let t2 = t1 + chrono::Duration::milliseconds(1);
        let (a, b, c) = (new_id(t1), new_id(t1), new_id(t2));
        assert!(a.starts_with("20261201T101500123Z-"), "{a}");
        assert_eq!(a.len(), "20261201T101500123Z-".len() + 8);
        assert_ne!(a, b, "the random suffix makes ids unique");
        assert!(a < c && b < c, "later ids sort after earlier ones");
        assert_eq!(record_key(t1, &a), format!("audit/2026/12/01/{a}.json"));
    }

    #[test]
    fn a_record_names_messages_by_id_and_key_and_round_trips() {
        let mut r = AuditRecord::new("dlq replay", who(), "API mapping fixed");
        r.filters.insert("class".into(), "permanent".into());
        r.targets.insert("dlq".into(), "http://q/dlq".into());
        r.messages.push(MessageEntry {
            message_id: "m-1".into(),
            idempotency_key: Some("ik-1".into()),
            outcome: "replayed".into(),
            new_message_id: Some("w-1".into()),
            objects: vec![],
        });
        r.counts = Counts {
            matched: 1,
            done: 1,
            ..Counts::default()
        };
        r.finish(None);
        let text = serde_json::to_string(&r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for k in [
            "v", "id", "at", "who", "command", "reason", "filters", "messages", "counts", "result",
        ] {
            assert!(v.get(k).is_some(), "{k} in {text}");
        }
        assert_eq!(v["result"]["status"], "ok");
        assert_eq!(v["messages"][0]["message_id"], "m-1");
        assert_eq!(v["who"]["source"], "sts:GetCallerIdentity");
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
        assert!(!text.contains("fields"), "{text}");
        let back: AuditRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(r.key().starts_with("audit/") && r.key().ends_with(&format!("{}.json", r.id)));
    }

    #[test]
    fn the_result_is_ok_partial_or_failed() {
        let mut r = AuditRecord::new("dlq purge", who(), "r");
        r.counts.done = 3;
        r.finish(None);
        assert_eq!(r.result.status, Status::Ok);
        r.finish(Some("SQS down".into()));
        assert_eq!(r.result.status, Status::Partial);
        assert_eq!(r.result.error.as_deref(), Some("SQS down"));
        r.counts.done = 0;
        r.finish(Some("SQS down".into()));
        assert_eq!(r.result.status, Status::Failed);
        r.counts.done = 2;
        r.counts.failed = 1;
        r.finish(None);
        assert_eq!(r.result.status, Status::Partial, "some messages failed");
    }

    #[test]
    fn a_held_target_names_the_exact_objects() {
        let mut r = AuditRecord::new("approve", who(), "checked the export");
        r.held = Some(HeldTarget {
            feed: "lab_results".into(),
            id: "0123456789abcdef".into(),
            manifest_key: "held/lab_results/0123456789abcdef.json".into(),
            manifest_version_id: Some("v1".into()),
            copy_key: "held/lab_results/0123456789abcdef.source".into(),
            copy_version_id: Some("v2".into()),
            source_key: Some("incoming/lab_results/x.csv".into()),
            source_version_id: Some("v0".into()),
            held_run: Some("run-1".into()),
            run: Some("approve-1".into()),
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["held"]["copy_version_id"], "v2");
        assert_eq!(
            v["held"]["manifest_key"],
            "held/lab_results/0123456789abcdef.json"
        );
    }

    #[test]
    fn since_takes_a_day_or_a_time() {
        let d = Since::parse("2026-12-01").unwrap();
        assert!(d.admits("2026-12-01T00:00:00.000Z"));
        assert!(!d.admits("2026-11-30T23:59:59.999Z"));
        let t = Since::parse("2026-12-01T12:00:00Z").unwrap();
        assert!(t.admits("2026-12-01T12:00:00.000Z") && !t.admits("2026-12-01T11:59:59.000Z"));
        assert!(Since::parse("yesterday").is_err());
        assert!(!d.admits("not a time"));
    }

    #[test]
    fn listing_is_newest_first() {
        let mut a = AuditRecord::new("dlq replay", who(), "r");
        let mut b = a.clone();
        a.id = "20261201T101500123Z-00000001".into();
        b.id = "20261202T101500123Z-00000000".into();
        let out = newest_first(vec![a.clone(), b.clone()]);
        assert_eq!(out, vec![b, a]);
    }
}
