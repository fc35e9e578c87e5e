//! A dry run of one feed on local files: what the splitter would do with a next export, given
//! the previous one as the feed's state — without AWS. The real [`Splitter`] runs over a
//! [`MemoryStore`] and a [`MemoryQueue`]: the previous file (if any) is processed first as
//! the feed's first file, forced to be a baseline (it sets the state and sends nothing),
//! then the next file, uploaded later. Without a previous file the next one is the feed's
//! first file under its configured `first_file`.
//!
//! The [`Preview`] holds both run reports (status, reason, counts, guards, schema), the
//! messages the next file would send as [`SentRecord`]s, the record keys it would remove,
//! and its rejected rows by line and reason. A held file is also approved in memory, to
//! show what an approval would send. Row values stay in memory: the rejects report the
//! splitter writes holds each refused row's fields, and only their line and reason are read
//! from it.

use super::{Outcome, SplitError, Splitter, SplitterSettings};
use crate::config::{Config, FeedConfig, FirstFile, Removals};
use crate::contract::event::ObjectEvent;
use crate::contract::report::{
    parse_json_lines, GuardKind, RemovedRecord, RunReport, RunStatus, SentRecord,
};
use crate::contract::source::ExportOrder;
use crate::ports::queue::MemoryQueue;
use crate::ports::store::MemoryStore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The bucket of the in-memory store a preview runs in.
pub const PREVIEW_BUCKET: &str = "casefeed-preview";

/// Why a preview could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The feed named is not in the configuration.
    #[error("no feed `{feed}` is configured (the configuration has: {})", known.join(", "))]
    UnknownFeed {
        /// The feed named.
        feed: String,
        /// The configuration's feeds, in its order.
        known: Vec<String>,
    },
    /// The splitter failed on one of the files (a run that would be retried or needs an
    /// operator).
    #[error("the splitter failed on the {file} file: {source}")]
    Split {
        /// `previous`, `next`, or `next (approved)`.
        file: &'static str,
        /// The splitter's error.
        #[source]
        source: SplitError,
    },
    /// The splitter did not process one of the files.
    #[error("the splitter skipped the {file} file: {reason}")]
    Skipped {
        /// `previous`, `next`, or `next (approved)`.
        file: &'static str,
        /// Why.
        reason: String,
    },
    /// A list the run wrote (rejects, removed) is missing or does not parse.
    #[error("the run's list {key} is unreadable: {problem}")]
    Unreadable {
        /// The list's key in the preview's store.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// One row the splitter refused: where and why, never its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    /// The 1-based physical line where the row starts.
    pub line: u64,
    /// Why the row was refused.
    pub reason: String,
}

/// What one run sends and removes, by record key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// The messages SQS would accept, by record key (tombstones of removed records included
    /// when the feed sends removals).
    pub sent: Vec<SentRecord>,
    /// The record keys the file no longer has, sorted: sent as tombstones only by a feed with
    /// `removed = "send"`, listed either way.
    pub removed: Vec<String>,
}

impl Changes {
    /// The record keys sent with this change (`new`, `changed` or `removed`), sorted.
    pub fn sent_keys(&self, change: &str) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .sent
            .iter()
            .filter(|s| s.change == change)
            .map(|s| s.record_key.as_str())
            .collect();
        keys.sort_unstable();
        keys
    }
}

/// What would become of the next file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// It would be applied and its messages sent.
    Send {
        /// Messages it would send.
        messages: u64,
    },
    /// It would be accepted with nothing to send: no change, or a first file that only sets
    /// the state (`baseline`).
    NothingToSend {
        /// The run's status: `applied`, `baseline` or `noop`.
        status: RunStatus,
    },
    /// A guard would hold it: nothing sent until an operator approves it.
    Held {
        /// The guards that tripped.
        guards: Vec<GuardKind>,
        /// The run's reason: each tripped guard's figures.
        reason: String,
    },
    /// It would be refused as a whole (or ignored): nothing sent, the state unchanged.
    NotApplied {
        /// The run's status (`rejected`, `stale`, …).
        status: RunStatus,
        /// Why.
        reason: String,
    },
    /// The previous file did not become the feed's state (refused as a whole): the next one
    /// was not run.
    PreviousNotUsable {
        /// The previous file's run status.
        status: RunStatus,
        /// Why.
        reason: String,
    },
}

/// What approving a held file would do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    /// The approval's run report.
    pub report: RunReport,
    /// What it would send and remove.
    pub changes: Changes,
}

/// A dry run's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    /// The feed.
    pub feed: String,
    /// Whether the feed sends a tombstone per removed record (`removed = "send"`).
    pub sends_removals: bool,
    /// The next file's fate.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The previous file's run (a baseline when it became the state); `None` without one.
    pub previous: Option<RunReport>,
    /// The previous file's refused rows.
    pub previous_rejected: Vec<RejectedLine>,
    /// The next file's run; `None` when the previous file did not become the state.
    pub next: Option<RunReport>,
    /// What the next file's run would send and remove (nothing when it is held).
    pub changes: Changes,
    /// The next file's refused rows.
    pub rejected: Vec<RejectedLine>,
    /// For a held next file: what approving it would send and remove.
    pub if_approved: Option<Approval>,
}

/// Dry-run feed `feed` of `config`: `previous` (if given) becomes the feed's state, then
/// `next` is processed by the real splitter in memory. Plain or gzip bytes, as uploaded.
pub async fn preview(
    config: &Config,
    feed: &str,
    previous: Option<Vec<u8>>,
    next: Vec<u8>,
) -> Result<Preview, PreviewError> {
    let fc = config
        .feed(feed)
        .ok_or_else(|| PreviewError::UnknownFeed {
            feed: feed.to_string(),
            known: config.feeds.iter().map(|f| f.name.clone()).collect(),
        })?
        .clone();
    let store = MemoryStore::new();
    let queue = MemoryQueue::new();
    let splitter = |config: Config| Splitter {
        store: store.clone(),
        queue: queue.clone(),
        config: Arc::new(config),
        settings: SplitterSettings::default(),
    };
    let now = chrono::Utc::now();

    let mut previous_report = None;
    let mut previous_rejected = Vec::new();
    if let Some(bytes) = previous {
        let mut as_baseline = config.clone();
        for f in as_baseline.feeds.iter_mut().filter(|f| f.name == fc.name) {
            f.first_file = FirstFile::Baseline;
        }
        let ev = upload(&store, &fc, 1, bytes, now - chrono::Duration::minutes(30));
        let outcome = splitter(as_baseline).process(&ev).await;
        let report = report_of("previous", outcome)?;
        previous_rejected = rejected_lines(&store, &report)?;
        queue.take();
        if report.status != RunStatus::Baseline {
            return Ok(Preview {
                sends_removals: fc.removed == Removals::Send,
                feed: fc.name,
                verdict: Verdict::PreviousNotUsable {
                    status: report.status,
                    reason: report.reason.clone().unwrap_or_default(),
                },
                previous: Some(report),
                previous_rejected,
                next: None,
                changes: Changes::default(),
                rejected: Vec::new(),
                if_approved: None,
            });
        }
        previous_report = Some(report);
    }

    let real = splitter(config.clone());
    let ev = upload(&store, &fc, 2, next, now);
    let report = report_of("next", real.process(&ev).await)?;
    let changes = changes_of(&store, &queue, &report)?;
    let rejected = rejected_lines(&store, &report)?;
    let if_approved = match &report.held {
        Some(held) => {
            let outcome = real.approve(PREVIEW_BUCKET, &fc.name, &held.id).await;
            let approved = report_of("next (approved)", outcome)?;
            let changes = changes_of(&store, &queue, &approved)?;
            Some(Approval {
                report: approved,
                changes,
            })
        }
        None => None,
    };
    Ok(Preview {
        sends_removals: fc.removed == Removals::Send,
        feed: fc.name,
        verdict: verdict(&report),
        previous: previous_report,
        previous_rejected,
        next: Some(report),
        changes,
        rejected,
        if_approved,
    })
}

/// Put file number `n` under the feed's incoming prefix, as an upload at `at`: later files
/// get a later key, event time and sequencer (and order value, for a feed ordered by
/// metadata), so each is newer by any of the feed's orders.
fn upload(
    store: &MemoryStore,
    feed: &FeedConfig,
    n: u32,
    body: Vec<u8>,
    at: chrono::DateTime<chrono::Utc>,
) -> ObjectEvent {
    let name = if n == 1 { "previous" } else { "next" };
    let key = format!("incoming/{}/preview-{n}-{name}.csv", feed.prefix);
    let size = body.len() as u64;
    let mut metadata = BTreeMap::new();
    if let ExportOrder::Metadata(m) = &feed.order {
        metadata.insert(m.clone(), n.to_string());
    }
    let etag = store.insert_with_metadata(PREVIEW_BUCKET, &key, body, metadata);
    ObjectEvent {
        bucket: PREVIEW_BUCKET.into(),
        key,
        etag: Some(etag),
        version_id: None,
        sequencer: Some(format!("{n:016X}")),
        size: Some(size),
        event_name: Some("ObjectCreated:Put".into()),
        event_time: Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    }
}

fn report_of(
    file: &'static str,
    outcome: Result<Outcome, SplitError>,
) -> Result<RunReport, PreviewError> {
    match outcome {
        Ok(Outcome::Report(r)) => Ok(*r),
        Ok(Outcome::Skipped { reason, .. }) => Err(PreviewError::Skipped { file, reason }),
        Err(source) => Err(PreviewError::Split { file, source }),
    }
}

fn verdict(r: &RunReport) -> Verdict {
    let reason = || r.reason.clone().unwrap_or_default();
    match r.status {
        RunStatus::Applied if r.counts.sent > 0 => Verdict::Send {
            messages: r.counts.sent,
        },
        RunStatus::Applied | RunStatus::Baseline | RunStatus::Noop => {
            Verdict::NothingToSend { status: r.status }
        }
        RunStatus::Held => Verdict::Held {
            guards: r
                .guards
                .iter()
                .filter(|g| g.tripped)
                .map(|g| g.guard)
                .collect(),
            reason: reason(),
        },
        status => Verdict::NotApplied {
            status,
            reason: reason(),
        },
    }
}

/// The lines of a JSON-lines list the run wrote, each parsed as `T`.
fn list<T: serde::de::DeserializeOwned>(
    store: &MemoryStore,
    key: &str,
) -> Result<Vec<T>, PreviewError> {
    let unreadable = |problem: String| PreviewError::Unreadable {
        key: key.to_string(),
        problem,
    };
    let bytes = store
        .get(PREVIEW_BUCKET, key)
        .ok_or_else(|| unreadable("the run names it but did not write it".into()))?;
    parse_json_lines(&bytes).map_err(|e| unreadable(e.to_string()))
}

/// The run's refused rows: line and reason only. The rejects report also holds each row's
/// fields; they are skipped as it is parsed.
fn rejected_lines(store: &MemoryStore, r: &RunReport) -> Result<Vec<RejectedLine>, PreviewError> {
    match &r.rejects_key {
        Some(key) => list(store, key),
        None => Ok(Vec::new()),
    }
}

/// What the run sent (taken from the queue) and the record keys its removed list names.
fn changes_of(
    store: &MemoryStore,
    queue: &MemoryQueue,
    r: &RunReport,
) -> Result<Changes, PreviewError> {
    let mut sent: Vec<SentRecord> = queue.take().iter().map(|m| m.sent_record()).collect();
    sent.sort_by(|a, b| a.record_key.cmp(&b.record_key));
    let mut removed: Vec<String> = match &r.removed_key {
        Some(key) => list::<RemovedRecord>(store, key)?
            .into_iter()
            .map(|x| x.record_key)
            .collect(),
        None => Vec::new(),
    };
    removed.sort_unstable();
    Ok(Changes { sent, removed })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEEDS: &str = r#"
[[feed]]
name = "labs"
key_columns = ["record_id"]
ignore_columns = ["export_timestamp"]
required_columns = ["patient_name", "result"]
guard_floor = 5
max_removed_share = 0.3

[[feed]]
name = "cases"
key_columns = ["case_id"]
first_file = "send"
removed = "send"
"#;

    const HEADER: &str = "record_id,patient_name,result,export_timestamp";

    fn config() -> Config {
        Config::from_toml(FEEDS).unwrap()
    }

    fn labs(rows: &[(u32, &str)], ts: &str) -> Vec<u8> {
        let mut s = format!("{HEADER}\n");
        for (id, result) in rows {
            s.push_str(&format!("{id},Patient Name {id},{result},{ts}\n"));
        }
        s.into_bytes()
    }

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    async fn run(feed: &str, previous: Option<Vec<u8>>, next: Vec<u8>) -> Preview {
        let c = config();
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            preview(&c, feed, previous, next),
        )
        .await
        .expect("preview hung")
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_changed_and_removed_rows_are_counted_and_named_by_record_key() {
        let prev: Vec<(u32, &str)> = (1..=10).map(|i| (i, "negative")).collect();
        let mut next: Vec<(u32, &str)> = prev.clone();
        next.retain(|(i, _)| *i != 4 && *i != 9);
        next[1].1 = "positive"; // id 2
        next[4].1 = "positive"; // id 6
        next.push((11, "negative"));
        next.push((12, "negative"));
        let p = run("labs", Some(labs(&prev, "T1")), labs(&next, "T2")).await;

        assert_eq!(p.previous.as_ref().unwrap().status, RunStatus::Baseline);
        let r = p.next.as_ref().unwrap();
        assert_eq!(r.status, RunStatus::Applied);
        let c = &r.counts;
        assert_eq!(
            (c.read, c.new, c.changed, c.removed, c.unchanged, c.rejected),
            (10, 2, 2, 2, 6, 0)
        );
        assert_eq!(p.verdict, Verdict::Send { messages: 4 });
        assert_eq!(p.changes.sent_keys("new"), ["11", "12"]);
        assert_eq!(p.changes.sent_keys("changed"), ["2", "6"]);
        assert!(
            p.changes.sent_keys("removed").is_empty(),
            "labs counts removals"
        );
        assert_eq!(p.changes.removed, keys(&["4", "9"]));
        assert!(p.changes.sent.iter().all(|s| s.idempotency_key.len() == 32));
        assert!(p.rejected.is_empty() && p.if_approved.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_previous_file_only_sets_the_state_even_for_a_feed_whose_first_file_is_sent() {
        let prev = b"case_id,status\nC1,open\nC2,open\nC3,open\n".to_vec();
        let next = b"case_id,status\nC1,open\nC2,closed\nC4,open\n".to_vec();
        let p = run("cases", Some(prev), next).await;
        let before = p.previous.as_ref().unwrap();
        assert_eq!(
            (before.status, before.counts.sent),
            (RunStatus::Baseline, 0)
        );
        assert_eq!(p.changes.sent_keys("new"), ["C4"]);
        assert_eq!(p.changes.sent_keys("changed"), ["C2"]);
        assert_eq!(
            p.changes.sent_keys("removed"),
            ["C3"],
            "a tombstone is sent"
        );
        assert_eq!(p.changes.removed, keys(&["C3"]));
        assert_eq!(p.verdict, Verdict::Send { messages: 3 });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_previous_file_the_next_one_follows_the_first_file_rule() {
        let p = run(
            "labs",
            None,
            labs(&[(1, "negative"), (2, "negative")], "T1"),
        )
        .await;
        assert!(p.previous.is_none());
        assert_eq!(
            p.verdict,
            Verdict::NothingToSend {
                status: RunStatus::Baseline
            }
        );
        assert!(p.changes.sent.is_empty());
        let p = run(
            "cases",
            None,
            b"case_id,status\nC1,open\nC2,open\n".to_vec(),
        )
        .await;
        assert_eq!(p.verdict, Verdict::Send { messages: 2 });
        assert_eq!(p.changes.sent_keys("new"), ["C1", "C2"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mass_removal_is_held_by_the_shrink_guard_and_approval_shows_what_would_go() {
        let prev: Vec<(u32, &str)> = (1..=20).map(|i| (i, "negative")).collect();
        let mut next = prev[..10].to_vec();
        next[0].1 = "positive";
        let p = run("labs", Some(labs(&prev, "T1")), labs(&next, "T2")).await;
        match &p.verdict {
            Verdict::Held { guards, reason } => {
                assert_eq!(guards, &[GuardKind::Shrink]);
                assert!(reason.contains("shrink guard"), "{reason}");
            }
            other => panic!("expected held, got {other:?}"),
        }
        assert_eq!(p.next.as_ref().unwrap().status, RunStatus::Held);
        assert!(p.changes.sent.is_empty(), "a held file sends nothing");
        let a = p.if_approved.as_ref().expect("an approval preview");
        assert_eq!(a.report.status, RunStatus::Applied);
        assert_eq!(a.changes.sent_keys("changed"), ["1"]);
        let removed: Vec<String> = (11..=20).map(|i| i.to_string()).collect();
        let mut removed_sorted = removed.clone();
        removed_sorted.sort();
        assert_eq!(a.changes.removed, removed_sorted);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_without_a_required_column_is_rejected_as_a_whole_with_the_column_named() {
        let prev = labs(&[(1, "negative")], "T1");
        let next = b"record_id,patient_name,export_timestamp\n1,Patient Name 1,T2\n".to_vec();
        let p = run("labs", Some(prev), next).await;
        match &p.verdict {
            Verdict::NotApplied { status, reason } => {
                assert_eq!(*status, RunStatus::Rejected);
                assert!(reason.contains("result"), "{reason}");
            }
            other => panic!("expected a rejected file, got {other:?}"),
        }
        let p = run(
            "labs",
            Some(b"record_id,patient_name\n1,x\n".to_vec()),
            labs(&[(1, "negative")], "T2"),
        )
        .await;
        assert!(
            matches!(
                p.verdict,
                Verdict::PreviousNotUsable {
                    status: RunStatus::Rejected,
                    ..
                }
            ),
            "{:?}",
            p.verdict
        );
        assert!(p.next.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_lines_are_listed_by_line_and_reason_without_their_values() {
        let prev = labs(&[(1, "negative"), (2, "negative")], "T1");
        let mut next = String::from(HEADER);
        next.push_str("\n1,Patient Name 1,negative,T2\n");
        next.push_str("2,Secret Value,negative,T2,extra\n"); // line 3: ragged
        next.push_str(",Hidden Person,negative,T2\n"); // line 4: empty key
        next.push_str("3,Patient Name 3,positive,T2\n");
        let p = run("labs", Some(prev), next.into_bytes()).await;
        let lines: Vec<u64> = p.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 4]);
        assert!(p.rejected[0].reason.contains("ragged"), "{:?}", p.rejected);
        assert!(
            p.rejected[1].reason.contains("empty key"),
            "{:?}",
            p.rejected
        );
        let json = serde_json::to_string(&p).unwrap();
        for value in ["Secret Value", "Hidden Person", "Patient Name"] {
            assert!(!json.contains(value), "{value} leaked into the preview");
        }
        assert_eq!(p.next.as_ref().unwrap().counts.rejected, 2);
        assert_eq!(p.changes.sent_keys("new"), ["3"]);
    }

    #[tokio::test]
    async fn an_unknown_feed_is_a_clear_error_naming_the_configured_feeds() {
        let e = preview(&config(), "nope", None, b"a\n1\n".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, PreviewError::UnknownFeed { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("`nope`") && msg.contains("labs, cases"),
            "{msg}"
        );
    }
}
