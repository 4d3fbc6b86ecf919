//! One bucket: a rate for everything that passes through one place (the gateway's miss
//! lookups, say).

use std::fmt;
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};

use crate::Rate;

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One bucket. Checking it is one atomic compare-and-swap: no lock.
pub struct Limiter<C: Clock = DefaultClock> {
    rate: Rate,
    /// `None` when the rate is unlimited.
    inner: Option<Direct<C>>,
}

impl Limiter {
    /// A bucket that lets `rate` through, starting full.
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> Limiter<C> {
    /// A bucket reading the time from `clock` (tests pass governor's `FakeRelativeClock`).
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        let inner = rate
            .quota()
            .map(|quota| RateLimiter::direct_with_clock(quota, clock));
        Self { rate, inner }
    }

    /// Takes one call from the bucket, or says how long until one would pass.
    pub fn check(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// The rate this limiter enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }
}

impl<C: Clock> fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter").field("rate", &self.rate).finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(Rate::per_minute(3), clock.clone());
        for _ in 0..3 {
            assert_eq!(limiter.check(), Ok(()));
        }
        // One call comes back every 20 s.
        assert_eq!(limiter.check(), Err(Duration::from_secs(20)));
        clock.advance(Duration::from_secs(5));
        assert_eq!(limiter.check(), Err(Duration::from_secs(15)));
        clock.advance(Duration::from_secs(15));
        assert_eq!(limiter.check(), Ok(()));
        assert!(limiter.check().is_err());
    }

    #[test]
    fn per_second_refills_a_share_at_a_time() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(Rate::per_second(2), clock.clone());
        assert_eq!(limiter.check(), Ok(()));
        assert_eq!(limiter.check(), Ok(()));
        assert_eq!(limiter.check(), Err(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(500));
        assert_eq!(limiter.check(), Ok(()));
        assert!(limiter.check().is_err());
    }

    #[test]
    fn a_quiet_bucket_refills_only_up_to_the_burst() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(Rate::per_second(2), clock.clone());
        clock.advance(Duration::from_secs(3600));
        assert_eq!(limiter.check(), Ok(()));
        assert_eq!(limiter.check(), Ok(()));
        assert!(limiter.check().is_err());
    }

    #[test]
    fn zero_is_unlimited() {
        let limiter = Limiter::new(Rate::per_minute(0));
        for _ in 0..10_000 {
            assert_eq!(limiter.check(), Ok(()));
        }
    }
}
