//! How much a limiter lets through.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

/// A rate: `count` per `period`, with a burst of `count` (a quiet client may spend the whole
/// period's allowance at once, then gets one more every `period / count`).
/// `Rate::per_minute(0)` (a count of 0) means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    period: Duration,
}

impl Rate {
    /// `n` per minute, burst `n`; 0 = unlimited.
    pub fn per_minute(n: u32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    /// `n` per second, burst `n`; 0 = unlimited.
    pub fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// `count` per `period`, burst `count`; a count of 0 or a zero period = unlimited.
    pub fn new(count: u32, period: Duration) -> Self {
        Self { count, period }
    }

    /// An unlimited rate.
    pub fn unlimited() -> Self {
        Self::new(0, Duration::ZERO)
    }

    /// How many calls a period allows (and the burst); 0 when unlimited.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period the count is spread over.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Whether this rate lets everything through.
    pub fn is_unlimited(&self) -> bool {
        self.quota().is_none()
    }

    /// governor's quota for this rate; `None` when unlimited.
    pub(crate) fn quota(&self) -> Option<Quota> {
        let burst = NonZeroU32::new(self.count)?;
        // One cell comes back every `period / count`; governor refuses a zero interval, which
        // only a zero (or sub-nanosecond per cell) period gives: that is "unlimited" too.
        Some(Quota::with_period(self.period / self.count)?.allow_burst(burst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_unlimited() {
        assert!(Rate::per_minute(0).is_unlimited());
        assert!(Rate::per_second(0).is_unlimited());
        assert!(Rate::unlimited().is_unlimited());
        assert!(Rate::new(5, Duration::ZERO).is_unlimited());
        assert!(!Rate::per_minute(1).is_unlimited());
    }

    #[test]
    fn the_quota_spreads_the_count_over_the_period() {
        let quota = Rate::per_minute(30).quota();
        assert_eq!(
            quota.map(|q| (q.burst_size().get(), q.replenish_interval())),
            Some((30, Duration::from_secs(2)))
        );
    }
}
