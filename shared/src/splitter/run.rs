//! One run of the splitter over one object, as named phases: load the state, admit, open,
//! the diff pass, the guards — then `commit.rs` sends what was kept, settles refused rows and
//! commits the next state — and the report. A lost commit race runs the phases again from a
//! fresh state.

use super::admit::{self, Admission, StateRef};
use super::error::HeldError;
use super::filter::guards::{evaluate, hold_reason, GuardInput};
use super::pass::{PassFailure, PassOutput, SendMode};
use super::sink::SendStats;
use super::state::Snapshot;
use super::{Outcome, SplitError, Splitter};
use crate::config::{FeedConfig, FirstFile};
use crate::contract::held::HeldManifest;
use crate::contract::layout::{run_report_key, snapshot_key};
use crate::contract::report::{Counts, RunReport, RunStatus, SchemaReport, Timings};
use crate::contract::source::{ExportOrder, OrderMetadata, SourceObject};
use crate::ports::queue::MessageQueue;
use crate::ports::store::{ObjectStore, OpenObject, OpenSpec, PutCondition, StoreError};
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
pub(super) struct Loaded {
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) etag: Option<String>,
}

/// What the diff pass of an attempt left, with the state it was made against.
pub(super) struct Diffed {
    pub(super) state: Option<Loaded>,
    pub(super) passed: PassOutput,
    pub(super) stats: SendStats,
    pub(super) mode: SendMode,
    /// Whether the run sends (a baseline does not).
    pub(super) send: bool,
}

/// How one attempt ended.
pub(super) enum Attempt {
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
        removed_key: None,
        sent_key: None,
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
            report.removed_key = None;
            report.counts.removed_unnamed = 0;
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
        match admit::before_open(state_ref(&state), job.approve, source, limit, &feed.order)? {
            Admission::Proceed => {}
            Admission::AlreadyApplied => {
                return self.already_applied(feed, job, report, started).await
            }
            Admission::End { status, reason } => {
                return self.end(report, started, status, reason).await
            }
        }
        let Some(obj) = self.open_source(feed, job, source, report).await? else {
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
            &feed.order,
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
    /// store's answer (ETag, version, last-modified, size, and the order metadata of a feed
    /// ordered by it).
    async fn open_source(
        &self,
        feed: &FeedConfig,
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
            if let ExportOrder::Metadata(name) = &feed.order {
                source.order_metadata = obj.meta.metadata.get(name).map(|value| OrderMetadata {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
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
