//! The rules of the operator operations on API keys: input validation, key generation, page
//! sizes and cursors, reroll expiry. The gRPC layer converts wire messages to the types here,
//! and the store makes each operation one transaction.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{ApiKey, KeyId, KeyPrefix, Meta, Revision};

use crate::store::{
    AuditEntry, KeyQuery, KeyRecord, NewKey, OwnerRevoked, Reroll, Store, StoreError,
};

/// Longest owner, in characters.
pub const MAX_OWNER_CHARS: usize = 256;
/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Most meta entries per key.
pub const MAX_META_ENTRIES: usize = 32;
/// Longest meta key, in bytes.
pub const MAX_META_KEY_BYTES: usize = 64;
/// Longest meta value, in bytes.
pub const MAX_META_VALUE_BYTES: usize = 512;
/// Page size when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for KeyError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::KeyNotFound(id) => Self::NotFound(format!("key {id} not found")),
            other => Self::Store(other),
        }
    }
}

fn invalid(message: impl Into<String>) -> KeyError {
    KeyError::InvalidArgument(message.into())
}

/// A create request, as the operator sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateKey {
    pub owner: String,
    /// Empty: the default prefix `kg`.
    pub prefix: String,
    pub name: String,
    pub expires_unix_ms: Option<i64>,
    pub meta: Meta,
    pub disabled: bool,
}

/// A list request, as the operator sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListKeys {
    /// Empty: every owner.
    pub owner: String,
    /// 0: [`DEFAULT_PAGE_SIZE`]; clamped to [`MAX_PAGE_SIZE`].
    pub limit: u32,
    /// Empty: the first page.
    pub cursor: String,
}

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    /// `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A freshly issued key: the only value that holds a plaintext key. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedKey {
    pub plaintext: String,
    pub record: KeyRecord,
    /// Head revision after the operation (wait for this one to see it everywhere).
    pub revision: Revision,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("plaintext", &"<redacted>")
            .field("record", &self.record)
            .field("revision", &self.revision)
            .finish()
    }
}

/// The state of a key after enable/disable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChanged {
    /// The revision at which the key reached this state: the new event's revision, or the
    /// key's existing revision when it already was in that state.
    pub revision: Revision,
    pub key: KeyRecord,
}

/// The operator operations on keys.
#[derive(Clone)]
pub struct Keys {
    store: Arc<dyn Store>,
}

impl Keys {
    /// Operations on the keys in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Creates a key and returns its plaintext, once.
    pub async fn create(&self, request: CreateKey, actor: &str) -> Result<IssuedKey, KeyError> {
        let owner = check_owner(&request.owner)?;
        let prefix = if request.prefix.is_empty() {
            KeyPrefix::default()
        } else {
            KeyPrefix::new(&request.prefix).map_err(|e| invalid(e.to_string()))?
        };
        check_text("name", &request.name, MAX_NAME_CHARS)?;
        check_meta(&request.meta)?;
        let now = now_unix_ms();
        if let Some(expires) = request.expires_unix_ms
            && expires <= now
        {
            return Err(invalid(format!(
                "expires_unix_ms {expires} is not in the future (now is {now})"
            )));
        }
        let plaintext = ApiKey::generate(&prefix);
        let parsed = ApiKey::parse(&plaintext)
            .map_err(|e| KeyError::Store(StoreError::Corrupt(format!("generated key: {e}"))))?;
        let new_key = NewKey {
            id: KeyId::generate(),
            hash: parsed.hash(),
            owner: owner.to_owned(),
            name: request.name,
            start: parsed.start().to_owned(),
            enabled: !request.disabled,
            created_unix_ms: now,
            expires_unix_ms: request.expires_unix_ms,
            meta: request.meta,
        };
        let record = self.store.create_key(new_key, actor).await?;
        Ok(IssuedKey {
            plaintext,
            revision: record.revision,
            record,
        })
    }

    /// One key by id.
    pub async fn get(&self, id: &str) -> Result<KeyRecord, KeyError> {
        let id = parse_key_id(id)?;
        self.store
            .get_key(id)
            .await?
            .ok_or_else(|| KeyError::NotFound(format!("key {id} not found")))
    }

    /// A page of keys, ordered by id.
    pub async fn list(&self, request: ListKeys) -> Result<KeyPage, KeyError> {
        let owner = if request.owner.is_empty() {
            None
        } else {
            Some(check_owner(&request.owner)?.to_owned())
        };
        let limit = page_size(request.limit);
        let after = if request.cursor.is_empty() {
            None
        } else {
            Some(decode_cursor(&request.cursor)?)
        };
        // One extra row tells whether another page exists, so the last page has no cursor.
        let mut keys = self
            .store
            .list_keys(KeyQuery {
                owner,
                after,
                limit: limit + 1,
            })
            .await?;
        let next_cursor = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().map(|key| encode_cursor(key.id))
        } else {
            None
        };
        Ok(KeyPage { keys, next_cursor })
    }

    /// Enables or disables a key. Already in that state: no new event.
    pub async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<KeyChanged, KeyError> {
        let id = parse_key_id(id)?;
        let change = self.store.set_key_enabled(id, enabled, actor).await?;
        Ok(KeyChanged {
            revision: change.key.revision,
            key: change.key,
        })
    }

    /// Deletes a key for good. Returns the revision of the delete.
    pub async fn delete(&self, id: &str, actor: &str) -> Result<Revision, KeyError> {
        let id = parse_key_id(id)?;
        Ok(self.store.delete_key(id, actor).await?)
    }

    /// Issues a replacement for a key; the old one keeps working for `grace_ms` (0: stops at
    /// once), or until its own earlier expiry.
    pub async fn reroll(
        &self,
        id: &str,
        grace_ms: u64,
        actor: &str,
    ) -> Result<IssuedKey, KeyError> {
        let old = self.get(id).await?;
        // The prefix never changes, so reading it before the transaction is safe; a key
        // deleted meanwhile makes the store answer NotFound.
        let prefix = KeyPrefix::new(old.prefix()).map_err(|e| {
            KeyError::Store(StoreError::Corrupt(format!("stored key {}: {e}", old.id)))
        })?;
        let plaintext = ApiKey::generate(&prefix);
        let parsed = ApiKey::parse(&plaintext)
            .map_err(|e| KeyError::Store(StoreError::Corrupt(format!("generated key: {e}"))))?;
        let now = now_unix_ms();
        let grace = i64::try_from(grace_ms).unwrap_or(i64::MAX);
        let rerolled = self
            .store
            .reroll_key(
                Reroll {
                    old_id: old.id,
                    new_id: KeyId::generate(),
                    new_hash: parsed.hash(),
                    new_start: parsed.start().to_owned(),
                    now_unix_ms: now,
                    old_expires_unix_ms: now.saturating_add(grace),
                    grace_ms,
                },
                actor,
            )
            .await?;
        Ok(IssuedKey {
            plaintext,
            record: rerolled.new_key,
            revision: rerolled.revision,
        })
    }

    /// Deletes every key of an owner.
    pub async fn revoke_owner(&self, owner: &str, actor: &str) -> Result<OwnerRevoked, KeyError> {
        let owner = check_owner(owner)?;
        Ok(self.store.revoke_owner(owner, actor).await?)
    }

    /// What the event log still holds.
    pub async fn log_bounds(&self) -> Result<crate::store::LogBounds, KeyError> {
        Ok(self.store.log_bounds().await?)
    }

    /// The newest audit entries, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, KeyError> {
        Ok(self.store.list_audit(page_size(limit)).await?)
    }
}

/// Parses a key id from an operator, with a message that says what is wrong.
pub fn parse_key_id(id: &str) -> Result<KeyId, KeyError> {
    if id.is_empty() {
        return Err(invalid("key_id is required"));
    }
    id.parse::<KeyId>().map_err(|e| invalid(e.to_string()))
}

fn page_size(limit: u32) -> usize {
    match usize::try_from(limit) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(limit) => limit.min(MAX_PAGE_SIZE),
        Err(_) => MAX_PAGE_SIZE,
    }
}

fn check_owner(owner: &str) -> Result<&str, KeyError> {
    if owner.is_empty() {
        return Err(invalid("owner is required"));
    }
    check_text("owner", owner, MAX_OWNER_CHARS)?;
    Ok(owner)
}

fn check_text(field: &str, text: &str, max_chars: usize) -> Result<(), KeyError> {
    if text.chars().count() > max_chars {
        return Err(invalid(format!(
            "{field} is longer than {max_chars} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(format!("{field} contains a control character")));
    }
    Ok(())
}

fn check_meta(meta: &Meta) -> Result<(), KeyError> {
    if meta.len() > MAX_META_ENTRIES {
        return Err(invalid(format!(
            "meta has {} entries; at most {MAX_META_ENTRIES} are allowed",
            meta.len()
        )));
    }
    for (key, value) in meta {
        if key.is_empty() || key.len() > MAX_META_KEY_BYTES {
            return Err(invalid(format!(
                "meta key {:?} must be 1-{MAX_META_KEY_BYTES} bytes",
                key.chars().take(80).collect::<String>()
            )));
        }
        if value.len() > MAX_META_VALUE_BYTES {
            return Err(invalid(format!(
                "meta value of {key:?} is longer than {MAX_META_VALUE_BYTES} bytes"
            )));
        }
        if key.chars().chain(value.chars()).any(char::is_control) {
            return Err(invalid(format!(
                "meta entry {key:?} contains a control character"
            )));
        }
    }
    Ok(())
}

/// The cursor is the last key id of the page, base64url-encoded so callers treat it as opaque.
fn encode_cursor(last: KeyId) -> String {
    URL_SAFE_NO_PAD.encode(last.to_string())
}

fn decode_cursor(cursor: &str) -> Result<KeyId, KeyError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| invalid("invalid cursor: pass the cursor of a previous page unchanged"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_validated_with_clear_messages() {
        let empty = parse_key_id("").unwrap_err();
        assert_eq!(empty.to_string(), "key_id is required");
        let bad = parse_key_id("key_nope").unwrap_err();
        assert!(matches!(bad, KeyError::InvalidArgument(_)));
        assert!(bad.to_string().contains("key_ followed by 22"), "{bad}");
        let id = KeyId::generate();
        assert_eq!(parse_key_id(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = KeyId::generate();
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        for garbage in ["!!!", "a2V5X25vcGU", "key_0000000000000000000000"] {
            assert!(matches!(
                decode_cursor(garbage),
                Err(KeyError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(5000), MAX_PAGE_SIZE);
    }

    #[test]
    fn text_and_meta_limits() {
        assert!(check_owner("").is_err());
        assert!(check_owner(&"o".repeat(256)).is_ok());
        assert!(check_owner(&"o".repeat(257)).is_err());
        assert!(check_owner("tab\there").is_err());
        let mut meta = Meta::new();
        meta.insert("plan".into(), "pro".into());
        assert!(check_meta(&meta).is_ok());
        meta.insert("k".repeat(65), "v".into());
        assert!(check_meta(&meta).is_err());
        let big_value = Meta::from([("k".to_owned(), "v".repeat(513))]);
        assert!(check_meta(&big_value).is_err());
        let many: Meta = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_meta(&many).is_err());
        assert!(check_meta(&Meta::from([(String::new(), "v".into())])).is_err());
    }
}
