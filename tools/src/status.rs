//! `casefeed status` and `casefeed runs`: the operator's one screen, and a feed's history.
//!
//! * `status` — per feed the last run (when, status, counts) and the files its guards hold;
//!   the work queue's depth (visible, in flight, delayed), the DLQ's and the splitter
//!   failures queue's; the fleet's breaker (the gate item in the ledger table).
//! * `runs [--feed F] [--limit N]` — the newest run reports, newest first (run ids begin
//!   with their processing time, so the keys sort by time).
//!
//! Reports hold counts, sources and guard figures, never a row value.

use crate::ops::{print_json, progress, sdk_message, OutputError};
use casefeed::contract::layout::{held_prefix, GATE_PK};
use casefeed::contract::report::RunReport;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The data bucket (runs/, held/).
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    /// The work queue.
    #[arg(long, env = "WORK_QUEUE_URL")]
    pub work_queue_url: Option<String>,
    /// The dead-letter queue.
    #[arg(long, env = "DLQ_URL")]
    pub dlq_url: Option<String>,
    /// The splitter-failures queue.
    #[arg(long, env = "SPLITTER_FAILURES_QUEUE_URL")]
    pub failures_url: Option<String>,
    /// The consumer's ledger table (holds the breaker's state).
    #[arg(long, env = "LEDGER_TABLE")]
    pub table: Option<String>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    /// The data bucket (runs/).
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    /// Only this feed.
    #[arg(long)]
    pub feed: Option<String>,
    /// At most this many runs (the newest).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// One JSON document on stdout: `{"count": N, "runs": [report, …]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("S3 {op}: {message}")]
    S3 { op: &'static str, message: String },
    #[error("{0}")]
    Sqs(String),
    #[error("DynamoDB GetItem: {0}")]
    Dynamo(String),
    #[error("the run report {key} does not parse: {problem}")]
    Report { key: String, problem: String },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// One run, as `runs` and `status` show it.
#[derive(Debug, Serialize)]
pub struct RunLine {
    pub key: String,
    pub last_modified: Option<String>,
    pub report: RunReport,
}

/// A queue's depth.
pub use crate::esm::QueueDepth as Depth;

#[derive(Debug, Serialize)]
pub struct FeedStatus {
    pub feed: String,
    pub last_run: Option<RunLine>,
    pub runs: usize,
    pub held: usize,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub feeds: Vec<FeedStatus>,
    pub work_queue: Option<Depth>,
    pub dead_letter_queue: Option<Depth>,
    pub splitter_failures: Option<Depth>,
    /// The gate item's attributes (`state`, `opened_at_ms`, `probe_at_ms`,
    /// `paused_until_ms`, …), when the table was given and holds one.
    pub breaker: Option<BTreeMap<String, String>>,
}

fn s3_err<E: std::error::Error>(op: &'static str) -> impl Fn(E) -> StatusError {
    move |e| StatusError::S3 {
        op,
        message: sdk_message(&e),
    }
}

/// Every key under `prefix` with its last-modified time, in key order.
async fn list(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, Option<String>)>, StatusError> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(s3_err("ListObjectsV2"))?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                let when = o
                    .last_modified()
                    .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok());
                out.push((k.to_string(), when));
            }
        }
    }
    Ok(out)
}

/// The feeds that have run reports: `runs/<feed>/`.
async fn feeds(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<String>, StatusError> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("runs/")
        .delimiter("/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(s3_err("ListObjectsV2"))?;
        for p in page.common_prefixes() {
            if let Some(f) = p
                .prefix()
                .and_then(|p| p.strip_prefix("runs/"))
                .and_then(|p| p.strip_suffix('/'))
            {
                out.push(f.to_string());
            }
        }
    }
    Ok(out)
}

async fn report(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    last_modified: Option<String>,
) -> Result<RunLine, StatusError> {
    let obj = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(s3_err("GetObject"))?;
    let bytes = obj
        .body
        .collect()
        .await
        .map_err(|e| StatusError::S3 {
            op: "GetObject",
            message: e.to_string(),
        })?
        .into_bytes();
    let report: RunReport = serde_json::from_slice(&bytes).map_err(|e| StatusError::Report {
        key: key.to_string(),
        problem: e.to_string(),
    })?;
    Ok(RunLine {
        key: key.to_string(),
        last_modified,
        report,
    })
}

/// The newest `limit` run reports of one feed or of all, newest first.
pub async fn newest_runs(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    feed: Option<&str>,
    limit: usize,
) -> Result<Vec<RunLine>, StatusError> {
    let prefix = match feed {
        Some(f) => format!("runs/{f}/"),
        None => "runs/".to_string(),
    };
    let mut keys: Vec<(String, Option<String>)> = list(s3, bucket, &prefix)
        .await?
        .into_iter()
        .filter(|(k, _)| k.ends_with(".json"))
        .collect();
    // by run id (its processing time first), across feeds
    keys.sort_by(|a, b| run_of(&b.0).cmp(run_of(&a.0)));
    keys.truncate(limit);
    let bar = progress(keys.len() as u64, "reading run reports");
    let mut out = Vec::new();
    for (k, when) in keys {
        out.push(report(s3, bucket, &k, when).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The run id in `runs/<feed>/<run>.json`.
fn run_of(key: &str) -> &str {
    key.rsplit('/')
        .next()
        .and_then(|f| f.strip_suffix(".json"))
        .unwrap_or(key)
}

/// A queue's depth, when its URL was given.
async fn depth_of(
    sqs: &aws_sdk_sqs::Client,
    url: &Option<String>,
) -> Result<Option<Depth>, StatusError> {
    match url {
        Some(u) => crate::esm::queue_depth(sqs, u)
            .await
            .map(Some)
            .map_err(|e| StatusError::Sqs(e.to_string())),
        None => Ok(None),
    }
}

async fn breaker(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Option<BTreeMap<String, String>>, StatusError> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let out = ddb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(GATE_PK.to_string()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| StatusError::Dynamo(sdk_message(&e)))?;
    Ok(out.item.map(|item| {
        item.into_iter()
            .filter(|(k, _)| k != "pk")
            .filter_map(|(k, v)| match v {
                AttributeValue::S(s) | AttributeValue::N(s) => Some((k, s)),
                _ => None,
            })
            .collect()
    }))
}

/// The breaker's state as one phrase.
fn breaker_line(b: &BTreeMap<String, String>) -> String {
    let state = b.get("state").map_or("closed", String::as_str);
    let at = |k: &str| {
        b.get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(crate::ops::queue::rfc3339_ms)
    };
    match (state, at("opened_at_ms"), at("probe_at_ms")) {
        ("open", Some(o), Some(p)) => format!("open since {o}, next probe {p}"),
        ("open", Some(o), None) => format!("open since {o}"),
        (s, _, _) => s.to_string(),
    }
}

fn counts_line(r: &RunReport) -> String {
    let c = &r.counts;
    format!(
        "read {} new {} changed {} removed {} rejected {} sent {}",
        c.read, c.new, c.changed, c.removed, c.rejected, c.sent
    )
}

fn depth_line(name: &str, d: &Option<Depth>) -> Option<String> {
    d.as_ref().map(|d| {
        format!(
            "{name:<18} {} visible, {} in flight, {} delayed",
            d.visible, d.in_flight, d.delayed
        )
    })
}

pub async fn status(args: &StatusArgs) -> Result<Status, StatusError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let s3 = aws_sdk_s3::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let mut out = Vec::new();
    for feed in feeds(&s3, &args.bucket).await? {
        let keys: Vec<_> = list(&s3, &args.bucket, &format!("runs/{feed}/"))
            .await?
            .into_iter()
            .filter(|(k, _)| k.ends_with(".json"))
            .collect();
        let newest = keys.iter().max_by(|a, b| run_of(&a.0).cmp(run_of(&b.0)));
        let last_run = match newest {
            Some((k, when)) => Some(report(&s3, &args.bucket, k, when.clone()).await?),
            None => None,
        };
        let held = list(&s3, &args.bucket, &held_prefix(Some(&feed)))
            .await?
            .iter()
            .filter(|(k, _)| k.ends_with(".json"))
            .count();
        out.push(FeedStatus {
            feed,
            last_run,
            runs: keys.len(),
            held,
        });
    }
    let work_queue = depth_of(&sqs, &args.work_queue_url).await?;
    let dead_letter_queue = depth_of(&sqs, &args.dlq_url).await?;
    let splitter_failures = depth_of(&sqs, &args.failures_url).await?;
    let breaker = match &args.table {
        Some(t) => breaker(&aws_sdk_dynamodb::Client::new(&conf), t).await?,
        None => None,
    };
    Ok(Status {
        feeds: out,
        work_queue,
        dead_letter_queue,
        splitter_failures,
        breaker,
    })
}

/// `casefeed status`.
pub async fn run_status(args: StatusArgs) -> Result<(), StatusError> {
    let st = status(&args).await?;
    if args.json {
        return Ok(print_json(&st)?);
    }
    println!("feeds");
    if st.feeds.is_empty() {
        println!("  (no run reports under runs/)");
    }
    for f in &st.feeds {
        match &f.last_run {
            Some(l) => println!(
                "  {:<20} last run {} {} ({}): {}; {} runs; {} held",
                f.feed,
                l.report.run,
                l.report.status.as_str(),
                l.last_modified.as_deref().unwrap_or("?"),
                counts_line(&l.report),
                f.runs,
                f.held
            ),
            None => println!("  {:<20} no run yet; {} held", f.feed, f.held),
        }
    }
    for line in [
        depth_line("work queue", &st.work_queue),
        depth_line("dead letters", &st.dead_letter_queue),
        depth_line("splitter failures", &st.splitter_failures),
    ]
    .into_iter()
    .flatten()
    {
        println!("{line}");
    }
    if st.dead_letter_queue.as_ref().is_some_and(|d| d.visible > 0) {
        println!("  (by class: casefeed dlq list)");
    }
    match &st.breaker {
        Some(b) => println!("{:<18} {}", "breaker", breaker_line(b)),
        None if args.table.is_some() => println!("{:<18} closed (no gate item yet)", "breaker"),
        None => {}
    }
    Ok(())
}

/// `casefeed runs`.
pub async fn run_runs(args: RunsArgs) -> Result<(), StatusError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let s3 = aws_sdk_s3::Client::new(&conf);
    let runs = newest_runs(&s3, &args.bucket, args.feed.as_deref(), args.limit).await?;
    if args.json {
        let doc = serde_json::json!({"count": runs.len(), "runs": runs});
        return Ok(print_json(&doc)?);
    }
    if runs.is_empty() {
        println!("no runs");
    }
    for l in &runs {
        let r = &l.report;
        println!(
            "{} {:<14} {:<10} {} ({} ms) {}",
            r.run,
            r.feed,
            r.status.as_str(),
            counts_line(r),
            r.timings.total_ms,
            r.source.key
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_across_feeds() {
        let mut keys = [
            "runs/b/20261201T101500000Z-aa.json",
            "runs/a/20261202T090000000Z-bb.json",
            "runs/a/20261130T235959999Z-cc.json",
        ];
        keys.sort_by(|a, b| run_of(b).cmp(run_of(a)));
        assert_eq!(keys[0], "runs/a/20261202T090000000Z-bb.json");
        assert_eq!(keys[2], "runs/a/20261130T235959999Z-cc.json");
    }

    #[test]
    fn the_breaker_reads_as_a_phrase() {
        let mut b = BTreeMap::new();
        assert_eq!(breaker_line(&b), "closed");
        b.insert("state".into(), "open".into());
        b.insert("opened_at_ms".into(), "1764662400000".into());
        assert!(breaker_line(&b).starts_with("open since 2025-12-02T08:00:00"));
    }
}
