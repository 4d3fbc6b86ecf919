//! Passkeys: registration (by enrollment link or by a signed-in user), sign-in, removal.
//!
//! Refusals that depend on the stored state (a used enrollment link, the last passkey, a
//! disabled user) are decided inside the write's transaction and come back as outcomes, so
//! nothing is half done.

use async_trait::async_trait;
use keygate_proto::Revision;

use super::{NewSession, SessionRecord, StoreError};

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

/// How a registration was authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisteredVia {
    /// The enrollment link with this token hash; it must be unused.
    Enrollment { token_hash: [u8; 32] },
    /// A signed-in user in this session.
    Session { session_id: String },
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
    /// The user is disabled or gone.
    UserDisabled,
    /// The signed-in session adding the passkey was revoked or expired meanwhile.
    SessionInvalid,
    /// The credential id is registered already (to anyone).
    CredentialExists,
}

/// A successful authentication ceremony, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub passkey_id: String,
    /// The credential after the ceremony (counter, backup flags), when it changed.
    pub updated_credential: Option<UpdatedCredential>,
    pub session: NewSession,
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

/// Passkeys.
#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// The user's passkeys, oldest first.
    async fn list_passkeys(&self, user_id: &str) -> Result<Vec<PasskeyRecord>, StoreError>;

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

    /// Deletes a passkey and revokes every session it minted: one `PasskeyRevoked` event.
    async fn remove_passkey(
        &self,
        removal: PasskeyRemoval,
        actor: &str,
    ) -> Result<PasskeyRemoved, StoreError>;
}
