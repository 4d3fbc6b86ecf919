//! [`PasskeyStore`] on PostgreSQL: the `passkeys` and `revoked_passkeys` tables. A removal's
//! `PasskeyRevoked` event goes through the log lock like every other event; registrations and
//! sign-ins append nothing and do not take it.
//!
//! Refusals that depend on stored state (an enrollment link used, expired, revoked or voided,
//! a session revoked meanwhile, a credential registered twice, the last passkey) are decided
//! inside the write transaction, on rows it has locked, so two replicas deciding at once
//! cannot both win: an enrollment link is read `FOR UPDATE` before it is consumed (the second
//! registration, or a revocation, waits for the first's row lock and then sees the link
//! used), a sign-in locks its passkey `FOR UPDATE` (so a removal
//! committed first makes it `PasskeyGone`), and the user's row is locked `FOR SHARE` against a
//! concurrent disable.

use async_trait::async_trait;
use keygate_proto::{Change, PasskeyRevocation, Revision};
use sqlx::postgres::{PgConnection, PgRow};

use super::enrollments::{LinkBy, lock_enrollment, write_used};
use super::log::Writer;
use super::sessions::{SessionLock, get_session};
use super::users::{UserLock, get_user};
use super::{PgStore, array, backend, db_limit, get};
use crate::store::{
    LoggedIn, Login, PasskeyRecord, PasskeyRemoval, PasskeyRemoved, PasskeyRename, PasskeyRenamed,
    PasskeyStore, Registered, RegisteredVia, Registration, StoreError,
};

/// The passkey columns, in [`passkey_from_row`]'s order.
macro_rules! passkey_columns {
    () => {
        "passkey_id, user_id, credential_id, name, created_ms, last_used_ms, user_agent,
         backup_eligible, backed_up, credential_json, aaguid"
    };
}
pub(super) use passkey_columns;

/// The columns of a passkey revocation, in [`passkey_revocation_from_row`]'s order.
macro_rules! revoked_passkey_columns {
    () => {
        "passkey_id, user_id, revoked_ms, prune_after_ms"
    };
}
pub(super) use revoked_passkey_columns;

pub(super) fn passkey_from_row(row: &PgRow) -> Result<PasskeyRecord, StoreError> {
    Ok(PasskeyRecord {
        passkey_id: get(row, 0)?,
        user_id: get(row, 1)?,
        credential_id: get(row, 2)?,
        name: get(row, 3)?,
        created_unix_ms: get(row, 4)?,
        last_used_unix_ms: get(row, 5)?,
        user_agent: get(row, 6)?,
        backup_eligible: get(row, 7)?,
        backed_up: get(row, 8)?,
        credential_json: get(row, 9)?,
        aaguid: get::<Option<Vec<u8>>>(row, 10)?
            .map(|bytes| array(bytes, "a passkey's AAGUID"))
            .transpose()?,
    })
}

pub(super) fn passkey_revocation_from_row(row: &PgRow) -> Result<PasskeyRevocation, StoreError> {
    Ok(PasskeyRevocation {
        passkey_id: get(row, 0)?,
        user_id: get(row, 1)?,
        revoked_unix_ms: get(row, 2)?,
        prune_after_unix_ms: get(row, 3)?,
    })
}

/// One passkey; with `lock`, locked `FOR UPDATE` until the transaction ends.
pub(super) async fn get_passkey(
    conn: &mut PgConnection,
    passkey_id: &str,
    lock: bool,
) -> Result<Option<PasskeyRecord>, StoreError> {
    let sql = if lock {
        concat!(
            "SELECT ",
            passkey_columns!(),
            " FROM passkeys WHERE passkey_id = $1 FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            passkey_columns!(),
            " FROM passkeys WHERE passkey_id = $1"
        )
    };
    sqlx::query(sql)
        .bind(passkey_id)
        .fetch_optional(conn)
        .await
        .map_err(backend)?
        .as_ref()
        .map(passkey_from_row)
        .transpose()
}

impl Writer<'_> {
    /// The registration itself, inside the transaction; a unique violation (the credential,
    /// or an id, registered already) comes back as [`StoreError::Conflict`], and the caller
    /// rolls everything back (the consumed link with it).
    async fn register(
        &mut self,
        registration: Registration,
        actor: &str,
    ) -> Result<Registered, StoreError> {
        let new = &registration.passkey;
        match get_user(self.conn(), &new.user_id, UserLock::Share).await? {
            Some(user) if !user.disabled => {}
            _ => return Ok(Registered::UserDisabled),
        }
        let now = self.now().await?;
        match &registration.via {
            RegisteredVia::Enrollment { token_hash } => {
                // Consumes the link if it is open at this instant (its ceremony may have begun
                // before an expiry or a revocation). The row is locked first, so of two
                // registrations, or a registration and a revocation, on any replicas, the
                // second sees what the first committed: exactly one can win the link.
                let link = lock_enrollment(self.conn(), LinkBy::TokenHash(token_hash)).await?;
                match Registered::consume_link(link, &new.user_id, now) {
                    Ok(used) => write_used(self.conn(), &used).await?,
                    Err(refused) => return Ok(refused),
                }
            }
            RegisteredVia::Session { session_id } => {
                let session = get_session(self.conn(), session_id, SessionLock::Share).await?;
                if !session.is_some_and(|session| session.is_live_for(&new.user_id, now)) {
                    return Ok(Registered::SessionInvalid);
                }
            }
        }
        let passkey = registration.record(now);
        sqlx::query(concat!(
            "INSERT INTO passkeys (",
            passkey_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&passkey.passkey_id)
        .bind(&passkey.user_id)
        .bind(&passkey.credential_id)
        .bind(&passkey.name)
        .bind(passkey.created_unix_ms)
        .bind(passkey.last_used_unix_ms)
        .bind(&passkey.user_agent)
        .bind(passkey.backup_eligible)
        .bind(passkey.backed_up)
        .bind(&passkey.credential_json)
        .bind(passkey.aaguid.map(Vec::from))
        .execute(self.conn())
        .await
        .map_err(backend)?;
        let session = match &registration.session {
            Some(new) => Some(
                self.open_session(new, &passkey.user_id, &passkey.passkey_id)
                    .await?,
            ),
            None => None,
        };
        self.audit(actor, Revision::ZERO, &registration.audit(session.as_ref()))
            .await?;
        Ok(Registered::Done {
            passkey: Box::new(passkey),
            session,
        })
    }
}

#[async_trait]
impl PasskeyStore for PgStore {
    async fn list_passkeys(&self, user_id: &str) -> Result<Vec<PasskeyRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            passkey_columns!(),
            " FROM passkeys WHERE user_id = $1 ORDER BY created_ms, passkey_id"
        ))
        .bind(user_id)
        .fetch_all(self.pool())
        .await
        .map_err(backend)?
        .iter()
        .map(passkey_from_row)
        .collect()
    }

    async fn passkeys_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PasskeyRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            passkey_columns!(),
            " FROM passkeys WHERE passkey_id > $1 ORDER BY passkey_id LIMIT $2"
        ))
        .bind(after.unwrap_or_default())
        .bind(db_limit(limit))
        .fetch_all(self.pool())
        .await
        .map_err(backend)?
        .iter()
        .map(passkey_from_row)
        .collect()
    }

    async fn passkey_by_credential_id(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            passkey_columns!(),
            " FROM passkeys WHERE credential_id = $1"
        ))
        .bind(credential_id)
        .fetch_optional(self.pool())
        .await
        .map_err(backend)?
        .as_ref()
        .map(passkey_from_row)
        .transpose()
    }

    async fn register_passkey(
        &self,
        registration: Registration,
        actor: &str,
    ) -> Result<Registered, StoreError> {
        // No event, so no log lock.
        let mut w = self.write_unlogged().await?;
        match w.register(registration, actor).await {
            Ok(registered @ Registered::Done { .. }) => {
                w.commit().await?;
                Ok(registered)
            }
            // A refusal changed nothing; dropping the writer rolls back.
            Ok(refused) => Ok(refused),
            // The credential exists already: the whole transaction (the consumed link
            // included) rolls back when the writer is dropped.
            Err(StoreError::Conflict(_)) => Ok(Registered::CredentialExists),
            Err(error) => Err(error),
        }
    }

    async fn record_login(&self, login: Login, actor: &str) -> Result<LoggedIn, StoreError> {
        let mut w = self.write_unlogged().await?;
        let Some(passkey) = get_passkey(w.conn(), &login.passkey_id, true).await? else {
            return Ok(LoggedIn::PasskeyGone);
        };
        match get_user(w.conn(), &passkey.user_id, UserLock::Share).await? {
            Some(user) if !user.disabled => {}
            _ => return Ok(LoggedIn::UserDisabled),
        }
        let now = w.now().await?;
        match &login.updated_credential {
            Some(updated) => {
                sqlx::query(
                    "UPDATE passkeys SET last_used_ms = $2, credential_json = $3,
                        backup_eligible = $4, backed_up = $5 WHERE passkey_id = $1",
                )
                .bind(&passkey.passkey_id)
                .bind(now)
                .bind(&updated.credential_json)
                .bind(updated.backup_eligible)
                .bind(updated.backed_up)
                .execute(w.conn())
                .await
            }
            None => {
                sqlx::query("UPDATE passkeys SET last_used_ms = $2 WHERE passkey_id = $1")
                    .bind(&passkey.passkey_id)
                    .bind(now)
                    .execute(w.conn())
                    .await
            }
        }
        .map_err(backend)?;
        let session = w
            .open_session(&login.session, &passkey.user_id, &passkey.passkey_id)
            .await?;
        w.audit(actor, Revision::ZERO, &login.audit(&session))
            .await?;
        w.commit().await?;
        Ok(LoggedIn::Done(session))
    }

    async fn rename_passkey(
        &self,
        rename: PasskeyRename,
        actor: &str,
    ) -> Result<PasskeyRenamed, StoreError> {
        // No event, so no log lock; the passkey's row lock orders a rename against a removal.
        let mut w = self.write_unlogged().await?;
        let passkey = match get_passkey(w.conn(), &rename.passkey_id, true).await? {
            Some(passkey) if rename.may_rename(&passkey) => passkey,
            _ => return Ok(PasskeyRenamed::NotFound),
        };
        sqlx::query("UPDATE passkeys SET name = $2 WHERE passkey_id = $1")
            .bind(&passkey.passkey_id)
            .bind(&rename.name)
            .execute(w.conn())
            .await
            .map_err(backend)?;
        w.audit(actor, Revision::ZERO, &rename.audit(&passkey))
            .await?;
        w.commit().await?;
        Ok(PasskeyRenamed::Renamed(Box::new(PasskeyRecord {
            name: rename.name,
            ..passkey
        })))
    }

    async fn remove_passkey(
        &self,
        removal: PasskeyRemoval,
        actor: &str,
    ) -> Result<PasskeyRemoved, StoreError> {
        let mut w = self.write().await?;
        let passkey = match get_passkey(w.conn(), &removal.passkey_id, true).await? {
            Some(passkey) if removal.may_remove(&passkey) => passkey,
            _ => return Ok(PasskeyRemoved::NotFound),
        };
        if removal.keep_last {
            // Removals hold the log lock, so no other removal changes the count meanwhile; a
            // registration committing meanwhile only adds one.
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM passkeys WHERE user_id = $1")
                .bind(&passkey.user_id)
                .fetch_one(w.conn())
                .await
                .map_err(backend)?;
            if count <= 1 {
                return Ok(PasskeyRemoved::LastPasskey);
            }
        }
        sqlx::query("DELETE FROM passkeys WHERE passkey_id = $1")
            .bind(&passkey.passkey_id)
            .execute(w.conn())
            .await
            .map_err(backend)?;
        let revocation = removal.revocation(w.now().await?);
        sqlx::query(
            "INSERT INTO revoked_passkeys (passkey_id, user_id, revoked_ms, prune_after_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (passkey_id) DO UPDATE SET user_id = EXCLUDED.user_id,
                revoked_ms = EXCLUDED.revoked_ms, prune_after_ms = EXCLUDED.prune_after_ms",
        )
        .bind(&revocation.passkey_id)
        .bind(&revocation.user_id)
        .bind(revocation.revoked_unix_ms)
        .bind(revocation.prune_after_unix_ms)
        .execute(w.conn())
        .await
        .map_err(backend)?;
        let revision = w.append(&Change::PasskeyRevoked(revocation))?;
        w.audit(actor, revision, &removal.audit(&passkey)).await?;
        w.commit().await?;
        Ok(PasskeyRemoved::Removed { revision })
    }
}
