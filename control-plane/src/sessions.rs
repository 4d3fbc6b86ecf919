//! Passkey sessions on the control plane's side: signing keys (created on first start, rotated
//! without downtime), signing a session token once a ceremony has opened a session row, checking
//! a presented token for the self-service endpoints, and pruning what no token can match any
//! more.
//!
//! A token is PASETO v4.public (see `keygate_proto::session`); it names its session, user and
//! passkey, and its signing key by id. Gateways verify it with the public keys they replicate;
//! the control plane checks the same signature and, beyond that, its own rows: the session not
//! revoked, the user there and enabled and not signed out everywhere since, the passkey not
//! removed.

use std::sync::Arc;
use std::time::Duration;

use keygate_proto::session::{self, SessionClaims, SessionSigner};
use keygate_proto::time::now_unix_ms;
use tokio_util::sync::CancellationToken;

use crate::ids;
use crate::store::{Rotated, SessionRecord, SigningKeyRecord, Store, StoreError};

/// The audit actor of what the control plane does by itself.
pub const SYSTEM_ACTOR: &str = "system";
/// How often expired rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Why a presented session token is refused. The codes are the gateway's verdict codes.
#[derive(Debug, thiserror::Error)]
pub enum SessionRefusal {
    /// Not a token, a signature that does not verify, an unknown signing key.
    #[error("the session token is not valid")]
    Malformed,
    /// Past its expiry.
    #[error("the session has expired; sign in again")]
    Expired,
    /// The session, its passkey or its user was revoked (or the user is disabled), or its
    /// signing key was retired past its verify-until time.
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
            .ensure_signing_key(new_signing_key(), SYSTEM_ACTOR)
            .await?;
        tracing::debug!(key_id = %key.key_id, "session signing key ready");
        Ok(key)
    }

    /// Signs the token of a session the store has just opened, with the current key.
    pub async fn sign(&self, session: &SessionRecord) -> Result<String, StoreError> {
        let key = match self.store.current_signing_key().await? {
            Some(key) => key,
            None => self.ensure_signing_key().await?,
        };
        let signer = SessionSigner::from_secret(key.key_id, key.secret);
        Ok(signer.sign(&SessionClaims {
            session_id: session.session_id.clone(),
            user_id: session.user_id.clone(),
            passkey_id: session.passkey_id.clone(),
            issued_unix_ms: session.issued_unix_ms,
            expires_unix_ms: session.expires_unix_ms,
        }))
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
        if claims.expires_unix_ms <= now {
            return Err(SessionRefusal::Expired);
        }
        // A key retired by a rotation verifies only until its verify-until time; after that
        // its tokens are revoked (as the gateways say too).
        if key.verify_until_unix_ms.is_some_and(|until| until <= now) {
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
            .rotate_signing_key(new_signing_key(), retire_until, actor)
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
}

/// A fresh signing key record; the store sets its creation time.
fn new_signing_key() -> SigningKeyRecord {
    let signer = SessionSigner::generate(ids::signing_key_id());
    SigningKeyRecord {
        key_id: signer.key_id().to_owned(),
        secret: signer.secret(),
        public_key: signer.public_key(),
        created_unix_ms: 0,
        verify_until_unix_ms: None,
    }
}
