//! The consumer's decisions: for each SQS message, decode → ledger (the record's lease; a
//! version at or below the acknowledged one is never sent) → the fleet-wide gate (the rate
//! limit and the circuit breaker, [`gate`]) → POST to the contact-tracing API → classify.
//!
//! * Applied, duplicate and superseded messages are done.
//! * Permanent failures go to the dead-letter queue now, with the reason.
//! * Transient failures, and waits for the gate, are **requeued**: a copy goes back on the
//!   work queue with a capped exponential backoff (full jitter, SQS's 15-minute delay at
//!   most) and the received message is done. A wait does not use up a receive, so an outage
//!   is ridden out for the feed's retry window (default 24 hours), after which the message
//!   is dead-lettered `retry window exceeded` with its attempts and age.
//! * A message that never finishes — it crashes its task or runs past the invocation's
//!   deadline (a *poison* message) — is reported as a batch item failure, and so is one
//!   waiting for its record's lease: those use receives, and redrive moves a poison message
//!   to the dead-letter queue after maxReceiveCount while the rest of its batch is done.

pub mod answer;
mod deliver;
pub mod gate;
pub mod ledger;
#[cfg(test)]
mod tests;

pub use crate::ports::queue::{InMessage, WorkQueue};
pub use gate::{Gate, GateSettings};
pub use ledger::{admit, Admit, Lease, Ledger, Take};

use crate::backoff::Backoff;
use crate::ports::api::Api;
use crate::ports::gate::{BreakerState, GateTable};
use crate::ports::ledger::LedgerTable;
use crate::ports::queue::{ATTEMPTS_ATTRIBUTE, MAX_DELAY, MAX_VISIBILITY, RETRY_SINCE_ATTRIBUTE};
use futures_util::{FutureExt, StreamExt};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tracing::{error, warn, Instrument};

/// How the consumer works through a batch (defaults suit a Lambda function).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Messages of one batch processed at once (= API calls in flight per invocation).
    pub concurrency: usize,
    /// The waits before a message is retried, by its attempt.
    pub backoff: Backoff,
    /// How long a message is retried when its envelope does not say (the feed's window).
    pub retry_window: Duration,
    /// How long a message may wait in process for the gate (a slot, a short pause) before
    /// it is requeued instead.
    pub gate_wait: Duration,
    /// Time kept at the end of an invocation to report the batch: a message still running
    /// then is abandoned and reported as a failure.
    pub deadline_margin: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            concurrency: 2,
            backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(900)),
            retry_window: Duration::from_secs(86_400),
            gate_wait: Duration::from_secs(2),
            deadline_margin: Duration::from_millis(1_500),
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
        /// Why: `undecodable` (not an envelope), `permanent` (the API refused it for good)
        /// or `retry_window` (transient failures outlasted the feed's retry window).
        class: &'static str,
    },
    /// To be tried again after `delay`: requeued (a copy), or — waiting for its record's
    /// lease (`record_busy`) — returned to the queue invisible that long.
    Retry {
        /// How long until the next attempt.
        delay: Duration,
        /// Why: a [`answer::TransientKind`] name, or `circuit_open`, `rate_paused`,
        /// `rate_booked`, `record_busy`, `ledger`, `gate`, `dead_letter_failed`.
        kind: &'static str,
    },
    /// Never finished: its task panicked, or the invocation's deadline came first. Reported
    /// as a batch item failure (a receive used: a poison message reaches the DLQ by redrive).
    Unfinished {
        /// `crashed` or `deadline`.
        why: &'static str,
    },
}

/// Whether a retry of this kind waits on the queue's visibility (using a receive) rather
/// than as a requeued copy: waiting for a record's lease is bounded by the lease, and a
/// record held by a poison message must not keep its own messages away from redrive.
fn retried_by_visibility(kind: &str) -> bool {
    kind == "record_busy"
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
    /// Messages to be tried again (requeued or returned).
    pub retried: u32,
    /// Messages that never finished (crashed, or cut off by the deadline).
    pub unfinished: u32,
    /// Answers that refused our credentials (401, 403).
    pub auth_failures: u32,
    /// Whether the fleet's circuit breaker was open when the batch ended.
    pub circuit_opened: bool,
}

/// One finished message's age, for the latency metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aged {
    /// The feed.
    pub feed: String,
    /// `applied`, `superseded` or `dead_lettered`.
    pub fate: &'static str,
    /// Since the splitter sent the row, when the envelope says.
    pub sent_age_ms: Option<i64>,
    /// Since the export was uploaded, when the envelope says.
    pub upload_age_ms: Option<i64>,
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
    /// The ages of the messages that reached a final fate.
    pub ages: Vec<Aged>,
    /// The batch's counts and API latencies per feed (the message's `feed` attribute;
    /// `unknown` without one).
    pub by_feed: BTreeMap<String, FeedStats>,
}

/// One feed's share of a batch: its messages' fates and its API calls.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FeedStats {
    /// Messages the API applied.
    pub applied: u32,
    /// Messages applied before.
    pub duplicates: u32,
    /// Messages superseded (never sent).
    pub superseded: u32,
    /// Messages to be tried again.
    pub retried: u32,
    /// Messages that never finished.
    pub unfinished: u32,
    /// Messages dead-lettered, by class (`permanent`, `retry_window`, `undecodable`).
    pub dead_lettered: BTreeMap<&'static str, u32>,
    /// Each API call's latency, milliseconds, in call order.
    pub api_latency_ms: Vec<i64>,
}

/// What one message's processing leaves behind besides its fate.
#[derive(Debug, Default)]
pub(crate) struct BatchState {
    pub(crate) auth: AtomicU32,
    pub(crate) ages: std::sync::Mutex<Vec<Aged>>,
    /// Each API call: its feed and latency (milliseconds).
    pub(crate) calls: std::sync::Mutex<Vec<(String, i64)>>,
}

/// The consumer: one message, one API call, once in effect, never older than what the API
/// holds, never faster than the API's rate.
pub struct Consumer<L: LedgerTable, G: GateTable, A: Api, Q: WorkQueue> {
    /// The ledger: per record, the acknowledged version and the lease.
    pub ledger: Ledger<L>,
    /// The fleet-wide gate: rate limit and circuit breaker.
    pub gate: Gate<G>,
    /// The contact-tracing API.
    pub api: A,
    /// The work queue (requeue, backoff) and the dead-letter queue.
    pub queue: Q,
    /// How it works through a batch.
    pub settings: ConsumerSettings,
}

impl<L: LedgerTable, G: GateTable, A: Api, Q: WorkQueue> Consumer<L, G, A, Q> {
    /// The backoff for a message's `attempt` (1-based), never sooner than `retry_after`,
    /// never beyond SQS's 15-minute delay. Returns (delay, ceiling).
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> (Duration, Duration) {
        let b = self.settings.backoff;
        let ceiling = b.ceiling(attempt.max(1));
        let mut d = b.delay(attempt.max(1));
        if let Some(r) = retry_after {
            d = d.max(r);
        }
        (d.min(MAX_DELAY), ceiling)
    }

    /// Process a batch with no deadline.
    pub async fn process_batch(&self, messages: Vec<InMessage>) -> BatchResult {
        self.process_batch_until(messages, None).await
    }

    /// Process a batch, `concurrency` messages at a time, each finished by `deadline` less
    /// the margin (the invocation's end) or reported unfinished. Retries are requeued (or,
    /// waiting for a lease, get their visibility); unfinished messages and retries that
    /// could not be requeued are listed in `failures`.
    pub async fn process_batch_until(
        &self,
        messages: Vec<InMessage>,
        deadline: Option<tokio::time::Instant>,
    ) -> BatchResult {
        let state = &BatchState::default();
        let cutoff = deadline.map(|d| {
            d.checked_sub(self.settings.deadline_margin)
                .unwrap_or_else(tokio::time::Instant::now)
        });
        let fates: Vec<(InMessage, Fate)> = futures_util::stream::iter(messages)
            .map(|m| {
                // every line about this message carries these (the run once it is decoded)
                let span = tracing::info_span!(
                    "message",
                    message_id = %m.message_id,
                    receive_count = m.receive_count,
                    feed = m.attributes.get("feed").map(String::as_str),
                    idempotency_key = m.attributes.get("idempotency_key").map(String::as_str),
                    run = tracing::field::Empty,
                );
                self.process_in(m, state, cutoff).instrument(span)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut result = BatchResult::default();
        result.stats.auth_failures = state.auth.load(Ordering::SeqCst);
        result.stats.circuit_opened = self.gate.seen().state == BreakerState::Open;
        // the retries' copies (or visibility changes) all at once: the batch's end is near
        let returned: Vec<bool> =
            futures_util::future::join_all(fates.iter().map(|(m, fate)| async move {
                match fate {
                    Fate::Retry { delay, kind } => {
                        if !retried_by_visibility(kind) && self.requeue(m, *delay).await {
                            // the copy carries the message on: this receipt is done
                            false
                        } else {
                            self.return_to_queue(m, *delay).await;
                            true
                        }
                    }
                    Fate::Unfinished { .. } => true,
                    _ => false,
                }
            }))
            .await;
        for ((m, fate), failed) in fates.into_iter().zip(returned) {
            let feed = m.attributes.get("feed").map_or("unknown", String::as_str);
            let per = result.by_feed.entry(feed.to_string()).or_default();
            let (total, share) = match &fate {
                Fate::Applied => (&mut result.stats.applied, &mut per.applied),
                Fate::Duplicate => (&mut result.stats.duplicates, &mut per.duplicates),
                Fate::Superseded => (&mut result.stats.superseded, &mut per.superseded),
                Fate::DeadLettered { class } => (
                    &mut result.stats.dead_lettered,
                    per.dead_lettered.entry(class).or_default(),
                ),
                Fate::Unfinished { .. } => (&mut result.stats.unfinished, &mut per.unfinished),
                Fate::Retry { .. } => (&mut result.stats.retried, &mut per.retried),
            };
            *total += 1;
            *share += 1;
            if failed {
                result.failures.push(m.message_id.clone());
            }
            result.fates.push((m.message_id, fate));
        }
        result.ages = state.ages.lock().map(|a| a.clone()).unwrap_or_default();
        for (feed, ms) in state.calls.lock().map(|c| c.clone()).unwrap_or_default() {
            result
                .by_feed
                .entry(feed)
                .or_default()
                .api_latency_ms
                .push(ms);
        }
        result
    }

    /// One message, to its fate by `cutoff` (else unfinished); a crash is unfinished too.
    async fn process_in(
        &self,
        m: InMessage,
        state: &BatchState,
        cutoff: Option<tokio::time::Instant>,
    ) -> (InMessage, Fate) {
        let run = std::panic::AssertUnwindSafe(self.process_one(&m, state)).catch_unwind();
        let fate = match cutoff {
            Some(at) => match tokio::time::timeout_at(at, run).await {
                Ok(done) => done,
                Err(_) => {
                    warn!(message_id = %m.message_id, receive_count = m.receive_count, "the invocation's deadline came first: the message is reported unfinished");
                    return (m, Fate::Unfinished { why: "deadline" });
                }
            },
            None => run.await,
        };
        let fate = fate.unwrap_or_else(|_| {
            error!(message_id = %m.message_id, receive_count = m.receive_count, "processing the message crashed: it is reported unfinished (redrive dead-letters it after maxReceiveCount)");
            Fate::Unfinished { why: "crashed" }
        });
        (m, fate)
    }

    /// Send a copy of `m` visible after `delay`, with its attempts and retry clock;
    /// `false` when SQS refused it (the message is then returned to the queue instead).
    async fn requeue(&self, m: &InMessage, delay: Duration) -> bool {
        let now = chrono::Utc::now().timestamp_millis();
        let mut attrs: Vec<(String, String)> = m
            .attributes
            .iter()
            .filter(|(k, _)| {
                k.as_str() != ATTEMPTS_ATTRIBUTE && k.as_str() != RETRY_SINCE_ATTRIBUTE
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        attrs.push((
            ATTEMPTS_ATTRIBUTE.into(),
            (m.earlier_attempts() + 1).to_string(),
        ));
        attrs.push((
            RETRY_SINCE_ATTRIBUTE.into(),
            m.retry_since_ms(now).to_string(),
        ));
        match self
            .queue
            .requeue(&m.body, &attrs, delay.min(MAX_DELAY))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(message_id = %m.message_id, error = %e, "could not requeue the message: it is returned to the queue instead (a receive used)");
                false
            }
        }
    }

    /// Keep the received message invisible for `delay`; SQS then redelivers it (or redrive
    /// moves it to the DLQ after maxReceiveCount receives).
    async fn return_to_queue(&self, m: &InMessage, delay: Duration) {
        if let Err(e) = self
            .queue
            .change_visibility(&m.receipt_handle, delay.min(MAX_VISIBILITY))
            .await
        {
            warn!(message_id = %m.message_id, error = %e, "could not set the backoff; the queue's visibility timeout applies");
        }
    }
}
