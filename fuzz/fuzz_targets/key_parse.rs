//! `ApiKey::parse` on arbitrary text, and the gateway's key hot path (`Verifier::verify_cached`)
//! on the same text.
//!
//! Random bytes almost never carry a matching CRC-32, so each input is tried twice: as it is,
//! and with its last six characters replaced by the checksum of the rest ("repaired"). The
//! repaired form reaches everything after the checksum check.
//!
//! Properties: never a panic; the error names the first rule broken, in parse order; a key that
//! parses has the documented shape, re-parses to itself, hashes to `blake3(text)`, hides its
//! secret in `Debug`, and stops parsing when any one character is changed; a well-formed key
//! the replica does not hold is a miss, never a verdict, and one it holds is valid.

#![no_main]

use std::sync::{Arc, LazyLock};

use keygate_proto::key::{BODY_LEN, CRC_LEN, MAX_KEY_LEN, MIN_KEY_LEN};
use keygate_proto::{ApiKey, Event, KeyFormatError, KeyHash, KeyId, KeyPrefix, ReplicaKey};
use keygate_proto::{Change, Meta, Revision, base62};
use keygate_proxy::{Code, Lookup, Replica, Verdict, Verifier};
use libfuzzer_sys::fuzz_target;

/// A key the replica holds, so the valid path is reached when the input is (or repairs to) it.
const HELD: &str = "kg_4Q2mWcT9bX7nR1vYp3sLk8dFh6j000000";

const NOW: i64 = 1_800_000_000_000;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let replica = Arc::new(Replica::new());
    let held = ApiKey::parse(&repaired(HELD).expect("HELD has the key shape"))
        .expect("a repaired key parses")
        .hash();
    replica
        .apply(&Event {
            revision: Revision(1),
            committed_unix_ms: 0,
            change: Change::KeyUpserted(ReplicaKey {
                hash: held,
                id: KeyId::generate(),
                owner: "fuzz".to_owned(),
                enabled: true,
                expires_unix_ms: None,
                meta: Meta::new(),
            }),
        })
        .expect("revision 1 follows 0");
    Verifier::new(replica)
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    if let Some(fixed) = repaired(&text) {
        check(&fixed);
        assert!(
            ApiKey::parse(&fixed).is_ok(),
            "a key with a recomputed checksum must parse: {fixed:?}"
        );
    }
});

/// `text` with its checksum recomputed, when length, separator and alphabet already fit.
fn repaired(text: &str) -> Option<String> {
    let len = text.len();
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&len) || !text.is_ascii() {
        return None;
    }
    let bytes = text.as_bytes();
    let separator = len - (1 + BODY_LEN + CRC_LEN);
    if bytes[separator] != b'_'
        || !base62::all_digits(&bytes[..separator])
        || !base62::all_digits(&bytes[separator + 1..])
    {
        return None;
    }
    let signed = &text[..len - CRC_LEN];
    let mut crc = [0u8; CRC_LEN];
    base62::encode_fixed(u128::from(crc32fast::hash(signed.as_bytes())), &mut crc);
    Some(format!("{signed}{}", std::str::from_utf8(&crc).ok()?))
}

fn check(text: &str) {
    let parsed = ApiKey::parse(text);
    match parsed {
        Ok(key) => valid_key(text, key),
        Err(error) => {
            // The first rule broken, in the order `parse` checks them.
            let len = text.len();
            let expected = if len < MIN_KEY_LEN {
                Some(KeyFormatError::TooShort)
            } else if len > MAX_KEY_LEN {
                Some(KeyFormatError::TooLong)
            } else if text.as_bytes()[len - (1 + BODY_LEN + CRC_LEN)] != b'_' {
                Some(KeyFormatError::BadSeparator)
            } else if repaired(text).is_some() {
                // Shape and alphabet fit: only the checksum can be wrong.
                Some(KeyFormatError::BadChecksum)
            } else {
                Some(KeyFormatError::BadCharacter)
            };
            assert_eq!(Some(error), expected, "{text:?}");
        }
    }
    // The gateway's hot path: a malformed key is MALFORMED without touching the replica; a
    // well-formed one is valid when held, a miss otherwise (no control plane here).
    let lookup = VERIFIER.verify_cached(text, NOW);
    match (parsed, &lookup) {
        (Err(_), Lookup::Done(Verdict::Denied(Code::Malformed))) => {}
        (Ok(key), Lookup::Miss(hash)) => assert_eq!(*hash, key.hash()),
        (Ok(_), Lookup::Done(Verdict::Valid(_))) => {}
        (parsed, lookup) => panic!("{text:?}: parse {parsed:?} but lookup {lookup:?}"),
    }
}

fn valid_key(text: &str, key: ApiKey<'_>) {
    assert_eq!(key.as_str(), text);
    assert_eq!(ApiKey::parse(key.as_str()), Ok(key), "re-parse");
    let prefix = key.prefix();
    assert!(KeyPrefix::new(prefix).is_ok(), "prefix {prefix:?}");
    assert_eq!(text.len(), prefix.len() + 1 + BODY_LEN + CRC_LEN);
    assert_eq!(&text[prefix.len()..=prefix.len()], "_");
    assert!(text.starts_with(key.start()));
    assert_eq!(key.start().len(), prefix.len() + 1 + 4);

    // The hash is blake3 of the whole key, and survives the wire form.
    let hash = key.hash();
    assert_eq!(hash.as_bytes(), blake3::hash(text.as_bytes()).as_bytes());
    assert_eq!(KeyHash::from_slice(hash.as_bytes()), Some(hash));
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    assert_eq!(hash.short(), u64::from_le_bytes(first));

    // Debug shows the start only.
    let debug = format!("{key:?}");
    assert!(!debug.contains(&text[key.start().len()..]), "{debug}");

    // A fresh key with the same prefix has the same shape.
    let prefix = KeyPrefix::new(prefix).expect("checked above");
    let fresh = ApiKey::generate(&prefix);
    assert_eq!(
        ApiKey::parse(&fresh).map(|k| k.prefix()),
        Ok(prefix.as_str())
    );

    // Any single-character change within the alphabet is caught (CRC-32 detects every error
    // burst of up to 32 bits).
    let bytes = text.as_bytes();
    for position in (0..bytes.len()).filter(|&p| bytes[p] != b'_') {
        let mut mutated = bytes.to_vec();
        mutated[position] = if bytes[position] == b'a' { b'b' } else { b'a' };
        let mutated = String::from_utf8(mutated).expect("ascii");
        assert!(
            ApiKey::parse(&mutated).is_err(),
            "mutation at {position} of {text:?} accepted"
        );
    }
}
