//! One message's flow: decode → ledger (the record's lease, or superseded / duplicate) → the
//! API → classify the answer → a fate: applied (the version acknowledged), duplicate,
//! superseded, dead-lettered now (permanent), or retried after a backoff.

use super::answer::{classify, Delivery, TransientKind};
use super::ledger::{Lease, Take};
use super::{Consumer, Fate, InMessage, WorkQueue};
use crate::contract::envelope::Envelope;
use crate::ports::api::Api;
use crate::ports::ledger::{FateItem, LedgerTable};
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

impl<L: LedgerTable, A: Api, Q: WorkQueue> Consumer<L, A, Q> {
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
        let owner = format!("{}:{}", m.message_id, m.receive_count);
        let lease = match self
            .ledger
            .take(&env.feed, &env.record_key, env.version, &owner)
            .await
        {
            Ok(Take::Owned(lease)) => lease,
            Ok(Take::Superseded { acknowledged }) => {
                info!(message_id = %m.message_id, version = env.version, acknowledged, "superseded: the API acknowledged a newer version of the record; not sent");
                self.note(
                    m,
                    &env,
                    "superseded",
                    Some(format!("acknowledged {acknowledged}")),
                )
                .await;
                return Fate::Superseded;
            }
            Ok(Take::Duplicate) => {
                info!(message_id = %m.message_id, version = env.version, "already applied (ledger): skipped");
                return Fate::Duplicate;
            }
            Ok(Take::Busy(remaining)) => {
                return self.retry(
                    m,
                    "record_busy",
                    Some(remaining.min(Duration::from_secs(900))),
                    "another attempt holds this record's lease",
                )
            }
            Err(e) => return self.retry(m, "ledger", None, &e.to_string()),
        };
        let answer = self.api.deliver(&env).await;
        self.settle(m, &env, &lease, classify(&answer), breaker)
            .await
    }

    /// The fate the API's answer gives the message, with the lease ended to match.
    async fn settle(
        &self,
        m: &InMessage,
        env: &Envelope,
        lease: &Lease,
        delivery: Delivery,
        breaker: &Breaker,
    ) -> Fate {
        match delivery {
            Delivery::Applied { status } => {
                breaker.success();
                self.acknowledge(m, env, lease).await;
                self.note(m, env, "applied", Some(status.to_string())).await;
                Fate::Applied
            }
            Delivery::AlreadyApplied => {
                breaker.success();
                self.acknowledge(m, env, lease).await;
                self.note(m, env, "duplicate", Some("409".into())).await;
                Fate::Duplicate
            }
            Delivery::Permanent { status, reason } => {
                breaker.success();
                self.release(m, lease).await;
                let fate = self
                    .dead_letter(m, "permanent", Some(status), &reason)
                    .await;
                if matches!(fate, Fate::DeadLettered { .. }) {
                    self.note(m, env, "dead_lettered", Some(format!("permanent {status}")))
                        .await;
                }
                fate
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
                if kind.outcome_unknown() {
                    // the API may still be working on the request we gave up on: keep the
                    // record's lease until it expires, so the next call for this record
                    // cannot overlap it, and come back no sooner than that
                    info!(message_id = %m.message_id, "outcome unknown: the record's lease is kept until it expires");
                    let wait = retry_after.unwrap_or_default().max(self.ledger.lease);
                    return self.retry(m, kind.as_str(), Some(wait), &reason);
                }
                self.release(m, lease).await;
                self.retry(m, kind.as_str(), retry_after, &reason)
            }
        }
    }

    /// The API holds our version: record it. A failed write is logged, not fatal: the
    /// message is done, and a redelivery is answered 409 by the API under the same key.
    async fn acknowledge(&self, m: &InMessage, env: &Envelope, lease: &Lease) {
        match self
            .ledger
            .acknowledge(lease, &env.idempotency_key, &env.run)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                info!(message_id = %m.message_id, version = env.version, "a newer version of the record was acknowledged meanwhile; it stands")
            }
            Err(e) => {
                warn!(message_id = %m.message_id, error = %e, "the ledger could not record the acknowledged version")
            }
        }
    }

    /// End our lease without an acknowledgement. A failed write is logged, not fatal: the
    /// lease expires for the next attempt.
    async fn release(&self, m: &InMessage, lease: &Lease) {
        match self.ledger.release(lease).await {
            Ok(true) => {}
            Ok(false) => {
                info!(message_id = %m.message_id, "the lease had expired and was taken over")
            }
            Err(e) => {
                warn!(message_id = %m.message_id, error = %e, "the ledger could not release the lease; it expires")
            }
        }
    }

    /// Record the message's fate under its idempotency key (logged when the write fails:
    /// the fate itself stands).
    async fn note(
        &self,
        m: &InMessage,
        env: &Envelope,
        fate: &'static str,
        detail: Option<String>,
    ) {
        let item = FateItem {
            feed: env.feed.clone(),
            idempotency_key: env.idempotency_key.clone(),
            record_key: env.record_key.clone(),
            version: env.version,
            run: env.run.clone(),
            fate,
            detail,
            attempts: m.receive_count,
            at_ms: chrono::Utc::now().timestamp_millis(),
        };
        if let Err(e) = self.ledger.record_fate(&item).await {
            warn!(message_id = %m.message_id, fate, error = %e, "the ledger could not record the message's fate");
        }
    }
}
