//! [`UserStore`] on PostgreSQL: the `users` table. A user's replicated state (disabled,
//! sessions revoked before, prune after) lives in its row; each change to it appends a
//! `UserState` event.
//!
//! A change to a user's state locks the user's row (`FOR UPDATE`) after the log lock; a
//! sign-in or registration locks it `FOR SHARE` before it opens a session. So a session is
//! either opened before a revocation (and covered by its "revoked before" instant, read after
//! the lock) or after it (and then sees the user disabled), on whichever replicas they run.
//! The same lock orders a disable against the user's enrollment links: a disable voids every
//! open one in its transaction.

use async_trait::async_trait;
use keygate_proto::{Change, Revision};
use sqlx::postgres::{PgConnection, PgRow};

use super::enrollments::{enrollments_of_user, write_voided};
use super::log::Writer;
use super::{PgStore, array, backend, get};
use crate::store::{StoreError, UserChanged, UserCreated, UserRecord, UserStore};

/// The user columns, in [`user_from_row`]'s order.
macro_rules! user_columns {
    () => {
        "user_id, handle, created_ms, disabled, sessions_revoked_before_ms, state_prune_after_ms"
    };
}
pub(super) use user_columns;

pub(super) fn user_from_row(row: &PgRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        user_id: get(row, 0)?,
        handle: array(get(row, 1)?, "user handle")?,
        created_unix_ms: get(row, 2)?,
        disabled: get(row, 3)?,
        sessions_revoked_before_unix_ms: get(row, 4)?,
        state_prune_after_unix_ms: get(row, 5)?,
    })
}

/// How a transaction reads a user row: plainly, or locking it against changes until it ends.
#[derive(Clone, Copy)]
pub(super) enum UserLock {
    None,
    /// `FOR SHARE`: the user's state cannot change until this transaction ends (sign-ins,
    /// registrations, enrollment links).
    Share,
    /// `FOR UPDATE`: this transaction changes the user's state.
    Update,
}

pub(super) async fn get_user(
    conn: &mut PgConnection,
    user_id: &str,
    lock: UserLock,
) -> Result<Option<UserRecord>, StoreError> {
    let sql = match lock {
        UserLock::None => concat!("SELECT ", user_columns!(), " FROM users WHERE user_id = $1"),
        UserLock::Share => concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE user_id = $1 FOR SHARE"
        ),
        UserLock::Update => concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE user_id = $1 FOR UPDATE"
        ),
    };
    sqlx::query(sql)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .map_err(backend)?
        .as_ref()
        .map(user_from_row)
        .transpose()
}

impl Writer<'_> {
    /// Writes the user's replicated state and appends its `UserState` event.
    async fn update_user_state(&mut self, user: &UserRecord) -> Result<Revision, StoreError> {
        sqlx::query(
            "UPDATE users SET disabled = $2, sessions_revoked_before_ms = $3,
                state_prune_after_ms = $4 WHERE user_id = $1",
        )
        .bind(&user.user_id)
        .bind(user.disabled)
        .bind(user.sessions_revoked_before_unix_ms)
        .bind(user.state_prune_after_unix_ms)
        .execute(self.conn())
        .await
        .map_err(backend)?;
        self.append(&Change::UserState(user.state()))
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(
        &self,
        user_id: &str,
        handle: [u8; 16],
        actor: &str,
    ) -> Result<UserCreated, StoreError> {
        // No event: it need not wait for the log lock. Of two creates of one id (on any
        // replicas) the primary key lets exactly one insert.
        let mut w = self.write_unlogged().await?;
        let user = UserRecord::new(user_id.to_owned(), handle, w.now().await?);
        let inserted = sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, FALSE, 0, 0) ON CONFLICT (user_id) DO NOTHING"
        ))
        .bind(&user.user_id)
        .bind(&user.handle[..])
        .bind(user.created_unix_ms)
        .execute(w.conn())
        .await
        .map_err(backend)?;
        if inserted.rows_affected() == 0 {
            return Ok(UserCreated::AlreadyExists);
        }
        w.audit(actor, Revision::ZERO, &user.created_audit())
            .await?;
        w.commit().await?;
        Ok(UserCreated::Created(user))
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        get_user(&mut conn, user_id, UserLock::None).await
    }

    async fn user_by_handle(&self, handle: [u8; 16]) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE handle = $1"
        ))
        .bind(&handle[..])
        .fetch_optional(self.pool())
        .await
        .map_err(backend)?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn set_user_enabled(
        &self,
        user_id: &str,
        enabled: bool,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<Option<UserChanged>, StoreError> {
        let mut w = self.write().await?;
        let Some(mut user) = get_user(w.conn(), user_id, UserLock::Update).await? else {
            return Ok(None);
        };
        let changed = user.set_enabled(enabled, w.now().await?, session_lifetime_ms);
        let revision = if changed {
            w.update_user_state(&user).await?
        } else {
            w.head()?
        };
        let mut change = UserChanged {
            user,
            revision,
            changed,
            voided_enrollments: Vec::new(),
        };
        if change.voids_enrollments() {
            // The user's row is locked FOR UPDATE, so no link of theirs can be created or
            // consumed meanwhile (both lock it FOR SHARE); a revocation waits for these rows.
            let links = enrollments_of_user(w.conn(), user_id, true).await?;
            let now = w.now().await?;
            for link in change.void_enrollments(links, now) {
                write_voided(w.conn(), &link).await?;
            }
        }
        w.audit(actor, change.audited_revision(), &change.enabled_audit())
            .await?;
        w.commit().await?;
        Ok(Some(change))
    }

    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<Option<UserChanged>, StoreError> {
        let mut w = self.write().await?;
        let Some(mut user) = get_user(w.conn(), user_id, UserLock::Update).await? else {
            return Ok(None);
        };
        user.revoke_sessions(w.now().await?, session_lifetime_ms);
        let revision = w.update_user_state(&user).await?;
        w.audit(actor, revision, &user.sessions_revoked_audit())
            .await?;
        w.commit().await?;
        Ok(Some(UserChanged {
            user,
            revision,
            changed: true,
            voided_enrollments: Vec::new(),
        }))
    }
}
