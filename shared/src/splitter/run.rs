//! One run of the splitter over one object, as named phases: load the state, admit, open,
//! the diff pass, the guards, send what was kept, settle refused rows, commit the next state,
//! report. A lost commit race runs the phases again from a fresh state.

use super::admit::{self, Admission, StateRef};
use super::error::HeldError;
use super::filter::guards::{evaluate, hold_reason, GuardInput};
use super::pass::{PassFailure, PassOutput, SendMode};
use super::sink::SendStats;
use super::source::Rejected;
use super::state::{NextState, Snapshot, SnapshotHeader, FORMAT_VERSION};
use super::{Outcome, SplitError, Splitter};
use crate::config::{FeedConfig, FirstFile};
use crate::contract::held::HeldManifest;
use crate::contract::layout::{rejects_key, run_report_key, snapshot_key};
use crate::contract::report::{Counts, RunReport, RunStatus, SchemaReport, Timings};
use crate::contract::source::SourceObject;
use crate::ports::queue::MessageQueue;
use crate::ports::store::{ObjectStore, OpenObject, OpenSpec, PutCondition, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

/// What a run reads and how it treats the result.
pub(super) struct Job<'a> {
    /// The data bucket.
    pub bucket: String,
    /// The object read (the upload, or the held copy).
    pub read_key: String,
    /// Which version of it.
    pub spec: OpenSpec,
    /// The manifest of the held file being approved; `None` for an upload.
    pub approve: Option<&'a HeldManifest>,
}

/// The feed's state as one attempt loaded it.
struct Loaded {
    snapshot: Arc<Snapshot>,
    etag: Option<String>,
}

/// What the diff pass of an attempt left, with the state it was made against.
struct Diffed {
    state: Option<Loaded>,
    passed: PassOutput,
    stats: SendStats,
    mode: SendMode,
    /// Whether the run sends (a baseline does not).
    send: bool,
}

/// How one attempt ended.
enum Attempt {
    Done(Outcome),
    /// Another run committed the feed's state first.
    LostRace,
}

/// A new run report: `failed` until the run says otherwise.
pub(super) fn new_report(feed: &FeedConfig, run: String, source: SourceObject) -> RunReport {
    RunReport {
        v: 1,
        feed: feed.name.clone(),
        run,
        status: RunStatus::Failed,
        reason: None,
        source,
        previous: None,
        counts: Counts::default(),
        schema: SchemaReport::default(),
        guards: Vec::new(),
        held: None,
        approved_held: None,
        rejects_key: None,
        snapshot_etag: None,
        send_calls: 0,
        commit_attempts: 0,
        started_at: now_rfc3339(),
        finished_at: String::new(),
        timings: Timings::default(),
    }
}

pub(super) fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn state_ref(state: &Option<Loaded>) -> Option<StateRef<'_>> {
    state.as_ref().map(|s| StateRef {
        source: &s.snapshot.header.source,
        etag: s.etag.as_deref(),
    })
}

impl<S: ObjectStore, Q: MessageQueue> Splitter<S, Q> {
    /// Runs a job and leaves a report whatever happens: a failed run gets a `failed` report
    /// (best effort) and its error goes back to the caller, so Lambda retries or records it.
    pub(super) async fn reported(
        &self,
        feed: &FeedConfig,
        run: String,
        source: SourceObject,
        job: Job<'_>,
    ) -> Result<Outcome, SplitError> {
        let started = Instant::now();
        let mut report = new_report(feed, run, source.clone());
        match self.run(feed, source, &job, &mut report, started).await {
            Ok(o) => Ok(o),
            Err(e) => {
                if report.status == RunStatus::Failed && report.finished_at.is_empty() {
                    report.reason = Some(e.to_string());
                    // best effort: the error itself is what makes AWS retry or record it
                    if let Err(w) = self.finish(&mut report, started, RunStatus::Failed).await {
                        warn!(feed = %feed.name, run = %report.run, error = %w, "the failed run's report could not be written");
                    }
                }
                Err(e)
            }
        }
    }

    async fn run(
        &self,
        feed: &FeedConfig,
        mut source: SourceObject,
        job: &Job<'_>,
        report: &mut RunReport,
        started: Instant,
    ) -> Result<Outcome, SplitError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            report.commit_attempts = attempt;
            report.rejects_key = None;
            match self
                .attempt(feed, &mut source, job, report, started)
                .await?
            {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::LostRace if attempt >= self.settings.max_commit_attempts => {
                    return Err(SplitError::Contention {
                        feed: feed.name.clone(),
                        attempts: attempt,
                    })
                }
                Attempt::LostRace => {
                    warn!(feed = %feed.name, run = %report.run, attempt, "the feed's state changed while this file was processed; re-reading it");
                }
            }
        }
    }

    /// One attempt: every phase from a freshly loaded state to the commit.
    async fn attempt(
        &self,
        feed: &FeedConfig,
        source: &mut SourceObject,
        job: &Job<'_>,
        report: &mut RunReport,
        started: Instant,
    ) -> Result<Attempt, SplitError> {
        let bucket = job.bucket.as_str();
        let limit = feed.guards.max_object_bytes;
        let state = self.load_state(feed, bucket, report).await?;
        if let Some(m) = job.approve {
            report.approved_held = Some(m.id.clone());
        }
        match admit::before_open(state_ref(&state), job.approve, source, limit)? {
            Admission::Proceed => {}
            Admission::AlreadyApplied => {
                return self.already_applied(feed, job, report, started).await
            }
            Admission::End { status, reason } => {
                return self.end(report, started, status, reason).await
            }
        }
        let Some(obj) = self.open_source(job, source, report).await? else {
            return Ok(Attempt::Done(Outcome::Skipped {
                key: source.key.clone(),
                reason: "the object was deleted or replaced after this event; a later event covers the replacement".into(),
            }));
        };
        let admitted = admit::after_open(
            state_ref(&state),
            job.approve.is_some(),
            source,
            obj.meta.size,
            limit,
        );
        if let Admission::End { status, reason } = admitted {
            return self.end(report, started, status, reason).await;
        }

        let send = state.is_some() || feed.first_file == FirstFile::Send;
        let mode = self.send_mode(feed, send, job);
        let snapshot = state.as_ref().map(|s| s.snapshot.clone());
        let previous_rows = snapshot.as_ref().map(|s| s.len() as u64);
        let t = Instant::now();
        let passed = self
            .pass(feed, &report.run, source, snapshot, obj.body, mode)
            .await;
        report.timings.diff_and_send_ms += ms(t);
        let (passed, stats) = match passed {
            Ok(x) => x,
            Err(PassFailure::File(rej)) => {
                return self
                    .end(report, started, RunStatus::Rejected, rej.to_string())
                    .await
            }
            Err(PassFailure::Run(e)) => return Err(e),
        };
        record_pass(report, &passed);

        if job.approve.is_none() {
            if let Some(reason) = guard(feed, report, &passed, previous_rows, send) {
                report.counts.rejected = passed.rejects.len() as u64;
                self.write_rejects(bucket, feed, report, &passed.rejects)
                    .await?;
                let state_etag = state.as_ref().and_then(|s| s.etag.clone());
                let held = self.hold(feed, source, state_etag, reason, report, started);
                return held.await.map(Attempt::Done);
            }
        }

        let diffed = Diffed {
            state,
            passed,
            stats,
            mode,
            send,
        };
        self.send_and_commit(feed, job, source, diffed, report, started)
            .await
    }

    /// After the guards let the file go on: send what the pass kept, settle the rows SQS
    /// refused, write the rejects report, and commit the next state.
    async fn send_and_commit(
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
        let (passed, stats) = self
            .send_kept(feed, job, source, &snapshot, passed, stats, mode, report)
            .await?;
        let (entries, rejects) = settle_refused(passed.entries, passed.rejects, &stats, &snapshot);
        report.counts.rejected = rejects.len() as u64;
        // attempts that lost a commit race sent messages too: count them all
        report.counts.sent += stats.sent;
        report.send_calls += stats.calls;
        // the rejects report goes first: once the state moves, a retry is a no-op and could
        // never write it again
        self.write_rejects(&job.bucket, feed, report, &rejects)
            .await?;

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

    /// The feed's state, `None` for a feed's first file; times the read.
    async fn load_state(
        &self,
        feed: &FeedConfig,
        bucket: &str,
        report: &mut RunReport,
    ) -> Result<Option<Loaded>, SplitError> {
        let t = Instant::now();
        let key = snapshot_key(&feed.name);
        let fetched = self.store.get_bytes(bucket, &key).await?;
        let state = match fetched {
            None => None,
            Some(f) => {
                let snapshot = Snapshot::decode(&f.bytes, Some(&feed.name)).map_err(|source| {
                    SplitError::Snapshot {
                        bucket: bucket.to_string(),
                        key: key.clone(),
                        source,
                    }
                })?;
                Some(Loaded {
                    snapshot: Arc::new(snapshot),
                    etag: f.etag,
                })
            }
        };
        report.timings.read_state_ms += ms(t);
        report.previous = state.as_ref().map(|s| s.snapshot.header.source.clone());
        Ok(state)
    }

    /// An approval whose file the state already comes from: an earlier approval committed
    /// but did not clean up. The held file goes; the run is a no-op.
    async fn already_applied(
        &self,
        feed: &FeedConfig,
        job: &Job<'_>,
        report: &mut RunReport,
        started: Instant,
    ) -> Result<Attempt, SplitError> {
        if let Some(m) = job.approve {
            self.remove_held(&job.bucket, &feed.name, m).await?;
        }
        let reason = "the feed's state already comes from this held file".to_string();
        self.end(report, started, RunStatus::Noop, reason).await
    }

    /// The run ends without reading (on): the status and why.
    async fn end(
        &self,
        report: &mut RunReport,
        started: Instant,
        status: RunStatus,
        reason: String,
    ) -> Result<Attempt, SplitError> {
        report.reason = Some(reason);
        self.finish(report, started, status)
            .await
            .map(Attempt::Done)
    }

    /// Open the object to read. `None`: the upload was deleted or replaced after its event
    /// (a later event covers the replacement). An upload's identity is completed from the
    /// store's answer (ETag, version, last-modified, size).
    async fn open_source(
        &self,
        job: &Job<'_>,
        source: &mut SourceObject,
        report: &mut RunReport,
    ) -> Result<Option<OpenObject>, SplitError> {
        let obj = match self.store.open(&job.bucket, &job.read_key, &job.spec).await {
            Ok(o) => o,
            Err(StoreError::NotFound { .. }) | Err(StoreError::PreconditionFailed)
                if job.approve.is_none() =>
            {
                return Ok(None)
            }
            Err(e @ StoreError::NotFound { .. }) | Err(e @ StoreError::PreconditionFailed) => {
                return Err(HeldError::CopyMissing {
                    bucket: job.bucket.clone(),
                    key: job.read_key.clone(),
                    problem: e.to_string(),
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        if job.approve.is_none() {
            source.etag = obj.meta.etag.clone().or(source.etag.take());
            source.version_id = obj.meta.version_id.clone().or(source.version_id.take());
            source.last_modified = obj.meta.last_modified.clone();
            source.size = obj.meta.size.or(source.size);
            report.source = source.clone();
        }
        Ok(Some(obj))
    }

    /// How the pass treats its messages: none for a baseline, streamed for an approved file
    /// (the guards have had their say), kept until the guards decide for an upload.
    fn send_mode(&self, feed: &FeedConfig, send: bool, job: &Job<'_>) -> SendMode {
        match (send, job.approve) {
            (false, _) => SendMode::Off,
            (true, Some(_)) => SendMode::Stream,
            (true, None) => SendMode::Buffer {
                max_count: feed.guards.max_changes,
                max_bytes: self.settings.hold_buffer_bytes,
            },
        }
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

    async fn write_rejects(
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
        let bytes = Snapshot::encode_state(header, &entries)
            .map_err(|e| SplitError::Internal(format!("encoding the next state: {e}")))?;
        drop(entries);
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

    /// Write the report, log the run, emit its metrics.
    pub(super) async fn finish(
        &self,
        report: &mut RunReport,
        started: Instant,
        status: RunStatus,
    ) -> Result<Outcome, SplitError> {
        report.status = status;
        report.finished_at = now_rfc3339();
        report.timings.total_ms = ms(started);
        let body =
            serde_json::to_vec_pretty(&*report).map_err(|e| SplitError::Internal(e.to_string()))?;
        self.store
            .put(
                &report.source.bucket,
                &run_report_key(&report.feed, &report.run),
                body,
                "application/json",
                PutCondition::None,
            )
            .await?;
        let c = &report.counts;
        info!(
            feed = %report.feed, run = %report.run, status = ?report.status,
            reason = report.reason.as_deref().unwrap_or(""),
            read = c.read, new = c.new, changed = c.changed, removed = c.removed,
            unchanged = c.unchanged, duplicate = c.duplicate, rejected = c.rejected, sent = c.sent,
            total_ms = report.timings.total_ms,
            "run finished"
        );
        crate::metrics::emit_run(report);
        Ok(Outcome::Report(Box::new(report.clone())))
    }
}

/// The pass's counts and schema into the report.
fn record_pass(report: &mut RunReport, passed: &PassOutput) {
    passed.counts.apply_to(&mut report.counts);
    report.counts.read = passed.read;
    report.schema = SchemaReport {
        columns: passed.header.clone(),
        hashed_columns: passed.plan.hashed_columns.clone(),
        added: passed.plan.added.clone(),
        removed: passed.plan.removed.clone(),
    };
}

/// Every guard's verdict into the report; the reason to hold the file, if one tripped.
fn guard(
    feed: &FeedConfig,
    report: &mut RunReport,
    passed: &PassOutput,
    previous_rows: Option<u64>,
    sends: bool,
) -> Option<String> {
    report.guards = evaluate(
        &feed.guards,
        &GuardInput {
            previous_rows,
            counts: passed.counts,
            sends,
            removed_columns: &passed.plan.removed,
        },
    );
    hold_reason(&report.guards)
}

/// Rows SQS refused stay at their previous state (so a later file retries them) and join
/// the rejects with SQS's reason.
fn settle_refused(
    mut entries: NextState,
    mut rejects: Vec<Rejected>,
    stats: &SendStats,
    snapshot: &Option<Arc<Snapshot>>,
) -> (NextState, Vec<Rejected>) {
    if stats.refused.is_empty() {
        return (entries, rejects);
    }
    let refused: HashSet<u64> = stats.refused.iter().map(|r| r.key_fp).collect();
    entries.revert(&refused, |key| {
        snapshot
            .as_ref()
            .and_then(|s| s.entry(key))
            .map(|e| [e.content, e.chain])
    });
    rejects.extend(stats.refused.iter().map(|r| Rejected {
        line: r.line,
        reason: r.reason.clone(),
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
