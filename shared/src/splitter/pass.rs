//! The diff pass: one streaming read of the object. Rows come in batches from the source
//! stage, are fingerprinted and classified by the filter stage, and the new and changed ones
//! become messages (the sink stage's outbox) that are streamed to the sender, kept until the
//! guards decide, or not made at all (a baseline).

use super::filter::{
    key_fp, write_record_key, Class, ColumnPlan, DiffCounts, Differ, Fingerprinter, Fingerprints,
};
use super::sink::{run_sender, Outbox, SendStats, Stamps};
use super::source::{open_stream, Batch, Batches, FileRejection, ReadError, RowReader, Slot};
use super::source::{Record, Rejected};
use super::state::{line_context, next_generation, KnownLines, NextState, Snapshot};
use super::{SplitError, Splitter};
use crate::config::FeedConfig;
use crate::contract::envelope::{Change, EnvelopeSource, Previous};
use crate::contract::source::SourceObject;
use crate::ports::queue::{MessageQueue, OutMessage};
use crate::ports::store::{BoxRead, ObjectStore};
use std::ops::ControlFlow;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How a diff pass treats the messages of new/changed rows.
#[derive(Debug, Clone, Copy)]
pub(super) enum SendMode {
    /// Nothing is sent (a baseline).
    Off,
    /// Sent while the file streams (an approved held file: the guards have had their say).
    Stream,
    /// Kept until the guards have decided, up to a count and a byte budget; past either, the
    /// messages are dropped and, if the file may proceed, a second pass sends them.
    Buffer { max_count: u64, max_bytes: usize },
}

/// What a pass leaves.
pub(super) struct PassOutput {
    pub header: Vec<String>,
    pub plan: ColumnPlan,
    pub entries: NextState,
    /// What the next state's line prints are valid for.
    pub line_context: String,
    pub counts: DiffCounts,
    pub rejects: Vec<Rejected>,
    pub read: u64,
    /// The messages kept by [`SendMode::Buffer`], `None` when they did not fit.
    pub kept: Option<Vec<OutMessage>>,
    /// The version the messages carry: the generation the commit gives the state.
    pub version: u64,
    /// Positions in the snapshot of the records the file no longer has (in key order).
    pub removed: Vec<u32>,
}

/// Why a pass ended without an output.
pub(super) enum PassFailure {
    /// The file itself is unusable (permanent: the same bytes fail the same way).
    File(FileRejection),
    /// The run failed (reading, sending): Lambda retries.
    Run(SplitError),
}

/// Where a pass's messages go.
enum Out {
    /// Nowhere: a baseline.
    Off,
    /// To the sender, as the file streams.
    Stream(mpsc::Sender<OutMessage>),
    /// Kept, up to a count and a byte budget.
    Buffer {
        kept: Vec<OutMessage>,
        bytes: usize,
        max_count: u64,
        max_bytes: usize,
    },
    /// The buffer overflowed: only counting goes on (a second pass sends).
    Overflowed,
}

impl Out {
    fn new(mode: SendMode, tx: Option<mpsc::Sender<OutMessage>>) -> Out {
        match (mode, tx) {
            (SendMode::Stream, Some(tx)) => Out::Stream(tx),
            (
                SendMode::Buffer {
                    max_count,
                    max_bytes,
                },
                _,
            ) => Out::Buffer {
                kept: Vec::new(),
                bytes: 0,
                max_count,
                max_bytes,
            },
            _ => Out::Off,
        }
    }

    /// Whether the messages of new and changed rows are to be made at all.
    fn wants(&self) -> bool {
        matches!(self, Out::Stream(_) | Out::Buffer { .. })
    }

    /// Hand a message on; `Break` when the sender has stopped (its error says why).
    fn push(&mut self, msg: OutMessage) -> ControlFlow<()> {
        match self {
            Out::Stream(tx) => {
                if tx.blocking_send(msg).is_err() {
                    *self = Out::Off;
                    return ControlFlow::Break(());
                }
            }
            Out::Buffer {
                kept,
                bytes,
                max_count,
                max_bytes,
            } => {
                *bytes += msg.size();
                if kept.len() as u64 >= *max_count || *bytes > *max_bytes {
                    *self = Out::Overflowed;
                } else {
                    kept.push(msg);
                }
            }
            Out::Off | Out::Overflowed => {}
        }
        ControlFlow::Continue(())
    }

    fn into_kept(self) -> Option<Vec<OutMessage>> {
        match self {
            Out::Buffer { kept, .. } => Some(kept),
            _ => None,
        }
    }
}

/// The pass over one file's rows: the filter stage's state and the messages it makes.
struct Pass<'a> {
    plan: ColumnPlan,
    differ: Differ<'a>,
    fp: Fingerprinter,
    outbox: Outbox<'a>,
    out: Out,
    rejects: Vec<Rejected>,
    read: u64,
    // per-batch scratch: the lines, fingerprints and batch positions of the rows to classify
    lines: Vec<u64>,
    fps: Vec<Fingerprints>,
    slots: Vec<usize>,
    classes: Vec<Class>,
}

impl Pass<'_> {
    /// Classify one batch and make the messages of its new and changed rows. `Break` when
    /// the sender has stopped.
    fn take(&mut self, batch: &mut Batch) -> ControlFlow<()> {
        self.lines.clear();
        self.fps.clear();
        self.slots.clear();
        for (i, slot) in batch.rows.drain(..).enumerate() {
            self.read += 1;
            match slot {
                Slot::Rejected(rejected) => {
                    // a readable key keeps its record's state: not "removed"
                    let rec = &batch.recs[i];
                    if let Some(k) = key_fp(&self.plan, rec, &mut self.fp) {
                        self.differ
                            .carry(k, |b| write_record_key(&self.plan, rec, b));
                    }
                    self.rejects.push(rejected);
                }
                Slot::Ok(line) => {
                    self.fps
                        .push(self.fp.fingerprints(&self.plan, &batch.recs[i]));
                    self.lines.push(line);
                    self.slots.push(i);
                }
                Slot::Known(pos) => {
                    self.differ.known(pos as usize);
                }
            }
        }
        self.differ.classify_batch(&self.fps, &mut self.classes);
        // the record keys the next state cannot take from the snapshot (new rows, mostly)
        let (plan, slots, recs) = (&self.plan, &self.slots, &batch.recs);
        self.differ
            .name_rows(|row, b| write_record_key(plan, &recs[slots[row]], b));
        for i in 0..self.classes.len() {
            let (change, previous) = match self.classes[i] {
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
            // a baseline, an overflowed buffer or a stopped sender: only counting goes on
            if !self.out.wants() {
                continue;
            }
            let record = &batch.recs[self.slots[i]];
            self.emit(record, self.lines[i], self.fps[i], change, previous)?;
        }
        ControlFlow::Continue(())
    }

    fn emit(
        &mut self,
        record: &Record,
        line: u64,
        fps: Fingerprints,
        change: Change,
        previous: Option<Previous>,
    ) -> ControlFlow<()> {
        match self
            .outbox
            .message(&self.plan, record, line, fps, change, previous)
        {
            Ok(msg) => self.out.push(msg),
            Err(rejected) => {
                self.rejects.push(rejected);
                ControlFlow::Continue(())
            }
        }
    }
}

/// The settings a pass's blocking half needs.
struct PassInput {
    feed: FeedConfig,
    run: String,
    source: EnvelopeSource,
    stamps: Stamps,
    version: u64,
    snapshot: Option<Arc<Snapshot>>,
    read_buffer: usize,
    read_thread: Option<bool>,
    known_lines: bool,
}

/// The blocking half of a pass: read and classify every row (on this thread, and on a
/// reader thread when that helps), the messages handed to `tx` or kept.
fn run_pass(
    input: PassInput,
    body: impl std::io::Read + Send + 'static,
    mode: SendMode,
    tx: Option<mpsc::Sender<OutMessage>>,
) -> Result<PassOutput, ReadError> {
    let PassInput { feed, snapshot, .. } = &input;
    let stream = open_stream(body, input.read_buffer, feed.max_inflated_bytes)?;
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
    let plan = ColumnPlan::new(&header, feed, prev_cols)?;
    // rows whose raw line the previous file had, byte for byte, are unchanged: with the same
    // columns and row settings they need no splitting or fingerprinting
    let line_context = line_context(&header, feed);
    let same_lines = snapshot
        .as_ref()
        .is_some_and(|s| s.header.line_context.as_deref() == Some(line_context.as_str()));
    reader.set_line_ignored(&feed.ignore_columns);
    // a row known by its line is not split, so its record key must come from the snapshot:
    // a state without record keys (format 1 or 2) takes the full path once
    let named = snapshot.as_ref().is_some_and(|s| s.names().is_some());
    let fast = same_lines && input.known_lines && named;
    if fast {
        reader.set_known(snapshot.clone().and_then(KnownLines::new).map(Arc::new));
    }
    // With two or more cores, and rows to parse (no known lines: a first file, or new
    // columns), the reader fills batches on a thread of its own, a few batches ahead, so
    // parsing and fingerprinting overlap. Otherwise it runs inline: on one core (a small
    // Lambda function) a thread only adds hand-offs, and with known lines almost every row
    // is done by the reader.
    let threaded = input.read_thread.unwrap_or_else(|| {
        !fast && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
    });
    let expected_rows = snapshot
        .as_ref()
        .map(|s| s.len() + s.len() / 8)
        .unwrap_or(0);
    let mut pass = Pass {
        differ: Differ::new(
            snapshot.as_deref(),
            expected_rows,
            plan.comparable(),
            same_lines,
        ),
        plan,
        fp: Fingerprinter::default(),
        outbox: Outbox {
            feed: &feed.name,
            run: &input.run,
            source: &input.source,
            stamps: input.stamps,
            version: input.version,
            header: &header,
        },
        out: Out::new(mode, tx),
        rejects: Vec::new(),
        read: 0,
        lines: Vec::with_capacity(Batch::ROWS),
        fps: Vec::with_capacity(Batch::ROWS),
        slots: Vec::with_capacity(Batch::ROWS),
        classes: Vec::with_capacity(Batch::ROWS),
    };
    std::thread::scope(|scope| -> Result<(), ReadError> {
        let mut batches = Batches::start(scope, reader, threaded);
        while let Some(mut batch) = batches.next_batch()? {
            let flow = pass.take(&mut batch);
            batches.give_back(batch);
            if flow.is_break() {
                break;
            }
        }
        Ok(())
    })?;
    let Pass {
        plan,
        differ,
        out,
        rejects,
        read,
        ..
    } = pass;
    let (entries, counts, removed) = differ.finish();
    Ok(PassOutput {
        header,
        plan,
        entries,
        line_context,
        counts,
        rejects,
        read,
        kept: out.into_kept(),
        version: input.version,
        removed,
    })
}

impl<S: ObjectStore, Q: MessageQueue> Splitter<S, Q> {
    /// One pass over `body`: its rows diffed against `snapshot`, the messages of new and
    /// changed rows treated as `mode` says.
    pub(super) async fn pass(
        &self,
        feed: &FeedConfig,
        run: &str,
        source: &SourceObject,
        snapshot: Option<Arc<Snapshot>>,
        body: BoxRead,
        mode: SendMode,
    ) -> Result<(PassOutput, SendStats), PassFailure> {
        let (tx, sender) = match mode {
            SendMode::Stream => {
                let (tx, sender) = self.spawn_sender();
                (Some(tx), Some(sender))
            }
            _ => (None, None),
        };
        let input = PassInput {
            feed: feed.clone(),
            run: run.to_string(),
            source: EnvelopeSource::from(source),
            stamps: Stamps::of(feed, source),
            version: next_generation(snapshot.as_deref()),
            snapshot,
            read_buffer: self.settings.read_buffer,
            read_thread: self.settings.read_thread,
            known_lines: self.settings.known_lines,
        };
        let handle = tokio::runtime::Handle::current();
        let passed = tokio::task::spawn_blocking(move || {
            let bridge = tokio_util::io::SyncIoBridge::new_with_handle(body, handle);
            run_pass(input, bridge, mode, tx)
        })
        .await;
        let stats = match sender {
            None => SendStats::default(),
            Some(sender) => join_sender(sender).await.map_err(PassFailure::Run)?,
        };
        match passed {
            Ok(Ok(p)) => Ok((p, stats)),
            Ok(Err(ReadError::Rejected(r))) => Err(PassFailure::File(r)),
            Ok(Err(ReadError::Io(e))) => Err(PassFailure::Run(SplitError::Read {
                bucket: source.bucket.clone(),
                key: source.key.clone(),
                source: e,
            })),
            Err(e) => Err(PassFailure::Run(SplitError::Internal(format!(
                "parser task: {e}"
            )))),
        }
    }

    /// Send messages kept in memory (the guards let the file go on).
    pub(super) async fn send_all(&self, msgs: Vec<OutMessage>) -> Result<SendStats, SplitError> {
        if msgs.is_empty() {
            return Ok(SendStats::default());
        }
        let (tx, sender) = self.spawn_sender();
        for m in msgs {
            if tx.send(m).await.is_err() {
                break; // the sender stopped; its result says why
            }
        }
        drop(tx);
        join_sender(sender).await
    }

    /// A sender task draining a channel into `SendMessageBatch` calls.
    pub(super) fn spawn_sender(
        &self,
    ) -> (
        mpsc::Sender<OutMessage>,
        JoinHandle<Result<SendStats, super::sink::SendError>>,
    ) {
        let (tx, rx) = mpsc::channel::<OutMessage>(self.settings.channel_capacity.max(1));
        let sender = tokio::spawn(run_sender(
            self.queue.clone(),
            rx,
            self.settings.sender.clone(),
        ));
        (tx, sender)
    }
}

pub(super) async fn join_sender(
    sender: JoinHandle<Result<SendStats, super::sink::SendError>>,
) -> Result<SendStats, SplitError> {
    match sender.await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(SplitError::Internal(format!("sender task: {e}"))),
    }
}
