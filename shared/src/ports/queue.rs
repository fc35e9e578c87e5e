//! The queues behind small traits: the splitter's side ([`MessageQueue`]: send batches of
//! messages) and the consumer's side ([`WorkQueue`]: back a message off, requeue it for
//! later, dead-letter it), and [`MemoryQueue`], the splitter's side in memory.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Messages one `SendMessageBatch` may carry (an SQS limit).
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Bytes one `SendMessageBatch` may carry, its messages together (1 MiB, an SQS limit).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One row ready to go.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// The message body: the row's envelope, as JSON.
    pub body: String,
    /// String message attributes, by name.
    pub attributes: Vec<(&'static str, String)>,
    /// Where the row came from, to report a refusal.
    pub line: u64,
    /// The row's key fingerprint: a record SQS refuses keeps its previous state.
    pub key_fp: u64,
    /// The record's key (for the run's sent list; it is in the body too).
    pub record_key: String,
}

impl OutMessage {
    /// The message's line in the run's sent list: keys only.
    pub fn sent_record(&self) -> crate::contract::report::SentRecord {
        let attr = |name: &str| {
            self.attributes
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        crate::contract::report::SentRecord {
            record_key: self.record_key.clone(),
            idempotency_key: attr("idempotency_key"),
            change: attr("change"),
        }
    }

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
    /// SQS's error code for the entry.
    pub code: String,
    /// SQS says the request itself is wrong: retrying will not help.
    pub sender_fault: bool,
}

/// Why a queue call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// An SQS call failed.
    #[error("SQS {op} failed: {message}")]
    Service {
        /// The SQS operation (`SendMessageBatch`, `SendMessage`, …).
        op: &'static str,
        /// What went wrong: the service's code and message, or the transport failure.
        message: String,
        /// Whether trying again may succeed (a timeout, a throttle, a service fault).
        retryable: bool,
    },
}

impl QueueError {
    /// Whether trying again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            QueueError::Service { retryable, .. } => *retryable,
        }
    }
}

/// The splitter's queue: where new and changed rows go.
pub trait MessageQueue: Send + Sync + Clone + 'static {
    /// Send up to 10 messages; returns the entries that failed.
    fn send_batch(
        &self,
        messages: &[OutMessage],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, QueueError>> + Send;
}

/// An in-memory [`MessageQueue`] that accepts every message of a well-formed batch and keeps
/// it, in the order sent: for tests and for local dry runs (`casefeed diff`). A batch SQS
/// would refuse as a whole (over [`MAX_BATCH_ENTRIES`] messages or [`MAX_BATCH_BYTES`]) is
/// refused here too, as a permanent error. Clones share the messages.
#[derive(Debug, Clone, Default)]
pub struct MemoryQueue {
    accepted: Arc<Mutex<Vec<OutMessage>>>,
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OutMessage>> {
        match self.accepted.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Every message accepted so far, in the order sent.
    pub fn messages(&self) -> Vec<OutMessage> {
        self.lock().clone()
    }

    /// Every message accepted so far, in the order sent; the queue is then empty.
    pub fn take(&self) -> Vec<OutMessage> {
        std::mem::take(&mut *self.lock())
    }

    /// How many messages the queue holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the queue holds no message.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl MessageQueue for MemoryQueue {
    async fn send_batch(&self, messages: &[OutMessage]) -> Result<Vec<EntryFailure>, QueueError> {
        let bytes: usize = messages.iter().map(OutMessage::size).sum();
        if messages.is_empty() || messages.len() > MAX_BATCH_ENTRIES || bytes > MAX_BATCH_BYTES {
            return Err(QueueError::Service {
                op: "SendMessageBatch",
                message: format!(
                    "a batch of {} messages and {bytes} bytes is outside SQS's limits (1 to {MAX_BATCH_ENTRIES} messages, {MAX_BATCH_BYTES} bytes)",
                    messages.len()
                ),
                retryable: false,
            });
        }
        self.lock().extend_from_slice(messages);
        Ok(Vec::new())
    }
}

/// SQS's longest visibility timeout.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// One message of a batch, independent of Lambda types.
#[derive(Debug, Clone, Default)]
pub struct InMessage {
    /// SQS's id of the message.
    pub message_id: String,
    /// The handle of this receipt of the message, which a visibility change names.
    pub receipt_handle: String,
    /// The message body (an envelope, unless something else was sent to the queue).
    pub body: String,
    /// `ApproximateReceiveCount` (1 on the first delivery).
    pub receive_count: u32,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// SQS's `SentTimestamp` (Unix epoch ms) of this copy of the message, when known.
    pub sent_timestamp_ms: Option<i64>,
}

/// The attribute counting a message's earlier attempts (set on its requeued copies).
pub const ATTEMPTS_ATTRIBUTE: &str = "attempts";
/// The attribute holding when a message's retries started (Unix epoch ms): the first copy's
/// `SentTimestamp`, carried by every requeued copy so the retry window counts from it.
pub const RETRY_SINCE_ATTRIBUTE: &str = "retry_since_ms";

impl InMessage {
    /// Attempts made before this receive (0 for a message never requeued).
    pub fn earlier_attempts(&self) -> u32 {
        self.attributes
            .get(ATTEMPTS_ATTRIBUTE)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// When this message's retries started: its first copy's send time (`now_ms` when SQS
    /// did not say).
    pub fn retry_since_ms(&self, now_ms: i64) -> i64 {
        self.attributes
            .get(RETRY_SINCE_ATTRIBUTE)
            .and_then(|v| v.parse().ok())
            .or(self.sent_timestamp_ms)
            .unwrap_or(now_ms)
    }
}

/// The longest delay SQS gives a sent message (`DelaySeconds`: 15 minutes).
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// Queue operations the consumer needs.
pub trait WorkQueue: Send + Sync + Clone + 'static {
    /// Make the received message visible again after `timeout` (at most [`MAX_VISIBILITY`]).
    fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Put a copy of a message back on the work queue, visible after `delay` (at most
    /// [`MAX_DELAY`]), with these string attributes. The received message is then done: a
    /// wait this way does not count as one of its receives.
    fn requeue(
        &self,
        body: &str,
        attributes: &[(String, String)],
        delay: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// Send a message (its body, with these string attributes) to the dead-letter queue.
    fn dead_letter(
        &self,
        body: &str,
        attributes: &[(String, String)],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}
