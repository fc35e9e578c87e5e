//! Exponential backoff with full jitter.

use std::time::Duration;

/// Capped exponential backoff: attempt `n` waits a uniform time up to
/// `min(cap, base × 2^(n-1))` ("full jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first attempt's ceiling.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
}

impl Backoff {
    /// Backoff from `base` up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// The ceiling for attempt `n` (1-based): `min(cap, base * 2^(n-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let mult = 1u64 << exp;
        let base = u64::try_from(self.base.as_nanos()).unwrap_or(u64::MAX);
        let nanos = base.saturating_mul(mult);
        Duration::from_nanos(nanos).min(self.cap)
    }

    /// Full jitter: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let c = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        match c.checked_add(1) {
            _ if c == 0 => Duration::ZERO,
            Some(span) => Duration::from_nanos(random_u64() % span),
            // the whole range of u64 nanoseconds: any value is in it
            None => Duration::from_nanos(random_u64()),
        }
    }
}

/// A cheap, non-cryptographic random number (jitter only).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(2));
        assert_eq!(b.ceiling(1000), Duration::from_secs(2));
        for a in 1..20 {
            assert!(b.delay(a) <= b.ceiling(a));
        }
        // a cap beyond u64 nanoseconds (~584 years) saturates instead of overflowing
        let huge = Backoff::new(Duration::from_secs(5), Duration::MAX);
        assert_eq!(huge.ceiling(64), Duration::from_nanos(u64::MAX));
        assert!(huge.delay(64) <= huge.ceiling(64));
    }
}
