//! keygate-ratelimit: the rate limiters keygate's servers share, so that the passkey HTTP API,
//! failed operator authentications and the gateway's miss lookups all count the same way.
//!
//! The arithmetic is [`governor`]'s GCRA (a token bucket kept as one "theoretical arrival time"
//! per key, updated with a compare-and-swap), behind an API small enough that callers never see
//! governor's types:
//!
//! - [`Rate`]: `count` per `period`, with a burst of `count`; a count of 0 means unlimited;
//! - [`Limiter`]: one bucket (lock-free: one atomic per limiter);
//! - [`KeyedLimiter`]: a bucket per key in a bounded map that evicts the least recently used
//!   keys when it is full, never everyone's state at once ([`lru_store`] says why it is
//!   keygate's own store rather than governor's dashmap or moka);
//! - [`client_bucket`]: which bucket a client address counts in (IPv6 per /64).
//!
//! A refusal carries how long until the next call could pass: the `Retry-After` of a 429.

#![forbid(unsafe_code)]

mod client;
mod keyed;
mod limiter;
pub mod lru_store;
mod rate;

pub use client::client_bucket;
pub use governor::clock::{Clock, DefaultClock, FakeRelativeClock};
pub use keyed::KeyedLimiter;
pub use limiter::Limiter;
pub use rate::Rate;
