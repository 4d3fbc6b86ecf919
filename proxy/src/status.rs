//! What the gateway reports about itself: a cheap, clonable view for the CLI, tests and the
//! admin endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::freshness::Freshness;
use crate::replica::Replica;
use crate::sessions::SessionStateSizes;

/// State the sync task and the server publish.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    /// The sync stream is open.
    pub connected: AtomicBool,
    /// Full snapshots installed since start.
    pub snapshots_applied: AtomicU64,
    /// Shutdown has begun: not ready for new traffic.
    pub draining: AtomicBool,
}

/// A handle on a gateway's state; clones share it.
#[derive(Clone)]
pub struct GatewayStatus {
    replica: Arc<Replica>,
    freshness: Arc<Freshness>,
    sync: Arc<SyncState>,
}

impl GatewayStatus {
    pub(crate) fn new(
        replica: Arc<Replica>,
        freshness: Arc<Freshness>,
        sync: Arc<SyncState>,
    ) -> Self {
        Self {
            replica,
            freshness,
            sync,
        }
    }

    /// The last revision the replica has applied.
    pub fn applied_revision(&self) -> u64 {
        self.replica.applied_revision().0
    }

    /// How many full snapshots this gateway has installed.
    pub fn snapshots_applied(&self) -> u64 {
        self.sync.snapshots_applied.load(Ordering::Acquire)
    }

    /// Whether the sync stream is open right now.
    pub fn connected(&self) -> bool {
        self.sync.connected.load(Ordering::Acquire)
    }

    /// Keys in the replica.
    pub fn replica_len(&self) -> usize {
        self.replica.len()
    }

    /// Entries in the replicated session state (signing keys, revocation sets).
    pub fn session_state(&self) -> SessionStateSizes {
        self.replica.sessions().sizes()
    }

    /// Time since the replica was last proven current; `None` before the first proof.
    pub fn staleness(&self) -> Option<Duration> {
        self.freshness.staleness()
    }

    /// Staleness, or the time since start when never synced (stale all along).
    pub fn staleness_or_uptime(&self) -> Duration {
        self.freshness
            .staleness()
            .unwrap_or_else(|| self.freshness.uptime())
    }

    /// Whether the replica is past the propagation bound (or never synced).
    pub fn is_stale(&self) -> bool {
        self.freshness.is_stale()
    }

    /// Synced, within the propagation bound, and not shutting down. Under either stale
    /// policy a stale gateway is not ready, so load balancers move traffic away from it.
    pub fn is_ready(&self) -> bool {
        !self.sync.draining.load(Ordering::Acquire) && !self.freshness.is_stale()
    }

    /// Whether shutdown has begun.
    pub fn draining(&self) -> bool {
        self.sync.draining.load(Ordering::Acquire)
    }
}
