//! The limit on failed authentications per peer address, which makes guessing tokens (or
//! hammering the store with unknown ones) slow.
//!
//! Semantics: each address (its [`client_bucket`](keygate_ratelimit::client_bucket): IPv4 as
//! is, IPv6 per /64) may fail [`FAILURES_PER_MINUTE`] times a minute, all at once if it likes
//! (the burst), then one more every 3 s. A failure beyond that blocks the address until its
//! next failure would be allowed: meanwhile *every* call from it is refused with
//! RESOURCE_EXHAUSTED and the delay, before its token is looked at, so a guess made while
//! blocked tells nothing, whether or not the token was right. Successful calls cost nothing.
//! An address that keeps failing gets one try every 3 s; one that stops is let in again at
//! once when its block ends, and has its whole burst back after a quiet minute.
//!
//! The price: a host that fails over and over (a gateway with a wrong token, say) also blocks
//! the good calls of every other client behind the same address (a NAT) until it stops. Both
//! maps are bounded ([`TRACKED_ADDRESSES`]): the failure buckets evict the least recently
//! used, the blocks drop the ones that are over, then the one ending soonest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use keygate_ratelimit::{Clock, DefaultClock, KeyedLimiter, Rate};
use tokio::time::Instant;

/// Failed authentications an address may make in a minute (and at once).
pub const FAILURES_PER_MINUTE: u32 = 20;
/// Addresses whose failures and blocks are remembered, each.
const TRACKED_ADDRESSES: usize = 10_000;

/// Failed authentications, counted per address, and the addresses blocked for too many.
pub struct FailureLimit<C: Clock = DefaultClock> {
    failures: KeyedLimiter<IpAddr, C>,
    /// Until when each blocked address is refused.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailureLimit {
    /// `rate` failures per address; an unlimited rate never blocks anyone.
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> FailureLimit<C> {
    /// Failures counted on `clock` (tests pass governor's `FakeRelativeClock` and pause
    /// tokio's time, which blocks are measured in).
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        Self {
            failures: KeyedLimiter::with_clock(rate, TRACKED_ADDRESSES, clock),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a call from `bucket` may be authenticated at all; `Err` with how long it stays
    /// blocked.
    pub fn admits(&self, bucket: IpAddr) -> Result<(), Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(until) = blocked.get(&bucket).copied() else {
            return Ok(());
        };
        let now = Instant::now();
        if until > now {
            return Err(until - now);
        }
        blocked.remove(&bucket);
        Ok(())
    }

    /// Counts a failed authentication from `bucket`. `Err` with the delay when it is over the
    /// limit: the address is then blocked for that long.
    pub fn failed(&self, bucket: IpAddr) -> Result<(), Duration> {
        let wait = match self.failures.check(&bucket) {
            Ok(()) => return Ok(()),
            Err(wait) => wait,
        };
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        if blocked.len() >= TRACKED_ADDRESSES && !blocked.contains_key(&bucket) {
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= TRACKED_ADDRESSES
                && let Some(soonest) = blocked
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(address, _)| *address)
            {
                blocked.remove(&soonest);
            }
        }
        blocked.insert(bucket, now + wait);
        Err(wait)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use keygate_ratelimit::FakeRelativeClock;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Advances both clocks: the failure buckets' and tokio's (the blocks').
    async fn advance(clock: &FakeRelativeClock, by: Duration) {
        clock.advance(by);
        tokio::time::advance(by).await;
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_limit_an_address_is_refused_until_its_next_failure_would_be_allowed() {
        let clock = FakeRelativeClock::default();
        let limit = FailureLimit::with_clock(Rate::per_minute(3), clock.clone());
        let attacker = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(limit.admits(attacker), Ok(()));
            assert_eq!(limit.failed(attacker), Ok(()));
        }
        // The fourth failure is over the limit: one more comes back every 20 s.
        assert_eq!(limit.failed(attacker), Err(Duration::from_secs(20)));
        assert_eq!(limit.admits(attacker), Err(Duration::from_secs(20)));
        // Another address is not affected.
        assert_eq!(limit.admits(ip("192.0.2.2")), Ok(()));
        assert_eq!(limit.failed(ip("192.0.2.2")), Ok(()));

        advance(&clock, Duration::from_secs(19)).await;
        assert_eq!(limit.admits(attacker), Err(Duration::from_secs(1)));
        advance(&clock, Duration::from_secs(1)).await;
        assert_eq!(limit.admits(attacker), Ok(()));
        // One try, then blocked again: a steady rate of three a minute.
        assert_eq!(limit.failed(attacker), Ok(()));
        assert_eq!(limit.failed(attacker), Err(Duration::from_secs(20)));

        // A quiet minute gives the whole burst back.
        advance(&clock, Duration::from_secs(80)).await;
        assert_eq!(limit.admits(attacker), Ok(()));
        for _ in 0..3 {
            assert_eq!(limit.failed(attacker), Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_of_one_ipv6_64_share_a_limit_through_their_bucket() {
        let limit = FailureLimit::new(Rate::per_minute(1));
        let bucket = |text| keygate_ratelimit::client_bucket(ip(text));
        assert_eq!(limit.failed(bucket("2001:db8::1")), Ok(()));
        assert!(limit.failed(bucket("2001:db8::2")).is_err());
        assert!(limit.admits(bucket("2001:db8::ffff")).is_err());
        assert_eq!(limit.admits(bucket("2001:db8:0:1::1")), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_blocks_are_bounded_and_the_ones_over_make_room() {
        let clock = FakeRelativeClock::default();
        let limit = FailureLimit::with_clock(Rate::per_minute(1), clock.clone());
        let address = |n: usize| IpAddr::from((u32::try_from(n).unwrap() + 1).to_be_bytes());
        for n in 0..TRACKED_ADDRESSES {
            limit.failed(address(n)).unwrap();
            assert!(limit.failed(address(n)).is_err());
        }
        assert_eq!(limit.blocked.lock().unwrap().len(), TRACKED_ADDRESSES);
        // One more blocked address: one block (all end together here) makes room for it.
        let newcomer = address(TRACKED_ADDRESSES);
        limit.failed(newcomer).unwrap();
        assert!(limit.failed(newcomer).is_err());
        assert_eq!(limit.blocked.lock().unwrap().len(), TRACKED_ADDRESSES);
        assert!(limit.admits(newcomer).is_err());
        let let_in = (0..TRACKED_ADDRESSES)
            .filter(|n| limit.admits(address(*n)).is_ok())
            .count();
        assert_eq!(let_in, 1);

        // Once the blocks are over, the next newcomer finds them gone rather than evicting.
        advance(&clock, Duration::from_secs(61)).await;
        let later = address(TRACKED_ADDRESSES + 1);
        limit.failed(later).unwrap();
        assert!(limit.failed(later).is_err());
        assert_eq!(limit.blocked.lock().unwrap().len(), 1);
    }
}
