//! The rules of the operator operations on API keys: input validation, key generation, page
//! sizes and cursors, reroll expiry, and the limits a key or an identity carries (rate limits,
//! credits and their refill, permissions, identity; DESIGN.md, "Limits and permissions per
//! key"). The gRPC layer converts wire messages to the types here, and the store makes each
//! operation one transaction.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_proto::limits::{
    KeyLimits, LimitError, RateLimit, RefillSpec, check_credits, check_identity_id,
    check_ratelimits,
};
use keygate_proto::time::now_unix_ms;
use keygate_proto::{ApiKey, KeyId, KeyPrefix, Meta, Revision};

use crate::store::{
    AuditEntry, CreditsChange, IdentityRecord, IdentityUpdate, KeyQuery, KeyRecord, LimitsUpdate,
    NewIdentity, NewKey, OwnerRevoked, RefillChange, Reroll, Store, StoreError,
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
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation cannot be done in the current state (an identity keys still name).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for KeyError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::KeyNotFound(id) => Self::NotFound(format!("key {id} not found")),
            StoreError::IdentityNotFound(id) => {
                Self::NotFound(format!("identity {id:?} not found"))
            }
            in_use @ StoreError::IdentityInUse { .. } => {
                Self::FailedPrecondition(in_use.to_string())
            }
            other => Self::Store(other),
        }
    }
}

impl From<LimitError> for KeyError {
    fn from(error: LimitError) -> Self {
        Self::InvalidArgument(error.0)
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
    /// The key's own rate limits (checked here).
    pub ratelimits: Vec<RateLimit>,
    /// The key's own credits; `None`: unlimited.
    pub credits: Option<u64>,
    /// Only with credits.
    pub refill: Option<RefillSpec>,
    pub permissions: Vec<String>,
    /// Created, with no limits of its own, when it does not exist.
    pub identity: Option<String>,
}

/// A change to a key's limits, as the operator sent it; `None` and `Keep` keep the value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateKey {
    pub key_id: String,
    /// Replaces the key's rate limits (empty: none).
    pub ratelimits: Option<Vec<RateLimit>>,
    pub credits: CreditsChange,
    pub refill: RefillChange,
    /// Replaces the key's permissions (empty: none).
    pub permissions: Option<Vec<String>>,
    /// `Some(None)` removes the identity.
    pub identity: Option<Option<String>>,
}

/// An identity to create, as the operator sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateIdentity {
    pub id: String,
    pub ratelimits: Vec<RateLimit>,
    pub credits: Option<u64>,
    pub refill: Option<RefillSpec>,
}

/// A change to an identity, as the operator sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateIdentity {
    pub id: String,
    pub ratelimits: Option<Vec<RateLimit>>,
    pub credits: CreditsChange,
    pub refill: RefillChange,
}

/// One page of identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPage {
    pub identities: Vec<IdentityRecord>,
    /// `None` on the last page.
    pub next_cursor: Option<String>,
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
        check_ratelimits(&request.ratelimits)?;
        let credits = request.credits.map(check_credits).transpose()?;
        let refill = check_refill(request.refill, credits.is_some())?;
        let limits = KeyLimits {
            ratelimits: request.ratelimits,
            credits: credits.is_some(),
            permissions: request.permissions,
            identity: request.identity,
        }
        .validated()?;
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
            limits,
            credits,
            refill,
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

    /// Changes a key's rate limits, credits, refill, permissions or identity.
    pub async fn update_limits(
        &self,
        request: UpdateKey,
        actor: &str,
    ) -> Result<KeyChanged, KeyError> {
        let id = parse_key_id(&request.key_id)?;
        if let Some(ratelimits) = &request.ratelimits {
            check_ratelimits(ratelimits)?;
        }
        let permissions = request
            .permissions
            .map(keygate_proto::limits::canonical_permissions)
            .transpose()?;
        if let Some(Some(identity)) = &request.identity {
            check_identity_id(identity)?;
        }
        check_credits_change(request.credits, request.refill)?;
        if request.ratelimits.is_none()
            && request.credits == CreditsChange::Keep
            && request.refill == RefillChange::Keep
            && permissions.is_none()
            && request.identity.is_none()
        {
            return Err(invalid(
                "nothing to change: give rate limits, credits, a refill, permissions or an identity",
            ));
        }
        if matches!(request.refill, RefillChange::Set(_)) && request.credits == CreditsChange::Keep
        {
            let key = self
                .store
                .get_key(id)
                .await?
                .ok_or_else(|| KeyError::NotFound(format!("key {id} not found")))?;
            if key.credits.is_none() {
                return Err(invalid(format!(
                    "key {id} has no credits (unlimited): a refill needs credits; set credits too"
                )));
            }
        }
        let update = LimitsUpdate {
            ratelimits: request.ratelimits,
            credits: request.credits,
            refill: request.refill,
            permissions,
            identity: request.identity,
        };
        let credits_touched =
            update.credits != CreditsChange::Keep || update.refill != RefillChange::Keep;
        let key = self
            .store
            .update_key_limits(id, update, now_unix_ms(), actor)
            .await?;
        Ok(KeyChanged {
            revision: self.change_revision(key.revision, credits_touched).await?,
            key,
        })
    }

    /// The revision to wait for after a change: the record's own, or, when credits changed
    /// (a `CreditsChanged` event, which does not move the record's revision), the head.
    async fn change_revision(
        &self,
        record: Revision,
        credits_touched: bool,
    ) -> Result<Revision, KeyError> {
        if !credits_touched {
            return Ok(record);
        }
        Ok(record.max(self.store.log_bounds().await?.head))
    }

    /// Creates an identity.
    pub async fn create_identity(
        &self,
        request: CreateIdentity,
        actor: &str,
    ) -> Result<IdentityRecord, KeyError> {
        check_identity(&request.id)?;
        check_ratelimits(&request.ratelimits)?;
        let credits = request.credits.map(check_credits).transpose()?;
        let refill = check_refill(request.refill, credits.is_some())?;
        let identity = NewIdentity {
            id: request.id,
            ratelimits: request.ratelimits,
            credits,
            refill,
            created_unix_ms: now_unix_ms(),
        };
        let id = identity.id.clone();
        self.store
            .create_identity(identity, actor)
            .await
            .map_err(|error| match error {
                StoreError::Conflict(_) => {
                    KeyError::AlreadyExists(format!("identity {id:?} already exists"))
                }
                other => other.into(),
            })
    }

    /// Changes an identity's rate limits, credits or refill; returns it with the revision to
    /// wait for.
    pub async fn update_identity(
        &self,
        request: UpdateIdentity,
        actor: &str,
    ) -> Result<(IdentityRecord, Revision), KeyError> {
        check_identity(&request.id)?;
        if let Some(ratelimits) = &request.ratelimits {
            check_ratelimits(ratelimits)?;
        }
        check_credits_change(request.credits, request.refill)?;
        if request.ratelimits.is_none()
            && request.credits == CreditsChange::Keep
            && request.refill == RefillChange::Keep
        {
            return Err(invalid(
                "nothing to change: give rate limits, credits or a refill",
            ));
        }
        if matches!(request.refill, RefillChange::Set(_)) && request.credits == CreditsChange::Keep
        {
            let identity = self.get_identity(&request.id).await?;
            if identity.credits.is_none() {
                return Err(invalid(format!(
                    "identity {:?} has no credits (unlimited): a refill needs credits; set credits too",
                    request.id
                )));
            }
        }
        let credits_touched =
            request.credits != CreditsChange::Keep || request.refill != RefillChange::Keep;
        let update = IdentityUpdate {
            ratelimits: request.ratelimits,
            credits: request.credits,
            refill: request.refill,
        };
        let identity = self
            .store
            .update_identity(&request.id, update, now_unix_ms(), actor)
            .await?;
        let revision = self
            .change_revision(identity.revision, credits_touched)
            .await?;
        Ok((identity, revision))
    }

    /// One identity by id.
    pub async fn get_identity(&self, id: &str) -> Result<IdentityRecord, KeyError> {
        check_identity(id)?;
        self.store
            .get_identity(id)
            .await?
            .ok_or_else(|| KeyError::NotFound(format!("identity {id:?} not found")))
    }

    /// A page of identities, ordered by id.
    pub async fn list_identities(
        &self,
        limit: u32,
        cursor: &str,
    ) -> Result<IdentityPage, KeyError> {
        let limit = page_size(limit);
        let after = if cursor.is_empty() {
            None
        } else {
            Some(decode_identity_cursor(cursor)?)
        };
        // One extra row tells whether another page exists, so the last page has no cursor.
        let mut identities = self
            .store
            .list_identities(after.as_deref(), limit + 1)
            .await?;
        let next_cursor = if identities.len() > limit {
            identities.truncate(limit);
            identities
                .last()
                .map(|identity| URL_SAFE_NO_PAD.encode(&identity.id))
        } else {
            None
        };
        Ok(IdentityPage {
            identities,
            next_cursor,
        })
    }

    /// Deletes an identity no key names. Returns the revision of the delete.
    pub async fn delete_identity(&self, id: &str, actor: &str) -> Result<Revision, KeyError> {
        check_identity(id)?;
        Ok(self.store.delete_identity(id, actor).await?)
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

/// A refill given on create: only with credits.
fn check_refill(
    refill: Option<RefillSpec>,
    has_credits: bool,
) -> Result<Option<RefillSpec>, KeyError> {
    let Some(refill) = refill else {
        return Ok(None);
    };
    refill.validate()?;
    if !has_credits {
        return Err(invalid(
            "a refill needs credits: set credits too (a refill sets the credits back to its amount)",
        ));
    }
    Ok(Some(refill))
}

/// Credits and refill of an update: each valid, and not contradicting each other.
fn check_credits_change(credits: CreditsChange, refill: RefillChange) -> Result<(), KeyError> {
    if let CreditsChange::Set(credits) = credits {
        check_credits(credits)?;
    }
    if let RefillChange::Set(refill) = refill {
        refill.validate()?;
        if credits == CreditsChange::Clear {
            return Err(invalid(
                "clearing credits (unlimited) drops the refill too: give either, not both",
            ));
        }
    }
    Ok(())
}

fn check_identity(id: &str) -> Result<(), KeyError> {
    if id.is_empty() {
        return Err(invalid("identity_id is required"));
    }
    Ok(check_identity_id(id)?)
}

fn decode_identity_cursor(cursor: &str) -> Result<String, KeyError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| check_identity_id(id).is_ok())
        .ok_or_else(|| invalid("invalid cursor: pass the cursor of a previous page unchanged"))
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
    fn refills_need_credits_and_contradictions_are_refused() {
        let refill: RefillSpec = "100/1d".parse().unwrap();
        let error = check_refill(Some(refill), false).unwrap_err();
        assert!(
            error.to_string().contains("refill needs credits"),
            "{error}"
        );
        assert_eq!(check_refill(Some(refill), true).unwrap(), Some(refill));
        assert_eq!(check_refill(None, false).unwrap(), None);
        let bad = RefillSpec {
            amount: 1,
            interval_ms: 10,
        };
        assert!(check_refill(Some(bad), true).is_err());
        assert!(check_credits_change(CreditsChange::Clear, RefillChange::Set(refill)).is_err());
        assert!(check_credits_change(CreditsChange::Set(u64::MAX), RefillChange::Keep).is_err());
        assert!(check_credits_change(CreditsChange::Set(5), RefillChange::Set(refill)).is_ok());
        assert!(check_credits_change(CreditsChange::Clear, RefillChange::Clear).is_ok());
    }

    #[test]
    fn identity_cursors_round_trip_and_garbage_is_refused() {
        let cursor = URL_SAFE_NO_PAD.encode("acme:eu-1");
        assert_eq!(decode_identity_cursor(&cursor).unwrap(), "acme:eu-1");
        let spaced = URL_SAFE_NO_PAD.encode("a b");
        for garbage in ["!!!", spaced.as_str()] {
            assert!(matches!(
                decode_identity_cursor(garbage),
                Err(KeyError::InvalidArgument(_))
            ));
        }
        assert!(check_identity("").is_err());
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
