//! [`LruStateStore`]: governor's per-key state in a bounded map that evicts the least recently
//! used keys.
//!
//! Why keygate's own store and not one that comes with a crate:
//!
//! - governor's own keyed stores (`DashMapStateStore`, `HashMapStateStore`) grow without bound
//!   unless someone calls `retain_recent`, and under a flood from more clients than fit, that
//!   drops nobody (every bucket is in use), so the map grows with the flood.
//! - moka's sync cache bounds the map, but it applies eviction in batches from its read and write
//!   buffers: the map can run past its capacity for a while, which entry goes is approximate
//!   (it may drop recorded reads under contention), and so "only the oldest are evicted" could
//!   be neither promised nor tested. Its per-key atomic update (`entry().and_compute_with`) also
//!   takes a lock per key.
//!
//! Here one `std::sync::Mutex` guards a `hashlink::LruCache` (a hash map threaded on a linked
//! list: lookup, move-to-back and evict-front are each O(1)). The lock is held for one map
//! lookup, governor's few-nanosecond GCRA arithmetic and one insert; nothing else runs under
//! it. The limiters that use it (the passkey API per address and per user, failed operator
//! authentications per peer) see requests at human rates, so one lock is far from contended,
//! and exactness is worth more than sharding. The gateway's hot path never takes it.
//!
//! A key is "used" when it is checked, whether the check passed or not: a client that is being
//! refused is active and keeps its (empty) bucket. To reset someone's bucket an attacker must
//! therefore push `capacity` other keys through the map in the meantime, and the map's size is
//! chosen so that exceeds what one source can (client addresses count per /64).
//!
//! The hasher is std's `RandomState` (SipHash with a per-process key): the keys are addresses
//! and user ids chosen by whoever is calling, so the map must not be open to collision floods.

use std::collections::hash_map::RandomState;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use hashlink::LruCache;

/// A bounded map from key to governor's state (the key's theoretical arrival time, in
/// nanoseconds since the limiter started). When it holds `capacity` keys, adding one evicts
/// the least recently checked.
pub struct LruStateStore<K> {
    map: Mutex<LruCache<K, u64, RandomState>>,
}

impl<K: Hash + Eq> LruStateStore<K> {
    /// An empty store holding at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(LruCache::with_hasher(capacity.max(1), RandomState::new())),
        }
    }

    /// Whether `key` has a bucket, without marking it used.
    pub fn contains(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<K, u64, RandomState>> {
        // Nothing that can panic runs under the lock (a map operation and governor's
        // arithmetic), and the map is consistent between operations, so a poisoned lock
        // holds a usable map.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone> StateStore for LruStateStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.lock();
        // `get` marks the key as the most recently used, refused or not.
        let previous = map.get(key).map(|&tat| Nanos::from(tat));
        let (outcome, tat) = f(previous)?;
        // A new key past capacity evicts the least recently used one.
        map.insert(key.clone(), u64::from(tat));
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for LruStateStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        self.lock().retain(|_, tat| *tat > drop_below);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
