//! One message's flow: decode → ledger (the record's lease, or superseded / duplicate) → the
//! gate (a slot within the fleet's rate; the breaker) → the API (credentials re-read once on
//! a refusal) → classify the answer → tell the gate → a fate: applied (the version
//! acknowledged), duplicate, superseded, dead-lettered now (permanent, or the retry window
//! is over), or retried after a backoff.

use super::answer::{classify, Delivery, TransientKind};
use super::gate::{Pass, Report};
use super::ledger::{Lease, Take};
use super::{Aged, BatchState, Consumer, Fate, InMessage, WorkQueue};
use crate::contract::envelope::Envelope;
use crate::ports::api::Api;
use crate::ports::gate::GateTable;
use crate::ports::ledger::{FateItem, LedgerTable};
use crate::ports::queue::MAX_DELAY;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{error, info, warn};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How a retry is asked for: its kind, the earliest time worth trying, what happened, and
/// whether the record's lease is kept until it expires (the outcome of a call is unknown).
struct RetryAsk<'a> {
    kind: &'static str,
    not_before: Option<Duration>,
    reason: &'a str,
    keeps_lease: bool,
}

/// A dead letter's context.
struct Letter<'a> {
    class: &'static str,
    status: Option<u16>,
    reason: &'a str,
    attempts: u32,
    age: Duration,
}

/// Whether the message holds its record's lease when it is dead-lettered.
enum Held<'a> {
    /// It does: released after.
    Yes(&'a Lease),
    /// It does not: taken for the dead letter, then released unless `keep`.
    No { keep: bool },
}

impl<L: LedgerTable, G: GateTable, A: Api, Q: WorkQueue> Consumer<L, G, A, Q> {
    /// The message's retry window: its envelope's (the feed's), else the consumer's default.
    fn window(&self, env: Option<&Envelope>) -> Duration {
        env.and_then(|e| e.retry_window_secs)
            .map(Duration::from_secs)
            .unwrap_or(self.settings.retry_window)
    }

    /// Retry after a backoff — or, once the message is older than its retry window,
    /// dead-letter it with the last reason, its attempts and its age.
    async fn retry(
        &self,
        m: &InMessage,
        env: Option<&Envelope>,
        ask: RetryAsk<'_>,
        state: &BatchState,
    ) -> Fate {
        let attempt = m.earlier_attempts() + 1;
        let now = now_ms();
        let age = Duration::from_millis((now - m.retry_since_ms(now)).max(0) as u64);
        let window = self.window(env);
        if ask.kind != "record_busy" && age >= window {
            let reason = format!(
                "retry window exceeded: {} s of retries over {attempt} attempts; last: {}",
                window.as_secs(),
                ask.reason
            );
            let letter = Letter {
                class: "retry_window",
                status: None,
                reason: &reason,
                attempts: attempt,
                age,
            };
            return match env {
                Some(env) => {
                    let note = "retry window exceeded".to_string();
                    self.dead_letter_once(
                        m,
                        env,
                        letter,
                        note,
                        Held::No {
                            keep: ask.keeps_lease,
                        },
                        state,
                    )
                    .await
                }
                None => self.dead_letter(m, letter).await,
            };
        }
        let (delay, ceiling) = self.backoff(attempt, ask.not_before);
        info!(
            message_id = %m.message_id,
            attempt,
            receive_count = m.receive_count,
            kind = ask.kind,
            reason = ask.reason,
            age_ms = age.as_millis() as u64,
            window_secs = window.as_secs(),
            ceiling_ms = ceiling.as_millis() as u64,
            not_before_ms = ask.not_before.map(|r| r.as_millis() as u64),
            delay_ms = delay.as_millis() as u64,
            "retry scheduled"
        );
        Fate::Retry {
            delay,
            kind: ask.kind,
        }
    }

    /// Dead-letter `m` once per lineage (see [`FateItem::lineage_ms`]): under its record's
    /// lease, and not when the ledger shows a copy of the same lineage dead-lettered already
    /// (SQS delivers at least once, so two copies of a message can both outlast the window).
    /// The dead letter is sent before its fate is recorded, so a failure in between can
    /// leave a second copy in the DLQ, never none. A record whose newer version the API
    /// acknowledged meanwhile ends superseded instead: it never needs sending.
    async fn dead_letter_once(
        &self,
        m: &InMessage,
        env: &Envelope,
        letter: Letter<'_>,
        note: String,
        held: Held<'_>,
        state: &BatchState,
    ) -> Fate {
        let taken;
        let (lease, keep) = match held {
            Held::Yes(lease) => (Some(lease), false),
            Held::No { keep } => {
                let owner = format!("{}:{}", m.message_id, m.receive_count);
                match self
                    .ledger
                    .take(&env.feed, &env.record_key, env.version, &owner)
                    .await
                {
                    Ok(Take::Owned(lease)) => {
                        taken = lease;
                        (Some(&taken), keep)
                    }
                    Ok(Take::Superseded { acknowledged }) => {
                        info!(message_id = %m.message_id, version = env.version, acknowledged, "superseded: the API acknowledged a newer version of the record; not dead-lettered");
                        let detail = Some(format!("acknowledged {acknowledged}"));
                        self.note(m, env, "superseded", detail, state).await;
                        return Fate::Superseded;
                    }
                    Ok(Take::Duplicate) => {
                        info!(message_id = %m.message_id, version = env.version, "already applied (ledger): not dead-lettered");
                        return Fate::Duplicate;
                    }
                    Ok(Take::Busy(remaining)) => {
                        info!(message_id = %m.message_id, "another attempt holds the record's lease: the dead letter waits for it");
                        return Fate::Retry {
                            delay: remaining.min(MAX_DELAY),
                            kind: "record_busy",
                        };
                    }
                    Err(e) => {
                        warn!(message_id = %m.message_id, error = %e, "the ledger cannot check for an earlier dead letter of this message: dead-lettered anyway");
                        (None, false)
                    }
                }
            }
        };
        let lineage = m.retry_since_ms(now_ms());
        let earlier = match lease {
            Some(_) => self.ledger.fate(&env.feed, &env.idempotency_key).await,
            None => Ok(None),
        };
        let fate = match earlier {
            Ok(Some(f)) if f.fate == "dead_lettered" && f.lineage_ms == Some(lineage) => {
                info!(message_id = %m.message_id, idempotency_key = %env.idempotency_key, "a copy of this message was dead-lettered already (ledger): this one is dropped");
                Fate::Duplicate
            }
            found => {
                if let Err(e) = found {
                    warn!(message_id = %m.message_id, error = %e, "the ledger cannot tell whether a copy of this message was dead-lettered: dead-lettered anyway");
                }
                let fate = self.dead_letter(m, letter).await;
                if matches!(fate, Fate::DeadLettered { .. }) {
                    self.note(m, env, "dead_lettered", Some(note), state).await;
                }
                fate
            }
        };
        if let (Some(lease), false) = (lease, keep) {
            self.release(m, lease).await;
        }
        fate
    }

    /// Send `m` to the DLQ with its context (never a row value); a failed send is a retry.
    async fn dead_letter(&self, m: &InMessage, letter: Letter<'_>) -> Fate {
        let Letter {
            class,
            status,
            reason,
            attempts,
            age,
        } = letter;
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
        attrs.push(("attempts".into(), attempts.to_string()));
        attrs.push(("age_ms".into(), age.as_millis().to_string()));
        attrs.push((
            "failed_at".into(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
        attrs.push(("source_message_id".into(), m.message_id.clone()));
        match self.queue.dead_letter(&m.body, &attrs).await {
            Ok(()) => {
                warn!(message_id = %m.message_id, class, status, reason, attempts, age_ms = age.as_millis() as u64, "dead-lettered");
                Fate::DeadLettered { class }
            }
            Err(e) => {
                // not lost: the message comes back (a receive used) and is tried again
                warn!(message_id = %m.message_id, error = %e, "could not dead-letter the message: it is retried");
                let (delay, _) = self.backoff(attempts, None);
                Fate::Retry {
                    delay,
                    kind: "dead_letter_failed",
                }
            }
        }
    }

    /// The age of a message now, from its envelope's first send and its retry clock.
    fn age_of(&self, m: &InMessage) -> Duration {
        let now = now_ms();
        Duration::from_millis((now - m.retry_since_ms(now)).max(0) as u64)
    }

    pub(super) async fn process_one(&self, m: &InMessage, state: &BatchState) -> Fate {
        let env = match Envelope::decode(&m.body) {
            Ok(e) => e,
            Err(e) => {
                let reason = e.to_string();
                let letter = Letter {
                    class: "undecodable",
                    status: None,
                    reason: &reason,
                    attempts: m.earlier_attempts() + 1,
                    age: self.age_of(m),
                };
                return self.dead_letter(m, letter).await;
            }
        };
        let env = &env;
        tracing::Span::current().record("run", env.run.as_str());
        if let Some(until_ms) = self.gate.open_until() {
            // this container saw the breaker open and its next probe is not due: wait
            // without touching the ledger or the gate's table
            let wait = Duration::from_millis((until_ms - now_ms()).max(0) as u64);
            return self
                .retry(
                    m,
                    Some(env),
                    RetryAsk {
                        kind: "circuit_open",
                        not_before: Some(wait),
                        reason: "the API's circuit breaker is open",
                        keeps_lease: false,
                    },
                    state,
                )
                .await;
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
                    env,
                    "superseded",
                    Some(format!("acknowledged {acknowledged}")),
                    state,
                )
                .await;
                return Fate::Superseded;
            }
            Ok(Take::Duplicate) => {
                info!(message_id = %m.message_id, version = env.version, "already applied (ledger): skipped");
                return Fate::Duplicate;
            }
            Ok(Take::Busy(remaining)) => {
                let ask = RetryAsk {
                    kind: "record_busy",
                    not_before: Some(remaining.min(Duration::from_secs(900))),
                    reason: "another attempt holds this record's lease",
                    keeps_lease: false,
                };
                return self.retry(m, Some(env), ask, state).await;
            }
            Err(e) => {
                let reason = e.to_string();
                let ask = RetryAsk {
                    kind: "ledger",
                    not_before: None,
                    reason: &reason,
                    keeps_lease: false,
                };
                return self.retry(m, Some(env), ask, state).await;
            }
        };
        let mut probe = match self.pass_gate(m, env, &lease, state).await {
            Ok(probe) => probe,
            Err(fate) => return fate,
        };
        let mut delivery = classify(&self.call(env, state).await);
        if matches!(
            delivery,
            Delivery::Transient {
                kind: TransientKind::Auth,
                ..
            }
        ) && self.api.refresh_credentials().await
        {
            info!(message_id = %m.message_id, "the API refused our credentials and the secret has changed: calling again with the new one");
            probe = match self.pass_gate(m, env, &lease, state).await {
                Ok(p) => p,
                Err(fate) => return fate,
            };
            delivery = classify(&self.call(env, state).await);
        }
        let report = match &delivery {
            Delivery::Applied { .. } | Delivery::AlreadyApplied | Delivery::Permanent { .. } => {
                Report::Up
            }
            Delivery::Transient {
                kind: TransientKind::RateLimited,
                retry_after,
                ..
            } => Report::Paused(retry_after.unwrap_or(Duration::from_secs(1))),
            Delivery::Transient { kind, .. } if kind.trips_breaker() => Report::Down,
            Delivery::Transient { .. } => Report::Neutral,
        };
        if let Err(e) = self.gate.report(report, probe).await {
            warn!(message_id = %m.message_id, error = %e, "could not tell the gate what the API said");
        }
        self.settle(m, env, &lease, delivery, state).await
    }

    /// One API call, its latency kept for the feed's metrics.
    async fn call(&self, env: &Envelope, state: &BatchState) -> crate::ports::api::ApiAnswer {
        let started = std::time::Instant::now();
        let answer = self.api.deliver(env).await;
        let ms = started.elapsed().as_millis() as i64;
        if let Ok(mut calls) = state.calls.lock() {
            calls.push((env.feed.clone(), ms));
        }
        answer
    }

    /// Pass the gate with the record's lease held: `Ok(probe)` to call now; otherwise the
    /// lease is released and the message's fate (a wait) returned.
    async fn pass_gate(
        &self,
        m: &InMessage,
        env: &Envelope,
        lease: &Lease,
        state: &BatchState,
    ) -> Result<bool, Fate> {
        let (kind, not_before, reason) = match self.gate.pass(self.settings.gate_wait).await {
            Ok(Pass::Go { probe }) => return Ok(probe),
            Ok(Pass::Wait { until_ms, why }) => (
                why,
                Some(Duration::from_millis((until_ms - now_ms()).max(0) as u64)),
                match why {
                    "circuit_open" => "the API's circuit breaker is open".to_string(),
                    "rate_paused" => "the API asked every consumer to pause (429)".to_string(),
                    _ => "the API's rate is booked beyond the wait".to_string(),
                },
            ),
            Err(e) => ("gate", None, e.to_string()),
        };
        self.release(m, lease).await;
        let ask = RetryAsk {
            kind,
            not_before,
            reason: &reason,
            keeps_lease: false,
        };
        Err(self.retry(m, Some(env), ask, state).await)
    }

    /// The fate the API's answer gives the message, with the lease ended to match.
    async fn settle(
        &self,
        m: &InMessage,
        env: &Envelope,
        lease: &Lease,
        delivery: Delivery,
        state: &BatchState,
    ) -> Fate {
        match delivery {
            Delivery::Applied { status } => {
                self.acknowledge(m, env, lease).await;
                self.note(m, env, "applied", Some(status.to_string()), state)
                    .await;
                Fate::Applied
            }
            Delivery::AlreadyApplied => {
                self.acknowledge(m, env, lease).await;
                self.note(m, env, "duplicate", Some("409".into()), state)
                    .await;
                Fate::Duplicate
            }
            Delivery::Permanent { status, reason } => {
                let letter = Letter {
                    class: "permanent",
                    status: Some(status),
                    reason: &reason,
                    attempts: m.earlier_attempts() + 1,
                    age: self.age_of(m),
                };
                let note = format!("permanent {status}");
                self.dead_letter_once(m, env, letter, note, Held::Yes(lease), state)
                    .await
            }
            Delivery::Transient {
                kind,
                status,
                retry_after,
                reason,
            } => {
                if kind == TransientKind::Auth {
                    state.auth.fetch_add(1, Ordering::SeqCst);
                    error!(message_id = %m.message_id, status, "the API refused our credentials: check the API token secret");
                }
                if kind.outcome_unknown() {
                    // the API may still be working on the request we gave up on: keep the
                    // record's lease until it expires, so the next call for this record
                    // cannot overlap it, and come back no sooner than that
                    info!(message_id = %m.message_id, "outcome unknown: the record's lease is kept until it expires");
                    let wait = retry_after.unwrap_or_default().max(self.ledger.lease);
                    let ask = RetryAsk {
                        kind: kind.as_str(),
                        not_before: Some(wait),
                        reason: &reason,
                        keeps_lease: true,
                    };
                    return self.retry(m, Some(env), ask, state).await;
                }
                self.release(m, lease).await;
                let ask = RetryAsk {
                    kind: kind.as_str(),
                    not_before: retry_after,
                    reason: &reason,
                    keeps_lease: false,
                };
                self.retry(m, Some(env), ask, state).await
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

    /// Record the message's fate under its idempotency key, and log and keep its age
    /// (since the row was sent, since its export was uploaded). A failed ledger write is
    /// tried once more, then logged: the fate itself stands.
    async fn note(
        &self,
        m: &InMessage,
        env: &Envelope,
        fate: &'static str,
        detail: Option<String>,
        state: &BatchState,
    ) {
        let now = now_ms();
        let sent_age_ms = env.sent_at_ms.map(|t| (now - t).max(0));
        let upload_age_ms = env.uploaded_at_ms.map(|t| (now - t).max(0));
        info!(
            message_id = %m.message_id,
            feed = %env.feed,
            run = %env.run,
            idempotency_key = %env.idempotency_key,
            version = env.version,
            fate,
            attempts = m.earlier_attempts() + 1,
            sent_age_ms,
            upload_age_ms,
            "message done"
        );
        if fate != "duplicate" {
            if let Ok(mut ages) = state.ages.lock() {
                ages.push(Aged {
                    feed: env.feed.clone(),
                    fate,
                    sent_age_ms,
                    upload_age_ms,
                });
            }
        }
        let item = FateItem {
            feed: env.feed.clone(),
            idempotency_key: env.idempotency_key.clone(),
            record_key: env.record_key.clone(),
            version: env.version,
            run: env.run.clone(),
            fate,
            detail,
            attempts: m.earlier_attempts() + 1,
            at_ms: now,
            lineage_ms: Some(m.retry_since_ms(now)),
        };
        let mut tries = 0;
        while let Err(e) = self.ledger.record_fate(&item).await {
            tries += 1;
            if tries >= 2 || !e.is_retryable() {
                warn!(message_id = %m.message_id, fate, error = %e, "the ledger could not record the message's fate");
                break;
            }
        }
    }
}
