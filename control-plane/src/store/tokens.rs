//! Named operator tokens and per-gateway credentials (DESIGN.md, "Operator access"): each is a
//! name, the blake3 hash of its secret (never the secret), and either scopes (an operator
//! token, for the Admin service) or the one gateway id that may use it (a gateway token, for
//! the Sync service). The store does not interpret scope names: `auth` does.
//!
//! Nothing here is replicated to gateways, so no change appends an event; every change writes
//! its audit row (target: the token's name, never the token) in its own transaction.

use std::fmt;

use async_trait::async_trait;
use serde_json::json;

use super::{AuditNote, StoreError};

/// A named token as stored. `Debug` leaves the hash out.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorTokenRecord {
    /// 1–64 characters of `[a-z0-9._-]`, starting with a letter or digit; the audit actor.
    pub name: String,
    /// `blake3(token)`: what a presented token is looked up by.
    pub token_hash: [u8; 32],
    /// Scope names (`keys:write`, …); empty for a gateway token.
    pub scopes: Vec<String>,
    /// Set: a gateway token that only this gateway id may use.
    pub gateway_id: Option<String>,
    pub created_unix_ms: i64,
    /// The token that created it.
    pub created_by: String,
}

impl OperatorTokenRecord {
    /// The audit row of its creation.
    pub fn created_audit(&self) -> AuditNote {
        AuditNote {
            action: "token.create",
            target: self.name.clone(),
            detail: json!({ "scopes": self.scopes, "gatewayId": self.gateway_id }),
        }
    }

    /// The audit row of its revocation.
    pub fn revoked_audit(&self) -> AuditNote {
        AuditNote {
            action: "token.revoke",
            target: self.name.clone(),
            detail: json!({ "scopes": self.scopes, "gatewayId": self.gateway_id }),
        }
    }
}

impl fmt::Debug for OperatorTokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorTokenRecord")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("gateway_id", &self.gateway_id)
            .field("created_unix_ms", &self.created_unix_ms)
            .field("created_by", &self.created_by)
            .finish_non_exhaustive()
    }
}

/// A token to create, validated by the caller (`crate::tokens`). `Debug` leaves the hash out.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    pub name: String,
    pub token_hash: [u8; 32],
    pub scopes: Vec<String>,
    pub gateway_id: Option<String>,
}

impl NewToken {
    /// The record created at `now_unix_ms` by `created_by`.
    pub fn into_record(self, now_unix_ms: i64, created_by: &str) -> OperatorTokenRecord {
        OperatorTokenRecord {
            name: self.name,
            token_hash: self.token_hash,
            scopes: self.scopes,
            gateway_id: self.gateway_id,
            created_unix_ms: now_unix_ms,
            created_by: created_by.to_owned(),
        }
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("gateway_id", &self.gateway_id)
            .finish_non_exhaustive()
    }
}

/// Result of [`TokenStore::create_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCreated {
    Created(OperatorTokenRecord),
    /// A token of that name exists (revoke it first); nothing was written.
    AlreadyExists,
}

/// Scope names as stored: one column, space-separated (a scope name has no space).
pub(crate) fn join_scopes(scopes: &[String]) -> String {
    scopes.join(" ")
}

/// The stored column back as scope names.
pub(crate) fn split_scopes(column: &str) -> Vec<String> {
    column.split_whitespace().map(str::to_owned).collect()
}

/// Named tokens.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Creates a token, with its audit row, unless the name is taken.
    async fn create_token(&self, token: NewToken, actor: &str) -> Result<TokenCreated, StoreError>;

    /// The token whose secret hashes to `token_hash`, if there is one: what authentication
    /// asks on every call, so a revoked token fails at once on every replica.
    async fn token_by_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<OperatorTokenRecord>, StoreError>;

    /// Every token, ordered by name.
    async fn list_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError>;

    /// Deletes the token named `name`, with its audit row; `None` (and nothing written) when
    /// there is none.
    async fn revoke_token(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<Option<OperatorTokenRecord>, StoreError>;
}
