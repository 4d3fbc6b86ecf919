//! Random identifiers and secret tokens of the passkey side: `pk_…` passkeys, `ses_…` sessions,
//! `sk_…` signing keys, `enr_…` enrollment links (public ids, 128 random bits in 22 base62
//! digits), and enrollment tokens (secrets: 256 random bits, base64url, stored only as blake3).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_proto::base62;

/// Digits of a 128-bit number in base62.
const ID_DIGITS: usize = 22;

/// `prefix` + `_` + 22 base62 digits of a fresh random 128-bit number.
pub fn random_id(prefix: &str) -> String {
    let mut digits = [0u8; ID_DIGITS];
    base62::encode_fixed(rand::random::<u128>(), &mut digits);
    let mut id = String::with_capacity(prefix.len() + 1 + ID_DIGITS);
    id.push_str(prefix);
    id.push('_');
    id.extend(digits.iter().map(|&digit| char::from(digit)));
    id
}

/// A passkey id.
pub fn passkey_id() -> String {
    random_id("pk")
}

/// A session id.
pub fn session_id() -> String {
    random_id("ses")
}

/// A signing key id (the `kid` of session tokens).
pub fn signing_key_id() -> String {
    random_id("sk")
}

/// An enrollment link's public id (for the audit log).
pub fn enrollment_id() -> String {
    random_id("enr")
}

/// A fresh enrollment token: 256 random bits, base64url (43 characters).
pub fn enrollment_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// How an enrollment token is stored and looked up.
pub fn token_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// Whether `id` looks like an id made by [`random_id`] with `prefix` (cheap input check before
/// any lookup).
pub fn is_valid(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|digits| digits.len() == ID_DIGITS && base62::all_digits(digits.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_width() {
        let id = passkey_id();
        assert!(id.starts_with("pk_") && id.len() == 25, "{id}");
        assert!(is_valid("pk", &id));
        assert!(!is_valid("ses", &id));
        assert!(is_valid("ses", &session_id()));
        assert!(!is_valid("pk", "pk_short"));
        assert!(!is_valid("pk", "pk_000000000000000000000!"));
        assert_ne!(passkey_id(), passkey_id());
    }

    #[test]
    fn tokens_are_long_and_hashed() {
        let token = enrollment_token();
        assert_eq!(token.len(), 43);
        assert_ne!(token, enrollment_token());
        assert_eq!(token_hash(&token), token_hash(&token));
        assert_ne!(token_hash(&token), token_hash(&enrollment_token()));
    }
}
