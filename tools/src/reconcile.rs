//! `casefeed reconcile <feed> <run>`: was every row of this run applied?
//!
//! Every message the run sent (its sent list, `sent/<feed>/<run>.jsonl`) is accounted for
//! by its idempotency key: **applied** (the ledger's fate `applied` or `duplicate`),
//! **superseded** (a newer version of its record was applied), **dead-lettered** (the
//! ledger's fate, or in the DLQ now — with its class), **pending** (no fate yet and the work
//! queue is not empty), or **unaccounted** (no fate, not in the DLQ, and the work queue is
//! empty: the message is gone — deleted by hand, or expired). The run's rejected rows are
//! listed by line and reason (never their values). Exits non-zero when anything is
//! unaccounted for.

use crate::dlq::{list_letters, DlqError};
use crate::ops::letters::Filter;
use crate::ops::{print_json, sdk_message, OutputError};
use casefeed::contract::layout::{ledger_fate_pk, run_report_key};
use casefeed::contract::report::{RunReport, SentRecord};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(clap::Args, Debug)]
pub struct ReconcileArgs {
    /// The feed.
    pub feed: String,
    /// The run id (`casefeed runs --feed F` lists them).
    pub run: String,
    /// The data bucket (runs/, sent/, rejects/).
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    /// The consumer's ledger table.
    #[arg(long, env = "LEDGER_TABLE")]
    pub table: String,
    /// The dead-letter queue.
    #[arg(long, env = "DLQ_URL")]
    pub dlq_url: String,
    /// The work queue.
    #[arg(long, env = "WORK_QUEUE_URL")]
    pub work_queue_url: String,
    /// List every row, not only those not applied.
    #[arg(long)]
    pub all: bool,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("S3 {op} {key}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("{what} does not parse: {problem}")]
    Parse { what: String, problem: String },
    #[error("run {run} of {feed} sent {sent} message(s) but has no sent list (a run from before sent lists): it cannot be reconciled row by row")]
    NoSentList {
        feed: String,
        run: String,
        sent: u64,
    },
    #[error("DynamoDB BatchGetItem: {0}")]
    Dynamo(String),
    #[error("SQS: {0}")]
    Sqs(String),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{0} row(s) of the run are unaccounted for")]
    Unaccounted(usize),
}

/// What became of one sent row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Superseded,
    DeadLettered,
    Pending,
    Unaccounted,
}

/// One sent row's account.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub record_key: String,
    pub idempotency_key: String,
    pub change: String,
    pub outcome: Outcome,
    /// The ledger's fate detail, or the dead letter's class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the ledger and the queues say of the run's keys.
#[derive(Debug, Default)]
pub struct Evidence {
    /// idempotency key → (fate, detail).
    pub fates: HashMap<String, (String, Option<String>)>,
    /// idempotency key → class, of the dead letters in the DLQ now.
    pub dead_letters: HashMap<String, String>,
    /// Messages in the work queue (visible, in flight, delayed).
    pub work_queue_depth: u64,
}

/// PURE: each sent row's outcome.
pub fn account(sent: &[SentRecord], ev: &Evidence) -> Vec<Row> {
    sent.iter()
        .map(|s| {
            let fate = ev.fates.get(&s.idempotency_key);
            let (outcome, detail) = match fate.map(|(f, d)| (f.as_str(), d.clone())) {
                Some(("applied" | "duplicate", d)) => (Outcome::Applied, d),
                Some(("superseded", d)) => (Outcome::Superseded, d),
                Some(("dead_lettered", d)) => (
                    Outcome::DeadLettered,
                    ev.dead_letters.get(&s.idempotency_key).cloned().or(d),
                ),
                _ => match ev.dead_letters.get(&s.idempotency_key) {
                    Some(class) => (Outcome::DeadLettered, Some(class.clone())),
                    None if ev.work_queue_depth > 0 => (Outcome::Pending, None),
                    None => (Outcome::Unaccounted, None),
                },
            };
            Row {
                record_key: s.record_key.clone(),
                idempotency_key: s.idempotency_key.clone(),
                change: s.change.clone(),
                outcome,
                detail,
            }
        })
        .collect()
}

/// A rejected row of the run: its line and why (never its values).
#[derive(Debug, Clone, Serialize)]
pub struct RejectedRow {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Reconciliation {
    pub feed: String,
    pub run: String,
    pub status: String,
    pub sent: u64,
    pub listed: usize,
    pub unlisted: u64,
    pub counts: BTreeMap<Outcome, usize>,
    pub by_class: BTreeMap<String, usize>,
    pub work_queue_depth: u64,
    pub rows: Vec<Row>,
    pub rejected: Vec<RejectedRow>,
}

async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, ReconcileError> {
    let err = |op: &'static str, message: String| ReconcileError::S3 {
        op,
        key: key.to_string(),
        message,
    };
    let obj = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| err("GetObject", sdk_message(&e)))?;
    Ok(obj
        .body
        .collect()
        .await
        .map_err(|e| err("GetObject", e.to_string()))?
        .into_bytes()
        .to_vec())
}

fn lines<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<Vec<T>, ReconcileError> {
    casefeed::contract::report::parse_json_lines(bytes).map_err(|e| ReconcileError::Parse {
        what: format!("{what} line {}", e.line),
        problem: e.problem,
    })
}

/// The ledger's fate of each key (BatchGetItem, 100 keys a call, unprocessed keys again).
async fn fates(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    feed: &str,
    keys: &[&str],
) -> Result<HashMap<String, (String, Option<String>)>, ReconcileError> {
    use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
    let mut out = HashMap::new();
    let bar = crate::ops::progress(keys.len() as u64, "reading the ledger");
    for chunk in keys.chunks(100) {
        let mut ka = KeysAndAttributes::builder().consistent_read(true);
        for k in chunk {
            let mut key = HashMap::new();
            key.insert("pk".to_string(), AttributeValue::S(ledger_fate_pk(feed, k)));
            ka = ka.keys(key);
        }
        let mut request = Some(HashMap::from([(
            table.to_string(),
            ka.build()
                .map_err(|e| ReconcileError::Dynamo(e.to_string()))?,
        )]));
        let mut rounds = 0;
        while let Some(items) = request.take().filter(|r| !r.is_empty()) {
            rounds += 1;
            if rounds > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(100 * rounds)).await;
            }
            if rounds > 20 {
                return Err(ReconcileError::Dynamo(
                    "keys stayed unprocessed after 20 rounds".into(),
                ));
            }
            let resp = ddb
                .batch_get_item()
                .set_request_items(Some(items))
                .send()
                .await
                .map_err(|e| ReconcileError::Dynamo(sdk_message(&e)))?;
            for item in resp
                .responses
                .unwrap_or_default()
                .remove(table)
                .unwrap_or_default()
            {
                let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                if let (Some(key), Some(fate)) = (s("idempotency_key"), s("fate")) {
                    out.insert(key, (fate, s("detail")));
                }
            }
            request = resp.unprocessed_keys;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<u64, ReconcileError> {
    crate::esm::depth(sqs, url)
        .await
        .map_err(|e| ReconcileError::Sqs(e.to_string()))
}

pub async fn reconcile(args: &ReconcileArgs) -> Result<Reconciliation, ReconcileError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let s3 = aws_sdk_s3::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    let report_key = run_report_key(&args.feed, &args.run);
    let report: RunReport = serde_json::from_slice(&get(&s3, &args.bucket, &report_key).await?)
        .map_err(|e| ReconcileError::Parse {
            what: report_key.clone(),
            problem: e.to_string(),
        })?;
    let sent: Vec<SentRecord> = match &report.sent_key {
        Some(k) => lines(k, &get(&s3, &args.bucket, k).await?)?,
        None if report.counts.sent > 0 => {
            return Err(ReconcileError::NoSentList {
                feed: args.feed.clone(),
                run: args.run.clone(),
                sent: report.counts.sent,
            })
        }
        None => Vec::new(),
    };
    let rejected: Vec<RejectedRow> = match &report.rejects_key {
        Some(k) => {
            let raw: Vec<serde_json::Value> = lines(k, &get(&s3, &args.bucket, k).await?)?;
            raw.iter()
                .map(|r| RejectedRow {
                    line: r["line"].as_u64().unwrap_or(0),
                    reason: r["reason"].as_str().unwrap_or("").to_string(),
                })
                .collect()
        }
        None => Vec::new(),
    };
    // the queue's depth first: a message that leaves it meanwhile has its fate by then
    let work_queue_depth = depth(&sqs, &args.work_queue_url).await?;
    let filter = Filter {
        feed: Some(args.feed.clone()),
        run: Some(args.run.clone()),
        ..Filter::default()
    };
    let dead_letters = list_letters(&sqs, &args.dlq_url, &filter, usize::MAX)
        .await?
        .iter()
        .filter_map(|l| Some((l.idempotency_key()?.to_string(), l.class().to_string())))
        .collect();
    let keys: Vec<&str> = sent.iter().map(|s| s.idempotency_key.as_str()).collect();
    let ev = Evidence {
        fates: fates(&ddb, &args.table, &args.feed, &keys).await?,
        dead_letters,
        work_queue_depth,
    };
    let rows = account(&sent, &ev);
    let mut counts = BTreeMap::new();
    let mut by_class = BTreeMap::new();
    for r in &rows {
        *counts.entry(r.outcome).or_insert(0) += 1;
        if r.outcome == Outcome::DeadLettered {
            let class = r.detail.clone().unwrap_or_else(|| "unknown".into());
            *by_class.entry(class).or_insert(0) += 1;
        }
    }
    Ok(Reconciliation {
        feed: args.feed.clone(),
        run: args.run.clone(),
        status: report.status.as_str().to_string(),
        sent: report.counts.sent,
        listed: sent.len(),
        unlisted: report.counts.sent_unlisted,
        counts,
        by_class,
        work_queue_depth,
        rows,
        rejected,
    })
}

/// `casefeed reconcile`.
pub async fn run(args: ReconcileArgs) -> Result<(), ReconcileError> {
    let mut rec = reconcile(&args).await?;
    let unaccounted = rec.counts.get(&Outcome::Unaccounted).copied().unwrap_or(0);
    if !args.all {
        rec.rows.retain(|r| r.outcome != Outcome::Applied);
    }
    if args.json {
        print_json(&rec)?;
    } else {
        println!(
            "run {} of {} ({}): {} sent, {} listed{}",
            rec.run,
            rec.feed,
            rec.status,
            rec.sent,
            rec.listed,
            if rec.unlisted > 0 {
                format!(" ({} not listed)", rec.unlisted)
            } else {
                String::new()
            }
        );
        for o in [
            Outcome::Applied,
            Outcome::Superseded,
            Outcome::DeadLettered,
            Outcome::Pending,
            Outcome::Unaccounted,
        ] {
            let n = rec.counts.get(&o).copied().unwrap_or(0);
            let name = serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            println!("  {name:<14} {n}");
        }
        for (class, n) in &rec.by_class {
            println!("    dead-lettered {class}: {n}");
        }
        if rec.counts.contains_key(&Outcome::Pending) {
            println!(
                "  ({} message(s) still in the work queue)",
                rec.work_queue_depth
            );
        }
        for r in &rec.rows {
            println!(
                "  {:<14?} {} {} {}",
                r.outcome,
                r.record_key,
                r.idempotency_key,
                r.detail.as_deref().unwrap_or("")
            );
        }
        println!("rejected rows: {}", rec.rejected.len());
        for r in &rec.rejected {
            println!("  line {}: {}", r.line, r.reason);
        }
    }
    if unaccounted > 0 {
        return Err(ReconcileError::Unaccounted(unaccounted));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(i: usize) -> SentRecord {
        SentRecord {
            record_key: format!("r{i}"),
            idempotency_key: format!("k{i}"),
            change: "new".into(),
        }
    }

    #[test]
    fn every_row_gets_its_outcome_from_the_ledger_the_dlq_and_the_queue() {
        let rows: Vec<SentRecord> = (0..6).map(sent).collect();
        let mut ev = Evidence::default();
        ev.fates
            .insert("k0".into(), ("applied".into(), Some("201".into())));
        ev.fates
            .insert("k1".into(), ("duplicate".into(), Some("409".into())));
        ev.fates.insert("k2".into(), ("superseded".into(), None));
        ev.fates.insert(
            "k3".into(),
            ("dead_lettered".into(), Some("permanent 422".into())),
        );
        ev.dead_letters.insert("k4".into(), "redrive".into());
        let out = account(&rows, &ev);
        let o: Vec<Outcome> = out.iter().map(|r| r.outcome).collect();
        assert_eq!(
            o,
            [
                Outcome::Applied,
                Outcome::Applied,
                Outcome::Superseded,
                Outcome::DeadLettered,
                Outcome::DeadLettered,
                Outcome::Unaccounted
            ]
        );
        assert_eq!(out[4].detail.as_deref(), Some("redrive"));
        // the same row while the work queue still holds messages: pending, not lost
        ev.work_queue_depth = 3;
        assert_eq!(account(&rows, &ev)[5].outcome, Outcome::Pending);
    }
}
