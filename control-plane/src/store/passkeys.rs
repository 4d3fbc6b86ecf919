//! Passkeys: registration (by enrollment link or by a signed-in user), sign-in, removal.
//!
//! Refusals that depend on the stored state (a used enrollment link, the last passkey, a
//! disabled user) are decided inside the write's transaction and come back as outcomes, so
//! nothing is half done.

use async_trait::async_trait;
use keygate_proto::{PasskeyRevocation, Revision};
use serde_json::json;

use super::{AuditNote, EnrollmentRecord, EnrollmentState, NewSession, SessionRecord, StoreError};

/// A registered passkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRecord {
    /// `pk_…`
    pub passkey_id: String,
    pub user_id: String,
    /// The WebAuthn credential id (unique across all users).
    pub credential_id: Vec<u8>,
    /// Device name the user gave; may be empty.
    pub name: String,
    pub created_unix_ms: i64,
    pub last_used_unix_ms: Option<i64>,
    /// The `User-Agent` of the registration request.
    pub user_agent: String,
    /// The credential may be synced (a multi-device passkey).
    pub backup_eligible: bool,
    /// The credential is currently backed up.
    pub backed_up: bool,
    /// The relying party library's serialised credential (public key, counter, flags).
    pub credential_json: String,
    /// The authenticator model's AAGUID from the registration's authenticator data (all zero
    /// when the authenticator keeps it private); `None` for passkeys registered before keygate
    /// recorded it.
    pub aaguid: Option<[u8; 16]>,
}

/// A passkey that finished registration, to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPasskey {
    pub passkey_id: String,
    pub user_id: String,
    pub credential_id: Vec<u8>,
    pub name: String,
    pub user_agent: String,
    pub backup_eligible: bool,
    pub backed_up: bool,
    pub credential_json: String,
    /// The AAGUID in the registration's attested credential data.
    pub aaguid: [u8; 16],
}

/// Registers a passkey: by enrollment link (consumed in the same transaction) or by a signed-in
/// user adding one (whose session must still be valid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub passkey: NewPasskey,
    pub via: RegisteredVia,
    /// A session to open at once (enrollment signs the user in).
    pub session: Option<NewSession>,
}

impl Registration {
    /// The passkey as stored when registered at `now_unix_ms`: used now if the registration
    /// signs the user in.
    pub fn record(&self, now_unix_ms: i64) -> PasskeyRecord {
        let new = &self.passkey;
        PasskeyRecord {
            passkey_id: new.passkey_id.clone(),
            user_id: new.user_id.clone(),
            credential_id: new.credential_id.clone(),
            name: new.name.clone(),
            created_unix_ms: now_unix_ms,
            last_used_unix_ms: self.session.as_ref().map(|_| now_unix_ms),
            user_agent: new.user_agent.clone(),
            backup_eligible: new.backup_eligible,
            backed_up: new.backed_up,
            credential_json: new.credential_json.clone(),
            aaguid: Some(new.aaguid),
        }
    }

    /// The audit row of the registration, with the session it opened, if any.
    pub fn audit(&self, session: Option<&SessionRecord>) -> AuditNote {
        let new = &self.passkey;
        AuditNote {
            action: "passkey.register",
            target: new.user_id.clone(),
            detail: json!({
                "passkeyId": new.passkey_id,
                "name": new.name,
                "via": self.via.name(),
                "sessionId": session.map(|s| s.session_id.as_str()),
                "userAgent": new.user_agent,
            }),
        }
    }
}

/// How a registration was authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisteredVia {
    /// The enrollment link with this token hash; it must be unused.
    Enrollment { token_hash: [u8; 32] },
    /// A signed-in user in this session.
    Session { session_id: String },
}

impl RegisteredVia {
    /// How the audit row names it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Enrollment { .. } => "enrollment",
            Self::Session { .. } => "session",
        }
    }
}

/// Result of [`PasskeyStore::register_passkey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    Done {
        passkey: Box<PasskeyRecord>,
        session: Option<SessionRecord>,
    },
    /// The enrollment link is unknown, for another user, or already used.
    EnrollmentUsed,
    /// The enrollment link expired between its ceremony's begin and its finish.
    EnrollmentExpired,
    /// An operator revoked the enrollment link.
    EnrollmentRevoked,
    /// The enrollment link was voided when its user was disabled (enabling does not revive
    /// it).
    EnrollmentVoided,
    /// The user is disabled or gone.
    UserDisabled,
    /// The signed-in session adding the passkey was revoked or expired meanwhile.
    SessionInvalid,
    /// The credential id is registered already (to anyone).
    CredentialExists,
}

impl Registered {
    /// Consumes the enrollment link `link` (`None`: no link has the registration's token) for
    /// a registration of `user_id` at `now_unix_ms`: the link marked used, for the backend to
    /// write in the registration's transaction, or why it cannot be. Only an open link of that
    /// user can; a link of someone else's is as good as spent (its existence is not this
    /// caller's business).
    pub fn consume_link(
        link: Option<EnrollmentRecord>,
        user_id: &str,
        now_unix_ms: i64,
    ) -> Result<EnrollmentRecord, Self> {
        let Some(mut link) = link.filter(|link| link.user_id == user_id) else {
            return Err(Self::EnrollmentUsed);
        };
        match link.state(now_unix_ms) {
            EnrollmentState::Open => {
                link.used_unix_ms = Some(now_unix_ms);
                Ok(link)
            }
            EnrollmentState::Used => Err(Self::EnrollmentUsed),
            EnrollmentState::Expired => Err(Self::EnrollmentExpired),
            EnrollmentState::Revoked => Err(Self::EnrollmentRevoked),
            EnrollmentState::Voided => Err(Self::EnrollmentVoided),
        }
    }
}

/// A successful authentication ceremony, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub passkey_id: String,
    /// The credential after the ceremony (counter, backup flags), when it changed.
    pub updated_credential: Option<UpdatedCredential>,
    pub session: NewSession,
}

impl Login {
    /// The audit row of the sign-in that opened `session`.
    pub fn audit(&self, session: &SessionRecord) -> AuditNote {
        AuditNote {
            action: "session.create",
            target: session.user_id.clone(),
            detail: json!({
                "sessionId": session.session_id,
                "passkeyId": session.passkey_id,
                "expiresUnixMs": session.expires_unix_ms,
                "userAgent": self.session.user_agent,
            }),
        }
    }
}

/// A passkey's credential after an authentication updated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatedCredential {
    pub credential_json: String,
    pub backup_eligible: bool,
    pub backed_up: bool,
}

/// Result of [`PasskeyStore::record_login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoggedIn {
    Done(SessionRecord),
    /// The passkey was removed meanwhile.
    PasskeyGone,
    UserDisabled,
}

/// Which passkey to remove, and on whose behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRemoval {
    pub user_id: String,
    pub passkey_id: String,
    /// When gateways may forget the revocation: once every session it minted has expired.
    pub prune_after_unix_ms: i64,
    /// Self-service removal refuses to remove the user's last passkey.
    pub keep_last: bool,
    /// The audit action: `passkey.revoke` (operator) or `passkey.remove` (self-service).
    pub action: &'static str,
}

impl PasskeyRemoval {
    /// Whether `passkey` is one this removal may remove: the user's own. Someone else's passkey
    /// is "not found": its existence is not the caller's business.
    pub fn may_remove(&self, passkey: &PasskeyRecord) -> bool {
        passkey.user_id == self.user_id
    }

    /// What gateways replicate of the removal at `now_unix_ms`.
    pub fn revocation(&self, now_unix_ms: i64) -> PasskeyRevocation {
        PasskeyRevocation {
            user_id: self.user_id.clone(),
            passkey_id: self.passkey_id.clone(),
            revoked_unix_ms: now_unix_ms,
            prune_after_unix_ms: self.prune_after_unix_ms,
        }
    }

    /// The audit row of the removal of `passkey`.
    pub fn audit(&self, passkey: &PasskeyRecord) -> AuditNote {
        AuditNote {
            action: self.action,
            target: passkey.user_id.clone(),
            detail: json!({ "passkeyId": passkey.passkey_id, "name": passkey.name }),
        }
    }
}

/// Result of [`PasskeyStore::remove_passkey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasskeyRemoved {
    Removed {
        revision: Revision,
    },
    /// No such passkey for this user (it may belong to someone else).
    NotFound,
    /// It is the user's only passkey and `keep_last` was asked.
    LastPasskey,
}

/// A new device name for one of a user's passkeys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRename {
    pub user_id: String,
    pub passkey_id: String,
    /// The new name, checked already (`users::clean_passkey_name`).
    pub name: String,
    /// The audit action: `passkey.rename` (by its user or by an operator).
    pub action: &'static str,
}

impl PasskeyRename {
    /// Whether `passkey` is one this rename may change: the user's own. Someone else's passkey
    /// is "not found", as for a removal.
    pub fn may_rename(&self, passkey: &PasskeyRecord) -> bool {
        passkey.user_id == self.user_id
    }

    /// The audit row of the rename of `passkey` (as it was before).
    pub fn audit(&self, passkey: &PasskeyRecord) -> AuditNote {
        AuditNote {
            action: self.action,
            target: passkey.user_id.clone(),
            detail: json!({
                "passkeyId": passkey.passkey_id,
                "oldName": passkey.name,
                "name": self.name,
            }),
        }
    }
}

/// Result of [`PasskeyStore::rename_passkey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasskeyRenamed {
    /// The passkey as it is now.
    Renamed(Box<PasskeyRecord>),
    /// No such passkey for this user (it may belong to someone else).
    NotFound,
}

/// Passkeys.
#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// The user's passkeys, oldest first.
    async fn list_passkeys(&self, user_id: &str) -> Result<Vec<PasskeyRecord>, StoreError>;

    /// Every user's passkeys in passkey id order, at most `limit` of them after the passkey id
    /// `after` (from the start when `None`): one page of a scan over all passkeys.
    async fn passkeys_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PasskeyRecord>, StoreError>;

    async fn passkey_by_credential_id(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRecord>, StoreError>;

    /// Stores a registered passkey and opens its session, consuming the enrollment link.
    async fn register_passkey(
        &self,
        registration: Registration,
        actor: &str,
    ) -> Result<Registered, StoreError>;

    /// Records a sign-in: updates the passkey (last used, counter) and opens a session.
    async fn record_login(&self, login: Login, actor: &str) -> Result<LoggedIn, StoreError>;

    /// Gives one of the user's passkeys a new name, with an audit row. No event: gateways do
    /// not know passkey names.
    async fn rename_passkey(
        &self,
        rename: PasskeyRename,
        actor: &str,
    ) -> Result<PasskeyRenamed, StoreError>;

    /// Deletes a passkey and revokes every session it minted: one `PasskeyRevoked` event.
    async fn remove_passkey(
        &self,
        removal: PasskeyRemoval,
        actor: &str,
    ) -> Result<PasskeyRemoved, StoreError>;
}
