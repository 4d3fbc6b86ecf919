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
//! Answers are of one log (one store's history). An answer naming another log than the one the
//! replica holds is discarded (fail closed), and answers are remembered per log epoch: after
//! the gateway switches to another store, nothing it looked up in the old one is reused or
//! inserted.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use keygate_proto::{KeyHash, ReplicaKey, Revision, pb};
use keygate_ratelimit::{Limiter, Rate};
use moka::future::Cache;
use tokio::sync::Semaphore;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::metrics::{LookupResult, Metrics};
use crate::replica::Replica;
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
    /// By (the replica's log epoch when asked, hash).
    answers: Cache<(u64, KeyHash), Answer>,
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
            answers: Cache::builder()
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
        let answer = self
            .answers
            .try_get_with((epoch, hash), self.ask(hash))
            .await;
        if let Ok(Answer::Found(key, revision)) = answer {
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
