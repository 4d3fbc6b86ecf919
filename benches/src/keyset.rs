//! Deterministic synthetic key sets: the same seed gives the same plaintexts, ids and owners on
//! every run, so the synthetic control plane, the key files handed to the load generator and to
//! nginx/HAProxy, and the micro-benchmarks all agree without passing a million keys around.
//!
//! Keys have exactly the contract's format (`kg_` + 27 base62 digits + 6-digit CRC-32), drawn
//! from a seeded generator instead of the operating system's CSPRNG. Each key is valid, disabled
//! or expired with the configured shares; "unknown" keys are well-formed keys that are not in the
//! set (what a revoked or deleted key looks like to a gateway).

use keygate_proto::base62;
use keygate_proto::key::{BODY_LEN, CRC_LEN, DEFAULT_PREFIX};
use keygate_proto::{ApiKey, KeyId, Meta, ReplicaKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Expiry given to expired keys: 2020-09-13, long past.
pub const EXPIRED_AT_UNIX_MS: i64 = 1_600_000_000_000;

/// Mixed into the seed of the unknown keys, so they never collide with the set's own stream.
const UNKNOWN_STREAM: u64 = 0x756e_6b6e_6f77_6e21;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct KeySetSpec {
    /// Keys in the set.
    pub keys: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// Share of disabled keys, 0..=1.
    pub disabled_share: f64,
    /// Share of expired keys, 0..=1.
    pub expired_share: f64,
    /// Distinct owners the keys are spread over (at least 1).
    pub owners: usize,
}

impl KeySetSpec {
    /// `keys` keys with the harness's usual shares: 2 % disabled, 1 % expired, ten keys per
    /// owner.
    pub fn standard(keys: usize, seed: u64) -> Self {
        Self {
            keys,
            seed,
            disabled_share: 0.02,
            expired_share: 0.01,
            owners: (keys / 10).max(1),
        }
    }
}

/// The state a synthetic key has in the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Enabled, never expires.
    Valid,
    /// Exists but is disabled (403 DISABLED).
    Disabled,
    /// Exists but expired at [`EXPIRED_AT_UNIX_MS`] (401 EXPIRED).
    Expired,
}

/// One generated key: the plaintext a client sends and the record a gateway replicates.
#[derive(Debug, Clone)]
pub struct SyntheticKey {
    pub plaintext: String,
    pub kind: KeyKind,
    pub record: ReplicaKey,
}

/// The keys of a [`KeySetSpec`], generated one at a time (a 10M-key set never has to exist as a
/// whole).
pub struct KeyStream {
    spec: KeySetSpec,
    rng: StdRng,
    left: usize,
}

impl KeyStream {
    pub fn new(spec: KeySetSpec) -> Self {
        Self {
            spec,
            rng: StdRng::seed_from_u64(spec.seed),
            left: spec.keys,
        }
    }
}

impl Iterator for KeyStream {
    type Item = SyntheticKey;

    fn next(&mut self) -> Option<SyntheticKey> {
        self.left = self.left.checked_sub(1)?;
        let plaintext = plaintext_key(&mut self.rng);
        let roll: f64 = self.rng.random();
        let kind = if roll < self.spec.disabled_share {
            KeyKind::Disabled
        } else if roll < self.spec.disabled_share + self.spec.expired_share {
            KeyKind::Expired
        } else {
            KeyKind::Valid
        };
        let owner = self.rng.random_range(0..self.spec.owners.max(1));
        let id = key_id(self.rng.random());
        let hash = ApiKey::parse(&plaintext)
            .expect("synthetic keys have the contract's format")
            .hash();
        let record = ReplicaKey {
            hash,
            id,
            owner: format!("owner-{owner:07}"),
            enabled: kind != KeyKind::Disabled,
            expires_unix_ms: (kind == KeyKind::Expired).then_some(EXPIRED_AT_UNIX_MS),
            meta: Meta::new(),
            limits: Default::default(),
        };
        Some(SyntheticKey {
            plaintext,
            kind,
            record,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// A well-formed key drawn from `rng`: `kg_`, 27 base62 digits, the CRC-32 as 6 digits.
pub fn plaintext_key(rng: &mut impl Rng) -> String {
    let mut key = String::with_capacity(DEFAULT_PREFIX.len() + 1 + BODY_LEN + CRC_LEN);
    key.push_str(DEFAULT_PREFIX);
    key.push('_');
    for _ in 0..BODY_LEN {
        key.push(char::from(base62::ALPHABET[rng.random_range(0..62)]));
    }
    let mut crc = [0u8; CRC_LEN];
    base62::encode_fixed(u128::from(crc32fast::hash(key.as_bytes())), &mut crc);
    key.extend(crc.iter().map(|&digit| char::from(digit)));
    key
}

/// `count` well-formed keys that are not in the set of `seed` (revoked, deleted or never
/// created, as far as a gateway can tell).
pub fn unknown_keys(seed: u64, count: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed ^ UNKNOWN_STREAM);
    (0..count).map(|_| plaintext_key(&mut rng)).collect()
}

/// How a malformed key is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformation {
    /// Right shape, last checksum digit changed: the CRC has to be computed to reject it.
    WrongChecksum,
    /// One character short: rejected on length alone.
    Truncated,
    /// A character outside the alphabet in the body.
    BadCharacter,
}

/// `key` broken in the way `how` says.
pub fn malformed(key: &str, how: Malformation) -> String {
    let mut bytes = key.as_bytes().to_vec();
    match how {
        Malformation::WrongChecksum => {
            if let Some(last) = bytes.last_mut() {
                *last = if *last == b'A' { b'B' } else { b'A' };
            }
        }
        Malformation::Truncated => {
            bytes.pop();
        }
        Malformation::BadCharacter => {
            if let Some(byte) = bytes.get_mut(DEFAULT_PREFIX.len() + 3) {
                *byte = b'-';
            }
        }
    }
    String::from_utf8(bytes).unwrap_or_default()
}

/// A key id from a random number (ids are `key_` + 22 base62 digits of a `u128`).
fn key_id(bits: u128) -> KeyId {
    let mut digits = [0u8; 22];
    base62::encode_fixed(bits, &mut digits);
    let text = format!("key_{}", String::from_utf8_lossy(&digits));
    text.parse()
        .expect("22 base62 digits of a u128 form a valid key id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_proto::KeyFormatError;

    #[test]
    fn keys_parse_and_the_stream_is_deterministic() {
        let spec = KeySetSpec::standard(500, 7);
        let first: Vec<SyntheticKey> = KeyStream::new(spec).collect();
        let again: Vec<SyntheticKey> = KeyStream::new(spec).collect();
        assert_eq!(first.len(), 500);
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(a.plaintext, b.plaintext);
            assert_eq!(a.record, b.record);
            let parsed = ApiKey::parse(&a.plaintext).expect("parses");
            assert_eq!(parsed.hash(), a.record.hash);
        }
        let disabled = first
            .iter()
            .filter(|key| key.kind == KeyKind::Disabled)
            .count();
        assert!(disabled > 0 && disabled < 50, "{disabled} disabled of 500");
    }

    #[test]
    fn unknown_keys_are_well_formed_and_not_in_the_set() {
        let set: Vec<String> = KeyStream::new(KeySetSpec::standard(200, 3))
            .map(|key| key.plaintext)
            .collect();
        for key in unknown_keys(3, 50) {
            assert!(ApiKey::parse(&key).is_ok());
            assert!(!set.contains(&key));
        }
    }

    #[test]
    fn malformed_keys_are_rejected_for_the_intended_reason() {
        let key = unknown_keys(1, 1).remove(0);
        assert_eq!(
            ApiKey::parse(&malformed(&key, Malformation::WrongChecksum)),
            Err(KeyFormatError::BadChecksum)
        );
        assert!(ApiKey::parse(&malformed(&key, Malformation::Truncated)).is_err());
        assert_eq!(
            ApiKey::parse(&malformed(&key, Malformation::BadCharacter)),
            Err(KeyFormatError::BadCharacter)
        );
    }
}
