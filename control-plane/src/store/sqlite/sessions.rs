//! [`SessionStore`] on SQLite: the `sessions` table (no token is stored: tokens are signed and
//! name their row), the session state gateways replicate, and pruning what no one needs any
//! more.

use async_trait::async_trait;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{Change, Revision, SessionRevocation};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::log::Writer;
use super::passkeys::{REVOKED_PASSKEY_COLUMNS, get_passkey, passkey_revocation_from_row};
use super::signing_keys::{SIGNING_KEY_COLUMNS, signing_key_from_row};
use super::users::{USER_COLUMNS, get_user, user_from_row};
use super::{SqliteStore, backend, ceremonies, collect, execute};
use crate::store::{
    EnrollmentRecord, NewSession, Pruned, SessionContext, SessionRecord, SessionState,
    SessionStore, StoreError,
};

pub(super) const SESSION_COLUMNS: &str =
    "session_id, user_id, passkey_id, issued_ms, expires_ms, revoked_ms";

pub(super) fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        session_id: row.get(0)?,
        user_id: row.get(1)?,
        passkey_id: row.get(2)?,
        issued_unix_ms: row.get(3)?,
        expires_unix_ms: row.get(4)?,
        revoked_unix_ms: row.get(5)?,
    })
}

pub(super) fn get_session(
    tx: &Transaction<'_>,
    session_id: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"),
        params![session_id],
        session_from_row,
    )
    .optional()
    .map_err(backend)
}

/// The replicated session state at `now`, read inside the caller's transaction (a snapshot
/// reads it in the same transaction as the keys and the head, so all of it is at one revision).
pub(super) fn session_state(
    tx: &Transaction<'_>,
    now_unix_ms: i64,
) -> Result<SessionState, StoreError> {
    let signing_keys = collect(
        tx,
        &format!(
            "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys
             WHERE verify_until_ms IS NULL OR verify_until_ms > ?1 ORDER BY created_ms, key_id"
        ),
        params![now_unix_ms],
        |row| signing_key_from_row(row).map(|key| key.verifying_key()),
    )?;
    let revoked_sessions = collect(
        tx,
        "SELECT session_id, user_id, expires_ms FROM sessions
         WHERE revoked_ms IS NOT NULL AND expires_ms > ?1 ORDER BY session_id",
        params![now_unix_ms],
        |row| {
            Ok(SessionRevocation {
                session_id: row.get(0)?,
                user_id: row.get(1)?,
                prune_after_unix_ms: row.get(2)?,
            })
        },
    )?;
    let revoked_passkeys = collect(
        tx,
        &format!(
            "SELECT {REVOKED_PASSKEY_COLUMNS} FROM revoked_passkeys
             WHERE prune_after_ms > ?1 ORDER BY passkey_id"
        ),
        params![now_unix_ms],
        passkey_revocation_from_row,
    )?;
    let users = collect(
        tx,
        &format!(
            "SELECT {USER_COLUMNS} FROM users
             WHERE disabled = 1 OR state_prune_after_ms > ?1 ORDER BY user_id"
        ),
        params![now_unix_ms],
        |row| user_from_row(row).map(|user| user.state()),
    )?;
    Ok(SessionState {
        signing_keys,
        revoked_sessions,
        revoked_passkeys,
        users,
    })
}

/// Inserts `session` as it is (a new session, or a copy).
pub(super) fn insert_session(
    tx: &Transaction<'_>,
    session: &SessionRecord,
) -> Result<(), StoreError> {
    execute(
        tx,
        &format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            session.session_id,
            session.user_id,
            session.passkey_id,
            session.issued_unix_ms,
            session.expires_unix_ms,
            session.revoked_unix_ms
        ],
    )
}

impl Writer<'_> {
    /// Inserts a session issued now (inside this transaction, so ordered with revocations).
    pub(super) fn open_session(
        &self,
        new: &NewSession,
        user_id: &str,
        passkey_id: &str,
    ) -> Result<SessionRecord, StoreError> {
        let session = new.issue(user_id, passkey_id, self.now_unix_ms);
        insert_session(self.tx, &session)?;
        Ok(session)
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn revoke_session(
        &self,
        session_id: &str,
        actor: &str,
    ) -> Result<Option<Revision>, StoreError> {
        let (session_id, actor) = (session_id.to_owned(), actor.to_owned());
        self.write(move |w| {
            let Some(session) = get_session(w.tx, &session_id)? else {
                return Ok(None);
            };
            if session.revoked_unix_ms.is_some() {
                return Ok(None);
            }
            w.tx.execute(
                "UPDATE sessions SET revoked_ms = ?2 WHERE session_id = ?1",
                params![session.session_id, w.now_unix_ms],
            )
            .map_err(backend)?;
            let revision = w.append(Change::SessionRevoked(session.revocation()))?;
            w.audit(&actor, revision, &session.revoked_audit())?;
            Ok(Some(revision))
        })
        .await
    }

    async fn session_context(
        &self,
        session_id: &str,
    ) -> Result<Option<SessionContext>, StoreError> {
        let session_id = session_id.to_owned();
        self.read(move |tx| {
            let Some(session) = get_session(tx, &session_id)? else {
                return Ok(None);
            };
            let user = get_user(tx, &session.user_id)?;
            let passkey_exists = get_passkey(tx, &session.passkey_id)?.is_some();
            Ok(Some(SessionContext {
                session,
                user,
                passkey_exists,
            }))
        })
        .await
    }

    async fn session_state(&self) -> Result<SessionState, StoreError> {
        self.read(|tx| session_state(tx, now_unix_ms())).await
    }

    async fn prune(&self, now_unix_ms: i64) -> Result<Pruned, StoreError> {
        self.write(move |w| {
            let run = |sql: &str, cutoff: i64| w.tx.execute(sql, params![cutoff]).map_err(backend);
            let pruned = Pruned {
                signing_keys: run(
                    "DELETE FROM signing_keys WHERE verify_until_ms IS NOT NULL
                        AND verify_until_ms <= ?1",
                    now_unix_ms,
                )?,
                revoked_passkeys: run(
                    "DELETE FROM revoked_passkeys WHERE prune_after_ms <= ?1",
                    now_unix_ms,
                )?,
                sessions: run("DELETE FROM sessions WHERE expires_ms <= ?1", now_unix_ms)?,
                enrollments: run(
                    "DELETE FROM enrollments WHERE expires_ms <= ?1",
                    EnrollmentRecord::prune_cutoff(now_unix_ms),
                )?,
            };
            // Ceremonies abandoned between begin and finish; not counted in `Pruned`, which
            // reports what gateways also prune.
            ceremonies::delete_expired(w.tx, now_unix_ms)?;
            Ok(pruned)
        })
        .await
    }
}
