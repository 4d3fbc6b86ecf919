//! Users, named by the operator's own id: their state and the sessions they may hold.

use async_trait::async_trait;
use keygate_proto::{Revision, UserState};
use serde_json::json;

use super::{AuditNote, EnrollmentRecord, StoreError, VoidReason};

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
    /// A user created at `now_unix_ms`: enabled, with no session revoked.
    pub fn new(user_id: String, handle: [u8; 16], now_unix_ms: i64) -> Self {
        Self {
            user_id,
            handle,
            created_unix_ms: now_unix_ms,
            disabled: false,
            sessions_revoked_before_unix_ms: 0,
            state_prune_after_unix_ms: 0,
        }
    }

    /// Revokes every session issued until `now_unix_ms`: strictly before the next millisecond,
    /// so a session committed earlier in this same millisecond is covered too. Gateways
    /// remember that until the last such session has expired.
    pub fn revoke_sessions(&mut self, now_unix_ms: i64, session_lifetime_ms: i64) {
        let before = now_unix_ms.saturating_add(1);
        self.sessions_revoked_before_unix_ms = self.sessions_revoked_before_unix_ms.max(before);
        self.state_prune_after_unix_ms = self
            .state_prune_after_unix_ms
            .max(before.saturating_add(session_lifetime_ms));
    }

    /// Enables or disables the user at `now_unix_ms`; false when it already was in that state.
    /// Disabling revokes every session issued until now, so that enabling again does not bring
    /// back a session from before the disable.
    pub fn set_enabled(
        &mut self,
        enabled: bool,
        now_unix_ms: i64,
        session_lifetime_ms: i64,
    ) -> bool {
        if self.disabled != enabled {
            return false;
        }
        self.disabled = !enabled;
        if !enabled {
            self.revoke_sessions(now_unix_ms, session_lifetime_ms);
        }
        true
    }

    /// The audit row of the user's creation.
    pub fn created_audit(&self) -> AuditNote {
        AuditNote {
            action: "user.create",
            target: self.user_id.clone(),
            detail: json!({}),
        }
    }

    /// The audit row of a revocation of the user's sessions.
    pub fn sessions_revoked_audit(&self) -> AuditNote {
        AuditNote {
            action: "sessions.revoke",
            target: self.user_id.clone(),
            detail: json!({ "revokedBeforeUnixMs": self.sessions_revoked_before_unix_ms }),
        }
    }

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

/// Result of [`UserStore::create_user`].
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
    /// The enrollment links this change voided (a disable voids every open one).
    pub voided_enrollments: Vec<String>,
}

impl UserChanged {
    /// The revision the change's audit row names: 0 when nothing changed.
    pub fn audited_revision(&self) -> Revision {
        if self.changed {
            self.revision
        } else {
            Revision::ZERO
        }
    }

    /// Whether this change closes the user's enrollment links: a disable that changed the
    /// state does. Enabling never reopens them.
    pub fn voids_enrollments(&self) -> bool {
        self.changed && self.user.disabled
    }

    /// Voids, at `now_unix_ms`, every open one of the user's enrollment `links` (when
    /// [`UserChanged::voids_enrollments`]) and notes their ids; returns the voided links, for
    /// the backend to write in the change's transaction.
    pub fn void_enrollments(
        &mut self,
        links: Vec<EnrollmentRecord>,
        now_unix_ms: i64,
    ) -> Vec<EnrollmentRecord> {
        if !self.voids_enrollments() {
            return Vec::new();
        }
        let voided: Vec<EnrollmentRecord> = links
            .into_iter()
            .filter_map(|mut link| {
                let open = link.user_id == self.user.user_id
                    && link.void(now_unix_ms, VoidReason::UserDisabled);
                open.then_some(link)
            })
            .collect();
        self.voided_enrollments = voided
            .iter()
            .map(|link| link.enrollment_id.clone())
            .collect();
        voided
    }

    /// The audit row of an enable or disable, whether or not it changed anything, with the
    /// enrollment links a disable voided.
    pub fn enabled_audit(&self) -> AuditNote {
        AuditNote {
            action: if self.user.disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            target: self.user.user_id.clone(),
            detail: json!({
                "changed": self.changed,
                "voidedEnrollments": self.voided_enrollments,
            }),
        }
    }
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

    /// Disables (revoking every session issued until now and voiding every open enrollment
    /// link, [`UserChanged::void_enrollments`]) or enables a user; appends one `UserState`
    /// event when the state changes. `None`: no such user.
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIFETIME_MS: i64 = 1_000;

    #[test]
    fn disabling_revokes_every_session_issued_until_now_and_enabling_keeps_that() {
        let mut user = UserRecord::new("alice".into(), [1; 16], 100);
        assert!(user.set_enabled(false, 500, LIFETIME_MS));
        assert!(user.disabled);
        // Strictly before the next millisecond: a session issued at 500 is revoked too.
        assert_eq!(user.sessions_revoked_before_unix_ms, 501);
        assert_eq!(user.state_prune_after_unix_ms, 501 + LIFETIME_MS);
        assert!(
            !user.set_enabled(false, 600, LIFETIME_MS),
            "already disabled"
        );
        assert_eq!(user.sessions_revoked_before_unix_ms, 501);

        assert!(user.set_enabled(true, 700, LIFETIME_MS));
        assert!(!user.disabled);
        assert_eq!(
            user.sessions_revoked_before_unix_ms, 501,
            "enabling brings no session back"
        );
        assert!(!user.set_enabled(true, 800, LIFETIME_MS), "already enabled");
    }

    #[test]
    fn a_revocation_never_moves_back() {
        let mut user = UserRecord::new("alice".into(), [1; 16], 100);
        user.revoke_sessions(500, LIFETIME_MS);
        user.revoke_sessions(400, 10);
        assert_eq!(
            (
                user.sessions_revoked_before_unix_ms,
                user.state_prune_after_unix_ms
            ),
            (501, 501 + LIFETIME_MS)
        );
    }

    #[test]
    fn a_disable_voids_the_users_open_links_and_an_enable_none() {
        let link = |id: &str, user_id: &str, expires_unix_ms| {
            crate::store::NewEnrollment {
                enrollment_id: id.into(),
                token_hash: [1; 32],
                user_id: user_id.into(),
                expires_unix_ms,
            }
            .record(100, "ops")
        };
        let links = || {
            vec![
                link("enr_open", "alice", 1_000),
                link("enr_expired", "alice", 200),
                link("enr_bob", "bob", 1_000),
            ]
        };
        let mut user = UserRecord::new("alice".into(), [1; 16], 100);
        user.set_enabled(false, 500, LIFETIME_MS);
        let mut disabled = UserChanged {
            user,
            revision: Revision(3),
            changed: true,
            voided_enrollments: Vec::new(),
        };
        let voided = disabled.void_enrollments(links(), 500);
        assert_eq!(voided.len(), 1);
        assert_eq!(voided[0].enrollment_id, "enr_open");
        assert_eq!(
            voided[0]
                .voided
                .map(|voided| (voided.at_unix_ms, voided.reason)),
            Some((500, VoidReason::UserDisabled))
        );
        assert_eq!(disabled.voided_enrollments, ["enr_open"]);
        assert_eq!(
            disabled.enabled_audit().detail["voidedEnrollments"],
            json!(["enr_open"])
        );

        let unchanged = UserChanged {
            changed: false,
            voided_enrollments: Vec::new(),
            ..disabled.clone()
        };
        let mut enabled = disabled.clone();
        enabled.user.disabled = false;
        for mut change in [unchanged, enabled] {
            assert!(!change.voids_enrollments());
            assert!(change.void_enrollments(links(), 500).is_empty());
        }
    }

    #[test]
    fn only_a_change_names_its_revision_in_the_audit_row() {
        let user = UserRecord::new("alice".into(), [1; 16], 100);
        let unchanged = UserChanged {
            user,
            revision: Revision(7),
            changed: false,
            voided_enrollments: Vec::new(),
        };
        assert_eq!(unchanged.audited_revision(), Revision::ZERO);
        assert_eq!(unchanged.enabled_audit().action, "user.enable");
        let changed = UserChanged {
            changed: true,
            ..unchanged
        };
        assert_eq!(changed.audited_revision(), Revision(7));
    }
}
