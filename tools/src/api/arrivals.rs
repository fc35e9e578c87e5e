//! The arrivals log of `POST /cases` (`GET /arrivals`), the per-second peaks computed over
//! it, and the gate every arrival passes first: outage, `limit_per_second`,
//! `rate_limit_next`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::faults::Faults;
use super::handlers::now_ms;
use super::stats::Counters;

/// How many arrivals the log keeps: the newest ones, the oldest are dropped first.
pub const MAX_ARRIVALS: usize = 500_000;

/// The width of the sliding window of `peak_per_second` and `limit_per_second`: an arrival
/// at `t` shares a window with the arrivals at `t-999 ..= t`.
const WINDOW_MS: u64 = 1000;

/// One `POST /cases` as the arrivals log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    /// When it arrived (Unix epoch ms), never before the previous arrival's `at_ms`.
    pub at_ms: u64,
    /// Its answer's status; 0 while it is in flight, and for a call whose connection was
    /// dropped (apply_then_drop) or that its client abandoned.
    pub status: u16,
    /// Its record key, once its body was parsed (`null` for a call refused before that).
    #[serde(default)]
    pub record_key: Option<String>,
    /// Its version (0 for a body without one), once its body was parsed.
    #[serde(default)]
    pub version: Option<u64>,
}

/// What the gate decided for an arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// An outage window is open at its arrival: 503.
    Outage,
    /// `limit_per_second` admitted calls are in its window already: 429.
    OverLimit,
    /// One of the `rate_limit_next` countdown: 429.
    Next429,
    /// On to auth and the rest of the checks.
    Open,
}

/// The arrivals, bounded, with the state of the sliding windows.
pub(super) struct ArrivalLog {
    cap: usize,
    entries: VecDeque<Arrival>,
    /// The sequence number of `entries[0]`; numbers go on across drops and clears, so that a
    /// call answered after its entry left the log changes nothing.
    first_seq: u64,
    last_at_ms: u64,
    /// `at_ms` of every arrival within the window ending at the latest one (peak_per_second).
    recent: VecDeque<u64>,
    /// The calendar second of the latest arrival, and how many arrived in it.
    second: u64,
    in_second: u64,
    /// `at_ms` of the admitted arrivals within the window ending at the latest one
    /// (limit_per_second). Not cleared by a reset: the limit is a fault, not a counter.
    admitted: VecDeque<u64>,
}

impl ArrivalLog {
    pub(super) fn new(cap: usize) -> Self {
        ArrivalLog {
            cap: cap.max(1),
            entries: VecDeque::new(),
            first_seq: 0,
            last_at_ms: 0,
            recent: VecDeque::new(),
            second: 0,
            in_second: 0,
            admitted: VecDeque::new(),
        }
    }

    /// Logs an arrival now, raises the peaks in `c`, and decides its gate: an open outage
    /// first, then `limit_per_second`, then the `rate_limit_next` countdown (decremented
    /// when it answers). Returns the arrival's sequence number and the gate.
    pub(super) fn arrive(
        &mut self,
        faults: &Faults,
        rate_limit_next: &AtomicU64,
        c: &Counters,
    ) -> (u64, Gate) {
        let at = now_ms().max(self.last_at_ms);
        self.last_at_ms = at;
        if self.entries.len() >= self.cap {
            self.entries.pop_front();
            self.first_seq += 1;
        }
        let seq = self.first_seq + self.entries.len() as u64;
        self.entries.push_back(Arrival {
            at_ms: at,
            status: 0,
            record_key: None,
            version: None,
        });

        prune(&mut self.recent, at);
        self.recent.push_back(at);
        c.peak_per_second
            .fetch_max(self.recent.len() as u64, Ordering::SeqCst);
        let second = at / 1000;
        if second == self.second && self.in_second > 0 {
            self.in_second += 1;
        } else {
            self.second = second;
            self.in_second = 1;
        }
        c.peak_per_calendar_second
            .fetch_max(self.in_second, Ordering::SeqCst);

        if faults.outage_until_ms.is_some_and(|until| at < until) {
            return (seq, Gate::Outage);
        }
        prune(&mut self.admitted, at);
        if let Some(limit) = faults.limit_per_second {
            if self.admitted.len() as u64 >= limit {
                return (seq, Gate::OverLimit);
            }
        }
        self.admitted.push_back(at);
        let next =
            rate_limit_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if next.is_ok() {
            return (seq, Gate::Next429);
        }
        (seq, Gate::Open)
    }

    fn entry(&mut self, seq: u64) -> Option<&mut Arrival> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.entries.get_mut(i)
    }

    /// The arrivals with `at_ms >= since_ms`, oldest first.
    pub(super) fn since(&self, since_ms: u64) -> Vec<Arrival> {
        let from = self.entries.partition_point(|a| a.at_ms < since_ms);
        self.entries.range(from..).cloned().collect()
    }

    /// Forgets the arrivals and the peaks' windows (`POST /reset`); the limit's window stays.
    pub(super) fn clear(&mut self) {
        self.first_seq += self.entries.len() as u64;
        self.entries.clear();
        self.recent.clear();
        self.in_second = 0;
    }
}

/// Drops the times that are no longer in the window ending at `at`.
fn prune(window: &mut VecDeque<u64>, at: u64) {
    while window
        .front()
        .is_some_and(|&t| t.saturating_add(WINDOW_MS) <= at)
    {
        window.pop_front();
    }
}

pub(super) fn lock(log: &Mutex<ArrivalLog>) -> MutexGuard<'_, ArrivalLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// One arrival's entry in the log, for as long as its call lives: it records the record key
/// and version once parsed, and the status when answered. A call dropped without an answer
/// (its connection dropped, its client gone) keeps status 0.
pub(super) struct ArrivalEntry<'a> {
    log: &'a Mutex<ArrivalLog>,
    seq: u64,
    status: u16,
}

impl<'a> ArrivalEntry<'a> {
    pub(super) fn new(log: &'a Mutex<ArrivalLog>, seq: u64) -> Self {
        ArrivalEntry {
            log,
            seq,
            status: 0,
        }
    }

    pub(super) fn parsed(&self, record_key: &str, version: u64) {
        if let Some(a) = lock(self.log).entry(self.seq) {
            a.record_key = Some(record_key.to_owned());
            a.version = Some(version);
        }
    }

    /// The status to record when this entry is dropped (with the call's future).
    pub(super) fn answered(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for ArrivalEntry<'_> {
    fn drop(&mut self) {
        if self.status == 0 {
            return;
        }
        if let Some(a) = lock(self.log).entry(self.seq) {
            a.status = self.status;
        }
    }
}
