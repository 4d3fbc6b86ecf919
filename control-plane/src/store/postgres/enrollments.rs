//! [`EnrollmentStore`] on PostgreSQL: the `enrollments` table, which keeps only the blake3 hash
//! of each link's token. A link is consumed by the registration it authorises
//! (`postgres/passkeys.rs`), in that registration's transaction, and voided by its user's
//! disable (`postgres/users.rs`), in the disable's.
//!
//! Whatever changes a link reads it `FOR UPDATE` first (a registration, a revocation, a
//! disable), so of two such transactions on any replicas the second sees what the first
//! committed: a link is never both used and revoked.

use async_trait::async_trait;
use keygate_proto::Revision;
use sqlx::postgres::{PgConnection, PgRow};

use super::users::{UserLock, get_user};
use super::{PgStore, backend, get};
use crate::store::{
    EnrollmentCreated, EnrollmentRecord, EnrollmentRevoked, EnrollmentStore, NewEnrollment,
    StoreError, VoidReason, Voided,
};

/// The enrollment columns (all but the token hash), in [`enrollment_from_row`]'s order.
macro_rules! enrollment_columns {
    () => {
        "enrollment_id, user_id, created_ms, expires_ms, used_ms, voided_ms, voided_reason, \
         created_by"
    };
}
pub(super) use enrollment_columns;

/// How many columns `enrollment_columns!()` names (a query may select more after them).
pub(super) const ENROLLMENT_COLUMN_COUNT: usize = 8;

pub(super) fn enrollment_from_row(row: &PgRow) -> Result<EnrollmentRecord, StoreError> {
    let voided_reason: Option<String> = get(row, 6)?;
    Ok(EnrollmentRecord {
        enrollment_id: get(row, 0)?,
        user_id: get(row, 1)?,
        created_unix_ms: get(row, 2)?,
        expires_unix_ms: get(row, 3)?,
        used_unix_ms: get(row, 4)?,
        voided: Voided::from_columns(get(row, 5)?, voided_reason.as_deref())
            .map_err(StoreError::Corrupt)?,
        created_by: get(row, 7)?,
    })
}

/// Which link to read: by its token's hash, or by its id.
pub(super) enum LinkBy<'a> {
    TokenHash(&'a [u8; 32]),
    Id(&'a str),
}

/// The link `by` names, locked `FOR UPDATE` until the caller's transaction ends.
pub(super) async fn lock_enrollment(
    conn: &mut PgConnection,
    by: LinkBy<'_>,
) -> Result<Option<EnrollmentRecord>, StoreError> {
    let query = match by {
        LinkBy::TokenHash(token_hash) => sqlx::query(concat!(
            "SELECT ",
            enrollment_columns!(),
            " FROM enrollments WHERE token_hash = $1 FOR UPDATE"
        ))
        .bind(&token_hash[..]),
        LinkBy::Id(enrollment_id) => sqlx::query(concat!(
            "SELECT ",
            enrollment_columns!(),
            " FROM enrollments WHERE enrollment_id = $1 FOR UPDATE"
        ))
        .bind(enrollment_id),
    };
    query
        .fetch_optional(conn)
        .await
        .map_err(backend)?
        .as_ref()
        .map(enrollment_from_row)
        .transpose()
}

/// Every link of `user_id`, newest first; with `lock`, locked `FOR UPDATE`.
pub(super) async fn enrollments_of_user(
    conn: &mut PgConnection,
    user_id: &str,
    lock: bool,
) -> Result<Vec<EnrollmentRecord>, StoreError> {
    let sql = if lock {
        concat!(
            "SELECT ",
            enrollment_columns!(),
            " FROM enrollments WHERE user_id = $1
             ORDER BY created_ms DESC, enrollment_id DESC FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            enrollment_columns!(),
            " FROM enrollments WHERE user_id = $1
             ORDER BY created_ms DESC, enrollment_id DESC"
        )
    };
    sqlx::query(sql)
        .bind(user_id)
        .fetch_all(conn)
        .await
        .map_err(backend)?
        .iter()
        .map(enrollment_from_row)
        .collect()
}

/// Writes a link's `used_ms`, as a registration consumed it.
pub(super) async fn write_used(
    conn: &mut PgConnection,
    link: &EnrollmentRecord,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE enrollments SET used_ms = $2 WHERE enrollment_id = $1")
        .bind(&link.enrollment_id)
        .bind(link.used_unix_ms)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Writes a link's `voided_ms` and `voided_reason`, as a revocation or a disable set them.
pub(super) async fn write_voided(
    conn: &mut PgConnection,
    link: &EnrollmentRecord,
) -> Result<(), StoreError> {
    let (voided_ms, voided_reason) = Voided::columns(link.voided);
    sqlx::query(
        "UPDATE enrollments SET voided_ms = $2, voided_reason = $3 WHERE enrollment_id = $1",
    )
    .bind(&link.enrollment_id)
    .bind(voided_ms)
    .bind(voided_reason)
    .execute(conn)
    .await
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl EnrollmentStore for PgStore {
    async fn create_enrollment(
        &self,
        enrollment: NewEnrollment,
        actor: &str,
    ) -> Result<EnrollmentCreated, StoreError> {
        // No event. The user's row is locked FOR SHARE, so a concurrent disable (on any
        // replica) either commits first and is seen here, or waits for this link to exist
        // (and then voids it).
        let mut w = self.write_unlogged().await?;
        let user = get_user(w.conn(), &enrollment.user_id, UserLock::Share).await?;
        if let Some(refused) = EnrollmentCreated::refusal(user.as_ref()) {
            return Ok(refused);
        }
        let record = enrollment.record(w.now().await?, actor);
        sqlx::query(
            "INSERT INTO enrollments (token_hash, enrollment_id, user_id, created_ms,
                expires_ms, used_ms, voided_ms, voided_reason, created_by)
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, NULL, $6)",
        )
        .bind(&enrollment.token_hash[..])
        .bind(&record.enrollment_id)
        .bind(&record.user_id)
        .bind(record.created_unix_ms)
        .bind(record.expires_unix_ms)
        .bind(&record.created_by)
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

    async fn list_enrollments(&self, user_id: &str) -> Result<Vec<EnrollmentRecord>, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        enrollments_of_user(&mut conn, user_id, false).await
    }

    async fn void_enrollment(
        &self,
        enrollment_id: &str,
        reason: VoidReason,
        actor: &str,
    ) -> Result<Option<EnrollmentRevoked>, StoreError> {
        // No event: gateways know nothing of links.
        let mut w = self.write_unlogged().await?;
        let Some(mut link) = lock_enrollment(w.conn(), LinkBy::Id(enrollment_id)).await? else {
            return Ok(None);
        };
        let changed = link.void(w.now().await?, reason);
        if changed {
            write_voided(w.conn(), &link).await?;
        }
        w.audit(actor, Revision::ZERO, &link.void_audit(reason, changed))
            .await?;
        w.commit().await?;
        Ok(Some(EnrollmentRevoked { link, changed }))
    }
}
