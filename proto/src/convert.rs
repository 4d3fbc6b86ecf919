//! Conversions between the keygate.v1 wire types and the domain types. Wire data is untrusted:
//! every conversion from the wire validates and can fail.

use crate::model::{Change, Event, ReplicaKey, Revision};
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
            None => return Err(WireError::EmptyEvent(event.revision)),
        };
        Ok(Self {
            revision: Revision(event.revision),
            committed_unix_ms: event.committed_unix_ms,
            change,
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
        }
    }

    #[test]
    fn events_round_trip_through_the_wire() {
        let key = sample_key();
        for change in [
            Change::KeyUpserted(key.clone()),
            Change::KeyDeleted {
                id: key.id,
                hash: key.hash,
            },
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
    }
}
