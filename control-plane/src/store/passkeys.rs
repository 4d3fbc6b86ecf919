//! The passkey half of the store interface: users, their passkeys, enrollment links, sessions,
//! session signing keys and the revocation sets, in domain types only.
//!
//! As with keys, every write is one transaction that changes the tables, appends the change's
//! events (only what gateways must know: revocations, user states, signing keys) and writes one
//! audit row. Refusals that depend on the stored state (a used enrollment link, the last
//! passkey, a disabled user) are decided inside that transaction and come back as outcomes, so
//! nothing is half done.

use std::fmt;

use async_trait::async_trait;
use keygate_proto::{
    PasskeyRevocation, Revision, SessionRevocation, SessionVerifyingKey, UserState,
};

use super::StoreError;

/// A user, named by the operator's own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: String,
    /// The WebAuthn user handle: 16 random bytes, never shown; a discoverable sign-in names the
    /// user by it.
    pub handle: [u8; 16],
    pub created_unix_ms: i64,
    pub disabled: bool,
    /// Sessions issued before this instant are revoked; 0 when none are.
    pub sessions_revoked_before_unix_ms: i64,
    /// Until when gateways must remember the user's state (while enabled).
    pub state_prune_after_unix_ms: i64,
}

impl UserRecord {
    /// What gateways replicate of this user.
    pub fn state(&self) -> UserState {
        UserState {
            user_id: self.user_id.clone(),
            disabled: self.disabled,
            sessions_revoked_before_unix_ms: self.sessions_revoked_before_unix_ms,
            prune_after_unix_ms: self.state_prune_after_unix_ms,
        }
    }
}

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

/// An enrollment link as stored: only the hash of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRecord {
    /// `enr_…`, for the audit log.
    pub enrollment_id: String,
    pub user_id: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub used_unix_ms: Option<i64>,
}

/// A new enrollment link.
#[derive(Clone, PartialEq, Eq)]
pub struct NewEnrollment {
    pub enrollment_id: String,
    /// blake3 of the token; the token itself is never stored.
    pub token_hash: [u8; 32],
    pub user_id: String,
    pub expires_unix_ms: i64,
}

impl fmt::Debug for NewEnrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEnrollment")
            .field("enrollment_id", &self.enrollment_id)
            .field("user_id", &self.user_id)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

/// A session as the control plane keeps it. The token is never stored: it is signed, and its
/// claims name this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// `ses_…`
    pub session_id: String,
    pub user_id: String,
    pub passkey_id: String,
    pub issued_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub revoked_unix_ms: Option<i64>,
}

/// A session to open; the store sets its issue time inside the transaction, so that it is
/// ordered with revocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub session_id: String,
    /// How long the session lasts from its issue time, in milliseconds.
    pub lifetime_ms: i64,
    /// For the audit row: the client's `User-Agent`.
    pub user_agent: String,
}

/// A session signing key with its private half. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// `sk_…`, the `kid` in token footers.
    pub key_id: String,
    pub secret: [u8; 32],
    pub public_key: [u8; 32],
    pub created_unix_ms: i64,
    /// `None`: the current key. Set once retired: its tokens verify until then.
    pub verify_until_unix_ms: Option<i64>,
}

impl SigningKeyRecord {
    /// What gateways replicate of this key.
    pub fn verifying_key(&self) -> SessionVerifyingKey {
        SessionVerifyingKey {
            key_id: self.key_id.clone(),
            public_key: self.public_key,
            created_unix_ms: self.created_unix_ms,
            verify_until_unix_ms: self.verify_until_unix_ms,
        }
    }
}

impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .field("created_unix_ms", &self.created_unix_ms)
            .field("verify_until_unix_ms", &self.verify_until_unix_ms)
            .finish()
    }
}

/// The session state gateways replicate, at one revision: every signing key that still
/// verifies, and the revocations not yet prunable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    pub signing_keys: Vec<SessionVerifyingKey>,
    pub revoked_sessions: Vec<SessionRevocation>,
    pub revoked_passkeys: Vec<PasskeyRevocation>,
    /// Users that are disabled or whose "revoked before" still matters.
    pub users: Vec<UserState>,
}

/// Result of [`PasskeyStore::create_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCreated {
    Created(UserRecord),
    AlreadyExists,
}

/// Result of a change to a user's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChanged {
    pub user: UserRecord,
    /// The event's revision; the unchanged head when nothing changed.
    pub revision: Revision,
    pub changed: bool,
}

/// Result of [`PasskeyStore::create_enrollment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentCreated {
    Created(EnrollmentRecord),
    UnknownUser,
    UserDisabled,
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

/// A session as the control plane checks it: the row, its user and whether its passkey still
/// exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionContext {
    pub session: SessionRecord,
    pub user: Option<UserRecord>,
    pub passkey_exists: bool,
}

/// Result of a signing-key rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub current: SigningKeyRecord,
    /// The key that was current before, now retired; `None` if there was none.
    pub retired: Option<SigningKeyRecord>,
    pub revision: Revision,
}

/// What a prune pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub signing_keys: usize,
    pub revoked_passkeys: usize,
    pub sessions: usize,
    pub enrollments: usize,
}

/// The control plane's passkey state. Part of [`super::Store`].
#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// Creates a user (enabled). Appends no event: gateways need nothing about a new user.
    async fn create_user(
        &self,
        user_id: &str,
        handle: [u8; 16],
        actor: &str,
    ) -> Result<UserCreated, StoreError>;

    async fn get_user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError>;

    async fn user_by_handle(&self, handle: [u8; 16]) -> Result<Option<UserRecord>, StoreError>;

    /// Disables (revoking every session issued until now) or enables a user; appends one
    /// `UserState` event when the state changes. `None`: no such user.
    async fn set_user_enabled(
        &self,
        user_id: &str,
        enabled: bool,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<Option<UserChanged>, StoreError>;

    /// Revokes every session of the user issued until now: one `UserState` event.
    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<Option<UserChanged>, StoreError>;

    async fn create_enrollment(
        &self,
        enrollment: NewEnrollment,
        actor: &str,
    ) -> Result<EnrollmentCreated, StoreError>;

    async fn enrollment_by_token_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<EnrollmentRecord>, StoreError>;

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

    /// Revokes one session (sign-out): one `SessionRevoked` event. `None` when the session is
    /// unknown or already revoked.
    async fn revoke_session(
        &self,
        session_id: &str,
        actor: &str,
    ) -> Result<Option<Revision>, StoreError>;

    async fn session_context(&self, session_id: &str)
    -> Result<Option<SessionContext>, StoreError>;

    async fn signing_key(&self, key_id: &str) -> Result<Option<SigningKeyRecord>, StoreError>;

    /// The key new sessions are signed with.
    async fn current_signing_key(&self) -> Result<Option<SigningKeyRecord>, StoreError>;

    /// Makes `candidate` the current key if there is none (first start); returns the current
    /// key either way. Appends one `SigningKey` event when it inserts.
    async fn ensure_signing_key(
        &self,
        candidate: SigningKeyRecord,
        actor: &str,
    ) -> Result<SigningKeyRecord, StoreError>;

    /// Makes `next` the current key and retires the previous one until `retire_until`: two
    /// `SigningKey` events, the new key first.
    async fn rotate_signing_key(
        &self,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Rotated, StoreError>;

    /// Deletes what no one needs any more at `now`: retired keys past their verify-until,
    /// passkey revocations and sessions past their prune time, old enrollment links. Not
    /// replicated: gateways prune by the same times themselves.
    async fn prune(&self, now_unix_ms: i64) -> Result<Pruned, StoreError>;

    /// The replicated session state (what a snapshot carries), as of now.
    async fn session_state(&self) -> Result<SessionState, StoreError>;
}
