//! The counters `GET /stats` answers with, and the in-flight guards of a `POST /cases`: one
//! for the whole server, one per record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Counters, as answered by `GET /stats`.
///
/// `applied` counts first-time applies (= new ledger entries), including the
/// `dropped_after_apply` ones. `replays` counts 409 `duplicate` answers (an Idempotency-Key
/// applied before), `stale_409` counts 409 `stale` answers (a new key whose version is at or
/// below the record's current one: nothing applied). `server_errors_5xx` counts 503/500
/// answers that were really sent (outage, `fail_5xx`, `fail_records`, ledger write failures);
/// `timeouts` counts requests chosen to sleep `timeout_ms` (their late 503 is not counted
/// again), `hung` the calls held `hang_ms` for a record of `hang_records` (counted when the
/// hold starts; their late 503 is not counted again). `rate_limited_429` counts every 429
/// (the `rate_limit_429` share, `limit_per_second`, `rate_limit_next`); `over_limit_429` is
/// the subset refused by `limit_per_second`. Every finished `POST /cases` falls in exactly
/// one of applied, replays, stale_409, rejected_422, rate_limited_429, server_errors_5xx,
/// unauthorized, bad_requests, timeouts, hung. `requests` counts every arrival.
///
/// `last_429_at_ms` is when the latest 429 was answered (Unix epoch ms; 0 if none since the
/// start or the last reset).
///
/// `peak_per_second` is the most `POST /cases` arrivals (every one, whatever its answer,
/// the 429s of the limit included) within any sliding window of 1000 ms: a window
/// `[t-999, t]` in whole milliseconds, both ends included, where `t` is an arrival's `at_ms`.
/// It is computed at each arrival over the window ending at it, which covers every window
/// (the busiest window can always be taken to end at an arrival). `peak_per_calendar_second`
/// is the most arrivals whose `at_ms / 1000` is equal (one second of the Unix clock, from
/// `N000` to `N999` ms). An arrival's `at_ms` is taken under the log's lock and never before
/// the previous arrival's, so both are exact over the arrivals log (which may have dropped
/// its oldest entries; the peaks have not). `peak_per_calendar_second <= peak_per_second`.
///
/// `in_flight` and `peak_in_flight` count every `POST /cases` from its arrival. The per-record
/// counts start once a request is authorized and parsed (its feed and record key known) and
/// last until it is answered, dropped or abandoned by its client, latency and timeout sleeps
/// included: `peak_in_flight_per_record` is the most calls one (feed, record_key) had in
/// flight at once, over all records, and `overlapping_record_calls` counts the calls that
/// started while another call for the same record was in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub applied: u64,
    pub replays: u64,
    pub stale_409: u64,
    pub rejected_422: u64,
    pub rate_limited_429: u64,
    pub over_limit_429: u64,
    pub last_429_at_ms: u64,
    pub server_errors_5xx: u64,
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub dropped_after_apply: u64,
    pub timeouts: u64,
    pub hung: u64,
    pub in_flight: u64,
    pub peak_in_flight: u64,
    pub peak_in_flight_per_record: u64,
    pub overlapping_record_calls: u64,
    pub peak_per_second: u64,
    pub peak_per_calendar_second: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) applied: AtomicU64,
    pub(super) replays: AtomicU64,
    pub(super) stale_409: AtomicU64,
    pub(super) rejected_422: AtomicU64,
    pub(super) rate_limited_429: AtomicU64,
    pub(super) over_limit_429: AtomicU64,
    pub(super) last_429_at_ms: AtomicU64,
    pub(super) server_errors_5xx: AtomicU64,
    pub(super) unauthorized: AtomicU64,
    pub(super) bad_requests: AtomicU64,
    pub(super) dropped_after_apply: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) hung: AtomicU64,
    /// Raised by the arrivals log, under its lock.
    pub(super) peak_per_second: AtomicU64,
    pub(super) peak_per_calendar_second: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// Calls in flight per (feed, record_key); a record with none has no entry.
    per_record: Mutex<HashMap<(String, String), u64>>,
    peak_in_flight_per_record: AtomicU64,
    overlapping_record_calls: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Stats {
            requests: g(&self.requests),
            applied: g(&self.applied),
            replays: g(&self.replays),
            stale_409: g(&self.stale_409),
            rejected_422: g(&self.rejected_422),
            rate_limited_429: g(&self.rate_limited_429),
            over_limit_429: g(&self.over_limit_429),
            last_429_at_ms: g(&self.last_429_at_ms),
            server_errors_5xx: g(&self.server_errors_5xx),
            unauthorized: g(&self.unauthorized),
            bad_requests: g(&self.bad_requests),
            dropped_after_apply: g(&self.dropped_after_apply),
            timeouts: g(&self.timeouts),
            hung: g(&self.hung),
            in_flight: g(&self.in_flight),
            peak_in_flight: g(&self.peak_in_flight),
            peak_in_flight_per_record: g(&self.peak_in_flight_per_record),
            overlapping_record_calls: g(&self.overlapping_record_calls),
            peak_per_second: g(&self.peak_per_second),
            peak_per_calendar_second: g(&self.peak_per_calendar_second),
        }
    }

    /// Clears every counter but the in-flight counts; the in-flight peaks restart from what
    /// is in flight now, the arrival peaks from 0 (the caller clears the arrivals log, whose
    /// windows they are computed over, under the same lock).
    pub(super) fn reset(&self) {
        for a in [
            &self.requests,
            &self.applied,
            &self.replays,
            &self.stale_409,
            &self.rejected_422,
            &self.rate_limited_429,
            &self.over_limit_429,
            &self.last_429_at_ms,
            &self.server_errors_5xx,
            &self.unauthorized,
            &self.bad_requests,
            &self.dropped_after_apply,
            &self.timeouts,
            &self.hung,
            &self.overlapping_record_calls,
            &self.peak_per_second,
            &self.peak_per_calendar_second,
        ] {
            a.store(0, Ordering::SeqCst);
        }
        self.peak_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        let per_record = self.per_record();
        let now = per_record.values().copied().max().unwrap_or(0);
        self.peak_in_flight_per_record.store(now, Ordering::SeqCst);
    }

    fn per_record(&self) -> MutexGuard<'_, HashMap<(String, String), u64>> {
        self.per_record.lock().unwrap_or_else(|e| e.into_inner())
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

/// Counts a `POST /cases` as in flight for its record for as long as it lives: every return,
/// and a future dropped with its connection (an apply-then-drop, a client that gave up),
/// ends the count.
pub(super) struct RecordInFlight<'a> {
    counters: &'a Counters,
    record: (String, String),
}

impl<'a> RecordInFlight<'a> {
    pub(super) fn enter(c: &'a Counters, feed: &str, record_key: &str) -> Self {
        let record = (feed.to_owned(), record_key.to_owned());
        let mut per_record = c.per_record();
        let n = per_record.entry(record.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            c.overlapping_record_calls.fetch_add(1, Ordering::SeqCst);
        }
        c.peak_in_flight_per_record.fetch_max(*n, Ordering::SeqCst);
        drop(per_record);
        RecordInFlight {
            counters: c,
            record,
        }
    }
}

impl Drop for RecordInFlight<'_> {
    fn drop(&mut self) {
        let mut per_record = self.counters.per_record();
        if let Some(n) = per_record.get_mut(&self.record) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_record.remove(&self.record);
            }
        }
    }
}
