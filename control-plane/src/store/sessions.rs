//! Sessions and the session state gateways replicate (signing keys and revocation sets).

use async_trait::async_trait;
use keygate_proto::{
    PasskeyRevocation, Revision, SessionRevocation, SessionVerifyingKey, UserState,
};

use super::{StoreError, UserRecord};

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

/// A session as the control plane checks it: the row, its user and whether its passkey still
/// exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionContext {
    pub session: SessionRecord,
    pub user: Option<UserRecord>,
    pub passkey_exists: bool,
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

/// What a prune pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub signing_keys: usize,
    pub revoked_passkeys: usize,
    pub sessions: usize,
    pub enrollments: usize,
}

/// Sessions, and pruning what gateways no longer need.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Revokes one session (sign-out): one `SessionRevoked` event. `None` when the session is
    /// unknown or already revoked.
    async fn revoke_session(
        &self,
        session_id: &str,
        actor: &str,
    ) -> Result<Option<Revision>, StoreError>;

    async fn session_context(&self, session_id: &str)
    -> Result<Option<SessionContext>, StoreError>;

    /// The replicated session state (what a snapshot carries), as of now.
    async fn session_state(&self) -> Result<SessionState, StoreError>;

    /// Deletes what no one needs any more at `now`: retired keys past their verify-until,
    /// passkey revocations and sessions past their prune time, old enrollment links. Not
    /// replicated: gateways prune by the same times themselves.
    async fn prune(&self, now_unix_ms: i64) -> Result<Pruned, StoreError>;
}
