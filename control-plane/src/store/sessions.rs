//! Sessions and the session state gateways replicate (signing keys and revocation sets).

use async_trait::async_trait;
use keygate_proto::{
    PasskeyRevocation, Revision, SessionRevocation, SessionVerifyingKey, UserState,
};
use serde_json::json;

use super::{AuditNote, StoreError, UserRecord};

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

impl SessionRecord {
    /// Whether the session still signs `user_id` in at `now_unix_ms`: it is theirs, not
    /// revoked and not expired.
    pub fn is_live_for(&self, user_id: &str, now_unix_ms: i64) -> bool {
        self.user_id == user_id
            && self.revoked_unix_ms.is_none()
            && self.expires_unix_ms > now_unix_ms
    }

    /// What gateways replicate of the session's revocation: they remember it until the session
    /// would have expired anyway.
    pub fn revocation(&self) -> SessionRevocation {
        SessionRevocation {
            session_id: self.session_id.clone(),
            user_id: self.user_id.clone(),
            prune_after_unix_ms: self.expires_unix_ms,
        }
    }

    /// The audit row of the session's revocation (a sign-out).
    pub fn revoked_audit(&self) -> AuditNote {
        AuditNote {
            action: "session.revoke",
            target: self.user_id.clone(),
            detail: json!({ "sessionId": self.session_id }),
        }
    }
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

impl NewSession {
    /// The session of `user_id`, signed in with `passkey_id`, issued at `now_unix_ms`.
    pub fn issue(&self, user_id: &str, passkey_id: &str, now_unix_ms: i64) -> SessionRecord {
        SessionRecord {
            session_id: self.session_id.clone(),
            user_id: user_id.to_owned(),
            passkey_id: passkey_id.to_owned(),
            issued_unix_ms: now_unix_ms,
            expires_unix_ms: now_unix_ms.saturating_add(self.lifetime_ms),
            revoked_unix_ms: None,
        }
    }
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
