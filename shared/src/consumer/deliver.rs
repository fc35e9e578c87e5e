//! One message's flow: decode → ledger (take the key) → the API → classify the answer → a
//! fate: applied, duplicate, dead-lettered now (permanent), or retried after a backoff.

use super::answer::{classify, Delivery, TransientKind};
use super::ledger::{Lease, LedgerState, Take};
use super::{Consumer, Fate, InMessage, WorkQueue};
use crate::contract::envelope::Envelope;
use crate::ports::api::Api;
use crate::ports::store::ObjectStore;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tracing::{error, info, warn};

/// The batch's circuit breaker: consecutive transient API failures, whether it is open, and
/// how many answers refused our credentials.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    consecutive: AtomicU32,
    open: AtomicBool,
    pub(super) auth: AtomicU32,
}

impl Breaker {
    /// Open: the rest of the batch is retried without calling the API.
    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// An answer that shows the API is up: the count of consecutive failures restarts.
    fn success(&self) {
        self.consecutive.store(0, Ordering::SeqCst);
    }

    /// A failure that shows the API is down or refusing us: opens at `threshold` in a row.
    fn failure(&self, threshold: u32) {
        let n = self.consecutive.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= threshold && !self.open.swap(true, Ordering::SeqCst) {
            warn!(consecutive_failures = n, "circuit opened: the rest of this batch is returned for retry without calling the API");
        }
    }
}

impl<S: ObjectStore, A: Api, Q: WorkQueue> Consumer<S, A, Q> {
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

    pub(super) async fn process_one(&self, m: &InMessage, breaker: &Breaker) -> Fate {
        let env = match Envelope::decode(&m.body) {
            Ok(e) => e,
            Err(e) => {
                return self
                    .dead_letter(m, "undecodable", None, &e.to_string())
                    .await
            }
        };
        if breaker.is_open() {
            return self.retry(
                m,
                "circuit_open",
                None,
                "the API failed repeatedly in this batch",
            );
        }
        let lease = match self.take_lease(m, &env).await {
            Ok(lease) => lease,
            Err(fate) => return fate,
        };
        let answer = self.api.deliver(&env).await;
        self.settle(m, &lease, classify(&answer), breaker).await
    }

    /// Take the ledger's lease on the message's key, or the fate of a message that must not
    /// call the API now: already applied (a duplicate), or another attempt holds the key.
    async fn take_lease(&self, m: &InMessage, env: &Envelope) -> Result<Lease, Fate> {
        let owner = format!("{}:{}", m.message_id, m.receive_count);
        match self
            .ledger
            .take(&env.feed, &env.idempotency_key, &owner, m.receive_count)
            .await
        {
            Ok(Take::Owned(lease)) => Ok(lease),
            Ok(Take::Done) => {
                info!(message_id = %m.message_id, "already applied (ledger): skipped");
                Err(Fate::Duplicate)
            }
            Ok(Take::Busy(remaining)) => Err(self.retry(
                m,
                "in_progress_elsewhere",
                Some(remaining.min(Duration::from_secs(900))),
                "another attempt holds this key",
            )),
            Err(e) => Err(self.retry(m, "ledger", None, &e.to_string())),
        }
    }

    /// The fate the API's answer gives the message, with the lease ended to match.
    async fn settle(
        &self,
        m: &InMessage,
        lease: &Lease,
        delivery: Delivery,
        breaker: &Breaker,
    ) -> Fate {
        match delivery {
            Delivery::Applied { status } => {
                breaker.success();
                // applied: the message is done; if the ledger cannot record it, a
                // redelivery gets the API's 409
                self.end_lease(m, lease, LedgerState::Done, Some(status))
                    .await;
                Fate::Applied
            }
            Delivery::AlreadyApplied => {
                breaker.success();
                self.end_lease(m, lease, LedgerState::Done, Some(409)).await;
                Fate::Duplicate
            }
            Delivery::Permanent { status, reason } => {
                breaker.success();
                self.end_lease(m, lease, LedgerState::Rejected, Some(status))
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
                    breaker.failure(self.settings.breaker_threshold);
                }
                self.end_lease(m, lease, LedgerState::Released, status)
                    .await;
                self.retry(m, kind.as_str(), retry_after, &reason)
            }
        }
    }

    /// Record the end of our attempt in the ledger. A failed write is logged, not fatal: the
    /// message's fate stands, and the lease expires for the next attempt; a lost condition
    /// means our lease expired and another attempt took the key over.
    async fn end_lease(
        &self,
        m: &InMessage,
        lease: &Lease,
        state: LedgerState,
        status: Option<u16>,
    ) {
        match self.ledger.finish(lease, state, status).await {
            Ok(true) => {}
            Ok(false) => {
                info!(message_id = %m.message_id, ?state, "the lease had expired and was taken over; that attempt's outcome stands")
            }
            Err(e) => {
                warn!(message_id = %m.message_id, ?state, error = %e, "the ledger could not record the end of this attempt")
            }
        }
    }
}
