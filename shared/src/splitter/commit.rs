//! The end of a run that goes on past the guards: send what the pass kept (or read the file
//! again to stream it), then the tombstones of removed records (a feed with
//! `removed = "send"`), settle what SQS refused, write the rejects report and the removed
//! list, and replace the feed's state by a conditional write.

use super::error::HeldError;
use super::pass::{PassFailure, PassOutput, SendMode};
use super::run::{ms, now_rfc3339, Attempt, Diffed, Job, Loaded};
use super::sink::{Outbox, SendStats, Stamps, TOMBSTONE_LINE};
use super::source::Rejected;
use super::state::{NameRef, NextState, Snapshot, SnapshotHeader, FORMAT_VERSION};
use super::{SplitError, Splitter};
use crate::config::{FeedConfig, Removals};
use crate::contract::envelope::{EnvelopeSource, Previous};
use crate::contract::layout::{rejects_key, removed_key, sent_key, snapshot_key};
use crate::contract::report::{RemovedRecord, RunReport, RunStatus};
use crate::contract::source::SourceObject;
use crate::ports::queue::{MessageQueue, OutMessage};
use crate::ports::store::{ObjectStore, OpenSpec, PutCondition, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tracing::warn;

impl<S: ObjectStore, Q: MessageQueue> Splitter<S, Q> {
    /// After the guards let the file go on: send what the pass kept, settle the rows SQS
    /// refused, write the rejects report, and commit the next state.
    pub(super) async fn send_and_commit(
        &self,
        feed: &FeedConfig,
        job: &Job<'_>,
        source: &SourceObject,
        diffed: Diffed,
        report: &mut RunReport,
        started: Instant,
    ) -> Result<Attempt, SplitError> {
        let Diffed {
            state,
            passed,
            stats,
            mode,
            send,
        } = diffed;
        let snapshot = state.as_ref().map(|s| s.snapshot.clone());
        let (passed, mut stats) = self
            .send_kept(feed, job, source, &snapshot, passed, stats, mode, report)
            .await?;
        // the removed set is known only now, at the end of the pass: their tombstones go
        // after the rows' messages
        if let (true, Removals::Send, Some(s)) = (send, feed.removed, &snapshot) {
            let t = Instant::now();
            let tomb = self
                .send_tombstones(
                    feed,
                    &report.run,
                    source,
                    s,
                    &passed.removed,
                    passed.version,
                )
                .await?;
            report.timings.diff_and_send_ms += ms(t);
            absorb(&mut stats, tomb);
        }
        let (entries, rejects) = settle_refused(passed.entries, passed.rejects, &stats, &snapshot);
        report.counts.rejected = rejects.len() as u64;
        // attempts that lost a commit race sent messages too: count them all
        report.counts.sent += stats.sent;
        report.send_calls += stats.calls;
        // the rejects report and the removed list go first: once the state moves, a retry is
        // a no-op and could never write them again
        self.write_rejects(&job.bucket, feed, report, &rejects)
            .await?;
        let removed = Removed {
            snapshot: snapshot.as_deref(),
            positions: &passed.removed,
            version: passed.version,
        };
        self.write_removed(&job.bucket, feed, report, removed)
            .await?;
        self.write_sent(&job.bucket, feed, report, &stats).await?;

        let header = SnapshotHeader {
            format: FORMAT_VERSION,
            feed: feed.name.clone(),
            key_columns: feed.key_columns.clone(),
            hashed_columns: passed.plan.hashed_columns.clone(),
            source: source.clone(),
            row_count: 0,
            created_at: now_rfc3339(),
            run: report.run.clone(),
            line_context: Some(passed.line_context.clone()),
            generation: passed.version,
        };
        let cond = commit_condition(&state)?;
        // the previous state is no longer needed: free it before the next one is encoded
        // (peak memory is two states, not three)
        drop((snapshot, state));
        let status = if send {
            RunStatus::Applied
        } else {
            RunStatus::Baseline
        };
        self.commit(feed, job, &header, entries, cond, status, report, started)
            .await
    }

    /// Send what the pass kept; when it kept nothing because there was more than the buffer
    /// holds, a second pass over the same object version streams them.
    #[allow(clippy::too_many_arguments)]
    async fn send_kept(
        &self,
        feed: &FeedConfig,
        job: &Job<'_>,
        source: &SourceObject,
        snapshot: &Option<Arc<Snapshot>>,
        mut passed: PassOutput,
        stats: SendStats,
        mode: SendMode,
        report: &mut RunReport,
    ) -> Result<(PassOutput, SendStats), SplitError> {
        let SendMode::Buffer { .. } = mode else {
            return Ok((passed, stats));
        };
        let t = Instant::now();
        if let Some(kept) = passed.kept.take() {
            let stats = self.send_all(kept).await?;
            report.timings.diff_and_send_ms += ms(t);
            return Ok((passed, stats));
        }
        let spec = OpenSpec::pinned(source.version_id.clone(), source.etag.clone(), source.size);
        let obj = self.store.open(&job.bucket, &job.read_key, &spec).await?;
        let t = Instant::now();
        let again = self
            .pass(
                feed,
                &report.run,
                source,
                snapshot.clone(),
                obj.body,
                SendMode::Stream,
            )
            .await;
        report.timings.diff_and_send_ms += ms(t);
        match again {
            Ok((passed, stats)) => {
                passed.counts.apply_to(&mut report.counts);
                Ok((passed, stats))
            }
            Err(PassFailure::File(rej)) => Err(SplitError::Internal(format!(
                "the second pass over the file was refused ({rej}) where the first was not"
            ))),
            Err(PassFailure::Run(e)) => Err(e),
        }
    }

    /// The tombstones of the removed records the snapshot can name (`removed`: their
    /// positions in it), made one at a time and sent through the same sender as the rows.
    async fn send_tombstones(
        &self,
        feed: &FeedConfig,
        run: &str,
        source: &SourceObject,
        snapshot: &Snapshot,
        removed: &[u32],
        version: u64,
    ) -> Result<SendStats, SplitError> {
        if removed.is_empty() || snapshot.names().is_none() {
            return Ok(SendStats::default());
        }
        let env_source = EnvelopeSource::from(source);
        let outbox = Outbox {
            feed: &feed.name,
            run,
            source: &env_source,
            stamps: Stamps::of(feed, source),
            header: &[],
            version,
        };
        let messages = removed.iter().filter_map(|&pos| {
            let pos = pos as usize;
            let name = snapshot.name_at(pos)?;
            let previous = Previous {
                content: snapshot.content_at(pos),
                chain: snapshot.chain_at(pos),
            };
            let rk = String::from_utf8_lossy(name);
            match outbox.tombstone(&rk, snapshot.keys_at(pos), previous) {
                Ok(m) => Some(m),
                Err(r) => {
                    warn!(feed = %feed.name, run, reason = %r.reason, "a tombstone was not made; its record leaves the state unsent");
                    None
                }
            }
        });
        self.send_each(messages).await
    }

    /// Send messages made as they go (the sender's channel bounds how many wait).
    async fn send_each(
        &self,
        messages: impl Iterator<Item = OutMessage>,
    ) -> Result<SendStats, SplitError> {
        let mut messages = messages.peekable();
        if messages.peek().is_none() {
            return Ok(SendStats::default());
        }
        let (tx, sender) = self.spawn_sender();
        for m in messages {
            if tx.send(m).await.is_err() {
                break; // the sender stopped; its result says why
            }
        }
        drop(tx);
        super::pass::join_sender(sender).await
    }

    /// The removed list: one line per removed record the snapshot can name (`{"record_key",
    /// "version"}`), written whenever the file removed records; the report names it and
    /// counts the records that could not be named.
    async fn write_removed(
        &self,
        bucket: &str,
        feed: &FeedConfig,
        report: &mut RunReport,
        removed: Removed<'_>,
    ) -> Result<(), SplitError> {
        let Some(snapshot) = removed.snapshot.filter(|_| !removed.positions.is_empty()) else {
            return Ok(());
        };
        let mut body = Vec::new();
        let mut unnamed = 0u64;
        for &pos in removed.positions {
            let Some(name) = snapshot.name_at(pos as usize) else {
                unnamed += 1;
                continue;
            };
            let line = RemovedRecord {
                record_key: String::from_utf8_lossy(name).into_owned(),
                version: removed.version,
            };
            serde_json::to_writer(&mut body, &line)
                .map_err(|e| SplitError::Internal(format!("removed list: {e}")))?;
            body.push(b'\n');
        }
        let key = removed_key(&feed.name, &report.run);
        self.store
            .put(
                bucket,
                &key,
                body,
                "application/x-ndjson",
                PutCondition::None,
            )
            .await?;
        report.removed_key = Some(key);
        report.counts.removed_unnamed = unnamed;
        Ok(())
    }

    /// The sent list: one line per message SQS accepted (`{"record_key",
    /// "idempotency_key", "change"}`), written whenever the run sent any; the report names
    /// it and counts what it could not list.
    pub(super) async fn write_sent(
        &self,
        bucket: &str,
        feed: &FeedConfig,
        report: &mut RunReport,
        stats: &SendStats,
    ) -> Result<(), SplitError> {
        if stats.accepted.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(stats.accepted.len() * 96);
        for r in &stats.accepted {
            serde_json::to_writer(&mut body, r)
                .map_err(|e| SplitError::Internal(format!("sent list: {e}")))?;
            body.push(b'\n');
        }
        let key = sent_key(&feed.name, &report.run);
        self.store
            .put(
                bucket,
                &key,
                body,
                "application/x-ndjson",
                PutCondition::None,
            )
            .await?;
        report.sent_key = Some(key);
        report.counts.sent_unlisted = stats.unlisted;
        Ok(())
    }

    pub(super) async fn write_rejects(
        &self,
        bucket: &str,
        feed: &FeedConfig,
        report: &mut RunReport,
        rejects: &[Rejected],
    ) -> Result<(), SplitError> {
        if rejects.is_empty() {
            return Ok(());
        }
        let key = rejects_key(&feed.name, &report.run);
        let mut body = Vec::new();
        for r in rejects {
            serde_json::to_writer(&mut body, r)
                .map_err(|e| SplitError::Internal(format!("rejects report: {e}")))?;
            body.push(b'\n');
        }
        self.store
            .put(
                bucket,
                &key,
                body,
                "application/x-ndjson",
                PutCondition::None,
            )
            .await?;
        report.rejects_key = Some(key);
        Ok(())
    }

    /// Replace the feed's state by a conditional write; then the run is done (or, for an
    /// upload, lost the race to another run).
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        feed: &FeedConfig,
        job: &Job<'_>,
        header: &SnapshotHeader,
        entries: NextState,
        cond: PutCondition,
        status: RunStatus,
        report: &mut RunReport,
        started: Instant,
    ) -> Result<Attempt, SplitError> {
        let bytes = Snapshot::encode_state(header, entries)
            .map_err(|e| SplitError::Internal(format!("encoding the next state: {e}")))?;
        let t = Instant::now();
        let put = self
            .store
            .put(
                &job.bucket,
                &snapshot_key(&feed.name),
                bytes,
                "application/octet-stream",
                cond,
            )
            .await;
        report.timings.commit_ms += ms(t);
        match put {
            Ok(etag) => {
                report.snapshot_etag = etag;
                if let Some(m) = job.approve {
                    // the state has moved: a failure here leaves a manifest that a later
                    // approve recognises as applied and cleans up
                    if let Err(e) = self.remove_held(&job.bucket, &feed.name, m).await {
                        warn!(feed = %feed.name, held = %m.id, error = %e, "the held file was applied but could not be removed; approve it again to clean up");
                    }
                }
                self.finish(report, started, status)
                    .await
                    .map(Attempt::Done)
            }
            Err(StoreError::PreconditionFailed) if job.approve.is_some() => {
                Err(HeldError::StateChangedWhileApplying {
                    feed: feed.name.clone(),
                }
                .into())
            }
            Err(StoreError::PreconditionFailed) => Ok(Attempt::LostRace),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a run removed: positions in the snapshot it was diffed against, and the run's
/// version.
struct Removed<'a> {
    snapshot: Option<&'a Snapshot>,
    positions: &'a [u32],
    version: u64,
}

/// Another send's counts added to a run's.
fn absorb(stats: &mut SendStats, more: SendStats) {
    stats.sent += more.sent;
    stats.calls += more.calls;
    stats.retried_entries += more.retried_entries;
    stats.refused.extend(more.refused);
    stats.max_in_flight = stats.max_in_flight.max(more.max_in_flight);
    stats.unlisted += more.unlisted;
    super::sink::list_sent(stats, more.accepted);
}

/// Rows SQS refused stay at their previous state (so a later file retries them) and join
/// the rejects with SQS's reason. A refused tombstone puts its removed record back as the
/// snapshot had it, so the next file removes it (and sends its tombstone) again.
fn settle_refused(
    mut entries: NextState,
    mut rejects: Vec<Rejected>,
    stats: &SendStats,
    snapshot: &Option<Arc<Snapshot>>,
) -> (NextState, Vec<Rejected>) {
    if stats.refused.is_empty() {
        return (entries, rejects);
    }
    let (tombstones, rows): (Vec<_>, Vec<_>) =
        stats.refused.iter().partition(|r| r.line == TOMBSTONE_LINE);
    let refused: HashSet<u64> = rows.iter().map(|r| r.key_fp).collect();
    entries.revert(&refused, |key| {
        snapshot
            .as_ref()
            .and_then(|s| s.entry(key))
            .map(|e| [e.content, e.chain])
    });
    if let Some(s) = snapshot {
        let back = tombstones
            .iter()
            .filter_map(|r| s.position(r.key_fp))
            .map(|pos| (s.keys_at(pos), s.vals_at(pos), NameRef::old(pos)))
            .collect();
        entries.restore(back);
    }
    rejects.extend(rows.iter().map(|r| Rejected {
        line: r.line,
        reason: r.reason.clone(),
        fields: Vec::new(),
    }));
    rejects.extend(tombstones.iter().map(|r| Rejected {
        line: r.line,
        reason: format!(
            "{}: the removal (tombstone) of a record this file no longer has; the record stays in the state, so the next file removes it again",
            r.reason
        ),
        fields: Vec::new(),
    }));
    (entries, rejects)
}

/// The condition the next state is written under: replace exactly the state read, or
/// create the first one.
fn commit_condition(state: &Option<Loaded>) -> Result<PutCondition, SplitError> {
    match state {
        None => Ok(PutCondition::IfAbsent),
        Some(st) => st.etag.clone().map(PutCondition::IfMatch).ok_or_else(|| {
            SplitError::Internal(
                "the feed's state was read without an ETag; it cannot be replaced safely".into(),
            )
        }),
    }
}
