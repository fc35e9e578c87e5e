//! The source stage: an object's bytes → rows. Opens the stream (gzip by magic bytes, a
//! UTF-8 byte-order mark skipped), validates the header, splits plain lines where they lie and
//! hands every other record to `csv-core`, prints each plain line so the next file's identical
//! lines are known unchanged, and reports a row it cannot use — line and reason, never its
//! values — without stopping the file. An empty file or an unusable header rejects the file.

mod batch;
mod line_print;
mod open;
mod reader;
mod record;
#[cfg(test)]
mod tests;

pub use batch::{Batch, Batches, Slot};
pub use line_print::{line_hash, line_print, PrintScratch};
pub use open::open_stream;
pub use reader::{Row, RowReader};
pub use record::Record;

/// Why a whole file was refused. Permanent: the same bytes always fail the same way.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FileRejection {
    #[error("the file is empty (no header row)")]
    Empty,
    #[error("the header row is not valid UTF-8")]
    HeaderEncoding,
    #[error("the header row has an empty column name at position {0}")]
    EmptyColumnName(usize),
    #[error("the header row names the same column at positions {0} and {1}")]
    DuplicateColumn(usize, usize),
    #[error("the compressed (gzip) data is corrupt or truncated")]
    CorruptCompression,
    #[error("the header row has {found} columns, more than the feed's limit of {limit}")]
    TooManyColumns { found: usize, limit: usize },
    #[error("required column(s) missing: {}", .0.join(", "))]
    MissingRequired(Vec<String>),
    #[error("column(s) compared in the previous file are missing: {}; the file cannot be compared with the feed's state", .0.join(", "))]
    ComparedColumnsMissing(Vec<String>),
    #[error("the header row is {size} bytes, more than the limit of {limit}")]
    HeaderTooLong { size: usize, limit: usize },
    #[error("the object is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
}

/// Reading failed for a reason that may pass (network, S3 stream).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the object failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Rejected(#[from] FileRejection),
}

impl ReadError {
    pub fn retryable(&self) -> bool {
        matches!(self, ReadError::Io(_))
    }
}

/// A row that could not be used, with the 1-based physical line where it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
    /// The raw fields (lossily decoded), for the rejects report in S3 only. Never logged.
    pub fields: Vec<String>,
}
