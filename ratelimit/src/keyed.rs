//! A bucket per key (client address, user, peer), in a bounded map.

use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;

use crate::Rate;
use crate::lru_store::LruStateStore;

type Keyed<K, C> = RateLimiter<K, LruStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A bucket per key, bounded: when the map holds `capacity` keys, the least recently used
/// entries are evicted (never everyone's state cleared). An evicted key that comes back starts
/// with a full bucket, exactly as a key that has been quiet long enough would.
pub struct KeyedLimiter<K, C: Clock = DefaultClock>
where
    K: Hash + Eq + Clone,
{
    rate: Rate,
    /// `None` when the rate is unlimited: nothing is stored then.
    inner: Option<Keyed<K, C>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedLimiter<K> {
    /// Buckets of `rate` for at most `capacity` keys.
    pub fn new(rate: Rate, capacity: usize) -> Self {
        Self::with_clock(rate, capacity, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static, C: Clock> KeyedLimiter<K, C> {
    /// Buckets reading the time from `clock` (tests pass governor's `FakeRelativeClock`).
    pub fn with_clock(rate: Rate, capacity: usize, clock: C) -> Self {
        let inner = rate
            .quota()
            .map(|quota| RateLimiter::new(quota, LruStateStore::new(capacity), clock));
        Self { rate, inner }
    }

    /// Takes one call from `key`'s bucket, or says how long until one would pass.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// How many keys have a bucket now.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, RateLimiter::len)
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the buckets that have refilled completely (indistinguishable from a new one),
    /// to give memory back after a burst of clients; eviction keeps the map bounded without it.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.inner {
            limiter.retain_recent();
        }
    }

    /// The rate each key gets.
    pub fn rate(&self) -> Rate {
        self.rate
    }
}

impl<K: Hash + Eq + Clone, C: Clock> fmt::Debug for KeyedLimiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::IpAddr;

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::client_bucket;

    fn limiter(
        rate: Rate,
        capacity: usize,
    ) -> (KeyedLimiter<u32, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            KeyedLimiter::with_clock(rate, capacity, clock.clone()),
            clock,
        )
    }

    #[test]
    fn each_key_has_its_own_burst_and_rate() {
        let (limiter, clock) = limiter(Rate::per_minute(3), 100);
        for _ in 0..3 {
            assert_eq!(limiter.check(&1), Ok(()));
        }
        assert_eq!(limiter.check(&1), Err(Duration::from_secs(20)));
        // Another key is untouched by the first one's spending.
        assert_eq!(limiter.check(&2), Ok(()));
        clock.advance(Duration::from_secs(20));
        assert_eq!(limiter.check(&1), Ok(()));
        assert!(limiter.check(&1).is_err());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn a_full_map_evicts_only_the_least_recently_used_key() {
        let (limiter, _clock) = limiter(Rate::per_minute(2), 3);
        // Three keys spend their whole burst, oldest first.
        for key in [1, 2, 3] {
            limiter.check(&key).unwrap();
            limiter.check(&key).unwrap();
            assert!(limiter.check(&key).is_err());
        }
        // Key 1 is checked again (and refused): now key 2 is the least recently used.
        assert!(limiter.check(&1).is_err());
        // A newcomer gets in, and the map stays at its capacity.
        assert_eq!(limiter.check(&4), Ok(()));
        assert_eq!(limiter.len(), 3);
        // Keys 1 and 3 kept their state: still refused, not reset.
        assert!(limiter.check(&1).is_err());
        assert!(limiter.check(&3).is_err());
        // Key 2 alone was evicted, so it starts over with a full bucket.
        assert_eq!(limiter.check(&2), Ok(()));
        assert_eq!(limiter.len(), 3);
    }

    #[test]
    fn a_flood_of_new_keys_never_resets_an_active_one() {
        let (limiter, _clock) = limiter(Rate::per_minute(1), 10);
        limiter.check(&0).unwrap();
        for newcomer in 1..1000 {
            // The victim keeps being refused while newcomers churn the rest of the map.
            assert!(
                limiter.check(&0).is_err(),
                "reset after {newcomer} newcomers"
            );
            assert_eq!(limiter.check(&newcomer), Ok(()));
            assert!(limiter.len() <= 10);
        }
    }

    #[test]
    fn zero_is_unlimited_and_stores_nothing() {
        let (limiter, _clock) = limiter(Rate::per_minute(0), 10);
        for key in 0..1000 {
            assert_eq!(limiter.check(&(key % 3)), Ok(()));
        }
        assert_eq!(limiter.len(), 0);
    }

    #[test]
    fn addresses_of_one_64_share_a_bucket() {
        let limiter: KeyedLimiter<IpAddr> = KeyedLimiter::new(Rate::per_minute(1), 10);
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let other_in_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let next_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(limiter.check(&client_bucket(one)), Ok(()));
        assert!(limiter.check(&client_bucket(other_in_64)).is_err());
        assert_eq!(limiter.check(&client_bucket(next_64)), Ok(()));
    }

    #[test]
    fn retain_recent_forgets_only_refilled_buckets() {
        let (limiter, clock) = limiter(Rate::per_minute(2), 10);
        limiter.check(&1).unwrap();
        clock.advance(Duration::from_secs(60));
        limiter.check(&2).unwrap();
        limiter.retain_recent();
        assert_eq!(limiter.len(), 1);
        // Key 2 kept its spent call: one left, then refused.
        assert_eq!(limiter.check(&2), Ok(()));
        assert!(limiter.check(&2).is_err());
    }
}
