//! Token buckets for the passkey HTTP endpoints: one bucket per client address and one per user,
//! each refilling at a steady rate up to a burst. A refusal says how long until the next
//! request would be allowed (the `Retry-After` of a 429).
//!
//! The map of buckets is bounded: when it is full, buckets that have refilled completely (whose
//! clients have been quiet) are dropped, since a fresh bucket is exactly like them.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most buckets kept per limiter.
const MAX_BUCKETS: usize = 100_000;

/// A rate: `per_minute` requests per minute, with a burst of as many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key.
pub struct RateLimiter<K> {
    buckets: Mutex<HashMap<K, Bucket>>,
    burst: f64,
    per_second: f64,
    max_buckets: usize,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// A limiter allowing `rate`; a rate of 0 per minute turns limiting off.
    pub fn new(rate: Rate) -> Self {
        Self::with_capacity(rate, MAX_BUCKETS)
    }

    fn with_capacity(rate: Rate, max_buckets: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(rate.per_minute),
            per_second: f64::from(rate.per_minute) / 60.0,
            max_buckets,
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        if self.burst <= 0.0 {
            return Ok(());
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= self.max_buckets && !buckets.contains_key(&key) {
            let (burst, per_second) = (self.burst, self.per_second);
            buckets.retain(|_, bucket| refilled(bucket, now, burst, per_second) < burst);
            if buckets.len() >= self.max_buckets {
                // Under a flood from more clients than the map holds, forget them all rather
                // than refuse every newcomer.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = refilled(bucket, now, self.burst, self.per_second);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }
}

fn refilled(bucket: &Bucket, now: Instant, burst: f64, per_second: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * per_second).min(burst)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let limiter = RateLimiter::new(Rate { per_minute: 3 });
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at("a", start), Ok(()));
        }
        let wait = limiter.check_at("a", start).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert_eq!(limiter.check_at("b", start), Ok(()));
        // 20 s later one token has come back, and only one.
        let later = start + Duration::from_secs(20);
        assert_eq!(limiter.check_at("a", later), Ok(()));
        assert!(limiter.check_at("a", later).is_err());
    }

    #[test]
    fn zero_turns_limiting_off() {
        let limiter = RateLimiter::new(Rate { per_minute: 0 });
        for _ in 0..1000 {
            assert_eq!(limiter.check("a"), Ok(()));
        }
    }

    #[test]
    fn the_map_stays_bounded() {
        let limiter = RateLimiter::with_capacity(Rate { per_minute: 2 }, 4);
        let start = Instant::now();
        for key in 0..4 {
            limiter.check_at(key, start).unwrap();
        }
        // Full of partly used buckets: the newcomer still gets in, the map stays bounded.
        limiter.check_at(99, start).unwrap();
        assert!(limiter.buckets.lock().unwrap().len() <= 4);
    }
}
