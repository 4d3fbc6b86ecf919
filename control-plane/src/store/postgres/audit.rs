//! [`AuditStore`] on PostgreSQL: the `audit` table. Each operation writes its row through the
//! writer ([`Writer::audit`]), in its own transaction, so an operation and its audit row
//! commit or roll back together.

use async_trait::async_trait;
use keygate_proto::Revision;
use sqlx::postgres::PgRow;

use super::log::Writer;
use super::{PgStore, backend, db_limit, db_revision, get, revision_from_db};
use crate::store::{AuditEntry, AuditNote, AuditStore, StoreError};

/// The audit columns, in [`audit_from_row`]'s order.
macro_rules! audit_columns {
    () => {
        "id, at_ms, actor, action, target, revision, detail_json"
    };
}
pub(super) use audit_columns;

pub(super) fn audit_from_row(row: &PgRow) -> Result<AuditEntry, StoreError> {
    let id: i64 = get(row, 0)?;
    Ok(AuditEntry {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("audit id {id}")))?,
        at_unix_ms: get(row, 1)?,
        actor: get(row, 2)?,
        action: get(row, 3)?,
        target: get(row, 4)?,
        revision: revision_from_db(get(row, 5)?)?,
        detail_json: get(row, 6)?,
    })
}

impl Writer<'_> {
    /// Writes the operation's audit row. `revision` is 0 when nothing replicated changed.
    pub(super) async fn audit(
        &mut self,
        actor: &str,
        revision: Revision,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        let at = self.now().await?;
        sqlx::query(
            "INSERT INTO audit (at_ms, actor, action, target, revision, detail_json)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(at)
        .bind(actor)
        .bind(note.action)
        .bind(&note.target)
        .bind(db_revision(revision))
        .bind(note.detail.to_string())
        .execute(self.conn())
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        // Ids come from a sequence: across replicas they follow the order in which the rows
        // were inserted rather than committed, which is as close to "newest first" as an audit
        // log needs.
        sqlx::query(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit ORDER BY id DESC LIMIT $1"
        ))
        .bind(db_limit(limit))
        .fetch_all(self.pool())
        .await
        .map_err(backend)?
        .iter()
        .map(audit_from_row)
        .collect()
    }
}
