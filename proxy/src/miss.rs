//! Looking up a well-formed key the replica does not hold (DESIGN.md, step 3): it may have been
//! created a moment ago and not have arrived yet, and a new key must work at once everywhere.
//!
//! Concurrent misses for one hash share one `Sync.LookupKey` call, and its answer is remembered
//! for `negative_cache_ttl`, so a flood of unknown keys costs one call per key per period. Calls
//! are bounded by a concurrency limit and a rate; beyond either, and on any failure or timeout,
//! the answer is NOT_FOUND (fail closed), never a wait.
//!
//! A found key goes into the replica only through [`Replica::insert_looked_up`], which refuses
//! anything not newer than the applied revision, so a late answer cannot resurrect a key whose
//! delete was applied meanwhile.
//!
//! A remembered answer is read from [`AnswerCache`], a small sharded map stamped with the
//! answer's arrival time: a hit is one uncontended mutex, one probe and a clock read, where
//! moka's bookkeeping cost ~450 ns (BENCHMARKS.md, 2026-11-22). Moka's `try_get_with` is kept
//! only to coalesce concurrent lookups of one hash; its entry is dropped as soon as the answer
//! is in the map, so the map alone decides how long an answer is remembered.
//!
//! Answers are of one log (one store's history). An answer naming another log than the one the
//! replica holds is discarded (fail closed), and answers are remembered per log epoch: after
//! the gateway switches to another store, nothing it looked up in the old one is reused or
//! inserted.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use keygate_proto::{KeyHash, ReplicaKey, Revision, pb};
use keygate_ratelimit::{Limiter, Rate};
use moka::future::Cache;
use tokio::sync::Semaphore;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::metrics::{LookupResult, Metrics};
use crate::replica::{HashPrefix, IdentityHasher, Replica};
use crate::status::SyncState;

/// The channel of the current sync connection; empty while disconnected (lookups then fail
/// closed at once instead of waiting on a dead control plane).
pub(crate) type ControlPlaneSlot = ArcSwapOption<Channel>;

/// Hashes whose answers are remembered at most.
const MAX_REMEMBERED: u64 = 100_000;

/// Limits and timing of miss lookups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MissSettings {
    pub negative_ttl: Duration,
    pub timeout: Duration,
    pub per_second: u32,
    pub concurrent: usize,
}

#[derive(Clone)]
enum Answer {
    Found(Arc<ReplicaKey>, Revision),
    Absent,
}

#[derive(Debug)]
enum LookupFailed {
    Limited,
    Failed,
}

/// Coalesced, bounded control-plane lookups of unknown keys.
pub struct MissLookup {
    replica: Arc<Replica>,
    /// Which log the replica holds, to check answers against.
    sync: Arc<SyncState>,
    control_plane: Arc<ControlPlaneSlot>,
    authorization: MetadataValue<Ascii>,
    /// Remembered answers, by (the replica's log epoch when asked, hash).
    answers: AnswerCache<Answer>,
    /// Lookups in flight, by the same key: concurrent misses for one hash share one call.
    in_flight_answers: Cache<(u64, KeyHash), Answer>,
    in_flight: Arc<Semaphore>,
    /// Lookups started per second (burst of as many); `None` when the rate is 0, which turns
    /// lookups off (every miss is NOT_FOUND without asking).
    rate: Option<Limiter>,
    timeout: Duration,
    metrics: Metrics,
}

impl MissLookup {
    pub(crate) fn new(
        replica: Arc<Replica>,
        sync: Arc<SyncState>,
        control_plane: Arc<ControlPlaneSlot>,
        authorization: MetadataValue<Ascii>,
        settings: MissSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            replica,
            sync,
            control_plane,
            authorization,
            answers: AnswerCache::new(MAX_REMEMBERED, settings.negative_ttl),
            in_flight_answers: Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(settings.negative_ttl)
                .build(),
            in_flight: Arc::new(Semaphore::new(settings.concurrent)),
            rate: (settings.per_second > 0)
                .then(|| Limiter::new(Rate::per_second(settings.per_second))),
            timeout: settings.timeout,
            metrics,
        }
    }

    /// Asks the control plane about `hash` (or reuses a recent or in-flight answer) and, if the
    /// key exists and is newer than the replica, inserts it. The caller re-checks the replica.
    pub async fn resolve(&self, hash: KeyHash) {
        // A key this gateway saw deleted is gone for good: asking would only delay the same
        // NOT_FOUND by a round trip (a WAN's worth; see `crate::deleted`).
        if self.sync.deleted.contains(&hash) {
            return;
        }
        let epoch = self.replica.log_epoch();
        let answer = match self.answers.get(epoch, &hash) {
            Some(answer) => answer,
            None => {
                let Ok(answer) = self
                    .in_flight_answers
                    .try_get_with((epoch, hash), self.ask(hash))
                    .await
                else {
                    return;
                };
                self.answers.insert(epoch, &hash, answer.clone());
                self.in_flight_answers.invalidate(&(epoch, hash)).await;
                answer
            }
        };
        if let Answer::Found(key, revision) = answer {
            self.replica.insert_looked_up(&key, revision, epoch);
        }
    }

    async fn ask(&self, hash: KeyHash) -> Result<Answer, LookupFailed> {
        let result = self.ask_control_plane(hash).await;
        self.metrics.looked_up(match &result {
            Ok(Answer::Found(..)) => LookupResult::Found,
            Ok(Answer::Absent) => LookupResult::Absent,
            Err(LookupFailed::Limited) => LookupResult::Limited,
            Err(LookupFailed::Failed) => LookupResult::Error,
        });
        result
    }

    async fn ask_control_plane(&self, hash: KeyHash) -> Result<Answer, LookupFailed> {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(LookupFailed::Limited);
        };
        if self.rate.as_ref().is_none_or(|rate| rate.check().is_err()) {
            return Err(LookupFailed::Limited);
        }
        let channel = self.control_plane.load_full().ok_or(LookupFailed::Failed)?;
        let mut client = pb::sync_client::SyncClient::new(Channel::clone(&channel));
        let mut request = tonic::Request::new(pb::LookupKeyRequest {
            key_hash: hash.0.to_vec(),
        });
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request.set_timeout(self.timeout);
        let response = match tokio::time::timeout(self.timeout, client.lookup_key(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "key lookup failed");
                return Err(LookupFailed::Failed);
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "key lookup timed out");
                return Err(LookupFailed::Failed);
            }
        };
        let ours = self.sync.log_id();
        if !response.log_id.is_empty() && !ours.is_unknown() && response.log_id != ours.0 {
            // A control plane of another store, whose snapshot has not replaced ours (yet).
            tracing::debug!(theirs = %response.log_id, %ours, "key lookup answered from another log; ignored");
            return Err(LookupFailed::Failed);
        }
        let Some(wire) = response.key else {
            return Ok(Answer::Absent);
        };
        match ReplicaKey::try_from(wire) {
            // An answer about another key would be a control-plane bug; never trust it.
            Ok(key) if key.hash == hash => Ok(Answer::Found(
                Arc::new(key),
                Revision(response.key_revision),
            )),
            Ok(_) => {
                tracing::warn!("key lookup answered with a different key hash");
                Err(LookupFailed::Failed)
            }
            Err(error) => {
                tracing::warn!(%error, "key lookup answered with an invalid key");
                Err(LookupFailed::Failed)
            }
        }
    }
}

/// Shards of an [`AnswerCache`] (a power of two).
const ANSWER_SHARDS: usize = 64;

type AnswerShard<V> = HashMap<(u64, HashPrefix), (Instant, V), BuildHasherDefault<IdentityHasher>>;

/// Answers about key hashes, each remembered for a time to live from its arrival, at most
/// `capacity` of them. Keyed by (log epoch, hash prefix) and hashed by the prefix itself (blake3
/// output: nobody can aim many keys at one bucket or shard).
///
/// **Invariant:** an answer is never returned once its time to live has passed, and the map
/// never holds more than its capacity: a full shard first drops its expired answers, then, if
/// still more than 7/8 full, arbitrary ones (in the map's hash order) down to 3/4 — an unknown
/// key forgotten early only costs one more lookup, which the lookup limits bound.
pub struct AnswerCache<V> {
    shards: Box<[Mutex<AnswerShard<V>>]>,
    shard_capacity: usize,
    ttl: Duration,
}

impl<V: Clone> AnswerCache<V> {
    /// A cache of at most `capacity` answers, each kept for `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Self {
            shards: std::iter::repeat_with(|| Mutex::new(AnswerShard::default()))
                .take(ANSWER_SHARDS)
                .collect(),
            shard_capacity: capacity / ANSWER_SHARDS,
            ttl,
        }
    }

    #[inline]
    fn shard(&self, prefix: &HashPrefix) -> std::sync::MutexGuard<'_, AnswerShard<V>> {
        // The second word, so the shard does not correlate with the bucket (the first word).
        let index = prefix.words()[1] as usize & (ANSWER_SHARDS - 1);
        // Every change is one map operation (or a retain): a panic cannot leave it torn.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The answer about `hash` asked in `epoch`, if one arrived less than the time to live ago.
    #[inline]
    pub fn get(&self, epoch: u64, hash: &KeyHash) -> Option<V> {
        self.get_at(epoch, hash, Instant::now())
    }

    fn get_at(&self, epoch: u64, hash: &KeyHash, now: Instant) -> Option<V> {
        let prefix = HashPrefix::from(hash);
        let shard = self.shard(&prefix);
        match shard.get(&(epoch, prefix)) {
            Some((arrived, answer)) if now.saturating_duration_since(*arrived) < self.ttl => {
                Some(answer.clone())
            }
            _ => None,
        }
    }

    /// Remembers `answer` about `hash`, asked in `epoch`, from now.
    pub fn insert(&self, epoch: u64, hash: &KeyHash, answer: V) {
        self.insert_at(epoch, hash, answer, Instant::now());
    }

    fn insert_at(&self, epoch: u64, hash: &KeyHash, answer: V, now: Instant) {
        if self.shard_capacity == 0 {
            return;
        }
        let prefix = HashPrefix::from(hash);
        let mut shard = self.shard(&prefix);
        if shard.len() >= self.shard_capacity && !shard.contains_key(&(epoch, prefix)) {
            let ttl = self.ttl;
            shard.retain(|_, (arrived, _)| now.saturating_duration_since(*arrived) < ttl);
            if shard.len() > self.shard_capacity - self.shard_capacity / 8 {
                let excess = shard.len() - self.shard_capacity * 3 / 4;
                let dropped: Vec<(u64, HashPrefix)> = shard.keys().take(excess).copied().collect();
                for key in dropped {
                    shard.remove(&key);
                }
            }
        }
        shard.insert((epoch, prefix), (now, answer));
    }

    /// Answers held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |shard| shard.len()))
            .sum()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uniform hash per number (splitmix64), as blake3's would be.
    fn hash(n: u32) -> KeyHash {
        let mix = |mut x: u64| {
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        let mut bytes = [0u8; 32];
        for (index, chunk) in bytes.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(u64::from(n) << 2 | index as u64).to_le_bytes());
        }
        KeyHash(bytes)
    }

    #[test]
    fn an_answer_lives_for_its_ttl_and_only_in_its_epoch() {
        let cache = AnswerCache::new(6400, Duration::from_secs(10));
        let start = Instant::now();
        cache.insert_at(0, &hash(1), "absent", start);
        assert_eq!(cache.get_at(0, &hash(1), start), Some("absent"));
        assert_eq!(
            cache.get_at(0, &hash(1), start + Duration::from_millis(9_999)),
            Some("absent")
        );
        assert_eq!(
            cache.get_at(0, &hash(1), start + Duration::from_secs(10)),
            None
        );
        assert_eq!(cache.get_at(1, &hash(1), start), None, "another log epoch");
        assert_eq!(cache.get_at(0, &hash(2), start), None);
        // A new answer restarts the time to live.
        cache.insert_at(0, &hash(1), "found", start + Duration::from_secs(10));
        assert_eq!(
            cache.get_at(0, &hash(1), start + Duration::from_secs(15)),
            Some("found")
        );
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let capacity = 64 * 100;
        let cache = AnswerCache::new(capacity, Duration::from_secs(3600));
        let now = Instant::now();
        for n in 0..50_000 {
            cache.insert_at(0, &hash(n), n, now);
        }
        assert!(cache.len() <= capacity as usize, "{} answers", cache.len());
        // The latest answers are there.
        assert_eq!(cache.get_at(0, &hash(49_999), now), Some(49_999));
        // Expired answers go first: a full cache of old answers makes room without guessing.
        let later = now + Duration::from_secs(3600);
        for n in 50_000..50_100 {
            cache.insert_at(0, &hash(n), n, later);
        }
        assert!(cache.len() <= capacity as usize);
        assert!((50_000..50_100).all(|n| cache.get_at(0, &hash(n), later) == Some(n)));
        assert!(AnswerCache::<u32>::new(0, Duration::from_secs(1)).is_empty());
        let none = AnswerCache::new(0, Duration::from_secs(1));
        none.insert(0, &hash(1), 1);
        assert_eq!(none.get(0, &hash(1)), None);
    }
}
