//! [`CopyStore`] on SQLite: the export reads every copied table in one read transaction (WAL:
//! one snapshot of the file, whatever commits meanwhile); the import writes them through the
//! writer, in one immediate transaction, and then the source's log identity into `log_state`.
//!
//! `audit.id` is `AUTOINCREMENT`: inserting the source's ids moves SQLite's own counter past
//! them, so the next audit row follows the copied ones.

use async_trait::async_trait;
use keygate_proto::{KeyHash, LogId, PasskeyRevocation, Revision};
use rusqlite::{Row, Transaction, params};

use super::{SqliteStore, backend, collect, corrupt, log};
use crate::store::copy::{COUNT_ROWS, CopyStore, Dump, DumpSummary, EnrollmentRow, EventRow};
use crate::store::{
    AuditEntry, EnrollmentRecord, KeyRecord, LogBounds, PasskeyRecord, SessionRecord,
    SigningKeyRecord, StoreError, UserRecord,
};

#[async_trait]
impl CopyStore for SqliteStore {
    async fn export(&self) -> Result<Dump, StoreError> {
        self.read(export).await
    }

    async fn import(&self, dump: Dump) -> Result<(), StoreError> {
        dump.check_log()?;
        // Through the writer: no other write interleaves, and the writer appends no event, so
        // the observer hears nothing of the copied history.
        self.write(move |w| {
            let found = summary(w.tx)?;
            if !found.is_fresh() {
                return Err(StoreError::NotEmpty {
                    found: found.to_string(),
                });
            }
            import(w.tx, &dump)
        })
        .await
    }
}

fn summary(tx: &Transaction<'_>) -> Result<DumpSummary, StoreError> {
    let counts = tx
        .query_row(COUNT_ROWS, [], |row| {
            let mut counts = [0; 9];
            for (index, count) in counts.iter_mut().enumerate() {
                *count = row.get(index)?;
            }
            Ok(counts)
        })
        .map_err(backend)?;
    Ok(DumpSummary::from_counts(log::log_bounds(tx)?, counts))
}

fn export(tx: &Transaction<'_>) -> Result<Dump, StoreError> {
    Ok(Dump {
        log: log::log_bounds(tx)?,
        keys: collect(
            tx,
            "SELECT key_id, key_hash, owner, name, start, enabled, created_ms, expires_ms,
                meta_json, revision
             FROM keys ORDER BY key_id",
            [],
            key_from_row,
        )?,
        users: collect(
            tx,
            "SELECT user_id, handle, created_ms, disabled, sessions_revoked_before_ms,
                state_prune_after_ms
             FROM users ORDER BY user_id",
            [],
            user_from_row,
        )?,
        passkeys: collect(
            tx,
            "SELECT passkey_id, user_id, credential_id, name, created_ms, last_used_ms,
                user_agent, backup_eligible, backed_up, credential_json
             FROM passkeys ORDER BY passkey_id",
            [],
            passkey_from_row,
        )?,
        enrollments: collect(
            tx,
            "SELECT token_hash, enrollment_id, user_id, created_ms, expires_ms, used_ms
             FROM enrollments ORDER BY token_hash",
            [],
            enrollment_from_row,
        )?,
        sessions: collect(
            tx,
            "SELECT session_id, user_id, passkey_id, issued_ms, expires_ms, revoked_ms
             FROM sessions ORDER BY session_id",
            [],
            |row| {
                Ok(SessionRecord {
                    session_id: row.get(0)?,
                    user_id: row.get(1)?,
                    passkey_id: row.get(2)?,
                    issued_unix_ms: row.get(3)?,
                    expires_unix_ms: row.get(4)?,
                    revoked_unix_ms: row.get(5)?,
                })
            },
        )?,
        revoked_passkeys: collect(
            tx,
            "SELECT passkey_id, user_id, revoked_ms, prune_after_ms
             FROM revoked_passkeys ORDER BY passkey_id",
            [],
            |row| {
                Ok(PasskeyRevocation {
                    passkey_id: row.get(0)?,
                    user_id: row.get(1)?,
                    revoked_unix_ms: row.get(2)?,
                    prune_after_unix_ms: row.get(3)?,
                })
            },
        )?,
        signing_keys: collect(
            tx,
            "SELECT key_id, secret, public_key, created_ms, verify_until_ms
             FROM signing_keys ORDER BY key_id",
            [],
            signing_key_from_row,
        )?,
        events: collect(
            tx,
            "SELECT revision, committed_ms, kind, payload_json FROM events ORDER BY revision",
            [],
            |row| {
                Ok(EventRow {
                    revision: Revision(row.get(0)?),
                    committed_unix_ms: row.get(1)?,
                    kind: row.get(2)?,
                    payload_json: row.get(3)?,
                })
            },
        )?,
        audit: collect(
            tx,
            "SELECT id, at_ms, actor, action, target, revision, detail_json
             FROM audit ORDER BY id",
            [],
            |row| {
                Ok(AuditEntry {
                    id: row.get(0)?,
                    at_unix_ms: row.get(1)?,
                    actor: row.get(2)?,
                    action: row.get(3)?,
                    target: row.get(4)?,
                    revision: Revision(row.get(5)?),
                    detail_json: row.get(6)?,
                })
            },
        )?,
    })
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let id: String = row.get(0)?;
    let hash: Vec<u8> = row.get(1)?;
    let meta_json: String = row.get(8)?;
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
        revision: Revision(row.get(9)?),
    })
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    let handle: Vec<u8> = row.get(1)?;
    Ok(UserRecord {
        user_id: row.get(0)?,
        handle: handle.try_into().map_err(|_| corrupt("user handle"))?,
        created_unix_ms: row.get(2)?,
        disabled: row.get(3)?,
        sessions_revoked_before_unix_ms: row.get(4)?,
        state_prune_after_unix_ms: row.get(5)?,
    })
}

fn passkey_from_row(row: &Row<'_>) -> rusqlite::Result<PasskeyRecord> {
    Ok(PasskeyRecord {
        passkey_id: row.get(0)?,
        user_id: row.get(1)?,
        credential_id: row.get(2)?,
        name: row.get(3)?,
        created_unix_ms: row.get(4)?,
        last_used_unix_ms: row.get(5)?,
        user_agent: row.get(6)?,
        backup_eligible: row.get(7)?,
        backed_up: row.get(8)?,
        credential_json: row.get(9)?,
    })
}

fn enrollment_from_row(row: &Row<'_>) -> rusqlite::Result<EnrollmentRow> {
    let token_hash: Vec<u8> = row.get(0)?;
    Ok(EnrollmentRow {
        token_hash: token_hash
            .try_into()
            .map_err(|_| corrupt("enrollment token hash"))?,
        record: EnrollmentRecord {
            enrollment_id: row.get(1)?,
            user_id: row.get(2)?,
            created_unix_ms: row.get(3)?,
            expires_unix_ms: row.get(4)?,
            used_unix_ms: row.get(5)?,
        },
    })
}

fn signing_key_from_row(row: &Row<'_>) -> rusqlite::Result<SigningKeyRecord> {
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

/// Writes every row of `dump` and its log identity, inside the caller's transaction. Users
/// first: passkeys and enrollment links refer to them.
fn import(tx: &Transaction<'_>, dump: &Dump) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare(
            "INSERT INTO users (user_id, handle, created_ms, disabled,
                sessions_revoked_before_ms, state_prune_after_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    for user in &dump.users {
        insert
            .execute(params![
                user.user_id,
                &user.handle[..],
                user.created_unix_ms,
                user.disabled,
                user.sessions_revoked_before_unix_ms,
                user.state_prune_after_unix_ms
            ])
            .map_err(backend)?;
    }

    let mut insert = tx
        .prepare(
            "INSERT INTO keys (key_id, key_hash, owner, name, start, enabled, created_ms,
                expires_ms, meta_json, revision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(backend)?;
    for key in &dump.keys {
        let meta_json = serde_json::to_string(&key.meta)
            .map_err(|e| StoreError::Corrupt(format!("meta of key {}: {e}", key.id)))?;
        insert
            .execute(params![
                key.id.to_string(),
                &key.hash.0[..],
                key.owner,
                key.name,
                key.start,
                key.enabled,
                key.created_unix_ms,
                key.expires_unix_ms,
                meta_json,
                key.revision.0
            ])
            .map_err(backend)?;
    }

    let mut insert = tx
        .prepare(
            "INSERT INTO passkeys (passkey_id, user_id, credential_id, name, created_ms,
                last_used_ms, user_agent, backup_eligible, backed_up, credential_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(backend)?;
    for passkey in &dump.passkeys {
        insert
            .execute(params![
                passkey.passkey_id,
                passkey.user_id,
                passkey.credential_id,
                passkey.name,
                passkey.created_unix_ms,
                passkey.last_used_unix_ms,
                passkey.user_agent,
                passkey.backup_eligible,
                passkey.backed_up,
                passkey.credential_json
            ])
            .map_err(backend)?;
    }

    let mut insert = tx
        .prepare(
            "INSERT INTO enrollments (token_hash, enrollment_id, user_id, created_ms,
                expires_ms, used_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    for enrollment in &dump.enrollments {
        let record = &enrollment.record;
        insert
            .execute(params![
                &enrollment.token_hash[..],
                record.enrollment_id,
                record.user_id,
                record.created_unix_ms,
                record.expires_unix_ms,
                record.used_unix_ms
            ])
            .map_err(backend)?;
    }

    let mut insert = tx
        .prepare(
            "INSERT INTO sessions (session_id, user_id, passkey_id, issued_ms, expires_ms,
                revoked_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(backend)?;
    for session in &dump.sessions {
        insert
            .execute(params![
                session.session_id,
                session.user_id,
                session.passkey_id,
                session.issued_unix_ms,
                session.expires_unix_ms,
                session.revoked_unix_ms
            ])
            .map_err(backend)?;
    }

    let mut insert = tx
        .prepare(
            "INSERT INTO revoked_passkeys (passkey_id, user_id, revoked_ms, prune_after_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    for revocation in &dump.revoked_passkeys {
        insert
            .execute(params![
                revocation.passkey_id,
                revocation.user_id,
                revocation.revoked_unix_ms,
                revocation.prune_after_unix_ms
            ])
            .map_err(backend)?;
    }

    let mut insert = tx
        .prepare(
            "INSERT INTO signing_keys (key_id, secret, public_key, created_ms, verify_until_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(backend)?;
    for key in &dump.signing_keys {
        insert
            .execute(params![
                key.key_id,
                &key.secret[..],
                &key.public_key[..],
                key.created_unix_ms,
                key.verify_until_unix_ms
            ])
            .map_err(backend)?;
    }

    let mut insert = tx
        .prepare(
            "INSERT INTO events (revision, committed_ms, kind, payload_json)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?;
    for event in &dump.events {
        insert
            .execute(params![
                event.revision.0,
                event.committed_unix_ms,
                event.kind,
                event.payload_json
            ])
            .map_err(backend)?;
    }

    let mut insert = tx
        .prepare(
            "INSERT INTO audit (id, at_ms, actor, action, target, revision, detail_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(backend)?;
    for entry in &dump.audit {
        insert
            .execute(params![
                entry.id,
                entry.at_unix_ms,
                entry.actor,
                entry.action,
                entry.target,
                entry.revision.0,
                entry.detail_json
            ])
            .map_err(backend)?;
    }

    let LogBounds {
        log_id: LogId(log_id),
        head,
        oldest_retained,
    } = &dump.log;
    tx.execute(
        "UPDATE log_state SET log_id = ?1, head = ?2, oldest_retained = ?3 WHERE id = 1",
        params![log_id, head.0, oldest_retained.0],
    )
    .map_err(backend)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::store::copy::{COPIED_TABLES, TRANSIENT_TABLES};
    use crate::store::suite::Recorder;

    /// The schema (after every migration) has exactly the tables and columns the copy moves,
    /// the transient tables it leaves behind, and the migration bookkeeping.
    #[tokio::test]
    async fn the_copy_moves_every_table_and_column_of_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            &dir.path().join("keygate.db"),
            Arc::new(Recorder::default()),
        )
        .await
        .unwrap();
        let schema: BTreeSet<(String, String)> = store
            .read(|tx| {
                collect(
                    tx,
                    "SELECT m.name, c.name FROM sqlite_schema AS m, pragma_table_info(m.name) AS c
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
                    [],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                )
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|(table, _)| {
                table != "schema_migrations" && !TRANSIENT_TABLES.contains(&table.as_str())
            })
            .collect();
        let copied: BTreeSet<(String, String)> = COPIED_TABLES
            .iter()
            .flat_map(|(table, columns)| {
                columns
                    .iter()
                    .map(|column| ((*table).to_owned(), (*column).to_owned()))
            })
            .collect();
        assert_eq!(schema, copied);
    }
}
