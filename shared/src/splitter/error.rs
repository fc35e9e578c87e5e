//! Why a run failed, classed retryable (Lambda retries the event) or permanent, and the
//! operator situations around held files, each with what to do about it.

use super::sink::SendError;
use super::state::SnapshotError;
use crate::ports::store::StoreError;

/// A run that did not end with a report of its own: the invocation fails, so Lambda
/// retries the event (retryable) or its failure destination records it (permanent).
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The object store failed (classed by the store's error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object's stream broke while it was read.
    #[error("reading s3://{bucket}/{key} failed: {source}")]
    Read {
        /// The bucket read from.
        bucket: String,
        /// The object read.
        key: String,
        /// What the stream reported.
        source: std::io::Error,
    },
    /// The feed's state cannot be read; nothing moves until an operator restores it.
    #[error("the state snapshot s3://{bucket}/{key} is unusable: {source}; the state was not changed — inspect or restore a previous version of the snapshot")]
    Snapshot {
        /// The data bucket.
        bucket: String,
        /// The snapshot's key.
        key: String,
        /// Why it is unusable.
        source: SnapshotError,
    },
    /// Messages could not be sent after the sender's retries.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Other runs of the feed kept committing first.
    #[error("lost the race to commit the state of feed `{feed}` {attempts} times in a row")]
    Contention {
        /// The feed.
        feed: String,
        /// Commit attempts made.
        attempts: u32,
    },
    /// A held file cannot be approved or discarded as asked (permanent: the operator decides).
    #[error(transparent)]
    Held(#[from] HeldError),
    /// A task of the run failed unexpectedly.
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

/// Why a held file cannot be approved, discarded or listed as asked. Each is permanent: the
/// message says what the operator can do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeldError {
    /// The feed named is not in the configuration.
    #[error("no feed `{feed}` is configured")]
    UnknownFeed {
        /// The feed named.
        feed: String,
    },
    /// The id is not 16 lowercase hex digits.
    #[error("`{id}` is not a held id (16 hex digits, as `casefeed held` lists them)")]
    BadId {
        /// The id given.
        id: String,
    },
    /// No manifest under that id.
    #[error("nothing is held under s3://{bucket}/{key} (already approved or discarded?)")]
    NotHeld {
        /// The data bucket.
        bucket: String,
        /// The manifest's key.
        key: String,
    },
    /// The manifest is not JSON of the right shape.
    #[error("the held manifest s3://{bucket}/{key} is not readable: {problem}")]
    Unreadable {
        /// The data bucket.
        bucket: String,
        /// The manifest's key.
        key: String,
        /// What kind of JSON error, and where (never the manifest's text).
        problem: String,
    },
    /// The manifest at that key names another feed or id.
    #[error("the held manifest s3://{bucket}/{key} names another feed or id")]
    Foreign {
        /// The data bucket.
        bucket: String,
        /// The manifest's key.
        key: String,
    },
    /// Another file was applied since the held file was diffed.
    #[error("held file {id} of feed `{feed}` was diffed against a state that has since changed (another file was applied); it cannot be approved as it is — discard it (a newer upload carries the same rows)")]
    StateMoved {
        /// The held id.
        id: String,
        /// The feed.
        feed: String,
    },
    /// The held copy of the object is gone or was replaced.
    #[error("the held copy s3://{bucket}/{key} is missing or was replaced ({problem}); discard this held file")]
    CopyMissing {
        /// The data bucket.
        bucket: String,
        /// The copy's key.
        key: String,
        /// What the store said.
        problem: String,
    },
    /// The state moved while the approved file's rows were being sent.
    #[error("the state of feed `{feed}` changed while the held file was being applied; its rows were sent under their idempotency keys — approve again only if the state is back to the held one, else discard")]
    StateChangedWhileApplying {
        /// The feed.
        feed: String,
    },
}

impl HeldError {
    /// A manifest that does not parse: the kind of JSON error and where, never its text.
    pub fn unreadable(bucket: &str, key: &str, e: &serde_json::Error) -> HeldError {
        HeldError::Unreadable {
            bucket: bucket.to_string(),
            key: key.to_string(),
            problem: format!(
                "{} at line {} column {}",
                crate::contract::envelope::serde_category(e),
                e.line(),
                e.column()
            ),
        }
    }
}
