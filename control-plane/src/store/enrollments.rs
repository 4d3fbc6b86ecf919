//! Enrollment links: one-time, expiring, stored only as the hash of their token.

use std::fmt;

use async_trait::async_trait;

use super::StoreError;

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

/// Result of [`PasskeyStore::create_enrollment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentCreated {
    Created(EnrollmentRecord),
    UnknownUser,
    UserDisabled,
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
