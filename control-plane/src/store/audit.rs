//! The audit log: one row per operation, written in the operation's own transaction.

use async_trait::async_trait;
use keygate_proto::Revision;

use super::StoreError;

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: u64,
    pub at_unix_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Head revision after the operation; 0 when it changed nothing replicated.
    pub revision: Revision,
    pub detail_json: String,
}

/// Reading the audit log (rows are written by each operation).
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// The newest `limit` audit entries, newest first.
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
}
