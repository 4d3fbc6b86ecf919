//! [`AuditStore`] on SQLite: the `audit` table. Each operation writes its row through the
//! writer ([`Writer::audit`]), in its own transaction, so an operation and its audit row
//! commit or roll back together.

use async_trait::async_trait;
use keygate_proto::Revision;
use rusqlite::{Row, params};

use super::log::Writer;
use super::{SqliteStore, backend, collect};
use crate::store::{AuditEntry, AuditNote, AuditStore, StoreError};

pub(super) const AUDIT_COLUMNS: &str = "id, at_ms, actor, action, target, revision, detail_json";

pub(super) fn audit_from_row(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get(0)?,
        at_unix_ms: row.get(1)?,
        actor: row.get(2)?,
        action: row.get(3)?,
        target: row.get(4)?,
        revision: Revision(row.get(5)?),
        detail_json: row.get(6)?,
    })
}

impl Writer<'_> {
    /// Writes the operation's audit row. `revision` is 0 when nothing replicated changed.
    pub(super) fn audit(
        &self,
        actor: &str,
        revision: Revision,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO audit (at_ms, actor, action, target, revision, detail_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    self.now_unix_ms,
                    actor,
                    note.action,
                    note.target,
                    revision.0,
                    note.detail.to_string()
                ],
            )
            .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |tx| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            collect(
                tx,
                &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1"),
                params![limit],
                audit_from_row,
            )
        })
        .await
    }
}
