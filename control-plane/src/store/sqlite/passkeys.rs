//! [`PasskeyStore`] on SQLite: the `passkeys` and `revoked_passkeys` tables. In the same file
//! and through the same single writer as keys, so a removal's `PasskeyRevoked` event takes its
//! place in the one contiguous log.
//!
//! Refusals that depend on stored state (an enrollment link used, expired, revoked or voided,
//! a session revoked meanwhile, a credential registered twice, the last passkey) are decided
//! inside the write transaction.

use async_trait::async_trait;
use keygate_proto::{Change, PasskeyRevocation, Revision};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::enrollments::{enrollment_by_token_hash, write_used};
use super::sessions::get_session;
use super::users::get_user;
use super::{SqliteStore, backend, collect, execute};
use crate::store::{
    LoggedIn, Login, PasskeyRecord, PasskeyRemoval, PasskeyRemoved, PasskeyRename, PasskeyRenamed,
    PasskeyStore, Registered, RegisteredVia, Registration, StoreError,
};

pub(super) const PASSKEY_COLUMNS: &str =
    "passkey_id, user_id, credential_id, name, created_ms, last_used_ms,
    user_agent, backup_eligible, backed_up, credential_json, aaguid";

pub(super) fn passkey_from_row(row: &Row<'_>) -> rusqlite::Result<PasskeyRecord> {
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
        aaguid: row.get(10)?,
    })
}

pub(super) const REVOKED_PASSKEY_COLUMNS: &str = "passkey_id, user_id, revoked_ms, prune_after_ms";

pub(super) fn passkey_revocation_from_row(row: &Row<'_>) -> rusqlite::Result<PasskeyRevocation> {
    Ok(PasskeyRevocation {
        passkey_id: row.get(0)?,
        user_id: row.get(1)?,
        revoked_unix_ms: row.get(2)?,
        prune_after_unix_ms: row.get(3)?,
    })
}

pub(super) fn get_passkey(
    tx: &Transaction<'_>,
    passkey_id: &str,
) -> Result<Option<PasskeyRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE passkey_id = ?1"),
        params![passkey_id],
        passkey_from_row,
    )
    .optional()
    .map_err(backend)
}

/// Inserts `passkey` as it is (a registration, or a copy).
pub(super) fn insert_passkey(
    tx: &Transaction<'_>,
    passkey: &PasskeyRecord,
) -> Result<(), StoreError> {
    execute(
        tx,
        &format!(
            "INSERT INTO passkeys ({PASSKEY_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            passkey.passkey_id,
            passkey.user_id,
            passkey.credential_id,
            passkey.name,
            passkey.created_unix_ms,
            passkey.last_used_unix_ms,
            passkey.user_agent,
            passkey.backup_eligible,
            passkey.backed_up,
            passkey.credential_json,
            passkey.aaguid
        ],
    )
}

/// Records the revocation of a passkey, replacing an earlier one of the same passkey (a
/// removal, or a copy).
pub(super) fn insert_passkey_revocation(
    tx: &Transaction<'_>,
    revocation: &PasskeyRevocation,
) -> Result<(), StoreError> {
    execute(
        tx,
        &format!(
            "INSERT OR REPLACE INTO revoked_passkeys ({REVOKED_PASSKEY_COLUMNS})
             VALUES (?1, ?2, ?3, ?4)"
        ),
        params![
            revocation.passkey_id,
            revocation.user_id,
            revocation.revoked_unix_ms,
            revocation.prune_after_unix_ms
        ],
    )
}

/// Whether an insert failed on a unique constraint.
fn is_conflict(error: &StoreError) -> bool {
    matches!(error, StoreError::Conflict(_))
}

#[async_trait]
impl PasskeyStore for SqliteStore {
    async fn list_passkeys(&self, user_id: &str) -> Result<Vec<PasskeyRecord>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |tx| {
            collect(
                tx,
                &format!(
                    "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_id = ?1
                     ORDER BY created_ms, passkey_id"
                ),
                params![user_id],
                passkey_from_row,
            )
        })
        .await
    }

    async fn passkeys_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PasskeyRecord>, StoreError> {
        let after = after.unwrap_or_default().to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |tx| {
            collect(
                tx,
                &format!(
                    "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE passkey_id > ?1
                     ORDER BY passkey_id LIMIT ?2"
                ),
                params![after, limit],
                passkey_from_row,
            )
        })
        .await
    }

    async fn passkey_by_credential_id(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRecord>, StoreError> {
        let credential_id = credential_id.to_vec();
        self.read(move |tx| {
            tx.query_row(
                &format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = ?1"),
                params![credential_id],
                passkey_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn register_passkey(
        &self,
        registration: Registration,
        actor: &str,
    ) -> Result<Registered, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let new = &registration.passkey;
            match get_user(w.tx, &new.user_id)? {
                Some(user) if !user.disabled => {}
                _ => return Ok(Registered::UserDisabled),
            }
            match &registration.via {
                RegisteredVia::Enrollment { token_hash } => {
                    // Consumes the link if it is open at this instant (its ceremony may have
                    // begun before an expiry or a revocation), in this one writer's
                    // transaction: exactly one registration can win it.
                    let link = enrollment_by_token_hash(w.tx, token_hash)?;
                    match Registered::consume_link(link, &new.user_id, w.now_unix_ms) {
                        Ok(used) => write_used(w.tx, &used)?,
                        Err(refused) => return Ok(refused),
                    }
                }
                RegisteredVia::Session { session_id } => {
                    let live = get_session(w.tx, session_id)?
                        .is_some_and(|session| session.is_live_for(&new.user_id, w.now_unix_ms));
                    if !live {
                        return Ok(Registered::SessionInvalid);
                    }
                }
            }
            let passkey = registration.record(w.now_unix_ms);
            match insert_passkey(w.tx, &passkey) {
                Ok(()) => {}
                Err(error) if is_conflict(&error) => {
                    // Roll back the consumed link with the rest of the transaction.
                    return Err(StoreError::Conflict("credential already registered".into()));
                }
                Err(error) => return Err(error),
            }
            let session = registration
                .session
                .as_ref()
                .map(|new| w.open_session(new, &passkey.user_id, &passkey.passkey_id))
                .transpose()?;
            w.audit(
                &actor,
                Revision::ZERO,
                &registration.audit(session.as_ref()),
            )?;
            Ok(Registered::Done {
                passkey: Box::new(passkey),
                session,
            })
        })
        .await
        .or_else(|error| match error {
            StoreError::Conflict(_) => Ok(Registered::CredentialExists),
            other => Err(other),
        })
    }

    async fn record_login(&self, login: Login, actor: &str) -> Result<LoggedIn, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let Some(passkey) = get_passkey(w.tx, &login.passkey_id)? else {
                return Ok(LoggedIn::PasskeyGone);
            };
            match get_user(w.tx, &passkey.user_id)? {
                Some(user) if !user.disabled => {}
                _ => return Ok(LoggedIn::UserDisabled),
            }
            match &login.updated_credential {
                Some(updated) => w.tx.execute(
                    "UPDATE passkeys SET last_used_ms = ?2, credential_json = ?3,
                        backup_eligible = ?4, backed_up = ?5 WHERE passkey_id = ?1",
                    params![
                        passkey.passkey_id,
                        w.now_unix_ms,
                        updated.credential_json,
                        updated.backup_eligible,
                        updated.backed_up
                    ],
                ),
                None => w.tx.execute(
                    "UPDATE passkeys SET last_used_ms = ?2 WHERE passkey_id = ?1",
                    params![passkey.passkey_id, w.now_unix_ms],
                ),
            }
            .map_err(backend)?;
            let session = w.open_session(&login.session, &passkey.user_id, &passkey.passkey_id)?;
            w.audit(&actor, Revision::ZERO, &login.audit(&session))?;
            Ok(LoggedIn::Done(session))
        })
        .await
    }

    async fn rename_passkey(
        &self,
        rename: PasskeyRename,
        actor: &str,
    ) -> Result<PasskeyRenamed, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let passkey = match get_passkey(w.tx, &rename.passkey_id)? {
                Some(passkey) if rename.may_rename(&passkey) => passkey,
                _ => return Ok(PasskeyRenamed::NotFound),
            };
            w.tx.execute(
                "UPDATE passkeys SET name = ?2 WHERE passkey_id = ?1",
                params![passkey.passkey_id, rename.name],
            )
            .map_err(backend)?;
            w.audit(&actor, Revision::ZERO, &rename.audit(&passkey))?;
            Ok(PasskeyRenamed::Renamed(Box::new(PasskeyRecord {
                name: rename.name.clone(),
                ..passkey
            })))
        })
        .await
    }

    async fn remove_passkey(
        &self,
        removal: PasskeyRemoval,
        actor: &str,
    ) -> Result<PasskeyRemoved, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let passkey = match get_passkey(w.tx, &removal.passkey_id)? {
                Some(passkey) if removal.may_remove(&passkey) => passkey,
                _ => return Ok(PasskeyRemoved::NotFound),
            };
            if removal.keep_last {
                let count: i64 =
                    w.tx.query_row(
                        "SELECT COUNT(*) FROM passkeys WHERE user_id = ?1",
                        params![passkey.user_id],
                        |row| row.get(0),
                    )
                    .map_err(backend)?;
                if count <= 1 {
                    return Ok(PasskeyRemoved::LastPasskey);
                }
            }
            w.tx.execute(
                "DELETE FROM passkeys WHERE passkey_id = ?1",
                params![passkey.passkey_id],
            )
            .map_err(backend)?;
            let revocation = removal.revocation(w.now_unix_ms);
            insert_passkey_revocation(w.tx, &revocation)?;
            let revision = w.append(Change::PasskeyRevoked(revocation))?;
            w.audit(&actor, revision, &removal.audit(&passkey))?;
            Ok(PasskeyRemoved::Removed { revision })
        })
        .await
    }
}
