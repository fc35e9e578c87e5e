//! `casefeed held` / `casefeed approve` / `casefeed discard`: the operator's side of the
//! splitter's guards. A file a guard stopped waits under `held/<feed>/`; these commands list
//! it, release it (send exactly its rows once and commit the state) or drop it.
//!
//! They use the splitter's own configuration from the environment — `CASEFEED_CONFIG`,
//! `WORK_QUEUE_URL` and the usual AWS variables — so an approval sends to the same queue
//! with the same envelopes and idempotency keys the function would have used.

use casefeed::contract::report::RunReport;
use casefeed::splitter::{Outcome, SplitError};

#[derive(clap::Args, Debug)]
pub struct HeldArgs {
    /// The data bucket (holds incoming/, state/, runs/, held/).
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    /// Only this feed.
    #[arg(long)]
    pub feed: Option<String>,
    /// Print the manifests as JSON lines.
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
}

#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error(transparent)]
    Config(#[from] casefeed::config::ConfigError),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error("unexpected outcome: {0}")]
    Unexpected(String),
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

pub async fn list(args: HeldArgs) -> Result<(), HeldError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let splitter = casefeed::adapters::env::splitter_from_env(&conf).await?;
    let held = splitter
        .list_held(&args.bucket, args.feed.as_deref())
        .await?;
    if args.json {
        for m in &held {
            if let Ok(line) = serde_json::to_string(m) {
                println!("{line}");
            }
        }
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

pub async fn approve(args: DecideArgs) -> Result<(), HeldError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let splitter = casefeed::adapters::env::splitter_from_env(&conf).await?;
    let r = report(splitter.approve(&args.bucket, &args.feed, &args.id).await?)?;
    print_report(&r);
    Ok(())
}

pub async fn discard(args: DecideArgs) -> Result<(), HeldError> {
    let conf = casefeed::adapters::env::aws_config().await;
    let splitter = casefeed::adapters::env::splitter_from_env(&conf).await?;
    let r = report(splitter.discard(&args.bucket, &args.feed, &args.id).await?)?;
    print_report(&r);
    Ok(())
}
