//! The store interface: the control plane's durable state (keys, the event log, the audit log)
//! behind one object-safe async trait, in domain types only, so that a PostgreSQL store can sit
//! beside the SQLite one.
//!
//! Every write method is one transaction that changes the keys, appends the change's events
//! with contiguous revisions (each event takes the previous head + 1) and writes one audit row.
//! After the commit, and before the next write can start, the store hands the new events to its
//! [`CommitObserver`], so observers see every event exactly once and in revision order.

pub mod passkeys;
pub mod sqlite;

use async_trait::async_trait;
use keygate_proto::{Event, KeyHash, KeyId, Meta, ReplicaKey, Revision};

pub use passkeys::{PasskeyStore, SessionState};

/// A key as the control plane keeps it: the replicated part plus what only operators see.
/// Never the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub hash: KeyHash,
    pub owner: String,
    pub name: String,
    /// Prefix, separator and the first 4 body characters, for display.
    pub start: String,
    pub enabled: bool,
    pub created_unix_ms: i64,
    pub expires_unix_ms: Option<i64>,
    pub meta: Meta,
    /// Revision of the key's last change.
    pub revision: Revision,
}

impl KeyRecord {
    /// What gateways replicate of this key.
    pub fn replica(&self) -> ReplicaKey {
        ReplicaKey {
            hash: self.hash,
            id: self.id,
            owner: self.owner.clone(),
            enabled: self.enabled,
            expires_unix_ms: self.expires_unix_ms,
            meta: self.meta.clone(),
        }
    }

    /// The key prefix, recovered from `start` (`{prefix}_{4 chars}`).
    pub fn prefix(&self) -> &str {
        self.start
            .rsplit_once('_')
            .map_or(self.start.as_str(), |(prefix, _)| prefix)
    }
}

/// A key to create: already validated, hashed and given an id. Its revision is assigned by the
/// store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub id: KeyId,
    pub hash: KeyHash,
    pub owner: String,
    pub name: String,
    pub start: String,
    pub enabled: bool,
    pub created_unix_ms: i64,
    pub expires_unix_ms: Option<i64>,
    pub meta: Meta,
}

/// A reroll: the replacement key's secret parts, and when the old key stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reroll {
    pub old_id: KeyId,
    pub new_id: KeyId,
    pub new_hash: KeyHash,
    pub new_start: String,
    pub now_unix_ms: i64,
    /// The old key's expiry becomes the earlier of this and the expiry it already has.
    pub old_expires_unix_ms: i64,
    /// For the audit row.
    pub grace_ms: u64,
}

/// Result of a reroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerolled {
    pub new_key: KeyRecord,
    pub old_key: KeyRecord,
    /// Head revision after both events.
    pub revision: Revision,
}

/// Result of [`Store::set_key_enabled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnabledChange {
    pub key: KeyRecord,
    /// False when the key already was in the requested state (no event was appended).
    pub changed: bool,
}

/// Result of [`Store::revoke_owner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRevoked {
    /// Head revision after the deletes (the unchanged head when the owner had no keys).
    pub revision: Revision,
    pub deleted: Vec<KeyId>,
}

/// Which keys [`Store::list_keys`] returns: ordered by id, strictly after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuery {
    pub owner: Option<String>,
    pub after: Option<KeyId>,
    pub limit: usize,
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: u64,
    pub at_unix_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Head revision after the operation; 0 when it changed nothing replicated.
    pub revision: Revision,
    pub detail_json: String,
}

/// The replicated state at exactly one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: Revision,
    pub keys: Vec<ReplicaKey>,
    /// Signing keys and the unpruned revocations, at the same revision.
    pub sessions: SessionState,
}

/// What the event log still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
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

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} not found")]
    KeyNotFound(KeyId),
    /// A unique constraint was hit (an id or hash collision: practically impossible).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data that does not decode; points at a bug or a hand-edited database.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("could not open the database at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("database task failed: {0}")]
    Task(String),
}

/// The control plane's durable state. Object-safe: the server holds an `Arc<dyn Store>`.
/// The passkey half is [`PasskeyStore`].
#[async_trait]
pub trait Store: PasskeyStore + Send + Sync + 'static {
    /// First retained and last committed revision of the event log.
    async fn log_bounds(&self) -> Result<LogBounds, StoreError>;

    /// Drops the events committed before `before_unix_ms` and returns the new bounds. The head
    /// never moves; a gateway that needs a dropped event gets a snapshot instead.
    async fn compact(&self, before_unix_ms: i64) -> Result<LogBounds, StoreError>;

    /// Creates a key; appends one `KeyUpserted` event.
    async fn create_key(&self, key: NewKey, actor: &str) -> Result<KeyRecord, StoreError>;

    /// One key by id.
    async fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// One key by hash, with the head revision read in the same transaction.
    async fn key_by_hash(&self, hash: KeyHash)
    -> Result<(Option<KeyRecord>, Revision), StoreError>;

    /// A page of keys ordered by id.
    async fn list_keys(&self, query: KeyQuery) -> Result<Vec<KeyRecord>, StoreError>;

    /// Enables or disables a key; appends one event unless it already was in that state.
    async fn set_key_enabled(
        &self,
        id: KeyId,
        enabled: bool,
        actor: &str,
    ) -> Result<EnabledChange, StoreError>;

    /// Deletes a key for good; appends one `KeyDeleted` event. Returns the new head.
    async fn delete_key(&self, id: KeyId, actor: &str) -> Result<Revision, StoreError>;

    /// Creates the replacement key (same owner, name, meta, enabled state and expiry) and
    /// shortens the old key's expiry: two events, new key first.
    async fn reroll_key(&self, reroll: Reroll, actor: &str) -> Result<Rerolled, StoreError>;

    /// Deletes every key of `owner` in one transaction: one event per key.
    async fn revoke_owner(&self, owner: &str, actor: &str) -> Result<OwnerRevoked, StoreError>;

    /// Up to `limit` events with revisions after `after`, in order. Empty when `after` is the
    /// head; starts later than `after + 1` only if those events were compacted away.
    async fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Every key, consistent at the returned revision.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// The newest `limit` audit entries, newest first.
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
}
