//! The store's own encoding of an event's change: a kind and a JSON document, the same in every
//! backend. It is not the gRPC wire message (`keygate_proto::pb`): the log on disk must not
//! change when the sync protocol does, and a store copied between backends carries its events
//! byte for byte.
//!
//! Hashes and public keys are lowercase hex, ids and names plain strings, instants Unix
//! milliseconds. Fields are only ever added (with a default), never renamed.

use keygate_proto::{
    Change, Holder, Identity, KeyHash, KeyId, KeyLimits, Meta, PasskeyRevocation, RateLimit,
    ReplicaKey, SessionRevocation, SessionVerifyingKey, UserState,
};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// The kinds, as stored in the `kind` column.
pub const KEY_UPSERTED: &str = "key_upserted";
pub const KEY_DELETED: &str = "key_deleted";
pub const PASSKEY_REVOKED: &str = "passkey_revoked";
pub const SESSION_REVOKED: &str = "session_revoked";
pub const USER_STATE: &str = "user_state";
pub const SIGNING_KEY: &str = "signing_key";
pub const IDENTITY_UPSERTED: &str = "identity_upserted";
pub const IDENTITY_DELETED: &str = "identity_deleted";
pub const CREDITS_CHANGED: &str = "credits_changed";

/// A change as stored: its kind and its JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChange {
    pub kind: &'static str,
    pub json: String,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    hash: String,
    id: String,
    owner: String,
    enabled: bool,
    #[serde(default)]
    expires_ms: Option<i64>,
    #[serde(default)]
    meta: Meta,
    /// Added with limits per key; absent (a plain key) in older rows.
    #[serde(default, skip_serializing_if = "StoredLimits::is_empty")]
    limits: StoredLimits,
}

/// A key's limits as the store keeps them: in `KeyUpserted` documents and in the
/// `keys.limits_json` column (where the identity is left out: it has a column of its own).
/// Every field is optional, so `{}` is a plain key.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StoredLimits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ratelimits: Vec<StoredRateLimit>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    credits: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
}

impl StoredLimits {
    fn is_empty(&self) -> bool {
        self.ratelimits.is_empty()
            && !self.credits
            && self.permissions.is_empty()
            && self.identity.is_none()
    }

    fn from_limits(limits: &KeyLimits) -> Self {
        Self {
            ratelimits: limits
                .ratelimits
                .iter()
                .map(StoredRateLimit::from)
                .collect(),
            credits: limits.credits,
            permissions: limits.permissions.clone(),
            identity: limits.identity.clone(),
        }
    }

    fn into_limits(self) -> KeyLimits {
        KeyLimits {
            ratelimits: self.ratelimits.into_iter().map(RateLimit::from).collect(),
            credits: self.credits,
            permissions: self.permissions,
            identity: self.identity,
        }
    }
}

/// A named rate limit as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRateLimit {
    name: String,
    limit: u64,
    window_ms: u64,
}

impl From<&RateLimit> for StoredRateLimit {
    fn from(limit: &RateLimit) -> Self {
        Self {
            name: limit.name.clone(),
            limit: limit.limit,
            window_ms: limit.window_ms,
        }
    }
}

impl From<StoredRateLimit> for RateLimit {
    fn from(limit: StoredRateLimit) -> Self {
        Self {
            name: limit.name,
            limit: limit.limit,
            window_ms: limit.window_ms,
        }
    }
}

/// `keys.limits_json`: the key's limits without its identity (the `identity_id` column).
pub(crate) fn limits_to_column(limits: &KeyLimits) -> Result<String, StoreError> {
    let mut stored = StoredLimits::from_limits(limits);
    stored.identity = None;
    serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(format!("limits: {e}")))
}

/// A key's limits from `keys.limits_json` and `keys.identity_id`.
pub(crate) fn limits_from_column(
    json: &str,
    identity: Option<String>,
) -> Result<KeyLimits, StoreError> {
    let stored: StoredLimits = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("key limits {json:?}: {e}")))?;
    Ok(KeyLimits {
        identity,
        ..stored.into_limits()
    })
}

/// `identities.ratelimits_json`.
pub(crate) fn ratelimits_to_column(limits: &[RateLimit]) -> Result<String, StoreError> {
    let stored: Vec<StoredRateLimit> = limits.iter().map(StoredRateLimit::from).collect();
    serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(format!("rate limits: {e}")))
}

/// Rate limits from `identities.ratelimits_json`.
pub(crate) fn ratelimits_from_column(json: &str) -> Result<Vec<RateLimit>, StoreError> {
    let stored: Vec<StoredRateLimit> = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("rate limits {json:?}: {e}")))?;
    Ok(stored.into_iter().map(RateLimit::from).collect())
}

#[derive(Serialize, Deserialize)]
struct StoredIdentity {
    id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ratelimits: Vec<StoredRateLimit>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    credits: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredIdentityDeletion {
    id: String,
}

#[derive(Serialize, Deserialize)]
struct StoredCredits {
    /// `key:<id>` or `identity:<id>`.
    holder: String,
    remaining: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredDeletion {
    id: String,
    hash: String,
}

#[derive(Serialize, Deserialize)]
struct StoredPasskeyRevocation {
    user_id: String,
    passkey_id: String,
    revoked_ms: i64,
    prune_after_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredSessionRevocation {
    session_id: String,
    user_id: String,
    prune_after_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredUserState {
    user_id: String,
    disabled: bool,
    sessions_revoked_before_ms: i64,
    prune_after_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredSigningKey {
    key_id: String,
    public_key: String,
    created_ms: i64,
    #[serde(default)]
    verify_until_ms: Option<i64>,
    /// Added with signing-key revocation; absent (false) in older rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    revoked: bool,
    /// The lifetime the key signs with (its `signing_keys.max_session_lifetime_ms`); absent in
    /// rows from before, and for keys made before the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_session_lifetime_ms: Option<i64>,
}

/// Encodes a change for the log.
pub fn encode(change: &Change) -> Result<EncodedChange, StoreError> {
    let (kind, json) = match change {
        Change::KeyUpserted(key) => (
            KEY_UPSERTED,
            serde_json::to_string(&StoredKey {
                hash: hex::encode(key.hash.0),
                id: key.id.to_string(),
                owner: key.owner.clone(),
                enabled: key.enabled,
                expires_ms: key.expires_unix_ms,
                meta: key.meta.clone(),
                limits: StoredLimits::from_limits(&key.limits),
            }),
        ),
        Change::KeyDeleted { id, hash } => (
            KEY_DELETED,
            serde_json::to_string(&StoredDeletion {
                id: id.to_string(),
                hash: hex::encode(hash.0),
            }),
        ),
        Change::PasskeyRevoked(revocation) => (
            PASSKEY_REVOKED,
            serde_json::to_string(&StoredPasskeyRevocation {
                user_id: revocation.user_id.clone(),
                passkey_id: revocation.passkey_id.clone(),
                revoked_ms: revocation.revoked_unix_ms,
                prune_after_ms: revocation.prune_after_unix_ms,
            }),
        ),
        Change::SessionRevoked(revocation) => (
            SESSION_REVOKED,
            serde_json::to_string(&StoredSessionRevocation {
                session_id: revocation.session_id.clone(),
                user_id: revocation.user_id.clone(),
                prune_after_ms: revocation.prune_after_unix_ms,
            }),
        ),
        Change::UserState(state) => (
            USER_STATE,
            serde_json::to_string(&StoredUserState {
                user_id: state.user_id.clone(),
                disabled: state.disabled,
                sessions_revoked_before_ms: state.sessions_revoked_before_unix_ms,
                prune_after_ms: state.prune_after_unix_ms,
            }),
        ),
        Change::SigningKey(key) => (
            SIGNING_KEY,
            serde_json::to_string(&StoredSigningKey {
                key_id: key.key_id.clone(),
                public_key: hex::encode(key.public_key),
                created_ms: key.created_unix_ms,
                verify_until_ms: key.verify_until_unix_ms,
                revoked: key.revoked,
                max_session_lifetime_ms: key.max_session_lifetime_ms,
            }),
        ),
        Change::IdentityUpserted(identity) => (
            IDENTITY_UPSERTED,
            serde_json::to_string(&StoredIdentity {
                id: identity.id.clone(),
                ratelimits: identity
                    .ratelimits
                    .iter()
                    .map(StoredRateLimit::from)
                    .collect(),
                credits: identity.credits,
            }),
        ),
        Change::IdentityDeleted { id } => (
            IDENTITY_DELETED,
            serde_json::to_string(&StoredIdentityDeletion { id: id.clone() }),
        ),
        Change::CreditsChanged { holder, remaining } => (
            CREDITS_CHANGED,
            serde_json::to_string(&StoredCredits {
                holder: holder.to_string(),
                remaining: *remaining,
            }),
        ),
    };
    let json = json.map_err(|e| StoreError::Corrupt(format!("encoding an event: {e}")))?;
    Ok(EncodedChange { kind, json })
}

/// Decodes a stored change; a kind or document that does not decode is [`StoreError::Corrupt`].
pub fn decode(kind: &str, json: &str) -> Result<Change, StoreError> {
    fn parse<'a, T: Deserialize<'a>>(kind: &str, json: &'a str) -> Result<T, StoreError> {
        serde_json::from_str(json).map_err(|e| corrupt(kind, &e.to_string()))
    }
    Ok(match kind {
        KEY_UPSERTED => {
            let key: StoredKey = parse(kind, json)?;
            Change::KeyUpserted(ReplicaKey {
                hash: key_hash(kind, &key.hash)?,
                id: key_id(kind, &key.id)?,
                owner: key.owner,
                enabled: key.enabled,
                expires_unix_ms: key.expires_ms,
                meta: key.meta,
                limits: key.limits.into_limits(),
            })
        }
        KEY_DELETED => {
            let deletion: StoredDeletion = parse(kind, json)?;
            Change::KeyDeleted {
                id: key_id(kind, &deletion.id)?,
                hash: key_hash(kind, &deletion.hash)?,
            }
        }
        PASSKEY_REVOKED => {
            let r: StoredPasskeyRevocation = parse(kind, json)?;
            Change::PasskeyRevoked(PasskeyRevocation {
                user_id: r.user_id,
                passkey_id: r.passkey_id,
                revoked_unix_ms: r.revoked_ms,
                prune_after_unix_ms: r.prune_after_ms,
            })
        }
        SESSION_REVOKED => {
            let r: StoredSessionRevocation = parse(kind, json)?;
            Change::SessionRevoked(SessionRevocation {
                session_id: r.session_id,
                user_id: r.user_id,
                prune_after_unix_ms: r.prune_after_ms,
            })
        }
        USER_STATE => {
            let s: StoredUserState = parse(kind, json)?;
            Change::UserState(UserState {
                user_id: s.user_id,
                disabled: s.disabled,
                sessions_revoked_before_unix_ms: s.sessions_revoked_before_ms,
                prune_after_unix_ms: s.prune_after_ms,
            })
        }
        SIGNING_KEY => {
            let k: StoredSigningKey = parse(kind, json)?;
            let public_key = hex::decode(&k.public_key)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| corrupt(kind, "public key is not 32 hex bytes"))?;
            Change::SigningKey(SessionVerifyingKey {
                key_id: k.key_id,
                public_key,
                created_unix_ms: k.created_ms,
                verify_until_unix_ms: k.verify_until_ms,
                revoked: k.revoked,
                max_session_lifetime_ms: k.max_session_lifetime_ms,
            })
        }
        IDENTITY_UPSERTED => {
            let i: StoredIdentity = parse(kind, json)?;
            Change::IdentityUpserted(Identity {
                id: i.id,
                ratelimits: i.ratelimits.into_iter().map(RateLimit::from).collect(),
                credits: i.credits,
            })
        }
        IDENTITY_DELETED => {
            let d: StoredIdentityDeletion = parse(kind, json)?;
            Change::IdentityDeleted { id: d.id }
        }
        CREDITS_CHANGED => {
            let c: StoredCredits = parse(kind, json)?;
            Change::CreditsChanged {
                holder: c
                    .holder
                    .parse::<Holder>()
                    .map_err(|e| corrupt(kind, &e.to_string()))?,
                remaining: c.remaining,
            }
        }
        other => return Err(corrupt(other, "unknown event kind")),
    })
}

fn key_hash(kind: &str, text: &str) -> Result<KeyHash, StoreError> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| KeyHash::from_slice(&bytes))
        .ok_or_else(|| corrupt(kind, "key hash is not 32 hex bytes"))
}

fn key_id(kind: &str, text: &str) -> Result<KeyId, StoreError> {
    text.parse().map_err(|_| corrupt(kind, "bad key id"))
}

fn corrupt(kind: &str, why: &str) -> StoreError {
    StoreError::Corrupt(format!("event of kind {kind:?}: {why}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Change> {
        let mut meta = Meta::new();
        meta.insert("plan".to_owned(), "pro".to_owned());
        vec![
            Change::KeyUpserted(ReplicaKey {
                hash: KeyHash([7; 32]),
                id: KeyId::generate(),
                owner: "acme".to_owned(),
                enabled: true,
                expires_unix_ms: Some(1_700_000_000_000),
                meta: meta.clone(),
                limits: KeyLimits::default(),
            }),
            Change::KeyUpserted(ReplicaKey {
                hash: KeyHash([8; 32]),
                id: KeyId::generate(),
                owner: "acme".to_owned(),
                enabled: true,
                expires_unix_ms: None,
                meta,
                limits: KeyLimits {
                    ratelimits: vec!["requests=100/1s".parse().unwrap()],
                    credits: true,
                    permissions: vec!["orders.read".to_owned(), "orders.write".to_owned()],
                    identity: Some("acme-corp".to_owned()),
                },
            }),
            Change::KeyDeleted {
                id: KeyId::generate(),
                hash: KeyHash([9; 32]),
            },
            Change::PasskeyRevoked(PasskeyRevocation {
                user_id: "alice".to_owned(),
                passkey_id: "pk_1".to_owned(),
                revoked_unix_ms: 5,
                prune_after_unix_ms: 6,
            }),
            Change::SessionRevoked(SessionRevocation {
                session_id: "ses_1".to_owned(),
                user_id: "alice".to_owned(),
                prune_after_unix_ms: 7,
            }),
            Change::UserState(UserState {
                user_id: "bob".to_owned(),
                disabled: true,
                sessions_revoked_before_unix_ms: 8,
                prune_after_unix_ms: 9,
            }),
            Change::SigningKey(SessionVerifyingKey {
                key_id: "sk_1".to_owned(),
                public_key: [3; 32],
                created_unix_ms: 10,
                verify_until_unix_ms: None,
                revoked: false,
                max_session_lifetime_ms: None,
            }),
            Change::SigningKey(SessionVerifyingKey {
                key_id: "sk_2".to_owned(),
                public_key: [4; 32],
                created_unix_ms: 11,
                verify_until_unix_ms: Some(12),
                revoked: true,
                max_session_lifetime_ms: Some(13),
            }),
            Change::IdentityUpserted(Identity {
                id: "acme-corp".to_owned(),
                ratelimits: vec!["tokens=10000/1m".parse().unwrap()],
                credits: true,
            }),
            Change::IdentityUpserted(Identity {
                id: "plain".to_owned(),
                ratelimits: Vec::new(),
                credits: false,
            }),
            Change::IdentityDeleted {
                id: "acme-corp".to_owned(),
            },
            Change::CreditsChanged {
                holder: Holder::Key(KeyId::generate()),
                remaining: 42,
            },
            Change::CreditsChanged {
                holder: Holder::Identity("acme-corp".to_owned()),
                remaining: 0,
            },
        ]
    }

    #[test]
    fn a_key_row_from_before_limits_reads_as_a_plain_key_and_a_plain_key_is_written_as_before() {
        let id = KeyId::generate();
        let hash = "07".repeat(32);
        let json = format!(
            r#"{{"hash":"{hash}","id":"{id}","owner":"acme","enabled":true,"expires_ms":null,"meta":{{}}}}"#
        );
        let Change::KeyUpserted(key) = decode(KEY_UPSERTED, &json).unwrap() else {
            panic!("not a key");
        };
        assert_eq!((key.id, key.limits.clone()), (id, KeyLimits::default()));
        assert_eq!(encode(&Change::KeyUpserted(key)).unwrap().json, json);
    }

    #[test]
    fn a_key_column_keeps_its_limits_and_the_identity_beside_them() {
        let limits = KeyLimits {
            ratelimits: vec!["requests=5/1m".parse().unwrap()],
            credits: true,
            permissions: vec!["a".to_owned()],
            identity: Some("acme".to_owned()),
        };
        let column = limits_to_column(&limits).unwrap();
        assert!(!column.contains("acme"), "{column}");
        assert_eq!(
            limits_from_column(&column, Some("acme".to_owned())).unwrap(),
            limits
        );
        assert_eq!(
            limits_from_column("{}", None).unwrap(),
            KeyLimits::default()
        );
        assert!(matches!(
            limits_from_column("[", None),
            Err(StoreError::Corrupt(_))
        ));
        let ratelimits = limits.ratelimits;
        let column = ratelimits_to_column(&ratelimits).unwrap();
        assert_eq!(ratelimits_from_column(&column).unwrap(), ratelimits);
    }

    #[test]
    fn a_signing_key_row_from_before_revocation_reads_as_not_revoked() {
        let public_key = "03".repeat(32);
        let json = format!(
            r#"{{"key_id":"sk_1","public_key":"{public_key}","created_ms":10,"verify_until_ms":null}}"#
        );
        assert_eq!(
            decode(SIGNING_KEY, &json).unwrap(),
            every_kind()[6],
            "the defaults of the fields added later"
        );
        // And a key that is neither revoked nor carries a lifetime is written as before.
        assert_eq!(encode(&every_kind()[6]).unwrap().json, json);
    }

    #[test]
    fn every_kind_round_trips() {
        for change in every_kind() {
            let encoded = encode(&change).unwrap();
            assert_eq!(decode(encoded.kind, &encoded.json).unwrap(), change);
        }
    }

    #[test]
    fn damaged_rows_are_corrupt_not_panics() {
        for (kind, json) in [
            ("key_deleted", "{}"),
            ("key_deleted", r#"{"id":"key_x","hash":"00"}"#),
            (
                "signing_key",
                r#"{"key_id":"k","public_key":"zz","created_ms":1}"#,
            ),
            ("no_such_kind", "{}"),
            ("user_state", "not json"),
            ("credits_changed", r#"{"holder":"user:x","remaining":1}"#),
            ("credits_changed", r#"{"holder":"key:x","remaining":-1}"#),
            ("identity_deleted", "{}"),
        ] {
            assert!(
                matches!(decode(kind, json), Err(StoreError::Corrupt(_))),
                "{kind} {json}"
            );
        }
    }
}
