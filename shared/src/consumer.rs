//! The consumer's decisions: for each SQS message, decode → idempotency ledger → POST to the
//! contact-tracing API → classify; applied and duplicate messages are done, permanent
//! failures go to the dead-letter queue now (with the reason), transient ones get a backoff
//! (visibility timeout) and are reported as batch item failures so SQS retries them — and
//! after maxReceiveCount, redrive moves them to the dead-letter queue.

use crate::api::{classify, Api, Delivery, TransientKind};
use crate::backoff::Backoff;
use crate::envelope::Envelope;
use crate::ledger::{Ledger, LedgerState, Take};
use crate::queue::QueueError;
use crate::store::ObjectStore;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tracing::{error, info, warn};

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

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Messages of one batch processed at once (= API calls in flight per invocation).
    pub concurrency: usize,
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
    Applied,
    /// The ledger (or the API's 409) says it was applied before.
    Duplicate,
    DeadLettered {
        class: &'static str,
    },
    Retry {
        delay: Duration,
        kind: &'static str,
    },
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    pub applied: u32,
    pub duplicates: u32,
    pub dead_lettered: u32,
    pub retried: u32,
    pub auth_failures: u32,
    pub circuit_opened: bool,
}

#[derive(Debug, Default, Clone)]
pub struct BatchResult {
    /// Message ids to report in `batchItemFailures`.
    pub failures: Vec<String>,
    pub fates: Vec<(String, Fate)>,
    pub stats: BatchStats,
}

pub struct Consumer<S: ObjectStore, A: Api, Q: WorkQueue> {
    pub ledger: Ledger<S>,
    pub api: A,
    pub queue: Q,
    pub settings: ConsumerSettings,
}

struct Breaker {
    consecutive: AtomicU32,
    open: AtomicBool,
    auth: AtomicU32,
}

impl<S: ObjectStore, A: Api, Q: WorkQueue> Consumer<S, A, Q> {
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

    pub async fn process_batch(&self, messages: Vec<InMessage>) -> BatchResult {
        let breaker = Breaker {
            consecutive: AtomicU32::new(0),
            open: AtomicBool::new(false),
            auth: AtomicU32::new(0),
        };
        let breaker = &breaker;
        let fates: Vec<(InMessage, Fate)> = futures_util::stream::iter(messages)
            .map(|m| async move {
                let fate = self.process_one(&m, breaker).await;
                (m, fate)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut result = BatchResult::default();
        result.stats.circuit_opened = breaker.open.load(Ordering::SeqCst);
        result.stats.auth_failures = breaker.auth.load(Ordering::SeqCst);
        for (m, fate) in fates {
            match &fate {
                Fate::Applied => result.stats.applied += 1,
                Fate::Duplicate => result.stats.duplicates += 1,
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

    fn retry(
        &self,
        m: &InMessage,
        kind: &'static str,
        retry_after: Option<Duration>,
        reason: &str,
    ) -> Fate {
        let (delay, ceiling) = self.backoff(m.receive_count, retry_after);
        info!(
            message_id = %m.message_id,
            receive_count = m.receive_count,
            kind,
            reason,
            ceiling_ms = ceiling.as_millis() as u64,
            retry_after_ms = retry_after.map(|r| r.as_millis() as u64),
            delay_ms = delay.as_millis() as u64,
            "retry scheduled"
        );
        Fate::Retry { delay, kind }
    }

    async fn dead_letter(
        &self,
        m: &InMessage,
        class: &'static str,
        status: Option<u16>,
        reason: &str,
    ) -> Fate {
        let mut attrs: Vec<(String, String)> = Vec::new();
        for k in ["feed", "change", "idempotency_key"] {
            if let Some(v) = m.attributes.get(k) {
                attrs.push((k.to_string(), v.clone()));
            }
        }
        attrs.push(("error_class".into(), class.into()));
        if let Some(s) = status {
            attrs.push(("http_status".into(), s.to_string()));
        }
        let short: String = reason.chars().take(256).collect();
        attrs.push(("reason".into(), short));
        attrs.push(("attempts".into(), m.receive_count.to_string()));
        attrs.push((
            "failed_at".into(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
        attrs.push(("source_message_id".into(), m.message_id.clone()));
        match self.queue.dead_letter(&m.body, &attrs).await {
            Ok(()) => {
                warn!(message_id = %m.message_id, class, status, reason, "dead-lettered");
                Fate::DeadLettered { class }
            }
            Err(e) => self.retry(m, "dead_letter_failed", None, &e.to_string()),
        }
    }

    async fn process_one(&self, m: &InMessage, breaker: &Breaker) -> Fate {
        let env = match Envelope::decode(&m.body) {
            Ok(e) => e,
            Err(e) => {
                return self
                    .dead_letter(m, "undecodable", None, &e.to_string())
                    .await
            }
        };
        if breaker.open.load(Ordering::SeqCst) {
            return self.retry(
                m,
                "circuit_open",
                None,
                "the API failed repeatedly in this batch",
            );
        }
        let owner = format!("{}:{}", m.message_id, m.receive_count);
        let held = match self
            .ledger
            .take(&env.feed, &env.idempotency_key, &owner, m.receive_count)
            .await
        {
            Ok(Take::Owned(h)) => h,
            Ok(Take::Done) => {
                info!(message_id = %m.message_id, "already applied (ledger): skipped");
                return Fate::Duplicate;
            }
            Ok(Take::Busy(remaining)) => {
                return self.retry(
                    m,
                    "in_progress_elsewhere",
                    Some(remaining.min(Duration::from_secs(900))),
                    "another attempt holds this key",
                );
            }
            Err(e) => return self.retry(m, "ledger", None, &e.to_string()),
        };
        let answer = self.api.deliver(&env).await;
        match classify(&answer) {
            Delivery::Applied { status } => {
                breaker.consecutive.store(0, Ordering::SeqCst);
                if let Err(e) = self
                    .ledger
                    .finish(&held, LedgerState::Done, Some(status))
                    .await
                {
                    // applied: the message is done; a redelivery gets the API's 409
                    warn!(message_id = %m.message_id, error = %e, "applied, but the ledger could not record it");
                }
                Fate::Applied
            }
            Delivery::AlreadyApplied => {
                breaker.consecutive.store(0, Ordering::SeqCst);
                if let Err(e) = self
                    .ledger
                    .finish(&held, LedgerState::Done, Some(409))
                    .await
                {
                    warn!(message_id = %m.message_id, error = %e, "the ledger could not record an earlier application");
                }
                Fate::Duplicate
            }
            Delivery::Permanent { status, reason } => {
                breaker.consecutive.store(0, Ordering::SeqCst);
                let _ = self
                    .ledger
                    .finish(&held, LedgerState::Rejected, Some(status))
                    .await;
                self.dead_letter(m, "permanent", Some(status), &reason)
                    .await
            }
            Delivery::Transient {
                kind,
                status,
                retry_after,
                reason,
            } => {
                if kind == TransientKind::Auth {
                    breaker.auth.fetch_add(1, Ordering::SeqCst);
                    error!(message_id = %m.message_id, status, "the API refused our credentials: check the API token secret");
                }
                if kind.trips_breaker() {
                    let n = breaker.consecutive.fetch_add(1, Ordering::SeqCst) + 1;
                    if n >= self.settings.breaker_threshold
                        && !breaker.open.swap(true, Ordering::SeqCst)
                    {
                        warn!(consecutive_failures = n, "circuit opened: the rest of this batch is returned for retry without calling the API");
                    }
                }
                let _ = self
                    .ledger
                    .finish(&held, LedgerState::Released, status)
                    .await;
                self.retry(m, kind.as_str(), retry_after, &reason)
            }
        }
    }
}

/// The SQS adapter: backoff by `ChangeMessageVisibility` on the work queue, dead letters by
/// `SendMessage` to the DLQ.
#[derive(Clone)]
pub struct SqsWork {
    pub client: aws_sdk_sqs::Client,
    pub work_queue_url: String,
    pub dlq_url: String,
}

fn sqs_err<E>(op: &'static str) -> impl FnOnce(aws_sdk_sqs::error::SdkError<E>) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::fmt::Debug,
{
    move |e| {
        let message = match &e {
            aws_sdk_sqs::error::SdkError::ServiceError(se) => format!(
                "{}: {}",
                se.err().code().unwrap_or("unknown"),
                se.err().message().unwrap_or("")
            ),
            other => format!("{other}"),
        };
        QueueError::Service {
            op,
            message,
            retryable: true,
        }
    }
}

impl WorkQueue for SqsWork {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.work_queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(timeout.as_secs().min(MAX_VISIBILITY.as_secs()) as i32)
            .send()
            .await
            .map_err(sqs_err("ChangeMessageVisibility"))?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        body: &str,
        attributes: &[(String, String)],
    ) -> Result<(), QueueError> {
        use aws_sdk_sqs::types::MessageAttributeValue;
        let mut req = self
            .client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(body);
        for (k, v) in attributes {
            if v.is_empty() {
                continue;
            }
            let attr = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| QueueError::Service {
                    op: "SendMessage",
                    message: e.to_string(),
                    retryable: false,
                })?;
            req = req.message_attributes(k, attr);
        }
        req.send().await.map_err(sqs_err("SendMessage"))?;
        Ok(())
    }
}
