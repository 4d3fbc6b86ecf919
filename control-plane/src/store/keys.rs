//! Keys: what operators create, list, disable, reroll and delete. Every write appends the
//! change's events (a `KeyUpserted` or a `KeyDeleted`) and one audit row in its transaction.
//!
//! A key's limits (`KeyRecord::limits`) travel with it; its own credit balance is the row of
//! holder `key:<id>` in the limits store (`store/limits.rs`). Creating a key with credits
//! writes that row (no `CreditsChanged`: the key's `KeyUpserted` says `credits`); creating one
//! that names a new identity creates the identity first (`IdentityUpserted`, same
//! transaction). Deleting a key deletes its balance and its outstanding leases.
//!
//! **Reroll and credits.** Gateways find a key's balance by the key's id, so two keys cannot
//! share one, and a reroll must neither double the credits nor free either key of them. The
//! successor takes the old key's limits and its balance (remaining credits, refill rule and
//! next refill), and the old key's outstanding leases are moved to the successor too, so
//! what gateways give back of them lands on the balance that now counts. The old key keeps
//! `credits` in its limits with an empty balance and no refill: for the rest of its grace
//! period it spends only what gateways already hold for it, then is refused as exhausted.
//! Credits meant to last through a grace period belong on an identity, which both keys share.

use async_trait::async_trait;
use keygate_proto::limits::RefillSpec;
use keygate_proto::{Holder, KeyHash, KeyId, KeyLimits, Meta, ReplicaKey, Revision};
use serde_json::json;

use super::{AuditNote, CreditState, StoreError};

/// How many key ids the audit row of an owner's revocation names at most, so that one bulk
/// revocation cannot bloat it.
const REVOKED_IDS_AUDITED: usize = 100;

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
    /// Rate limits, permissions, identity, whether it spends credits (replicated).
    pub limits: KeyLimits,
    /// The key's own credit balance; `None`: unlimited. Not replicated: gateways lease.
    pub credits: Option<CreditState>,
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
            limits: self.limits.clone(),
        }
    }

    /// The holder of the key's own rate limits and credits.
    pub fn holder(&self) -> Holder {
        Holder::Key(self.id)
    }

    /// The key prefix, recovered from `start` (`{prefix}_{4 chars}`).
    pub fn prefix(&self) -> &str {
        self.start
            .rsplit_once('_')
            .map_or(self.start.as_str(), |(prefix, _)| prefix)
    }

    /// Enables or disables the key; false when it already was in that state.
    pub fn set_enabled(&mut self, enabled: bool) -> bool {
        let changed = self.enabled != enabled;
        self.enabled = enabled;
        changed
    }

    /// Makes the key stop working by `expires_unix_ms` at the latest: its expiry becomes the
    /// earlier of that and the expiry it already has.
    pub fn expire_by(&mut self, expires_unix_ms: i64) {
        self.expires_unix_ms = Some(
            self.expires_unix_ms
                .map_or(expires_unix_ms, |existing| existing.min(expires_unix_ms)),
        );
    }

    /// The audit row of the key's creation.
    pub fn created_audit(&self) -> AuditNote {
        AuditNote {
            action: "key.create",
            target: self.id.to_string(),
            detail: json!({
                "owner": self.owner,
                "name": self.name,
                "prefix": self.prefix(),
                "enabled": self.enabled,
                "expiresUnixMs": self.expires_unix_ms,
                "identity": self.limits.identity,
                "credits": self.credits.as_ref().map(|credits| credits.remaining),
            }),
        }
    }

    /// The audit row of the key's deletion.
    pub fn deleted_audit(&self) -> AuditNote {
        AuditNote {
            action: "key.delete",
            target: self.id.to_string(),
            detail: json!({ "owner": self.owner, "name": self.name }),
        }
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
    /// Validated. Whether the key spends credits is `credits.is_some()`, whatever
    /// `limits.credits` says: the store sets it so.
    pub limits: KeyLimits,
    /// The key's own credits; `None`: unlimited.
    pub credits: Option<u64>,
    /// Only with credits.
    pub refill: Option<RefillSpec>,
}

impl NewKey {
    /// The key as stored, at `revision` (the revision of its `KeyUpserted` event).
    /// Its balance, if it has credits, is full and nothing leased; the first refill is due one
    /// interval after its creation.
    pub fn into_record(self, revision: Revision) -> KeyRecord {
        let credits = self.credits.map(|remaining| CreditState {
            remaining,
            leased: 0,
            refill: self.refill,
            next_refill_unix_ms: self
                .refill
                .map(|refill| next_refill(self.created_unix_ms, refill)),
        });
        KeyRecord {
            id: self.id,
            hash: self.hash,
            owner: self.owner,
            name: self.name,
            start: self.start,
            enabled: self.enabled,
            created_unix_ms: self.created_unix_ms,
            expires_unix_ms: self.expires_unix_ms,
            meta: self.meta,
            limits: KeyLimits {
                credits: credits.is_some(),
                ..self.limits
            },
            credits,
            revision,
        }
    }
}

/// When a refill set (or last due) at `from_unix_ms` is next due.
pub fn next_refill(from_unix_ms: i64, refill: RefillSpec) -> i64 {
    from_unix_ms.saturating_add(i64::try_from(refill.interval_ms).unwrap_or(i64::MAX))
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

impl Reroll {
    /// The replacement for `old_key`, at `revision`: the new secret, with the old key's owner,
    /// name, meta, enabled state, expiry, limits and credit balance (see the module doc).
    pub fn successor(&self, old_key: &KeyRecord, revision: Revision) -> KeyRecord {
        KeyRecord {
            id: self.new_id,
            hash: self.new_hash,
            owner: old_key.owner.clone(),
            name: old_key.name.clone(),
            start: self.new_start.clone(),
            // A reroll rotates the secret; it neither re-enables a disabled key nor extends
            // how long access lasts.
            enabled: old_key.enabled,
            created_unix_ms: self.now_unix_ms,
            expires_unix_ms: old_key.expires_unix_ms,
            meta: old_key.meta.clone(),
            // Nor lifts its limits: the balance moves with the key.
            limits: old_key.limits.clone(),
            credits: old_key.credits.clone(),
            revision,
        }
    }

    /// The audit row of the reroll, once `old_key` has its shortened expiry.
    pub fn audit(&self, old_key: &KeyRecord, new_key: &KeyRecord) -> AuditNote {
        AuditNote {
            action: "key.reroll",
            target: old_key.id.to_string(),
            detail: json!({
                "owner": old_key.owner,
                "newKeyId": new_key.id.to_string(),
                "graceMs": self.grace_ms,
                "oldExpiresUnixMs": old_key.expires_unix_ms,
            }),
        }
    }
}

/// Result of a reroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerolled {
    pub new_key: KeyRecord,
    pub old_key: KeyRecord,
    /// Head revision after both events.
    pub revision: Revision,
}

/// Result of [`KeyStore::set_key_enabled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnabledChange {
    pub key: KeyRecord,
    /// False when the key already was in the requested state (no event was appended).
    pub changed: bool,
}

impl EnabledChange {
    /// The audit row of the enable or disable, whether or not it changed anything.
    pub fn audit(&self) -> AuditNote {
        AuditNote {
            action: if self.key.enabled {
                "key.enable"
            } else {
                "key.disable"
            },
            target: self.key.id.to_string(),
            detail: json!({ "owner": self.key.owner, "changed": self.changed }),
        }
    }
}

/// Result of [`KeyStore::revoke_owner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRevoked {
    /// Head revision after the deletes (the unchanged head when the owner had no keys).
    pub revision: Revision,
    pub deleted: Vec<KeyId>,
}

impl OwnerRevoked {
    /// The audit row of the revocation of `owner`'s keys.
    pub fn audit(&self, owner: &str) -> AuditNote {
        let sample: Vec<String> = self
            .deleted
            .iter()
            .take(REVOKED_IDS_AUDITED)
            .map(KeyId::to_string)
            .collect();
        AuditNote {
            action: "owner.revoke",
            target: owner.to_owned(),
            detail: json!({ "count": self.deleted.len(), "keyIds": sample }),
        }
    }
}

/// Which keys [`KeyStore::list_keys`] returns: ordered by id, strictly after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuery {
    pub owner: Option<String>,
    pub after: Option<KeyId>,
    pub limit: usize,
}

/// API keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Creates a key, with its credit balance; appends one `KeyUpserted` event, after an
    /// `IdentityUpserted` when the identity it names does not exist yet (it is created).
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

    /// Deletes a key for good, with its credit balance and leases; appends one `KeyDeleted`
    /// event. Returns the new head.
    async fn delete_key(&self, id: KeyId, actor: &str) -> Result<Revision, StoreError>;

    /// Creates the replacement key (same owner, name, meta, enabled state, expiry and limits;
    /// the credit balance and outstanding leases move to it, the old key's balance becomes
    /// empty: see the module doc) and shortens the old key's expiry: two events, new key
    /// first.
    async fn reroll_key(&self, reroll: Reroll, actor: &str) -> Result<Rerolled, StoreError>;

    /// Deletes every key of `owner` in one transaction: one event per key.
    async fn revoke_owner(&self, owner: &str, actor: &str) -> Result<OwnerRevoked, StoreError>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(expires_unix_ms: Option<i64>, enabled: bool) -> KeyRecord {
        KeyRecord {
            id: KeyId::generate(),
            hash: KeyHash([1; 32]),
            owner: "alice".into(),
            name: "ci".into(),
            start: "acme_abcd".into(),
            enabled,
            created_unix_ms: 1_000,
            expires_unix_ms,
            meta: Meta::from([("plan".to_owned(), "pro".to_owned())]),
            limits: KeyLimits {
                ratelimits: vec!["requests=10/1s".parse().unwrap()],
                credits: true,
                permissions: vec!["orders.read".into()],
                identity: Some("acme".into()),
            },
            credits: Some(CreditState {
                remaining: 7,
                leased: 2,
                refill: None,
                next_refill_unix_ms: None,
            }),
            revision: Revision(3),
        }
    }

    fn reroll(old: &KeyRecord, old_expires_unix_ms: i64) -> Reroll {
        Reroll {
            old_id: old.id,
            new_id: KeyId::generate(),
            new_hash: KeyHash([2; 32]),
            new_start: "acme_wxyz".into(),
            now_unix_ms: 5_000,
            old_expires_unix_ms,
            grace_ms: 60_000,
        }
    }

    #[test]
    fn a_successor_keeps_the_old_keys_access_and_takes_only_the_new_secret() {
        let old = key(Some(90_000), false);
        let reroll = reroll(&old, 65_000);
        let new = reroll.successor(&old, Revision(4));
        assert_eq!((new.id, new.hash), (reroll.new_id, reroll.new_hash));
        assert_eq!((new.start.as_str(), new.prefix()), ("acme_wxyz", "acme"));
        assert_eq!(
            (new.owner, new.name, new.meta),
            (old.owner, old.name, old.meta)
        );
        assert!(!new.enabled, "a reroll does not re-enable a disabled key");
        assert_eq!(new.expires_unix_ms, Some(90_000), "nor extends its access");
        assert_eq!(
            (&new.limits, &new.credits),
            (&old.limits, &old.credits),
            "nor lifts its limits"
        );
        assert_eq!((new.created_unix_ms, new.revision), (5_000, Revision(4)));
    }

    #[test]
    fn an_expiry_is_only_ever_brought_forward() {
        let mut never = key(None, true);
        never.expire_by(65_000);
        assert_eq!(never.expires_unix_ms, Some(65_000));
        let mut later = key(Some(90_000), true);
        later.expire_by(65_000);
        assert_eq!(later.expires_unix_ms, Some(65_000));
        let mut sooner = key(Some(10_000), true);
        sooner.expire_by(65_000);
        assert_eq!(sooner.expires_unix_ms, Some(10_000));
    }

    #[test]
    fn the_audit_row_of_a_bulk_revocation_names_at_most_a_hundred_keys() {
        let deleted: Vec<KeyId> = (0..150).map(|_| KeyId::generate()).collect();
        let revoked = OwnerRevoked {
            revision: Revision(150),
            deleted: deleted.clone(),
        };
        let note = revoked.audit("bob");
        assert_eq!((note.action, note.target.as_str()), ("owner.revoke", "bob"));
        assert_eq!(note.detail["count"], 150);
        let named = note.detail["keyIds"].as_array().map(Vec::len);
        assert_eq!(named, Some(REVOKED_IDS_AUDITED));
        assert_eq!(note.detail["keyIds"][0], deleted[0].to_string());
    }
}
