//! The pure parts of `casefeed drill`: the phases, one sample a second, the CSV, the
//! backlog of rows sent but not yet in effect, the invariants and the per-phase summary.
//! Nothing here talks to a process or a socket.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::time::Duration;

/// What the stand-in API does during a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Normal latency; exports keep arriving.
    Normal,
    /// Latency × the slow factor; exports keep arriving.
    Slow,
    /// Every `POST /cases` answers 503 (an outage window); exports keep arriving.
    Down,
    /// Normal latency again; exports keep arriving.
    Back,
    /// Normal latency, no more exports: the backlog drains.
    Drain,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Normal,
        Phase::Slow,
        Phase::Down,
        Phase::Back,
        Phase::Drain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Normal => "normal",
            Phase::Slow => "slow",
            Phase::Down => "down",
            Phase::Back => "back",
            Phase::Drain => "drain",
        }
    }

    /// Whether exports are uploaded during the phase.
    pub fn uploads(self) -> bool {
        self != Phase::Drain
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phases in order with their lengths; the drain's length is its upper bound (it ends
/// early once everything is in effect).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub phases: Vec<(Phase, Duration)>,
}

impl Schedule {
    /// When `phase` starts, from the drill's start (the sum of the lengths before it).
    pub fn start_of(&self, phase: Phase) -> Duration {
        self.phases
            .iter()
            .take_while(|(p, _)| *p != phase)
            .map(|(_, d)| *d)
            .sum()
    }

    /// The phase at `t` from the start (the last one after the end).
    pub fn phase_at(&self, t: Duration) -> Phase {
        let mut end = Duration::ZERO;
        for (p, d) in &self.phases {
            end += *d;
            if t < end {
                return *p;
            }
        }
        self.phases.last().map_or(Phase::Drain, |(p, _)| *p)
    }

    /// Until when exports are uploaded (the start of the first phase without uploads).
    pub fn uploads_until(&self) -> Duration {
        self.phases
            .iter()
            .take_while(|(p, _)| p.uploads())
            .map(|(_, d)| *d)
            .sum()
    }

    pub fn total(&self) -> Duration {
        self.phases.iter().map(|(_, d)| *d).sum()
    }
}

/// One second of the drill, as sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the drill's start.
    pub t_s: f64,
    pub phase: Phase,
    /// `POST /cases` received by the API since the previous sample, per second of the interval.
    pub calls_per_s: f64,
    /// `POST /cases` received so far (the API's `requests`).
    pub requests: u64,
    /// API calls in flight at the sample (the API's `in_flight`).
    pub in_flight: u64,
    /// The work queue's messages: visible + in flight (not visible) + delayed (a retry
    /// requeued as a delayed copy is still work to do).
    pub queue_depth: u64,
    /// Seconds since the upload of the oldest export that still has a row neither applied
    /// nor superseded at the API; 0 when nothing is outstanding.
    pub oldest_age_s: f64,
    /// The fleet gate's `state` in the ledger table (`closed` when there is no item).
    pub breaker: String,
    /// Messages in the dead-letter queue.
    pub dead_lettered: u64,
    /// First-time applies at the API so far (its `applied`).
    pub applied: u64,
    /// Rows the splitter sent so far (sum of its runs' `sent`).
    pub rows_sent: u64,
}

impl Sample {
    pub fn breaker_open(&self) -> bool {
        self.breaker != "closed"
    }
}

pub const CSV_HEADER: [&str; 11] = [
    "t_s",
    "phase",
    "calls_per_s",
    "requests",
    "in_flight",
    "queue_depth",
    "oldest_age_s",
    "breaker",
    "dead_lettered",
    "applied",
    "rows_sent",
];

/// The samples as CSV, one line a sample under [`CSV_HEADER`] (counts only, no row value).
pub fn write_csv<W: Write>(w: W, samples: &[Sample]) -> Result<(), csv::Error> {
    let mut out = csv::Writer::from_writer(w);
    out.write_record(CSV_HEADER)?;
    for s in samples {
        out.write_record([
            format!("{:.3}", s.t_s),
            s.phase.to_string(),
            format!("{:.2}", s.calls_per_s),
            s.requests.to_string(),
            s.in_flight.to_string(),
            s.queue_depth.to_string(),
            format!("{:.1}", s.oldest_age_s),
            s.breaker.clone(),
            s.dead_lettered.to_string(),
            s.applied.to_string(),
            s.rows_sent.to_string(),
        ])?;
    }
    out.flush()?;
    Ok(())
}

/// Rows sent and not yet in effect: each row as (record key, export number, the export's
/// upload time in seconds from the start). A row is in effect once the API's record holds
/// a write from that export or a later one (applied, or superseded by a newer version,
/// which the consumer then skips).
#[derive(Debug, Default, Clone)]
pub struct Backlog {
    rows: Vec<(String, usize, f64)>,
}

impl Backlog {
    pub fn push(&mut self, record_key: String, export: usize, uploaded_at_s: f64) {
        self.rows.push((record_key, export, uploaded_at_s));
    }

    /// Drops the rows in effect, given each record's last applied export.
    pub fn settle(&mut self, last_applied: &HashMap<String, usize>) {
        self.rows
            .retain(|(k, e, _)| last_applied.get(k).is_none_or(|applied| applied < e));
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Seconds since the oldest outstanding row's export was uploaded (0 when none).
    pub fn oldest_age_s(&self, now_s: f64) -> f64 {
        self.rows
            .iter()
            .map(|(_, _, t)| *t)
            .min_by(f64::total_cmp)
            .map_or(0.0, |t| (now_s - t).max(0.0))
    }
}

/// What the API holds of one record at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldRecord {
    /// Every version the API acknowledged, in order.
    pub versions: Vec<u64>,
    /// The export the last applied write came from (its number), when known.
    pub last_export: Option<usize>,
    /// Whether its fields equal the row of the last export that sent it.
    pub fields_match: bool,
}

/// The effects at the end, compared with what was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub rows_sent: u64,
    /// Writes the API's records acknowledged (sum of their versions).
    pub applied: u64,
    /// Rows not applied because a later export's row of the same record was (counted only
    /// when that later row is in effect).
    pub superseded: u64,
    /// Records with a version acknowledged twice or out of order.
    pub duplicate_versions: u64,
    /// Records whose last applied write is not the last export that sent them.
    pub not_current: u64,
    /// Records whose fields differ from the last sent row.
    pub field_mismatches: u64,
    /// Records at the API that were never sent.
    pub unknown: u64,
    /// Records sent that the API does not hold.
    pub missing: u64,
}

/// Compare `sent` (record key → the exports that sent it, in order) with the API's records.
pub fn compare_effects(
    sent: &BTreeMap<String, Vec<usize>>,
    held: &BTreeMap<String, HeldRecord>,
) -> Effects {
    let mut e = Effects::default();
    for (key, exports) in sent {
        e.rows_sent += exports.len() as u64;
        let Some(r) = held.get(key) else {
            e.missing += 1;
            continue;
        };
        let applied = r.versions.len() as u64;
        e.applied += applied;
        if r.versions.windows(2).any(|w| w[0] >= w[1]) || applied > exports.len() as u64 {
            e.duplicate_versions += 1;
        }
        if r.last_export != exports.last().copied() {
            e.not_current += 1;
        } else {
            e.superseded += (exports.len() as u64).saturating_sub(applied);
        }
        if !r.fields_match {
            e.field_mismatches += 1;
        }
    }
    e.unknown = held.keys().filter(|k| !sent.contains_key(*k)).count() as u64;
    e
}

/// The limits and end state the invariants are checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct EndState {
    /// The rate limit the consumers were given (calls per second).
    pub rate_limit: u64,
    /// Consumers × RECORD_CONCURRENCY.
    pub ceiling: u64,
    /// The API's `peak_per_second`, when it counts one.
    pub api_peak_per_second: Option<u64>,
    /// The API's `peak_in_flight`.
    pub api_peak_in_flight: u64,
    /// The API's `applied`.
    pub api_applied: u64,
    pub dead_lettered: u64,
    pub queue_depth: u64,
    pub backlog: usize,
    pub effects: Effects,
}

/// Every invariant that failed, in words (empty: all hold).
pub fn check(samples: &[Sample], end: &EndState) -> Vec<String> {
    let mut failed = Vec::new();
    let rate = end.rate_limit as f64;
    match end.api_peak_per_second {
        Some(peak) if peak > end.rate_limit => failed.push(format!(
            "rate: the API counted {peak} calls in its busiest second, above the limit of {} /s",
            end.rate_limit
        )),
        Some(_) => {}
        None => {
            let over: Vec<&Sample> = samples.iter().filter(|s| s.calls_per_s > rate).collect();
            if let Some(worst) = over
                .iter()
                .max_by(|a, b| a.calls_per_s.total_cmp(&b.calls_per_s))
            {
                failed.push(format!(
                    "rate: {} sampled second(s) above the limit of {} /s (worst {:.1} /s at t={:.0} s, {})",
                    over.len(),
                    end.rate_limit,
                    worst.calls_per_s,
                    worst.t_s,
                    worst.phase
                ));
            }
        }
    }
    let sampled_peak = samples.iter().map(|s| s.in_flight).max().unwrap_or(0);
    let peak = end.api_peak_in_flight.max(sampled_peak);
    if peak > end.ceiling {
        failed.push(format!(
            "in flight: peak {peak} calls at once, above the ceiling of {} (consumers × RECORD_CONCURRENCY)",
            end.ceiling
        ));
    }
    let dlq = end
        .dead_lettered
        .max(samples.iter().map(|s| s.dead_lettered).max().unwrap_or(0));
    if dlq > 0 {
        failed.push(format!(
            "dead letters: {dlq} message(s) in the dead-letter queue"
        ));
    }
    let e = &end.effects;
    if e.applied + e.superseded != e.rows_sent || e.not_current > 0 || e.missing > 0 {
        failed.push(format!(
            "effects: {} row(s) sent, {} applied + {} superseded; {} record(s) not at their last sent version, {} never applied",
            e.rows_sent, e.applied, e.superseded, e.not_current, e.missing
        ));
    }
    if end.api_applied != e.applied {
        failed.push(format!(
            "effects: the API counted {} first-time applies, its records hold {}",
            end.api_applied, e.applied
        ));
    }
    if e.duplicate_versions > 0 || e.unknown > 0 {
        failed.push(format!(
            "duplicates: {} record(s) with a version applied twice or out of order, {} record(s) never sent",
            e.duplicate_versions, e.unknown
        ));
    }
    if e.field_mismatches > 0 {
        failed.push(format!(
            "content: {} record(s) whose fields differ from the last row sent",
            e.field_mismatches
        ));
    }
    if end.queue_depth > 0 || end.backlog > 0 {
        failed.push(format!(
            "drain: {} message(s) left in the work queue, {} row(s) not in effect at the end",
            end.queue_depth, end.backlog
        ));
    }
    failed
}

/// One phase's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSummary {
    pub phase: Phase,
    pub seconds: f64,
    pub calls_mean: f64,
    pub calls_max: f64,
    pub in_flight_max: u64,
    pub depth_max: u64,
    pub oldest_age_max: f64,
    pub applied: u64,
}

/// Per phase (in drill order, phases without samples left out): calls/s mean and max, the
/// most calls in flight, the deepest queue, the oldest backlog, the rows applied in it.
pub fn summarize(samples: &[Sample]) -> Vec<PhaseSummary> {
    let mut out = Vec::new();
    let mut prev_applied = 0;
    let mut prev_t = 0.0;
    for phase in Phase::ALL {
        let ss: Vec<&Sample> = samples.iter().filter(|s| s.phase == phase).collect();
        let Some(last) = ss.last() else { continue };
        let n = ss.len() as f64;
        out.push(PhaseSummary {
            phase,
            seconds: last.t_s - prev_t,
            calls_mean: ss.iter().map(|s| s.calls_per_s).sum::<f64>() / n,
            calls_max: ss.iter().map(|s| s.calls_per_s).fold(0.0, f64::max),
            in_flight_max: ss.iter().map(|s| s.in_flight).max().unwrap_or(0),
            depth_max: ss.iter().map(|s| s.queue_depth).max().unwrap_or(0),
            oldest_age_max: ss.iter().map(|s| s.oldest_age_s).fold(0.0, f64::max),
            applied: last.applied.saturating_sub(prev_applied),
        });
        prev_applied = last.applied;
        prev_t = last.t_s;
    }
    out
}

/// The summary as a markdown table.
pub fn summary_table(rows: &[PhaseSummary]) -> String {
    let mut s = String::from(
        "| phase | s | calls/s mean | calls/s max | in flight max | queue depth max | oldest age max (s) | applied |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.1} | {} | {} | {:.1} | {} |\n",
            r.phase,
            r.seconds,
            r.calls_mean,
            r.calls_max,
            r.in_flight_max,
            r.depth_max,
            r.oldest_age_max,
            r.applied
        ));
    }
    s
}
