//! The API key format: `{prefix}_{body}{crc}`.
//!
//! - `prefix`: 1–16 characters of `[A-Za-z0-9]` (default `kg`), so secret scanners can tell
//!   whose key it is;
//! - `body`: 27 random base62 digits (160.7 bits);
//! - `crc`: CRC-32 of everything before it, as 6 base62 digits, so a typo or a truncated key is
//!   rejected offline, without touching any shared state.
//!
//! Because body and checksum have fixed widths, the separator's position follows from the
//! length alone: parsing is one pass over at most 50 bytes and never searches.

use std::fmt;
use std::hash::{Hash, Hasher};

use rand::Rng;

use crate::base62;

/// Prefix used when an operator does not choose one.
pub const DEFAULT_PREFIX: &str = "kg";
/// Longest allowed prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// Base62 digits of random body.
pub const BODY_LEN: usize = 27;
/// Base62 digits of checksum.
pub const CRC_LEN: usize = 6;
/// Characters after the prefix: separator, body and checksum.
const TAIL_LEN: usize = 1 + BODY_LEN + CRC_LEN;
/// Shortest well-formed key (one-character prefix).
pub const MIN_KEY_LEN: usize = 1 + TAIL_LEN;
/// Longest well-formed key; anything longer is rejected before it is read.
pub const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + TAIL_LEN;

/// Why a string is not a well-formed key. Cheap to produce: the hot path returns it for every
/// malformed credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("key is too short")]
    TooShort,
    #[error("key is too long")]
    TooLong,
    #[error("key has no '_' after a 1-16 character prefix")]
    BadSeparator,
    #[error("key contains a character outside [A-Za-z0-9_]")]
    BadCharacter,
    #[error("key checksum does not match")]
    BadChecksum,
}

/// A validated key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Validates a prefix: 1–16 characters of `[A-Za-z0-9]`.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX_LEN
            || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(InvalidPrefix(prefix.chars().take(40).collect()));
        }
        Ok(Self(prefix.to_owned()))
    }

    /// The prefix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

/// A prefix that is empty, too long or not `[A-Za-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key prefix {0:?}: expected 1-16 characters of [A-Za-z0-9]")]
pub struct InvalidPrefix(String);

/// A syntactically valid key, borrowed from the request. Holding one proves the checksum
/// matched; it says nothing about whether the key exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ApiKey<'a> {
    text: &'a str,
}

impl<'a> ApiKey<'a> {
    /// Checks length, separator, alphabet and checksum.
    #[inline]
    pub fn parse(text: &'a str) -> Result<Self, KeyFormatError> {
        let bytes = text.as_bytes();
        let len = bytes.len();
        if len < MIN_KEY_LEN {
            return Err(KeyFormatError::TooShort);
        }
        if len > MAX_KEY_LEN {
            return Err(KeyFormatError::TooLong);
        }
        let separator = len - TAIL_LEN;
        if bytes[separator] != b'_' {
            return Err(KeyFormatError::BadSeparator);
        }
        // Prefix, body and checksum all draw from [A-Za-z0-9], i.e. the base62 digits.
        if !base62::all_digits(&bytes[..separator]) || !base62::all_digits(&bytes[separator + 1..])
        {
            return Err(KeyFormatError::BadCharacter);
        }
        let (signed, crc_digits) = bytes.split_at(len - CRC_LEN);
        // Six digits checked above: at most 62^6 - 1, no overflow in u64.
        if base62::decode_short(crc_digits) != u64::from(crc32fast::hash(signed)) {
            return Err(KeyFormatError::BadChecksum);
        }
        Ok(Self { text })
    }

    /// Generates a fresh key with `prefix` from the operating system's CSPRNG.
    pub fn generate(prefix: &KeyPrefix) -> String {
        let mut rng = rand::rng();
        let mut key = String::with_capacity(prefix.0.len() + TAIL_LEN);
        key.push_str(&prefix.0);
        key.push('_');
        for _ in 0..BODY_LEN {
            key.push(char::from(base62::ALPHABET[rng.random_range(0..62)]));
        }
        let mut crc = [0u8; CRC_LEN];
        base62::encode_fixed(u128::from(crc32fast::hash(key.as_bytes())), &mut crc);
        key.extend(crc.iter().map(|&b| char::from(b)));
        key
    }

    /// The whole key.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The prefix, without the separator.
    pub fn prefix(&self) -> &'a str {
        &self.text[..self.text.len() - TAIL_LEN]
    }

    /// What records show of a key: the prefix, the separator and the first 4 body characters.
    pub fn start(&self) -> &'a str {
        &self.text[..self.text.len() - TAIL_LEN + 1 + 4]
    }

    /// The only form in which a key is stored or replicated.
    #[inline]
    pub fn hash(&self) -> KeyHash {
        KeyHash(*blake3::hash(self.text.as_bytes()).as_bytes())
    }
}

impl fmt::Debug for ApiKey<'_> {
    /// Shows only the displayable start, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.start())
    }
}

/// `blake3(full key)`: how keys are stored at rest and looked up in the replica.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Reads a hash from wire or storage bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes as a number: already uniformly distributed, so hash tables keyed by
    /// `KeyHash` need no hashing of their own.
    #[inline]
    pub fn short(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(first)
    }
}

impl Hash for KeyHash {
    /// Feeds only [`KeyHash::short`]: the bytes are a cryptographic hash already.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.short());
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_have_the_contract_shape() {
        let prefix = KeyPrefix::new("acme").expect("valid prefix");
        for _ in 0..200 {
            let key = ApiKey::generate(&prefix);
            let parsed = ApiKey::parse(&key).expect("generated key parses");
            assert_eq!(parsed.prefix(), "acme");
            assert_eq!(key.len(), 4 + 1 + BODY_LEN + CRC_LEN);
            assert!(parsed.start().starts_with("acme_"));
            assert_eq!(parsed.start().len(), 4 + 1 + 4);
        }
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let key = ApiKey::generate(&KeyPrefix::default());
        for position in 3..key.len() {
            let mut bytes = key.clone().into_bytes();
            bytes[position] = if bytes[position] == b'a' { b'b' } else { b'a' };
            let mutated = String::from_utf8(bytes).expect("ascii");
            assert_eq!(
                ApiKey::parse(&mutated),
                Err(KeyFormatError::BadChecksum),
                "mutation at {position} accepted"
            );
        }
    }

    #[test]
    fn rejects_malformed_shapes() {
        let key = ApiKey::generate(&KeyPrefix::default());
        assert_eq!(ApiKey::parse(""), Err(KeyFormatError::TooShort));
        assert_eq!(
            ApiKey::parse(&key[..MIN_KEY_LEN - 1]),
            Err(KeyFormatError::TooShort)
        );
        // One character short shifts where the separator must be.
        assert_eq!(
            ApiKey::parse(&key[..key.len() - 1]),
            Err(KeyFormatError::BadSeparator)
        );
        let long = format!("{}{}", "a".repeat(40), &key[2..]);
        assert_eq!(ApiKey::parse(&long), Err(KeyFormatError::TooLong));
        let no_sep = key.replace('_', "x");
        assert_eq!(ApiKey::parse(&no_sep), Err(KeyFormatError::BadSeparator));
        let bad_char = format!("k-{}", &key[2..]);
        assert_eq!(ApiKey::parse(&bad_char), Err(KeyFormatError::BadCharacter));
        let unicode = format!("ké{}", &key[3..]);
        assert!(ApiKey::parse(&unicode).is_err());
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(KeyPrefix::new("kg").is_ok());
        assert!(KeyPrefix::new("A1b2C3d4E5f6G7h8").is_ok());
        assert!(KeyPrefix::new("").is_err());
        assert!(KeyPrefix::new("seventeen_chars__").is_err());
        assert!(KeyPrefix::new("has_underscore").is_err());
    }

    #[test]
    fn hash_is_blake3_of_the_whole_key_and_debug_hides_the_secret() {
        let key = ApiKey::generate(&KeyPrefix::default());
        let parsed = ApiKey::parse(&key).expect("parses");
        assert_eq!(parsed.hash().0, *blake3::hash(key.as_bytes()).as_bytes());
        assert!(!format!("{parsed:?}").contains(&key[8..]));
    }
}
