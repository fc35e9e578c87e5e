//! The consumer's decisions: for each SQS message, decode → ledger (the record's lease; a
//! version at or below the acknowledged one is never sent) → POST to the contact-tracing
//! API → classify; applied, duplicate and superseded messages are done, permanent
//! failures go to the dead-letter queue now (with the reason), transient ones get a backoff
//! (visibility timeout) and are reported as batch item failures so SQS retries them — and
//! after maxReceiveCount, redrive moves them to the dead-letter queue.

pub mod answer;
mod deliver;
pub mod ledger;
#[cfg(test)]
mod tests;

pub use crate::ports::queue::{InMessage, WorkQueue};
pub use ledger::{admit, Admit, Lease, Ledger, Take};

use crate::backoff::Backoff;
use crate::ports::api::Api;
use crate::ports::ledger::LedgerTable;
use crate::ports::queue::MAX_VISIBILITY;
use deliver::Breaker;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::warn;

/// How the consumer works through a batch (defaults suit a Lambda function).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Messages of one batch processed at once (= API calls in flight per invocation).
    pub concurrency: usize,
    /// The waits before a message is retried, by its receive count.
    pub backoff: Backoff,
    /// Consecutive transient API failures that open the circuit for the rest of the batch.
    pub breaker_threshold: u32,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            concurrency: 2,
            backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(900)),
            breaker_threshold: 3,
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// The API applied the record.
    Applied,
    /// The ledger (or the API's 409) says it was applied before.
    Duplicate,
    /// The API acknowledged a newer version of the record: never sent.
    Superseded,
    /// Sent to the dead-letter queue now, with the reason.
    DeadLettered {
        /// Why: `undecodable` (not an envelope) or `permanent` (the API refused it for good).
        class: &'static str,
    },
    /// Returned to the queue, visible again after a backoff.
    Retry {
        /// How long the message stays invisible.
        delay: Duration,
        /// Why: a [`answer::TransientKind`] name, or `circuit_open`, `record_busy`,
        /// `ledger`, `dead_letter_failed`.
        kind: &'static str,
    },
}

/// What one batch's messages became, counted.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// Messages the API applied.
    pub applied: u32,
    /// Messages applied before (by the ledger or the API's 409).
    pub duplicates: u32,
    /// Messages whose record the API already holds in a newer version (never sent).
    pub superseded: u32,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: u32,
    /// Messages returned for retry.
    pub retried: u32,
    /// Answers that refused our credentials (401, 403).
    pub auth_failures: u32,
    /// Whether the circuit breaker opened during the batch.
    pub circuit_opened: bool,
}

/// The consumer's answer for one batch.
#[derive(Debug, Default, Clone)]
pub struct BatchResult {
    /// Message ids to report in `batchItemFailures`.
    pub failures: Vec<String>,
    /// Each message's id and fate.
    pub fates: Vec<(String, Fate)>,
    /// The batch's counts.
    pub stats: BatchStats,
}

/// The consumer: one message, one API call, once in effect, never older than what the API
/// holds.
pub struct Consumer<L: LedgerTable, A: Api, Q: WorkQueue> {
    /// The ledger: per record, the acknowledged version and the lease.
    pub ledger: Ledger<L>,
    /// The contact-tracing API.
    pub api: A,
    /// The work queue (backoff) and the dead-letter queue.
    pub queue: Q,
    /// How it works through a batch.
    pub settings: ConsumerSettings,
}

impl<L: LedgerTable, A: Api, Q: WorkQueue> Consumer<L, A, Q> {
    /// The backoff for a message received `receive_count` times, never sooner than
    /// `retry_after`, never beyond SQS's 12 hours. Returns (delay, ceiling).
    pub fn backoff(
        &self,
        receive_count: u32,
        retry_after: Option<Duration>,
    ) -> (Duration, Duration) {
        let b = self.settings.backoff;
        let ceiling = b.ceiling(receive_count.max(1));
        let mut d = b.delay(receive_count.max(1));
        if let Some(r) = retry_after {
            d = d.max(r);
        }
        (d.min(MAX_VISIBILITY), ceiling)
    }

    /// Process a batch, `concurrency` messages at a time; messages to retry get their backoff
    /// and are listed in `failures`.
    pub async fn process_batch(&self, messages: Vec<InMessage>) -> BatchResult {
        let breaker = &Breaker::default();
        let fates: Vec<(InMessage, Fate)> = futures_util::stream::iter(messages)
            .map(|m| async move {
                let fate = self.process_one(&m, breaker).await;
                (m, fate)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut result = BatchResult::default();
        result.stats.circuit_opened = breaker.is_open();
        result.stats.auth_failures = breaker.auth.load(Ordering::SeqCst);
        for (m, fate) in fates {
            match &fate {
                Fate::Applied => result.stats.applied += 1,
                Fate::Duplicate => result.stats.duplicates += 1,
                Fate::Superseded => result.stats.superseded += 1,
                Fate::DeadLettered { .. } => result.stats.dead_lettered += 1,
                Fate::Retry { delay, .. } => {
                    result.stats.retried += 1;
                    // the backoff: keep the message invisible that long; SQS then redelivers
                    // it (or redrive moves it to the DLQ after maxReceiveCount receives)
                    if let Err(e) = self
                        .queue
                        .change_visibility(&m.receipt_handle, *delay)
                        .await
                    {
                        warn!(message_id = %m.message_id, error = %e, "could not set the backoff; the queue's visibility timeout applies");
                    }
                    result.failures.push(m.message_id.clone());
                }
            }
            result.fates.push((m.message_id, fate));
        }
        result
    }
}
