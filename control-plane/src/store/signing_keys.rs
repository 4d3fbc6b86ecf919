//! Session signing keys: one current key, retired keys that verify until their tokens expire.

use std::fmt;

use async_trait::async_trait;
use keygate_proto::{Revision, SessionVerifyingKey};
use serde_json::json;

use super::{AuditNote, StoreError};

/// A session signing key with its private half. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// `sk_…`, the `kid` in token footers.
    pub key_id: String,
    pub secret: [u8; 32],
    pub public_key: [u8; 32],
    pub created_unix_ms: i64,
    /// `None`: the current key. Set once retired: its tokens verify until then.
    pub verify_until_unix_ms: Option<i64>,
}

impl SigningKeyRecord {
    /// The key made current at `now_unix_ms`: created then, verifying until it is retired.
    pub fn into_current(self, now_unix_ms: i64) -> Self {
        Self {
            created_unix_ms: now_unix_ms,
            verify_until_unix_ms: None,
            ..self
        }
    }

    /// The audit row of the first key's creation.
    pub fn created_audit(&self) -> AuditNote {
        AuditNote {
            action: "signing_key.create",
            target: self.key_id.clone(),
            detail: json!({}),
        }
    }

    /// What gateways replicate of this key.
    pub fn verifying_key(&self) -> SessionVerifyingKey {
        SessionVerifyingKey {
            key_id: self.key_id.clone(),
            public_key: self.public_key,
            created_unix_ms: self.created_unix_ms,
            verify_until_unix_ms: self.verify_until_unix_ms,
        }
    }
}

impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .field("created_unix_ms", &self.created_unix_ms)
            .field("verify_until_unix_ms", &self.verify_until_unix_ms)
            .finish()
    }
}

/// Result of a signing-key rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub current: SigningKeyRecord,
    /// The key that was current before, now retired; `None` if there was none.
    pub retired: Option<SigningKeyRecord>,
    pub revision: Revision,
}

impl Rotated {
    /// The audit row of the rotation.
    pub fn audit(&self) -> AuditNote {
        let retired = self.retired.as_ref();
        AuditNote {
            action: "signing_key.rotate",
            target: self.current.key_id.clone(),
            detail: json!({
                "retiredKeyId": retired.map(|key| key.key_id.as_str()),
                "retiredVerifyUntilUnixMs": retired.and_then(|key| key.verify_until_unix_ms),
            }),
        }
    }
}

/// Session signing keys.
#[async_trait]
pub trait SigningKeyStore: Send + Sync {
    async fn signing_key(&self, key_id: &str) -> Result<Option<SigningKeyRecord>, StoreError>;

    /// The key new sessions are signed with.
    async fn current_signing_key(&self) -> Result<Option<SigningKeyRecord>, StoreError>;

    /// Makes `candidate` the current key if there is none (first start); returns the current
    /// key either way. Appends one `SigningKey` event when it inserts.
    async fn ensure_signing_key(
        &self,
        candidate: SigningKeyRecord,
        actor: &str,
    ) -> Result<SigningKeyRecord, StoreError>;

    /// Makes `next` the current key and retires the previous one until `retire_until`: two
    /// `SigningKey` events, the new key first.
    async fn rotate_signing_key(
        &self,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Rotated, StoreError>;
}
