//! The counters `GET /stats` answers with, and the in-flight guard of a `POST /cases`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Counters, as answered by `GET /stats`.
///
/// `applied` counts first-time applies (= new ledger entries), including the
/// `dropped_after_apply` ones. `server_errors_5xx` counts 503/500 answers that were really
/// sent (outage, `fail_5xx`, ledger write failures); `timeouts` counts requests chosen to
/// sleep `timeout_ms` (their late 503 is not counted again). Every finished `POST /cases`
/// falls in exactly one of applied, replays, rejected_422, rate_limited_429,
/// server_errors_5xx, unauthorized, bad_requests, timeouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub applied: u64,
    pub replays: u64,
    pub rejected_422: u64,
    pub rate_limited_429: u64,
    pub server_errors_5xx: u64,
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub dropped_after_apply: u64,
    pub timeouts: u64,
    pub in_flight: u64,
    pub peak_in_flight: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) applied: AtomicU64,
    pub(super) replays: AtomicU64,
    pub(super) rejected_422: AtomicU64,
    pub(super) rate_limited_429: AtomicU64,
    pub(super) server_errors_5xx: AtomicU64,
    pub(super) unauthorized: AtomicU64,
    pub(super) bad_requests: AtomicU64,
    pub(super) dropped_after_apply: AtomicU64,
    pub(super) timeouts: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Stats {
            requests: g(&self.requests),
            applied: g(&self.applied),
            replays: g(&self.replays),
            rejected_422: g(&self.rejected_422),
            rate_limited_429: g(&self.rate_limited_429),
            server_errors_5xx: g(&self.server_errors_5xx),
            unauthorized: g(&self.unauthorized),
            bad_requests: g(&self.bad_requests),
            dropped_after_apply: g(&self.dropped_after_apply),
            timeouts: g(&self.timeouts),
            in_flight: g(&self.in_flight),
            peak_in_flight: g(&self.peak_in_flight),
        }
    }

    /// Clears every counter but `in_flight`; the peak restarts from the current in-flight count.
    pub(super) fn reset(&self) {
        for a in [
            &self.requests,
            &self.applied,
            &self.replays,
            &self.rejected_422,
            &self.rate_limited_429,
            &self.server_errors_5xx,
            &self.unauthorized,
            &self.bad_requests,
            &self.dropped_after_apply,
            &self.timeouts,
        ] {
            a.store(0, Ordering::SeqCst);
        }
        self.peak_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Counts a `POST /cases` as in flight for as long as it lives (also when its future is dropped).
pub(super) struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    pub(super) fn enter(c: &'a Counters) -> Self {
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
