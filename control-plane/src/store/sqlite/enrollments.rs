//! [`EnrollmentStore`] on SQLite: the `enrollments` table, which keeps only the blake3 hash
//! of each link's token. A link is consumed by the registration it authorises
//! (`sqlite/passkeys.rs`), in that registration's transaction, and voided by its user's
//! disable (`sqlite/users.rs`), in the disable's.

use async_trait::async_trait;
use keygate_proto::Revision;
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::users::get_user;
use super::{SqliteStore, backend, collect, corrupt, execute};
use crate::store::{
    EnrollmentCreated, EnrollmentRecord, EnrollmentRevoked, EnrollmentStore, NewEnrollment,
    StoreError, VoidReason, Voided,
};

pub(super) const ENROLLMENT_COLUMNS: &str = "enrollment_id, user_id, created_ms, expires_ms, \
     used_ms, voided_ms, voided_reason, created_by";

/// How many columns [`ENROLLMENT_COLUMNS`] names (a query may select more after them).
pub(super) const ENROLLMENT_COLUMN_COUNT: usize = 8;

pub(super) fn enrollment_from_row(row: &Row<'_>) -> rusqlite::Result<EnrollmentRecord> {
    let voided_reason: Option<String> = row.get(6)?;
    Ok(EnrollmentRecord {
        enrollment_id: row.get(0)?,
        user_id: row.get(1)?,
        created_unix_ms: row.get(2)?,
        expires_unix_ms: row.get(3)?,
        used_unix_ms: row.get(4)?,
        voided: Voided::from_columns(row.get(5)?, voided_reason.as_deref())
            .map_err(|what| corrupt(&what))?,
        created_by: row.get(7)?,
    })
}

/// Inserts the link `record` for the token with `token_hash` (a new link, or a copy).
pub(super) fn insert_enrollment(
    tx: &Transaction<'_>,
    token_hash: &[u8; 32],
    record: &EnrollmentRecord,
) -> Result<(), StoreError> {
    let (voided_ms, voided_reason) = Voided::columns(record.voided);
    execute(
        tx,
        &format!(
            "INSERT INTO enrollments ({ENROLLMENT_COLUMNS}, token_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            record.enrollment_id,
            record.user_id,
            record.created_unix_ms,
            record.expires_unix_ms,
            record.used_unix_ms,
            voided_ms,
            voided_reason,
            record.created_by,
            &token_hash[..]
        ],
    )
}

/// The link whose token has `token_hash`, read inside the caller's transaction.
pub(super) fn enrollment_by_token_hash(
    tx: &Transaction<'_>,
    token_hash: &[u8; 32],
) -> Result<Option<EnrollmentRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE token_hash = ?1"),
        params![&token_hash[..]],
        enrollment_from_row,
    )
    .optional()
    .map_err(backend)
}

/// Every link of `user_id`, newest first.
pub(super) fn enrollments_of_user(
    tx: &Transaction<'_>,
    user_id: &str,
) -> Result<Vec<EnrollmentRecord>, StoreError> {
    collect(
        tx,
        &format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE user_id = ?1
             ORDER BY created_ms DESC, enrollment_id DESC"
        ),
        params![user_id],
        enrollment_from_row,
    )
}

/// Writes a link's `used_ms`, as a registration consumed it.
pub(super) fn write_used(tx: &Transaction<'_>, link: &EnrollmentRecord) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE enrollments SET used_ms = ?2 WHERE enrollment_id = ?1",
        params![link.enrollment_id, link.used_unix_ms],
    )
    .map_err(backend)?;
    Ok(())
}

/// Writes a link's `voided_ms` and `voided_reason`, as a revocation or a disable set them.
pub(super) fn write_voided(
    tx: &Transaction<'_>,
    link: &EnrollmentRecord,
) -> Result<(), StoreError> {
    let (voided_ms, voided_reason) = Voided::columns(link.voided);
    tx.execute(
        "UPDATE enrollments SET voided_ms = ?2, voided_reason = ?3 WHERE enrollment_id = ?1",
        params![link.enrollment_id, voided_ms, voided_reason],
    )
    .map_err(backend)?;
    Ok(())
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
            let record = enrollment.record(w.now_unix_ms, &actor);
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
        self.read(move |tx| enrollment_by_token_hash(tx, &token_hash))
            .await
    }

    async fn list_enrollments(&self, user_id: &str) -> Result<Vec<EnrollmentRecord>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |tx| enrollments_of_user(tx, &user_id)).await
    }

    async fn void_enrollment(
        &self,
        enrollment_id: &str,
        reason: VoidReason,
        actor: &str,
    ) -> Result<Option<EnrollmentRevoked>, StoreError> {
        let (enrollment_id, actor) = (enrollment_id.to_owned(), actor.to_owned());
        self.write(move |w| {
            let Some(mut link) =
                w.tx.query_row(
                    &format!(
                        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE enrollment_id = ?1"
                    ),
                    params![enrollment_id],
                    enrollment_from_row,
                )
                .optional()
                .map_err(backend)?
            else {
                return Ok(None);
            };
            let changed = link.void(w.now_unix_ms, reason);
            if changed {
                write_voided(w.tx, &link)?;
            }
            w.audit(&actor, Revision::ZERO, &link.void_audit(reason, changed))?;
            Ok(Some(EnrollmentRevoked { link, changed }))
        })
        .await
    }
}
