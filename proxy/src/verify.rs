//! The verdict on a credential (DESIGN.md, "Verification at the gateway", steps 2–4).
//!
//! The hot path, [`Verifier::verify_cached`]: parse and checksum (MALFORMED without touching
//! shared state), hash, one replica lookup, then exists → enabled → not expired. A miss for a
//! well-formed key is not a verdict yet: [`Verifier::verify`] resolves it with one control-plane
//! lookup (see [`crate::miss`]), and puts the freshness check in front of everything. Session
//! tokens go to [`Verifier::verify_session`] (see [`crate::session_verify`]). The verdict
//! vocabulary itself lives in [`crate::verdict`] and is re-exported here.

use std::sync::Arc;

use keygate_proto::{ApiKey, KeyHash};

use crate::config::{self, StalePolicy};
use crate::credential::Credential;
use crate::freshness::Freshness;
use crate::metrics::Metrics;
use crate::miss::MissLookup;
use crate::replica::Replica;
use crate::session_verify::SessionVerifier;
pub use crate::verdict::{Code, Grant, KeyGrant, SessionGrant, Verdict};

/// The outcome of the in-memory check alone.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Decided from the replica (or from the key's shape).
    Done(Verdict),
    /// Well-formed but not in the replica: ask the control plane.
    Miss(KeyHash),
}

/// Verifies credentials against the replica, asking the control plane about misses.
pub struct Verifier {
    replica: Arc<Replica>,
    sessions: SessionVerifier,
    freshness: Arc<Freshness>,
    miss: Option<Arc<MissLookup>>,
    metrics: Option<Metrics>,
}

impl Verifier {
    /// A verifier over `replica` alone: never stale, misses are NOT_FOUND, no metrics, the
    /// default session cache. For benchmarks and embedding.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self::with_session_cache(replica, config::DEFAULT_SESSION_CACHE_CAPACITY)
    }

    /// Like [`Verifier::new`], with a session signature cache of at most `capacity` tokens
    /// (0: none, so every session's signature is verified).
    pub fn with_session_cache(replica: Arc<Replica>, capacity: u64) -> Self {
        let freshness = Freshness::new(std::time::Duration::MAX, StalePolicy::Serve);
        Self {
            sessions: SessionVerifier::new(Arc::clone(&replica), capacity, None),
            replica,
            freshness: Arc::new(freshness),
            miss: None,
            metrics: None,
        }
    }

    /// The gateway's verifier.
    pub(crate) fn with_parts(
        replica: Arc<Replica>,
        freshness: Arc<Freshness>,
        miss: Option<Arc<MissLookup>>,
        session_cache_capacity: u64,
        metrics: Metrics,
    ) -> Self {
        Self {
            sessions: SessionVerifier::new(
                Arc::clone(&replica),
                session_cache_capacity,
                Some(metrics.clone()),
            ),
            replica,
            freshness,
            miss,
            metrics: Some(metrics),
        }
    }

    /// The replica this verifier reads.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The session verifier (signature cache included).
    pub fn sessions(&self) -> &SessionVerifier {
        &self.sessions
    }

    /// The session hot path: shape → signing key → signature (cached by token hash) → expiry
    /// → revocation sets, which are read on every call. Never waits.
    #[inline]
    pub fn verify_session(&self, token: &str, now_unix_ms: i64) -> Verdict {
        match self.sessions.verify(token, now_unix_ms) {
            Ok(grant) => Verdict::Valid(Grant::Session(grant)),
            Err(code) => Verdict::Denied(code),
        }
    }

    /// The hot path: shape and checksum, hash, one replica lookup, then the checks. Touches
    /// no shared state for a malformed key and never waits.
    #[inline]
    pub fn verify_cached(&self, key: &str, now_unix_ms: i64) -> Lookup {
        let Ok(key) = ApiKey::parse(key) else {
            return Lookup::Done(Verdict::Denied(Code::Malformed));
        };
        let hash = key.hash();
        match self.check(&hash, now_unix_ms) {
            Some(verdict) => Lookup::Done(verdict),
            None => Lookup::Miss(hash),
        }
    }

    /// exists → enabled → not expired, for a key the replica holds; `None` when it does not.
    #[inline]
    pub fn check(&self, hash: &KeyHash, now_unix_ms: i64) -> Option<Verdict> {
        self.replica.verdict(hash, now_unix_ms)
    }

    /// The full verdict for a request's credential: STALE first (fail-closed policy), then
    /// MISSING; a session goes to [`Verifier::verify_session`]; a key to the hot path, and for
    /// a miss to one (coalesced, bounded) control-plane lookup.
    pub async fn verify(&self, credential: Credential<'_>) -> Verdict {
        self.verify_at(credential, keygate_proto::time::now_unix_ms())
            .await
    }

    /// [`Verifier::verify`] at `now_unix_ms`, read by the caller, who hands the same instant
    /// to the limits step: one clock read per request, not two.
    pub async fn verify_at(&self, credential: Credential<'_>, now_unix_ms: i64) -> Verdict {
        let started = self.metrics.as_ref().map(|_| std::time::Instant::now());
        let verdict = self.decide(credential, now_unix_ms).await;
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            metrics.verified(verdict.code());
            if matches!(credential, Credential::Session(_)) {
                metrics.session_verified(verdict.code());
            }
            metrics.verify_duration.record(started.elapsed());
        }
        verdict
    }

    /// Counts a refusal decided before any credential was verified (FORBIDDEN_ORIGIN), so that
    /// `keygate_verifications_total` has every code the gateway answers with.
    pub(crate) fn refused(&self, code: Code) {
        if let Some(metrics) = &self.metrics {
            metrics.verified(code);
        }
    }

    /// Counts an external-authorization check answered with `code` (`/_keygate/v1/authz`).
    pub(crate) fn authz_checked(&self, code: Code) {
        if let Some(metrics) = &self.metrics {
            metrics.authz_checked(code);
        }
    }

    /// Counts an external-authorization check answered without a verdict.
    pub(crate) fn authz_other(&self, outcome: crate::metrics::AuthzOutcome) {
        if let Some(metrics) = &self.metrics {
            metrics.authz_other(outcome);
        }
    }

    async fn decide(&self, credential: Credential<'_>, now: i64) -> Verdict {
        if self.freshness.refuses_requests() {
            return Verdict::Denied(Code::Stale);
        }
        let key = match credential {
            Credential::Missing => return Verdict::Denied(Code::Missing),
            Credential::Unreadable | Credential::Ambiguous => {
                return Verdict::Denied(Code::Malformed);
            }
            Credential::Session(token) => return self.verify_session(token, now),
            Credential::ApiKey(key) => key,
        };
        let hash = match self.verify_cached(key, now) {
            Lookup::Done(verdict) => return verdict,
            Lookup::Miss(hash) => hash,
        };
        if let Some(miss) = &self.miss {
            miss.resolve(hash).await;
            if let Some(verdict) = self.check(&hash, keygate_proto::time::now_unix_ms()) {
                return verdict;
            }
        }
        Verdict::Denied(Code::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keygate_proto::{KeyPrefix, ReplicaKey};

    use super::*;
    use crate::replica::tests::{delete, sample_key, upsert};

    fn verifier_with(keys: &[&ReplicaKey]) -> Verifier {
        let replica = Arc::new(Replica::new());
        for (index, key) in keys.iter().enumerate() {
            replica
                .apply(&upsert(index as u64 + 1, key))
                .expect("in order");
        }
        Verifier::new(replica)
    }

    fn code(lookup: Lookup) -> Code {
        match lookup {
            Lookup::Done(verdict) => verdict.code(),
            Lookup::Miss(_) => Code::NotFound,
        }
    }

    #[test]
    fn every_code_of_the_hot_path() {
        let now = 1_800_000_000_000;
        let (valid_text, mut valid) = sample_key("alice");
        valid.meta.insert("plan".into(), "pro".into());
        valid.expires_unix_ms = Some(now + 1);
        let (disabled_text, disabled) = sample_key("bob");
        let disabled = ReplicaKey {
            enabled: false,
            ..disabled
        };
        let (expired_text, expired) = sample_key("carol");
        let expired = ReplicaKey {
            expires_unix_ms: Some(now),
            ..expired
        };
        let verifier = verifier_with(&[&valid, &disabled, &expired]);

        match verifier.verify_cached(&valid_text, now) {
            Lookup::Done(Verdict::Valid(Grant::Key(grant))) => {
                assert_eq!(grant.key_id(), valid.id);
                assert_eq!(grant.key_id_text(), *valid.id.to_string().as_bytes());
                assert_eq!(grant.owner(), "alice");
                assert_eq!(grant.expires_unix_ms(), Some(now + 1));
                assert_eq!(grant.meta().map(|meta| meta["plan"].as_str()), Some("pro"));
            }
            other => panic!("expected VALID, got {other:?}"),
        }
        assert_eq!(
            code(verifier.verify_cached(&disabled_text, now)),
            Code::Disabled
        );
        assert_eq!(
            code(verifier.verify_cached(&expired_text, now)),
            Code::Expired
        );
        assert_eq!(
            code(verifier.verify_cached(&expired_text, now - 1)),
            Code::Valid
        );
        assert_eq!(
            code(verifier.verify_cached("not a key", now)),
            Code::Malformed
        );

        let mut wrong_checksum = valid_text.clone().into_bytes();
        let last = wrong_checksum.len() - 1;
        wrong_checksum[last] = if wrong_checksum[last] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let wrong_checksum = String::from_utf8(wrong_checksum).expect("ascii");
        assert_eq!(
            code(verifier.verify_cached(&wrong_checksum, now)),
            Code::Malformed
        );

        let unknown = ApiKey::generate(&KeyPrefix::default());
        let expected = ApiKey::parse(&unknown).expect("parses").hash();
        assert!(
            matches!(verifier.verify_cached(&unknown, now), Lookup::Miss(hash) if hash == expected)
        );
    }

    #[test]
    fn a_deleted_key_is_not_found() {
        let (text, key) = sample_key("alice");
        let verifier = verifier_with(&[&key]);
        assert_eq!(code(verifier.verify_cached(&text, 0)), Code::Valid);
        verifier
            .replica()
            .apply(&delete(2, &key))
            .expect("in order");
        assert!(matches!(verifier.verify_cached(&text, 0), Lookup::Miss(_)));
    }

    #[tokio::test]
    async fn full_verdicts_missing_malformed_not_found_and_stale() {
        let (text, key) = sample_key("alice");
        let verifier = verifier_with(&[&key]);
        assert_eq!(
            verifier.verify(Credential::ApiKey(&text)).await.code(),
            Code::Valid
        );
        assert_eq!(
            verifier.verify(Credential::Missing).await.code(),
            Code::Missing
        );
        assert_eq!(
            verifier.verify(Credential::Unreadable).await.code(),
            Code::Malformed
        );
        assert_eq!(
            verifier.verify(Credential::Ambiguous).await.code(),
            Code::Malformed
        );
        assert_eq!(
            verifier.verify(Credential::Session("s")).await.code(),
            Code::Malformed
        );
        let unknown = ApiKey::generate(&KeyPrefix::default());
        assert_eq!(
            verifier.verify(Credential::ApiKey(&unknown)).await.code(),
            Code::NotFound
        );

        let stale = Verifier::with_parts(
            Arc::clone(verifier.replica()),
            Arc::new(Freshness::new(
                Duration::from_secs(60),
                StalePolicy::FailClosed,
            )),
            None,
            0,
            Metrics::register(),
        );
        assert_eq!(
            stale.verify(Credential::ApiKey(&text)).await.code(),
            Code::Stale
        );
        assert_eq!(stale.verify(Credential::Missing).await.code(), Code::Stale);

        let serving = Verifier::with_parts(
            Arc::clone(verifier.replica()),
            Arc::new(Freshness::new(Duration::from_secs(60), StalePolicy::Serve)),
            None,
            0,
            Metrics::register(),
        );
        assert_eq!(
            serving.verify(Credential::ApiKey(&text)).await.code(),
            Code::Valid
        );
    }

    #[tokio::test]
    async fn sessions_get_full_verdicts_with_stale_first() {
        use keygate_proto::session::{SessionClaims, SessionSigner};

        use crate::sessions::tests::{event, signing_key};

        let replica = Arc::new(Replica::new());
        let signer = SessionSigner::generate("sk_1");
        replica
            .apply(&event(1, signing_key("sk_1", signer.public_key(), None)))
            .expect("in order");
        let now = keygate_proto::time::now_unix_ms();
        let token = signer.sign(&SessionClaims {
            session_id: "ses_1".into(),
            user_id: "alice".into(),
            passkey_id: "pk_1".into(),
            issued_unix_ms: now - 1_000,
            expires_unix_ms: now + 3_600_000,
        });
        let verifier = Verifier::new(Arc::clone(&replica));
        match verifier.verify(Credential::Session(&token)).await {
            Verdict::Valid(Grant::Session(session)) => {
                assert_eq!(session.user_id(), "alice");
                assert_eq!(session.session_id(), "ses_1");
            }
            other => panic!("expected a valid session, got {other:?}"),
        }
        assert_eq!(
            verifier.verify(Credential::ApiKey(&token)).await.code(),
            Code::Malformed,
            "a session token is not a key"
        );
        let stale = Verifier::with_parts(
            replica,
            Arc::new(Freshness::new(
                Duration::from_secs(60),
                StalePolicy::FailClosed,
            )),
            None,
            16,
            Metrics::register(),
        );
        assert_eq!(
            stale.verify(Credential::Session(&token)).await.code(),
            Code::Stale
        );
    }

    #[test]
    fn statuses_match_the_contract() {
        let expected = [
            (Code::Valid, None),
            (Code::Missing, Some(401)),
            (Code::Malformed, Some(401)),
            (Code::NotFound, Some(401)),
            (Code::Disabled, Some(403)),
            (Code::Expired, Some(401)),
            (Code::Revoked, Some(401)),
            (Code::Stale, Some(503)),
        ];
        for (code, status) in expected {
            assert_eq!(
                code.status().map(|status| status.as_u16()),
                status,
                "{code:?}"
            );
            assert_eq!(Code::ALL[code as usize], code);
        }
    }
}
