//! Fault injection: `Faults`, the `FaultsPatch` of `POST /control`, and the faults in effect.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::handlers::now_ms;

/// Fault injection knobs. Shares are probabilities in `0.0..=1.0` decided by a deterministic
/// RNG (xxh3 of a draw counter, seeded by `seed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered 503 before applying.
    pub fail_5xx: f64,
    /// Share of requests answered 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_429: f64,
    /// The `Retry-After` value (seconds) of a 429.
    pub retry_after_secs: u64,
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
    /// Seed of the RNG deciding the shares.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_5xx: 0.0,
            rate_limit_429: 0.0,
            retry_after_secs: 1,
            timeout_share: 0.0,
            timeout_ms: 30_000,
            latency_ms: 0,
            outage_until_ms: None,
            apply_then_drop: 0.0,
            reject_keys: Vec::new(),
            reject_record_keys: Vec::new(),
            fail_records: BTreeMap::new(),
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
        Ok(())
    }
}

/// A partial update of [`Faults`], the body of `POST /control`: absent fields are unchanged.
/// `outage_secs` starts an outage of that many seconds now (`0` ends it); `outage_until_ms`
/// sets the window's end as Unix epoch milliseconds (`0` ends it). A list or map given
/// (`reject_keys`, `reject_record_keys`, `fail_records`) replaces the whole one. Setting
/// `seed` restarts the RNG's sequence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsPatch {
    pub fail_5xx: Option<f64>,
    pub rate_limit_429: Option<f64>,
    pub retry_after_secs: Option<u64>,
    pub timeout_share: Option<f64>,
    pub timeout_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    pub outage_until_ms: Option<u64>,
    pub outage_secs: Option<f64>,
    pub apply_then_drop: Option<f64>,
    pub reject_keys: Option<Vec<String>>,
    pub reject_record_keys: Option<Vec<String>>,
    pub fail_records: Option<BTreeMap<String, u64>>,
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
            timeout_share,
            timeout_ms,
            latency_ms,
            apply_then_drop,
            reject_keys,
            reject_record_keys,
            fail_records,
            seed
        );
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

/// Faults plus their reject lists as sets.
pub(super) struct FaultState {
    pub(super) faults: Faults,
    pub(super) reject_keys: HashSet<String>,
    pub(super) reject_record_keys: HashSet<String>,
}

impl FaultState {
    pub(super) fn new(faults: Faults) -> Self {
        FaultState {
            reject_keys: faults.reject_keys.iter().cloned().collect(),
            reject_record_keys: faults.reject_record_keys.iter().cloned().collect(),
            faults,
        }
    }
}
