//! Keys: what operators create, list, disable, reroll and delete. Every write appends the
//! change's events (a `KeyUpserted` or a `KeyDeleted`) and one audit row in its transaction.

use async_trait::async_trait;
use keygate_proto::{KeyHash, KeyId, Meta, ReplicaKey, Revision};

use super::StoreError;

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

/// API keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
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
}
