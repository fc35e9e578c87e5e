//! The gate protocol: before every API call a consumer passes the fleet-wide gate
//! ([`crate::ports::gate`]), and after it reports what the API said.
//!
//! * **Rate.** A call needs a slot of the shared schedule, spaced `1 / (rate × (1 −
//!   headroom))` apart: no one-second window, fleet-wide, holds more than `rate` calls. A
//!   consumer reserves a slot at most `horizon` ahead and no sooner than the reservation's
//!   expected round trip (twice its running average: the slot is still ahead when the
//!   answer arrives), sleeps until it, and gives it up when it came too late to keep the
//!   spacing (a slow round trip, an oversleep on a loaded machine), reserving another.
//! * **Pause.** A 429 moves the schedule to the end of its `Retry-After`: nobody's next slot
//!   is sooner. Slots already reserved (at most `horizon` ahead) still go.
//! * **Breaker.** `threshold` transient failures in a row, fleet-wide, open it. While open
//!   nobody reserves a slot; one probe per `probe_interval` across the fleet calls; its
//!   success closes the breaker, and the rate then ramps from 10% to 100% over `ramp`.
//! * A wait longer than the caller's in-process budget is returned ([`Pass::Wait`]): the
//!   message is put back for later, without counting as a failed attempt.

use crate::ports::gate::{BreakerState, GateError, GateItem, GateTable, Slot, SlotRequest};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// The gate's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSettings {
    /// API calls per second, fleet-wide, never exceeded in any one-second window.
    pub rate_per_sec: f64,
    /// The share of the rate kept spare for clock jitter (0.05: calls go at 95% of it).
    pub headroom: f64,
    /// How far ahead a slot may be reserved.
    pub horizon: Duration,
    /// Transient failures in a row, fleet-wide, that open the breaker.
    pub threshold: u32,
    /// While open, one probe per this interval across the fleet.
    pub probe_interval: Duration,
    /// After closing, the rate ramps from 10% to 100% over this long (zero: at once).
    pub ramp: Duration,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            rate_per_sec: 10.0,
            headroom: 0.05,
            horizon: Duration::from_millis(200),
            threshold: 3,
            probe_interval: Duration::from_secs(30),
            ramp: Duration::from_secs(60),
        }
    }
}

impl GateSettings {
    /// The spacing between calls at full rate, in microseconds.
    pub fn base_spacing_us(&self) -> f64 {
        1e6 / (self.rate_per_sec.max(0.001) * (1.0 - self.headroom.clamp(0.0, 0.5)))
    }

    /// How late after its slot a call may still leave without crowding the next second:
    /// half the spacing the headroom leaves spare over a second.
    pub fn max_late_us(&self) -> i64 {
        let spare_us = 1e6 * self.headroom.clamp(0.0, 0.5) / (1.0 - self.headroom.clamp(0.0, 0.5));
        (spare_us / 2.0).max(1_000.0) as i64
    }

    /// The spacing now, the ramp after the breaker closed at `closed_at_ms` included.
    pub fn spacing_us(&self, now_ms: i64, closed_at_ms: i64) -> i64 {
        let base = self.base_spacing_us();
        let ramp_ms = self.ramp.as_millis() as f64;
        if closed_at_ms <= 0 || ramp_ms <= 0.0 {
            return base.ceil() as i64;
        }
        let elapsed = (now_ms - closed_at_ms).max(0) as f64;
        let factor = (elapsed / ramp_ms).clamp(0.1, 1.0);
        (base / factor).ceil() as i64
    }
}

/// What the gate says to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Call now. `probe`: the breaker is open and this call is the fleet's probe.
    Go {
        /// Whether this is the breaker's probe.
        probe: bool,
    },
    /// Not before `until_ms` (epoch milliseconds).
    Wait {
        /// The earliest time worth coming back.
        until_ms: i64,
        /// `circuit_open`, `rate_paused` (a 429's pause) or `rate_booked` (the schedule is
        /// booked beyond the horizon).
        why: &'static str,
    },
}

/// What a call's answer tells the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The API answered (applied, duplicate, refused for good): it is up.
    Up,
    /// A failure that shows it down (5xx, timeout, connection, credentials refused).
    Down,
    /// 429: pause everyone this long.
    Paused(Duration),
    /// Says nothing about the API's health (an unexpected status).
    Neutral,
}

/// The round trip assumed before the first reservation: 5 ms.
const INITIAL_ROUND_TRIP_US: i64 = 5_000;

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The gate: its table, its limits, and what this container last saw of it.
#[derive(Clone)]
pub struct Gate<T: GateTable> {
    /// The shared item's table.
    pub table: T,
    /// The limits.
    pub settings: GateSettings,
    seen: Arc<Mutex<GateItem>>,
    /// The running average of a reservation's round trip, in microseconds.
    round_trip_us: Arc<AtomicI64>,
}

impl<T: GateTable> Gate<T> {
    /// A gate over `table` with `settings`.
    pub fn new(table: T, settings: GateSettings) -> Self {
        Gate {
            table,
            settings,
            seen: Arc::new(Mutex::new(GateItem::default())),
            round_trip_us: Arc::new(AtomicI64::new(INITIAL_ROUND_TRIP_US)),
        }
    }

    /// How far ahead of now to ask for a slot: twice the reservation's average round trip
    /// plus a millisecond, at most three quarters of the horizon.
    pub fn lead_us(&self) -> i64 {
        let horizon_us = self.settings.horizon.as_micros().min(i64::MAX as u128) as i64;
        (2 * self.round_trip_us.load(Ordering::Relaxed) + 1_000).min(horizon_us * 3 / 4)
    }

    fn measured(&self, round_trip_us: i64) {
        // an exponentially weighted average (weight 1/4 for the newest)
        let old = self.round_trip_us.load(Ordering::Relaxed);
        let new = (3 * old + round_trip_us.clamp(0, 10_000_000)) / 4;
        self.round_trip_us.store(new, Ordering::Relaxed);
    }

    /// What this container last saw of the gate.
    pub fn seen(&self) -> GateItem {
        self.seen.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// `Some(next probe time)` when this container saw the breaker open and its next probe
    /// is not due yet: a message can wait without asking the table.
    pub fn open_until(&self) -> Option<i64> {
        let seen = self.seen();
        (seen.state == BreakerState::Open && seen.probe_at_ms > now_us() / 1000)
            .then_some(seen.probe_at_ms)
    }

    fn observe(&self, item: &GateItem) {
        if let Ok(mut g) = self.seen.lock() {
            *g = item.clone();
        }
    }

    /// Wait for a slot (or the probe), in process for at most `budget`; a longer wait is
    /// returned as [`Pass::Wait`].
    pub async fn pass(&self, budget: Duration) -> Result<Pass, GateError> {
        let started = tokio::time::Instant::now();
        let s = &self.settings;
        loop {
            let asked_us = now_us();
            let now_ms = asked_us / 1000;
            let req = SlotRequest {
                earliest_ms: (asked_us + self.lead_us()) / 1000,
                spacing_us: s.spacing_us(now_ms, self.seen().closed_at_ms),
                horizon_ms: now_ms + s.horizon.as_millis() as i64,
            };
            let answer = self.table.reserve(req).await?;
            self.measured(now_us() - asked_us);
            let (until_ms, why) = match answer {
                Slot::Reserved { at_us, item } => {
                    self.observe(&item);
                    let ahead = at_us - now_us();
                    if ahead > 0 {
                        tokio::time::sleep(Duration::from_micros(ahead as u64)).await;
                    }
                    // late: the reservation's round trip outran the lead, or the sleep
                    // overslept; within the headroom's slack the call still keeps the rate
                    let late = now_us() - at_us;
                    if late <= s.max_late_us() {
                        return Ok(Pass::Go { probe: false });
                    }
                    // too late to keep the spacing: this slot is lost, take another
                    info!(
                        late_ms = late / 1000,
                        round_trip_ms = self.round_trip_us.load(Ordering::Relaxed) / 1000,
                        "the API call's slot passed before it could be used; reserving another"
                    );
                    (now_us() / 1000, "rate_booked")
                }
                Slot::Refused(item) => {
                    self.observe(&item);
                    if item.state == BreakerState::Open {
                        if item.probe_at_ms <= now_ms {
                            match self
                                .table
                                .take_probe(now_ms, s.probe_interval.as_millis() as i64)
                                .await?
                            {
                                None => {
                                    info!("circuit open: this call is the fleet's probe");
                                    return Ok(Pass::Go { probe: true });
                                }
                                Some(now) => {
                                    self.observe(&now);
                                    (now.probe_at_ms, "circuit_open")
                                }
                            }
                        } else {
                            (item.probe_at_ms, "circuit_open")
                        }
                    } else {
                        let why = if item.paused_until_ms > now_ms {
                            "rate_paused"
                        } else {
                            "rate_booked"
                        };
                        (item.tat_ms - s.horizon.as_millis() as i64, why)
                    }
                }
            };
            let wait = Duration::from_millis((until_ms - now_us() / 1000).max(1) as u64);
            if why == "circuit_open" || started.elapsed() + wait > budget {
                return Ok(Pass::Wait { until_ms, why });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Tell the gate what the API said. `probe`: the call was the breaker's probe.
    pub async fn report(&self, report: Report, probe: bool) -> Result<(), GateError> {
        let now_ms = now_us() / 1000;
        let s = &self.settings;
        match report {
            Report::Up => {
                let seen = self.seen();
                if probe || seen.failures > 0 || seen.state == BreakerState::Open {
                    let closed = self.table.succeeded(now_ms).await?;
                    if let Ok(mut g) = self.seen.lock() {
                        g.failures = 0;
                        if closed || probe {
                            g.state = BreakerState::Closed;
                            g.closed_at_ms = now_ms;
                        }
                    }
                    if closed {
                        info!(
                            ramp_secs = s.ramp.as_secs(),
                            "circuit closed: the probe succeeded; the rate ramps up"
                        );
                    }
                }
            }
            Report::Down => {
                let opened = self
                    .table
                    .failed(now_ms, s.threshold, s.probe_interval.as_millis() as i64)
                    .await?;
                if opened {
                    if let Ok(mut g) = self.seen.lock() {
                        g.state = BreakerState::Open;
                        g.opened_at_ms = now_ms;
                        g.probe_at_ms = now_ms + s.probe_interval.as_millis() as i64;
                    }
                    warn!(
                        threshold = s.threshold,
                        probe_interval_secs = s.probe_interval.as_secs(),
                        "circuit opened: the API failed repeatedly; one probe per interval until it answers"
                    );
                }
                if let Ok(mut g) = self.seen.lock() {
                    g.failures = g.failures.saturating_add(1);
                }
            }
            Report::Paused(d) => {
                let until = now_ms + d.as_millis().min(i64::MAX as u128) as i64;
                self.table.pause(until).await?;
                info!(
                    pause_ms = d.as_millis() as u64,
                    "the API asked to slow down: every consumer pauses"
                );
            }
            Report::Neutral => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::gate::MemoryGate;

    fn gate(rate: f64) -> Gate<MemoryGate> {
        Gate::new(
            MemoryGate::new(),
            GateSettings {
                rate_per_sec: rate,
                headroom: 0.05,
                horizon: Duration::from_millis(200),
                threshold: 3,
                probe_interval: Duration::from_millis(300),
                ramp: Duration::ZERO,
            },
        )
    }

    #[test]
    fn spacing_follows_the_rate_headroom_and_ramp() {
        let mut s = GateSettings {
            rate_per_sec: 20.0,
            headroom: 0.05,
            ramp: Duration::from_secs(10),
            ..GateSettings::default()
        };
        // 20/s at 95%: 52.6 ms apart
        assert_eq!(s.spacing_us(0, 0), 52_632);
        // right after closing: 10% of the rate; half-way: 50%; after the ramp: full
        assert_eq!(s.spacing_us(1_000, 1_000), 526_316);
        assert_eq!(s.spacing_us(6_000, 1_000), 105_264);
        assert_eq!(s.spacing_us(20_000, 1_000), 52_632);
        s.ramp = Duration::ZERO;
        assert_eq!(s.spacing_us(1_000, 1_000), 52_632);
        // the slack a late wake-up may use: half the spare of one second
        assert_eq!(s.max_late_us(), 26_315);
    }

    /// `callers` tasks each passing the gate `each` times: when each pass said go (sorted
    /// epoch microseconds).
    async fn go_times(g: &Gate<MemoryGate>, callers: usize, each: usize) -> Vec<i64> {
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let (g, times) = (g.clone(), times.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..each {
                    let p = g.pass(Duration::from_secs(30)).await.unwrap();
                    assert_eq!(p, Pass::Go { probe: false });
                    times.lock().unwrap().push(now_us());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut t = times.lock().unwrap().clone();
        t.sort();
        t
    }

    /// The most calls (sorted epoch microseconds) in any window of one second.
    fn peak_per_second(t: &[i64]) -> usize {
        let mut peak = 0;
        for (i, start) in t.iter().enumerate() {
            let n = t[i..]
                .iter()
                .take_while(|x| **x < start + 1_000_000)
                .count();
            peak = peak.max(n);
        }
        peak
    }

    /// A table whose round trip (60 ms) is longer than a late call's slack (26 ms): a slot
    /// reserved for "now" would always be late. The gate reserves ahead by the round trip it
    /// measures, so calls go, and still never more than the rate in any second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_table_neither_stalls_the_calls_nor_crowds_a_second() {
        let g = gate(20.0);
        g.table.set_round_trip(Duration::from_millis(60));
        let t = go_times(&g, 6, 10).await;
        assert_eq!(t.len(), 60);
        let peak = peak_per_second(&t);
        assert!(peak <= 20, "{peak} calls within one second at 20/s");
        // 60 calls at 19/s take about 3.1 s; lost slots would stretch it (or stall it)
        let span = (t[59] - t[0]) as f64 / 1e6;
        assert!((2.9..4.5).contains(&span), "{span} s for 60 calls at 19/s");
        // the lead follows the measured round trip: about twice 60 ms
        let lead = g.lead_us();
        assert!((90_000..=150_000).contains(&lead), "lead {lead} µs");
    }

    #[tokio::test]
    async fn concurrent_callers_never_put_more_than_the_rate_in_any_second() {
        let g = gate(50.0);
        let t = go_times(&g, 8, 15).await;
        assert_eq!(t.len(), 120);
        let peak = peak_per_second(&t);
        assert!(
            peak <= 50,
            "{peak} calls within one second at a rate of 50/s"
        );
        // and the schedule is used: 120 calls at 47.5/s take about 2.5 s, not much more
        let span = (t[119] - t[0]) as f64 / 1e6;
        assert!((2.3..4.0).contains(&span), "{span} s");
    }

    #[tokio::test]
    async fn failures_open_the_breaker_for_everyone_and_a_probe_closes_it() {
        let g = gate(1000.0);
        let other = Gate::new(g.table.clone(), g.settings.clone());
        for _ in 0..2 {
            g.report(Report::Down, false).await.unwrap();
        }
        assert!(matches!(
            other.pass(Duration::ZERO).await.unwrap(),
            Pass::Go { probe: false }
        ));
        other.report(Report::Down, false).await.unwrap();
        // open: no slot for anyone, and the first probe only after the interval
        let Pass::Wait { until_ms, why } = g.pass(Duration::from_secs(5)).await.unwrap() else {
            panic!("open")
        };
        assert_eq!(why, "circuit_open");
        assert!(until_ms > now_us() / 1000);
        tokio::time::sleep(Duration::from_millis(320)).await;
        // one probe across both consumers
        assert_eq!(
            g.pass(Duration::ZERO).await.unwrap(),
            Pass::Go { probe: true }
        );
        assert!(matches!(
            other.pass(Duration::ZERO).await.unwrap(),
            Pass::Wait {
                why: "circuit_open",
                ..
            }
        ));
        // the probe fails: still open, next probe one interval later
        g.report(Report::Down, true).await.unwrap();
        assert!(matches!(
            other.pass(Duration::ZERO).await.unwrap(),
            Pass::Wait { .. }
        ));
        tokio::time::sleep(Duration::from_millis(320)).await;
        assert_eq!(
            other.pass(Duration::ZERO).await.unwrap(),
            Pass::Go { probe: true }
        );
        other.report(Report::Up, true).await.unwrap();
        let item = g.table.read().await.unwrap().unwrap();
        assert_eq!(item.state, BreakerState::Closed);
        assert_eq!(item.failures, 0);
        assert!(item.closed_at_ms > 0);
        assert!(matches!(
            g.pass(Duration::ZERO).await.unwrap(),
            Pass::Go { probe: false }
        ));
    }

    #[tokio::test]
    async fn a_success_between_failures_restarts_the_count() {
        let g = gate(1000.0);
        for _ in 0..2 {
            assert!(matches!(
                g.pass(Duration::ZERO).await.unwrap(),
                Pass::Go { .. }
            ));
            g.report(Report::Down, false).await.unwrap();
        }
        assert!(matches!(
            g.pass(Duration::ZERO).await.unwrap(),
            Pass::Go { .. }
        ));
        g.report(Report::Up, false).await.unwrap();
        g.report(Report::Down, false).await.unwrap();
        g.report(Report::Down, false).await.unwrap();
        let item = g.table.read().await.unwrap().unwrap();
        assert_eq!(item.state, BreakerState::Closed);
        assert_eq!(item.failures, 2);
    }

    #[tokio::test]
    async fn a_429_pauses_every_consumer_for_its_retry_after() {
        let g = gate(1000.0);
        let other = Gate::new(g.table.clone(), g.settings.clone());
        g.report(Report::Paused(Duration::from_millis(600)), false)
            .await
            .unwrap();
        let t0 = tokio::time::Instant::now();
        // a short budget: told to wait, as a pause
        assert!(matches!(
            other.pass(Duration::from_millis(50)).await.unwrap(),
            Pass::Wait {
                why: "rate_paused",
                ..
            }
        ));
        // a long one: waits in process, and goes no sooner than the pause ends
        assert_eq!(
            other.pass(Duration::from_secs(5)).await.unwrap(),
            Pass::Go { probe: false }
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(550),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn a_failing_table_is_an_error_not_a_pass() {
        let g = gate(10.0);
        g.table.set_failing(true);
        assert!(g.pass(Duration::ZERO).await.is_err());
        assert!(g.report(Report::Down, false).await.is_err());
    }
}
