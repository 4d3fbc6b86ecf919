//! [`SigningKeyStore`] on PostgreSQL: the `signing_keys` table, with at most one current key
//! (`verify_until_ms` NULL; a unique partial index keeps it so). Every insert or retirement
//! appends a `SigningKey` event, so both writes take the log lock first: of two replicas
//! starting at once, one makes the first key and the other finds it.

use async_trait::async_trait;
use keygate_proto::{Change, Revision};
use sqlx::postgres::{PgConnection, PgRow};

use super::log::Writer;
use super::{PgStore, array, backend, get};
use crate::store::{Rotated, SigningKeyRecord, SigningKeyStore, StoreError};

/// The signing key columns, in [`signing_key_from_row`]'s order.
macro_rules! signing_key_columns {
    () => {
        "key_id, secret, public_key, created_ms, verify_until_ms"
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
    })
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
            ") VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(&key.key_id)
        .bind(&key.secret[..])
        .bind(&key.public_key[..])
        .bind(key.created_unix_ms)
        .bind(key.verify_until_unix_ms)
        .execute(self.conn())
        .await
        .map_err(backend)?;
        self.append(&Change::SigningKey(key.verifying_key()))
    }
}

#[async_trait]
impl SigningKeyStore for PgStore {
    async fn signing_key(&self, key_id: &str) -> Result<Option<SigningKeyRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            signing_key_columns!(),
            " FROM signing_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(self.pool())
        .await
        .map_err(backend)?
        .as_ref()
        .map(signing_key_from_row)
        .transpose()
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
        // Retire first (the unique index allows one current key), but announce the new key
        // first, so a gateway never has no current key to expect.
        let retired = match previous {
            Some(mut key) => {
                key.verify_until_unix_ms = Some(retire_until_unix_ms);
                sqlx::query("UPDATE signing_keys SET verify_until_ms = $2 WHERE key_id = $1")
                    .bind(&key.key_id)
                    .bind(retire_until_unix_ms)
                    .execute(w.conn())
                    .await
                    .map_err(backend)?;
                Some(key)
            }
            None => None,
        };
        let current = next.into_current(w.now().await?);
        let mut revision = w.insert_signing_key(&current).await?;
        if let Some(retired) = &retired {
            revision = w.append(&Change::SigningKey(retired.verifying_key()))?;
        }
        let rotated = Rotated {
            current,
            retired,
            revision,
        };
        w.audit(actor, revision, &rotated.audit()).await?;
        w.commit().await?;
        Ok(rotated)
    }
}
