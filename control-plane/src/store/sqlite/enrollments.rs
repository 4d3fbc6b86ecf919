//! [`EnrollmentStore`] on SQLite: the `enrollments` table, which keeps only the blake3 hash
//! of each link's token. A link is consumed by the registration it authorises
//! (`sqlite/passkeys.rs`), in that registration's transaction.

use async_trait::async_trait;
use keygate_proto::Revision;
use rusqlite::{OptionalExtension, Row, params};
use serde_json::json;

use super::users::get_user;
use super::{SqliteStore, backend};
use crate::store::{
    EnrollmentCreated, EnrollmentRecord, EnrollmentStore, NewEnrollment, StoreError,
};

/// Used enrollment links are kept this long for the record, then pruned.
pub(super) const ENROLLMENT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

fn enrollment_from_row(row: &Row<'_>) -> rusqlite::Result<EnrollmentRecord> {
    Ok(EnrollmentRecord {
        enrollment_id: row.get(0)?,
        user_id: row.get(1)?,
        created_unix_ms: row.get(2)?,
        expires_unix_ms: row.get(3)?,
        used_unix_ms: row.get(4)?,
    })
}

#[async_trait]
impl EnrollmentStore for SqliteStore {
    async fn create_enrollment(
        &self,
        enrollment: NewEnrollment,
        actor: &str,
    ) -> Result<EnrollmentCreated, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let Some(user) = get_user(w.tx, &enrollment.user_id)? else {
                return Ok(EnrollmentCreated::UnknownUser);
            };
            if user.disabled {
                return Ok(EnrollmentCreated::UserDisabled);
            }
            let record = EnrollmentRecord {
                enrollment_id: enrollment.enrollment_id,
                user_id: enrollment.user_id,
                created_unix_ms: w.now_unix_ms,
                expires_unix_ms: enrollment.expires_unix_ms,
                used_unix_ms: None,
            };
            w.tx.execute(
                "INSERT INTO enrollments (token_hash, enrollment_id, user_id, created_ms,
                    expires_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
                params![
                    &enrollment.token_hash[..],
                    record.enrollment_id,
                    record.user_id,
                    record.created_unix_ms,
                    record.expires_unix_ms
                ],
            )
            .map_err(backend)?;
            // Never the token, nor its hash.
            let detail = json!({
                "enrollmentId": record.enrollment_id,
                "expiresUnixMs": record.expires_unix_ms,
            });
            w.audit(
                &actor,
                "enrollment.create",
                &record.user_id,
                Revision::ZERO,
                &detail,
            )?;
            Ok(EnrollmentCreated::Created(record))
        })
        .await
    }

    async fn enrollment_by_token_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.read(move |tx| {
            tx.query_row(
                "SELECT enrollment_id, user_id, created_ms, expires_ms, used_ms
                 FROM enrollments WHERE token_hash = ?1",
                params![&token_hash[..]],
                enrollment_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }
}
