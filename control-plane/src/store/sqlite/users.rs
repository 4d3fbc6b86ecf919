//! [`UserStore`] on SQLite: the `users` table. A user's replicated state (disabled, sessions
//! revoked before, prune after) lives in its row; each change to it appends a `UserState`
//! event. A disable voids the user's open enrollment links in its transaction.

use async_trait::async_trait;
use keygate_proto::{Change, Revision};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::enrollments::{enrollments_of_user, write_voided};
use super::log::Writer;
use super::{SqliteStore, backend, corrupt, execute};
use crate::store::{StoreError, UserChanged, UserCreated, UserRecord, UserStore};

pub(super) const USER_COLUMNS: &str =
    "user_id, handle, created_ms, disabled, sessions_revoked_before_ms, state_prune_after_ms";

pub(super) fn user_from_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
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

pub(super) fn get_user(
    tx: &Transaction<'_>,
    user_id: &str,
) -> Result<Option<UserRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = ?1"),
        params![user_id],
        user_from_row,
    )
    .optional()
    .map_err(backend)
}

/// Inserts `user` as it is (a new user, or a copy).
pub(super) fn insert_user(tx: &Transaction<'_>, user: &UserRecord) -> Result<(), StoreError> {
    execute(
        tx,
        &format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            user.user_id,
            &user.handle[..],
            user.created_unix_ms,
            user.disabled,
            user.sessions_revoked_before_unix_ms,
            user.state_prune_after_unix_ms
        ],
    )
}

impl Writer<'_> {
    /// Writes the user's replicated state and appends its `UserState` event.
    fn update_user_state(&mut self, user: &UserRecord) -> Result<Revision, StoreError> {
        self.tx
            .execute(
                "UPDATE users SET disabled = ?2, sessions_revoked_before_ms = ?3,
                    state_prune_after_ms = ?4 WHERE user_id = ?1",
                params![
                    user.user_id,
                    user.disabled,
                    user.sessions_revoked_before_unix_ms,
                    user.state_prune_after_unix_ms
                ],
            )
            .map_err(backend)?;
        self.append(Change::UserState(user.state()))
    }
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(
        &self,
        user_id: &str,
        handle: [u8; 16],
        actor: &str,
    ) -> Result<UserCreated, StoreError> {
        let (user_id, actor) = (user_id.to_owned(), actor.to_owned());
        self.write(move |w| {
            if get_user(w.tx, &user_id)?.is_some() {
                return Ok(UserCreated::AlreadyExists);
            }
            let user = UserRecord::new(user_id, handle, w.now_unix_ms);
            insert_user(w.tx, &user)?;
            w.audit(&actor, Revision::ZERO, &user.created_audit())?;
            Ok(UserCreated::Created(user))
        })
        .await
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |tx| get_user(tx, &user_id)).await
    }

    async fn user_by_handle(&self, handle: [u8; 16]) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |tx| {
            tx.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE handle = ?1"),
                params![&handle[..]],
                user_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn set_user_enabled(
        &self,
        user_id: &str,
        enabled: bool,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<Option<UserChanged>, StoreError> {
        let (user_id, actor) = (user_id.to_owned(), actor.to_owned());
        self.write(move |w| {
            let Some(mut user) = get_user(w.tx, &user_id)? else {
                return Ok(None);
            };
            let changed = user.set_enabled(enabled, w.now_unix_ms, session_lifetime_ms);
            let revision = if changed {
                w.update_user_state(&user)?
            } else {
                w.head()
            };
            let mut change = UserChanged {
                user,
                revision,
                changed,
                voided_enrollments: Vec::new(),
            };
            if change.voids_enrollments() {
                let links = enrollments_of_user(w.tx, &user_id)?;
                for link in change.void_enrollments(links, w.now_unix_ms) {
                    write_voided(w.tx, &link)?;
                }
            }
            w.audit(&actor, change.audited_revision(), &change.enabled_audit())?;
            Ok(Some(change))
        })
        .await
    }

    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<Option<UserChanged>, StoreError> {
        let (user_id, actor) = (user_id.to_owned(), actor.to_owned());
        self.write(move |w| {
            let Some(mut user) = get_user(w.tx, &user_id)? else {
                return Ok(None);
            };
            user.revoke_sessions(w.now_unix_ms, session_lifetime_ms);
            let revision = w.update_user_state(&user)?;
            w.audit(&actor, revision, &user.sessions_revoked_audit())?;
            Ok(Some(UserChanged {
                user,
                revision,
                changed: true,
                voided_enrollments: Vec::new(),
            }))
        })
        .await
    }
}
