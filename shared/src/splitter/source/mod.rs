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
pub use record::{is_blank_key, trim_key, Record};

/// Why a whole file was refused. Permanent: the same bytes always fail the same way.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FileRejection {
    /// The file has no header row (no bytes, or an empty first line).
    #[error("the file is empty (no header row)")]
    Empty,
    /// The header row is not UTF-8.
    #[error("the header row is not valid UTF-8")]
    HeaderEncoding,
    /// A column of the header has no name (1-based position).
    #[error("the header row has an empty column name at position {0}")]
    EmptyColumnName(usize),
    /// Two columns of the header have the same name (their 1-based positions).
    #[error("the header row names the same column at positions {0} and {1}")]
    DuplicateColumn(usize, usize),
    /// The gzip stream is corrupt or cut short.
    #[error("the compressed (gzip) data is corrupt or truncated")]
    CorruptCompression,
    /// The gzip stream inflates to more bytes than the feed allows (found as soon as the
    /// limit is passed: the rest is never read).
    #[error("the compressed (gzip) data inflates to more than the feed's limit of {limit} bytes (max_inflated_bytes)")]
    InflatedTooLarge {
        /// The feed's `max_inflated_bytes`.
        limit: u64,
    },
    /// The header has more columns than the feed allows.
    #[error("the header row has {found} columns, more than the feed's limit of {limit}")]
    TooManyColumns {
        /// Columns in the header.
        found: usize,
        /// The feed's `max_columns`.
        limit: usize,
    },
    /// Columns the feed requires (its key columns among them) are not in the header.
    #[error("required column(s) missing: {}", .0.join(", "))]
    MissingRequired(Vec<String>),
    /// Columns the state compares are missing from the header, so no row can be compared.
    #[error("column(s) compared in the previous file are missing: {}; the file cannot be compared with the feed's state", .0.join(", "))]
    ComparedColumnsMissing(Vec<String>),
    /// The header row is longer than allowed (the feed's `max_row_bytes`, at least 1 MiB).
    #[error("the header row is {size} bytes, more than the limit of {limit}")]
    HeaderTooLong {
        /// The header's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The object is larger than the feed's `max_object_bytes`.
    #[error("the object is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The object's size in bytes.
        size: u64,
        /// The feed's `max_object_bytes`.
        limit: u64,
    },
}

/// Reading failed for a reason that may pass (network, S3 stream).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading the object's bytes failed (worth retrying).
    #[error("reading the object failed: {0}")]
    Io(#[from] std::io::Error),
    /// The file was refused ([`FileRejection`]; permanent).
    #[error(transparent)]
    Rejected(#[from] FileRejection),
}

impl ReadError {
    /// Whether trying again may succeed: an I/O failure, not a refused file.
    pub fn retryable(&self) -> bool {
        matches!(self, ReadError::Io(_))
    }
}

/// A row that could not be used, with the 1-based physical line where it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// The 1-based physical line where the row starts.
    pub line: u64,
    /// Why the row could not be used (never its values).
    pub reason: String,
    /// The raw fields (lossily decoded), for the rejects report in S3 only. Never logged.
    pub fields: Vec<String>,
}
