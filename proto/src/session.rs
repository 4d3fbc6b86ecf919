//! Session tokens (DESIGN.md, "Passkeys and sessions"): PASETO v4.public, that is Ed25519 over
//! a pre-authentication encoding of the header, the JSON claims and the footer. The version and
//! purpose are fixed by the header, so there is no algorithm to negotiate (or to confuse). The
//! footer names the signing key (`{"kid":"…"}`), which gateways receive over the sync stream.
//!
//! The control plane signs with [`SessionSigner`]; a gateway calls [`parse`] (syntax only, no
//! shared state) and then [`UnverifiedToken::verify`] with the public key its replica holds for
//! [`UnverifiedToken::key_id`]. Whether the session is revoked is the gateway's business, not
//! this module's.
//!
//! What a verified token's times must satisfy is one rule, [`SessionClaims::check_times`],
//! which the gateways and the control plane's own session check both apply: not issued more
//! than [`MAX_CLOCK_SKEW_MS`] in the future, not living longer than the signing key's maximum
//! session lifetime, not expired.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::time::rfc3339;

/// Every v4.public token starts with this.
pub const HEADER: &str = "v4.public.";
/// Longest token accepted, in bytes; real ones are about 300.
pub const MAX_TOKEN_LEN: usize = 2048;
const SIGNATURE_LEN: usize = 64;

/// What a session token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    pub session_id: String,
    pub user_id: String,
    /// The passkey the session was minted with.
    pub passkey_id: String,
    pub issued_unix_ms: i64,
    pub expires_unix_ms: i64,
}

/// How far ahead of the verifier's clock a token's issue time may be (DESIGN.md, "Operator
/// access"): the clocks of the control plane and a gateway disagree a little, never by more.
pub const MAX_CLOCK_SKEW_MS: i64 = 60_000;

/// Why a token whose signature verified is refused for its times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeRefusal {
    /// Issued more than [`MAX_CLOCK_SKEW_MS`] after the verifier's now: no control plane with a
    /// sane clock issued it.
    IssuedInFuture,
    /// Its expiry is further from its issue time than the longest session its signing key may
    /// sign.
    LongerThanLifetime,
    /// Its expiry has come.
    Expired,
}

impl TimeRefusal {
    /// The label of metrics and log lines.
    pub fn reason(self) -> &'static str {
        match self {
            Self::IssuedInFuture => "issued_in_future",
            Self::LongerThanLifetime => "longer_than_lifetime",
            Self::Expired => "expired",
        }
    }
}

impl SessionClaims {
    /// The rule on a verified token's times, at `now_unix_ms`: not issued more than
    /// [`MAX_CLOCK_SKEW_MS`] in the future, living (expiry − issue) no longer than
    /// `max_lifetime_ms` (`None`: the signer did not say, no limit), and not expired (the
    /// expiry instant itself is past). The first two say the token is not one a control plane
    /// issued, so they are checked first.
    #[inline]
    pub fn check_times(
        &self,
        now_unix_ms: i64,
        max_lifetime_ms: Option<i64>,
    ) -> Result<(), TimeRefusal> {
        if self.issued_unix_ms > now_unix_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(TimeRefusal::IssuedInFuture);
        }
        if let Some(max) = max_lifetime_ms
            && self.expires_unix_ms.saturating_sub(self.issued_unix_ms) > max
        {
            return Err(TimeRefusal::LongerThanLifetime);
        }
        if now_unix_ms >= self.expires_unix_ms {
            return Err(TimeRefusal::Expired);
        }
        Ok(())
    }
}

/// Why a token was refused before any revocation check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a session token: {0}")]
    Malformed(&'static str),
    #[error("the session token's signature does not verify")]
    BadSignature,
}

/// The wire claims: PASETO's registered `sub`, `iat`, `exp` (RFC 3339) plus keygate's own.
#[derive(Serialize, Deserialize)]
struct WireClaims {
    sid: String,
    sub: String,
    pid: String,
    iat: String,
    exp: String,
}

#[derive(Serialize, Deserialize)]
struct Footer {
    kid: String,
}

/// The control plane's private signing key.
pub struct SessionSigner {
    key_id: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSigner")
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SessionSigner {
    /// A new random key.
    pub fn generate(key_id: impl Into<String>) -> Self {
        Self::from_secret(key_id, rand::random::<[u8; 32]>())
    }

    /// The key with this 32-byte secret (as stored by the control plane).
    pub fn from_secret(key_id: impl Into<String>, secret: [u8; 32]) -> Self {
        Self {
            key_id: key_id.into(),
            key: ed25519_dalek::SigningKey::from_bytes(&secret),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret, for storage. Never log it.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key gateways verify with.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &SessionClaims) -> String {
        let wire = WireClaims {
            sid: claims.session_id.clone(),
            sub: claims.user_id.clone(),
            pid: claims.passkey_id.clone(),
            iat: rfc3339(claims.issued_unix_ms),
            exp: rfc3339(claims.expires_unix_ms),
        };
        // Serialising plain strings cannot fail.
        let message = serde_json::to_vec(&wire).unwrap_or_default();
        let footer = serde_json::to_vec(&Footer {
            kid: self.key_id.clone(),
        })
        .unwrap_or_default();
        let signature = self.key.sign(&pre_auth(&message, &footer));
        let mut body = message;
        body.extend_from_slice(&signature.to_bytes());
        format!(
            "{HEADER}{}.{}",
            URL_SAFE_NO_PAD.encode(body),
            URL_SAFE_NO_PAD.encode(footer)
        )
    }
}

/// A syntactically valid token whose signature is not checked yet.
#[derive(Debug)]
pub struct UnverifiedToken {
    message: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
    footer: Vec<u8>,
    key_id: String,
}

/// Splits and decodes a token without checking its signature: cheap, and touches no shared
/// state.
pub fn parse(token: &str) -> Result<UnverifiedToken, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let rest = token
        .strip_prefix(HEADER)
        .ok_or(TokenError::Malformed("not v4.public"))?;
    let (body, footer) = rest
        .split_once('.')
        .ok_or(TokenError::Malformed("no footer"))?;
    let mut message = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Malformed("body is not base64url"))?;
    let footer = URL_SAFE_NO_PAD
        .decode(footer)
        .map_err(|_| TokenError::Malformed("footer is not base64url"))?;
    if message.len() < SIGNATURE_LEN {
        return Err(TokenError::Malformed("too short"));
    }
    let split = message.len() - SIGNATURE_LEN;
    let mut signature = [0; SIGNATURE_LEN];
    signature.copy_from_slice(&message[split..]);
    message.truncate(split);
    let key_id = serde_json::from_slice::<Footer>(&footer)
        .map_err(|_| TokenError::Malformed("footer has no key id"))?
        .kid;
    Ok(UnverifiedToken {
        message,
        signature,
        footer,
        key_id,
    })
}

impl UnverifiedToken {
    /// The signing key's id, from the footer (authenticated by the signature).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Checks the signature with `public_key` and decodes the claims.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<SessionClaims, TokenError> {
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| TokenError::BadSignature)?;
        let signature = Signature::from_bytes(&self.signature);
        key.verify(&pre_auth(&self.message, &self.footer), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let wire: WireClaims = serde_json::from_slice(&self.message)
            .map_err(|_| TokenError::Malformed("claims are not valid JSON"))?;
        Ok(SessionClaims {
            session_id: wire.sid,
            user_id: wire.sub,
            passkey_id: wire.pid,
            issued_unix_ms: parse_rfc3339(&wire.iat)?,
            expires_unix_ms: parse_rfc3339(&wire.exp)?,
        })
    }
}

/// PASETO's pre-authentication encoding of header, message, footer and an empty implicit
/// assertion: each piece prefixed with its length, so no two inputs encode alike.
fn pre_auth(message: &[u8], footer: &[u8]) -> Vec<u8> {
    let pieces: [&[u8]; 4] = [HEADER.as_bytes(), message, footer, b""];
    let mut out = Vec::with_capacity(8 + pieces.iter().map(|p| 8 + p.len()).sum::<usize>());
    out.extend_from_slice(&le64(pieces.len()));
    for piece in pieces {
        out.extend_from_slice(&le64(piece.len()));
        out.extend_from_slice(piece);
    }
    out
}

/// Little-endian u64 with the top bit cleared, as PASETO's PAE wants.
fn le64(n: usize) -> [u8; 8] {
    ((n as u64) & (u64::MAX >> 1)).to_le_bytes()
}

fn parse_rfc3339(text: &str) -> Result<i64, TokenError> {
    let at = humantime::parse_rfc3339(text)
        .map_err(|_| TokenError::Malformed("time claim is not RFC 3339"))?;
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| TokenError::Malformed("time claim before 1970"))?;
    i64::try_from(since.as_millis()).map_err(|_| TokenError::Malformed("time claim out of range"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::time::MAX_RFC3339_MS;

    fn claims() -> SessionClaims {
        SessionClaims {
            session_id: "ses_1".into(),
            user_id: "alice".into(),
            passkey_id: "pk_1".into(),
            issued_unix_ms: 1_790_000_000_123,
            expires_unix_ms: 1_790_086_400_123,
        }
    }

    #[test]
    fn a_signed_token_verifies_with_its_key_only() {
        let signer = SessionSigner::generate("sk_a");
        let token = signer.sign(&claims());
        assert!(token.starts_with("v4.public."));
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.key_id(), "sk_a");
        assert_eq!(parsed.verify(&signer.public_key()).unwrap(), claims());
        let other = SessionSigner::generate("sk_a");
        assert_eq!(
            parsed.verify(&other.public_key()),
            Err(TokenError::BadSignature)
        );
        let restored = SessionSigner::from_secret("sk_a", signer.secret());
        assert_eq!(restored.public_key(), signer.public_key());
    }

    /// Found by fuzzing (FUZZING.md, finding 1): signing used to panic past the year 9999.
    #[test]
    fn times_beyond_what_rfc3339_can_write_are_clamped_not_a_panic() {
        let signer = SessionSigner::generate("sk_a");
        let far = SessionClaims {
            issued_unix_ms: -5,
            expires_unix_ms: i64::MAX,
            ..claims()
        };
        let verified = parse(&signer.sign(&far))
            .unwrap()
            .verify(&signer.public_key())
            .unwrap();
        assert_eq!(verified.issued_unix_ms, 0);
        assert_eq!(verified.expires_unix_ms, MAX_RFC3339_MS);
    }

    #[test]
    fn tampering_anywhere_breaks_the_signature() {
        let signer = SessionSigner::generate("sk_a");
        let token = signer.sign(&claims());
        let (body, footer) = token[HEADER.len()..].split_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        // Change the user id inside the claims.
        let at = bytes.windows(5).position(|w| w == b"alice").unwrap();
        bytes[at] = b'b';
        let forged = format!("{HEADER}{}.{footer}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(
            parse(&forged).unwrap().verify(&signer.public_key()),
            Err(TokenError::BadSignature)
        );
        // Swap the footer's key id: the footer is signed too.
        let other_footer = URL_SAFE_NO_PAD.encode(br#"{"kid":"sk_b"}"#);
        let forged = format!("{HEADER}{body}.{other_footer}");
        let parsed = parse(&forged).unwrap();
        assert_eq!(parsed.key_id(), "sk_b");
        assert_eq!(
            parsed.verify(&signer.public_key()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn times_are_checked_against_the_skew_the_lifetime_and_the_expiry() {
        let now = 1_790_000_000_000;
        let day = 86_400_000;
        let at = |issued: i64, expires: i64| SessionClaims {
            issued_unix_ms: issued,
            expires_unix_ms: expires,
            ..claims()
        };
        let check =
            |claims: SessionClaims, lifetime: Option<i64>| claims.check_times(now, lifetime);
        assert_eq!(check(at(now, now + day), Some(day)), Ok(()));
        // Issued ahead of this clock: within the skew is fine, a millisecond more is not.
        let skew = MAX_CLOCK_SKEW_MS;
        assert_eq!(check(at(now + skew, now + skew + day), Some(day)), Ok(()));
        assert_eq!(
            check(at(now + skew + 1, now + skew + 1 + day), Some(day)),
            Err(TimeRefusal::IssuedInFuture)
        );
        // Exactly the lifetime is fine; longer is not, unless the key says no lifetime.
        assert_eq!(
            check(at(now - 1, now + day), Some(day)),
            Err(TimeRefusal::LongerThanLifetime)
        );
        assert_eq!(check(at(now - 1, now + day), None), Ok(()));
        assert_eq!(
            check(at(now + skew + 1, now + 2 * day), None),
            Err(TimeRefusal::IssuedInFuture),
            "the skew rule holds without a lifetime"
        );
        // Expiry is exclusive.
        assert_eq!(
            check(at(now - day, now), Some(day)),
            Err(TimeRefusal::Expired)
        );
        assert_eq!(check(at(now - day + 1, now + 1), Some(day)), Ok(()));
        // Extreme times saturate rather than overflow.
        assert_eq!(
            check(at(i64::MIN, i64::MAX), Some(day)),
            Err(TimeRefusal::LongerThanLifetime)
        );
        assert_eq!(
            at(i64::MAX, i64::MAX).check_times(i64::MAX, Some(day)),
            Err(TimeRefusal::Expired)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for token in [
            "",
            "v4.public.",
            "v4.local.abc.def",
            "v3.public.abc.def",
            "v4.public.abc",
            "v4.public.!!!.e30",
            "v4.public.AAAA.e30",
            &"v4.public.".repeat(300),
        ] {
            assert!(
                matches!(parse(token), Err(TokenError::Malformed(_))),
                "{token}"
            );
        }
    }
}
