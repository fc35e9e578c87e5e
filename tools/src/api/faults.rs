//! Fault injection: `Faults`, the `FaultsPatch` of `POST /control`, and the faults in effect.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::handlers::now_ms;

/// Fault injection knobs. Shares are probabilities in `0.0..=1.0` decided by a deterministic
/// RNG (xxh3 of a draw counter, seeded by `seed`).
///
/// `rate_limit_next` is a countdown: the value a server reports (`GET /control`,
/// [`ApiServer::faults`](super::ApiServer::faults)) is what is left of it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered 503 before applying.
    pub fail_5xx: f64,
    /// Share of requests answered 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_429: f64,
    /// The `Retry-After` value (seconds) of every 429 (`rate_limit_429`, `limit_per_second`,
    /// `rate_limit_next`).
    pub retry_after_secs: u64,
    /// A server-side rate limit, like the real API's: a `POST /cases` arriving while the
    /// sliding window `[t-999 ms, t]` (`t` its arrival) already holds this many *admitted*
    /// calls is answered 429. Admitted are the arrivals that passed this check (whatever
    /// they were answered later); arrivals answered 503 by an outage, and those refused by
    /// the limit, are not. Checked right after the outage, before auth. `None`: no limit;
    /// `Some(0)` is invalid.
    pub limit_per_second: Option<u64>,
    /// The next this many `POST /cases` (that pass the outage and `limit_per_second`
    /// checks) are answered 429, before auth; each one decrements it.
    pub rate_limit_next: u64,
    /// Share of requests that sleep `timeout_ms` and then answer 503.
    pub timeout_share: f64,
    /// How long a "timeout" request sleeps before its 503.
    pub timeout_ms: u64,
    /// Latency added to every authorized, well-formed `POST /cases` (after parsing, while the
    /// call counts as in flight for its record).
    pub latency_ms: u64,
    /// Every `POST /cases` answers 503 until this time (Unix epoch, milliseconds).
    pub outage_until_ms: Option<u64>,
    /// Share of first-time applies whose connection is dropped right after recording the effect.
    pub apply_then_drop: f64,
    /// Idempotency-Keys answered 422, permanently.
    pub reject_keys: Vec<String>,
    /// `record_key` values answered 422, permanently.
    pub reject_record_keys: Vec<String>,
    /// `record_key` → version: a call for that record with a version *below* the value is
    /// answered 503 (its old versions keep failing); its newer versions pass.
    pub fail_records: BTreeMap<String, u64>,
    /// `record_key` values whose calls hang (a poison message): once parsed, such a call gets
    /// no answer for `hang_ms` (it counts as in flight, and in flight for its record, all
    /// that time), then is answered 503.
    pub hang_records: Vec<String>,
    /// How long a call for one of `hang_records` is held before its 503.
    pub hang_ms: u64,
    /// The Bearer tokens `POST /cases` accepts. Empty: the server's (admin) token. Non-empty:
    /// only these (the admin token no longer opens `POST /cases`), so that a test can rotate
    /// the secret a consumer holds. `/control`, `/records`, `/reset` and `/arrivals` always
    /// take the admin token.
    pub case_tokens: Vec<String>,
    /// Seed of the RNG deciding the shares.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_5xx: 0.0,
            rate_limit_429: 0.0,
            retry_after_secs: 1,
            limit_per_second: None,
            rate_limit_next: 0,
            timeout_share: 0.0,
            timeout_ms: 30_000,
            latency_ms: 0,
            outage_until_ms: None,
            apply_then_drop: 0.0,
            reject_keys: Vec::new(),
            reject_record_keys: Vec::new(),
            fail_records: BTreeMap::new(),
            hang_records: Vec::new(),
            hang_ms: 600_000,
            case_tokens: Vec::new(),
            seed: 0,
        }
    }
}

impl Faults {
    /// Starts an outage of `d` from now (replaces any outage window).
    pub fn outage_for(&mut self, d: Duration) {
        self.outage_until_ms = if d.is_zero() {
            None
        } else {
            Some(now_ms().saturating_add(d.as_millis() as u64))
        };
    }

    /// Whether an outage window is open now.
    pub fn outage_active(&self) -> bool {
        self.outage_until_ms.is_some_and(|until| now_ms() < until)
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("fail_5xx", self.fail_5xx),
            ("rate_limit_429", self.rate_limit_429),
            ("timeout_share", self.timeout_share),
            ("apply_then_drop", self.apply_then_drop),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be a share between 0.0 and 1.0"));
            }
        }
        if self.limit_per_second == Some(0) {
            return Err("limit_per_second must be positive (a patch's 0 lifts the limit)".into());
        }
        if self.case_tokens.iter().any(String::is_empty) {
            return Err("case_tokens must not hold an empty token".into());
        }
        Ok(())
    }
}

/// A partial update of [`Faults`], the body of `POST /control`: absent fields are unchanged.
/// `outage_secs` starts an outage of that many seconds now (`0` ends it); `outage_until_ms`
/// sets the window's end as Unix epoch milliseconds (`0` ends it). `limit_per_second` sets
/// the rate limit (`0` lifts it); `rate_limit_next` restarts the countdown of 429s (left as
/// it is when absent). A list or map given (`reject_keys`, `reject_record_keys`,
/// `fail_records`, `hang_records`, `case_tokens`) replaces the whole one. Setting `seed`
/// restarts the RNG's sequence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsPatch {
    pub fail_5xx: Option<f64>,
    pub rate_limit_429: Option<f64>,
    pub retry_after_secs: Option<u64>,
    pub limit_per_second: Option<u64>,
    pub rate_limit_next: Option<u64>,
    pub timeout_share: Option<f64>,
    pub timeout_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    pub outage_until_ms: Option<u64>,
    pub outage_secs: Option<f64>,
    pub apply_then_drop: Option<f64>,
    pub reject_keys: Option<Vec<String>>,
    pub reject_record_keys: Option<Vec<String>>,
    pub fail_records: Option<BTreeMap<String, u64>>,
    pub hang_records: Option<Vec<String>>,
    pub hang_ms: Option<u64>,
    pub case_tokens: Option<Vec<String>>,
    pub seed: Option<u64>,
}

impl FaultsPatch {
    /// Applies the patch to `f`; an invalid result leaves `f` unchanged.
    pub fn apply_to(&self, f: &mut Faults) -> Result<(), String> {
        let mut n = f.clone();
        macro_rules! set {
            ($($field:ident),*) => {$( if let Some(v) = &self.$field { n.$field = v.clone(); } )*};
        }
        set!(
            fail_5xx,
            rate_limit_429,
            retry_after_secs,
            rate_limit_next,
            timeout_share,
            timeout_ms,
            latency_ms,
            apply_then_drop,
            reject_keys,
            reject_record_keys,
            fail_records,
            hang_records,
            hang_ms,
            case_tokens,
            seed
        );
        if let Some(limit) = self.limit_per_second {
            n.limit_per_second = (limit > 0).then_some(limit);
        }
        if let Some(until) = self.outage_until_ms {
            n.outage_until_ms = (until > 0).then_some(until);
        }
        if let Some(secs) = self.outage_secs {
            if !secs.is_finite() || secs < 0.0 {
                return Err("outage_secs must be a non-negative number".into());
            }
            n.outage_for(Duration::from_secs_f64(secs.min(1e9)));
        }
        n.validate()?;
        *f = n;
        Ok(())
    }
}

/// Faults plus their reject and hang lists as sets. Its `faults.rate_limit_next` is the
/// value last set: the countdown itself lives in the server's `Shared`.
pub(super) struct FaultState {
    pub(super) faults: Faults,
    pub(super) reject_keys: HashSet<String>,
    pub(super) reject_record_keys: HashSet<String>,
    pub(super) hang_records: HashSet<String>,
}

impl FaultState {
    pub(super) fn new(faults: Faults) -> Self {
        FaultState {
            reject_keys: faults.reject_keys.iter().cloned().collect(),
            reject_record_keys: faults.reject_record_keys.iter().cloned().collect(),
            hang_records: faults.hang_records.iter().cloned().collect(),
            faults,
        }
    }
}
