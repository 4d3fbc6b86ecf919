//! [`SigningKeyStore`] on SQLite: the `signing_keys` table, with at most one current key
//! (`verify_until_ms` NULL; a unique partial index keeps it so). Every insert, retirement or
//! revocation (`revoked_ms` set) appends a `SigningKey` event.

use async_trait::async_trait;
use keygate_proto::{Change, Revision};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::log::Writer;
use super::{SqliteStore, backend, collect, corrupt, execute};
use crate::store::{Rotated, SigningKeyRecord, SigningKeyRevoked, SigningKeyStore, StoreError};

pub(super) const SIGNING_KEY_COLUMNS: &str =
    "key_id, secret, public_key, created_ms, verify_until_ms, revoked_ms, max_session_lifetime_ms";

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
        revoked_unix_ms: row.get(5)?,
        max_session_lifetime_ms: row.get(6)?,
    })
}

fn get_signing_key(
    tx: &Transaction<'_>,
    key_id: &str,
) -> Result<Option<SigningKeyRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE key_id = ?1"),
        params![key_id],
        signing_key_from_row,
    )
    .optional()
    .map_err(backend)
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
        &format!(
            "INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        ),
        params![
            key.key_id,
            &key.secret[..],
            &key.public_key[..],
            key.created_unix_ms,
            key.verify_until_unix_ms,
            key.revoked_unix_ms,
            key.max_session_lifetime_ms
        ],
    )
}

impl Writer<'_> {
    /// Inserts `key` and appends its `SigningKey` event.
    fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<Revision, StoreError> {
        insert_signing_key(self.tx, key)?;
        self.append(Change::SigningKey(key.verifying_key()))
    }

    /// Makes `next` current and retires `previous` (the current key, if any) until
    /// `retire_until_unix_ms`, with its events and audit row.
    fn rotate_signing_key(
        &mut self,
        previous: Option<SigningKeyRecord>,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Rotated, StoreError> {
        // Retire first (the unique index allows one current key), but announce the new key
        // first, so a gateway never has no current key to expect.
        let retired = previous
            .map(|mut key| -> Result<SigningKeyRecord, StoreError> {
                key.verify_until_unix_ms = Some(retire_until_unix_ms);
                self.tx
                    .execute(
                        "UPDATE signing_keys SET verify_until_ms = ?2 WHERE key_id = ?1",
                        params![key.key_id, retire_until_unix_ms],
                    )
                    .map_err(backend)?;
                Ok(key)
            })
            .transpose()?;
        let current = next.into_current(self.now_unix_ms);
        let mut revision = self.insert_signing_key(&current)?;
        if let Some(retired) = &retired {
            revision = self.append(Change::SigningKey(retired.verifying_key()))?;
        }
        let rotated = Rotated {
            current,
            retired,
            revision,
        };
        self.audit(actor, revision, &rotated.audit())?;
        Ok(rotated)
    }
}

#[async_trait]
impl SigningKeyStore for SqliteStore {
    async fn signing_key(&self, key_id: &str) -> Result<Option<SigningKeyRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.read(move |tx| get_signing_key(tx, &key_id)).await
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
            w.rotate_signing_key(previous, next, retire_until_unix_ms, &actor)
        })
        .await
    }

    async fn rotate_signing_key_for_lifetime(
        &self,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Option<Rotated>, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| match current_signing_key(w.tx)? {
            Some(current) if current.lifetime_differs_from(&next) => w
                .rotate_signing_key(Some(current), next, retire_until_unix_ms, &actor)
                .map(Some),
            _ => Ok(None),
        })
        .await
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.read(|tx| {
            collect(
                tx,
                &format!(
                    "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys
                     ORDER BY created_ms DESC, key_id DESC"
                ),
                [],
                signing_key_from_row,
            )
        })
        .await
    }

    async fn revoke_signing_key(
        &self,
        key_id: &str,
        next: SigningKeyRecord,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<SigningKeyRevoked, StoreError> {
        let (key_id, actor) = (key_id.to_owned(), actor.to_owned());
        self.write(move |w| {
            let Some(key) = get_signing_key(w.tx, &key_id)? else {
                return Ok(SigningKeyRevoked::NotFound);
            };
            if key.revoked_unix_ms.is_some() {
                return Ok(SigningKeyRevoked::AlreadyRevoked {
                    key,
                    current: current_signing_key(w.tx)?,
                    head: w.head(),
                });
            }
            let key = key.revoke(w.now_unix_ms, session_lifetime_ms);
            // Revoke first (the unique index allows one current key), but announce the new
            // current key first, so a gateway never has no current key to expect.
            w.tx.execute(
                "UPDATE signing_keys SET verify_until_ms = ?2, revoked_ms = ?3 WHERE key_id = ?1",
                params![key.key_id, key.verify_until_unix_ms, key.revoked_unix_ms],
            )
            .map_err(backend)?;
            let (current, replaced) = SigningKeyRecord::current_after_revocation(
                current_signing_key(w.tx)?,
                next,
                w.now_unix_ms,
            );
            if replaced {
                w.insert_signing_key(&current)?;
            }
            let revision = w.append(Change::SigningKey(key.verifying_key()))?;
            w.audit(&actor, revision, &key.revoked_audit(&current, replaced))?;
            Ok(SigningKeyRevoked::Revoked {
                key,
                current,
                replaced,
                revision,
            })
        })
        .await
    }
}
