//! `casefeed held` / `casefeed approve` / `casefeed discard`: the operator's side of the
//! splitter's guards. A file a guard stopped waits under `held/<feed>/`; these commands list
//! it, release it (send exactly its rows once and commit the state) or drop it.
//!
//! They use the splitter's own configuration from the environment — `CASEFEED_CONFIG`,
//! `WORK_QUEUE_URL` and the usual AWS variables — so an approval sends to the same queue
//! with the same envelopes and idempotency keys the function would have used.
//!
//! Approve and discard need a `--reason` and write an audit record ([`crate::audit`]) that
//! names the held objects exactly: the manifest's and the copy's keys and version ids, read
//! before the action (which deletes them), and the upload that was held.

use crate::audit::{AuditError, AuditLog, AuditRecord, Counts, HeldTarget};
use crate::ops::{caller, print_json, reason, OutputError};
use casefeed::contract::layout::{held_copy_key, held_manifest_key};
use casefeed::contract::report::RunReport;
use casefeed::splitter::{Outcome, SplitError};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct HeldArgs {
    /// The data bucket (holds incoming/, state/, runs/, held/).
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    /// Only this feed.
    #[arg(long)]
    pub feed: Option<String>,
    /// One JSON document on stdout: `{"count": N, "held": [manifest, …]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DecideArgs {
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    #[arg(long)]
    pub feed: String,
    /// The held id (`casefeed held` lists them; the holding run's report names it).
    pub id: String,
    /// Why (written to the audit record).
    #[arg(long)]
    pub reason: String,
    /// One JSON document on stdout: the run report and the audit record's key.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error(transparent)]
    Config(#[from] casefeed::config::ConfigError),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error("unexpected outcome: {0}")]
    Unexpected(String),
    #[error("--reason must say why (it goes to the audit record)")]
    NoReason,
    #[error("{command} failed: {error} (audit record {key})")]
    Failed {
        command: &'static str,
        error: Box<HeldError>,
        key: String,
    },
    #[error("{command} {outcome}, but its audit record was not written: {source}")]
    AuditNotWritten {
        command: &'static str,
        outcome: String,
        #[source]
        source: Box<AuditError>,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn print_report(r: &RunReport) {
    let c = &r.counts;
    println!(
        "{}: run {} of feed {}: new {}, changed {}, removed {}, sent {}{}",
        r.status.as_str(),
        r.run,
        r.feed,
        c.new,
        c.changed,
        c.removed,
        c.sent,
        r.reason
            .as_deref()
            .map(|s| format!(" — {s}"))
            .unwrap_or_default()
    );
}

fn report(o: Outcome) -> Result<RunReport, HeldError> {
    match o {
        Outcome::Report(r) => Ok(*r),
        Outcome::Skipped { key, reason } => {
            Err(HeldError::Unexpected(format!("skipped {key}: {reason}")))
        }
    }
}

#[derive(Serialize)]
struct HeldList<'a, T: Serialize> {
    bucket: &'a str,
    count: usize,
    held: &'a [T],
}

pub async fn list(args: HeldArgs) -> Result<(), HeldError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let splitter = casefeed::adapters::env::splitter_from_env(&conf).await?;
    let held = splitter
        .list_held(&args.bucket, args.feed.as_deref())
        .await?;
    if args.json {
        print_json(&HeldList {
            bucket: &args.bucket,
            count: held.len(),
            held: &held,
        })?;
        return Ok(());
    }
    println!(
        "{:<16}  {:<12} {:<24} {:>8} {:>8} {:>8}  reason",
        "id", "feed", "held at", "new", "changed", "removed"
    );
    for m in &held {
        println!(
            "{:<16}  {:<12} {:<24} {:>8} {:>8} {:>8}  {}",
            m.id, m.feed, m.held_at, m.counts.new, m.counts.changed, m.counts.removed, m.reason
        );
    }
    println!("{} held file(s)", held.len());
    Ok(())
}

/// The held file's objects as they are now (keys, version ids, the upload), read before the
/// action; what cannot be read stays `None` (the action then reports why).
pub async fn held_target(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    feed: &str,
    id: &str,
) -> HeldTarget {
    let manifest_key = held_manifest_key(feed, id);
    let copy_key = held_copy_key(feed, id);
    let mut t = HeldTarget {
        feed: feed.to_string(),
        id: id.to_string(),
        manifest_key: manifest_key.clone(),
        copy_key: copy_key.clone(),
        ..HeldTarget::default()
    };
    if let Ok(out) = s3
        .get_object()
        .bucket(bucket)
        .key(&manifest_key)
        .send()
        .await
    {
        t.manifest_version_id = out.version_id().map(str::to_string);
        if let Ok(bytes) = out.body.collect().await {
            if let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes.into_bytes()) {
                let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
                t.source_key = m.pointer("/source/key").and_then(text);
                t.source_version_id = m.pointer("/source/version_id").and_then(text);
                t.held_run = m.get("run").and_then(text);
                if let Some(k) = m.get("copy_key").and_then(text) {
                    t.copy_key = k;
                }
            }
        }
    }
    if let Ok(out) = s3
        .head_object()
        .bucket(bucket)
        .key(&t.copy_key)
        .send()
        .await
    {
        t.copy_version_id = out.version_id().map(str::to_string);
    }
    t
}

#[derive(Serialize)]
struct DecideOutput<'a> {
    command: &'a str,
    report: &'a RunReport,
    held: &'a HeldTarget,
    audit_key: &'a str,
}

#[derive(Clone, Copy)]
enum Decision {
    Approve,
    Discard,
}

async fn decide(args: DecideArgs, what: Decision) -> Result<(), HeldError> {
    let command = match what {
        Decision::Approve => "approve",
        Decision::Discard => "discard",
    };
    let why = reason(&args.reason).ok_or(HeldError::NoReason)?;
    let conf = casefeed::adapters::env::aws_config().await;
    let splitter = casefeed::adapters::env::splitter_from_env(&conf).await?;
    let s3 = crate::audit::s3_client(&conf);
    let log = AuditLog::new(s3.clone(), &args.bucket);
    let who = caller::caller(&conf).await;
    let mut target = held_target(&s3, &args.bucket, &args.feed, &args.id).await;
    let outcome = match what {
        Decision::Approve => splitter.approve(&args.bucket, &args.feed, &args.id).await,
        Decision::Discard => splitter.discard(&args.bucket, &args.feed, &args.id).await,
    };
    let result = outcome.map_err(HeldError::from).and_then(report);
    let mut rec = AuditRecord::new(command, who, &why);
    rec.targets.insert("bucket".into(), args.bucket.clone());
    rec.counts = Counts {
        matched: 1,
        ..Counts::default()
    };
    match &result {
        Ok(r) => {
            target.run = Some(r.run.clone());
            rec.counts.done = 1;
            if matches!(what, Decision::Approve) {
                rec.counts.sent = Some(r.counts.sent);
            }
            rec.held = Some(target.clone());
            rec.finish(None);
        }
        Err(e) => {
            rec.counts.failed = 1;
            rec.held = Some(target.clone());
            rec.finish(Some(e.to_string()));
        }
    }
    let written = log.write(&rec).await;
    let r = match (result, written) {
        (Ok(r), Ok(key)) => (r, key),
        (Ok(r), Err(source)) => {
            return Err(HeldError::AuditNotWritten {
                command,
                outcome: format!("ended {} (run {})", r.status.as_str(), r.run),
                source: Box::new(source),
            })
        }
        (Err(e), Ok(key)) => {
            return Err(HeldError::Failed {
                command,
                error: Box::new(e),
                key,
            })
        }
        (Err(e), Err(_)) => return Err(e),
    };
    let (report, key) = r;
    if args.json {
        print_json(&DecideOutput {
            command,
            report: &report,
            held: &target,
            audit_key: &key,
        })?;
    } else {
        print_report(&report);
        println!("audit record s3://{}/{key}", args.bucket);
    }
    Ok(())
}

pub async fn approve(args: DecideArgs) -> Result<(), HeldError> {
    decide(args, Decision::Approve).await
}

pub async fn discard(args: DecideArgs) -> Result<(), HeldError> {
    decide(args, Decision::Discard).await
}
