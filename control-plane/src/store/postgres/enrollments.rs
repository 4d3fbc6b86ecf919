//! [`EnrollmentStore`] on PostgreSQL: the `enrollments` table, which keeps only the blake3 hash
//! of each link's token. A link is consumed by the registration it authorises
//! (`postgres/passkeys.rs`), in that registration's transaction.

use async_trait::async_trait;
use keygate_proto::Revision;
use sqlx::postgres::PgRow;

use super::users::{UserLock, get_user};
use super::{PgStore, backend, get};
use crate::store::{
    EnrollmentCreated, EnrollmentRecord, EnrollmentStore, NewEnrollment, StoreError,
};

/// The enrollment columns (all but the token hash), in [`enrollment_from_row`]'s order.
macro_rules! enrollment_columns {
    () => {
        "enrollment_id, user_id, created_ms, expires_ms, used_ms"
    };
}
pub(super) use enrollment_columns;

pub(super) fn enrollment_from_row(row: &PgRow) -> Result<EnrollmentRecord, StoreError> {
    Ok(EnrollmentRecord {
        enrollment_id: get(row, 0)?,
        user_id: get(row, 1)?,
        created_unix_ms: get(row, 2)?,
        expires_unix_ms: get(row, 3)?,
        used_unix_ms: get(row, 4)?,
    })
}

#[async_trait]
impl EnrollmentStore for PgStore {
    async fn create_enrollment(
        &self,
        enrollment: NewEnrollment,
        actor: &str,
    ) -> Result<EnrollmentCreated, StoreError> {
        // No event. The user's row is locked FOR SHARE, so a concurrent disable (on any
        // replica) either commits first and is seen here, or waits for this link to exist.
        let mut w = self.write_unlogged().await?;
        let user = get_user(w.conn(), &enrollment.user_id, UserLock::Share).await?;
        if let Some(refused) = EnrollmentCreated::refusal(user.as_ref()) {
            return Ok(refused);
        }
        let record = enrollment.record(w.now().await?);
        sqlx::query(
            "INSERT INTO enrollments (token_hash, enrollment_id, user_id, created_ms,
                expires_ms, used_ms) VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(&enrollment.token_hash[..])
        .bind(&record.enrollment_id)
        .bind(&record.user_id)
        .bind(record.created_unix_ms)
        .bind(record.expires_unix_ms)
        .execute(w.conn())
        .await
        .map_err(backend)?;
        w.audit(actor, Revision::ZERO, &record.created_audit())
            .await?;
        w.commit().await?;
        Ok(EnrollmentCreated::Created(record))
    }

    async fn enrollment_by_token_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            enrollment_columns!(),
            " FROM enrollments WHERE token_hash = $1"
        ))
        .bind(&token_hash[..])
        .fetch_optional(self.pool())
        .await
        .map_err(backend)?
        .as_ref()
        .map(enrollment_from_row)
        .transpose()
    }
}
