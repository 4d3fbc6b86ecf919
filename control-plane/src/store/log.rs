//! The event log as the store keeps it: its identity, its bounds, the events after a revision
//! and a snapshot consistent at one revision.

use async_trait::async_trait;
use keygate_proto::{Event, Identity, LogId, ReplicaKey, Revision};

use super::{SessionState, StoreError};

/// A new log id (`log_…`, random): made once when a store is initialised, or on purpose when a
/// restored copy must not pass for the history it was taken from (`keygate store copy
/// --new-log-id`), so that every gateway takes a snapshot of it.
pub fn fresh_log_id() -> LogId {
    LogId(crate::ids::random_id("log"))
}

/// The replicated state at exactly one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: Revision,
    pub keys: Vec<ReplicaKey>,
    /// Every identity, at the same revision.
    pub identities: Vec<Identity>,
    /// Signing keys and the unpruned revocations, at the same revision.
    pub sessions: SessionState,
}

/// Which log this is and what it still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBounds {
    /// Which log this is: made once when the store is initialised, kept by copies.
    pub log_id: LogId,
    /// The first revision whose event the log still keeps. Events before it have been compacted
    /// away, so a gateway that applied less than `oldest_retained - 1` needs a snapshot.
    pub oldest_retained: Revision,
    /// The last committed revision.
    pub head: Revision,
}

/// Receives every committed event, in revision order, exactly once.
pub trait CommitObserver: Send + Sync {
    /// Called right after a commit, while no other write can commit.
    fn committed(&self, events: &[Event]);
}

/// The replicated event log.
#[async_trait]
pub trait EventLogStore: Send + Sync {
    /// The log's identity, first retained and last committed revision.
    async fn log_bounds(&self) -> Result<LogBounds, StoreError>;

    /// Drops the events committed before `before_unix_ms` and returns the new bounds. The head
    /// never moves; a gateway that needs a dropped event gets a snapshot instead.
    async fn compact(&self, before_unix_ms: i64) -> Result<LogBounds, StoreError>;

    /// Up to `limit` events with revisions after `after`, in order. Empty when `after` is the
    /// head; starts later than `after + 1` only if those events were compacted away.
    async fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Every key, consistent at the returned revision.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;
}
