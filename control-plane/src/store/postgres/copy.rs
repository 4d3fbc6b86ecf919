//! [`CopyStore`] on PostgreSQL: the export reads every copied table in one REPEATABLE READ
//! transaction (one snapshot of the database, whatever other replicas commit meanwhile); the
//! import writes them in one transaction under the log lock, a few thousand rows per statement
//! (`UNNEST` of column arrays), then the source's log identity into `log_state`.
//!
//! `audit.id` is an identity column: the source's ids are inserted as they are (`OVERRIDING
//! SYSTEM VALUE`) and its sequence is then set past the largest, so the next audit row follows
//! the copied ones.

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgRow};
use tokio_stream::StreamExt;

use super::audit::{audit_columns, audit_from_row};
use super::enrollments::{ENROLLMENT_COLUMN_COUNT, enrollment_columns, enrollment_from_row};
use super::keys::{key_columns, key_from_row};
use super::limits::{export_credits, export_identities, import_identities};
use super::passkeys::{
    passkey_columns, passkey_from_row, passkey_revocation_from_row, revoked_passkey_columns,
};
use super::sessions::{session_columns, session_from_row};
use super::signing_keys::{signing_key_columns, signing_key_from_row};
use super::tokens::{token_columns, token_from_row};
use super::users::{user_columns, user_from_row};
use super::{PgStore, array, backend, db_amount, db_revision, get, log, revision_from_db};
use crate::store::copy::{
    COUNT_ROWS, COUNTED_TABLES, CopyStore, CreditRow, Dump, DumpSummary, EnrollmentRow, EventRow,
};
use crate::store::event_codec::limits_to_column;
use crate::store::tokens::join_scopes;
use crate::store::{StoreError, Voided};

/// Rows per `INSERT`: large enough that a million keys take a few hundred statements, small
/// enough that each stays well inside the statement timeout.
const BATCH: usize = 5_000;

#[async_trait]
impl CopyStore for PgStore {
    async fn export(&self) -> Result<Dump, StoreError> {
        let mut tx = self.read().await?;
        // One SELECT per table, read as it streams in: a large table may take longer than the
        // timeout meant for requests.
        sqlx::query("SET LOCAL statement_timeout = 0")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let dump = export(&mut tx).await?;
        tx.commit().await.map_err(backend)?;
        Ok(dump)
    }

    async fn import(&self, dump: Dump) -> Result<(), StoreError> {
        dump.check_log()?;
        // Under the log lock: no write that appends events can commit meanwhile, on any
        // replica.
        let mut w = self.write().await?;
        let found = summary(w.conn()).await?;
        if !found.is_fresh() {
            return Err(StoreError::NotEmpty {
                found: found.to_string(),
            });
        }
        import(w.conn(), &dump).await?;
        // The copied events were announced when the source committed them: this store's
        // observer starts after them. Held across the commit, so the tail cannot deliver
        // them in between.
        let mut delivered = self.inner.delivery.delivered.lock().await;
        w.commit().await?;
        *delivered = (*delivered).max(dump.log.head);
        Ok(())
    }
}

async fn summary(conn: &mut PgConnection) -> Result<DumpSummary, StoreError> {
    let row = sqlx::query(COUNT_ROWS)
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    let mut counts = [0; COUNTED_TABLES];
    for (index, count) in counts.iter_mut().enumerate() {
        *count = get(&row, index)?;
    }
    Ok(DumpSummary::from_counts(
        log::log_bounds(conn).await?,
        counts,
    ))
}

/// Every row `sql` returns, mapped as it streams in.
async fn rows<T>(
    conn: &mut PgConnection,
    sql: &'static str,
    map: fn(&PgRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stream = sqlx::query(sql).fetch(conn);
    let mut mapped = Vec::new();
    while let Some(row) = stream.next().await {
        mapped.push(map(&row.map_err(backend)?)?);
    }
    Ok(mapped)
}

async fn export(conn: &mut PgConnection) -> Result<Dump, StoreError> {
    Ok(Dump {
        log: log::log_bounds(conn).await?,
        keys: rows(
            conn,
            concat!("SELECT ", key_columns!(), " FROM keys ORDER BY key_id"),
            key_from_row,
        )
        .await?,
        identities: export_identities(conn).await?,
        credits: export_credits(conn)
            .await?
            .into_iter()
            .map(|(holder, state)| CreditRow { holder, state })
            .collect(),
        users: rows(
            conn,
            concat!("SELECT ", user_columns!(), " FROM users ORDER BY user_id"),
            user_from_row,
        )
        .await?,
        passkeys: rows(
            conn,
            concat!(
                "SELECT ",
                passkey_columns!(),
                " FROM passkeys ORDER BY passkey_id"
            ),
            passkey_from_row,
        )
        .await?,
        enrollments: rows(
            conn,
            concat!(
                "SELECT ",
                enrollment_columns!(),
                ", token_hash FROM enrollments ORDER BY token_hash"
            ),
            enrollment_row_from_row,
        )
        .await?,
        sessions: rows(
            conn,
            concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions ORDER BY session_id"
            ),
            session_from_row,
        )
        .await?,
        revoked_passkeys: rows(
            conn,
            concat!(
                "SELECT ",
                revoked_passkey_columns!(),
                " FROM revoked_passkeys ORDER BY passkey_id"
            ),
            passkey_revocation_from_row,
        )
        .await?,
        signing_keys: rows(
            conn,
            concat!(
                "SELECT ",
                signing_key_columns!(),
                " FROM signing_keys ORDER BY key_id"
            ),
            signing_key_from_row,
        )
        .await?,
        events: rows(
            conn,
            "SELECT revision, committed_ms, kind, payload_json FROM events ORDER BY revision",
            |row| {
                Ok(EventRow {
                    revision: revision_from_db(get(row, 0)?)?,
                    committed_unix_ms: get(row, 1)?,
                    kind: get(row, 2)?,
                    payload_json: get(row, 3)?,
                })
            },
        )
        .await?,
        audit: rows(
            conn,
            concat!("SELECT ", audit_columns!(), " FROM audit ORDER BY id"),
            audit_from_row,
        )
        .await?,
        operator_tokens: rows(
            conn,
            concat!(
                "SELECT ",
                token_columns!(),
                " FROM operator_tokens ORDER BY name"
            ),
            token_from_row,
        )
        .await?,
    })
}

/// An enrollment link with the hash of its token: `enrollment_columns!()`, then `token_hash`.
fn enrollment_row_from_row(row: &PgRow) -> Result<EnrollmentRow, StoreError> {
    Ok(EnrollmentRow {
        token_hash: array(get(row, ENROLLMENT_COLUMN_COUNT)?, "enrollment token hash")?,
        record: enrollment_from_row(row)?,
    })
}

/// Writes every row of `dump` and its log identity, inside the caller's transaction. Users
/// first: passkeys and enrollment links refer to them.
async fn import(conn: &mut PgConnection, dump: &Dump) -> Result<(), StoreError> {
    for users in dump.users.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO users (user_id, handle, created_ms, disabled,
                sessions_revoked_before_ms, state_prune_after_ms)
             SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[], $4::BOOLEAN[],
                $5::BIGINT[], $6::BIGINT[])",
        )
        .bind(column(users, |u| u.user_id.clone()))
        .bind(column(users, |u| u.handle.to_vec()))
        .bind(column(users, |u| u.created_unix_ms))
        .bind(column(users, |u| u.disabled))
        .bind(column(users, |u| u.sessions_revoked_before_unix_ms))
        .bind(column(users, |u| u.state_prune_after_unix_ms))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for keys in dump.keys.chunks(BATCH) {
        let meta_json = keys
            .iter()
            .map(|key| {
                serde_json::to_string(&key.meta)
                    .map_err(|e| StoreError::Corrupt(format!("meta of key {}: {e}", key.id)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let limits_json = keys
            .iter()
            .map(|key| limits_to_column(&key.limits))
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "INSERT INTO keys (key_id, key_hash, owner, name, start, enabled, created_ms,
                expires_ms, meta_json, revision, limits_json, identity_id)
             SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                $6::BOOLEAN[], $7::BIGINT[], $8::BIGINT[], $9::TEXT[], $10::BIGINT[],
                $11::TEXT[], $12::TEXT[])",
        )
        .bind(column(keys, |k| k.id.to_string()))
        .bind(column(keys, |k| k.hash.0.to_vec()))
        .bind(column(keys, |k| k.owner.clone()))
        .bind(column(keys, |k| k.name.clone()))
        .bind(column(keys, |k| k.start.clone()))
        .bind(column(keys, |k| k.enabled))
        .bind(column(keys, |k| k.created_unix_ms))
        .bind(column(keys, |k| k.expires_unix_ms))
        .bind(meta_json)
        .bind(column(keys, |k| db_revision(k.revision)))
        .bind(limits_json)
        .bind(column(keys, |k| k.limits.identity.clone()))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for identities in dump.identities.chunks(BATCH) {
        import_identities(&mut *conn, identities).await?;
    }

    for balances in dump.credits.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO credits (holder, remaining, refill_amount, refill_interval_ms,
                next_refill_ms)
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[],
                $5::BIGINT[])",
        )
        .bind(column(balances, |c| c.holder.to_string()))
        .bind(column(balances, |c| db_amount(c.state.remaining)))
        .bind(column(balances, |c| {
            c.state.refill.map(|r| db_amount(r.amount))
        }))
        .bind(column(balances, |c| {
            c.state.refill.map(|r| db_amount(r.interval_ms))
        }))
        .bind(column(balances, |c| c.state.next_refill_unix_ms))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for passkeys in dump.passkeys.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO passkeys (passkey_id, user_id, credential_id, name, created_ms,
                last_used_ms, user_agent, backup_eligible, backed_up, credential_json, aaguid)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::TEXT[],
                $5::BIGINT[], $6::BIGINT[], $7::TEXT[], $8::BOOLEAN[], $9::BOOLEAN[],
                $10::TEXT[], $11::BYTEA[])",
        )
        .bind(column(passkeys, |p| p.passkey_id.clone()))
        .bind(column(passkeys, |p| p.user_id.clone()))
        .bind(column(passkeys, |p| p.credential_id.clone()))
        .bind(column(passkeys, |p| p.name.clone()))
        .bind(column(passkeys, |p| p.created_unix_ms))
        .bind(column(passkeys, |p| p.last_used_unix_ms))
        .bind(column(passkeys, |p| p.user_agent.clone()))
        .bind(column(passkeys, |p| p.backup_eligible))
        .bind(column(passkeys, |p| p.backed_up))
        .bind(column(passkeys, |p| p.credential_json.clone()))
        .bind(column(passkeys, |p| p.aaguid.map(Vec::from)))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for enrollments in dump.enrollments.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO enrollments (token_hash, enrollment_id, user_id, created_ms,
                expires_ms, used_ms, voided_ms, voided_reason, created_by)
             SELECT * FROM UNNEST($1::BYTEA[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                $5::BIGINT[], $6::BIGINT[], $7::BIGINT[], $8::TEXT[], $9::TEXT[])",
        )
        .bind(column(enrollments, |e| e.token_hash.to_vec()))
        .bind(column(enrollments, |e| e.record.enrollment_id.clone()))
        .bind(column(enrollments, |e| e.record.user_id.clone()))
        .bind(column(enrollments, |e| e.record.created_unix_ms))
        .bind(column(enrollments, |e| e.record.expires_unix_ms))
        .bind(column(enrollments, |e| e.record.used_unix_ms))
        .bind(column(enrollments, |e| Voided::columns(e.record.voided).0))
        .bind(column(enrollments, |e| {
            Voided::columns(e.record.voided).1.map(str::to_owned)
        }))
        .bind(column(enrollments, |e| e.record.created_by.clone()))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for sessions in dump.sessions.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, passkey_id, issued_ms, expires_ms,
                revoked_ms)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                $5::BIGINT[], $6::BIGINT[])",
        )
        .bind(column(sessions, |s| s.session_id.clone()))
        .bind(column(sessions, |s| s.user_id.clone()))
        .bind(column(sessions, |s| s.passkey_id.clone()))
        .bind(column(sessions, |s| s.issued_unix_ms))
        .bind(column(sessions, |s| s.expires_unix_ms))
        .bind(column(sessions, |s| s.revoked_unix_ms))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for revocations in dump.revoked_passkeys.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO revoked_passkeys (passkey_id, user_id, revoked_ms, prune_after_ms)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[])",
        )
        .bind(column(revocations, |r| r.passkey_id.clone()))
        .bind(column(revocations, |r| r.user_id.clone()))
        .bind(column(revocations, |r| r.revoked_unix_ms))
        .bind(column(revocations, |r| r.prune_after_unix_ms))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for keys in dump.signing_keys.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO signing_keys (key_id, secret, public_key, created_ms, verify_until_ms,
                revoked_ms, max_session_lifetime_ms)
             SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BYTEA[], $4::BIGINT[],
                $5::BIGINT[], $6::BIGINT[], $7::BIGINT[])",
        )
        .bind(column(keys, |k| k.key_id.clone()))
        .bind(column(keys, |k| k.secret.to_vec()))
        .bind(column(keys, |k| k.public_key.to_vec()))
        .bind(column(keys, |k| k.created_unix_ms))
        .bind(column(keys, |k| k.verify_until_unix_ms))
        .bind(column(keys, |k| k.revoked_unix_ms))
        .bind(column(keys, |k| k.max_session_lifetime_ms))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for tokens in dump.operator_tokens.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO operator_tokens (name, token_hash, scopes, gateway_id, created_ms,
                created_by)
             SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::TEXT[], $4::TEXT[],
                $5::BIGINT[], $6::TEXT[])",
        )
        .bind(column(tokens, |t| t.name.clone()))
        .bind(column(tokens, |t| t.token_hash.to_vec()))
        .bind(column(tokens, |t| join_scopes(&t.scopes)))
        .bind(column(tokens, |t| t.gateway_id.clone()))
        .bind(column(tokens, |t| t.created_unix_ms))
        .bind(column(tokens, |t| t.created_by.clone()))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for events in dump.events.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO events (revision, committed_ms, kind, payload_json)
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[])",
        )
        .bind(column(events, |e| db_revision(e.revision)))
        .bind(column(events, |e| e.committed_unix_ms))
        .bind(column(events, |e| e.kind.clone()))
        .bind(column(events, |e| e.payload_json.clone()))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }

    for entries in dump.audit.chunks(BATCH) {
        sqlx::query(
            "INSERT INTO audit (id, at_ms, actor, action, target, revision, detail_json)
             OVERRIDING SYSTEM VALUE
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[],
                $5::TEXT[], $6::BIGINT[], $7::TEXT[])",
        )
        .bind(column(entries, |e| i64::try_from(e.id).unwrap_or(i64::MAX)))
        .bind(column(entries, |e| e.at_unix_ms))
        .bind(column(entries, |e| e.actor.clone()))
        .bind(column(entries, |e| e.action.clone()))
        .bind(column(entries, |e| e.target.clone()))
        .bind(column(entries, |e| db_revision(e.revision)))
        .bind(column(entries, |e| e.detail_json.clone()))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }
    // The next audit row takes the id after the largest copied one (no row: no change).
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('audit', 'id'), MAX(id)) FROM audit
         HAVING MAX(id) IS NOT NULL",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(backend)?;

    sqlx::query("UPDATE log_state SET log_id = $1, head = $2, oldest_retained = $3 WHERE id = 1")
        .bind(&dump.log.log_id.0)
        .bind(db_revision(dump.log.head))
        .bind(db_revision(dump.log.oldest_retained))
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// One column of `rows`, as an array to `UNNEST`.
fn column<R, T>(rows: &[R], value: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use keygate_test_postgres::TestPostgres;

    use super::*;
    use crate::store::copy::{COPIED_TABLES, TRANSIENT_TABLES};
    use crate::store::suite::Recorder;

    /// The schema (after every migration) has exactly the tables and columns the copy moves,
    /// the transient tables it leaves behind, and the migration bookkeeping.
    #[tokio::test]
    async fn the_copy_moves_every_table_and_column_of_the_schema() {
        let server = TestPostgres::start().unwrap();
        let url = server.create_database("store").unwrap();
        let store = PgStore::open(&url, Arc::new(Recorder::default()))
            .await
            .unwrap();
        let listed = server
            .psql(
                "store",
                "SELECT table_name || '.' || column_name FROM information_schema.columns
                 WHERE table_schema = 'public'",
            )
            .unwrap();
        store.close().await;
        let schema: BTreeSet<String> = listed
            .lines()
            .filter(|line| {
                let table = line.split_once('.').map_or(*line, |(table, _)| table);
                table != "_sqlx_migrations" && !TRANSIENT_TABLES.contains(&table)
            })
            .map(str::to_owned)
            .collect();
        let copied: BTreeSet<String> = COPIED_TABLES
            .iter()
            .flat_map(|(table, columns)| {
                columns
                    .iter()
                    .map(move |column| format!("{table}.{column}"))
            })
            .collect();
        assert_eq!(schema, copied);
    }
}
