//! The replicated state and the events that change it, as domain types.
//!
//! The control plane appends [`Event`]s to its log; gateways apply them, in revision order, to
//! their replica of [`ReplicaKey`]s. Later event kinds (passkey and session revocations, user
//! state, signing keys) join [`Change`] as new variants; the wire format keeps field numbers
//! for them.

use std::collections::BTreeMap;
use std::fmt;

use crate::{KeyHash, KeyId};

/// Position in the control plane's event log. Revisions are contiguous: every committed change
/// takes the next one, so a receiver can tell a lost event from a quiet log.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub u64);

impl Revision {
    /// "Nothing applied yet".
    pub const ZERO: Self = Self(0);

    /// The revision after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
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
}
