//! The verdict vocabulary (DESIGN.md, "Verification at the gateway"): the codes, what a valid
//! credential grants, and the verdict itself.
//!
//! A leaf module: it names no other module of the gateway but [`crate::owners`] (and the
//! limits policy a key grant carries, [`crate::limits::KeyPolicy`]), so the
//! replica, the verifiers, the metrics and the HTTP code can all speak of verdicts without
//! importing each other. `verify.rs` re-exports everything here.

use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use keygate_proto::session::SessionClaims;
use keygate_proto::{KeyId, Meta, base62};

use crate::limits::KeyPolicy;
use crate::owners::OwnerId;

/// Verdict codes, as DESIGN.md's table names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The request may be forwarded.
    Valid,
    /// No credential on a route that needs one (401).
    Missing,
    /// Wrong syntax or checksum (401).
    Malformed,
    /// Unknown or deleted key (401).
    NotFound,
    /// The key exists but is disabled (403).
    Disabled,
    /// Past its expiry (401).
    Expired,
    /// A session whose passkey, user or session was revoked (401).
    Revoked,
    /// The gateway cannot prove it is within the propagation bound (503).
    Stale,
    /// An unsafe method carried only by the session cookie, from an origin the route does not
    /// allow (403). Decided from the request, before the credential is verified.
    ForbiddenOrigin,
    /// The key lacks a permission the route requires (403).
    InsufficientPermissions,
    /// The key (or its identity) has no credits left (429).
    UsageExceeded,
    /// Over a rate limit (429, with `Retry-After`).
    RateLimited,
}

impl Code {
    /// Every code, in declaration order (`code as usize` indexes it).
    pub const ALL: [Code; 12] = [
        Code::Valid,
        Code::Missing,
        Code::Malformed,
        Code::NotFound,
        Code::Disabled,
        Code::Expired,
        Code::Revoked,
        Code::Stale,
        Code::ForbiddenOrigin,
        Code::InsufficientPermissions,
        Code::UsageExceeded,
        Code::RateLimited,
    ];

    /// The wire name, e.g. `NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Valid => "VALID",
            Code::Missing => "MISSING",
            Code::Malformed => "MALFORMED",
            Code::NotFound => "NOT_FOUND",
            Code::Disabled => "DISABLED",
            Code::Expired => "EXPIRED",
            Code::Revoked => "REVOKED",
            Code::Stale => "STALE",
            Code::ForbiddenOrigin => "FORBIDDEN_ORIGIN",
            Code::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            Code::UsageExceeded => "USAGE_EXCEEDED",
            Code::RateLimited => "RATE_LIMITED",
        }
    }

    /// The status a refused request gets; `None` for VALID, which is forwarded.
    pub fn status(self) -> Option<StatusCode> {
        match self {
            Code::Valid => None,
            Code::Missing | Code::Malformed | Code::NotFound | Code::Expired | Code::Revoked => {
                Some(StatusCode::UNAUTHORIZED)
            }
            Code::Disabled | Code::ForbiddenOrigin | Code::InsufficientPermissions => {
                Some(StatusCode::FORBIDDEN)
            }
            Code::UsageExceeded | Code::RateLimited => Some(StatusCode::TOO_MANY_REQUESTS),
            Code::Stale => Some(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

/// What a valid credential grants: who it is, for the upstream headers and the verify
/// endpoint.
#[derive(Debug, Clone)]
pub enum Grant {
    /// An API key.
    Key(KeyGrant),
    /// A passkey session.
    Session(SessionGrant),
}

/// What a key carries beside its replica slot, when it carries anything: its meta map and its
/// limits policy (permissions, rate limits, credits, identity). Plain keys have none.
#[derive(Debug)]
pub struct KeyExtras {
    pub(crate) meta: Option<Meta>,
    pub(crate) policy: Option<KeyPolicy>,
}

/// What a valid key grants. Made from a replica slot by copying numbers: no reference count is
/// touched unless the key has meta or limits.
#[derive(Debug, Clone)]
pub struct KeyGrant {
    pub(crate) key_id_bits: u128,
    pub(crate) owner: OwnerId,
    pub(crate) expires_unix_ms: Option<i64>,
    pub(crate) extras: Option<Arc<KeyExtras>>,
}

impl KeyGrant {
    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        key_id_from_bits(self.key_id_bits)
    }

    /// The key id's text (`key_…`, ASCII), without allocating.
    pub fn key_id_text(&self) -> [u8; KEY_ID_TEXT_LEN] {
        key_id_text(self.key_id_bits)
    }

    /// The key's owner.
    pub fn owner(&self) -> &str {
        self.owner.name()
    }

    /// `x-keygate-owner`'s value, built once per owner; `None` when the owner is not a valid
    /// header value. Cloning it touches no reference count.
    pub fn owner_header(&self) -> Option<&'static HeaderValue> {
        self.owner.header()
    }

    /// Expiry in Unix ms; `None` when the key never expires.
    pub fn expires_unix_ms(&self) -> Option<i64> {
        self.expires_unix_ms
    }

    /// The key's meta map, if any.
    pub fn meta(&self) -> Option<&Meta> {
        self.extras
            .as_deref()
            .and_then(|extras| extras.meta.as_ref())
    }

    /// The key's limits policy, when it has limits, permissions or an identity.
    #[inline]
    pub fn policy(&self) -> Option<&KeyPolicy> {
        self.extras
            .as_deref()
            .and_then(|extras| extras.policy.as_ref())
    }
}

/// A token whose signature verified: its claims and the key that proved them. This is what the
/// session signature cache holds (`session_verify.rs`); it says nothing about expiry or
/// revocation.
#[derive(Debug)]
pub struct VerifiedSession {
    /// The token's text without its signature.
    pub(crate) unsigned_text: Box<[u8]>,
    pub(crate) key_id: Box<str>,
    pub(crate) public_key: [u8; 32],
    pub(crate) claims: SessionClaims,
    /// The ids as header values, built once per token rather than once per request.
    pub(crate) user_id_header: HeaderValue,
    pub(crate) session_id_header: HeaderValue,
}

/// What a valid session grants: who it is, for the upstream headers and the verify endpoint.
/// Cloning shares the verified claims (no allocation).
#[derive(Debug, Clone)]
pub struct SessionGrant(pub(crate) Arc<VerifiedSession>);

impl SessionGrant {
    /// The session's id.
    pub fn session_id(&self) -> &str {
        &self.0.claims.session_id
    }

    /// The signed-in user.
    pub fn user_id(&self) -> &str {
        &self.0.claims.user_id
    }

    /// The passkey the session was minted with.
    pub fn passkey_id(&self) -> &str {
        &self.0.claims.passkey_id
    }

    /// When the session was issued, Unix ms.
    pub fn issued_unix_ms(&self) -> i64 {
        self.0.claims.issued_unix_ms
    }

    /// When the session expires, Unix ms.
    pub fn expires_unix_ms(&self) -> i64 {
        self.0.claims.expires_unix_ms
    }

    /// `x-keygate-user-id`'s value.
    pub(crate) fn user_id_header(&self) -> &HeaderValue {
        &self.0.user_id_header
    }

    /// `x-keygate-session-id`'s value.
    pub(crate) fn session_id_header(&self) -> &HeaderValue {
        &self.0.session_id_header
    }
}

/// The outcome of verifying one credential.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Forward the request.
    Valid(Grant),
    /// Refuse it with this code (never [`Code::Valid`]).
    Denied(Code),
}

impl Verdict {
    /// The verdict's code.
    pub fn code(&self) -> Code {
        match self {
            Verdict::Valid(_) => Code::Valid,
            Verdict::Denied(code) => *code,
        }
    }
}

/// Digits in a key id after `key_`.
const KEY_ID_DIGITS: usize = 22;
/// Length of a key id's text form.
pub const KEY_ID_TEXT_LEN: usize = 4 + KEY_ID_DIGITS;

/// `KeyId` keeps its number private; its text form is base62 of that number, so the round
/// trip through text recovers it. Only writers call this.
pub(crate) fn key_id_bits(id: KeyId) -> u128 {
    let text = id.to_string();
    base62::decode_fixed(&text.as_bytes()[4..]).unwrap_or(0)
}

/// Writes the text form `key_…` of a key id number into a stack buffer.
#[inline]
pub fn key_id_text(bits: u128) -> [u8; KEY_ID_TEXT_LEN] {
    let mut text = [0u8; KEY_ID_TEXT_LEN];
    text[..4].copy_from_slice(b"key_");
    base62::encode_fixed(bits, &mut text[4..]);
    text
}

/// Rebuilds a `KeyId` from its number without allocating.
pub fn key_id_from_bits(bits: u128) -> KeyId {
    let text = key_id_text(bits);
    // 22 base62 digits hold any u128 (62^22 > 2^128), so the text is always a valid id.
    std::str::from_utf8(&text)
        .ok()
        .and_then(|text| text.parse().ok())
        .expect("base62 digits of a u128 form a valid key id")
}
