//! The replicated state and the events that change it, as domain types.
//!
//! The control plane appends [`Event`]s to its log; gateways apply them, in revision order, to
//! their replica of [`ReplicaKey`]s and of the session state: the [`SessionVerifyingKey`]s that
//! session tokens are checked with, and the revocation sets ([`PasskeyRevocation`],
//! [`SessionRevocation`], [`UserState`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::limits::{Holder, Identity, KeyLimits};
use crate::{KeyHash, KeyId};

/// Position in the control plane's event log. Revisions are contiguous: every committed change
/// takes the next one, so a receiver can tell a lost event from a quiet log.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub u64);

impl Revision {
    /// "Nothing applied yet".
    pub const ZERO: Self = Self(0);

    /// The revision after this one. Only for revisions the control plane assigns itself; for
    /// one that came over the wire use [`Revision::checked_next`].
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// The revision after this one, or `None` at `u64::MAX` (which a gateway then treats as
    /// a gap rather than wrapping to zero; found by fuzzing).
    pub fn checked_next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

/// The identity of one event log, made once when a store is initialised and kept by every copy
/// of it (`keygate store copy`). A gateway resumes by (log id, revision): revisions of two logs
/// with different ids are unrelated, so a gateway that sees another log id starts over from a
/// snapshot. Empty on the wire when a peer does not know it (an older control plane or gateway).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct LogId(pub String);

impl LogId {
    /// Whether the id is unknown (not reported by the peer).
    pub fn is_unknown(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogId({})", self.0)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Small string map attached to a key; returned by the verify endpoint, never forwarded.
pub type Meta = BTreeMap<String, String>;

/// What a gateway knows of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaKey {
    pub hash: KeyHash,
    pub id: KeyId,
    pub owner: String,
    pub enabled: bool,
    /// `None`: never expires.
    pub expires_unix_ms: Option<i64>,
    pub meta: Meta,
    /// Rate limits, credits, permissions and identity; empty on a plain key.
    pub limits: KeyLimits,
}

/// One committed change at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: Revision,
    pub committed_unix_ms: i64,
    pub change: Change,
}

/// What an event changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was created or changed (enabled, disabled, expiry set by a reroll).
    KeyUpserted(ReplicaKey),
    /// A key was deleted for good; carries the hash so a replica needs no id index.
    KeyDeleted { id: KeyId, hash: KeyHash },
    /// Every session minted with a passkey is revoked.
    PasskeyRevoked(PasskeyRevocation),
    /// One session is revoked.
    SessionRevoked(SessionRevocation),
    /// A user was disabled, enabled, or signed out everywhere; replaces the user's earlier state.
    UserState(UserState),
    /// A session signing key was added, retired or revoked; replaces the earlier record of
    /// that key id.
    SigningKey(SessionVerifyingKey),
    /// An identity was created or its limits changed; replaces the earlier record.
    IdentityUpserted(Identity),
    /// An identity was deleted (no key names it any more).
    IdentityDeleted { id: String },
    /// A holder's credits were refilled or set: gateways told "exhausted" may lease again.
    CreditsChanged { holder: Holder, remaining: u64 },
}

/// Sessions minted with this passkey are revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRevocation {
    pub user_id: String,
    pub passkey_id: String,
    pub revoked_unix_ms: i64,
    /// After this instant no unexpired session can match, so the entry may be forgotten.
    pub prune_after_unix_ms: i64,
}

/// One revoked session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRevocation {
    pub session_id: String,
    pub user_id: String,
    /// The session's own expiry.
    pub prune_after_unix_ms: i64,
}

/// A user's state as far as sessions care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub user_id: String,
    /// Every session of a disabled user is refused.
    pub disabled: bool,
    /// Sessions issued before this instant are revoked; 0 when none are.
    pub sessions_revoked_before_unix_ms: i64,
    /// After this instant, if the user is enabled, the entry may be forgotten.
    pub prune_after_unix_ms: i64,
}

/// A public key that session tokens are verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionVerifyingKey {
    /// The `kid` in a token's footer.
    pub key_id: String,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
    pub created_unix_ms: i64,
    /// Once retired: tokens signed with it verify until then. `None`: current. On a revoked
    /// key: until when a token it signed can be unexpired, so until when receivers keep it.
    pub verify_until_unix_ms: Option<i64>,
    /// Every token signed with it is refused (REVOKED), from the moment this is applied.
    pub revoked: bool,
    /// The longest session (expiry − issue time) a token verified with it may claim: the
    /// session lifetime the key signs with, recorded when it was made and kept when it is
    /// retired or revoked. `None` for a key made before keys recorded it (or from a control
    /// plane older than the field): only the clock-skew check applies to its tokens.
    pub max_session_lifetime_ms: Option<i64>,
}
