//! [`KeyStore`] on PostgreSQL: the `keys` table. Every change takes the log lock first and
//! appends its `KeyUpserted` or `KeyDeleted` event through the writer, in the same transaction;
//! since every change to a key holds that lock, what a change reads of a key is what the last
//! committed change left. A key's credit balance is its holder's row in `credits` (see
//! `limits`), read beside the key and written, moved or deleted in the key's transaction.

use async_trait::async_trait;
use keygate_proto::{Change, KeyHash, KeyId, Meta, ReplicaKey, Revision};
use sqlx::postgres::{PgConnection, PgRow};
use tokio_stream::StreamExt;

use super::limits::{self as credits, credit_columns, credits_from_row};
use super::log::{self, Writer};
use super::{PgStore, backend, db_limit, db_revision, get, revision_from_db};
use crate::store::event_codec::{limits_from_column, limits_to_column};
use crate::store::{
    EnabledChange, KeyQuery, KeyRecord, KeyStore, NewKey, OwnerRevoked, Reroll, Rerolled,
    StoreError,
};

/// The key columns, in [`key_from_row`]'s order (a macro, so queries stay `&'static str`).
macro_rules! key_columns {
    () => {
        "key_id, key_hash, owner, name, start, enabled, created_ms, expires_ms, meta_json, revision, \
         limits_json, identity_id"
    };
}
pub(super) use key_columns;

/// How many columns `key_columns!` lists.
const KEY_COLUMN_COUNT: usize = 12;

/// The keys, each with its own balance (`credit_columns!` after `key_columns!`).
macro_rules! keys_with_credits {
    () => {
        concat!(
            "SELECT ",
            key_columns!(),
            ", ",
            credit_columns!(),
            " FROM keys LEFT JOIN credits ON credits.holder = 'key:' || keys.key_id"
        )
    };
}

/// A key and its balance, from a row of `keys_with_credits!`.
fn key_with_credits_from_row(row: &PgRow) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        credits: credits_from_row(row, KEY_COLUMN_COUNT)?,
        ..key_from_row(row)?
    })
}

fn meta_to_json(meta: &Meta) -> Result<String, StoreError> {
    serde_json::to_string(meta).map_err(|e| StoreError::Corrupt(format!("meta: {e}")))
}

/// A key from `key_columns!`, without its balance (`credits: None`).
pub(super) fn key_from_row(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let id: String = get(row, 0)?;
    let hash: Vec<u8> = get(row, 1)?;
    let meta_json: String = get(row, 8)?;
    let limits_json: String = get(row, 10)?;
    let limits = limits_from_column(&limits_json, get(row, 11)?)?;
    Ok(KeyRecord {
        id: id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("key id {id:?}")))?,
        hash: KeyHash::from_slice(&hash)
            .ok_or_else(|| StoreError::Corrupt(format!("hash of key {id}")))?,
        owner: get(row, 2)?,
        name: get(row, 3)?,
        start: get(row, 4)?,
        enabled: get(row, 5)?,
        created_unix_ms: get(row, 6)?,
        expires_unix_ms: get(row, 7)?,
        meta: serde_json::from_str(&meta_json)
            .map_err(|e| StoreError::Corrupt(format!("meta of key {id}: {e}")))?,
        limits,
        credits: None,
        revision: revision_from_db(get(row, 9)?)?,
    })
}

/// One key with its balance.
pub(super) async fn get_key(
    conn: &mut PgConnection,
    id: KeyId,
) -> Result<Option<KeyRecord>, StoreError> {
    sqlx::query(concat!(keys_with_credits!(), " WHERE key_id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await
        .map_err(backend)?
        .as_ref()
        .map(key_with_credits_from_row)
        .transpose()
}

/// Every key as gateways replicate it, read inside the caller's transaction (a snapshot reads
/// it in the same transaction as the head), mapped as the rows stream in rather than after
/// all of them have arrived.
pub(super) async fn replica_keys(conn: &mut PgConnection) -> Result<Vec<ReplicaKey>, StoreError> {
    let mut rows = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM keys ORDER BY key_id"
    ))
    .fetch(conn);
    let mut keys = Vec::new();
    while let Some(row) = rows.next().await {
        keys.push(key_from_row(&row.map_err(backend)?)?.replica());
    }
    Ok(keys)
}

impl Writer<'_> {
    /// Inserts a new key at the next revision, with its balance, and the identity it names
    /// when that is new (whose `IdentityUpserted` is appended here, before the key's event).
    async fn insert_new_key(&mut self, key: &mut KeyRecord) -> Result<(), StoreError> {
        if let Some(identity) = &key.limits.identity {
            self.ensure_identity(identity, key.created_unix_ms).await?;
        }
        key.revision = self.next_revision()?;
        self.insert_key(key).await?;
        if let Some(state) = &key.credits {
            credits::insert_credits(self.conn(), &key.holder(), state).await?;
        }
        Ok(())
    }

    async fn insert_key(&mut self, key: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO keys (",
            key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(key.id.to_string())
        .bind(&key.hash.0[..])
        .bind(&key.owner)
        .bind(&key.name)
        .bind(&key.start)
        .bind(key.enabled)
        .bind(key.created_unix_ms)
        .bind(key.expires_unix_ms)
        .bind(meta_to_json(&key.meta)?)
        .bind(db_revision(key.revision))
        .bind(limits_to_column(&key.limits)?)
        .bind(&key.limits.identity)
        .execute(self.conn())
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// Writes the mutable fields of a key (enabled, expiry, limits, revision).
    pub(super) async fn update_key(&mut self, key: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE keys SET enabled = $2, expires_ms = $3, revision = $4, limits_json = $5,
                identity_id = $6
             WHERE key_id = $1",
        )
        .bind(key.id.to_string())
        .bind(key.enabled)
        .bind(key.expires_unix_ms)
        .bind(db_revision(key.revision))
        .bind(limits_to_column(&key.limits)?)
        .bind(&key.limits.identity)
        .execute(self.conn())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn delete_key(&mut self, key: &KeyRecord) -> Result<Revision, StoreError> {
        sqlx::query("DELETE FROM keys WHERE key_id = $1")
            .bind(key.id.to_string())
            .execute(self.conn())
            .await
            .map_err(backend)?;
        credits::delete_credits(self.conn(), &key.holder()).await?;
        self.append(&Change::KeyDeleted {
            id: key.id,
            hash: key.hash,
        })
    }

    pub(super) async fn existing_key(&mut self, id: KeyId) -> Result<KeyRecord, StoreError> {
        get_key(self.conn(), id)
            .await?
            .ok_or(StoreError::KeyNotFound(id))
    }

    /// Moves the old key's balance and outstanding leases to its successor, and leaves the
    /// old key an empty balance without refill (see `store/keys.rs`). The old balance's row
    /// is locked first, as every change to a balance does.
    async fn move_credits(
        &mut self,
        old_key: &mut KeyRecord,
        new_key: &KeyRecord,
    ) -> Result<(), StoreError> {
        let Some(new_state) = &new_key.credits else {
            return Ok(());
        };
        let (old, new) = (old_key.holder().to_string(), new_key.holder().to_string());
        credits::lock_credits(self.conn(), &old).await?;
        credits::insert_credits(self.conn(), &new_key.holder(), new_state).await?;
        sqlx::query("UPDATE credit_leases SET holder = $2 WHERE holder = $1")
            .bind(&old)
            .bind(&new)
            .execute(self.conn())
            .await
            .map_err(backend)?;
        sqlx::query(
            "UPDATE credits SET remaining = 0, refill_amount = NULL, refill_interval_ms = NULL,
                next_refill_ms = NULL
             WHERE holder = $1",
        )
        .bind(&old)
        .execute(self.conn())
        .await
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
impl KeyStore for PgStore {
    async fn create_key(&self, key: NewKey, actor: &str) -> Result<KeyRecord, StoreError> {
        let mut w = self.write().await?;
        let mut record = key.into_record(w.next_revision()?);
        w.insert_new_key(&mut record).await?;
        record.revision = w.append(&Change::KeyUpserted(record.replica()))?;
        w.audit(actor, record.revision, &record.created_audit())
            .await?;
        w.commit().await?;
        Ok(record)
    }

    async fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        get_key(&mut conn, id).await
    }

    async fn key_by_hash(
        &self,
        hash: KeyHash,
    ) -> Result<(Option<KeyRecord>, Revision), StoreError> {
        let mut tx = self.read().await?;
        let key = sqlx::query(concat!(keys_with_credits!(), " WHERE key_hash = $1"))
            .bind(&hash.0[..])
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .as_ref()
            .map(key_with_credits_from_row)
            .transpose()?;
        let head = log::log_bounds(&mut tx).await?.head;
        tx.commit().await.map_err(backend)?;
        Ok((key, head))
    }

    async fn list_keys(&self, query: KeyQuery) -> Result<Vec<KeyRecord>, StoreError> {
        // Fixed-width base62 ids sort as text in the same order as their numbers (the column
        // is COLLATE "C": bytes, whatever the database's collation).
        let after = query.after.map(|id| id.to_string()).unwrap_or_default();
        sqlx::query(concat!(
            keys_with_credits!(),
            " WHERE key_id > $1 AND ($2::TEXT IS NULL OR owner = $2)
             ORDER BY key_id LIMIT $3"
        ))
        .bind(after)
        .bind(query.owner)
        .bind(db_limit(query.limit))
        .fetch_all(self.pool())
        .await
        .map_err(backend)?
        .iter()
        .map(key_with_credits_from_row)
        .collect()
    }

    async fn set_key_enabled(
        &self,
        id: KeyId,
        enabled: bool,
        actor: &str,
    ) -> Result<EnabledChange, StoreError> {
        let mut w = self.write().await?;
        let mut key = w.existing_key(id).await?;
        let changed = key.set_enabled(enabled);
        let mut revision = Revision::ZERO;
        if changed {
            key.revision = w.next_revision()?;
            w.update_key(&key).await?;
            revision = w.append(&Change::KeyUpserted(key.replica()))?;
        }
        let change = EnabledChange { key, changed };
        w.audit(actor, revision, &change.audit()).await?;
        w.commit().await?;
        Ok(change)
    }

    async fn delete_key(&self, id: KeyId, actor: &str) -> Result<Revision, StoreError> {
        let mut w = self.write().await?;
        let key = w.existing_key(id).await?;
        let revision = w.delete_key(&key).await?;
        w.audit(actor, revision, &key.deleted_audit()).await?;
        w.commit().await?;
        Ok(revision)
    }

    async fn reroll_key(&self, reroll: Reroll, actor: &str) -> Result<Rerolled, StoreError> {
        let mut w = self.write().await?;
        let mut old_key = w.existing_key(reroll.old_id).await?;
        let mut new_key = reroll.successor(&old_key, w.next_revision()?);
        w.insert_key(&new_key).await?;
        w.move_credits(&mut old_key, &new_key).await?;
        new_key.revision = w.append(&Change::KeyUpserted(new_key.replica()))?;

        old_key.expire_by(reroll.old_expires_unix_ms);
        old_key.revision = w.next_revision()?;
        w.update_key(&old_key).await?;
        let revision = w.append(&Change::KeyUpserted(old_key.replica()))?;

        w.audit(actor, revision, &reroll.audit(&old_key, &new_key))
            .await?;
        w.commit().await?;
        Ok(Rerolled {
            new_key,
            old_key,
            revision,
        })
    }

    async fn revoke_owner(&self, owner: &str, actor: &str) -> Result<OwnerRevoked, StoreError> {
        let mut w = self.write().await?;
        // One statement deletes them all; the events follow in key id order.
        let keys = sqlx::query(concat!(
            "DELETE FROM keys WHERE owner = $1 RETURNING ",
            key_columns!()
        ))
        .bind(owner)
        .fetch_all(w.conn())
        .await
        .map_err(backend)?
        .iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let mut keys = keys;
        keys.sort_by_key(|key| key.id);
        let mut deleted = Vec::with_capacity(keys.len());
        let mut revision = Revision::ZERO;
        for key in &keys {
            credits::delete_credits(w.conn(), &key.holder()).await?;
            revision = w.append(&Change::KeyDeleted {
                id: key.id,
                hash: key.hash,
            })?;
            deleted.push(key.id);
        }
        let revoked = OwnerRevoked {
            revision: w.head()?,
            deleted,
        };
        w.audit(actor, revision, &revoked.audit(owner)).await?;
        w.commit().await?;
        Ok(revoked)
    }
}
