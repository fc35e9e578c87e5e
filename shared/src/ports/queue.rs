//! The queues behind small traits: the splitter's side ([`MessageQueue`]: send batches of
//! messages) and the consumer's side ([`WorkQueue`]: back a message off, dead-letter it).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// SQS limits.
pub const MAX_BATCH_ENTRIES: usize = 10;
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One row ready to go.
#[derive(Debug, Clone)]
pub struct OutMessage {
    pub body: String,
    pub attributes: Vec<(&'static str, String)>,
    /// Where the row came from, to report a refusal.
    pub line: u64,
    pub key_fp: u64,
}

impl OutMessage {
    /// Size as SQS counts it: body plus attribute names, types and values.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(n, v)| n.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

/// One entry of a batch that was not accepted.
#[derive(Debug, Clone)]
pub struct EntryFailure {
    /// Index within the batch that was sent.
    pub index: usize,
    pub code: String,
    /// SQS says the request itself is wrong: retrying will not help.
    pub sender_fault: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("SQS {op} failed: {message}")]
    Service {
        op: &'static str,
        message: String,
        retryable: bool,
    },
}

impl QueueError {
    pub fn retryable(&self) -> bool {
        match self {
            QueueError::Service { retryable, .. } => *retryable,
        }
    }
}

pub trait MessageQueue: Send + Sync + Clone + 'static {
    /// Send up to 10 messages; returns the entries that failed.
    fn send_batch(
        &self,
        messages: &[OutMessage],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, QueueError>> + Send;
}

/// SQS's longest visibility timeout.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// One message of a batch, independent of Lambda types.
#[derive(Debug, Clone, Default)]
pub struct InMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// `ApproximateReceiveCount` (1 on the first delivery).
    pub receive_count: u32,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
}

/// Queue operations the consumer needs.
pub trait WorkQueue: Send + Sync + Clone + 'static {
    fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    fn dead_letter(
        &self,
        body: &str,
        attributes: &[(String, String)],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}
