//! [`SigningKeyStore`] on SQLite: the `signing_keys` table, with at most one current key
//! (`verify_until_ms` NULL; a unique partial index keeps it so). Every insert or retirement
//! appends a `SigningKey` event.

use async_trait::async_trait;
use keygate_proto::{Change, Revision};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::log::Writer;
use super::{SqliteStore, backend, corrupt, execute};
use crate::store::{Rotated, SigningKeyRecord, SigningKeyStore, StoreError};

pub(super) const SIGNING_KEY_COLUMNS: &str =
    "key_id, secret, public_key, created_ms, verify_until_ms";

pub(super) fn signing_key_from_row(row: &Row<'_>) -> rusqlite::Result<SigningKeyRecord> {
    let secret: Vec<u8> = row.get(1)?;
    let public_key: Vec<u8> = row.get(2)?;
    Ok(SigningKeyRecord {
        key_id: row.get(0)?,
        secret: secret
            .try_into()
            .map_err(|_| corrupt("signing key secret"))?,
        public_key: public_key
            .try_into()
            .map_err(|_| corrupt("signing key public key"))?,
        created_unix_ms: row.get(3)?,
        verify_until_unix_ms: row.get(4)?,
    })
}

fn current_signing_key(tx: &Transaction<'_>) -> Result<Option<SigningKeyRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE verify_until_ms IS NULL"),
        [],
        signing_key_from_row,
    )
    .optional()
    .map_err(backend)
}

/// Inserts `key` as it is (a new key, or a copy).
pub(super) fn insert_signing_key(
    tx: &Transaction<'_>,
    key: &SigningKeyRecord,
) -> Result<(), StoreError> {
    execute(
        tx,
        &format!("INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
        params![
            key.key_id,
            &key.secret[..],
            &key.public_key[..],
            key.created_unix_ms,
            key.verify_until_unix_ms
        ],
    )
}

impl Writer<'_> {
    /// Inserts `key` and appends its `SigningKey` event.
    fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<Revision, StoreError> {
        insert_signing_key(self.tx, key)?;
        self.append(Change::SigningKey(key.verifying_key()))
    }
}

#[async_trait]
impl SigningKeyStore for SqliteStore {
    async fn signing_key(&self, key_id: &str) -> Result<Option<SigningKeyRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.read(move |tx| {
            tx.query_row(
                &format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE key_id = ?1"),
                params![key_id],
                signing_key_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn current_signing_key(&self) -> Result<Option<SigningKeyRecord>, StoreError> {
        self.read(current_signing_key).await
    }

    async fn ensure_signing_key(
        &self,
        candidate: SigningKeyRecord,
        actor: &str,
    ) -> Result<SigningKeyRecord, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            if let Some(current) = current_signing_key(w.tx)? {
                return Ok(current);
            }
            let key = candidate.into_current(w.now_unix_ms);
            let revision = w.insert_signing_key(&key)?;
            w.audit(&actor, revision, &key.created_audit())?;
            Ok(key)
        })
        .await
    }

    async fn rotate_signing_key(
        &self,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Rotated, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let previous = current_signing_key(w.tx)?;
            // Retire first (the unique index allows one current key), but announce the new key
            // first, so a gateway never has no current key to expect.
            let retired = previous
                .map(|mut key| -> Result<SigningKeyRecord, StoreError> {
                    key.verify_until_unix_ms = Some(retire_until_unix_ms);
                    w.tx.execute(
                        "UPDATE signing_keys SET verify_until_ms = ?2 WHERE key_id = ?1",
                        params![key.key_id, retire_until_unix_ms],
                    )
                    .map_err(backend)?;
                    Ok(key)
                })
                .transpose()?;
            let current = next.into_current(w.now_unix_ms);
            let mut revision = w.insert_signing_key(&current)?;
            if let Some(retired) = &retired {
                revision = w.append(Change::SigningKey(retired.verifying_key()))?;
            }
            let rotated = Rotated {
                current,
                retired,
                revision,
            };
            w.audit(&actor, revision, &rotated.audit())?;
            Ok(rotated)
        })
        .await
    }
}
