//! Enrollment links: one-time, expiring, stored only as the hash of their token.

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
}

impl EnrollmentRecord {
    /// A prune at `now_unix_ms` deletes the links that expired at or before this instant.
    pub fn prune_cutoff(now_unix_ms: i64) -> i64 {
        now_unix_ms.saturating_sub(ENROLLMENT_RETENTION_MS)
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
    /// The link as stored when created at `now_unix_ms`: unused.
    pub fn record(&self, now_unix_ms: i64) -> EnrollmentRecord {
        EnrollmentRecord {
            enrollment_id: self.enrollment_id.clone(),
            user_id: self.user_id.clone(),
            created_unix_ms: now_unix_ms,
            expires_unix_ms: self.expires_unix_ms,
            used_unix_ms: None,
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

/// Enrollment links.
#[async_trait]
pub trait EnrollmentStore: Send + Sync {
    async fn create_enrollment(
        &self,
        enrollment: NewEnrollment,
        actor: &str,
    ) -> Result<EnrollmentCreated, StoreError>;

    async fn enrollment_by_token_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<EnrollmentRecord>, StoreError>;
}
