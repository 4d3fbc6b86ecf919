//! Users, named by the operator's own id: their state and the sessions they may hold.

use async_trait::async_trait;
use keygate_proto::{Revision, UserState};

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

/// Users.
#[async_trait]
pub trait UserStore: Send + Sync {
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
}
