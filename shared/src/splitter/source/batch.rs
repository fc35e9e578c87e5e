//! Rows in batches: the reader fills batches of rows, inline or on a thread of its own a few
//! batches ahead, and the pass takes them in file order and gives them back to be refilled.

use super::reader::{Row, RowReader};
use super::record::Record;
use super::{ReadError, Rejected};
use std::io::Read;
use std::sync::mpsc;
use std::thread::Scope;

/// A batch of rows read ahead: the records and, per record, its line or why it was rejected.
pub struct Batch {
    /// The records, by slot (only the first `rows.len()` are this batch's).
    pub recs: Vec<Record>,
    /// What each slot holds.
    pub rows: Vec<Slot>,
}

/// One row of a batch.
pub enum Slot {
    /// A row to fingerprint and classify, by its line.
    Ok(u64),
    /// A line the snapshot has (its position): unchanged unless a duplicate.
    Known(u32),
    /// A row that cannot be used.
    Rejected(Rejected),
}

impl Batch {
    /// Rows per batch between the reader and the classifier.
    pub const ROWS: usize = 256;

    fn new() -> Batch {
        Batch {
            recs: (0..Batch::ROWS).map(|_| Record::new()).collect(),
            rows: Vec::with_capacity(Batch::ROWS),
        }
    }

    /// Fill with the next rows; true when the file has ended.
    fn fill<R: Read>(&mut self, reader: &mut RowReader<R>) -> Result<bool, ReadError> {
        self.rows.clear();
        while self.rows.len() < Batch::ROWS {
            let slot = self.rows.len();
            match reader.next_row(&mut self.recs[slot])? {
                None => return Ok(true),
                Some(Row::Ok { line, .. }) => self.rows.push(Slot::Ok(line)),
                Some(Row::Known { pos, .. }) => self.rows.push(Slot::Known(pos)),
                Some(Row::Rejected { rejected, .. }) => self.rows.push(Slot::Rejected(rejected)),
            }
        }
        Ok(false)
    }
}

/// Where batches come from.
pub enum Batches<R: Read> {
    /// Filled on this thread when asked for.
    Inline {
        /// The reader (boxed: it is large, and there is one per pass).
        reader: Box<RowReader<R>>,
        /// The batch given back, to refill.
        spare: Option<Batch>,
        /// The file has ended.
        eof: bool,
    },
    /// Filled ahead by the reader's thread.
    Threaded {
        /// Filled batches (or the read error that stopped the reader), in order.
        full: mpsc::Receiver<Result<Batch, ReadError>>,
        /// Batches given back.
        free: mpsc::Sender<Batch>,
    },
}

impl<R: Read + Send> Batches<R> {
    /// Start reading: on a thread of `scope` when `threaded`, else inline. When the
    /// `Batches` is dropped (done, failed or stopped early), the reader's thread sees both
    /// channels closed and stops.
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        mut reader: RowReader<R>,
        threaded: bool,
    ) -> Batches<R>
    where
        R: 'scope,
    {
        if !threaded {
            return Batches::Inline {
                reader: Box::new(reader),
                spare: Some(Batch::new()),
                eof: false,
            };
        }
        let (full_tx, full) = mpsc::sync_channel::<Result<Batch, ReadError>>(2);
        let (free, free_rx) = mpsc::channel::<Batch>();
        for _ in 0..4 {
            // the receiver is alive: it was just made
            let _ = free.send(Batch::new());
        }
        scope.spawn(move || read_batches(&mut reader, full_tx, free_rx));
        Batches::Threaded { full, free }
    }
}

impl<R: Read> Batches<R> {
    /// The next batch in file order, `None` after the last.
    pub fn next_batch(&mut self) -> Result<Option<Batch>, ReadError> {
        match self {
            Batches::Inline { reader, spare, eof } => {
                if *eof {
                    return Ok(None);
                }
                let mut b = spare.take().unwrap_or_else(Batch::new);
                *eof = b.fill(reader)?;
                Ok(Some(b))
            }
            Batches::Threaded { full, .. } => match full.recv() {
                Ok(b) => b.map(Some),
                Err(_) => Ok(None),
            },
        }
    }

    /// Give a batch back to be refilled.
    pub fn give_back(&mut self, batch: Batch) {
        match self {
            Batches::Inline { spare, .. } => *spare = Some(batch),
            Batches::Threaded { free, .. } => {
                // the reader's thread has stopped (end of file or an error, handed on
                // already): nothing is to be refilled
                let _ = free.send(batch);
            }
        }
    }
}

/// The reader's thread: fills free batches and hands them on, in order, until the end of
/// the file, a read error (handed on too), or the classifier stops listening.
fn read_batches<R: Read>(
    reader: &mut RowReader<R>,
    full: mpsc::SyncSender<Result<Batch, ReadError>>,
    free: mpsc::Receiver<Batch>,
) {
    while let Ok(mut b) = free.recv() {
        let eof = match b.fill(reader) {
            Ok(eof) => eof,
            Err(e) => {
                // the classifier stopped listening: it has its own reason to end
                let _ = full.send(Err(e));
                return;
            }
        };
        if full.send(Ok(b)).is_err() || eof {
            return;
        }
    }
}
