//! The fleet-wide gate in front of the contact-tracing API: one item, shared by every
//! consumer, holding the rate limit's schedule and the circuit breaker. Its table (the
//! ledger's DynamoDB table in production, [`MemoryGate`] in tests) applies each change
//! atomically; what the changes mean is decided in [`crate::consumer::gate`].
//!
//! The rate limit is a schedule (GCRA): `tat_ms` is the next free call slot. A consumer
//! reserves the slot when it is no further ahead than a short horizon and pushes `tat_ms`
//! one spacing on (1 / rate), then sleeps until its slot: calls leave evenly spaced, so no
//! one-second window holds more than the rate. A 429's `Retry-After` moves `tat_ms` to the
//! end of the pause, for every consumer at once.
//!
//! The breaker: consecutive transient failures (`failures`) open it (`state`); while open
//! nobody reserves a slot; one probe per `probe_at_ms` interval may call; a success closes
//! it (`closed_at_ms`, from which the rate ramps up again).

use std::future::Future;
use std::sync::{Arc, Mutex};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BreakerState {
    /// Calls flow (within the rate).
    #[default]
    Closed,
    /// Nobody calls but one probe per interval.
    Open,
}

impl BreakerState {
    /// As stored and logged: `closed` or `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
        }
    }

    /// Parse the stored form; anything but `open` is closed.
    pub fn parse(s: &str) -> BreakerState {
        if s == "open" {
            BreakerState::Open
        } else {
            BreakerState::Closed
        }
    }
}

/// The gate's one item (every time in Unix epoch milliseconds; 0 = never).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateItem {
    /// The breaker.
    pub state: BreakerState,
    /// Transient failures in a row, fleet-wide.
    pub failures: u32,
    /// The next free call slot (the schedule's "theoretical arrival time").
    pub tat_ms: i64,
    /// While open: no probe before this time.
    pub probe_at_ms: i64,
    /// When the breaker last opened.
    pub opened_at_ms: i64,
    /// When the breaker last closed (the ramp starts here).
    pub closed_at_ms: i64,
    /// The end of the last pause a 429 asked for.
    pub paused_until_ms: i64,
}

/// A slot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRequest {
    /// The earliest slot wanted: now plus the reservation's expected round trip, so the
    /// slot is still ahead when the answer arrives (a slot reserved for "now" would be
    /// late by the whole round trip, and late calls crowd the next second).
    pub earliest_ms: i64,
    /// How far apart calls are (1 / rate, ramp included), in microseconds.
    pub spacing_us: i64,
    /// The latest slot that may be reserved: now + the horizon.
    pub horizon_ms: i64,
}

/// The answer to a slot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Reserved: call at `at_us` (epoch microseconds). `item` is the gate after the change.
    Reserved {
        /// When to call, in epoch microseconds.
        at_us: i64,
        /// The gate after the reservation.
        item: GateItem,
    },
    /// Not reserved: the breaker is open, or the schedule is booked beyond the horizon.
    Refused(GateItem),
}

/// Why the gate's table failed. Always retryable: the message waits and tries again.
#[derive(Debug, thiserror::Error)]
#[error("the API gate's table failed: {message}")]
pub struct GateError {
    /// What went wrong (the service's code and message, never a row value).
    pub message: String,
}

/// The gate's table: each method is one atomic change (a conditional write in DynamoDB).
/// The schedule is kept in microseconds (`tat_us`), so spacings below a millisecond (rates
/// above 1,000/s) still add up; [`GateItem::tat_ms`] shows it in milliseconds.
pub trait GateTable: Send + Sync + Clone + 'static {
    /// The gate as it is (`None`: never written: closed, nothing booked).
    fn read(&self) -> impl Future<Output = Result<Option<GateItem>, GateError>> + Send;

    /// If the breaker is closed and the next free slot is at most `horizon_ms`: reserve
    /// `max(next free slot, earliest_ms)` and move the next free slot one spacing on.
    fn reserve(&self, req: SlotRequest) -> impl Future<Output = Result<Slot, GateError>> + Send;

    /// If the breaker is open and `probe_at_ms <= now_ms`: take the probe (push
    /// `probe_at_ms` to `now_ms + interval_ms`). `Ok(None)`: taken; `Ok(Some(item))`: not,
    /// and the gate as it is.
    fn take_probe(
        &self,
        now_ms: i64,
        interval_ms: i64,
    ) -> impl Future<Output = Result<Option<GateItem>, GateError>> + Send;

    /// A call succeeded: `failures = 0`; an open breaker closes (`closed_at_ms = now_ms`,
    /// the schedule restarts at now). `true` when this closed it.
    fn succeeded(&self, now_ms: i64) -> impl Future<Output = Result<bool, GateError>> + Send;

    /// A call failed in a way that shows the API down: `failures + 1`; at `threshold` a
    /// closed breaker opens (`opened_at_ms = now_ms`, first probe at `now_ms + interval_ms`).
    /// `true` when this opened it.
    fn failed(
        &self,
        now_ms: i64,
        threshold: u32,
        interval_ms: i64,
    ) -> impl Future<Output = Result<bool, GateError>> + Send;

    /// A 429: nobody calls before `until_ms` (the next free slot moves there unless it is
    /// later already).
    fn pause(&self, until_ms: i64) -> impl Future<Output = Result<(), GateError>> + Send;
}

/// The gate's item plus the schedule in microseconds (the table's whole state).
#[derive(Debug, Clone, Default)]
struct MemoryState {
    item: GateItem,
    tat_us: i64,
    written: bool,
    failing: bool,
    round_trip: std::time::Duration,
}

/// An in-memory [`GateTable`] with the same atomic semantics, for tests and tools.
#[derive(Clone, Default)]
pub struct MemoryGate {
    state: Arc<Mutex<MemoryState>>,
}

impl MemoryGate {
    /// A gate never written.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every call fail (or work again).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Make every reservation take this long, half on the way there and half back (a
    /// remote table's round trip).
    pub fn set_round_trip(&self, round_trip: std::time::Duration) {
        self.lock().round_trip = round_trip;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // a panic while holding the lock cannot leave the state half-written: every change
        // below is a few plain assignments
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(s: &MemoryState) -> Result<(), GateError> {
        if s.failing {
            Err(GateError {
                message: "injected failure".into(),
            })
        } else {
            Ok(())
        }
    }
}

impl GateTable for MemoryGate {
    async fn read(&self) -> Result<Option<GateItem>, GateError> {
        let s = self.lock();
        Self::check(&s)?;
        Ok(s.written.then(|| s.item.clone()))
    }

    async fn reserve(&self, req: SlotRequest) -> Result<Slot, GateError> {
        let half = self.lock().round_trip / 2;
        if !half.is_zero() {
            tokio::time::sleep(half).await;
        }
        let answer = {
            let mut s = self.lock();
            Self::check(&s)?;
            if s.item.state == BreakerState::Open || s.tat_us > req.horizon_ms.saturating_mul(1000)
            {
                Slot::Refused(s.item.clone())
            } else {
                let at_us = s.tat_us.max(req.earliest_ms.saturating_mul(1000));
                s.tat_us = at_us.saturating_add(req.spacing_us);
                s.item.tat_ms = s.tat_us / 1000;
                s.written = true;
                Slot::Reserved {
                    at_us,
                    item: s.item.clone(),
                }
            }
        };
        if !half.is_zero() {
            tokio::time::sleep(half).await;
        }
        Ok(answer)
    }

    async fn take_probe(
        &self,
        now_ms: i64,
        interval_ms: i64,
    ) -> Result<Option<GateItem>, GateError> {
        let mut s = self.lock();
        Self::check(&s)?;
        if s.item.state == BreakerState::Open && s.item.probe_at_ms <= now_ms {
            s.item.probe_at_ms = now_ms.saturating_add(interval_ms);
            return Ok(None);
        }
        Ok(Some(s.item.clone()))
    }

    async fn succeeded(&self, now_ms: i64) -> Result<bool, GateError> {
        let mut s = self.lock();
        Self::check(&s)?;
        s.written = true;
        s.item.failures = 0;
        if s.item.state == BreakerState::Open {
            s.item.state = BreakerState::Closed;
            s.item.closed_at_ms = now_ms;
            s.tat_us = now_ms.saturating_mul(1000);
            s.item.tat_ms = now_ms;
            return Ok(true);
        }
        Ok(false)
    }

    async fn failed(
        &self,
        now_ms: i64,
        threshold: u32,
        interval_ms: i64,
    ) -> Result<bool, GateError> {
        let mut s = self.lock();
        Self::check(&s)?;
        s.written = true;
        s.item.failures = s.item.failures.saturating_add(1);
        if s.item.failures >= threshold && s.item.state == BreakerState::Closed {
            s.item.state = BreakerState::Open;
            s.item.opened_at_ms = now_ms;
            s.item.probe_at_ms = now_ms.saturating_add(interval_ms);
            return Ok(true);
        }
        Ok(false)
    }

    async fn pause(&self, until_ms: i64) -> Result<(), GateError> {
        let mut s = self.lock();
        Self::check(&s)?;
        s.written = true;
        let until_us = until_ms.saturating_mul(1000);
        if s.tat_us < until_us {
            s.tat_us = until_us;
            s.item.tat_ms = until_ms;
        }
        s.item.paused_until_ms = s.item.paused_until_ms.max(until_ms);
        Ok(())
    }
}
