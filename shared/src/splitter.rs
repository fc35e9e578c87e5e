//! The splitter's decisions: for one uploaded object, diff it against the feed's snapshot in
//! a streaming pass, let the guards decide, fan out new/changed rows, commit the new snapshot
//! by a conditional write, and leave a run report. A file a guard stops is held for an
//! operator ([`Splitter::approve`] / [`Splitter::discard`]).
//!
//! Sending waits for the guards: the messages of the (normally few) new/changed rows are
//! kept in memory up to a budget while the file streams; a file with more than that to send
//! and no guard against it is read a second time to stream them.

use crate::config::{Config, FeedConfig, FirstFile};
use crate::diff::{
    key_print, line_context, record_key, Class, ColumnPlan, DiffCounts, Differ, Fingerprinter,
    NextState, RowPrints,
};
use crate::envelope::{
    idempotency_key, serde_category, Change, EnvelopeRef, EnvelopeSource, FieldsRef, Previous,
    ENVELOPE_VERSION,
};
use crate::event::ObjectEvent;
use crate::guards::{hold_reason, GuardInput};
use crate::held::{held_id, valid_held_id, HeldManifest, MANIFEST_VERSION};
use crate::queue::{run_sender, MessageQueue, OutMessage, SendError, SendStats, SenderSettings};
use crate::report::{
    held_copy_key, held_manifest_key, rejects_key, run_report_key, snapshot_key, Counts, HeldRef,
    RunReport, RunStatus, SchemaReport, Timings,
};
use crate::rows::{open_stream, FileRejection, ReadError, Record, Rejected, Row, RowReader};
use crate::snapshot::{
    KnownLines, Snapshot, SnapshotError, SnapshotHeader, SourceObject, FORMAT_VERSION,
};
use crate::store::{BoxRead, ObjectStore, OpenSpec, PutCondition, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct SplitterSettings {
    pub sender: SenderSettings,
    /// Buffer between the S3 stream and the CSV parser.
    pub read_buffer: usize,
    /// Messages queued between the parser and the sender.
    pub channel_capacity: usize,
    /// Conditional-commit attempts before the run fails for retry.
    pub max_commit_attempts: u32,
    /// Bytes of messages kept while the guards cannot yet decide; past it, a file allowed to
    /// proceed is read a second time to send.
    pub hold_buffer_bytes: usize,
    /// Read the file on a thread of its own, ahead of fingerprinting: `None` decides (yes
    /// from two cores, when the rows are to be parsed rather than known by their lines).
    pub read_thread: Option<bool>,
    /// Recognise rows whose raw line the previous file had (by the snapshot's line hashes)
    /// without splitting or fingerprinting them. Off only to compare the two paths.
    pub known_lines: bool,
}

impl Default for SplitterSettings {
    fn default() -> Self {
        SplitterSettings {
            sender: SenderSettings::default(),
            read_buffer: 1024 * 1024,
            channel_capacity: 1000,
            max_commit_attempts: 3,
            hold_buffer_bytes: 16 * 1024 * 1024,
            read_thread: None,
            known_lines: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading s3://{bucket}/{key} failed: {source}")]
    Read {
        bucket: String,
        key: String,
        source: std::io::Error,
    },
    #[error("the state snapshot s3://{bucket}/{key} is unusable: {source}; the state was not changed — inspect or restore a previous version of the snapshot")]
    Snapshot {
        bucket: String,
        key: String,
        source: SnapshotError,
    },
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("lost the race to commit the state of feed `{feed}` {attempts} times in a row")]
    Contention { feed: String, attempts: u32 },
    /// A held file cannot be approved or discarded as asked (permanent: the operator decides).
    #[error("{0}")]
    Held(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SplitError {
    /// Retryable errors should fail the invocation so Lambda retries the event; permanent
    /// ones are reported (and still fail, so the failure destination records them).
    pub fn retryable(&self) -> bool {
        match self {
            SplitError::Store(e) => e.retryable(),
            SplitError::Read { .. } => true,
            SplitError::Snapshot { .. } => false,
            SplitError::Send(_) => true,
            SplitError::Contention { .. } => true,
            SplitError::Held(_) => false,
            SplitError::Internal(_) => true,
        }
    }
}

/// What became of one event record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Not ours (outside `incoming/`, unknown feed, replaced object): logged, not an error.
    Skipped {
        key: String,
        reason: String,
    },
    Report(Box<RunReport>),
}

pub struct Splitter<S: ObjectStore, Q: MessageQueue> {
    pub store: S,
    pub queue: Q,
    pub config: Arc<Config>,
    pub settings: SplitterSettings,
}

struct State {
    snapshot: Arc<Snapshot>,
    etag: Option<String>,
}

struct ParseOutput {
    header: Vec<String>,
    plan: ColumnPlan,
    entries: NextState,
    /// What the new state's line hashes are valid for.
    line_context: String,
    counts: DiffCounts,
    rejects: Vec<Rejected>,
    read: u64,
    /// The messages kept by [`SendMode::Buffer`], `None` when they did not fit.
    buffered: Option<Vec<OutMessage>>,
}

fn new_report(feed: &FeedConfig, run: String, source: SourceObject) -> RunReport {
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

fn same_etag(a: Option<&str>, b: Option<&str>) -> bool {
    a.map(|e| e.trim_matches('"')) == b.map(|e| e.trim_matches('"'))
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A run id: processing time plus a short hash of the source object's identity.
pub fn run_id(ev: &ObjectEvent) -> String {
    let ident = format!(
        "{}\0{}\0{}\0{}",
        ev.bucket,
        ev.key,
        ev.etag.as_deref().unwrap_or(""),
        ev.version_id.as_deref().unwrap_or("")
    );
    let h = xxhash_rust::xxh3::xxh3_64(ident.as_bytes());
    // a few random bits keep two runs of one event in the same millisecond apart
    let r = {
        use std::hash::{BuildHasher, Hasher};
        let mut x = std::collections::hash_map::RandomState::new().build_hasher();
        x.write_u64(h);
        x.finish()
    };
    format!(
        "{}-{:08x}{:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
        h >> 32,
        r & 0xffff
    )
}

/// SQS accepts only #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF; serde_json escapes
/// control characters but not the two BMP non-characters.
fn sqs_safe(body: String) -> String {
    if body.contains(['\u{FFFE}', '\u{FFFF}']) {
        body.replace('\u{FFFE}', "\\ufffe")
            .replace('\u{FFFF}', "\\uffff")
    } else {
        body
    }
}

/// How a diff pass treats the messages of new/changed rows.
#[derive(Debug, Clone, Copy)]
enum SendMode {
    /// Nothing is sent (a baseline).
    Off,
    /// Sent while the file streams (an approved held file: the guards have had their say).
    Stream,
    /// Kept until the guards have decided, up to a count and a byte budget; past either, the
    /// messages are dropped and, if the file may proceed, a second pass sends them.
    Buffer { max_count: u64, max_bytes: usize },
}

/// What a run reads and how it treats the result.
struct Job<'a> {
    bucket: String,
    /// The object read (the upload, or the held copy).
    read_key: String,
    spec: OpenSpec,
    approve: Option<&'a HeldManifest>,
}

impl<S: ObjectStore, Q: MessageQueue> Splitter<S, Q> {
    /// Process one object event.
    pub async fn process(&self, ev: &ObjectEvent) -> Result<Outcome, SplitError> {
        let Some(feed) = self.config.feed_for_key(&ev.key) else {
            let reason = if ev.key.starts_with(crate::config::INCOMING_PREFIX) {
                "no feed is configured for this prefix"
            } else {
                "object is outside incoming/"
            };
            return Ok(Outcome::Skipped {
                key: ev.key.clone(),
                reason: reason.into(),
            });
        };
        let feed = feed.clone();
        let source = SourceObject {
            bucket: ev.bucket.clone(),
            key: ev.key.clone(),
            etag: ev.etag.clone(),
            version_id: ev.version_id.clone(),
            last_modified: None,
            sequencer: ev.sequencer.clone(),
            size: ev.size,
            event_time: ev.event_time.clone(),
        };
        let job = Job {
            bucket: ev.bucket.clone(),
            read_key: ev.key.clone(),
            spec: OpenSpec {
                version_id: ev.version_id.clone(),
                if_match: if ev.version_id.is_none() {
                    ev.etag.clone()
                } else {
                    None
                },
                size_hint: ev.size,
            },
            approve: None,
        };
        self.reported(&feed, run_id(ev), source, job).await
    }

    /// Approve a held file: send exactly its new/changed rows (once in effect) and commit the
    /// state, provided the state is still the one the file was diffed against.
    pub async fn approve(
        &self,
        bucket: &str,
        feed_name: &str,
        id: &str,
    ) -> Result<Outcome, SplitError> {
        let (feed, manifest) = self.held_manifest(bucket, feed_name, id).await?;
        let job = Job {
            bucket: bucket.to_string(),
            read_key: manifest.copy_key.clone(),
            spec: OpenSpec {
                version_id: None,
                if_match: manifest.copy_etag.clone(),
                size_hint: manifest.source.size,
            },
            approve: Some(&manifest),
        };
        let run = format!(
            "{}-approve-{id}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ")
        );
        self.reported(&feed, run, manifest.source.clone(), job)
            .await
    }

    /// Discard a held file: delete the held copy and manifest, leave a `discarded` report.
    pub async fn discard(
        &self,
        bucket: &str,
        feed_name: &str,
        id: &str,
    ) -> Result<Outcome, SplitError> {
        let started = Instant::now();
        let (feed, m) = self.held_manifest(bucket, feed_name, id).await?;
        let run = format!(
            "{}-discard-{id}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ")
        );
        let mut report = new_report(&feed, run, m.source.clone());
        report.previous = m.previous.clone();
        report.counts = m.counts.clone();
        report.counts.sent = 0;
        report.schema = m.schema.clone();
        report.guards = m.guards.clone();
        report.reason = Some(format!(
            "held file {id} (run {}) discarded by an operator; it had been held because: {}",
            m.run, m.reason
        ));
        self.store.delete(bucket, &m.copy_key).await?;
        self.store
            .delete(bucket, &held_manifest_key(&feed.name, id))
            .await?;
        self.finish(&mut report, started, RunStatus::Discarded)
            .await
    }

    /// The held files of one feed (or all feeds), oldest first.
    pub async fn list_held(
        &self,
        bucket: &str,
        feed_name: Option<&str>,
    ) -> Result<Vec<HeldManifest>, SplitError> {
        let prefix = match feed_name {
            Some(f) => format!("held/{f}/"),
            None => "held/".to_string(),
        };
        let mut out = Vec::new();
        for key in self.store.list(bucket, &prefix).await? {
            if !key.ends_with(".json") {
                continue;
            }
            let Some(f) = self.store.get_bytes(bucket, &key).await? else {
                continue;
            };
            let m: HeldManifest = serde_json::from_slice(&f.bytes).map_err(|e| {
                SplitError::Held(format!(
                    "the held manifest s3://{bucket}/{key} is not readable: {} at line {} column {}",
                    serde_category(&e),
                    e.line(),
                    e.column()
                ))
            })?;
            out.push(m);
        }
        out.sort_by(|a, b| a.held_at.cmp(&b.held_at));
        Ok(out)
    }

    async fn held_manifest(
        &self,
        bucket: &str,
        feed_name: &str,
        id: &str,
    ) -> Result<(FeedConfig, HeldManifest), SplitError> {
        let feed = self
            .config
            .feed(feed_name)
            .ok_or_else(|| SplitError::Held(format!("no feed `{feed_name}` is configured")))?
            .clone();
        if !valid_held_id(id) {
            return Err(SplitError::Held(format!(
                "`{id}` is not a held id (16 hex digits, as `casefeed held` lists them)"
            )));
        }
        let key = held_manifest_key(&feed.name, id);
        let Some(f) = self.store.get_bytes(bucket, &key).await? else {
            return Err(SplitError::Held(format!(
                "nothing is held under s3://{bucket}/{key} (already approved or discarded?)"
            )));
        };
        let m: HeldManifest = serde_json::from_slice(&f.bytes).map_err(|e| {
            SplitError::Held(format!(
                "the held manifest s3://{bucket}/{key} is not readable: {} at line {} column {}",
                serde_category(&e),
                e.line(),
                e.column()
            ))
        })?;
        if m.feed != feed.name || m.id != id {
            return Err(SplitError::Held(format!(
                "the held manifest s3://{bucket}/{key} names another feed or id"
            )));
        }
        Ok((feed, m))
    }

    /// Runs a job and leaves a report whatever happens: a failed run gets a `failed` report
    /// (best effort) and its error goes back to the caller, so Lambda retries or records it.
    async fn reported(
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
                    let _ = self.finish(&mut report, started, RunStatus::Failed).await;
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
        let bucket = job.bucket.as_str();
        let limit = feed.guards.max_object_bytes;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            report.commit_attempts = attempt;
            report.rejects_key = None;
            let t = Instant::now();
            let state = self.load_state(feed, bucket).await?;
            report.timings.read_state_ms += ms(t);
            report.previous = state.as_ref().map(|s| s.snapshot.header.source.clone());
            let state_etag = state.as_ref().and_then(|s| s.etag.clone());

            match (job.approve, &state) {
                (Some(m), st) => {
                    report.approved_held = Some(m.id.clone());
                    if let Some(st) = st {
                        if st.snapshot.header.source.same_object(&m.source) {
                            // an earlier approval committed but did not clean up
                            self.remove_held(bucket, &feed.name, m).await?;
                            report.reason =
                                Some("the feed's state already comes from this held file".into());
                            return self.finish(report, started, RunStatus::Noop).await;
                        }
                    }
                    if !same_etag(state_etag.as_deref(), m.state_etag.as_deref()) {
                        return Err(SplitError::Held(format!(
                            "held file {} of feed `{}` was diffed against a state that has since changed (another file was applied); it cannot be approved as it is — discard it (a newer upload carries the same rows)",
                            m.id, feed.name
                        )));
                    }
                }
                (None, Some(st)) => {
                    let prev = &st.snapshot.header.source;
                    if prev.same_object(&source) {
                        report.reason =
                            Some("the feed's state already comes from this object".into());
                        return self.finish(report, started, RunStatus::Noop).await;
                    }
                    if prev.key == source.key && source.older_than(prev) {
                        report.reason = Some(
                            "an older version of this object (by S3 event sequencer) than the one the feed's state comes from".into(),
                        );
                        return self.finish(report, started, RunStatus::Stale).await;
                    }
                }
                (None, None) => {}
            }
            if let Some(size) = source.size.filter(|&n| n > limit) {
                report.reason = Some(
                    FileRejection::TooLarge { size, limit }.to_string() + " (max_object_bytes)",
                );
                return self.finish(report, started, RunStatus::Rejected).await;
            }

            let obj = match self.store.open(bucket, &job.read_key, &job.spec).await {
                Ok(o) => o,
                Err(StoreError::NotFound { .. }) | Err(StoreError::PreconditionFailed)
                    if job.approve.is_none() =>
                {
                    return Ok(Outcome::Skipped {
                        key: source.key.clone(),
                        reason: "the object was deleted or replaced after this event; a later event covers the replacement".into(),
                    });
                }
                Err(e @ StoreError::NotFound { .. }) | Err(e @ StoreError::PreconditionFailed) => {
                    return Err(SplitError::Held(format!(
                        "the held copy s3://{bucket}/{} is missing or was replaced ({e}); discard this held file",
                        job.read_key
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            if job.approve.is_none() {
                source.etag = obj.meta.etag.clone().or(source.etag);
                source.version_id = obj.meta.version_id.clone().or(source.version_id);
                source.last_modified = obj.meta.last_modified.clone();
                source.size = obj.meta.size.or(source.size);
                report.source = source.clone();
            }
            if let Some(size) = obj.meta.size.filter(|&n| n > limit) {
                report.reason = Some(
                    FileRejection::TooLarge { size, limit }.to_string() + " (max_object_bytes)",
                );
                return self.finish(report, started, RunStatus::Rejected).await;
            }
            if let (None, Some(st)) = (job.approve, &state) {
                if source.older_than(&st.snapshot.header.source) {
                    report.reason =
                        Some("the object is older than the one the feed's state comes from".into());
                    return self.finish(report, started, RunStatus::Stale).await;
                }
            }

            let send = state.is_some() || feed.first_file == FirstFile::Send;
            let mode = match (send, job.approve) {
                (false, _) => SendMode::Off,
                (true, Some(_)) => SendMode::Stream,
                (true, None) => SendMode::Buffer {
                    max_count: feed.guards.max_changes,
                    max_bytes: self.settings.hold_buffer_bytes,
                },
            };
            let snapshot = state.as_ref().map(|s| s.snapshot.clone());
            let t = Instant::now();
            let diffed = self
                .diff(feed, &report.run, &source, snapshot.clone(), obj.body, mode)
                .await;
            report.timings.diff_and_send_ms += ms(t);
            let (mut parsed, mut stats) = match diffed {
                Ok(x) => x,
                Err(DiffFailure::File(rej)) => {
                    report.reason = Some(rej.to_string());
                    return self.finish(report, started, RunStatus::Rejected).await;
                }
                Err(DiffFailure::Run(e)) => return Err(e),
            };
            report.counts.add_diff(parsed.counts);
            report.counts.read = parsed.read;
            report.schema = SchemaReport {
                columns: parsed.header.clone(),
                hashed_columns: parsed.plan.hashed_columns.clone(),
                added: parsed.plan.added.clone(),
                removed: parsed.plan.removed.clone(),
            };

            if job.approve.is_none() {
                report.guards = crate::guards::evaluate(
                    &feed.guards,
                    &GuardInput {
                        previous_rows: snapshot.as_ref().map(|s| s.len() as u64),
                        counts: parsed.counts,
                        sends: send,
                        removed_columns: &parsed.plan.removed,
                    },
                );
                if let Some(reason) = hold_reason(&report.guards) {
                    report.counts.rejected = parsed.rejects.len() as u64;
                    self.write_rejects(bucket, feed, report, &parsed.rejects)
                        .await?;
                    return self
                        .hold(feed, &source, state_etag, reason, report, started)
                        .await;
                }
            }

            if let SendMode::Buffer { .. } = mode {
                match parsed.buffered.take() {
                    Some(msgs) => {
                        let t = Instant::now();
                        stats = self.send_buffered(msgs).await?;
                        report.timings.diff_and_send_ms += ms(t);
                    }
                    None => {
                        // more to send than the buffer holds: a second pass over the same
                        // object version streams them
                        let spec = OpenSpec {
                            version_id: source.version_id.clone(),
                            if_match: if source.version_id.is_none() {
                                source.etag.clone()
                            } else {
                                None
                            },
                            size_hint: source.size,
                        };
                        let obj = self.store.open(bucket, &job.read_key, &spec).await?;
                        let t = Instant::now();
                        let again = self
                            .diff(
                                feed,
                                &report.run,
                                &source,
                                snapshot.clone(),
                                obj.body,
                                SendMode::Stream,
                            )
                            .await;
                        report.timings.diff_and_send_ms += ms(t);
                        (parsed, stats) = match again {
                            Ok(x) => x,
                            Err(DiffFailure::File(rej)) => {
                                return Err(SplitError::Internal(format!(
                                    "the second pass over the file was refused ({rej}) where the first was not"
                                )))
                            }
                            Err(DiffFailure::Run(e)) => return Err(e),
                        };
                        report.counts.add_diff(parsed.counts);
                    }
                }
            }

            // rows SQS refused stay at their previous state, so a later file retries them
            let mut entries = parsed.entries;
            let mut rejects = parsed.rejects;
            if !stats.refused.is_empty() {
                let refused: HashSet<u64> = stats.refused.iter().map(|r| r.key_fp).collect();
                entries.revert(&refused, |key| {
                    snapshot
                        .as_ref()
                        .and_then(|s| s.entry(key))
                        .map(|e| [e.content, e.chain])
                });
                for r in &stats.refused {
                    rejects.push(Rejected {
                        line: r.line,
                        reason: r.reason.clone(),
                        fields: Vec::new(),
                    });
                }
            }
            report.counts.rejected = rejects.len() as u64;
            // attempts that lost a commit race sent messages too: count them all
            report.counts.sent += stats.sent;
            report.send_calls += stats.calls;

            // the rejects report goes first: once the state moves, a retry is a no-op and
            // could never write it again
            self.write_rejects(bucket, feed, report, &rejects).await?;

            let header = SnapshotHeader {
                format: FORMAT_VERSION,
                feed: feed.name.clone(),
                key_columns: feed.key_columns.clone(),
                hashed_columns: parsed.plan.hashed_columns.clone(),
                source: source.clone(),
                row_count: 0,
                created_at: now_rfc3339(),
                run: report.run.clone(),
                line_context: Some(parsed.line_context.clone()),
            };
            let cond = match &state {
                Some(st) => PutCondition::IfMatch(st.etag.clone().unwrap_or_default()),
                None => PutCondition::IfAbsent,
            };
            // the previous state is no longer needed: free it before the new one is encoded
            // (peak memory is two states, not three)
            drop((snapshot, state));
            let bytes = Snapshot::encode_state(&header, &entries);
            drop(entries);
            let t = Instant::now();
            let put = self
                .store
                .put(
                    bucket,
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
                        // the state has moved: a failure here leaves a manifest that a
                        // later approve recognises as applied and cleans up
                        if let Err(e) = self.remove_held(bucket, &feed.name, m).await {
                            warn!(feed = %feed.name, held = %m.id, error = %e, "the held file was applied but could not be removed; approve it again to clean up");
                        }
                    }
                    let status = if send {
                        RunStatus::Applied
                    } else {
                        RunStatus::Baseline
                    };
                    return self.finish(report, started, status).await;
                }
                Err(StoreError::PreconditionFailed) if job.approve.is_some() => {
                    return Err(SplitError::Held(format!(
                        "the state of feed `{}` changed while the held file was being applied; its rows were sent under their idempotency keys — approve again only if the state is back to the held one, else discard",
                        feed.name
                    )));
                }
                Err(StoreError::PreconditionFailed) => {
                    warn!(feed = %feed.name, run = %report.run, attempt, "the feed's state changed while this file was processed; re-reading it");
                    if attempt >= self.settings.max_commit_attempts {
                        return Err(SplitError::Contention {
                            feed: feed.name.clone(),
                            attempts: attempt,
                        });
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
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
            if let Ok(line) = serde_json::to_vec(r) {
                body.extend_from_slice(&line);
                body.push(b'\n');
            }
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

    /// Stop the file: copy the exact object version aside, write the manifest, report.
    async fn hold(
        &self,
        feed: &FeedConfig,
        source: &SourceObject,
        state_etag: Option<String>,
        reason: String,
        report: &mut RunReport,
        started: Instant,
    ) -> Result<Outcome, SplitError> {
        let bucket = source.bucket.as_str();
        let id = held_id(source, state_etag.as_deref());
        let copy_key = held_copy_key(&feed.name, &id);
        let manifest_key = held_manifest_key(&feed.name, &id);
        let spec = OpenSpec {
            version_id: source.version_id.clone(),
            if_match: if source.version_id.is_none() {
                source.etag.clone()
            } else {
                None
            },
            size_hint: None,
        };
        let copy_etag = match self.store.copy(bucket, &source.key, &spec, &copy_key).await {
            Ok(e) => e,
            Err(StoreError::NotFound { .. }) | Err(StoreError::PreconditionFailed) => {
                return Ok(Outcome::Skipped {
                    key: source.key.clone(),
                    reason: "the object was deleted or replaced while it was diffed; a later event covers the replacement".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let manifest = HeldManifest {
            v: MANIFEST_VERSION,
            feed: feed.name.clone(),
            id: id.clone(),
            run: report.run.clone(),
            held_at: now_rfc3339(),
            reason: reason.clone(),
            guards: report.guards.clone(),
            source: source.clone(),
            copy_key: copy_key.clone(),
            copy_etag,
            state_etag,
            previous: report.previous.clone(),
            counts: report.counts.clone(),
            schema: report.schema.clone(),
        };
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| SplitError::Internal(format!("held manifest: {}", serde_category(&e))))?;
        self.store
            .put(
                bucket,
                &manifest_key,
                body,
                "application/json",
                PutCondition::None,
            )
            .await?;
        report.reason = Some(format!(
            "held: {reason}. Nothing was sent and the state did not move; approve with `casefeed approve --feed {} {id}` or discard with `casefeed discard --feed {} {id}`",
            feed.name, feed.name
        ));
        report.held = Some(HeldRef {
            id,
            manifest_key,
            copy_key,
        });
        self.finish(report, started, RunStatus::Held).await
    }

    async fn remove_held(
        &self,
        bucket: &str,
        feed: &str,
        m: &HeldManifest,
    ) -> Result<(), SplitError> {
        self.store.delete(bucket, &m.copy_key).await?;
        self.store
            .delete(bucket, &held_manifest_key(feed, &m.id))
            .await?;
        Ok(())
    }

    async fn send_buffered(&self, msgs: Vec<OutMessage>) -> Result<SendStats, SplitError> {
        if msgs.is_empty() {
            return Ok(SendStats::default());
        }
        let (tx, rx) = mpsc::channel::<OutMessage>(self.settings.channel_capacity.max(1));
        let sender = tokio::spawn(run_sender(
            self.queue.clone(),
            rx,
            self.settings.sender.clone(),
        ));
        for m in msgs {
            if tx.send(m).await.is_err() {
                break; // the sender stopped; its result says why
            }
        }
        drop(tx);
        match sender.await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(SplitError::Internal(format!("sender task: {e}"))),
        }
    }

    async fn load_state(
        &self,
        feed: &FeedConfig,
        bucket: &str,
    ) -> Result<Option<State>, SplitError> {
        let key = snapshot_key(&feed.name);
        let Some(f) = self.store.get_bytes(bucket, &key).await? else {
            return Ok(None);
        };
        let snapshot = Snapshot::decode(&f.bytes, Some(&feed.name)).map_err(|source| {
            SplitError::Snapshot {
                bucket: bucket.to_string(),
                key: key.clone(),
                source,
            }
        })?;
        Ok(Some(State {
            snapshot: Arc::new(snapshot),
            etag: f.etag,
        }))
    }

    async fn finish(
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

    async fn diff(
        &self,
        feed: &FeedConfig,
        run: &str,
        source: &SourceObject,
        snapshot: Option<Arc<Snapshot>>,
        body: BoxRead,
        mode: SendMode,
    ) -> Result<(ParseOutput, SendStats), DiffFailure> {
        let (tx, sender) = if let SendMode::Stream = mode {
            let (tx, rx) = mpsc::channel::<OutMessage>(self.settings.channel_capacity.max(1));
            let sender = tokio::spawn(run_sender(
                self.queue.clone(),
                rx,
                self.settings.sender.clone(),
            ));
            (Some(tx), Some(sender))
        } else {
            (None, None)
        };
        let handle = tokio::runtime::Handle::current();
        let feed = feed.clone();
        let run = run.to_string();
        let env_source = EnvelopeSource {
            bucket: source.bucket.clone(),
            key: source.key.clone(),
            etag: source
                .etag
                .clone()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string(),
        };
        let buf = self.settings.read_buffer;
        let read_thread = self.settings.read_thread;
        let known_lines = self.settings.known_lines;
        let expected_rows = snapshot
            .as_ref()
            .map(|s| s.len() + s.len() / 8)
            .unwrap_or(0);
        let parse = tokio::task::spawn_blocking(move || -> Result<ParseOutput, ReadError> {
            let bridge = tokio_util::io::SyncIoBridge::new_with_handle(body, handle);
            let stream = open_stream(bridge, buf)?;
            let mut reader = RowReader::new(
                stream,
                &feed.required_columns,
                &feed.key_columns,
                feed.max_columns,
                feed.max_row_bytes,
            )?;
            let header = reader.header().to_vec();
            let prev_cols = snapshot
                .as_ref()
                .map(|s| s.header.hashed_columns.as_slice());
            let plan = ColumnPlan::new(&header, &feed, prev_cols)?;
            // rows whose raw line the previous file had, byte for byte, are unchanged: with
            // the same columns and row settings they need no splitting or fingerprinting
            let line_context = line_context(&header, &feed);
            let same_lines = snapshot
                .as_ref()
                .is_some_and(|s| s.header.line_context.as_deref() == Some(line_context.as_str()));
            reader.set_line_ignored(&feed.ignore_columns);
            if same_lines && known_lines {
                reader.set_known(snapshot.clone().and_then(KnownLines::new).map(Arc::new));
            }
            let mut differ = Differ::new(
                snapshot.as_deref(),
                expected_rows,
                plan.comparable(),
                same_lines,
            );
            let mut buffered: Option<Vec<OutMessage>> = match mode {
                SendMode::Buffer { .. } => Some(Vec::new()),
                _ => None,
            };
            let mut buffered_bytes = 0usize;
            let send = !matches!(mode, SendMode::Off);
            let mut fp = Fingerprinter::default();
            // Rows go in batches: the snapshot lookups of a batch overlap (see
            // `Differ::classify_batch`) and the batch's records stay in it for the messages
            // of its new and changed rows. With two or more cores, and rows to parse (no
            // known lines: a first file, or new columns), the reader fills batches on a
            // thread of its own, a few batches ahead, so parsing and fingerprinting overlap.
            // Otherwise it runs inline: on one core (a small Lambda function) a thread only
            // adds hand-offs, and with known lines almost every row is done by the reader.
            let fast = same_lines && known_lines;
            let threaded = read_thread.unwrap_or_else(|| {
                !fast && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
            });
            let mut lines: Vec<u64> = Vec::with_capacity(BATCH);
            let mut prints: Vec<RowPrints> = Vec::with_capacity(BATCH);
            let mut slots: Vec<usize> = Vec::with_capacity(BATCH);
            let mut classes: Vec<Class> = Vec::with_capacity(BATCH);
            let mut rejects = Vec::new();
            let mut read = 0u64;
            let mut tx = tx;
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<Batch, ReadError>>(2);
            let (free_tx, free_rx) = std::sync::mpsc::channel::<Batch>();
            for _ in 0..4 {
                let _ = free_tx.send(Batch::new());
            }
            std::thread::scope(|scope| -> Result<(), ReadError> {
                // owned here: when this ends (done, failed or stopped early) the reader's
                // thread sees both channels closed and stops
                let (full_rx, free_tx) = (full_rx, free_tx);
                let mut inline = None;
                if threaded {
                    let mut reader = reader;
                    scope.spawn(move || read_batches(&mut reader, full_tx, free_rx));
                } else {
                    inline = Some((reader, Some(Batch::new()), false));
                    drop((full_tx, free_rx));
                }
                'batches: loop {
                    let mut batch = match inline.as_mut() {
                        Some((reader, spare, eof)) => {
                            if *eof {
                                break;
                            }
                            let mut b = spare.take().unwrap_or_else(Batch::new);
                            *eof = fill_batch(reader, &mut b)?;
                            b
                        }
                        None => match full_rx.recv() {
                            Ok(b) => b?,
                            Err(_) => break,
                        },
                    };
                    lines.clear();
                    prints.clear();
                    slots.clear();
                    for (i, slot) in batch.rows.drain(..).enumerate() {
                        read += 1;
                        match slot {
                            Slot::Rejected(rejected) => {
                                // a readable key keeps its record's state: not "removed"
                                if let Some(k) = key_print(&plan, &batch.recs[i], &mut fp) {
                                    differ.carry(k);
                                }
                                rejects.push(rejected);
                            }
                            Slot::Ok(line) => {
                                prints.push(fp.prints(&plan, &batch.recs[i]));
                                lines.push(line);
                                slots.push(i);
                            }
                            Slot::Known(pos) => {
                                differ.known(pos as usize);
                            }
                        }
                    }
                    differ.classify_batch(&prints, &mut classes);
                    for (i, class) in classes.iter().enumerate() {
                        let (change, previous) = match *class {
                            Class::New => (Change::New, None),
                            Class::Changed { previous, chain } => (
                                Change::Changed,
                                Some(Previous {
                                    content: previous,
                                    chain,
                                }),
                            ),
                            Class::Unchanged | Class::Duplicate => continue,
                        };
                        if !send {
                            continue;
                        }
                        if tx.is_none() && buffered.is_none() {
                            // the buffer overflowed (or the sender failed): only counting goes on
                            continue;
                        }
                        let (record, line, p) = (&batch.recs[slots[i]], lines[i], prints[i]);
                        let rk = record_key(&plan, record);
                        let key_values: Vec<&[u8]> =
                            plan.key_idx.iter().map(|&i| &record[i]).collect();
                        let ikey = idempotency_key(&feed.name, &key_values, previous, p.store);
                        let env = EnvelopeRef {
                            v: ENVELOPE_VERSION,
                            feed: &feed.name,
                            run: &run,
                            source: &env_source,
                            change,
                            record_key: &rk,
                            idempotency_key: &ikey,
                            fields: FieldsRef {
                                header: &header,
                                record,
                            },
                        };
                        let body = match serde_json::to_string(&env) {
                            Ok(b) => sqs_safe(b),
                            Err(_) => {
                                rejects.push(Rejected {
                                    line,
                                    reason: "row could not be encoded as JSON".into(),
                                    fields: Vec::new(),
                                });
                                continue;
                            }
                        };
                        let msg = OutMessage {
                            body,
                            attributes: vec![
                                ("feed", feed.name.clone()),
                                ("change", change.as_str().to_string()),
                                ("idempotency_key", ikey),
                            ],
                            line,
                            key_fp: p.key,
                        };
                        if let Some(sender_tx) = tx.as_ref() {
                            if sender_tx.blocking_send(msg).is_err() {
                                // the sender failed; its error is reported by the caller
                                tx = None;
                                break 'batches;
                            }
                        } else if let (
                            Some(buf),
                            SendMode::Buffer {
                                max_count,
                                max_bytes,
                            },
                        ) = (buffered.as_mut(), mode)
                        {
                            buffered_bytes += msg.size();
                            if buf.len() as u64 >= max_count || buffered_bytes > max_bytes {
                                buffered = None;
                            } else {
                                buf.push(msg);
                            }
                        }
                    }
                    match inline.as_mut() {
                        Some((_, spare, _)) => *spare = Some(batch),
                        None => {
                            let _ = free_tx.send(batch);
                        }
                    }
                }
                Ok(())
            })?;
            drop(tx);
            let (entries, counts) = differ.finish();
            Ok(ParseOutput {
                header,
                plan,
                entries,
                line_context,
                counts,
                rejects,
                read,
                buffered,
            })
        });
        let parsed = parse.await;
        let stats = match sender {
            None => SendStats::default(),
            Some(sender) => match sender.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(DiffFailure::Run(e.into())),
                Err(e) => {
                    return Err(DiffFailure::Run(SplitError::Internal(format!(
                        "sender task: {e}"
                    ))))
                }
            },
        };
        match parsed {
            Ok(Ok(p)) => Ok((p, stats)),
            Ok(Err(ReadError::Rejected(r))) => Err(DiffFailure::File(r)),
            Ok(Err(ReadError::Io(e))) => Err(DiffFailure::Run(SplitError::Read {
                bucket: source.bucket.clone(),
                key: source.key.clone(),
                source: e,
            })),
            Err(e) => Err(DiffFailure::Run(SplitError::Internal(format!(
                "parser task: {e}"
            )))),
        }
    }
}

/// Rows per batch between the reader's thread and the classifier.
const BATCH: usize = 256;

/// A batch of rows read ahead: the records and, per record, its line or why it was rejected.
struct Batch {
    recs: Vec<Record>,
    rows: Vec<Slot>,
}

enum Slot {
    Ok(u64),
    /// A line the snapshot has (its position): unchanged unless a duplicate.
    Known(u32),
    Rejected(Rejected),
}

impl Batch {
    fn new() -> Batch {
        Batch {
            recs: (0..BATCH).map(|_| Record::new()).collect(),
            rows: Vec::with_capacity(BATCH),
        }
    }
}

/// The reader's thread: fills free batches and hands them on, in order, until the end of
/// the file, a read error (handed on too), or the classifier stops listening.
fn read_batches<R: std::io::Read>(
    reader: &mut RowReader<R>,
    full: std::sync::mpsc::SyncSender<Result<Batch, ReadError>>,
    free: std::sync::mpsc::Receiver<Batch>,
) {
    while let Ok(mut b) = free.recv() {
        let eof = match fill_batch(reader, &mut b) {
            Ok(eof) => eof,
            Err(e) => {
                let _ = full.send(Err(e));
                return;
            }
        };
        if full.send(Ok(b)).is_err() || eof {
            return;
        }
    }
}

/// Fill a batch with the next rows; true when the file has ended.
fn fill_batch<R: std::io::Read>(
    reader: &mut RowReader<R>,
    b: &mut Batch,
) -> Result<bool, ReadError> {
    b.rows.clear();
    while b.rows.len() < BATCH {
        let slot = b.rows.len();
        match reader.next_row(&mut b.recs[slot])? {
            None => return Ok(true),
            Some(Row::Ok { line, .. }) => b.rows.push(Slot::Ok(line)),
            Some(Row::Known { pos, .. }) => b.rows.push(Slot::Known(pos)),
            Some(Row::Rejected { rejected, .. }) => b.rows.push(Slot::Rejected(rejected)),
        }
    }
    Ok(false)
}

enum DiffFailure {
    File(FileRejection),
    Run(SplitError),
}
