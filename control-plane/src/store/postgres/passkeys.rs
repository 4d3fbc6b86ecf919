//! [`PasskeyStore`] on PostgreSQL: the `passkeys` and `revoked_passkeys` tables. A removal's
//! `PasskeyRevoked` event goes through the log lock like every other event; registrations and
//! sign-ins append nothing and do not take it.
//!
//! Refusals that depend on stored state (a used enrollment link, a session revoked meanwhile,
//! a credential registered twice, the last passkey) are decided inside the write transaction,
//! on rows it has locked, so two replicas deciding at once cannot both win: an enrollment link
//! is consumed by one `UPDATE … WHERE used_ms IS NULL` (the second waits for the first's row
//! lock and then matches nothing), a sign-in locks its passkey `FOR UPDATE` (so a removal
//! committed first makes it `PasskeyGone`), and the user's row is locked `FOR SHARE` against a
//! concurrent disable.

use async_trait::async_trait;
use keygate_proto::{Change, PasskeyRevocation, Revision};
use serde_json::json;
use sqlx::postgres::{PgConnection, PgRow};

use super::log::Writer;
use super::sessions::{SessionLock, get_session};
use super::users::{UserLock, get_user};
use super::{PgStore, backend, get};
use crate::store::{
    LoggedIn, Login, PasskeyRecord, PasskeyRemoval, PasskeyRemoved, PasskeyStore, Registered,
    RegisteredVia, Registration, StoreError,
};

/// The passkey columns, in [`passkey_from_row`]'s order.
macro_rules! passkey_columns {
    () => {
        "passkey_id, user_id, credential_id, name, created_ms, last_used_ms, user_agent,
         backup_eligible, backed_up, credential_json"
    };
}

fn passkey_from_row(row: &PgRow) -> Result<PasskeyRecord, StoreError> {
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
        let new = registration.passkey;
        match get_user(self.conn(), &new.user_id, UserLock::Share).await? {
            Some(user) if !user.disabled => {}
            _ => return Ok(Registered::UserDisabled),
        }
        let now = self.now();
        let via = match &registration.via {
            RegisteredVia::Enrollment { token_hash } => {
                // Consumes the link: exactly one registration can win it.
                let consumed = sqlx::query(
                    "UPDATE enrollments SET used_ms = $3
                     WHERE token_hash = $1 AND user_id = $2 AND used_ms IS NULL",
                )
                .bind(&token_hash[..])
                .bind(&new.user_id)
                .bind(now)
                .execute(self.conn())
                .await
                .map_err(backend)?;
                if consumed.rows_affected() != 1 {
                    return Ok(Registered::EnrollmentUsed);
                }
                "enrollment"
            }
            RegisteredVia::Session { session_id } => {
                let session = get_session(self.conn(), session_id, SessionLock::Share).await?;
                let live = session.is_some_and(|session| {
                    session.user_id == new.user_id
                        && session.revoked_unix_ms.is_none()
                        && session.expires_unix_ms > now
                });
                if !live {
                    return Ok(Registered::SessionInvalid);
                }
                "session"
            }
        };
        let passkey = PasskeyRecord {
            passkey_id: new.passkey_id,
            user_id: new.user_id,
            credential_id: new.credential_id,
            name: new.name,
            created_unix_ms: now,
            last_used_unix_ms: registration.session.as_ref().map(|_| now),
            user_agent: new.user_agent,
            backup_eligible: new.backup_eligible,
            backed_up: new.backed_up,
            credential_json: new.credential_json,
        };
        sqlx::query(concat!(
            "INSERT INTO passkeys (",
            passkey_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
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
        let detail = json!({
            "passkeyId": passkey.passkey_id,
            "name": passkey.name,
            "via": via,
            "sessionId": session.as_ref().map(|s| s.session_id.as_str()),
            "userAgent": passkey.user_agent,
        });
        self.audit(
            actor,
            "passkey.register",
            &passkey.user_id,
            Revision::ZERO,
            &detail,
        )
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
        let now = w.now();
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
        let detail = json!({
            "sessionId": session.session_id,
            "passkeyId": passkey.passkey_id,
            "expiresUnixMs": session.expires_unix_ms,
            "userAgent": login.session.user_agent,
        });
        w.audit(
            actor,
            "session.create",
            &session.user_id,
            Revision::ZERO,
            &detail,
        )
        .await?;
        w.commit().await?;
        Ok(LoggedIn::Done(session))
    }

    async fn remove_passkey(
        &self,
        removal: PasskeyRemoval,
        actor: &str,
    ) -> Result<PasskeyRemoved, StoreError> {
        let mut w = self.write().await?;
        let passkey = match get_passkey(w.conn(), &removal.passkey_id, true).await? {
            Some(passkey) if passkey.user_id == removal.user_id => passkey,
            // Someone else's passkey is "not found": its existence is not the caller's
            // business.
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
        let revocation = PasskeyRevocation {
            user_id: passkey.user_id.clone(),
            passkey_id: passkey.passkey_id.clone(),
            revoked_unix_ms: w.now(),
            prune_after_unix_ms: removal.prune_after_unix_ms,
        };
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
        let detail = json!({ "passkeyId": passkey.passkey_id, "name": passkey.name });
        w.audit(actor, removal.action, &passkey.user_id, revision, &detail)
            .await?;
        w.commit().await?;
        Ok(PasskeyRemoved::Removed { revision })
    }
}
