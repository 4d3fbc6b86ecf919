//! What the gateway reports about itself: a cheap, clonable view for the CLI, tests and the
//! admin endpoints.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keygate_proto::LogId;

use crate::deleted::DeletedKeys;
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
    /// Control planes refused since start for serving an older copy of the replica's log.
    pub older_history_refusals: AtomicU64,
    /// The log the replica's revisions belong to (DESIGN.md, "Log identity"); unknown before
    /// the first snapshot, or when the control plane does not say. Written by the sync task
    /// only, read by it and by status reports.
    log_id: Mutex<LogId>,
    /// The URL of the control plane whose stream is open; `None` while disconnected.
    control_plane: Mutex<Option<String>>,
    /// Keys the applied events deleted (recent ones): refused without a lookup.
    pub deleted: DeletedKeys,
}

impl SyncState {
    /// The log the replica's revisions belong to.
    pub fn log_id(&self) -> LogId {
        self.log_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that the replica now holds revisions of `log_id`.
    pub fn set_log_id(&self, log_id: LogId) {
        *self.log_id.lock().unwrap_or_else(PoisonError::into_inner) = log_id;
    }

    /// The URL of the control plane the stream is open to, if any.
    pub fn control_plane(&self) -> Option<String> {
        self.control_plane
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records which control plane the stream is open to (`None`: none).
    pub fn set_control_plane(&self, url: Option<&str>) {
        *self
            .control_plane
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = url.map(str::to_owned);
    }
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

    /// The id of the log whose revisions the replica holds; empty while unknown (nothing
    /// applied yet, or a control plane that does not report log ids).
    pub fn log_id(&self) -> String {
        self.sync.log_id().0
    }

    /// The URL of the control plane this gateway's sync stream is open to, if any (with
    /// several `--control-plane` URLs, which one it failed over to).
    pub fn control_plane(&self) -> Option<String> {
        self.sync.control_plane()
    }

    /// How many times this gateway refused a control plane that serves an older copy of its
    /// log (a restored backup) since start.
    pub fn older_history_refusals(&self) -> u64 {
        self.sync.older_history_refusals.load(Ordering::Acquire)
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

    /// The configured propagation bound: stale past it.
    pub fn propagation_bound(&self) -> Duration {
        self.freshness.bound()
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
