//! Identifiers: `key_` followed by 22 base62 digits of a random 128-bit number. Held as the
//! number itself, so a replica entry spends 16 bytes on its id instead of a heap string.

use std::fmt;
use std::str::FromStr;

use crate::base62;

const KEY_ID_PREFIX: &str = "key_";
const KEY_ID_DIGITS: usize = 22;

/// The public identifier of an API key (not a secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u128);

impl KeyId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; KEY_ID_DIGITS];
        base62::encode_fixed(self.0, &mut digits);
        f.write_str(KEY_ID_PREFIX)?;
        // Base62 digits are ASCII.
        f.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not `key_` followed by 22 base62 digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key id {0:?}: expected key_ followed by 22 characters of [A-Za-z0-9]")]
pub struct InvalidKeyId(String);

impl FromStr for KeyId {
    type Err = InvalidKeyId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidKeyId(text.chars().take(40).collect());
        let digits = text.strip_prefix(KEY_ID_PREFIX).ok_or_else(invalid)?;
        if digits.len() != KEY_ID_DIGITS {
            return Err(invalid());
        }
        base62::decode_fixed(digits.as_bytes())
            .map(Self)
            .ok_or_else(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for _ in 0..100 {
            let id = KeyId::generate();
            let text = id.to_string();
            assert_eq!(text.len(), 26);
            assert_eq!(text.parse::<KeyId>(), Ok(id));
        }
        assert_eq!(KeyId(0).to_string(), "key_0000000000000000000000");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "key_",
            "kex_0000000000000000000000",
            "key_000000000000000000000!",
            "key_zzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad} accepted");
        }
    }
}
