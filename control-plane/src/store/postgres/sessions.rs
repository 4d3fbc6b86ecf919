//! [`SessionStore`] on PostgreSQL: the `sessions` table (no token is stored: tokens are signed
//! and name their row), the session state gateways replicate, and pruning what no one needs
//! any more.

use async_trait::async_trait;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{Change, Revision, SessionRevocation};
use sqlx::postgres::{PgConnection, PgRow};

use super::log::Writer;
use super::passkeys::{get_passkey, passkey_revocation_from_row, revoked_passkey_columns};
use super::signing_keys::{signing_key_columns, signing_key_from_row};
use super::users::{UserLock, get_user, user_columns, user_from_row};
use super::{PgStore, backend, ceremonies, get};
use crate::store::{
    EnrollmentRecord, NewSession, Pruned, SessionContext, SessionRecord, SessionState,
    SessionStore, StoreError,
};

/// The session columns, in [`session_from_row`]'s order.
macro_rules! session_columns {
    () => {
        "session_id, user_id, passkey_id, issued_ms, expires_ms, revoked_ms"
    };
}
pub(super) use session_columns;

pub(super) fn session_from_row(row: &PgRow) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        session_id: get(row, 0)?,
        user_id: get(row, 1)?,
        passkey_id: get(row, 2)?,
        issued_unix_ms: get(row, 3)?,
        expires_unix_ms: get(row, 4)?,
        revoked_unix_ms: get(row, 5)?,
    })
}

/// Runs a `DELETE` whose one parameter is a cutoff; returns how many rows it deleted.
async fn delete(
    conn: &mut PgConnection,
    sql: &'static str,
    cutoff: i64,
) -> Result<usize, StoreError> {
    let done = sqlx::query(sql)
        .bind(cutoff)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}

/// How a transaction reads a session row.
#[derive(Clone, Copy)]
pub(super) enum SessionLock {
    None,
    /// `FOR SHARE`: the session cannot be revoked until this transaction ends (a signed-in
    /// user adding a passkey).
    Share,
    /// `FOR UPDATE`: this transaction revokes it.
    Update,
}

pub(super) async fn get_session(
    conn: &mut PgConnection,
    session_id: &str,
    lock: SessionLock,
) -> Result<Option<SessionRecord>, StoreError> {
    let sql = match lock {
        SessionLock::None => concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE session_id = $1"
        ),
        SessionLock::Share => concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE session_id = $1 FOR SHARE"
        ),
        SessionLock::Update => concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE session_id = $1 FOR UPDATE"
        ),
    };
    sqlx::query(sql)
        .bind(session_id)
        .fetch_optional(conn)
        .await
        .map_err(backend)?
        .as_ref()
        .map(session_from_row)
        .transpose()
}

/// The replicated session state at `now`, read inside the caller's transaction (a snapshot
/// reads it in the same transaction as the keys and the head, so all of it is at one revision).
pub(super) async fn session_state(
    conn: &mut PgConnection,
    now_unix_ms: i64,
) -> Result<SessionState, StoreError> {
    let signing_keys = sqlx::query(concat!(
        "SELECT ",
        signing_key_columns!(),
        " FROM signing_keys
         WHERE verify_until_ms IS NULL OR verify_until_ms > $1 ORDER BY created_ms, key_id"
    ))
    .bind(now_unix_ms)
    .fetch_all(&mut *conn)
    .await
    .map_err(backend)?
    .iter()
    .map(|row| signing_key_from_row(row).map(|key| key.verifying_key()))
    .collect::<Result<Vec<_>, _>>()?;
    let revoked_sessions = sqlx::query(
        "SELECT session_id, user_id, expires_ms FROM sessions
         WHERE revoked_ms IS NOT NULL AND expires_ms > $1 ORDER BY session_id",
    )
    .bind(now_unix_ms)
    .fetch_all(&mut *conn)
    .await
    .map_err(backend)?
    .iter()
    .map(|row| {
        Ok(SessionRevocation {
            session_id: get(row, 0)?,
            user_id: get(row, 1)?,
            prune_after_unix_ms: get(row, 2)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let revoked_passkeys = sqlx::query(concat!(
        "SELECT ",
        revoked_passkey_columns!(),
        " FROM revoked_passkeys WHERE prune_after_ms > $1 ORDER BY passkey_id"
    ))
    .bind(now_unix_ms)
    .fetch_all(&mut *conn)
    .await
    .map_err(backend)?
    .iter()
    .map(passkey_revocation_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    let users = sqlx::query(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE disabled OR state_prune_after_ms > $1 ORDER BY user_id"
    ))
    .bind(now_unix_ms)
    .fetch_all(&mut *conn)
    .await
    .map_err(backend)?
    .iter()
    .map(|row| user_from_row(row).map(|user| user.state()))
    .collect::<Result<Vec<_>, _>>()?;
    Ok(SessionState {
        signing_keys,
        revoked_sessions,
        revoked_passkeys,
        users,
    })
}

impl Writer<'_> {
    /// Inserts a session issued now (inside this transaction, so ordered with revocations).
    pub(super) async fn open_session(
        &mut self,
        new: &NewSession,
        user_id: &str,
        passkey_id: &str,
    ) -> Result<SessionRecord, StoreError> {
        let session = new.issue(user_id, passkey_id, self.now().await?);
        sqlx::query(concat!(
            "INSERT INTO sessions (",
            session_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, NULL)"
        ))
        .bind(&session.session_id)
        .bind(&session.user_id)
        .bind(&session.passkey_id)
        .bind(session.issued_unix_ms)
        .bind(session.expires_unix_ms)
        .execute(self.conn())
        .await
        .map_err(backend)?;
        Ok(session)
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn revoke_session(
        &self,
        session_id: &str,
        actor: &str,
    ) -> Result<Option<Revision>, StoreError> {
        let mut w = self.write().await?;
        let Some(session) = get_session(w.conn(), session_id, SessionLock::Update).await? else {
            return Ok(None);
        };
        if session.revoked_unix_ms.is_some() {
            return Ok(None);
        }
        let now = w.now().await?;
        sqlx::query("UPDATE sessions SET revoked_ms = $2 WHERE session_id = $1")
            .bind(&session.session_id)
            .bind(now)
            .execute(w.conn())
            .await
            .map_err(backend)?;
        let revision = w.append(&Change::SessionRevoked(session.revocation()))?;
        w.audit(actor, revision, &session.revoked_audit()).await?;
        w.commit().await?;
        Ok(Some(revision))
    }

    async fn session_context(
        &self,
        session_id: &str,
    ) -> Result<Option<SessionContext>, StoreError> {
        // One snapshot for the session, its user and its passkey.
        let mut tx = self.read().await?;
        let Some(session) = get_session(&mut tx, session_id, SessionLock::None).await? else {
            return Ok(None);
        };
        let user = get_user(&mut tx, &session.user_id, UserLock::None).await?;
        let passkey_exists = get_passkey(&mut tx, &session.passkey_id, false)
            .await?
            .is_some();
        tx.commit().await.map_err(backend)?;
        Ok(Some(SessionContext {
            session,
            user,
            passkey_exists,
        }))
    }

    async fn session_state(&self) -> Result<SessionState, StoreError> {
        let mut tx = self.read().await?;
        let state = session_state(&mut tx, now_unix_ms()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(state)
    }

    async fn prune(&self, now_unix_ms: i64) -> Result<Pruned, StoreError> {
        // No event: gateways prune by the same times themselves, so no log lock either.
        let mut w = self.write_unlogged().await?;
        let pruned = Pruned {
            signing_keys: delete(
                w.conn(),
                "DELETE FROM signing_keys WHERE verify_until_ms IS NOT NULL
                    AND verify_until_ms <= $1",
                now_unix_ms,
            )
            .await?,
            revoked_passkeys: delete(
                w.conn(),
                "DELETE FROM revoked_passkeys WHERE prune_after_ms <= $1",
                now_unix_ms,
            )
            .await?,
            sessions: delete(
                w.conn(),
                "DELETE FROM sessions WHERE expires_ms <= $1",
                now_unix_ms,
            )
            .await?,
            enrollments: delete(
                w.conn(),
                "DELETE FROM enrollments WHERE expires_ms <= $1",
                EnrollmentRecord::prune_cutoff(now_unix_ms),
            )
            .await?,
        };
        // Ceremonies abandoned between begin and finish; not counted in `Pruned`, which
        // reports what gateways also prune.
        ceremonies::delete_expired(w.conn(), now_unix_ms).await?;
        w.commit().await?;
        Ok(pruned)
    }
}
