//! The audit log: one row per operation, written in the operation's own transaction. What an
//! operation's row says ([`AuditNote`]) is decided by the domain types of its aggregate, so
//! every backend writes the same rows.

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

/// What an operation writes in its audit row besides who did it, when, and at which revision
/// (the backend's writer adds those).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditNote {
    /// `key.create`, `user.disable`, …
    pub action: &'static str,
    /// What the operation acted on: a key id, a user id, a signing key id.
    pub target: String,
    pub detail: serde_json::Value,
}

/// Reading the audit log (rows are written by each operation).
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// The newest `limit` audit entries, newest first.
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
}
