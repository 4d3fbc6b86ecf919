//! Keys this gateway saw deleted: the most recent [`DELETED_REMEMBERED`] hashes of keys whose
//! delete event it applied. A deleted key never comes back (its hash is of a random plaintext
//! that is never issued again), so a request with one is NOT_FOUND from the replica alone,
//! without the control-plane lookup a key the replica never held gets ([`crate::miss`]).
//!
//! Over a WAN that lookup is a round trip: without this, a gateway refused a deleted key a
//! round trip after the delete arrived, three one-way delays after the call (BENCHMARKS.md,
//! "WAN"). Written by the sync task, read on misses only (never on the hot path's hits).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use dashmap::DashSet;
use keygate_proto::KeyHash;

/// Deleted keys remembered at most (~100 bytes each when full: ~10 MiB).
pub const DELETED_REMEMBERED: usize = 100_000;

/// A bounded set of deleted key hashes; the oldest is forgotten first.
#[derive(Debug)]
pub(crate) struct DeletedKeys {
    set: DashSet<KeyHash>,
    /// The same hashes in the order they were deleted.
    order: Mutex<VecDeque<KeyHash>>,
    limit: usize,
}

impl Default for DeletedKeys {
    fn default() -> Self {
        Self::with_limit(DELETED_REMEMBERED)
    }
}

impl DeletedKeys {
    fn with_limit(limit: usize) -> Self {
        Self {
            set: DashSet::new(),
            order: Mutex::new(VecDeque::new()),
            limit,
        }
    }

    /// Records that the key with `hash` was deleted.
    pub fn remember(&self, hash: KeyHash) {
        if !self.set.insert(hash) {
            return;
        }
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        order.push_back(hash);
        while order.len() > self.limit {
            if let Some(oldest) = order.pop_front() {
                self.set.remove(&oldest);
            }
        }
    }

    /// Whether the key with `hash` was deleted (and is still remembered).
    pub fn contains(&self, hash: &KeyHash) -> bool {
        self.set.contains(hash)
    }

    /// Forgets everything: the replica now holds another store's history, in which these
    /// deletes never happened.
    pub fn clear(&self) {
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        order.clear();
        self.set.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> KeyHash {
        KeyHash([n; 32])
    }

    #[test]
    fn remembers_deletes_and_forgets_the_oldest_first() {
        let deleted = DeletedKeys::with_limit(2);
        assert!(!deleted.contains(&hash(1)));
        deleted.remember(hash(1));
        deleted.remember(hash(2));
        deleted.remember(hash(2));
        assert!(deleted.contains(&hash(1)) && deleted.contains(&hash(2)));
        deleted.remember(hash(3));
        assert!(!deleted.contains(&hash(1)), "the oldest is forgotten");
        assert!(deleted.contains(&hash(2)) && deleted.contains(&hash(3)));
        deleted.clear();
        assert!(!deleted.contains(&hash(3)));
    }
}
