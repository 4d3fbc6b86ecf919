//! Conversions between the keygate.v1 wire types and the domain types. Wire data is untrusted:
//! every conversion from the wire validates and can fail.

use crate::limits::{Holder, Identity, KeyLimits, LimitError, RateLimit, check_ratelimits};
use crate::model::{
    Change, Event, PasskeyRevocation, ReplicaKey, Revision, SessionRevocation, SessionVerifyingKey,
    UserState,
};
use crate::{KeyHash, KeyId, pb};

/// A wire message that does not describe a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("key hash must be 32 bytes, got {0}")]
    KeyHashLength(usize),
    #[error(transparent)]
    KeyId(#[from] crate::ids::InvalidKeyId),
    #[error("event {0} has no kind")]
    EmptyEvent(u64),
    #[error("session public key must be 32 bytes, got {0}")]
    PublicKeyLength(usize),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

fn required(value: String, what: &'static str) -> Result<String, WireError> {
    if value.is_empty() {
        Err(WireError::Empty(what))
    } else {
        Ok(value)
    }
}

fn key_hash(bytes: &[u8]) -> Result<KeyHash, WireError> {
    KeyHash::from_slice(bytes).ok_or(WireError::KeyHashLength(bytes.len()))
}

impl From<&ReplicaKey> for pb::ReplicaKey {
    fn from(key: &ReplicaKey) -> Self {
        Self {
            key_hash: key.hash.0.to_vec(),
            key_id: key.id.to_string(),
            owner: key.owner.clone(),
            enabled: key.enabled,
            expires_unix_ms: key.expires_unix_ms,
            meta: key
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ratelimits: key.limits.ratelimits.iter().map(Into::into).collect(),
            credits: key.limits.credits,
            permissions: key.limits.permissions.clone(),
            identity: key.limits.identity.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::ReplicaKey> for ReplicaKey {
    type Error = WireError;

    fn try_from(key: pb::ReplicaKey) -> Result<Self, Self::Error> {
        Ok(Self {
            hash: key_hash(&key.key_hash)?,
            id: key.key_id.parse::<KeyId>()?,
            owner: key.owner,
            enabled: key.enabled,
            expires_unix_ms: key.expires_unix_ms,
            meta: key.meta.into_iter().collect(),
            limits: KeyLimits {
                ratelimits: ratelimits(key.ratelimits)?,
                credits: key.credits,
                permissions: key.permissions,
                identity: (!key.identity.is_empty()).then_some(key.identity),
            }
            .validated()?,
        })
    }
}

impl From<&RateLimit> for pb::RateLimit {
    fn from(limit: &RateLimit) -> Self {
        Self {
            name: limit.name.clone(),
            limit: limit.limit,
            window_ms: limit.window_ms,
        }
    }
}

/// Rate limits from the wire, each checked and names unique.
pub fn ratelimits(wire: Vec<pb::RateLimit>) -> Result<Vec<RateLimit>, LimitError> {
    let limits: Vec<RateLimit> = wire
        .into_iter()
        .map(|limit| RateLimit {
            name: limit.name,
            limit: limit.limit,
            window_ms: limit.window_ms,
        })
        .collect();
    check_ratelimits(&limits)?;
    Ok(limits)
}

impl From<&Identity> for pb::Identity {
    fn from(identity: &Identity) -> Self {
        Self {
            identity_id: identity.id.clone(),
            ratelimits: identity.ratelimits.iter().map(Into::into).collect(),
            credits: identity.credits,
        }
    }
}

impl TryFrom<pb::Identity> for Identity {
    type Error = WireError;

    fn try_from(identity: pb::Identity) -> Result<Self, Self::Error> {
        crate::limits::check_identity_id(&identity.identity_id)?;
        Ok(Self {
            id: identity.identity_id,
            ratelimits: ratelimits(identity.ratelimits)?,
            credits: identity.credits,
        })
    }
}

impl From<&Event> for pb::Event {
    fn from(event: &Event) -> Self {
        let kind = match &event.change {
            Change::KeyUpserted(key) => pb::event::Kind::KeyUpserted(key.into()),
            Change::KeyDeleted { id, hash } => pb::event::Kind::KeyDeleted(pb::KeyDeleted {
                key_id: id.to_string(),
                key_hash: hash.0.to_vec(),
            }),
            Change::PasskeyRevoked(revoked) => pb::event::Kind::PasskeyRevoked(revoked.into()),
            Change::SessionRevoked(revoked) => pb::event::Kind::SessionRevoked(revoked.into()),
            Change::UserState(user) => pb::event::Kind::UserState(user.into()),
            Change::SigningKey(key) => pb::event::Kind::SigningKey(key.into()),
            Change::IdentityUpserted(identity) => {
                pb::event::Kind::IdentityUpserted(identity.into())
            }
            Change::IdentityDeleted { id } => {
                pb::event::Kind::IdentityDeleted(pb::IdentityDeleted {
                    identity_id: id.clone(),
                })
            }
            Change::CreditsChanged { holder, remaining } => {
                pb::event::Kind::CreditsChanged(pb::CreditsChanged {
                    holder: holder.to_string(),
                    remaining: *remaining,
                })
            }
        };
        Self {
            revision: event.revision.0,
            committed_unix_ms: event.committed_unix_ms,
            kind: Some(kind),
        }
    }
}

impl TryFrom<pb::Event> for Event {
    type Error = WireError;

    fn try_from(event: pb::Event) -> Result<Self, Self::Error> {
        let change = match event.kind {
            Some(pb::event::Kind::KeyUpserted(key)) => Change::KeyUpserted(key.try_into()?),
            Some(pb::event::Kind::KeyDeleted(deleted)) => Change::KeyDeleted {
                id: deleted.key_id.parse()?,
                hash: key_hash(&deleted.key_hash)?,
            },
            Some(pb::event::Kind::PasskeyRevoked(revoked)) => {
                Change::PasskeyRevoked(revoked.try_into()?)
            }
            Some(pb::event::Kind::SessionRevoked(revoked)) => {
                Change::SessionRevoked(revoked.try_into()?)
            }
            Some(pb::event::Kind::UserState(user)) => Change::UserState(user.try_into()?),
            Some(pb::event::Kind::SigningKey(key)) => Change::SigningKey(key.try_into()?),
            Some(pb::event::Kind::IdentityUpserted(identity)) => {
                Change::IdentityUpserted(identity.try_into()?)
            }
            Some(pb::event::Kind::IdentityDeleted(deleted)) => {
                crate::limits::check_identity_id(&deleted.identity_id)?;
                Change::IdentityDeleted {
                    id: deleted.identity_id,
                }
            }
            Some(pb::event::Kind::CreditsChanged(changed)) => Change::CreditsChanged {
                holder: changed.holder.parse::<Holder>()?,
                remaining: changed.remaining,
            },
            None => return Err(WireError::EmptyEvent(event.revision)),
        };
        Ok(Self {
            revision: Revision(event.revision),
            committed_unix_ms: event.committed_unix_ms,
            change,
        })
    }
}

/// Decodes an event as the SQLite store wrote it before it had an encoding of its own (the
/// control plane's `store/event_codec.rs`): a prost-encoded `keygate.v1.Event`. It exists only
/// so that the store's migration can convert those rows once, without the store seeing a prost
/// type; nothing writes this format any more. `None` when the bytes are not a valid event.
pub fn event_from_legacy_bytes(bytes: &[u8]) -> Option<Event> {
    let wire = <pb::Event as prost::Message>::decode(bytes).ok()?;
    Event::try_from(wire).ok()
}

impl From<&PasskeyRevocation> for pb::PasskeyRevoked {
    fn from(revoked: &PasskeyRevocation) -> Self {
        Self {
            user_id: revoked.user_id.clone(),
            passkey_id: revoked.passkey_id.clone(),
            revoked_unix_ms: revoked.revoked_unix_ms,
            prune_after_unix_ms: revoked.prune_after_unix_ms,
        }
    }
}

impl TryFrom<pb::PasskeyRevoked> for PasskeyRevocation {
    type Error = WireError;

    fn try_from(revoked: pb::PasskeyRevoked) -> Result<Self, Self::Error> {
        Ok(Self {
            user_id: required(revoked.user_id, "PasskeyRevoked.user_id")?,
            passkey_id: required(revoked.passkey_id, "PasskeyRevoked.passkey_id")?,
            revoked_unix_ms: revoked.revoked_unix_ms,
            prune_after_unix_ms: revoked.prune_after_unix_ms,
        })
    }
}

impl From<&SessionRevocation> for pb::SessionRevoked {
    fn from(revoked: &SessionRevocation) -> Self {
        Self {
            session_id: revoked.session_id.clone(),
            user_id: revoked.user_id.clone(),
            prune_after_unix_ms: revoked.prune_after_unix_ms,
        }
    }
}

impl TryFrom<pb::SessionRevoked> for SessionRevocation {
    type Error = WireError;

    fn try_from(revoked: pb::SessionRevoked) -> Result<Self, Self::Error> {
        Ok(Self {
            session_id: required(revoked.session_id, "SessionRevoked.session_id")?,
            user_id: revoked.user_id,
            prune_after_unix_ms: revoked.prune_after_unix_ms,
        })
    }
}

impl From<&UserState> for pb::UserState {
    fn from(user: &UserState) -> Self {
        Self {
            user_id: user.user_id.clone(),
            disabled: user.disabled,
            sessions_revoked_before_unix_ms: user.sessions_revoked_before_unix_ms,
            prune_after_unix_ms: user.prune_after_unix_ms,
        }
    }
}

impl TryFrom<pb::UserState> for UserState {
    type Error = WireError;

    fn try_from(user: pb::UserState) -> Result<Self, Self::Error> {
        Ok(Self {
            user_id: required(user.user_id, "UserState.user_id")?,
            disabled: user.disabled,
            sessions_revoked_before_unix_ms: user.sessions_revoked_before_unix_ms,
            prune_after_unix_ms: user.prune_after_unix_ms,
        })
    }
}

impl From<&SessionVerifyingKey> for pb::SigningKey {
    fn from(key: &SessionVerifyingKey) -> Self {
        Self {
            key_id: key.key_id.clone(),
            public_key: key.public_key.to_vec(),
            created_unix_ms: key.created_unix_ms,
            verify_until_unix_ms: key.verify_until_unix_ms,
            revoked: key.revoked,
            max_session_lifetime_ms: key.max_session_lifetime_ms,
        }
    }
}

impl TryFrom<pb::SigningKey> for SessionVerifyingKey {
    type Error = WireError;

    fn try_from(key: pb::SigningKey) -> Result<Self, Self::Error> {
        let public_key = <[u8; 32]>::try_from(key.public_key.as_slice())
            .map_err(|_| WireError::PublicKeyLength(key.public_key.len()))?;
        Ok(Self {
            key_id: required(key.key_id, "SigningKey.key_id")?,
            public_key,
            created_unix_ms: key.created_unix_ms,
            verify_until_unix_ms: key.verify_until_unix_ms,
            revoked: key.revoked,
            max_session_lifetime_ms: key.max_session_lifetime_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiKey, KeyPrefix, Meta};

    fn sample_key() -> ReplicaKey {
        let plaintext = ApiKey::generate(&KeyPrefix::default());
        let parsed = ApiKey::parse(&plaintext).expect("parses");
        ReplicaKey {
            hash: parsed.hash(),
            id: KeyId::generate(),
            owner: "alice".into(),
            enabled: true,
            expires_unix_ms: Some(1_900_000_000_000),
            meta: Meta::from([("plan".to_owned(), "pro".to_owned())]),
            limits: KeyLimits::default(),
        }
    }

    fn limited_key() -> ReplicaKey {
        ReplicaKey {
            limits: KeyLimits {
                ratelimits: vec!["requests=100/1s".parse().expect("valid")],
                credits: true,
                permissions: vec!["orders.read".into(), "orders.write".into()],
                identity: Some("acme".into()),
            },
            ..sample_key()
        }
    }

    #[test]
    fn events_round_trip_through_the_wire() {
        let key = sample_key();
        for change in [
            Change::KeyUpserted(key.clone()),
            Change::KeyUpserted(limited_key()),
            Change::IdentityUpserted(Identity {
                id: "acme".into(),
                ratelimits: vec!["tokens=10000/1m".parse().expect("valid")],
                credits: true,
            }),
            Change::IdentityDeleted { id: "acme".into() },
            Change::CreditsChanged {
                holder: Holder::Key(key.id),
                remaining: 17,
            },
            Change::KeyDeleted {
                id: key.id,
                hash: key.hash,
            },
            Change::PasskeyRevoked(PasskeyRevocation {
                user_id: "u1".into(),
                passkey_id: "pk_1".into(),
                revoked_unix_ms: 5,
                prune_after_unix_ms: 6,
            }),
            Change::SessionRevoked(SessionRevocation {
                session_id: "ses_1".into(),
                user_id: "u1".into(),
                prune_after_unix_ms: 9,
            }),
            Change::UserState(UserState {
                user_id: "u1".into(),
                disabled: true,
                sessions_revoked_before_unix_ms: 3,
                prune_after_unix_ms: 4,
            }),
            Change::SigningKey(SessionVerifyingKey {
                key_id: "sk_1".into(),
                public_key: [7; 32],
                created_unix_ms: 1,
                verify_until_unix_ms: Some(2),
                revoked: true,
                max_session_lifetime_ms: Some(3),
            }),
        ] {
            let event = Event {
                revision: Revision(7),
                committed_unix_ms: 42,
                change,
            };
            let wire = pb::Event::from(&event);
            assert_eq!(Event::try_from(wire), Ok(event));
        }
    }

    #[test]
    fn legacy_bytes_decode_to_the_event_they_encoded() {
        let event = Event {
            revision: Revision(4),
            committed_unix_ms: 9,
            change: Change::UserState(UserState {
                user_id: "u1".into(),
                disabled: true,
                sessions_revoked_before_unix_ms: 3,
                prune_after_unix_ms: 4,
            }),
        };
        let bytes = prost::Message::encode_to_vec(&pb::Event::from(&event));
        assert_eq!(event_from_legacy_bytes(&bytes), Some(event));
        assert_eq!(event_from_legacy_bytes(&[0xff, 0xff, 0xff]), None);
        assert_eq!(event_from_legacy_bytes(&[]), None, "an event with no kind");
    }

    #[test]
    fn malformed_wire_events_are_rejected() {
        let mut wire = pb::Event::from(&Event {
            revision: Revision(1),
            committed_unix_ms: 0,
            change: Change::KeyUpserted(sample_key()),
        });
        if let Some(pb::event::Kind::KeyUpserted(key)) = wire.kind.as_mut() {
            key.key_hash.truncate(5);
        }
        assert_eq!(Event::try_from(wire), Err(WireError::KeyHashLength(5)));
        let empty = pb::Event {
            revision: 3,
            committed_unix_ms: 0,
            kind: None,
        };
        assert_eq!(Event::try_from(empty), Err(WireError::EmptyEvent(3)));
        // Limits from the wire are checked like an operator's: a zero limit, a permission
        // with a space and an unknown holder are refused, not applied.
        let limited = pb::Event::from(&Event {
            revision: Revision(4),
            committed_unix_ms: 0,
            change: Change::KeyUpserted(limited_key()),
        });
        let mut zero = limited.clone();
        if let Some(pb::event::Kind::KeyUpserted(key)) = zero.kind.as_mut() {
            key.ratelimits[0].limit = 0;
        }
        assert!(matches!(Event::try_from(zero), Err(WireError::Limit(_))));
        let mut spaced = limited;
        if let Some(pb::event::Kind::KeyUpserted(key)) = spaced.kind.as_mut() {
            key.permissions.push("orders delete".into());
        }
        assert!(matches!(Event::try_from(spaced), Err(WireError::Limit(_))));
        let stranger = pb::Event {
            revision: 5,
            committed_unix_ms: 0,
            kind: Some(pb::event::Kind::CreditsChanged(pb::CreditsChanged {
                holder: "user:u1".into(),
                remaining: 1,
            })),
        };
        assert!(matches!(
            Event::try_from(stranger),
            Err(WireError::Limit(_))
        ));
    }
}
