//! Enrollment links: one-time, expiring, revocable, stored only as the hash of their token.
//!
//! A link is open until it is used, expires, is revoked by an operator (or, the same for its
//! holder, by the control plane when the email carrying it could not be sent), or is voided
//! because its user was disabled ([`EnrollmentState`]); only an open link begins or finishes an
//! enrollment. Revoking and voiding are decided here ([`EnrollmentRecord::void`]); the
//! backends read and write the rows.

use std::fmt;

use async_trait::async_trait;
use serde_json::json;

use super::{AuditNote, StoreError, UserRecord};

/// How long an enrollment link is kept after it expires (used or not), for the record, before
/// it is pruned.
const ENROLLMENT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// An enrollment link as stored: only the hash of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRecord {
    /// `enr_…`, for the audit log.
    pub enrollment_id: String,
    pub user_id: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub used_unix_ms: Option<i64>,
    /// Set once the link was revoked or voided before it was used.
    pub voided: Option<Voided>,
    /// The operator token that created the link (empty for links made before this was kept).
    pub created_by: String,
}

/// Where an enrollment link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentState {
    /// Unused, unexpired, neither revoked nor voided: it may still enroll a passkey.
    Open,
    Used,
    Expired,
    /// Revoked by an operator, or because the email carrying it could not be sent.
    Revoked,
    /// Voided because its user was disabled; enabling the user again does not revive it.
    Voided,
}

impl EnrollmentState {
    /// How operators see the state: `open`, `used`, `expired`, `revoked`, `voided`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Used => "used",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Voided => "voided",
        }
    }
}

/// When and why an unused link was closed early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voided {
    pub at_unix_ms: i64,
    pub reason: VoidReason,
}

/// Why a link was closed before it was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoidReason {
    /// An operator revoked it (`keygate enrollments revoke`).
    Revoked,
    /// Its user was disabled.
    UserDisabled,
    /// The email that was to carry it could not be sent (`enrollments create --email`): nobody
    /// holds it, and nobody may.
    EmailFailed,
}

impl VoidReason {
    /// The stored form (`enrollments.voided_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::UserDisabled => "user_disabled",
            Self::EmailFailed => "email_failed",
        }
    }
}

impl Voided {
    /// From the `voided_ms` and `voided_reason` columns: both set, or neither. `Err` says what
    /// does not decode (a hand-edited database).
    pub fn from_columns(
        at_unix_ms: Option<i64>,
        reason: Option<&str>,
    ) -> Result<Option<Self>, String> {
        let reason = match reason {
            None => None,
            Some("revoked") => Some(VoidReason::Revoked),
            Some("user_disabled") => Some(VoidReason::UserDisabled),
            Some("email_failed") => Some(VoidReason::EmailFailed),
            Some(other) => return Err(format!("enrollment void reason {other:?}")),
        };
        match (at_unix_ms, reason) {
            (Some(at_unix_ms), Some(reason)) => Ok(Some(Self { at_unix_ms, reason })),
            (None, None) => Ok(None),
            _ => Err("enrollment voided_ms without voided_reason, or the reverse".into()),
        }
    }

    /// The `voided_ms` and `voided_reason` columns of `voided`.
    pub fn columns(voided: Option<Self>) -> (Option<i64>, Option<&'static str>) {
        match voided {
            Some(voided) => (Some(voided.at_unix_ms), Some(voided.reason.as_str())),
            None => (None, None),
        }
    }
}

impl EnrollmentRecord {
    /// A prune at `now_unix_ms` deletes the links that expired at or before this instant.
    pub fn prune_cutoff(now_unix_ms: i64) -> i64 {
        now_unix_ms.saturating_sub(ENROLLMENT_RETENTION_MS)
    }

    /// The link's state at `now_unix_ms`. A used link stays used and a closed one stays
    /// revoked or voided after its expiry: what happened to it says more than the clock.
    pub fn state(&self, now_unix_ms: i64) -> EnrollmentState {
        match (self.used_unix_ms, self.voided) {
            (Some(_), _) => EnrollmentState::Used,
            (
                None,
                Some(Voided {
                    reason: VoidReason::Revoked | VoidReason::EmailFailed,
                    ..
                }),
            ) => EnrollmentState::Revoked,
            (
                None,
                Some(Voided {
                    reason: VoidReason::UserDisabled,
                    ..
                }),
            ) => EnrollmentState::Voided,
            (None, None) if self.expires_unix_ms <= now_unix_ms => EnrollmentState::Expired,
            (None, None) => EnrollmentState::Open,
        }
    }

    /// Closes the link at `now_unix_ms` for `reason`, if it is open; false (and unchanged)
    /// when it was used, expired, revoked or voided already.
    pub fn void(&mut self, now_unix_ms: i64, reason: VoidReason) -> bool {
        if self.state(now_unix_ms) != EnrollmentState::Open {
            return false;
        }
        self.voided = Some(Voided {
            at_unix_ms: now_unix_ms,
            reason,
        });
        true
    }

    /// The audit row of an operator's revocation of the link, whether or not it changed
    /// anything: never the token, nor its hash.
    pub fn revoked_audit(&self, changed: bool) -> AuditNote {
        AuditNote {
            action: "enrollment.revoke",
            target: self.user_id.clone(),
            detail: json!({ "enrollmentId": self.enrollment_id, "changed": changed }),
        }
    }

    /// The audit row of closing the link early for `reason`, whether or not it changed
    /// anything: an operator's revocation, or `enrollment.void` naming the reason.
    pub fn void_audit(&self, reason: VoidReason, changed: bool) -> AuditNote {
        match reason {
            VoidReason::Revoked => self.revoked_audit(changed),
            VoidReason::UserDisabled | VoidReason::EmailFailed => AuditNote {
                action: "enrollment.void",
                target: self.user_id.clone(),
                detail: json!({
                    "enrollmentId": self.enrollment_id,
                    "reason": reason.as_str(),
                    "changed": changed,
                }),
            },
        }
    }

    /// The audit row of the link's creation: never the token, nor its hash.
    pub fn created_audit(&self) -> AuditNote {
        AuditNote {
            action: "enrollment.create",
            target: self.user_id.clone(),
            detail: json!({
                "enrollmentId": self.enrollment_id,
                "expiresUnixMs": self.expires_unix_ms,
            }),
        }
    }
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

impl NewEnrollment {
    /// The link as stored when `actor` created it at `now_unix_ms`: open.
    pub fn record(&self, now_unix_ms: i64, actor: &str) -> EnrollmentRecord {
        EnrollmentRecord {
            enrollment_id: self.enrollment_id.clone(),
            user_id: self.user_id.clone(),
            created_unix_ms: now_unix_ms,
            expires_unix_ms: self.expires_unix_ms,
            used_unix_ms: None,
            voided: None,
            created_by: actor.to_owned(),
        }
    }
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

/// Result of [`EnrollmentStore::create_enrollment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentCreated {
    Created(EnrollmentRecord),
    UnknownUser,
    UserDisabled,
}

impl EnrollmentCreated {
    /// Why a link for `user` (`None`: no such user) is refused, if it is: only an enabled user
    /// gets one.
    pub fn refusal(user: Option<&UserRecord>) -> Option<Self> {
        match user {
            None => Some(Self::UnknownUser),
            Some(user) if user.disabled => Some(Self::UserDisabled),
            Some(_) => None,
        }
    }
}

/// Result of [`EnrollmentStore::revoke_enrollment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRevoked {
    /// The link after the revocation (or as it was, when nothing changed).
    pub link: EnrollmentRecord,
    /// False when the link was not open: used, expired, revoked or voided already.
    pub changed: bool,
}

/// Enrollment links.
#[async_trait]
pub trait EnrollmentStore: Send + Sync {
    /// Stores a new link for an enabled user, `actor` as its creator; audited.
    async fn create_enrollment(
        &self,
        enrollment: NewEnrollment,
        actor: &str,
    ) -> Result<EnrollmentCreated, StoreError>;

    async fn enrollment_by_token_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<EnrollmentRecord>, StoreError>;

    /// The user's links (every state, until pruned), newest first.
    async fn list_enrollments(&self, user_id: &str) -> Result<Vec<EnrollmentRecord>, StoreError>;

    /// Closes the link `enrollment_id` for `reason` if it is open, with its audit row
    /// ([`EnrollmentRecord::void_audit`], written whether or not it changed anything) in the
    /// same transaction. `None`: no such link.
    async fn void_enrollment(
        &self,
        enrollment_id: &str,
        reason: VoidReason,
        actor: &str,
    ) -> Result<Option<EnrollmentRevoked>, StoreError>;

    /// An operator's revocation: [`EnrollmentStore::void_enrollment`] for
    /// [`VoidReason::Revoked`].
    async fn revoke_enrollment(
        &self,
        enrollment_id: &str,
        actor: &str,
    ) -> Result<Option<EnrollmentRevoked>, StoreError> {
        self.void_enrollment(enrollment_id, VoidReason::Revoked, actor)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(expires_unix_ms: i64) -> EnrollmentRecord {
        NewEnrollment {
            enrollment_id: "enr_1".into(),
            token_hash: [1; 32],
            user_id: "alice".into(),
            expires_unix_ms,
        }
        .record(100, "ops")
    }

    #[test]
    fn a_link_is_open_until_used_expired_revoked_or_voided() {
        let open = link(1_000);
        assert_eq!(open.created_by, "ops");
        assert_eq!(open.state(999), EnrollmentState::Open);
        assert_eq!(
            open.state(1_000),
            EnrollmentState::Expired,
            "expiry is exclusive"
        );

        let used = EnrollmentRecord {
            used_unix_ms: Some(500),
            ..open.clone()
        };
        assert_eq!(used.state(2_000), EnrollmentState::Used, "used says more");

        let mut revoked = open.clone();
        assert!(revoked.void(600, VoidReason::Revoked));
        assert_eq!(revoked.state(700), EnrollmentState::Revoked);
        assert_eq!(
            revoked.state(2_000),
            EnrollmentState::Revoked,
            "after expiry too"
        );
        assert!(!revoked.void(800, VoidReason::UserDisabled), "closed once");
        assert_eq!(
            revoked.voided,
            Some(Voided {
                at_unix_ms: 600,
                reason: VoidReason::Revoked
            })
        );

        let mut voided = open.clone();
        assert!(voided.void(600, VoidReason::UserDisabled));
        assert_eq!(voided.state(700), EnrollmentState::Voided);

        let mut late = open.clone();
        assert!(!late.void(1_000, VoidReason::Revoked), "expired: unchanged");
        assert_eq!(late, open);
        let mut spent = used.clone();
        assert!(!spent.void(600, VoidReason::Revoked), "used: unchanged");
        assert_eq!(spent, used);
    }

    #[test]
    fn the_void_columns_round_trip_and_half_set_ones_are_corrupt() {
        for voided in [
            None,
            Some(Voided {
                at_unix_ms: 5,
                reason: VoidReason::Revoked,
            }),
            Some(Voided {
                at_unix_ms: 6,
                reason: VoidReason::UserDisabled,
            }),
            Some(Voided {
                at_unix_ms: 7,
                reason: VoidReason::EmailFailed,
            }),
        ] {
            let (at, reason) = Voided::columns(voided);
            assert_eq!(Voided::from_columns(at, reason), Ok(voided));
        }
        assert!(Voided::from_columns(Some(5), None).is_err());
        assert!(Voided::from_columns(None, Some("revoked")).is_err());
        assert!(Voided::from_columns(Some(5), Some("lost")).is_err());
    }

    #[test]
    fn a_link_whose_email_failed_is_revoked_for_its_holder_and_audited_with_the_reason() {
        let mut link = link(1_000);
        assert!(link.void(600, VoidReason::EmailFailed));
        assert_eq!(link.state(700), EnrollmentState::Revoked);
        let note = link.void_audit(VoidReason::EmailFailed, true);
        assert_eq!(
            (note.action, note.target.as_str()),
            ("enrollment.void", "alice")
        );
        assert_eq!(
            note.detail,
            json!({ "enrollmentId": "enr_1", "reason": "email_failed", "changed": true })
        );
        let revoked = link.void_audit(VoidReason::Revoked, false);
        assert_eq!(revoked.action, "enrollment.revoke");
    }

    #[test]
    fn a_revocation_is_audited_against_the_user_naming_only_the_link() {
        let note = link(1_000).revoked_audit(true);
        assert_eq!(
            (note.action, note.target.as_str()),
            ("enrollment.revoke", "alice")
        );
        assert_eq!(
            note.detail,
            json!({ "enrollmentId": "enr_1", "changed": true })
        );
    }
}
