//! [`SigningKeyStore`] on PostgreSQL: the `signing_keys` table, with at most one current key
//! (`verify_until_ms` NULL; a unique partial index keeps it so). Every insert, retirement or
//! revocation (`revoked_ms` set) appends a `SigningKey` event, so every write takes the log
//! lock first: of two replicas starting at once, one makes the first key and the other finds
//! it; of two revocations of the current key, one replaces it and the other finds it revoked.

use async_trait::async_trait;
use keygate_proto::{Change, Revision};
use sqlx::postgres::{PgConnection, PgRow};

use super::log::Writer;
use super::{PgStore, array, backend, get};
use crate::store::{Rotated, SigningKeyRecord, SigningKeyRevoked, SigningKeyStore, StoreError};

/// The signing key columns, in [`signing_key_from_row`]'s order.
macro_rules! signing_key_columns {
    () => {
        "key_id, secret, public_key, created_ms, verify_until_ms, revoked_ms, \
         max_session_lifetime_ms"
    };
}
pub(super) use signing_key_columns;

pub(super) fn signing_key_from_row(row: &PgRow) -> Result<SigningKeyRecord, StoreError> {
    Ok(SigningKeyRecord {
        key_id: get(row, 0)?,
        secret: array(get(row, 1)?, "signing key secret")?,
        public_key: array(get(row, 2)?, "signing key public key")?,
        created_unix_ms: get(row, 3)?,
        verify_until_unix_ms: get(row, 4)?,
        revoked_unix_ms: get(row, 5)?,
        max_session_lifetime_ms: get(row, 6)?,
    })
}

async fn get_signing_key(
    conn: &mut PgConnection,
    key_id: &str,
) -> Result<Option<SigningKeyRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        signing_key_columns!(),
        " FROM signing_keys WHERE key_id = $1"
    ))
    .bind(key_id)
    .fetch_optional(conn)
    .await
    .map_err(backend)?
    .as_ref()
    .map(signing_key_from_row)
    .transpose()
}

async fn current_signing_key(
    conn: &mut PgConnection,
) -> Result<Option<SigningKeyRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        signing_key_columns!(),
        " FROM signing_keys WHERE verify_until_ms IS NULL"
    ))
    .fetch_optional(conn)
    .await
    .map_err(backend)?
    .as_ref()
    .map(signing_key_from_row)
    .transpose()
}

impl Writer<'_> {
    async fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<Revision, StoreError> {
        sqlx::query(concat!(
            "INSERT INTO signing_keys (",
            signing_key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&key.key_id)
        .bind(&key.secret[..])
        .bind(&key.public_key[..])
        .bind(key.created_unix_ms)
        .bind(key.verify_until_unix_ms)
        .bind(key.revoked_unix_ms)
        .bind(key.max_session_lifetime_ms)
        .execute(self.conn())
        .await
        .map_err(backend)?;
        self.append(&Change::SigningKey(key.verifying_key()))
    }

    /// Makes `next` current and retires `previous` (the current key, if any) until
    /// `retire_until_unix_ms`, with its events and audit row; the caller commits.
    async fn rotate_signing_key(
        &mut self,
        previous: Option<SigningKeyRecord>,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Rotated, StoreError> {
        // Retire first (the unique index allows one current key), but announce the new key
        // first, so a gateway never has no current key to expect.
        let retired = match previous {
            Some(mut key) => {
                key.verify_until_unix_ms = Some(retire_until_unix_ms);
                sqlx::query("UPDATE signing_keys SET verify_until_ms = $2 WHERE key_id = $1")
                    .bind(&key.key_id)
                    .bind(retire_until_unix_ms)
                    .execute(self.conn())
                    .await
                    .map_err(backend)?;
                Some(key)
            }
            None => None,
        };
        let current = next.into_current(self.now().await?);
        let mut revision = self.insert_signing_key(&current).await?;
        if let Some(retired) = &retired {
            revision = self.append(&Change::SigningKey(retired.verifying_key()))?;
        }
        let rotated = Rotated {
            current,
            retired,
            revision,
        };
        self.audit(actor, revision, &rotated.audit()).await?;
        Ok(rotated)
    }
}

#[async_trait]
impl SigningKeyStore for PgStore {
    async fn signing_key(&self, key_id: &str) -> Result<Option<SigningKeyRecord>, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        get_signing_key(&mut conn, key_id).await
    }

    async fn current_signing_key(&self) -> Result<Option<SigningKeyRecord>, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        current_signing_key(&mut conn).await
    }

    async fn ensure_signing_key(
        &self,
        candidate: SigningKeyRecord,
        actor: &str,
    ) -> Result<SigningKeyRecord, StoreError> {
        let mut w = self.write().await?;
        if let Some(current) = current_signing_key(w.conn()).await? {
            return Ok(current);
        }
        let key = candidate.into_current(w.now().await?);
        let revision = w.insert_signing_key(&key).await?;
        w.audit(actor, revision, &key.created_audit()).await?;
        w.commit().await?;
        Ok(key)
    }

    async fn rotate_signing_key(
        &self,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Rotated, StoreError> {
        let mut w = self.write().await?;
        let previous = current_signing_key(w.conn()).await?;
        let rotated = w
            .rotate_signing_key(previous, next, retire_until_unix_ms, actor)
            .await?;
        w.commit().await?;
        Ok(rotated)
    }

    async fn rotate_signing_key_for_lifetime(
        &self,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Option<Rotated>, StoreError> {
        // The log lock, taken by `write`, makes the check and the rotation one step across
        // replicas.
        let mut w = self.write().await?;
        let previous = match current_signing_key(w.conn()).await? {
            Some(current) if current.lifetime_differs_from(&next) => current,
            _ => return Ok(None),
        };
        let rotated = w
            .rotate_signing_key(Some(previous), next, retire_until_unix_ms, actor)
            .await?;
        w.commit().await?;
        Ok(Some(rotated))
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            signing_key_columns!(),
            " FROM signing_keys ORDER BY created_ms DESC, key_id DESC"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(backend)?
        .iter()
        .map(signing_key_from_row)
        .collect()
    }

    async fn revoke_signing_key(
        &self,
        key_id: &str,
        next: SigningKeyRecord,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<SigningKeyRevoked, StoreError> {
        let mut w = self.write().await?;
        let Some(key) = get_signing_key(w.conn(), key_id).await? else {
            return Ok(SigningKeyRevoked::NotFound);
        };
        if key.revoked_unix_ms.is_some() {
            return Ok(SigningKeyRevoked::AlreadyRevoked {
                key,
                current: current_signing_key(w.conn()).await?,
                head: w.head()?,
            });
        }
        let key = key.revoke(w.now().await?, session_lifetime_ms);
        // Revoke first (the unique index allows one current key), but announce the new current
        // key first, so a gateway never has no current key to expect.
        sqlx::query(
            "UPDATE signing_keys SET verify_until_ms = $2, revoked_ms = $3 WHERE key_id = $1",
        )
        .bind(&key.key_id)
        .bind(key.verify_until_unix_ms)
        .bind(key.revoked_unix_ms)
        .execute(w.conn())
        .await
        .map_err(backend)?;
        let left = current_signing_key(w.conn()).await?;
        let (current, replaced) =
            SigningKeyRecord::current_after_revocation(left, next, w.now().await?);
        if replaced {
            w.insert_signing_key(&current).await?;
        }
        let revision = w.append(&Change::SigningKey(key.verifying_key()))?;
        w.audit(actor, revision, &key.revoked_audit(&current, replaced))
            .await?;
        w.commit().await?;
        Ok(SigningKeyRevoked::Revoked {
            key,
            current,
            replaced,
            revision,
        })
    }
}
