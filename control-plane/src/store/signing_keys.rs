//! Session signing keys: one current key, retired keys that verify until their tokens expire,
//! and revoked keys, whose tokens are all refused and which are kept (and replicated) until
//! every token they signed has expired, so that a gateway answers REVOKED for them rather than
//! "unknown key". Each key records the session lifetime it signs, for its whole life.

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
    /// `None`: the current key. Set once retired: its tokens verify until then. Set on a
    /// revoked key too: until when a token it signed can be unexpired.
    pub verify_until_unix_ms: Option<i64>,
    /// When it was revoked: every token it signed is refused since.
    pub revoked_unix_ms: Option<i64>,
    /// The longest session (expiry − issue time) it signs: the `session_lifetime` of the
    /// control plane that made it, fixed for the key's life. Gateways refuse its longer tokens,
    /// whether it is current, retired or revoked. `None` for a key made before the column: its
    /// tokens get only the clock-skew check.
    pub max_session_lifetime_ms: Option<i64>,
}

impl SigningKeyRecord {
    /// Whether new sessions are signed with it.
    pub fn is_current(&self) -> bool {
        self.verify_until_unix_ms.is_none()
    }

    /// Whether the current key must be replaced by `next` for sessions to last `next`'s
    /// lifetime: it signs another one (the control plane's `session_lifetime` changed), or says
    /// none (a key from before the column). The rotation is what tells gateways that stayed
    /// connected: they would otherwise keep checking tokens against the lifetime they were
    /// sent with this key.
    pub fn lifetime_differs_from(&self, next: &SigningKeyRecord) -> bool {
        self.max_session_lifetime_ms != next.max_session_lifetime_ms
    }

    /// The expiry of a token it signs for a session issued at `issued_unix_ms` and expiring at
    /// `expires_unix_ms`: that expiry, cut to its own lifetime, so that it never signs a token
    /// gateways would refuse as too long (a session opened by a replica configured with a
    /// longer lifetime than the one that made this key).
    pub fn token_expiry(&self, issued_unix_ms: i64, expires_unix_ms: i64) -> i64 {
        match self.max_session_lifetime_ms {
            Some(lifetime) => expires_unix_ms.min(issued_unix_ms.saturating_add(lifetime)),
            None => expires_unix_ms,
        }
    }

    /// The key revoked at `now_unix_ms`. It is kept until every token it signed has expired:
    /// a current key signed its last token just now, so until `now` plus its own lifetime
    /// (`session_lifetime_ms` for a key from before the column); a retired key signed none
    /// since its retirement, so its verify-until stands.
    pub fn revoke(self, now_unix_ms: i64, session_lifetime_ms: i64) -> Self {
        let lifetime = self.max_session_lifetime_ms.unwrap_or(session_lifetime_ms);
        let keep_until = self
            .verify_until_unix_ms
            .unwrap_or_else(|| now_unix_ms.saturating_add(lifetime));
        Self {
            verify_until_unix_ms: Some(keep_until),
            revoked_unix_ms: Some(now_unix_ms),
            ..self
        }
    }

    /// The key made current at `now_unix_ms`: created then, verifying until it is retired.
    pub fn into_current(self, now_unix_ms: i64) -> Self {
        Self {
            created_unix_ms: now_unix_ms,
            verify_until_unix_ms: None,
            revoked_unix_ms: None,
            ..self
        }
    }

    /// The key that signs new sessions after a revocation: the current key if one is left
    /// (`left`), else `next`, made current at `now_unix_ms` — then `true`: the backend inserts
    /// it, and announces it before the revoked key.
    pub fn current_after_revocation(
        left: Option<Self>,
        next: Self,
        now_unix_ms: i64,
    ) -> (Self, bool) {
        match left {
            Some(current) => (current, false),
            None => (next.into_current(now_unix_ms), true),
        }
    }

    /// The audit row of this key's revocation; `current` signs new sessions after it, and was
    /// made by the revocation when `replaced`.
    pub fn revoked_audit(&self, current: &SigningKeyRecord, replaced: bool) -> AuditNote {
        AuditNote {
            action: "signing_key.revoke",
            target: self.key_id.clone(),
            detail: json!({
                "currentKeyId": current.key_id,
                "newCurrentKey": replaced,
                "keptUntilUnixMs": self.verify_until_unix_ms,
            }),
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

    /// What gateways replicate of this key, with its own lifetime: in its events (so in the
    /// log) and in snapshots alike.
    pub fn verifying_key(&self) -> SessionVerifyingKey {
        SessionVerifyingKey {
            key_id: self.key_id.clone(),
            public_key: self.public_key,
            created_unix_ms: self.created_unix_ms,
            verify_until_unix_ms: self.verify_until_unix_ms,
            revoked: self.revoked_unix_ms.is_some(),
            max_session_lifetime_ms: self.max_session_lifetime_ms,
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
            .field("revoked_unix_ms", &self.revoked_unix_ms)
            .field("max_session_lifetime_ms", &self.max_session_lifetime_ms)
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

/// What revoking a signing key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKeyRevoked {
    /// Revoked now.
    Revoked {
        /// The key as revoked.
        key: SigningKeyRecord,
        /// The key new sessions are signed with after the revocation: a new one when the
        /// revoked key was the current one.
        current: SigningKeyRecord,
        /// Whether `current` was made by this revocation.
        replaced: bool,
        /// The revision of the revocation's last event.
        revision: Revision,
    },
    /// It was revoked before; nothing changed. `head` is the log's head, which covers the
    /// earlier revocation (for `--wait`).
    AlreadyRevoked {
        key: SigningKeyRecord,
        current: Option<SigningKeyRecord>,
        head: Revision,
    },
    /// No such key (never made, or pruned once its tokens had all expired).
    NotFound,
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

    /// Rotates as [`SigningKeyStore::rotate_signing_key`] does, but only when there is a
    /// current key and its lifetime differs from `next`'s
    /// ([`SigningKeyRecord::lifetime_differs_from`]), decided in the rotation's own
    /// transaction: of replicas starting at once with one configuration, one rotates and the
    /// others find its new key. `None`: nothing changed.
    async fn rotate_signing_key_for_lifetime(
        &self,
        next: SigningKeyRecord,
        retire_until_unix_ms: i64,
        actor: &str,
    ) -> Result<Option<Rotated>, StoreError>;

    /// Every signing key still kept (current, retired, revoked), newest first.
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Revokes `key_id` ([`SigningKeyRecord::revoke`]) and audits it, in one transaction.
    /// When it is the current key, `next` becomes the current key first, so sign-ins keep
    /// working: a `SigningKey` event for `next`, then one for the revoked key. An unknown or
    /// already revoked key changes nothing.
    async fn revoke_signing_key(
        &self,
        key_id: &str,
        next: SigningKeyRecord,
        session_lifetime_ms: i64,
        actor: &str,
    ) -> Result<SigningKeyRevoked, StoreError>;
}
