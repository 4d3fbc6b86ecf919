//! [`EnrollmentStore`] on SQLite: the `enrollments` table, which keeps only the blake3 hash
//! of each link's token. A link is consumed by the registration it authorises
//! (`sqlite/passkeys.rs`), in that registration's transaction.

use async_trait::async_trait;
use keygate_proto::Revision;
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::users::get_user;
use super::{SqliteStore, backend, execute};
use crate::store::{
    EnrollmentCreated, EnrollmentRecord, EnrollmentStore, NewEnrollment, StoreError,
};

pub(super) const ENROLLMENT_COLUMNS: &str =
    "enrollment_id, user_id, created_ms, expires_ms, used_ms";

pub(super) fn enrollment_from_row(row: &Row<'_>) -> rusqlite::Result<EnrollmentRecord> {
    Ok(EnrollmentRecord {
        enrollment_id: row.get(0)?,
        user_id: row.get(1)?,
        created_unix_ms: row.get(2)?,
        expires_unix_ms: row.get(3)?,
        used_unix_ms: row.get(4)?,
    })
}

/// Inserts the link `record` for the token with `token_hash` (a new link, or a copy).
pub(super) fn insert_enrollment(
    tx: &Transaction<'_>,
    token_hash: &[u8; 32],
    record: &EnrollmentRecord,
) -> Result<(), StoreError> {
    execute(
        tx,
        &format!(
            "INSERT INTO enrollments ({ENROLLMENT_COLUMNS}, token_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ),
        params![
            record.enrollment_id,
            record.user_id,
            record.created_unix_ms,
            record.expires_unix_ms,
            record.used_unix_ms,
            &token_hash[..]
        ],
    )
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
            let user = get_user(w.tx, &enrollment.user_id)?;
            if let Some(refused) = EnrollmentCreated::refusal(user.as_ref()) {
                return Ok(refused);
            }
            let record = enrollment.record(w.now_unix_ms);
            insert_enrollment(w.tx, &enrollment.token_hash, &record)?;
            w.audit(&actor, Revision::ZERO, &record.created_audit())?;
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
                &format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE token_hash = ?1"),
                params![&token_hash[..]],
                enrollment_from_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }
}
