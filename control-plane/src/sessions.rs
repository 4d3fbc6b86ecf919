//! Passkey sessions on the control plane's side: signing keys (created on first start, rotated
//! without downtime, revoked), signing a session token once a ceremony has opened a session
//! row, checking a presented token for the self-service endpoints, and pruning what no token
//! can match any more.
//!
//! A token is PASETO v4.public (see `keygate_proto::session`); it names its session, user and
//! passkey, and its signing key by id. Gateways verify it with the public keys they replicate;
//! the control plane checks the same signature and the same rule on its times
//! ([`SessionClaims::check_times`], with the signing key's own session lifetime), and, beyond
//! that, its own rows: the signing key not revoked, the session not revoked, the user there and
//! enabled and not signed out everywhere since, the passkey not removed.
//!
//! Each signing key records the session lifetime it signs with (the configured one when it was
//! made), and gateways learn it with the key. A control plane starting with another
//! `session_lifetime` than its current key's rotates the key once
//! ([`Sessions::rotate_for_lifetime`]), so that gateways that stay connected hear the new
//! lifetime through an ordinary signing-key event.

use std::sync::Arc;
use std::time::Duration;

use keygate_proto::session::{self, SessionClaims, SessionSigner, TimeRefusal};
use keygate_proto::time::now_unix_ms;
use tokio_util::sync::CancellationToken;

use crate::ids;
use crate::store::{
    Rotated, SessionRecord, SigningKeyRecord, SigningKeyRevoked, Store, StoreError,
};

/// The audit actor of what the control plane does by itself.
pub const SYSTEM_ACTOR: &str = "system";
/// How often expired rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Why a presented session token is refused. The codes are the gateway's verdict codes.
#[derive(Debug, thiserror::Error)]
pub enum SessionRefusal {
    /// Not a token, a signature that does not verify, an unknown signing key, or times no
    /// control plane issues (more than the clock skew in the future, longer than the session
    /// lifetime).
    #[error("the session token is not valid")]
    Malformed,
    /// Past its expiry.
    #[error("the session has expired; sign in again")]
    Expired,
    /// The session, its passkey or its user was revoked (or the user is disabled), or its
    /// signing key was revoked, or retired past its verify-until time.
    #[error("the session was revoked; sign in again")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SessionRefusal {
    /// The error code in JSON bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "MALFORMED",
            Self::Expired => "EXPIRED",
            Self::Revoked => "REVOKED",
            Self::Store(_) => "INTERNAL",
        }
    }
}

/// A session that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub session_id: String,
    pub user_id: String,
    pub passkey_id: String,
    pub expires_unix_ms: i64,
}

/// A signed session token and the expiry it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedToken {
    pub token: String,
    /// The session's expiry, or earlier when the current key signs a shorter lifetime than the
    /// one the session was opened with ([`SigningKeyRecord::token_expiry`]).
    pub expires_unix_ms: i64,
}

/// Session signing, checking and rotation over the store.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn Store>,
    lifetime: Duration,
}

impl Sessions {
    /// Sessions lasting `lifetime` from sign-in.
    pub fn new(store: Arc<dyn Store>, lifetime: Duration) -> Self {
        Self { store, lifetime }
    }

    /// How long a session lasts, which is also how long a revocation must be remembered.
    pub fn lifetime_ms(&self) -> i64 {
        i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX)
    }

    /// Creates the first signing key if there is none (one `SigningKey` event).
    pub async fn ensure_signing_key(&self) -> Result<SigningKeyRecord, StoreError> {
        let key = self
            .store
            .ensure_signing_key(self.new_signing_key(), SYSTEM_ACTOR)
            .await?;
        tracing::debug!(key_id = %key.key_id, "session signing key ready");
        Ok(key)
    }

    /// Rotates the signing key when the current one signs another session lifetime than this
    /// control plane's (or says none: a key from before keys recorded it); called once at
    /// start. `None` when it does, or when there is no key yet (the first comes with the first
    /// user). The check is made in the rotation's transaction, so replicas starting at once
    /// with the same lifetime rotate once between them, and a restart with the same lifetime
    /// changes nothing. Replicas configured with different lifetimes do not loop: each rotates
    /// only when it starts, so the last one to start sets the lifetime every replica signs
    /// with ([`SigningKeyRecord::token_expiry`]).
    pub async fn rotate_for_lifetime(&self) -> Result<Option<Rotated>, StoreError> {
        let retire_until = now_unix_ms().saturating_add(self.lifetime_ms());
        let rotated = self
            .store
            .rotate_signing_key_for_lifetime(self.new_signing_key(), retire_until, SYSTEM_ACTOR)
            .await?;
        if let Some(rotated) = &rotated {
            let retired = rotated.retired.as_ref();
            tracing::info!(
                key_id = %rotated.current.key_id,
                retired_key_id = retired.map(|key| key.key_id.as_str()),
                retired_lifetime_ms = retired.and_then(|key| key.max_session_lifetime_ms),
                session_lifetime_ms = self.lifetime_ms(),
                revision = %rotated.revision,
                "session_lifetime differs from the signing key's: rotated the signing key"
            );
        }
        Ok(rotated)
    }

    /// Signs the token of a session the store has just opened, with the current key. Its
    /// expiry is the session's, cut to the key's own lifetime: a key made by a replica with a
    /// shorter `session_lifetime` never signs a token that gateways would refuse as too long.
    pub async fn sign(&self, session: &SessionRecord) -> Result<SignedToken, StoreError> {
        let key = match self.store.current_signing_key().await? {
            Some(key) => key,
            None => self.ensure_signing_key().await?,
        };
        let expires_unix_ms = key.token_expiry(session.issued_unix_ms, session.expires_unix_ms);
        let signer = SessionSigner::from_secret(key.key_id, key.secret);
        let token = signer.sign(&SessionClaims {
            session_id: session.session_id.clone(),
            user_id: session.user_id.clone(),
            passkey_id: session.passkey_id.clone(),
            issued_unix_ms: session.issued_unix_ms,
            expires_unix_ms,
        });
        Ok(SignedToken {
            token,
            expires_unix_ms,
        })
    }

    /// Checks a presented token: signature, expiry, and the stored state.
    pub async fn authenticate(&self, token: &str) -> Result<SignedIn, SessionRefusal> {
        let unverified = session::parse(token).map_err(|_| SessionRefusal::Malformed)?;
        let key = self
            .store
            .signing_key(unverified.key_id())
            .await?
            .ok_or(SessionRefusal::Malformed)?;
        let claims = unverified
            .verify(&key.public_key)
            .map_err(|_| SessionRefusal::Malformed)?;
        let now = now_unix_ms();
        // The gateways' rule, with the key's own lifetime, which they are sent with it.
        match claims.check_times(now, key.max_session_lifetime_ms) {
            Ok(()) => {}
            Err(TimeRefusal::Expired) => return Err(SessionRefusal::Expired),
            Err(refusal) => {
                tracing::info!(
                    reason = refusal.reason(),
                    key_id = %key.key_id,
                    session_id = %claims.session_id,
                    "session token refused for its times"
                );
                return Err(SessionRefusal::Malformed);
            }
        }
        // A revoked key's tokens are all refused; a key retired by a rotation verifies only
        // until its verify-until time, and after that its tokens are revoked (as the gateways
        // say too).
        if key.revoked_unix_ms.is_some()
            || key.verify_until_unix_ms.is_some_and(|until| until <= now)
        {
            return Err(SessionRefusal::Revoked);
        }
        let context = self
            .store
            .session_context(&claims.session_id)
            .await?
            .ok_or(SessionRefusal::Revoked)?;
        let session = &context.session;
        if session.user_id != claims.user_id || session.passkey_id != claims.passkey_id {
            return Err(SessionRefusal::Malformed);
        }
        let user_ok = context.user.as_ref().is_some_and(|user| {
            !user.disabled && claims.issued_unix_ms >= user.sessions_revoked_before_unix_ms
        });
        if session.revoked_unix_ms.is_some() || !user_ok || !context.passkey_exists {
            return Err(SessionRefusal::Revoked);
        }
        Ok(SignedIn {
            session_id: claims.session_id,
            user_id: claims.user_id,
            passkey_id: claims.passkey_id,
            expires_unix_ms: claims.expires_unix_ms,
        })
    }

    /// Makes a new key current; the old one verifies its tokens until they have all expired.
    pub async fn rotate(&self, actor: &str) -> Result<Rotated, StoreError> {
        let retire_until = now_unix_ms().saturating_add(self.lifetime_ms());
        self.store
            .rotate_signing_key(self.new_signing_key(), retire_until, actor)
            .await
    }

    /// Every signing key still kept, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.store.list_signing_keys().await
    }

    /// Revokes a signing key: every token it signed is refused from the revision the outcome
    /// names on. The key is kept until its last token has expired (its own lifetime after now
    /// when it is the current key, which a new key then replaces).
    pub async fn revoke_signing_key(
        &self,
        key_id: &str,
        actor: &str,
    ) -> Result<SigningKeyRevoked, StoreError> {
        self.store
            .revoke_signing_key(key_id, self.new_signing_key(), self.lifetime_ms(), actor)
            .await
    }

    /// Prunes expired rows every minute until `stop`.
    pub async fn prune_periodically(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.store.prune(now_unix_ms()).await {
                Ok(pruned) => tracing::debug!(?pruned, "pruned session state"),
                Err(error) => tracing::error!(%error, "pruning session state failed"),
            }
        }
    }

    /// A fresh signing key record that signs this control plane's lifetime; the store sets its
    /// creation time.
    fn new_signing_key(&self) -> SigningKeyRecord {
        let signer = SessionSigner::generate(ids::signing_key_id());
        SigningKeyRecord {
            key_id: signer.key_id().to_owned(),
            secret: signer.secret(),
            public_key: signer.public_key(),
            created_unix_ms: 0,
            verify_until_unix_ms: None,
            revoked_unix_ms: None,
            max_session_lifetime_ms: Some(self.lifetime_ms()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event_log::EventLog;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        NewEnrollment, NewPasskey, NewSession, Registered, RegisteredVia, Registration,
    };

    const HOUR_MS: i64 = 3_600_000;
    const LIFETIME_MS: i64 = 12 * HOUR_MS;

    struct Setup {
        sessions: Sessions,
        store: Arc<dyn Store>,
        _dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let event_log = Arc::new(EventLog::new(1024));
        let store = SqliteStore::open(&dir.path().join("keygate.db"), event_log as _)
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let lifetime = Duration::from_millis(LIFETIME_MS as u64);
        Setup {
            sessions: Sessions::new(Arc::clone(&store), lifetime),
            store,
            _dir: dir,
        }
    }

    impl Setup {
        /// Alice enrolls a passkey, which opens a session; returns it and its token.
        async fn signed_in(&self) -> (SessionRecord, String) {
            let store = &*self.store;
            store.create_user("alice", [1; 16], "admin").await.unwrap();
            let token_hash = [7; 32];
            store
                .create_enrollment(
                    NewEnrollment {
                        enrollment_id: "enr_1".into(),
                        token_hash,
                        user_id: "alice".into(),
                        expires_unix_ms: now_unix_ms() + HOUR_MS,
                    },
                    "admin",
                )
                .await
                .unwrap();
            let registered = store
                .register_passkey(
                    Registration {
                        passkey: NewPasskey {
                            passkey_id: "pk_1".into(),
                            user_id: "alice".into(),
                            credential_id: vec![1; 16],
                            name: "laptop".into(),
                            user_agent: "test".into(),
                            backup_eligible: true,
                            backed_up: false,
                            credential_json: "{}".into(),
                            aaguid: [0; 16],
                        },
                        via: RegisteredVia::Enrollment { token_hash },
                        session: Some(NewSession {
                            session_id: "ses_1".into(),
                            lifetime_ms: LIFETIME_MS,
                            user_agent: "test".into(),
                        }),
                    },
                    "alice",
                )
                .await
                .unwrap();
            let Registered::Done {
                session: Some(session),
                ..
            } = registered
            else {
                panic!("{registered:?}");
            };
            let token = self.sessions.sign(&session).await.unwrap().token;
            (session, token)
        }

        /// A token for `session` with other times, signed with the stored key `key_id`: what
        /// a control plane with another clock or lifetime (or a thief of the key) would make.
        async fn token_with_times(
            &self,
            key_id: &str,
            session: &SessionRecord,
            issued_unix_ms: i64,
            expires_unix_ms: i64,
        ) -> String {
            let key = self.store.signing_key(key_id).await.unwrap().unwrap();
            SessionSigner::from_secret(key.key_id, key.secret).sign(&SessionClaims {
                session_id: session.session_id.clone(),
                user_id: session.user_id.clone(),
                passkey_id: session.passkey_id.clone(),
                issued_unix_ms,
                expires_unix_ms,
            })
        }

        async fn code(&self, token: &str) -> &'static str {
            match self.sessions.authenticate(token).await {
                Ok(signed_in) => {
                    assert_eq!(signed_in.user_id, "alice");
                    "OK"
                }
                Err(refusal) => refusal.code(),
            }
        }
    }

    #[tokio::test]
    async fn tokens_issued_in_the_future_or_living_longer_than_the_lifetime_are_malformed() {
        let setup = setup().await;
        let (session, token) = setup.signed_in().await;
        assert_eq!(setup.code(&token).await, "OK");
        assert_eq!(
            session.expires_unix_ms - session.issued_unix_ms,
            LIFETIME_MS,
            "a session lives exactly the lifetime"
        );
        let key_id = setup
            .store
            .current_signing_key()
            .await
            .unwrap()
            .unwrap()
            .key_id;
        let now = now_unix_ms();
        let minute = 60_000;
        for (issued, expires, expected) in [
            // Within the clock skew: fine.
            (now + minute / 2, now + HOUR_MS, "OK"),
            (now + 5 * minute, now + HOUR_MS, "MALFORMED"),
            (
                session.issued_unix_ms,
                session.issued_unix_ms + LIFETIME_MS,
                "OK",
            ),
            (
                session.issued_unix_ms,
                session.issued_unix_ms + LIFETIME_MS + 1,
                "MALFORMED",
            ),
            (now - HOUR_MS, now + 365 * 24 * HOUR_MS, "MALFORMED"),
            (now - 2 * HOUR_MS, now - HOUR_MS, "EXPIRED"),
        ] {
            let token = setup
                .token_with_times(&key_id, &session, issued, expires)
                .await;
            assert_eq!(
                setup.code(&token).await,
                expected,
                "issued {issued}, expires {expires}"
            );
        }
    }

    #[tokio::test]
    async fn a_new_lifetime_rotates_once_and_tokens_never_outlive_their_keys_lifetime() {
        let setup = setup().await;
        let (session, token) = setup.signed_in().await;
        let first = setup.store.current_signing_key().await.unwrap().unwrap();
        assert_eq!(first.max_session_lifetime_ms, Some(LIFETIME_MS));
        // The same lifetime: nothing to do.
        assert_eq!(setup.sessions.rotate_for_lifetime().await.unwrap(), None);

        // A replica configured with one hour starts: one rotation, to a key signing one hour.
        let short = Sessions::new(
            Arc::clone(&setup.store),
            Duration::from_millis(HOUR_MS as u64),
        );
        let rotated = short.rotate_for_lifetime().await.unwrap().unwrap();
        assert_eq!(rotated.current.max_session_lifetime_ms, Some(HOUR_MS));
        let retired = rotated.retired.unwrap();
        assert_eq!(
            (retired.key_id.as_str(), retired.max_session_lifetime_ms),
            (first.key_id.as_str(), Some(LIFETIME_MS))
        );
        assert_eq!(short.rotate_for_lifetime().await.unwrap(), None);

        // The 12-hour replica's session, signed with the one-hour key, is cut to one hour (and
        // verifies); a 12-hour token of that key would not. The old key's token still does.
        let signed = setup.sessions.sign(&session).await.unwrap();
        assert_eq!(signed.expires_unix_ms, session.issued_unix_ms + HOUR_MS);
        let claims = session::parse(&signed.token)
            .unwrap()
            .verify(&rotated.current.public_key)
            .unwrap();
        assert_eq!(claims.expires_unix_ms, signed.expires_unix_ms);
        assert_eq!(setup.code(&signed.token).await, "OK");
        let too_long = setup
            .token_with_times(
                &rotated.current.key_id,
                &session,
                session.issued_unix_ms,
                session.expires_unix_ms,
            )
            .await;
        assert_eq!(setup.code(&too_long).await, "MALFORMED");
        assert_eq!(setup.code(&token).await, "OK");
    }

    #[tokio::test]
    async fn a_revoked_signing_key_refuses_its_sessions_and_its_successor_signs() {
        let setup = setup().await;
        let (session, token) = setup.signed_in().await;
        assert_eq!(setup.code(&token).await, "OK");
        let old = setup.store.current_signing_key().await.unwrap().unwrap();

        let revoked = setup
            .sessions
            .revoke_signing_key(&old.key_id, "admin")
            .await
            .unwrap();
        let SigningKeyRevoked::Revoked {
            key,
            current,
            replaced: true,
            ..
        } = revoked
        else {
            panic!("{revoked:?}");
        };
        assert_eq!(key.key_id, old.key_id);
        assert_ne!(current.key_id, old.key_id);
        let revoked_at = key.revoked_unix_ms.unwrap();
        assert_eq!(key.verify_until_unix_ms, Some(revoked_at + LIFETIME_MS));

        assert_eq!(setup.code(&token).await, "REVOKED");
        // The session itself is fine: signed again, by the new current key, it works.
        let resigned = setup.sessions.sign(&session).await.unwrap().token;
        assert_eq!(setup.code(&resigned).await, "OK");
        assert!(matches!(
            setup
                .sessions
                .revoke_signing_key(&old.key_id, "admin")
                .await
                .unwrap(),
            SigningKeyRevoked::AlreadyRevoked { .. }
        ));
        let mut listed: Vec<(String, bool, bool)> = setup
            .sessions
            .signing_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|key| {
                (
                    key.key_id.clone(),
                    key.is_current(),
                    key.revoked_unix_ms.is_some(),
                )
            })
            .collect();
        listed.sort();
        let mut expected = [(current.key_id, true, false), (old.key_id, false, true)];
        expected.sort();
        assert_eq!(listed, expected);
    }
}
