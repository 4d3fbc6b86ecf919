//! [`KeyStore`] on SQLite: the `keys` table. Every change appends its `KeyUpserted` or
//! `KeyDeleted` event through the writer, in the same transaction. A key's credit balance is
//! its holder's row in `credits` (see `limits`), read beside the key and written, moved or
//! deleted in the key's transaction.

use async_trait::async_trait;
use keygate_proto::{Change, KeyHash, KeyId, ReplicaKey, Revision};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::limits::{self as credits, CREDIT_COLUMNS, credits_from_row};
use super::log::Writer;
use super::{SqliteStore, backend, collect, corrupt, execute, log};
use crate::store::event_codec::{limits_from_column, limits_to_column};
use crate::store::{
    EnabledChange, KeyQuery, KeyRecord, KeyStore, NewKey, OwnerRevoked, Reroll, Rerolled,
    StoreError,
};

pub(super) const KEY_COLUMNS: &str = "key_id, key_hash, owner, name, start, enabled, created_ms, \
     expires_ms, meta_json, revision, limits_json, identity_id";

/// How many columns [`KEY_COLUMNS`] lists.
const KEY_COLUMN_COUNT: usize = 12;

/// The keys, each with its own balance ([`CREDIT_COLUMNS`] after [`KEY_COLUMNS`]).
fn keys_with_credits() -> String {
    format!(
        "SELECT {KEY_COLUMNS}, {CREDIT_COLUMNS} FROM keys
         LEFT JOIN credits ON credits.holder = 'key:' || keys.key_id"
    )
}

/// A key and its balance, from a row of [`keys_with_credits`].
fn key_with_credits_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        credits: credits_from_row(row, KEY_COLUMN_COUNT)?,
        ..key_from_row(row)?
    })
}

/// A key from [`KEY_COLUMNS`], without its balance (`credits: None`).
pub(super) fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let id: String = row.get(0)?;
    let hash: Vec<u8> = row.get(1)?;
    let meta_json: String = row.get(8)?;
    let limits_json: String = row.get(10)?;
    let limits =
        limits_from_column(&limits_json, row.get(11)?).map_err(|_| corrupt("key limits"))?;
    Ok(KeyRecord {
        id: id.parse().map_err(|_| corrupt("key id"))?,
        hash: KeyHash::from_slice(&hash).ok_or_else(|| corrupt("key hash"))?,
        owner: row.get(2)?,
        name: row.get(3)?,
        start: row.get(4)?,
        enabled: row.get(5)?,
        created_unix_ms: row.get(6)?,
        expires_unix_ms: row.get(7)?,
        meta: serde_json::from_str(&meta_json).map_err(|_| corrupt("key meta"))?,
        limits,
        credits: None,
        revision: Revision(row.get(9)?),
    })
}

/// One key with its balance.
pub(super) fn get_key(tx: &Transaction<'_>, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
    tx.query_row(
        &format!("{} WHERE key_id = ?1", keys_with_credits()),
        params![id.to_string()],
        key_with_credits_from_row,
    )
    .optional()
    .map_err(backend)
}

/// Every key as gateways replicate it, read inside the caller's transaction (a snapshot reads
/// it in the same transaction as the head).
pub(super) fn replica_keys(tx: &Transaction<'_>) -> Result<Vec<ReplicaKey>, StoreError> {
    collect(
        tx,
        &format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY key_id"),
        [],
        |row| key_from_row(row).map(|key| key.replica()),
    )
}

/// Inserts `key` as it is, its revision included (a write, or a copy).
pub(super) fn insert_key(tx: &Transaction<'_>, key: &KeyRecord) -> Result<(), StoreError> {
    let meta_json = serde_json::to_string(&key.meta)
        .map_err(|e| StoreError::Corrupt(format!("meta of key {}: {e}", key.id)))?;
    execute(
        tx,
        &format!(
            "INSERT INTO keys ({KEY_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            key.id.to_string(),
            &key.hash.0[..],
            key.owner,
            key.name,
            key.start,
            key.enabled,
            key.created_unix_ms,
            key.expires_unix_ms,
            meta_json,
            key.revision.0,
            limits_to_column(&key.limits)?,
            key.limits.identity,
        ],
    )
}

impl Writer<'_> {
    /// Inserts a new key at the next revision, with its balance, and the identity it names
    /// when that is new (whose `IdentityUpserted` is appended here, before the key's event).
    fn insert_key(&mut self, key: &mut KeyRecord) -> Result<(), StoreError> {
        if let Some(identity) = &key.limits.identity {
            self.ensure_identity(identity, key.created_unix_ms)?;
        }
        key.revision = self.next_revision();
        insert_key(self.tx, key)?;
        if let Some(state) = &key.credits {
            credits::insert_credits(self.tx, &key.holder(), state)?;
        }
        Ok(())
    }

    /// Writes the mutable fields of a key (enabled, expiry, limits, revision).
    pub(super) fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE keys SET enabled = ?2, expires_ms = ?3, revision = ?4, limits_json = ?5,
                    identity_id = ?6
                 WHERE key_id = ?1",
                params![
                    key.id.to_string(),
                    key.enabled,
                    key.expires_unix_ms,
                    key.revision.0,
                    limits_to_column(&key.limits)?,
                    key.limits.identity,
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn delete_key(&mut self, key: &KeyRecord) -> Result<Revision, StoreError> {
        self.tx
            .execute(
                "DELETE FROM keys WHERE key_id = ?1",
                params![key.id.to_string()],
            )
            .map_err(backend)?;
        credits::delete_credits(self.tx, &key.holder())?;
        self.append(Change::KeyDeleted {
            id: key.id,
            hash: key.hash,
        })
    }

    pub(super) fn existing_key(&self, id: KeyId) -> Result<KeyRecord, StoreError> {
        get_key(self.tx, id)?.ok_or(StoreError::KeyNotFound(id))
    }

    /// Moves the old key's balance and outstanding leases to its successor, and leaves the
    /// old key an empty balance without refill (see `store/keys.rs`).
    fn move_credits(&self, old_key: &mut KeyRecord, new_key: &KeyRecord) -> Result<(), StoreError> {
        let (Some(_), Some(new_state)) = (&old_key.credits, &new_key.credits) else {
            return Ok(());
        };
        let (old, new) = (old_key.holder().to_string(), new_key.holder().to_string());
        credits::insert_credits(self.tx, &new_key.holder(), new_state)?;
        self.tx
            .execute(
                "UPDATE credit_leases SET holder = ?2 WHERE holder = ?1",
                params![old, new],
            )
            .map_err(backend)?;
        self.tx
            .execute(
                "UPDATE credits SET remaining = 0, refill_amount = NULL,
                    refill_interval_ms = NULL, next_refill_ms = NULL
                 WHERE holder = ?1",
                params![old],
            )
            .map_err(backend)?;
        old_key.credits = Some(crate::store::CreditState {
            remaining: 0,
            leased: 0,
            refill: None,
            next_refill_unix_ms: None,
        });
        Ok(())
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create_key(&self, key: NewKey, actor: &str) -> Result<KeyRecord, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let mut record = key.into_record(w.next_revision());
            w.insert_key(&mut record)?;
            record.revision = w.append(Change::KeyUpserted(record.replica()))?;
            w.audit(&actor, record.revision, &record.created_audit())?;
            Ok(record)
        })
        .await
    }

    async fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.read(move |tx| get_key(tx, id)).await
    }

    async fn key_by_hash(
        &self,
        hash: KeyHash,
    ) -> Result<(Option<KeyRecord>, Revision), StoreError> {
        self.read(move |tx| {
            let key = tx
                .query_row(
                    &format!("{} WHERE key_hash = ?1", keys_with_credits()),
                    params![&hash.0[..]],
                    key_with_credits_from_row,
                )
                .optional()
                .map_err(backend)?;
            Ok((key, log::log_bounds(tx)?.head))
        })
        .await
    }

    async fn list_keys(&self, query: KeyQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(move |tx| {
            // Fixed-width base62 ids sort as text in the same order as their numbers.
            let after = query.after.map(|id| id.to_string()).unwrap_or_default();
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            collect(
                tx,
                &format!(
                    "{} WHERE key_id > ?1 AND (?2 IS NULL OR owner = ?2)
                     ORDER BY key_id LIMIT ?3",
                    keys_with_credits()
                ),
                params![after, query.owner, limit],
                key_with_credits_from_row,
            )
        })
        .await
    }

    async fn set_key_enabled(
        &self,
        id: KeyId,
        enabled: bool,
        actor: &str,
    ) -> Result<EnabledChange, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let mut key = w.existing_key(id)?;
            let changed = key.set_enabled(enabled);
            let mut revision = Revision::ZERO;
            if changed {
                key.revision = w.next_revision();
                w.update_key(&key)?;
                revision = w.append(Change::KeyUpserted(key.replica()))?;
            }
            let change = EnabledChange { key, changed };
            w.audit(&actor, revision, &change.audit())?;
            Ok(change)
        })
        .await
    }

    async fn delete_key(&self, id: KeyId, actor: &str) -> Result<Revision, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let key = w.existing_key(id)?;
            let revision = w.delete_key(&key)?;
            w.audit(&actor, revision, &key.deleted_audit())?;
            Ok(revision)
        })
        .await
    }

    async fn reroll_key(&self, reroll: Reroll, actor: &str) -> Result<Rerolled, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let mut old_key = w.existing_key(reroll.old_id)?;
            let mut new_key = reroll.successor(&old_key, w.next_revision());
            insert_key(w.tx, &new_key)?;
            w.move_credits(&mut old_key, &new_key)?;
            new_key.revision = w.append(Change::KeyUpserted(new_key.replica()))?;

            old_key.expire_by(reroll.old_expires_unix_ms);
            old_key.revision = w.next_revision();
            w.update_key(&old_key)?;
            let revision = w.append(Change::KeyUpserted(old_key.replica()))?;

            w.audit(&actor, revision, &reroll.audit(&old_key, &new_key))?;
            Ok(Rerolled {
                new_key,
                old_key,
                revision,
            })
        })
        .await
    }

    async fn revoke_owner(&self, owner: &str, actor: &str) -> Result<OwnerRevoked, StoreError> {
        let actor = actor.to_owned();
        let owner = owner.to_owned();
        self.write(move |w| {
            let keys = collect(
                w.tx,
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE owner = ?1 ORDER BY key_id"),
                params![owner],
                key_from_row,
            )?;
            let mut deleted = Vec::with_capacity(keys.len());
            let mut revision = Revision::ZERO;
            for key in &keys {
                revision = w.delete_key(key)?;
                deleted.push(key.id);
            }
            let revoked = OwnerRevoked {
                revision: w.head(),
                deleted,
            };
            w.audit(&actor, revision, &revoked.audit(&owner))?;
            Ok(revoked)
        })
        .await
    }
}
