//! [`UserStore`] on SQLite: the `users` table. A user's replicated state (disabled, sessions
//! revoked before, prune after) lives in its row; each change to it appends a `UserState`
//! event.

use async_trait::async_trait;
use keygate_proto::{Change, Revision};
use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde_json::json;

use super::log::Writer;
use super::{SqliteStore, backend, corrupt};
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

    /// "Every session issued until now": strictly before the next millisecond, so a session
    /// committed earlier in this same millisecond is covered too.
    fn revoke_sessions_now(&self, user: &mut UserRecord, session_lifetime_ms: i64) {
        let before = self.now_unix_ms.saturating_add(1);
        user.sessions_revoked_before_unix_ms = user.sessions_revoked_before_unix_ms.max(before);
        user.state_prune_after_unix_ms = user
            .state_prune_after_unix_ms
            .max(before.saturating_add(session_lifetime_ms));
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
            let user = UserRecord {
                user_id,
                handle,
                created_unix_ms: w.now_unix_ms,
                disabled: false,
                sessions_revoked_before_unix_ms: 0,
                state_prune_after_unix_ms: 0,
            };
            w.tx.execute(
                &format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, 0, 0, 0)"),
                params![user.user_id, &user.handle[..], user.created_unix_ms],
            )
            .map_err(backend)?;
            w.audit(
                &actor,
                "user.create",
                &user.user_id,
                Revision::ZERO,
                &json!({}),
            )?;
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
            let changed = user.disabled == enabled;
            let mut revision = w.head();
            if changed {
                user.disabled = !enabled;
                if !enabled {
                    // Enabling again must not bring back a session from before the disable.
                    w.revoke_sessions_now(&mut user, session_lifetime_ms);
                }
                revision = w.update_user_state(&user)?;
            }
            let action = if enabled {
                "user.enable"
            } else {
                "user.disable"
            };
            let audited = if changed { revision } else { Revision::ZERO };
            w.audit(
                &actor,
                action,
                &user.user_id,
                audited,
                &json!({ "changed": changed }),
            )?;
            Ok(Some(UserChanged {
                user,
                revision,
                changed,
            }))
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
            w.revoke_sessions_now(&mut user, session_lifetime_ms);
            let revision = w.update_user_state(&user)?;
            let detail = json!({ "revokedBeforeUnixMs": user.sessions_revoked_before_unix_ms });
            w.audit(&actor, "sessions.revoke", &user.user_id, revision, &detail)?;
            Ok(Some(UserChanged {
                user,
                revision,
                changed: true,
            }))
        })
        .await
    }
}
