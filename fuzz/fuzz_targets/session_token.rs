//! Session tokens: `keygate_proto::session::parse` and `UnverifiedToken::verify`, and the
//! gateway's session hot path (`Verifier::verify_session`, signature cache included).
//!
//! The first input byte picks how the token is made from the rest:
//! - `0`: the rest is the token text;
//! - `1`, `2`: the rest is the claims message, signed here (the PASETO pre-authentication
//!   encoding, written independently of the product's) under the current key `sk_fuzz` (1) or
//!   the retired `sk_old` (2), so the JSON and RFC 3339 decoding behind the signature is reached;
//! - `3`: arbitrary claims signed with `SessionSigner::sign`, then the token is verified (and
//!   cached) and tampered with at fuzzer-chosen bytes;
//! - anything else: the rest is `message \n footer`, signed with `sk_fuzz`.
//!
//! Properties: never a panic; a signed token round-trips its claims; and every verdict of the
//! verifier, asked twice (the second time from its cache), equals the one an oracle derives
//! step by step from the public parsing functions in the documented order (shape, key id,
//! retired key, signature, header-safe ids, expiry, revocation).

#![no_main]

use std::sync::{Arc, LazyLock};

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer;
use keygate_proto::session::{self, HEADER, MAX_TOKEN_LEN, SessionClaims, SessionSigner};
use keygate_proto::{
    Change, Event, PasskeyRevocation, Revision, SessionRevocation, SessionVerifyingKey, UserState,
};
use keygate_proxy::{Code, Grant, Replica, Verdict, Verifier};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000_000;
/// The longest session the signing keys may sign (the control plane's default, 12 h).
const LIFETIME: i64 = 12 * 3_600_000;
const CURRENT_SECRET: [u8; 32] = [7; 32];
const RETIRED_SECRET: [u8; 32] = [9; 32];
/// The last instant RFC 3339 (four-digit years) can write: 9999-12-31T23:59:59.999Z.
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;
/// Sessions of this user issued before this instant are revoked.
const SIGNED_OUT_BEFORE: i64 = NOW - 3_600_000;

static CURRENT: LazyLock<SessionSigner> =
    LazyLock::new(|| SessionSigner::from_secret("sk_fuzz", CURRENT_SECRET));
static RETIRED: LazyLock<SessionSigner> =
    LazyLock::new(|| SessionSigner::from_secret("sk_old", RETIRED_SECRET));

/// Signing keys and revocation sets, as the sync stream would have delivered them.
static REPLICA: LazyLock<Arc<Replica>> = LazyLock::new(|| {
    let replica = Arc::new(Replica::new());
    let changes = [
        Change::SigningKey(SessionVerifyingKey {
            key_id: "sk_fuzz".into(),
            public_key: CURRENT.public_key(),
            created_unix_ms: 0,
            verify_until_unix_ms: None,
            revoked: false,
            max_session_lifetime_ms: Some(LIFETIME),
        }),
        Change::SigningKey(SessionVerifyingKey {
            key_id: "sk_old".into(),
            public_key: RETIRED.public_key(),
            created_unix_ms: 0,
            verify_until_unix_ms: Some(NOW - 1),
            revoked: false,
            max_session_lifetime_ms: Some(LIFETIME),
        }),
        Change::SessionRevoked(SessionRevocation {
            session_id: "ses_revoked".into(),
            user_id: "alice".into(),
            prune_after_unix_ms: i64::MAX,
        }),
        Change::PasskeyRevoked(PasskeyRevocation {
            user_id: "alice".into(),
            passkey_id: "pk_revoked".into(),
            revoked_unix_ms: 0,
            prune_after_unix_ms: i64::MAX,
        }),
        Change::UserState(UserState {
            user_id: "mallory".into(),
            disabled: true,
            sessions_revoked_before_unix_ms: 0,
            prune_after_unix_ms: i64::MAX,
        }),
        Change::UserState(UserState {
            user_id: "bob".into(),
            disabled: false,
            sessions_revoked_before_unix_ms: SIGNED_OUT_BEFORE,
            prune_after_unix_ms: i64::MAX,
        }),
    ];
    for (revision, change) in (1..).zip(changes) {
        replica
            .apply(&Event {
                revision: Revision(revision),
                committed_unix_ms: 0,
                change,
            })
            .expect("contiguous revisions");
    }
    replica
});

#[derive(Arbitrary, Debug)]
struct Claims {
    session_id: String,
    user_id: String,
    passkey_id: String,
    issued_unix_ms: i64,
    expires_unix_ms: i64,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // A verifier per input, so that a failing input reproduces on its own.
    let verifier = Verifier::with_session_cache(Arc::clone(&REPLICA), 64);
    match mode {
        0 => examine(&verifier, &String::from_utf8_lossy(rest)),
        1 => examine(
            &verifier,
            &sign_raw(&CURRENT_SECRET, rest, br#"{"kid":"sk_fuzz"}"#),
        ),
        2 => examine(
            &verifier,
            &sign_raw(&RETIRED_SECRET, rest, br#"{"kid":"sk_old"}"#),
        ),
        3 => signed_claims(&verifier, rest),
        _ => {
            let (message, footer) = match rest.iter().position(|&b| b == b'\n') {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &b""[..]),
            };
            examine(&verifier, &sign_raw(&CURRENT_SECRET, message, footer));
        }
    }
});

/// A v4.public token over `message` and `footer`, signed with `secret`.
fn sign_raw(secret: &[u8; 32], message: &[u8], footer: &[u8]) -> String {
    // PASETO PAE: the piece count, then each piece prefixed by its length, as 64-bit
    // little-endian numbers with the top bit clear.
    let mut pae = Vec::new();
    let le64 = |n: usize| ((n as u64) & (u64::MAX >> 1)).to_le_bytes();
    let pieces: [&[u8]; 4] = [HEADER.as_bytes(), message, footer, b""];
    pae.extend_from_slice(&le64(pieces.len()));
    for piece in pieces {
        pae.extend_from_slice(&le64(piece.len()));
        pae.extend_from_slice(piece);
    }
    let signature = ed25519_dalek::SigningKey::from_bytes(secret).sign(&pae);
    let mut body = message.to_vec();
    body.extend_from_slice(&signature.to_bytes());
    let footer = if footer.is_empty() {
        String::new()
    } else {
        URL_SAFE_NO_PAD.encode(footer)
    };
    format!("{HEADER}{}.{footer}", URL_SAFE_NO_PAD.encode(body))
}

/// Arbitrary claims through `SessionSigner::sign`: they must come back from `verify`, and the
/// token tampered with anywhere must not pass, whatever the cache holds.
fn signed_claims(verifier: &Verifier, data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(claims) = Claims::arbitrary(&mut input) else {
        return;
    };
    let claims = SessionClaims {
        session_id: claims.session_id,
        user_id: claims.user_id,
        passkey_id: claims.passkey_id,
        issued_unix_ms: claims.issued_unix_ms,
        expires_unix_ms: claims.expires_unix_ms,
    };
    let token = CURRENT.sign(&claims);
    if token.len() <= MAX_TOKEN_LEN {
        let parsed = session::parse(&token).expect("a signed token parses");
        assert_eq!(parsed.key_id(), "sk_fuzz");
        // Times before 1970 are signed as 1970, after 9999 as the end of 9999 (FUZZING.md,
        // finding 1, fixed: `sign` used to panic on those).
        let expected = SessionClaims {
            issued_unix_ms: claims.issued_unix_ms.clamp(0, MAX_RFC3339_MS),
            expires_unix_ms: claims.expires_unix_ms.clamp(0, MAX_RFC3339_MS),
            ..claims.clone()
        };
        assert_eq!(parsed.verify(&CURRENT.public_key()), Ok(expected));
    }
    examine(verifier, &token);
    // Tamper: xor fuzzer-chosen bytes at fuzzer-chosen positions (kept ASCII, so a header
    // could carry it).
    let mut bytes = token.into_bytes();
    let Ok(edits) = input.arbitrary_len::<(u16, u8)>() else {
        return;
    };
    for _ in 0..edits.min(8) {
        let Ok((at, mask)) = <(u16, u8)>::arbitrary(&mut input) else {
            break;
        };
        if bytes.is_empty() {
            break;
        }
        let at = usize::from(at) % bytes.len();
        bytes[at] = (bytes[at] ^ mask) & 0x7f;
    }
    if let Ok(tampered) = String::from_utf8(bytes) {
        examine(verifier, &tampered);
    }
}

/// The verifier's verdict, twice (the second may come from the signature cache), against the
/// oracle's.
fn examine(verifier: &Verifier, token: &str) {
    let expected = oracle(token);
    for attempt in ["first", "second"] {
        let verdict = verifier.verify_session(token, NOW);
        match (&verdict, &expected) {
            (Verdict::Valid(Grant::Session(grant)), Ok(claims)) => {
                assert_eq!(grant.session_id(), claims.session_id);
                assert_eq!(grant.user_id(), claims.user_id);
                assert_eq!(grant.passkey_id(), claims.passkey_id);
                assert_eq!(grant.issued_unix_ms(), claims.issued_unix_ms);
                assert_eq!(grant.expires_unix_ms(), claims.expires_unix_ms);
            }
            (Verdict::Denied(code), Err(expected_code)) if code == expected_code => {}
            _ => panic!("{attempt} verdict on {token:?}: {verdict:?}, oracle says {expected:?}"),
        }
    }
}

/// The verdict the documented steps give, from the public parsing functions.
fn oracle(token: &str) -> Result<SessionClaims, Code> {
    if token.len() > MAX_TOKEN_LEN || !token.starts_with(HEADER) {
        return Err(Code::Malformed);
    }
    let parsed = session::parse(token).map_err(|_| Code::Malformed)?;
    let public_key = match parsed.key_id() {
        "sk_fuzz" => CURRENT.public_key(),
        "sk_old" => return Err(Code::Revoked),
        _ => return Err(Code::Malformed),
    };
    let claims = parsed.verify(&public_key).map_err(|_| Code::Malformed)?;
    if http::HeaderValue::from_str(&claims.user_id).is_err()
        || http::HeaderValue::from_str(&claims.session_id).is_err()
    {
        return Err(Code::Malformed);
    }
    // Issued beyond the clock skew, or living longer than the key's lifetime: not a token any
    // control plane issued.
    if claims.issued_unix_ms > NOW + session::MAX_CLOCK_SKEW_MS
        || claims.expires_unix_ms.saturating_sub(claims.issued_unix_ms) > LIFETIME
    {
        return Err(Code::Malformed);
    }
    if NOW >= claims.expires_unix_ms {
        return Err(Code::Expired);
    }
    let revoked = claims.session_id == "ses_revoked"
        || claims.passkey_id == "pk_revoked"
        || claims.user_id == "mallory"
        || (claims.user_id == "bob" && claims.issued_unix_ms < SIGNED_OUT_BEFORE);
    if revoked {
        return Err(Code::Revoked);
    }
    Ok(claims)
}
