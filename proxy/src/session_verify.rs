//! The verdict on a session token (DESIGN.md, "Verification at the gateway" and "Passkeys and
//! sessions"), in this order:
//!
//! 1. shape → MALFORMED: without the `v4.public.` header or over 2 KiB before any shared state
//!    is read; anything else wrong with it (base64url, the footer and its key id) after one
//!    read-only cache probe has missed, by the full parse;
//! 2. the signing key named by the token's `kid` → MALFORMED when unknown, REVOKED when it was
//!    revoked (`keygate signing-keys revoke`), or retired and its `verify_until` has passed;
//! 3. the Ed25519 signature → MALFORMED when it does not verify;
//! 4. the times, by the rule the control plane applies too
//!    ([`SessionClaims::check_times`](keygate_proto::session::SessionClaims::check_times)) →
//!    MALFORMED when issued more than 60 s in the future or living longer (expiry − issue) than
//!    the key's maximum session lifetime, counted by reason in
//!    `keygate_session_time_refusals_total`; EXPIRED from the instant `exp` on;
//! 5. the revocation sets → REVOKED when the session, its passkey or its user is revoked.
//!
//! The refusal for a token's times is MALFORMED, the code of every other token no control
//! plane issued (a bad signature, an unknown key): the token is not a session at all, and a
//! client can do nothing about it but sign in again. EXPIRED would suggest it once was one.
//!
//! Step 3 (and the full parse) is skipped for a token verified before: a bounded cache holds
//! the verified claims, with the key id and public key they were verified with. A hit still
//! re-reads the signing key (so a revocation, a retirement or a removed key applies at once:
//! a cached token of a revoked key is REVOKED from the request after the event is applied) and
//! runs steps 4 and 5.
//!
//! The cache is keyed by a hash of the token's signature (its last 86 body characters: the one
//! part of a token that makes it a credential, and that is never stored), and an entry keeps the
//! rest of the token's text, which a hit must match byte for byte. So a hit is the very token
//! that was verified. The hash is SipHash-1-3 under a key drawn at random per gateway
//! ([`TokenHash`]), not blake3 of the whole token: blake3 of a ~350-byte token alone costs more
//! than the 300 ns budget of a cached verification. Nobody outside knows the key, so nobody can
//! aim at a cache key: passing for a cached token takes its exact text apart from the signature
//! (a random session id among it) and then about 2^64 online guesses of a signature.
//!
//! **Invariant:** a session verdict is never cached: the cache holds only what a signature
//! proves (the claims), and the revocation sets are consulted on every request.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Arc, RwLock};

use http::HeaderValue;
use keygate_proto::session::{self, SessionClaims, TimeRefusal};

use crate::metrics::Metrics;
use crate::replica::{IdentityHasher, Replica};
use crate::sessions::{SessionIdentity, SessionView, SigningKey};
use crate::verdict::Code;
pub use crate::verdict::{SessionGrant, VerifiedSession};

/// Verified sessions remembered by default (the configuration's default, `config.rs`).
pub const DEFAULT_CACHE_CAPACITY: u64 = crate::config::DEFAULT_SESSION_CACHE_CAPACITY;

/// A keyed hash of a token's signature text: what the cache is keyed by.
#[derive(Clone, Copy, PartialEq, Eq)]
struct TokenHash(u64);

impl TokenHash {
    #[inline]
    fn of(key: &RandomState, signature: &[u8]) -> Self {
        Self(key.hash_one(signature))
    }
}

impl Hash for TokenHash {
    /// Already uniform: feed it to the pass-through hasher.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// Base64url characters of a 64-byte Ed25519 signature.
const SIGNATURE_TEXT_LEN: usize = 86;

/// A token's text in three parts: before the signature (header and claims), the signature (the
/// last [`SIGNATURE_TEXT_LEN`] characters of the body), and from the `.` before the footer on.
/// Byte offsets, so any input splits without panicking; a token too short to hold a signature
/// splits too, and then simply never matches a cached one.
#[inline]
fn split_signature(token: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let body_end = token
        .iter()
        .rposition(|&byte| byte == b'.')
        .unwrap_or(token.len());
    let signature_start = body_end.saturating_sub(SIGNATURE_TEXT_LEN);
    (
        &token[..signature_start],
        &token[signature_start..body_end],
        &token[body_end..],
    )
}

type CacheShard = HashMap<TokenHash, Arc<VerifiedSession>, BuildHasherDefault<IdentityHasher>>;

/// Most shards of a [`VerifiedCache`] (a power of two).
const CACHE_SHARDS: usize = 64;

/// The signature cache: verified tokens by [`TokenHash`], in shards of a plain map under a
/// read-write lock. A hit is one shard read lock, one probe and one reference count (the
/// grant shares the entry); moka's bookkeeping cost several times that (BENCHMARKS.md,
/// 2026-11-22).
///
/// **Invariant:** it never holds more than its capacity: a shard that is full drops one entry
/// (the first in its hash order, which the per-gateway random key makes arbitrary) for each
/// one it takes. A token forgotten early only costs one more signature verification.
struct VerifiedCache {
    shards: Box<[RwLock<CacheShard>]>,
    shard_capacity: usize,
}

impl VerifiedCache {
    fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        // At least 64 entries a shard, so small caches stay exact about their capacity.
        let shards = (capacity / 64).clamp(1, CACHE_SHARDS);
        let shards = 1 << shards.ilog2();
        Self {
            shards: std::iter::repeat_with(|| RwLock::new(CacheShard::default()))
                .take(shards)
                .collect(),
            shard_capacity: capacity / shards,
        }
    }

    #[inline]
    fn shard(&self, hash: TokenHash) -> &RwLock<CacheShard> {
        // The high bits: the map's buckets use the low ones.
        &self.shards[(hash.0 >> 58) as usize & (self.shards.len() - 1)]
    }

    #[inline]
    fn get(&self, hash: TokenHash) -> Option<Arc<VerifiedSession>> {
        // Every change is one map operation: a panic cannot leave a shard torn.
        let shard = self
            .shard(hash)
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.get(&hash).cloned()
    }

    fn insert(&self, hash: TokenHash, session: Arc<VerifiedSession>) {
        if self.shard_capacity == 0 {
            return;
        }
        let mut shard = self
            .shard(hash)
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if shard.len() >= self.shard_capacity
            && !shard.contains_key(&hash)
            && let Some(victim) = shard.keys().next().copied()
        {
            shard.remove(&victim);
        }
        shard.insert(hash, session);
    }

    fn invalidate(&self, hash: TokenHash) {
        self.shard(hash)
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&hash);
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().map_or(0, |shard| shard.len()))
            .sum()
    }
}

impl VerifiedSession {
    /// Whether a token whose text around the signature is `before` and `after` is this one.
    #[inline]
    fn is_token(&self, before: &[u8], after: &[u8]) -> bool {
        let text = &*self.unsigned_text;
        text.len() == before.len() + after.len()
            && text[..before.len()] == *before
            && text[before.len()..] == *after
    }

    fn identity(&self) -> SessionIdentity<'_> {
        SessionIdentity {
            session_id: &self.claims.session_id,
            user_id: &self.claims.user_id,
            passkey_id: &self.claims.passkey_id,
            issued_unix_ms: self.claims.issued_unix_ms,
        }
    }
}

/// Verifies session tokens against the replica's session state, with the signature cache.
pub struct SessionVerifier {
    replica: Arc<Replica>,
    /// The secret key of [`TokenHash`], random per verifier.
    hash_key: RandomState,
    cache: VerifiedCache,
    metrics: Option<Metrics>,
}

impl SessionVerifier {
    /// A verifier remembering up to `cache_capacity` verified tokens (0: none).
    pub(crate) fn new(
        replica: Arc<Replica>,
        cache_capacity: u64,
        metrics: Option<Metrics>,
    ) -> Self {
        Self {
            replica,
            hash_key: RandomState::new(),
            cache: VerifiedCache::new(cache_capacity),
            metrics,
        }
    }

    /// The verdict on `token` at `now_unix_ms`: the session, or the code refusing it.
    pub fn verify(&self, token: &str, now_unix_ms: i64) -> Result<SessionGrant, Code> {
        if !has_token_shape(token) {
            return Err(Code::Malformed);
        }
        let (before, signature, after) = split_signature(token.as_bytes());
        let hash = TokenHash::of(&self.hash_key, signature);
        let view = self.replica.sessions().view();
        let cached = self
            .cache
            .get(hash)
            .filter(|cached| cached.is_token(before, after));
        let (session, key) = match cached {
            Some(cached) => {
                let key = accepted_key(&view, &cached.key_id, now_unix_ms)?;
                if key.public_key == cached.public_key {
                    self.count_cache(true);
                    (cached, key)
                } else {
                    // The key id now names another key: what the cache proved no longer holds.
                    self.cache.invalidate(hash);
                    self.count_cache(false);
                    self.verify_signature(token, hash, &view, now_unix_ms)?
                }
            }
            None => {
                self.count_cache(false);
                self.verify_signature(token, hash, &view, now_unix_ms)?
            }
        };
        // On a hit too: the key's lifetime may have changed since the token was cached.
        if let Err(refusal) = session
            .claims
            .check_times(now_unix_ms, key.max_session_lifetime_ms)
        {
            return Err(self.refused_for_times(refusal, &session.claims));
        }
        if view.is_revoked(session.identity()) {
            return Err(Code::Revoked);
        }
        Ok(SessionGrant(session))
    }

    /// Steps 1–3 in full for a token not in the cache; caches it when it verifies and its
    /// times pass. Returns the session with the key that verified it.
    fn verify_signature(
        &self,
        token: &str,
        hash: TokenHash,
        view: &SessionView,
        now_unix_ms: i64,
    ) -> Result<(Arc<VerifiedSession>, SigningKey), Code> {
        let parsed = session::parse(token).map_err(|_| Code::Malformed)?;
        let key = accepted_key(view, parsed.key_id(), now_unix_ms)?;
        let public_key = key.public_key;
        let claims = parsed.verify(&public_key).map_err(|_| Code::Malformed)?;
        // Ids that cannot be header values cannot identify anyone to the upstream.
        let (Ok(user_id_header), Ok(session_id_header)) = (
            HeaderValue::from_str(&claims.user_id),
            HeaderValue::from_str(&claims.session_id),
        ) else {
            return Err(Code::Malformed);
        };
        let (before, _, after) = split_signature(token.as_bytes());
        let session = Arc::new(VerifiedSession {
            unsigned_text: [before, after].concat().into_boxed_slice(),
            key_id: parsed.key_id().into(),
            public_key,
            claims,
            user_id_header,
            session_id_header,
        });
        let times_pass = session
            .claims
            .check_times(now_unix_ms, key.max_session_lifetime_ms)
            .is_ok();
        if times_pass {
            self.cache.insert(hash, Arc::clone(&session));
        }
        Ok((session, key))
    }

    /// The code of a token refused for its times; counts and logs why (never the token).
    #[cold]
    fn refused_for_times(&self, refusal: TimeRefusal, claims: &SessionClaims) -> Code {
        if refusal == TimeRefusal::Expired {
            return Code::Expired;
        }
        if let Some(metrics) = &self.metrics {
            metrics.session_time_refused(refusal);
        }
        tracing::debug!(
            reason = refusal.reason(),
            session_id = %claims.session_id,
            issued_unix_ms = claims.issued_unix_ms,
            expires_unix_ms = claims.expires_unix_ms,
            "signed session token refused for its times"
        );
        Code::Malformed
    }

    fn count_cache(&self, hit: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.session_cache_lookup(hit);
        }
    }

    /// Verified tokens remembered right now.
    pub fn cached_len(&self) -> u64 {
        self.cache.len() as u64
    }
}

/// The signing key `key_id` names, if tokens signed with it are accepted at `now_unix_ms`:
/// unknown → MALFORMED, revoked or retired past its verify-until → REVOKED.
#[inline]
fn accepted_key(view: &SessionView, key_id: &str, now_unix_ms: i64) -> Result<SigningKey, Code> {
    match view.signing_key(key_id) {
        None => Err(Code::Malformed),
        Some(key) if key.refuses_at(now_unix_ms) => Err(Code::Revoked),
        Some(key) => Ok(key),
    }
}

/// Whether `token` can be a v4.public token at all: the header and at most
/// [`session::MAX_TOKEN_LEN`] bytes. O(1) and reads no shared state. A byte-by-byte check of
/// the rest would cost more than the rest of a cached verification; a token that fails it can
/// only miss the cache, and [`session::parse`] then refuses it.
#[inline]
fn has_token_shape(token: &str) -> bool {
    token.len() <= session::MAX_TOKEN_LEN && token.starts_with(session::HEADER)
}

#[cfg(test)]
mod tests {
    use keygate_proto::session::SessionSigner;

    use super::*;
    use crate::sessions::tests::{event, passkey_revoked, session_revoked, signing_key, user};

    const NOW: i64 = 1_800_000_000_000;
    const HOUR: i64 = 3_600_000;

    struct Setup {
        replica: Arc<Replica>,
        verifier: SessionVerifier,
        signer: SessionSigner,
        revision: u64,
    }

    impl Setup {
        fn new() -> Self {
            let replica = Arc::new(Replica::new());
            let verifier = SessionVerifier::new(Arc::clone(&replica), 1_000, None);
            let signer = SessionSigner::generate("sk_1");
            let mut setup = Self {
                replica,
                verifier,
                signer,
                revision: 0,
            };
            let key = signing_key("sk_1", setup.signer.public_key(), None);
            setup.apply(key);
            setup
        }

        fn apply(&mut self, change: keygate_proto::Change) {
            self.revision += 1;
            self.replica
                .apply(&event(self.revision, change))
                .expect("in order");
        }

        fn token(&self, session_id: &str, user_id: &str, passkey_id: &str) -> String {
            sign(
                &self.signer,
                session_id,
                user_id,
                passkey_id,
                NOW - HOUR,
                NOW + HOUR,
            )
        }

        fn code(&self, token: &str, now: i64) -> Code {
            match self.verifier.verify(token, now) {
                Ok(_) => Code::Valid,
                Err(code) => code,
            }
        }
    }

    fn sign(
        signer: &SessionSigner,
        session_id: &str,
        user_id: &str,
        passkey_id: &str,
        issued_unix_ms: i64,
        expires_unix_ms: i64,
    ) -> String {
        signer.sign(&SessionClaims {
            session_id: session_id.into(),
            user_id: user_id.into(),
            passkey_id: passkey_id.into(),
            issued_unix_ms,
            expires_unix_ms,
        })
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let session = |id: u64| {
            Arc::new(VerifiedSession {
                unsigned_text: Box::default(),
                key_id: "sk_1".into(),
                public_key: [0; 32],
                claims: SessionClaims {
                    session_id: format!("ses_{id}"),
                    user_id: "alice".into(),
                    passkey_id: "pk_1".into(),
                    issued_unix_ms: 0,
                    expires_unix_ms: 1,
                },
                user_id_header: HeaderValue::from_static("alice"),
                session_id_header: HeaderValue::from_static("ses"),
            })
        };
        let key = RandomState::new();
        for capacity in [1u64, 100, 10_000] {
            let cache = VerifiedCache::new(capacity);
            for n in 0..3 * capacity {
                let hash = TokenHash::of(&key, &n.to_le_bytes());
                cache.insert(hash, session(n));
                let cached = cache.get(hash).expect("the newest entry is kept");
                assert_eq!(cached.claims.session_id, format!("ses_{n}"));
                assert!(
                    cache.len() as u64 <= capacity,
                    "{} > {capacity}",
                    cache.len()
                );
            }
            cache.invalidate(TokenHash::of(&key, &(3 * capacity - 1).to_le_bytes()));
            assert!(
                cache
                    .get(TokenHash::of(&key, &(3 * capacity - 1).to_le_bytes()))
                    .is_none()
            );
        }
        let none = VerifiedCache::new(0);
        none.insert(TokenHash(1), session(1));
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn a_valid_session_grants_its_identity_and_is_cached() {
        let setup = Setup::new();
        let token = setup.token("ses_1", "alice", "pk_1");
        let grant = setup.verifier.verify(&token, NOW).expect("valid");
        assert_eq!(grant.session_id(), "ses_1");
        assert_eq!(grant.user_id(), "alice");
        assert_eq!(grant.passkey_id(), "pk_1");
        assert_eq!(grant.issued_unix_ms(), NOW - HOUR);
        assert_eq!(grant.expires_unix_ms(), NOW + HOUR);
        assert_eq!(grant.user_id_header(), "alice");
        assert_eq!(grant.session_id_header(), "ses_1");
        assert_eq!(setup.verifier.cached_len(), 1);
        let again = setup.verifier.verify(&token, NOW).expect("valid");
        assert!(Arc::ptr_eq(&grant.0, &again.0), "served from the cache");
    }

    #[test]
    fn garbage_forgeries_and_unknown_keys_are_malformed() {
        let setup = Setup::new();
        let token = setup.token("ses_1", "alice", "pk_1");
        for garbage in [
            "",
            "v4.public.",
            "v4.public.abc",
            "v4.public.a.b.c",
            "v4.public.ab c.e30",
            "v4.local.abc.e30",
            "kg_notasession",
            &format!("{token}x{}", "A".repeat(2048)),
        ] {
            assert_eq!(setup.code(garbage, NOW), Code::Malformed, "{garbage}");
        }
        // Signed by someone else under our key id.
        let forger = SessionSigner::generate("sk_1");
        let forged = sign(&forger, "ses_1", "alice", "pk_1", NOW - HOUR, NOW + HOUR);
        assert_eq!(setup.code(&forged, NOW), Code::Malformed);
        // A valid token with one character of its body changed.
        let body_at = session::HEADER.len() + 10;
        let mut tampered = token.clone().into_bytes();
        tampered[body_at] = if tampered[body_at] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(setup.code(&tampered, NOW), Code::Malformed);
        // A key id the gateway has never heard of.
        let stranger = SessionSigner::generate("sk_unknown");
        let unknown = sign(&stranger, "ses_1", "alice", "pk_1", NOW - HOUR, NOW + HOUR);
        assert_eq!(setup.code(&unknown, NOW), Code::Malformed);
        assert_eq!(
            setup.verifier.cached_len(),
            0,
            "nothing unverified is cached"
        );
        assert_eq!(setup.code(&token, NOW), Code::Valid);
    }

    #[test]
    fn a_cached_signature_with_other_claims_is_not_a_hit() {
        let setup = Setup::new();
        let token = setup.token("ses_1", "alice", "pk_1");
        assert_eq!(setup.code(&token, NOW), Code::Valid);
        // The cached token's signature with its claims changed, or its footer swapped.
        let body_at = session::HEADER.len() + 10;
        let mut tampered = token.clone().into_bytes();
        tampered[body_at] = if tampered[body_at] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(setup.code(&tampered, NOW), Code::Malformed);
        let (signed, _footer) = token.rsplit_once('.').expect("has a footer");
        let other_footer = format!("{signed}.eyJraWQiOiJza18yIn0");
        assert_eq!(setup.code(&other_footer, NOW), Code::Malformed);
        assert_eq!(setup.code(&token, NOW), Code::Valid);
        assert_eq!(setup.verifier.cached_len(), 1);
    }

    #[test]
    fn expiry_is_exclusive() {
        let setup = Setup::new();
        let token = sign(&setup.signer, "ses_1", "alice", "pk_1", NOW - HOUR, NOW);
        assert_eq!(setup.code(&token, NOW - 1), Code::Valid);
        assert_eq!(setup.code(&token, NOW), Code::Expired);
        let expired = sign(&setup.signer, "ses_2", "alice", "pk_1", NOW - HOUR, NOW - 1);
        assert_eq!(setup.code(&expired, NOW), Code::Expired);
    }

    #[test]
    fn each_revocation_kind_is_revoked_even_on_a_cache_hit() {
        let mut setup = Setup::new();
        let by_session = setup.token("ses_1", "alice", "pk_1");
        let by_passkey = setup.token("ses_2", "bob", "pk_2");
        let by_disable = setup.token("ses_3", "carol", "pk_3");
        let by_sign_out = setup.token("ses_4", "dave", "pk_4");
        let untouched = setup.token("ses_5", "erin", "pk_5");
        let all = [
            &by_session,
            &by_passkey,
            &by_disable,
            &by_sign_out,
            &untouched,
        ];
        // Every token verified once, so each is now a cache hit.
        for token in all {
            assert_eq!(setup.code(token, NOW), Code::Valid);
        }
        assert_eq!(setup.verifier.cached_len(), 5);

        setup.apply(session_revoked("ses_1", NOW + HOUR));
        setup.apply(passkey_revoked("pk_2", NOW + HOUR));
        setup.apply(user("carol", true, 0, NOW + HOUR));
        // Signed out everywhere after the token was issued.
        setup.apply(user("dave", false, NOW - HOUR + 1, NOW + HOUR));
        for token in [&by_session, &by_passkey, &by_disable, &by_sign_out] {
            assert_eq!(setup.code(token, NOW), Code::Revoked);
        }
        assert_eq!(setup.code(&untouched, NOW), Code::Valid);
        // A session issued after the sign-out is fine; enabling carol again (a new whole
        // state, with the disable as her sign-out time) brings none of her old sessions back.
        let after_sign_out = sign(&setup.signer, "ses_6", "dave", "pk_4", NOW, NOW + HOUR);
        assert_eq!(setup.code(&after_sign_out, NOW), Code::Valid);
        setup.apply(user("carol", false, NOW - HOUR + 1, NOW + HOUR));
        assert_eq!(setup.code(&by_disable, NOW), Code::Revoked);
        // Revoked tokens are still cached: the cache holds claims, not verdicts.
        assert_eq!(setup.verifier.cached_len(), 6);
    }

    #[test]
    fn rotation_old_key_verifies_until_its_deadline_then_is_revoked() {
        let mut setup = Setup::new();
        let old_token = setup.token("ses_old", "alice", "pk_1");
        assert_eq!(setup.code(&old_token, NOW), Code::Valid);

        let new_signer = SessionSigner::generate("sk_2");
        setup.apply(signing_key("sk_2", new_signer.public_key(), None));
        let old_key = setup.signer.public_key();
        setup.apply(signing_key("sk_1", old_key, Some(NOW + 10)));
        let new_token = sign(&new_signer, "ses_new", "alice", "pk_1", NOW, NOW + HOUR);

        assert_eq!(setup.code(&new_token, NOW), Code::Valid);
        assert_eq!(
            setup.code(&old_token, NOW + 10),
            Code::Valid,
            "until, inclusive"
        );
        assert_eq!(setup.code(&old_token, NOW + 11), Code::Revoked, "cache hit");
        // The same refusal without the cache.
        let uncached = sign(&setup.signer, "ses_x", "alice", "pk_1", NOW, NOW + HOUR);
        assert_eq!(setup.code(&uncached, NOW + 11), Code::Revoked);
        assert_eq!(setup.code(&new_token, NOW + 11), Code::Valid);
    }

    #[test]
    fn a_cache_hit_rechecks_the_signing_key() {
        let mut setup = Setup::new();
        let token = setup.token("ses_1", "alice", "pk_1");
        assert_eq!(setup.code(&token, NOW), Code::Valid);
        // The key id now names a different key (a snapshot without the old one, then reuse):
        // the cached claims are no longer proven.
        let other = SessionSigner::generate("sk_1");
        setup.apply(signing_key("sk_1", other.public_key(), None));
        assert_eq!(setup.code(&token, NOW), Code::Malformed);
        // And a key that is gone entirely.
        setup.apply(signing_key("sk_1", setup.signer.public_key(), None));
        assert_eq!(setup.code(&token, NOW), Code::Valid);
        setup
            .replica
            .install_snapshot(crate::replica::Snapshot::new(
                keygate_proto::Revision(100),
                0,
            ));
        assert_eq!(setup.code(&token, NOW), Code::Malformed);
    }

    /// The key `signer` names, as a revoked key or with a maximum session lifetime.
    fn key_change(
        signer: &SessionSigner,
        verify_until_unix_ms: Option<i64>,
        revoked: bool,
        max_session_lifetime_ms: Option<i64>,
    ) -> keygate_proto::Change {
        keygate_proto::Change::SigningKey(keygate_proto::SessionVerifyingKey {
            key_id: signer.key_id().to_owned(),
            public_key: signer.public_key(),
            created_unix_ms: 0,
            verify_until_unix_ms,
            revoked,
            max_session_lifetime_ms,
        })
    }

    #[test]
    fn a_revoked_signing_key_revokes_every_token_it_signed_cached_or_not() {
        let mut setup = Setup::new();
        let cached = setup.token("ses_1", "alice", "pk_1");
        assert_eq!(setup.code(&cached, NOW), Code::Valid);
        // The control plane revokes the current key: a new key first, then the revocation.
        let next = SessionSigner::generate("sk_2");
        setup.apply(key_change(&next, None, false, None));
        setup.apply(key_change(&setup.signer, Some(NOW + HOUR), true, None));
        let uncached = setup.token("ses_2", "bob", "pk_2");
        assert_eq!(setup.code(&cached, NOW), Code::Revoked, "a cache hit");
        assert_eq!(setup.code(&uncached, NOW), Code::Revoked);
        // Even a token that would otherwise be refused for its times: the key says it all.
        let future = sign(
            &setup.signer,
            "ses_3",
            "alice",
            "pk_1",
            NOW + HOUR,
            NOW + HOUR,
        );
        assert_eq!(setup.code(&future, NOW), Code::Revoked);
        let fresh = sign(&next, "ses_4", "alice", "pk_1", NOW, NOW + HOUR);
        assert_eq!(setup.code(&fresh, NOW), Code::Valid, "the new key signs");

        // A gateway that resyncs gets the revoked key in the snapshot and refuses alike.
        let mut snapshot = crate::replica::Snapshot::new(keygate_proto::Revision(100), 0);
        let revoked = keygate_proto::SessionVerifyingKey {
            key_id: "sk_1".into(),
            public_key: setup.signer.public_key(),
            created_unix_ms: 0,
            verify_until_unix_ms: Some(NOW + HOUR),
            revoked: true,
            max_session_lifetime_ms: None,
        };
        snapshot.sessions_mut().insert_signing_key(&revoked);
        setup.replica.install_snapshot(snapshot);
        assert_eq!(setup.code(&cached, NOW), Code::Revoked);
        assert_eq!(setup.code(&uncached, NOW), Code::Revoked);
    }

    #[test]
    fn tokens_issued_in_the_future_or_living_too_long_are_malformed() {
        let mut setup = Setup::new();
        let lifetime = 12 * HOUR;
        setup.apply(key_change(&setup.signer, None, false, Some(lifetime)));
        let signer = SessionSigner::from_secret("sk_1", setup.signer.secret());
        let token = |session: &str, issued: i64, expires: i64| {
            sign(&signer, session, "alice", "pk_1", issued, expires)
        };
        let skew = session::MAX_CLOCK_SKEW_MS;
        let within_skew = token("ses_1", NOW + skew, NOW + skew + HOUR);
        let beyond_skew = token("ses_2", NOW + skew + 1, NOW + skew + 1 + HOUR);
        let whole_lifetime = token("ses_3", NOW - HOUR, NOW - HOUR + lifetime);
        let too_long = token("ses_4", NOW - HOUR, NOW - HOUR + lifetime + 1);
        assert_eq!(setup.code(&within_skew, NOW), Code::Valid);
        assert_eq!(setup.code(&beyond_skew, NOW), Code::Malformed);
        assert_eq!(setup.code(&whole_lifetime, NOW), Code::Valid);
        assert_eq!(setup.code(&too_long, NOW), Code::Malformed);
        assert_eq!(
            setup.verifier.cached_len(),
            2,
            "only the tokens that passed are cached"
        );
        // The future-dated token is no better once its issue time is near.
        assert_eq!(setup.code(&beyond_skew, NOW + 1), Code::Valid);

        // A lifetime lowered by the control plane applies to cached tokens at once.
        setup.apply(key_change(&setup.signer, None, false, Some(HOUR)));
        assert_eq!(
            setup.code(&whole_lifetime, NOW),
            Code::Malformed,
            "a cache hit"
        );
        assert_eq!(setup.code(&within_skew, NOW), Code::Valid);

        // A key that arrives without a lifetime (an older control plane): only the skew rule.
        setup.apply(key_change(&setup.signer, None, false, None));
        assert_eq!(setup.code(&too_long, NOW), Code::Valid);
        let far_future = token("ses_5", NOW + skew + 1, NOW + 2 * HOUR);
        assert_eq!(setup.code(&far_future, NOW), Code::Malformed);
    }

    #[test]
    fn ids_that_cannot_be_headers_are_malformed() {
        let setup = Setup::new();
        let token = sign(
            &setup.signer,
            "ses_1",
            "al\nice",
            "pk_1",
            NOW - HOUR,
            NOW + HOUR,
        );
        assert_eq!(setup.code(&token, NOW), Code::Malformed);
    }
}
