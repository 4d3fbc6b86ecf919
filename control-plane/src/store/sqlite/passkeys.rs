//! [`PasskeyStore`] on SQLite: users, passkeys, enrollment links, sessions, signing keys and
//! passkey revocations, in the same file and through the same single writer as keys, so their
//! events take their place in the one contiguous log.

use async_trait::async_trait;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{Change, PasskeyRevocation, Revision, SessionRevocation};
use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde_json::json;

use super::{SqliteStore, Writer, backend, corrupt};
use crate::store::StoreError;
use crate::store::passkeys::{
    EnrollmentCreated, EnrollmentRecord, LoggedIn, Login, NewEnrollment, NewSession, PasskeyRecord,
    PasskeyRemoval, PasskeyRemoved, PasskeyStore, Pruned, Registered, RegisteredVia, Registration,
    Rotated, SessionContext, SessionRecord, SessionState, SigningKeyRecord, UserChanged,
    UserCreated, UserRecord,
};

/// Schema migration 3 (appended to the store's list): the passkey tables.
pub(super) const MIGRATION: &str = "
    -- handle: the WebAuthn user handle (16 random bytes). sessions_revoked_before_ms and
    -- state_prune_after_ms are the replicated UserState.
    CREATE TABLE users (
        user_id                    TEXT PRIMARY KEY,
        handle                     BLOB NOT NULL UNIQUE,
        created_ms                 INTEGER NOT NULL,
        disabled                   INTEGER NOT NULL,
        sessions_revoked_before_ms INTEGER NOT NULL,
        state_prune_after_ms       INTEGER NOT NULL
    );
    CREATE TABLE passkeys (
        passkey_id      TEXT PRIMARY KEY,
        user_id         TEXT NOT NULL REFERENCES users (user_id),
        credential_id   BLOB NOT NULL UNIQUE,
        name            TEXT NOT NULL,
        created_ms      INTEGER NOT NULL,
        last_used_ms    INTEGER,
        user_agent      TEXT NOT NULL,
        backup_eligible INTEGER NOT NULL,
        backed_up       INTEGER NOT NULL,
        credential_json TEXT NOT NULL
    );
    CREATE INDEX passkeys_by_user ON passkeys (user_id, created_ms);
    -- Only the blake3 hash of an enrollment token is kept.
    CREATE TABLE enrollments (
        token_hash    BLOB PRIMARY KEY,
        enrollment_id TEXT NOT NULL UNIQUE,
        user_id       TEXT NOT NULL REFERENCES users (user_id),
        created_ms    INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL,
        used_ms       INTEGER
    );
    -- No token is stored: tokens are signed and name their row.
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        user_id    TEXT NOT NULL,
        passkey_id TEXT NOT NULL,
        issued_ms  INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
    CREATE INDEX sessions_by_expiry ON sessions (expires_ms);
    -- Passkeys deleted while sessions they minted may still be unexpired.
    CREATE TABLE revoked_passkeys (
        passkey_id     TEXT PRIMARY KEY,
        user_id        TEXT NOT NULL,
        revoked_ms     INTEGER NOT NULL,
        prune_after_ms INTEGER NOT NULL
    );
    -- verify_until_ms NULL: the current key (at most one).
    CREATE TABLE signing_keys (
        key_id          TEXT PRIMARY KEY,
        secret          BLOB NOT NULL,
        public_key      BLOB NOT NULL,
        created_ms      INTEGER NOT NULL,
        verify_until_ms INTEGER
    );
    CREATE UNIQUE INDEX one_current_signing_key ON signing_keys ((verify_until_ms IS NULL))
        WHERE verify_until_ms IS NULL;";

/// Used enrollment links are kept this long for the record, then pruned.
const ENROLLMENT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

const USER_COLUMNS: &str =
    "user_id, handle, created_ms, disabled, sessions_revoked_before_ms, state_prune_after_ms";
const PASSKEY_COLUMNS: &str = "passkey_id, user_id, credential_id, name, created_ms, last_used_ms,
    user_agent, backup_eligible, backed_up, credential_json";
const SESSION_COLUMNS: &str = "session_id, user_id, passkey_id, issued_ms, expires_ms, revoked_ms";
const SIGNING_KEY_COLUMNS: &str = "key_id, secret, public_key, created_ms, verify_until_ms";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
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

fn passkey_from_row(row: &Row<'_>) -> rusqlite::Result<PasskeyRecord> {
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
    })
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        session_id: row.get(0)?,
        user_id: row.get(1)?,
        passkey_id: row.get(2)?,
        issued_unix_ms: row.get(3)?,
        expires_unix_ms: row.get(4)?,
        revoked_unix_ms: row.get(5)?,
    })
}

fn signing_key_from_row(row: &Row<'_>) -> rusqlite::Result<SigningKeyRecord> {
    let secret: Vec<u8> = row.get(1)?;
    let public_key: Vec<u8> = row.get(2)?;
    Ok(SigningKeyRecord {
        key_id: row.get(0)?,
        secret: secret
            .try_into()
            .map_err(|_| corrupt("signing key secret"))?,
        public_key: public_key
            .try_into()
            .map_err(|_| corrupt("signing key public key"))?,
        created_unix_ms: row.get(3)?,
        verify_until_unix_ms: row.get(4)?,
    })
}

fn enrollment_from_row(row: &Row<'_>) -> rusqlite::Result<EnrollmentRecord> {
    Ok(EnrollmentRecord {
        enrollment_id: row.get(0)?,
        user_id: row.get(1)?,
        created_unix_ms: row.get(2)?,
        expires_unix_ms: row.get(3)?,
        used_unix_ms: row.get(4)?,
    })
}

fn get_user(tx: &Transaction<'_>, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = ?1"),
        params![user_id],
        user_from_row,
    )
    .optional()
    .map_err(backend)
}

fn get_passkey(
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

fn get_session(
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

fn current_signing_key(tx: &Transaction<'_>) -> Result<Option<SigningKeyRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE verify_until_ms IS NULL"),
        [],
        signing_key_from_row,
    )
    .optional()
    .map_err(backend)
}

fn collect<T>(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = tx.prepare_cached(sql).map_err(backend)?;
    let rows = statement.query_map(params, map).map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
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
        "SELECT passkey_id, user_id, revoked_ms, prune_after_ms FROM revoked_passkeys
         WHERE prune_after_ms > ?1 ORDER BY passkey_id",
        params![now_unix_ms],
        |row| {
            Ok(PasskeyRevocation {
                passkey_id: row.get(0)?,
                user_id: row.get(1)?,
                revoked_unix_ms: row.get(2)?,
                prune_after_unix_ms: row.get(3)?,
            })
        },
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

impl Writer<'_> {
    /// Inserts a session issued now (inside this transaction, so ordered with revocations).
    fn open_session(
        &self,
        new: &NewSession,
        user_id: &str,
        passkey_id: &str,
    ) -> Result<SessionRecord, StoreError> {
        let session = SessionRecord {
            session_id: new.session_id.clone(),
            user_id: user_id.to_owned(),
            passkey_id: passkey_id.to_owned(),
            issued_unix_ms: self.now_unix_ms,
            expires_unix_ms: self.now_unix_ms.saturating_add(new.lifetime_ms),
            revoked_unix_ms: None,
        };
        self.tx
            .execute(
                &format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, NULL)"
                ),
                params![
                    session.session_id,
                    session.user_id,
                    session.passkey_id,
                    session.issued_unix_ms,
                    session.expires_unix_ms
                ],
            )
            .map_err(backend)?;
        Ok(session)
    }

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

    fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<Revision, StoreError> {
        self.tx
            .execute(
                &format!(
                    "INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
                ),
                params![
                    key.key_id,
                    &key.secret[..],
                    &key.public_key[..],
                    key.created_unix_ms,
                    key.verify_until_unix_ms
                ],
            )
            .map_err(backend)?;
        self.append(Change::SigningKey(key.verifying_key()))
    }
}

/// Whether an insert failed on a unique constraint.
fn is_conflict(error: &StoreError) -> bool {
    matches!(error, StoreError::Conflict(_))
}

#[async_trait]
impl PasskeyStore for SqliteStore {
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
            let mut revision = w.head;
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

    async fn create_enrollment(
        &self,
        enrollment: NewEnrollment,
        actor: &str,
    ) -> Result<EnrollmentCreated, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let Some(user) = get_user(w.tx, &enrollment.user_id)? else {
                return Ok(EnrollmentCreated::UnknownUser);
            };
            if user.disabled {
                return Ok(EnrollmentCreated::UserDisabled);
            }
            let record = EnrollmentRecord {
                enrollment_id: enrollment.enrollment_id,
                user_id: enrollment.user_id,
                created_unix_ms: w.now_unix_ms,
                expires_unix_ms: enrollment.expires_unix_ms,
                used_unix_ms: None,
            };
            w.tx.execute(
                "INSERT INTO enrollments (token_hash, enrollment_id, user_id, created_ms,
                    expires_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
                params![
                    &enrollment.token_hash[..],
                    record.enrollment_id,
                    record.user_id,
                    record.created_unix_ms,
                    record.expires_unix_ms
                ],
            )
            .map_err(backend)?;
            // Never the token, nor its hash.
            let detail = json!({
                "enrollmentId": record.enrollment_id,
                "expiresUnixMs": record.expires_unix_ms,
            });
            w.audit(
                &actor,
                "enrollment.create",
                &record.user_id,
                Revision::ZERO,
                &detail,
            )?;
            Ok(EnrollmentCreated::Created(record))
        })
        .await
    }

    async fn enrollment_by_token_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.read(move |tx| {
            tx.query_row(
                "SELECT enrollment_id, user_id, created_ms, expires_ms, used_ms
                 FROM enrollments WHERE token_hash = ?1",
                params![&token_hash[..]],
                enrollment_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

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
            let new = registration.passkey;
            match get_user(w.tx, &new.user_id)? {
                Some(user) if !user.disabled => {}
                _ => return Ok(Registered::UserDisabled),
            }
            let via = match &registration.via {
                RegisteredVia::Enrollment { token_hash } => {
                    // Consumes the link: exactly one registration can win it.
                    let consumed =
                        w.tx.execute(
                            "UPDATE enrollments SET used_ms = ?3
                             WHERE token_hash = ?1 AND user_id = ?2 AND used_ms IS NULL",
                            params![&token_hash[..], new.user_id, w.now_unix_ms],
                        )
                        .map_err(backend)?;
                    if consumed != 1 {
                        return Ok(Registered::EnrollmentUsed);
                    }
                    "enrollment"
                }
                RegisteredVia::Session { session_id } => {
                    let live = get_session(w.tx, session_id)?.is_some_and(|session| {
                        session.user_id == new.user_id
                            && session.revoked_unix_ms.is_none()
                            && session.expires_unix_ms > w.now_unix_ms
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
                created_unix_ms: w.now_unix_ms,
                last_used_unix_ms: registration.session.as_ref().map(|_| w.now_unix_ms),
                user_agent: new.user_agent,
                backup_eligible: new.backup_eligible,
                backed_up: new.backed_up,
                credential_json: new.credential_json,
            };
            let inserted = w.tx.execute(
                &format!(
                    "INSERT INTO passkeys ({PASSKEY_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
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
                    passkey.credential_json
                ],
            );
            match inserted.map_err(backend) {
                Ok(_) => {}
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
            let detail = json!({
                "passkeyId": passkey.passkey_id,
                "name": passkey.name,
                "via": via,
                "sessionId": session.as_ref().map(|s| s.session_id.as_str()),
                "userAgent": passkey.user_agent,
            });
            w.audit(
                &actor,
                "passkey.register",
                &passkey.user_id,
                Revision::ZERO,
                &detail,
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
            let detail = json!({
                "sessionId": session.session_id,
                "passkeyId": passkey.passkey_id,
                "expiresUnixMs": session.expires_unix_ms,
                "userAgent": login.session.user_agent,
            });
            w.audit(
                &actor,
                "session.create",
                &session.user_id,
                Revision::ZERO,
                &detail,
            )?;
            Ok(LoggedIn::Done(session))
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
                Some(passkey) if passkey.user_id == removal.user_id => passkey,
                // Someone else's passkey is "not found": its existence is not the caller's
                // business.
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
            let revocation = PasskeyRevocation {
                user_id: passkey.user_id.clone(),
                passkey_id: passkey.passkey_id.clone(),
                revoked_unix_ms: w.now_unix_ms,
                prune_after_unix_ms: removal.prune_after_unix_ms,
            };
            w.tx.execute(
                "INSERT OR REPLACE INTO revoked_passkeys (passkey_id, user_id, revoked_ms,
                    prune_after_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    revocation.passkey_id,
                    revocation.user_id,
                    revocation.revoked_unix_ms,
                    revocation.prune_after_unix_ms
                ],
            )
            .map_err(backend)?;
            let revision = w.append(Change::PasskeyRevoked(revocation))?;
            let detail = json!({ "passkeyId": passkey.passkey_id, "name": passkey.name });
            w.audit(&actor, removal.action, &passkey.user_id, revision, &detail)?;
            Ok(PasskeyRemoved::Removed { revision })
        })
        .await
    }

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
            let revision = w.append(Change::SessionRevoked(SessionRevocation {
                session_id: session.session_id.clone(),
                user_id: session.user_id.clone(),
                prune_after_unix_ms: session.expires_unix_ms,
            }))?;
            let detail = json!({ "sessionId": session.session_id });
            w.audit(
                &actor,
                "session.revoke",
                &session.user_id,
                revision,
                &detail,
            )?;
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

    async fn signing_key(&self, key_id: &str) -> Result<Option<SigningKeyRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.read(move |tx| {
            tx.query_row(
                &format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE key_id = ?1"),
                params![key_id],
                signing_key_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn current_signing_key(&self) -> Result<Option<SigningKeyRecord>, StoreError> {
        self.read(current_signing_key).await
    }

    async fn ensure_signing_key(
        &self,
        candidate: SigningKeyRecord,
        actor: &str,
    ) -> Result<SigningKeyRecord, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            if let Some(current) = current_signing_key(w.tx)? {
                return Ok(current);
            }
            let key = SigningKeyRecord {
                created_unix_ms: w.now_unix_ms,
                verify_until_unix_ms: None,
                ..candidate
            };
            let revision = w.insert_signing_key(&key)?;
            w.audit(
                &actor,
                "signing_key.create",
                &key.key_id,
                revision,
                &json!({}),
            )?;
            Ok(key)
        })
        .await
    }

    async fn rotate_signing_key(
        &self,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Rotated, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let previous = current_signing_key(w.tx)?;
            // Retire first (the unique index allows one current key), but announce the new key
            // first, so a gateway never has no current key to expect.
            let retired = previous
                .map(|mut key| -> Result<SigningKeyRecord, StoreError> {
                    key.verify_until_unix_ms = Some(retire_until_unix_ms);
                    w.tx.execute(
                        "UPDATE signing_keys SET verify_until_ms = ?2 WHERE key_id = ?1",
                        params![key.key_id, retire_until_unix_ms],
                    )
                    .map_err(backend)?;
                    Ok(key)
                })
                .transpose()?;
            let current = SigningKeyRecord {
                created_unix_ms: w.now_unix_ms,
                verify_until_unix_ms: None,
                ..next
            };
            let mut revision = w.insert_signing_key(&current)?;
            if let Some(retired) = &retired {
                revision = w.append(Change::SigningKey(retired.verifying_key()))?;
            }
            let detail = json!({
                "retiredKeyId": retired.as_ref().map(|key| key.key_id.as_str()),
                "retiredVerifyUntilUnixMs": retired.as_ref().map(|_| retire_until_unix_ms),
            });
            w.audit(
                &actor,
                "signing_key.rotate",
                &current.key_id,
                revision,
                &detail,
            )?;
            Ok(Rotated {
                current,
                retired,
                revision,
            })
        })
        .await
    }

    async fn prune(&self, now_unix_ms: i64) -> Result<Pruned, StoreError> {
        self.write(move |w| {
            let run = |sql: &str, cutoff: i64| w.tx.execute(sql, params![cutoff]).map_err(backend);
            Ok(Pruned {
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
                    now_unix_ms.saturating_sub(ENROLLMENT_RETENTION_MS),
                )?,
            })
        })
        .await
    }

    async fn session_state(&self) -> Result<SessionState, StoreError> {
        self.read(|tx| session_state(tx, now_unix_ms())).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use keygate_proto::Event;

    use super::*;
    use crate::store::passkeys::{NewPasskey, UpdatedCredential};
    use crate::store::{CommitObserver, Store};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Event>>);

    impl CommitObserver for Recorder {
        fn committed(&self, events: &[Event]) {
            self.0.lock().unwrap().extend_from_slice(events);
        }
    }

    const DAY_MS: i64 = 24 * 3600 * 1000;

    async fn store() -> (tempfile::TempDir, SqliteStore, Arc<Recorder>) {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::default());
        let store = SqliteStore::open(&dir.path().join("keygate.db"), recorder.clone() as _)
            .await
            .unwrap();
        (dir, store, recorder)
    }

    fn new_passkey(user_id: &str, id: &str, credential: u8) -> NewPasskey {
        NewPasskey {
            passkey_id: id.into(),
            user_id: user_id.into(),
            credential_id: vec![credential; 16],
            name: format!("device {credential}"),
            user_agent: "test".into(),
            backup_eligible: true,
            backed_up: false,
            credential_json: "{}".into(),
        }
    }

    fn new_session(id: &str) -> NewSession {
        NewSession {
            session_id: id.into(),
            lifetime_ms: DAY_MS,
            user_agent: "test".into(),
        }
    }

    async fn enroll(store: &SqliteStore, user_id: &str, token: u8) -> [u8; 32] {
        let token_hash = [token; 32];
        let created = store
            .create_enrollment(
                NewEnrollment {
                    enrollment_id: format!("enr_{token}"),
                    token_hash,
                    user_id: user_id.into(),
                    expires_unix_ms: now_unix_ms() + DAY_MS,
                },
                "admin",
            )
            .await
            .unwrap();
        assert!(matches!(created, EnrollmentCreated::Created(_)));
        token_hash
    }

    async fn register(
        store: &SqliteStore,
        user_id: &str,
        passkey_id: &str,
        credential: u8,
        via: RegisteredVia,
        session: Option<&str>,
    ) -> Registered {
        store
            .register_passkey(
                Registration {
                    passkey: new_passkey(user_id, passkey_id, credential),
                    via,
                    session: session.map(new_session),
                },
                "user",
            )
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_enrollment_link_registers_exactly_one_passkey_and_signs_in() {
        let (_dir, store, recorder) = store().await;
        store.create_user("alice", [1; 16], "admin").await.unwrap();
        assert_eq!(
            store.create_user("alice", [2; 16], "admin").await.unwrap(),
            UserCreated::AlreadyExists
        );
        let token_hash = enroll(&store, "alice", 9).await;
        let via = RegisteredVia::Enrollment { token_hash };
        let Registered::Done { passkey, session } =
            register(&store, "alice", "pk_a", 1, via.clone(), Some("ses_a")).await
        else {
            panic!("not registered")
        };
        let session = session.unwrap();
        assert_eq!(passkey.user_id, "alice");
        assert_eq!(session.passkey_id, "pk_a");
        assert_eq!(session.expires_unix_ms - session.issued_unix_ms, DAY_MS);
        let used = store.enrollment_by_token_hash(token_hash).await.unwrap();
        assert!(used.unwrap().used_unix_ms.is_some());

        // The link is spent; a second registration with it changes nothing.
        assert_eq!(
            register(&store, "alice", "pk_b", 2, via, Some("ses_b")).await,
            Registered::EnrollmentUsed
        );
        assert_eq!(store.list_passkeys("alice").await.unwrap().len(), 1);
        assert!(store.session_context("ses_b").await.unwrap().is_none());

        // The same credential cannot be registered twice, and the failed attempt leaves the
        // new link unused.
        let again = enroll(&store, "alice", 10).await;
        assert_eq!(
            register(
                &store,
                "alice",
                "pk_c",
                1,
                RegisteredVia::Enrollment { token_hash: again },
                Some("ses_c")
            )
            .await,
            Registered::CredentialExists
        );
        let unused = store.enrollment_by_token_hash(again).await.unwrap();
        assert_eq!(unused.unwrap().used_unix_ms, None);
        assert!(store.session_context("ses_c").await.unwrap().is_none());

        // None of this concerns gateways, except the signing key (none yet here).
        assert!(recorder.0.lock().unwrap().is_empty());
        let audit = store.list_audit(100).await.unwrap();
        let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "enrollment.create",
                "passkey.register",
                "enrollment.create",
                "user.create"
            ]
        );
    }

    #[tokio::test]
    async fn enrollments_for_unknown_or_disabled_users_are_refused() {
        let (_dir, store, _recorder) = store().await;
        let enrollment = |user: &str| NewEnrollment {
            enrollment_id: "enr_x".into(),
            token_hash: [3; 32],
            user_id: user.into(),
            expires_unix_ms: now_unix_ms() + DAY_MS,
        };
        assert_eq!(
            store
                .create_enrollment(enrollment("nobody"), "admin")
                .await
                .unwrap(),
            EnrollmentCreated::UnknownUser
        );
        store.create_user("bob", [4; 16], "admin").await.unwrap();
        store
            .set_user_enabled("bob", false, DAY_MS, "admin")
            .await
            .unwrap();
        assert_eq!(
            store
                .create_enrollment(enrollment("bob"), "admin")
                .await
                .unwrap(),
            EnrollmentCreated::UserDisabled
        );
    }

    #[tokio::test]
    async fn revocations_are_events_and_in_the_snapshot_until_pruned() {
        let (_dir, store, recorder) = store().await;
        store.create_user("alice", [1; 16], "admin").await.unwrap();
        store.create_user("bob", [2; 16], "admin").await.unwrap();
        let token = enroll(&store, "alice", 1).await;
        register(
            &store,
            "alice",
            "pk_a1",
            1,
            RegisteredVia::Enrollment { token_hash: token },
            Some("ses_1"),
        )
        .await;
        register(
            &store,
            "alice",
            "pk_a2",
            2,
            RegisteredVia::Session {
                session_id: "ses_1".into(),
            },
            None,
        )
        .await;

        // Self-service removal of someone else's passkey: not found, nothing changed.
        let removal = |user: &str, passkey: &str, keep_last| PasskeyRemoval {
            user_id: user.into(),
            passkey_id: passkey.into(),
            prune_after_unix_ms: now_unix_ms() + DAY_MS,
            keep_last,
            action: "passkey.remove",
        };
        assert_eq!(
            store
                .remove_passkey(removal("bob", "pk_a1", true), "user:bob")
                .await
                .unwrap(),
            PasskeyRemoved::NotFound
        );
        let PasskeyRemoved::Removed { revision } = store
            .remove_passkey(removal("alice", "pk_a1", true), "user:alice")
            .await
            .unwrap()
        else {
            panic!("not removed")
        };
        assert_eq!(revision, Revision(1));
        // The last one stays, unless an operator revokes it.
        assert_eq!(
            store
                .remove_passkey(removal("alice", "pk_a2", true), "user:alice")
                .await
                .unwrap(),
            PasskeyRemoved::LastPasskey
        );
        let ctx = store.session_context("ses_1").await.unwrap().unwrap();
        assert!(!ctx.passkey_exists, "the session's passkey is gone");

        // Sign-out, sign-out everywhere, disable: one event each, in order.
        assert_eq!(
            store.revoke_session("ses_1", "user:alice").await.unwrap(),
            Some(Revision(2))
        );
        assert_eq!(
            store.revoke_session("ses_1", "user:alice").await.unwrap(),
            None
        );
        let revoked = store
            .revoke_user_sessions("alice", DAY_MS, "admin")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revoked.revision, Revision(3));
        assert!(revoked.user.sessions_revoked_before_unix_ms > 0);
        let disabled = store
            .set_user_enabled("bob", false, DAY_MS, "admin")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((disabled.revision, disabled.changed), (Revision(4), true));
        let again = store
            .set_user_enabled("bob", false, DAY_MS, "admin")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.revision, again.changed), (Revision(4), false));
        assert!(
            store
                .set_user_enabled("nobody", false, DAY_MS, "admin")
                .await
                .unwrap()
                .is_none()
        );

        let events = recorder.0.lock().unwrap().clone();
        let kinds: Vec<_> = events
            .iter()
            .map(|e| match &e.change {
                Change::PasskeyRevoked(r) => format!("passkey {}", r.passkey_id),
                Change::SessionRevoked(r) => format!("session {}", r.session_id),
                Change::UserState(u) => format!("user {} disabled={}", u.user_id, u.disabled),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "passkey pk_a1",
                "session ses_1",
                "user alice disabled=false",
                "user bob disabled=true"
            ]
        );
        assert_eq!(
            store.events_after(Revision::ZERO, 100).await.unwrap(),
            events,
            "the encoded events read back as written"
        );

        // The snapshot carries all of it at its revision.
        let snapshot = store.snapshot().await.unwrap();
        assert_eq!(snapshot.revision, Revision(4));
        let state = &snapshot.sessions;
        assert_eq!(state.revoked_passkeys.len(), 1);
        assert_eq!(state.revoked_sessions.len(), 1);
        assert_eq!(state.users.len(), 2);
        assert_eq!(state, &store.session_state().await.unwrap());

        // Past every prune time only the disabled user remains.
        let later = now_unix_ms() + 2 * DAY_MS;
        let pruned = store.prune(later).await.unwrap();
        assert_eq!((pruned.revoked_passkeys, pruned.sessions), (1, 1));
        let remaining = store
            .read(move |tx| session_state(tx, later))
            .await
            .unwrap();
        assert!(remaining.revoked_passkeys.is_empty() && remaining.revoked_sessions.is_empty());
        let users: Vec<_> = remaining.users.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(users, ["bob"]);
    }

    #[tokio::test]
    async fn a_login_updates_the_passkey_and_is_refused_for_a_disabled_user() {
        let (_dir, store, _recorder) = store().await;
        store.create_user("alice", [1; 16], "admin").await.unwrap();
        let token = enroll(&store, "alice", 1).await;
        register(
            &store,
            "alice",
            "pk_a",
            1,
            RegisteredVia::Enrollment { token_hash: token },
            None,
        )
        .await;
        let login = |session: &str| Login {
            passkey_id: "pk_a".into(),
            updated_credential: Some(UpdatedCredential {
                credential_json: "{\"updated\":true}".into(),
                backup_eligible: true,
                backed_up: true,
            }),
            session: new_session(session),
        };
        let LoggedIn::Done(session) = store.record_login(login("ses_1"), "user").await.unwrap()
        else {
            panic!("not logged in")
        };
        assert_eq!(session.user_id, "alice");
        let passkey = store.list_passkeys("alice").await.unwrap().remove(0);
        assert_eq!(passkey.last_used_unix_ms, Some(session.issued_unix_ms));
        assert!(passkey.backed_up);
        assert_eq!(passkey.credential_json, "{\"updated\":true}");

        store
            .set_user_enabled("alice", false, DAY_MS, "admin")
            .await
            .unwrap();
        assert_eq!(
            store.record_login(login("ses_2"), "user").await.unwrap(),
            LoggedIn::UserDisabled
        );
        let user = store.get_user("alice").await.unwrap().unwrap();
        assert!(user.sessions_revoked_before_unix_ms > session.issued_unix_ms);
        // Enabling again keeps the old sessions revoked.
        let enabled = store
            .set_user_enabled("alice", true, DAY_MS, "admin")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            enabled.user.sessions_revoked_before_unix_ms,
            user.sessions_revoked_before_unix_ms
        );
        assert_eq!(
            store
                .user_by_handle([1; 16])
                .await
                .unwrap()
                .unwrap()
                .user_id,
            "alice"
        );
    }

    #[tokio::test]
    async fn signing_keys_are_created_once_and_rotated_with_two_events() {
        let (_dir, store, recorder) = store().await;
        let key = |id: &str, byte: u8| SigningKeyRecord {
            key_id: id.into(),
            secret: [byte; 32],
            public_key: [byte; 32],
            created_unix_ms: 0,
            verify_until_unix_ms: None,
        };
        let first = store
            .ensure_signing_key(key("sk_1", 1), "system")
            .await
            .unwrap();
        let same = store
            .ensure_signing_key(key("sk_2", 2), "system")
            .await
            .unwrap();
        assert_eq!(
            (first.key_id.as_str(), same.key_id.as_str()),
            ("sk_1", "sk_1")
        );
        assert!(format!("{first:?}").contains("<redacted>"));

        let until = now_unix_ms() + DAY_MS;
        let rotated = store
            .rotate_signing_key(key("sk_3", 3), until, "admin")
            .await
            .unwrap();
        assert_eq!(rotated.current.key_id, "sk_3");
        assert_eq!(rotated.retired.unwrap().verify_until_unix_ms, Some(until));
        assert_eq!(rotated.revision, Revision(3));
        assert_eq!(
            store.current_signing_key().await.unwrap().unwrap().key_id,
            "sk_3"
        );
        let events = recorder.0.lock().unwrap().clone();
        let keys: Vec<_> = events
            .iter()
            .map(|e| match &e.change {
                Change::SigningKey(k) => (k.key_id.clone(), k.verify_until_unix_ms),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("sk_1".to_owned(), None),
                ("sk_3".to_owned(), None),
                ("sk_1".to_owned(), Some(until))
            ]
        );
        assert_eq!(store.session_state().await.unwrap().signing_keys.len(), 2);
        // Once past its verify-until time the retired key is pruned.
        let pruned = store.prune(until + 1).await.unwrap();
        assert_eq!(pruned.signing_keys, 1);
        assert!(store.signing_key("sk_1").await.unwrap().is_none());
        let audit = store.list_audit(10).await.unwrap();
        assert!(
            audit
                .iter()
                .all(|entry| !entry.detail_json.contains("secret"))
        );
    }
}
