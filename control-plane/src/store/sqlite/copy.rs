//! [`CopyStore`] on SQLite: the export reads every copied table in one read transaction (WAL:
//! one snapshot of the file, whatever commits meanwhile); the import writes them through the
//! writer, in one immediate transaction, and then the source's log identity into `log_state`.
//!
//! `audit.id` is `AUTOINCREMENT`: inserting the source's ids moves SQLite's own counter past
//! them, so the next audit row follows the copied ones.

use async_trait::async_trait;
use keygate_proto::{LogId, Revision};
use rusqlite::{Row, Transaction, params};

use super::audit::{AUDIT_COLUMNS, audit_from_row};
use super::enrollments::{
    ENROLLMENT_COLUMN_COUNT, ENROLLMENT_COLUMNS, enrollment_from_row, insert_enrollment,
};
use super::keys::{KEY_COLUMNS, insert_key, key_from_row};
use super::limits::{export_credits, export_identities, insert_credits, insert_identity};
use super::passkeys::{
    PASSKEY_COLUMNS, REVOKED_PASSKEY_COLUMNS, insert_passkey, insert_passkey_revocation,
    passkey_from_row, passkey_revocation_from_row,
};
use super::sessions::{SESSION_COLUMNS, insert_session, session_from_row};
use super::signing_keys::{SIGNING_KEY_COLUMNS, insert_signing_key, signing_key_from_row};
use super::tokens::{TOKEN_COLUMNS, insert_token, token_from_row};
use super::users::{USER_COLUMNS, insert_user, user_from_row};
use super::{SqliteStore, backend, collect, corrupt, log};
use crate::store::copy::{
    COUNT_ROWS, COUNTED_TABLES, CopyStore, CreditRow, Dump, DumpSummary, EnrollmentRow, EventRow,
};
use crate::store::{LogBounds, StoreError};

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
            let mut counts = [0; COUNTED_TABLES];
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
            &format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY key_id"),
            [],
            key_from_row,
        )?,
        identities: export_identities(tx)?,
        credits: export_credits(tx)?
            .into_iter()
            .map(|(holder, state)| CreditRow { holder, state })
            .collect(),
        users: collect(
            tx,
            &format!("SELECT {USER_COLUMNS} FROM users ORDER BY user_id"),
            [],
            user_from_row,
        )?,
        passkeys: collect(
            tx,
            &format!("SELECT {PASSKEY_COLUMNS} FROM passkeys ORDER BY passkey_id"),
            [],
            passkey_from_row,
        )?,
        enrollments: collect(
            tx,
            &format!(
                "SELECT {ENROLLMENT_COLUMNS}, token_hash FROM enrollments ORDER BY token_hash"
            ),
            [],
            enrollment_row_from_row,
        )?,
        sessions: collect(
            tx,
            &format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY session_id"),
            [],
            session_from_row,
        )?,
        revoked_passkeys: collect(
            tx,
            &format!("SELECT {REVOKED_PASSKEY_COLUMNS} FROM revoked_passkeys ORDER BY passkey_id"),
            [],
            passkey_revocation_from_row,
        )?,
        signing_keys: collect(
            tx,
            &format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY key_id"),
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
            &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"),
            [],
            audit_from_row,
        )?,
        operator_tokens: collect(
            tx,
            &format!("SELECT {TOKEN_COLUMNS} FROM operator_tokens ORDER BY name"),
            [],
            token_from_row,
        )?,
    })
}

/// An enrollment link with the hash of its token: [`ENROLLMENT_COLUMNS`], then `token_hash`.
fn enrollment_row_from_row(row: &Row<'_>) -> rusqlite::Result<EnrollmentRow> {
    let token_hash: Vec<u8> = row.get(ENROLLMENT_COLUMN_COUNT)?;
    Ok(EnrollmentRow {
        token_hash: token_hash
            .try_into()
            .map_err(|_| corrupt("enrollment token hash"))?,
        record: enrollment_from_row(row)?,
    })
}

/// Writes every row of `dump` and its log identity, inside the caller's transaction. Users
/// first: passkeys and enrollment links refer to them.
fn import(tx: &Transaction<'_>, dump: &Dump) -> Result<(), StoreError> {
    for user in &dump.users {
        insert_user(tx, user)?;
    }
    for key in &dump.keys {
        insert_key(tx, key)?;
    }
    for identity in &dump.identities {
        insert_identity(tx, identity)?;
    }
    for row in &dump.credits {
        insert_credits(tx, &row.holder, &row.state)?;
    }
    for passkey in &dump.passkeys {
        insert_passkey(tx, passkey)?;
    }
    for enrollment in &dump.enrollments {
        insert_enrollment(tx, &enrollment.token_hash, &enrollment.record)?;
    }
    for session in &dump.sessions {
        insert_session(tx, session)?;
    }
    for revocation in &dump.revoked_passkeys {
        insert_passkey_revocation(tx, revocation)?;
    }
    for key in &dump.signing_keys {
        insert_signing_key(tx, key)?;
    }
    for token in &dump.operator_tokens {
        insert_token(tx, token)?;
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
