//! The real splitter on the file store and null queue: config, events, report, answer check.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use casefeed::config::{Config, FeedConfig};
use casefeed::contract::event::ObjectEvent;
use casefeed::contract::report::{RunReport, RunStatus};
use casefeed::ports::store::ObjectStore;
use casefeed::splitter::{Outcome, Splitter, SplitterSettings};

use crate::gen::TS_COLUMN;

use super::cli::Tool;
use super::errors::{failed, io_ctx, BenchError};
use super::expected::Expected;
use super::helpers::check_keys;
use super::store::NullQueue;
use super::{BUCKET, FEED, KEY_COLUMN};

fn bench_config() -> Arc<Config> {
    let mut feed = FeedConfig::new(FEED, &[KEY_COLUMN]);
    // absent from the main pair (csv-diff cannot ignore it); present and refreshed in every
    // row of the casefeed-ts pair
    feed.ignore_columns = vec![TS_COLUMN.into()];
    feed.guards.max_changes = u64::MAX;
    feed.guards.max_change_share = 1.0;
    feed.guards.max_removed_share = 1.0;
    Arc::new(Config { feeds: vec![feed] })
}

pub(super) fn splitter<S: ObjectStore>(
    store: S,
    queue: NullQueue,
    tool: Tool,
) -> Splitter<S, NullQueue> {
    Splitter {
        store,
        queue,
        config: bench_config(),
        settings: SplitterSettings {
            known_lines: tool != Tool::CasefeedFull,
            ..SplitterSettings::default()
        },
    }
}

pub(super) fn event(key: &str, etag: Option<String>, size: Option<u64>) -> ObjectEvent {
    ObjectEvent {
        bucket: BUCKET.into(),
        key: key.into(),
        etag,
        size,
        event_name: Some("ObjectCreated:Put".into()),
        ..ObjectEvent::default()
    }
}

pub(super) fn report_of(outcome: Outcome) -> Result<RunReport, BenchError> {
    match outcome {
        Outcome::Report(r) => Ok(*r),
        Outcome::Skipped { key, reason } => {
            Err(failed(format!("the splitter skipped {key}: {reason}")))
        }
    }
}

/// Link (or copy) a file into place.
pub(super) fn link_or_copy(from: &Path, to: &Path) -> Result<(), BenchError> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
    }
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io_ctx(format!(
            "copying {} to {}",
            from.display(),
            to.display()
        )))?;
    }
    Ok(())
}

/// Check a casefeed run's report and the keys it sent against the generator's answers.
pub(super) fn check_casefeed(
    report: &RunReport,
    sent: Vec<String>,
    exp: &Expected,
) -> Result<(), BenchError> {
    if report.status != RunStatus::Applied {
        return Err(BenchError::Check(format!(
            "casefeed: run status {:?} (expected applied){}",
            report.status,
            report
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )));
    }
    let c = &report.counts;
    let want = (
        exp.new.len() as u64,
        exp.changed.len() as u64,
        exp.removed.len() as u64,
    );
    if (c.new, c.changed, c.removed) != want {
        return Err(BenchError::Check(format!(
            "casefeed: report counts new {} changed {} removed {}, expected new {} changed {} removed {}",
            c.new, c.changed, c.removed, want.0, want.1, want.2
        )));
    }
    let n = sent.len();
    let set: HashSet<String> = sent.into_iter().collect();
    if set.len() != n {
        return Err(BenchError::Check(format!(
            "casefeed: {} messages sent for {} distinct record keys",
            n,
            set.len()
        )));
    }
    check_keys("casefeed sent record keys", &set, &exp.sent()).map_err(BenchError::Check)
}
