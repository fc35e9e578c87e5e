//! The splitter's decisions: for one uploaded object, diff it against the feed's snapshot in
//! a single streaming pass, fan out new/changed rows, commit the new snapshot by a
//! conditional write, and leave a run report.

use crate::config::{Config, FeedConfig, FirstFile};
use crate::diff::{key_print, record_key, Class, ColumnPlan, DiffCounts, Differ, Fingerprinter};
use crate::envelope::{
    idempotency_key, Change, EnvelopeRef, EnvelopeSource, FieldsRef, Previous, ENVELOPE_VERSION,
};
use crate::event::ObjectEvent;
use crate::queue::{run_sender, MessageQueue, OutMessage, SendError, SendStats, SenderSettings};
use crate::report::{
    rejects_key, run_report_key, snapshot_key, Counts, RunReport, RunStatus, SchemaReport, Timings,
};
use crate::rows::{open_stream, FileRejection, ReadError, Rejected, Row, RowReader};
use crate::snapshot::{
    Entry, Snapshot, SnapshotError, SnapshotHeader, SourceObject, FORMAT_VERSION,
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
}

impl Default for SplitterSettings {
    fn default() -> Self {
        SplitterSettings {
            sender: SenderSettings::default(),
            read_buffer: 1024 * 1024,
            channel_capacity: 1000,
            max_commit_attempts: 3,
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
    entries: Vec<Entry>,
    counts: DiffCounts,
    rejects: Vec<Rejected>,
    read: u64,
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
        let started = Instant::now();
        let started_at = now_rfc3339();
        let run = run_id(ev);
        let mut source = SourceObject {
            bucket: ev.bucket.clone(),
            key: ev.key.clone(),
            etag: ev.etag.clone(),
            version_id: ev.version_id.clone(),
            last_modified: None,
            sequencer: ev.sequencer.clone(),
            size: ev.size,
            event_time: ev.event_time.clone(),
        };
        let mut report = RunReport {
            v: 1,
            feed: feed.name.clone(),
            run: run.clone(),
            status: RunStatus::Failed,
            reason: None,
            source: source.clone(),
            previous: None,
            counts: Counts::default(),
            schema: SchemaReport::default(),
            rejects_key: None,
            snapshot_etag: None,
            send_calls: 0,
            commit_attempts: 0,
            started_at,
            finished_at: String::new(),
            timings: Timings::default(),
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            report.commit_attempts = attempt;
            report.rejects_key = None;
            let t = Instant::now();
            let state = match self.load_state(&feed, &ev.bucket).await {
                Ok(s) => s,
                Err(e @ SplitError::Snapshot { .. }) => {
                    report.reason = Some(e.to_string());
                    self.finish(&mut report, started, RunStatus::Failed).await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            report.timings.read_state_ms += ms(t);
            report.previous = state.as_ref().map(|s| s.snapshot.header.source.clone());

            if let Some(st) = &state {
                let prev = &st.snapshot.header.source;
                if prev.same_object(&source) {
                    report.reason = Some("the feed's state already comes from this object".into());
                    return self.finish(&mut report, started, RunStatus::Noop).await;
                }
                if prev.key == source.key && source.older_than(prev) {
                    report.reason = Some(
                        "an older version of this object (by S3 event sequencer) than the one the feed's state comes from".into(),
                    );
                    return self.finish(&mut report, started, RunStatus::Stale).await;
                }
            }

            let spec = OpenSpec {
                version_id: ev.version_id.clone(),
                if_match: if ev.version_id.is_none() {
                    ev.etag.clone()
                } else {
                    None
                },
            };
            let obj = match self.store.open(&ev.bucket, &ev.key, &spec).await {
                Ok(o) => o,
                Err(StoreError::NotFound { .. }) | Err(StoreError::PreconditionFailed) => {
                    return Ok(Outcome::Skipped {
                        key: ev.key.clone(),
                        reason: "the object was deleted or replaced after this event; a later event covers the replacement".into(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            source.etag = obj.meta.etag.clone().or(source.etag);
            source.version_id = obj.meta.version_id.clone().or(source.version_id);
            source.last_modified = obj.meta.last_modified.clone();
            source.size = obj.meta.size.or(source.size);
            report.source = source.clone();

            if let Some(st) = &state {
                if source.older_than(&st.snapshot.header.source) {
                    report.reason =
                        Some("the object is older than the one the feed's state comes from".into());
                    return self.finish(&mut report, started, RunStatus::Stale).await;
                }
            }

            let send = state.is_some() || feed.first_file == FirstFile::Send;
            let t = Instant::now();
            let diffed = self
                .diff(
                    &feed,
                    &run,
                    &source,
                    state.as_ref().map(|s| s.snapshot.clone()),
                    obj.body,
                    send,
                )
                .await;
            report.timings.diff_and_send_ms += ms(t);
            let (parsed, stats) = match diffed {
                Ok(x) => x,
                Err(DiffFailure::File(rej)) => {
                    report.reason = Some(rej.to_string());
                    return self.finish(&mut report, started, RunStatus::Rejected).await;
                }
                Err(DiffFailure::Run(e)) => {
                    report.reason = Some(e.to_string());
                    // best effort: the run fails anyway and Lambda retries it
                    let _ = self.finish(&mut report, started, RunStatus::Failed).await;
                    return Err(e);
                }
            };

            // rows SQS refused stay at their previous state, so a later file retries them
            let mut entries = parsed.entries;
            let mut rejects = parsed.rejects;
            if !stats.refused.is_empty() {
                let refused: HashSet<u64> = stats.refused.iter().map(|r| r.key_fp).collect();
                let old = state.as_ref().map(|s| s.snapshot.clone());
                entries.retain_mut(|e| {
                    if !refused.contains(&e.key) {
                        return true;
                    }
                    match old.as_ref().and_then(|s| s.entry(e.key)) {
                        Some(prev) => {
                            *e = prev;
                            true
                        }
                        None => false,
                    }
                });
                for r in &stats.refused {
                    rejects.push(Rejected {
                        line: r.line,
                        reason: r.reason.clone(),
                        fields: Vec::new(),
                    });
                }
            }
            report.counts.add_diff(parsed.counts);
            report.counts.read = parsed.read;
            report.counts.rejected = rejects.len() as u64;
            // attempts that lost a commit race sent messages too: count them all
            report.counts.sent += stats.sent;
            report.send_calls += stats.calls;
            report.schema = SchemaReport {
                columns: parsed.header.clone(),
                hashed_columns: parsed.plan.hashed_columns.clone(),
                added: parsed.plan.added.clone(),
                removed: parsed.plan.removed.clone(),
            };

            // the rejects report goes first: once the state moves, a retry is a no-op and
            // could never write it again
            if !rejects.is_empty() {
                let key = rejects_key(&feed.name, &run);
                let mut body = Vec::new();
                for r in &rejects {
                    if let Ok(line) = serde_json::to_vec(r) {
                        body.extend_from_slice(&line);
                        body.push(b'\n');
                    }
                }
                self.store
                    .put(
                        &ev.bucket,
                        &key,
                        body,
                        "application/x-ndjson",
                        PutCondition::None,
                    )
                    .await?;
                report.rejects_key = Some(key);
            }

            let header = SnapshotHeader {
                format: FORMAT_VERSION,
                feed: feed.name.clone(),
                key_columns: feed.key_columns.clone(),
                hashed_columns: parsed.plan.hashed_columns.clone(),
                source: source.clone(),
                row_count: 0,
                created_at: now_rfc3339(),
                run: run.clone(),
            };
            let snapshot = Snapshot::from_entries(header, entries);
            let bytes = snapshot.encode();
            drop(snapshot);
            let cond = match &state {
                Some(st) => match &st.etag {
                    Some(e) => PutCondition::IfMatch(e.clone()),
                    None => PutCondition::IfMatch(String::new()),
                },
                None => PutCondition::IfAbsent,
            };
            let t = Instant::now();
            let put = self
                .store
                .put(
                    &ev.bucket,
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
                    let status = if send {
                        RunStatus::Applied
                    } else {
                        RunStatus::Baseline
                    };
                    return self.finish(&mut report, started, status).await;
                }
                Err(StoreError::PreconditionFailed) => {
                    warn!(feed = %feed.name, run = %run, attempt, "the feed's state changed while this file was processed; re-reading it");
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
        send: bool,
    ) -> Result<(ParseOutput, SendStats), DiffFailure> {
        let (tx, rx) = mpsc::channel::<OutMessage>(self.settings.channel_capacity.max(1));
        let sender = tokio::spawn(run_sender(
            self.queue.clone(),
            rx,
            self.settings.sender.clone(),
        ));
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
            let mut differ = Differ::new(snapshot.as_deref(), expected_rows);
            let mut fp = Fingerprinter::default();
            let mut rec = csv::ByteRecord::new();
            let mut rejects = Vec::new();
            let mut read = 0u64;
            let mut tx = Some(tx);
            while let Some(row) = reader.next_row(&mut rec)? {
                read += 1;
                let (line, record) = match row {
                    Row::Rejected { rejected, record } => {
                        // a readable key keeps its record's state: not "removed"
                        if let Some(k) = key_print(&plan, record, &mut fp) {
                            differ.carry(k);
                        }
                        rejects.push(rejected);
                        continue;
                    }
                    Row::Ok { line, record } => (line, record),
                };
                let p = fp.prints(&plan, record);
                let (change, previous) = match differ.classify(p) {
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
                let Some(sender_tx) = tx.as_ref() else {
                    continue;
                };
                let rk = record_key(&plan, record);
                let key_values: Vec<&[u8]> = plan.key_idx.iter().map(|&i| &record[i]).collect();
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
                if sender_tx.blocking_send(msg).is_err() {
                    // the sender failed; its error is reported by the caller
                    tx = None;
                    break;
                }
            }
            drop(tx);
            let (entries, counts) = differ.finish();
            Ok(ParseOutput {
                header,
                plan,
                entries,
                counts,
                rejects,
                read,
            })
        });
        let parsed = parse.await;
        let sent = sender.await;
        let stats = match sent {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(DiffFailure::Run(e.into())),
            Err(e) => {
                return Err(DiffFailure::Run(SplitError::Internal(format!(
                    "sender task: {e}"
                ))))
            }
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

enum DiffFailure {
    File(FileRejection),
    Run(SplitError),
}
