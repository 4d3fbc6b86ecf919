//! The self-service rules behind the passkey page (DESIGN.md, "Passkeys and sessions"): enroll
//! from a link, sign in (for a named user or with a discoverable passkey), list, add and remove
//! one's own passkeys, sign out. Plain async methods over the store, the relying party and the
//! session signer that return domain outcomes or a [`Refusal`]; the HTTP layer
//! (`http/passkey_api.rs`) only extracts, calls these and maps the outcome to a response.
//!
//! - Ceremonies: a begin keeps its state in the store ([`Ceremonies`]) and answers the WebAuthn
//!   options; the finish, on any replica, takes that state out exactly once (before any WebAuthn
//!   check), so a replayed finish finds nothing. A ceremony answered in the wrong flow, or an add begun
//!   in another session, is unknown.
//! - Limits: every call takes a token from its client's bucket ([`SelfService::admit`]: the
//!   address, an IPv6 one per /64), and a call made *as* a user (signed in, or holding the
//!   user's enrollment link) one from the user's. An unauthenticated caller never spends a
//!   user's bucket: naming a user at sign-in, or answering with their credential id, charges
//!   only the caller's own, so nobody can lock a user out. Ceremonies in progress are capped
//!   per client as well as in all ([`Ceremonies`]).
//! - Sign-in is discoverable whether or not a user is named, so begin answers the same shape
//!   for a user who exists, one who does not, and none; a named user is remembered, and the
//!   finish refuses another user's passkey exactly as it refuses an unknown one.
//! - Flows: refusals that depend on stored state (a used link, the last passkey, a disabled
//!   user, a credential registered twice) are decided by the store inside its transaction and
//!   come back as outcomes, mapped here to refusals.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keygate_proto::Revision;
use keygate_proto::time::now_unix_ms;
use serde_json::Value;
use webauthn_rs::prelude::{PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential};

use super::policy::PasskeyPolicy;
use super::providers::Providers;
use super::refusal::Refusal;
use keygate_ratelimit::{KeyedLimiter, Rate, client_bucket};

use crate::ceremonies::{CEREMONY_TTL, Ceremonies, MAX_CEREMONIES, Taken};
use crate::ids;
use crate::sessions::{SessionRefusal, Sessions, SignedIn};
use crate::store::{
    CeremonyLimits, LoggedIn, Login, NewPasskey, NewSession, PasskeyRecord, PasskeyRemoval,
    PasskeyRemoved, PasskeyRename, PasskeyRenamed, Registered, RegisteredVia, Registration,
    SessionRecord, Store,
};
use crate::users::{MAX_USER_ID_CHARS, clean_new_passkey_name, clean_passkey_name};
use crate::webauthn::{LoginState, RelyingParty, VerifiedPasskey};

/// Longest `User-Agent` kept with a passkey or a session.
const MAX_USER_AGENT_CHARS: usize = 256;
/// Most clients (and most users) whose rate buckets are remembered; past it, the least
/// recently seen are forgotten (`keygate_ratelimit::KeyedLimiter`), never everyone.
const MAX_BUCKETS: usize = 100_000;

/// How fast one client and one user may call the passkey endpoints, and how many ceremonies
/// one client may keep open.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per client address, IPv6 per /64 (`Rate::per_minute(0)`: unlimited).
    pub per_address: Rate,
    /// Requests per signed-in user (`Rate::per_minute(0)`: unlimited).
    pub per_user: Rate,
    /// Most ceremonies one client address (IPv6: /64) may have in progress (0: no cap).
    pub ceremonies_per_address: usize,
}

/// A ceremony between its begin and its finish, as kept in the store.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Pending {
    Enroll {
        user_id: String,
        token_hash: [u8; 32],
        name: String,
        user_agent: String,
        state: PasskeyRegistration,
    },
    AddPasskey {
        user_id: String,
        session_id: String,
        name: String,
        user_agent: String,
        state: PasskeyRegistration,
    },
    Login {
        /// The user named at begin, if any (only this user's passkeys may finish it).
        user_id: Option<String>,
        state: LoginState,
    },
}

/// A begun ceremony: its id and the WebAuthn `publicKey` options for the browser.
#[derive(Debug, Clone, PartialEq)]
pub struct Begun {
    pub ceremony_id: String,
    pub public_key: Value,
}

/// A session a ceremony opened, with its signed token. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedSession {
    pub user_id: String,
    pub passkey_id: String,
    pub token: String,
    pub expires_unix_ms: i64,
}

impl std::fmt::Debug for IssuedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSession")
            .field("user_id", &self.user_id)
            .field("passkey_id", &self.passkey_id)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

/// A passkey its user removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// The revision of the revocation event.
    pub revision: Revision,
    /// The removed passkey had minted the caller's own session, which has ended with it.
    pub signed_out: bool,
}

/// The self-service side of the passkeys: ceremonies in progress, rate limits, and the flows.
pub struct SelfService {
    store: Arc<dyn Store>,
    relying_party: RelyingParty,
    sessions: Sessions,
    ceremonies: Ceremonies,
    per_address: KeyedLimiter<IpAddr>,
    per_user: KeyedLimiter<String>,
    /// Which passkeys may register.
    policy: PasskeyPolicy,
    /// Provider names by AAGUID, for the listing and for refusals.
    providers: Arc<Providers>,
}

impl SelfService {
    pub fn new(
        store: Arc<dyn Store>,
        relying_party: RelyingParty,
        sessions: Sessions,
        limits: &Limits,
    ) -> Self {
        Self {
            ceremonies: Ceremonies::new(
                Arc::clone(&store),
                CEREMONY_TTL,
                CeremonyLimits {
                    capacity: MAX_CEREMONIES,
                    per_client: limits.ceremonies_per_address,
                },
            ),
            store,
            relying_party,
            sessions,
            per_address: KeyedLimiter::new(limits.per_address, MAX_BUCKETS),
            per_user: KeyedLimiter::new(limits.per_user, MAX_BUCKETS),
            policy: PasskeyPolicy::default(),
            providers: Arc::new(Providers::empty()),
        }
    }

    /// These rules, refusing registrations that break `policy` and naming providers from
    /// `providers` (by default nothing is refused and every provider is unknown).
    pub fn with_passkey_policy(self, policy: PasskeyPolicy, providers: Arc<Providers>) -> Self {
        Self {
            policy,
            providers,
            ..self
        }
    }

    /// Provider names and icons by AAGUID.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// The relying party (its origin is the only one the page's requests may come from).
    pub fn relying_party(&self) -> &RelyingParty {
        &self.relying_party
    }

    /// Takes a token from `client`'s bucket (IPv6: its /64's); every call of the API does,
    /// first.
    pub fn admit(&self, client: IpAddr) -> Result<(), Refusal> {
        limited(self.per_address.check(&client_bucket(client)))
    }

    /// The caller's session (`token`, if one was presented), checked, and then (the caller
    /// is that user) a token from the user's bucket.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<SignedIn, Refusal> {
        let token = token.ok_or(Refusal::NotSignedIn)?;
        let signed_in = self.sessions.authenticate(token).await?;
        self.limit_user(&signed_in.user_id)?;
        Ok(signed_in)
    }

    /// Begins registering a passkey named `name` through the enrollment link whose token is
    /// `token`. The link is checked (known and open: not used, expired, revoked or voided) but
    /// not consumed: the finish checks it again and consumes it in the transaction that
    /// stores the passkey. `client` began it. Holding the link's secret makes the caller that
    /// user, so this charges the user's bucket.
    pub async fn begin_enrollment(
        &self,
        client: IpAddr,
        token: &str,
        name: Option<&str>,
        user_agent: &str,
    ) -> Result<Begun, Refusal> {
        let name = passkey_name(name)?;
        let token_hash = ids::token_hash(token);
        let enrollment = self
            .store
            .enrollment_by_token_hash(token_hash)
            .await?
            .ok_or(Refusal::EnrollmentNotFound)?;
        if let Some(refused) = Refusal::for_link(enrollment.state(now_unix_ms())) {
            return Err(refused);
        }
        self.limit_user(&enrollment.user_id)?;
        let user = self
            .store
            .get_user(&enrollment.user_id)
            .await?
            .filter(|user| !user.disabled)
            .ok_or(Refusal::UserDisabled)?;
        let existing = self.store.list_passkeys(&user.user_id).await?;
        let (public_key, state) = self.relying_party.start_registration(&user, &existing)?;
        self.begun(
            client,
            Pending::Enroll {
                user_id: user.user_id,
                token_hash,
                name,
                user_agent: clean_user_agent(user_agent),
                state,
            },
            public_key,
        )
        .await
    }

    /// Finishes an enrollment: stores the passkey, consumes the link and signs the user in.
    pub async fn finish_enrollment(
        &self,
        ceremony_id: &str,
        credential: &RegisterPublicKeyCredential,
    ) -> Result<IssuedSession, Refusal> {
        let Pending::Enroll {
            user_id,
            token_hash,
            name,
            user_agent,
            state,
        } = self.take(ceremony_id).await?
        else {
            return Err(Refusal::CeremonyUnknown);
        };
        let verified = self.relying_party.finish_registration(credential, &state)?;
        self.admissible(&verified)?;
        let registration = Registration {
            passkey: new_passkey(&user_id, name, user_agent.clone(), verified),
            via: RegisteredVia::Enrollment { token_hash },
            session: Some(self.new_session(user_agent)),
        };
        match self
            .store
            .register_passkey(registration, &user_actor(&user_id))
            .await?
        {
            Registered::Done {
                passkey,
                session: Some(session),
            } => {
                tracing::info!(user_id = %passkey.user_id, passkey_id = %passkey.passkey_id, "passkey enrolled");
                self.issue(session).await
            }
            Registered::Done { session: None, .. } => Err(Refusal::Internal(
                "an enrollment stored its passkey but opened no session",
            )),
            Registered::EnrollmentUsed => Err(Refusal::EnrollmentUsed),
            Registered::EnrollmentExpired => Err(Refusal::EnrollmentExpired),
            Registered::EnrollmentRevoked => Err(Refusal::EnrollmentRevoked),
            Registered::EnrollmentVoided => Err(Refusal::EnrollmentVoided),
            Registered::UserDisabled | Registered::SessionInvalid => Err(Refusal::UserDisabled),
            Registered::CredentialExists => Err(Refusal::CredentialExists),
        }
    }

    /// Begins a sign-in for `client`, always discoverable (any of the site's passkeys may
    /// answer). Whether `user_id` names a user who exists, one who does not, or nobody, the
    /// answer has the same fields and sizes and the store is not asked, so begin tells nobody
    /// who exists. A named user is kept in the ceremony for the finish. Nothing is charged to
    /// the named user: the caller is not them (yet).
    pub async fn begin_login(
        &self,
        client: IpAddr,
        user_id: Option<String>,
    ) -> Result<Begun, Refusal> {
        // No user id is longer than MAX_USER_ID_CHARS, so one char more still names nobody,
        // and bounds what the ceremony keeps.
        let user_id = user_id
            .filter(|id| !id.is_empty())
            .map(|id| id.chars().take(MAX_USER_ID_CHARS + 1).collect());
        let (public_key, state) = self.relying_party.start_authentication()?;
        self.begun(client, Pending::Login { user_id, state }, public_key)
            .await
    }

    /// Finishes a sign-in: the answering passkey must be registered, belong to the user named
    /// at begin (if any; another user's passkey is refused exactly as an unknown one, so the
    /// finish does not tell either whether a credential exists) and carry its user's handle;
    /// then a session is opened.
    pub async fn finish_login(
        &self,
        ceremony_id: &str,
        credential: &PublicKeyCredential,
        user_agent: &str,
    ) -> Result<IssuedSession, Refusal> {
        let Pending::Login {
            user_id: named,
            state,
        } = self.take(ceremony_id).await?
        else {
            return Err(Refusal::CeremonyUnknown);
        };
        let (credential_id, handle) = self.relying_party.identify(credential);
        // No per-user charge here: the credential id is not a secret, and its signature is
        // not checked yet, so the caller may not be this user.
        let passkey = self
            .store
            .passkey_by_credential_id(&credential_id)
            .await?
            .filter(|passkey| named.as_ref().is_none_or(|named| *named == passkey.user_id))
            .ok_or(Refusal::AuthenticationFailed(NOT_REGISTERED))?;
        let user = self
            .store
            .get_user(&passkey.user_id)
            .await?
            .ok_or(Refusal::AuthenticationFailed("this passkey's user is gone"))?;
        match handle {
            Some(handle) if handle != user.handle => {
                return Err(Refusal::AuthenticationFailed(
                    "the passkey's user handle does not match its user",
                ));
            }
            None => {
                return Err(Refusal::MalformedCredential(
                    "a discoverable sign-in must return the user handle".into(),
                ));
            }
            Some(_) => {}
        }
        let updated = self
            .relying_party
            .finish_authentication(credential, state, &passkey)?;
        // Only after the signature: whoever merely knows a credential id learns nothing of
        // its user's state.
        if user.disabled {
            return Err(Refusal::UserDisabled);
        }
        let login = Login {
            passkey_id: passkey.passkey_id.clone(),
            updated_credential: updated,
            session: self.new_session(clean_user_agent(user_agent)),
        };
        match self
            .store
            .record_login(login, &user_actor(&passkey.user_id))
            .await?
        {
            LoggedIn::Done(session) => self.issue(session).await,
            LoggedIn::PasskeyGone => Err(Refusal::AuthenticationFailed(NOT_REGISTERED)),
            LoggedIn::UserDisabled => Err(Refusal::UserDisabled),
        }
    }

    /// The signed-in user's passkeys, oldest first.
    pub async fn passkeys(&self, signed_in: &SignedIn) -> Result<Vec<PasskeyRecord>, Refusal> {
        Ok(self.store.list_passkeys(&signed_in.user_id).await?)
    }

    /// The signed-in user's WebAuthn user handle (the `user.id` of the creation options), which
    /// the page hands to the WebAuthn Signal API with the credential ids it may keep.
    pub async fn user_handle(&self, signed_in: &SignedIn) -> Result<[u8; 16], Refusal> {
        let user = self
            .store
            .get_user(&signed_in.user_id)
            .await?
            .ok_or(Refusal::UserDisabled)?;
        Ok(user.handle)
    }

    /// Begins adding a passkey named `name` for the signed-in user, from `client`; only this
    /// session may finish it.
    pub async fn begin_adding(
        &self,
        client: IpAddr,
        signed_in: &SignedIn,
        name: Option<&str>,
        user_agent: &str,
    ) -> Result<Begun, Refusal> {
        let name = passkey_name(name)?;
        let user = self
            .store
            .get_user(&signed_in.user_id)
            .await?
            .ok_or(Refusal::UserDisabled)?;
        let existing = self.store.list_passkeys(&user.user_id).await?;
        let (public_key, state) = self.relying_party.start_registration(&user, &existing)?;
        self.begun(
            client,
            Pending::AddPasskey {
                user_id: user.user_id,
                session_id: signed_in.session_id.clone(),
                name,
                user_agent: clean_user_agent(user_agent),
                state,
            },
            public_key,
        )
        .await
    }

    /// Finishes adding a passkey; the session that began it must still be valid when it is
    /// stored.
    pub async fn finish_adding(
        &self,
        signed_in: &SignedIn,
        ceremony_id: &str,
        credential: &RegisterPublicKeyCredential,
    ) -> Result<PasskeyRecord, Refusal> {
        let Pending::AddPasskey {
            user_id,
            session_id,
            name,
            user_agent,
            state,
        } = self.take(ceremony_id).await?
        else {
            return Err(Refusal::CeremonyUnknown);
        };
        // Another session's ceremony is none of this one's business.
        if session_id != signed_in.session_id {
            return Err(Refusal::CeremonyUnknown);
        }
        let verified = self.relying_party.finish_registration(credential, &state)?;
        self.admissible(&verified)?;
        let registration = Registration {
            passkey: new_passkey(&user_id, name, user_agent, verified),
            via: RegisteredVia::Session { session_id },
            session: None,
        };
        match self
            .store
            .register_passkey(registration, &user_actor(&user_id))
            .await?
        {
            Registered::Done { passkey, .. } => {
                tracing::info!(user_id = %passkey.user_id, passkey_id = %passkey.passkey_id, "passkey added");
                Ok(*passkey)
            }
            Registered::SessionInvalid => Err(SessionRefusal::Revoked.into()),
            Registered::UserDisabled
            | Registered::EnrollmentUsed
            | Registered::EnrollmentExpired
            | Registered::EnrollmentRevoked
            | Registered::EnrollmentVoided => Err(Refusal::UserDisabled),
            Registered::CredentialExists => Err(Refusal::CredentialExists),
        }
    }

    /// Removes one of the signed-in user's passkeys, never the last, revoking every session it
    /// minted (the caller's own too, when it is the one).
    pub async fn remove_passkey(
        &self,
        signed_in: &SignedIn,
        passkey_id: &str,
    ) -> Result<Removed, Refusal> {
        if !ids::is_valid("pk", passkey_id) {
            return Err(Refusal::PasskeyNotFound(passkey_id.to_owned()));
        }
        let removal = PasskeyRemoval {
            user_id: signed_in.user_id.clone(),
            passkey_id: passkey_id.to_owned(),
            prune_after_unix_ms: now_unix_ms().saturating_add(self.sessions.lifetime_ms()),
            keep_last: true,
            action: "passkey.remove",
        };
        match self
            .store
            .remove_passkey(removal, &user_actor(&signed_in.user_id))
            .await?
        {
            PasskeyRemoved::Removed { revision } => {
                tracing::info!(user_id = %signed_in.user_id, %passkey_id, %revision, "passkey removed by its user");
                Ok(Removed {
                    revision,
                    signed_out: signed_in.passkey_id == passkey_id,
                })
            }
            PasskeyRemoved::NotFound => Err(Refusal::PasskeyNotFound(passkey_id.to_owned())),
            PasskeyRemoved::LastPasskey => Err(Refusal::LastPasskey),
        }
    }

    /// Gives one of the signed-in user's passkeys a new device name (1 to 64 characters, no
    /// control characters). Someone else's passkey is not found, as for a removal.
    pub async fn rename_passkey(
        &self,
        signed_in: &SignedIn,
        passkey_id: &str,
        name: &str,
    ) -> Result<PasskeyRecord, Refusal> {
        if !ids::is_valid("pk", passkey_id) {
            return Err(Refusal::PasskeyNotFound(passkey_id.to_owned()));
        }
        let name = clean_new_passkey_name(name).map_err(Refusal::InvalidName)?;
        let rename = PasskeyRename {
            user_id: signed_in.user_id.clone(),
            passkey_id: passkey_id.to_owned(),
            name,
            action: "passkey.rename",
        };
        match self
            .store
            .rename_passkey(rename, &user_actor(&signed_in.user_id))
            .await?
        {
            PasskeyRenamed::Renamed(passkey) => {
                tracing::info!(user_id = %signed_in.user_id, %passkey_id, "passkey renamed by its user");
                Ok(*passkey)
            }
            PasskeyRenamed::NotFound => Err(Refusal::PasskeyNotFound(passkey_id.to_owned())),
        }
    }

    /// Ends the caller's session. The revision of its revocation, or `None` when it had ended
    /// already.
    pub async fn sign_out(&self, signed_in: &SignedIn) -> Result<Option<Revision>, Refusal> {
        let revision = self
            .store
            .revoke_session(&signed_in.session_id, &user_actor(&signed_in.user_id))
            .await?;
        tracing::info!(user_id = %signed_in.user_id, session_id = %signed_in.session_id, "signed out");
        Ok(revision)
    }

    /// Refuses a verified passkey that the policy does not admit, before anything is stored
    /// (the enrollment link stays unused).
    fn admissible(&self, verified: &VerifiedPasskey) -> Result<(), Refusal> {
        let aaguid = Some(verified.aaguid);
        self.policy
            .judge(aaguid, verified.backup_eligible)
            .map_err(|violation| {
                let reason = violation.explain(self.providers.name(aaguid), aaguid);
                tracing::info!(%reason, "passkey registration refused by the policy");
                Refusal::PolicyRefused(reason.to_string())
            })
    }

    /// Takes a token from `user_id`'s bucket: only for calls made as that user.
    fn limit_user(&self, user_id: &str) -> Result<(), Refusal> {
        limited(self.per_user.check(&user_id.to_owned()))
    }

    /// Keeps a ceremony begun by `client` until its finish.
    async fn begun(
        &self,
        client: IpAddr,
        pending: Pending,
        public_key: Value,
    ) -> Result<Begun, Refusal> {
        let ceremony_id = self.ceremonies.insert(&pending, client).await??;
        Ok(Begun {
            ceremony_id,
            public_key,
        })
    }

    /// Takes a ceremony out of the store: whatever happens next, it cannot be answered again.
    async fn take(&self, ceremony_id: &str) -> Result<Pending, Refusal> {
        match self.ceremonies.take(ceremony_id).await? {
            Taken::Found(pending) => Ok(pending),
            Taken::Unknown => Err(Refusal::CeremonyUnknown),
            Taken::Expired => Err(Refusal::CeremonyExpired),
        }
    }

    fn new_session(&self, user_agent: String) -> NewSession {
        NewSession {
            session_id: ids::session_id(),
            lifetime_ms: self.sessions.lifetime_ms(),
            user_agent,
        }
    }

    /// Signs the token of a session the store has just opened.
    async fn issue(&self, session: SessionRecord) -> Result<IssuedSession, Refusal> {
        let signed = self.sessions.sign(&session).await?;
        Ok(IssuedSession {
            user_id: session.user_id,
            passkey_id: session.passkey_id,
            token: signed.token,
            expires_unix_ms: signed.expires_unix_ms,
        })
    }
}

/// The refusal of an unknown passkey, and of another user's than the one named at begin.
const NOT_REGISTERED: &str = "this passkey is not registered (any more)";

fn limited(check: Result<(), Duration>) -> Result<(), Refusal> {
    check.map_err(Refusal::RateLimited)
}

fn passkey_name(name: Option<&str>) -> Result<String, Refusal> {
    clean_passkey_name(name.unwrap_or_default()).map_err(Refusal::InvalidName)
}

/// A `User-Agent` as kept: no control characters, at most 256 characters.
fn clean_user_agent(user_agent: &str) -> String {
    user_agent
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_AGENT_CHARS)
        .collect()
}

/// The audit actor of what a user does to their own account.
fn user_actor(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The passkey a verified registration stores, under a fresh id.
fn new_passkey(
    user_id: &str,
    name: String,
    user_agent: String,
    verified: VerifiedPasskey,
) -> NewPasskey {
    NewPasskey {
        passkey_id: ids::passkey_id(),
        user_id: user_id.to_owned(),
        credential_id: verified.credential_id,
        name,
        user_agent,
        backup_eligible: verified.backup_eligible,
        backed_up: verified.backed_up,
        credential_json: verified.credential_json,
        aaguid: verified.aaguid,
    }
}

#[cfg(test)]
#[path = "../../../benches/src/authenticator.rs"]
#[allow(dead_code)]
mod authenticator;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde::de::DeserializeOwned;

    use super::authenticator::Device;
    use super::*;
    use crate::event_log::EventLog;
    use crate::store::sqlite::SqliteStore;
    use crate::users::Users;

    const ORIGIN: &str = "http://localhost:7080";
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// The rules over a fresh SQLite store, and the operator side to make users and links.
    struct Setup {
        rules: SelfService,
        users: Users,
        _dir: tempfile::TempDir,
    }

    async fn setup(limits: Limits) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let event_log = Arc::new(EventLog::new(1024));
        let store = SqliteStore::open(&dir.path().join("keygate.db"), event_log as _)
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let relying_party = RelyingParty::new("localhost", ORIGIN).unwrap();
        let sessions = Sessions::new(Arc::clone(&store), Duration::from_secs(3600));
        let users = Users::new(Arc::clone(&store), sessions.clone(), relying_party.origin());
        Setup {
            rules: SelfService::new(store, relying_party, sessions, &limits),
            users,
            _dir: dir,
        }
    }

    fn unlimited() -> Limits {
        Limits {
            per_address: Rate::per_minute(0),
            per_user: Rate::per_minute(0),
            ceremonies_per_address: 0,
        }
    }

    /// The credential JSON the page would post, in the library's type.
    fn parsed<T: DeserializeOwned>(credential: Value) -> T {
        serde_json::from_value(credential).unwrap()
    }

    impl Setup {
        /// A new user and the token of an enrollment link for them.
        async fn user_with_link(&self, user_id: &str) -> String {
            self.users.create(user_id, "admin").await.unwrap();
            self.enrollment_token(user_id).await
        }

        async fn enrollment_token(&self, user_id: &str) -> String {
            let issued = self
                .users
                .create_enrollment(user_id, None, "admin")
                .await
                .unwrap();
            issued.link.split_once("#enroll=").unwrap().1.to_owned()
        }

        /// Enrolls `device` through the link `token`; the session it opens.
        async fn enroll(&self, device: &Device, token: &str) -> IssuedSession {
            let begun = self
                .rules
                .begin_enrollment(CLIENT, token, Some("laptop"), "test agent")
                .await
                .unwrap();
            let credential = device.create(&begun.public_key).await;
            self.rules
                .finish_enrollment(&begun.ceremony_id, &parsed(credential))
                .await
                .unwrap()
        }

        /// A discoverable sign-in with `device`.
        async fn login(&self, device: &Device) -> Result<IssuedSession, Refusal> {
            let begun = self.rules.begin_login(CLIENT, None).await?;
            let credential = device.get(&begun.public_key).await;
            self.rules
                .finish_login(&begun.ceremony_id, &parsed(credential), "test agent")
                .await
        }

        async fn signed_in(&self, session: &IssuedSession) -> Result<SignedIn, Refusal> {
            self.rules.authenticate(Some(&session.token)).await
        }

        /// Adds a passkey on `device` for the signed-in user.
        async fn add(&self, signed_in: &SignedIn, device: &Device) -> PasskeyRecord {
            let begun = self
                .rules
                .begin_adding(CLIENT, signed_in, Some("phone"), "phone agent")
                .await
                .unwrap();
            let credential = device.create(&begun.public_key).await;
            self.rules
                .finish_adding(signed_in, &begun.ceremony_id, &parsed(credential))
                .await
                .unwrap()
        }
    }

    #[tokio::test]
    async fn an_enrollment_link_signs_in_once() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let device = Device::new(ORIGIN);
        let session = setup.enroll(&device, &token).await;
        assert_eq!(session.user_id, "alice");
        assert!(
            !format!("{session:?}").contains(&session.token),
            "Debug hides the token"
        );
        let signed_in = setup.signed_in(&session).await.unwrap();
        assert_eq!(signed_in.passkey_id, session.passkey_id);
        let passkeys = setup.rules.passkeys(&signed_in).await.unwrap();
        assert_eq!(passkeys.len(), 1);
        assert_eq!(
            (passkeys[0].name.as_str(), passkeys[0].user_agent.as_str()),
            ("laptop", "test agent")
        );
        let again = setup.rules.begin_enrollment(CLIENT, &token, None, "").await;
        assert!(matches!(again, Err(Refusal::EnrollmentUsed)), "{again:?}");
    }

    #[tokio::test]
    async fn enrollment_refusals_come_before_any_ceremony() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let long_name = "n".repeat(65);
        let refused = setup
            .rules
            .begin_enrollment(CLIENT, &token, Some(&long_name), "")
            .await;
        assert!(
            matches!(refused, Err(Refusal::InvalidName(_))),
            "{refused:?}"
        );
        let refused = setup
            .rules
            .begin_enrollment(CLIENT, "no-such-token", None, "")
            .await;
        assert!(
            matches!(refused, Err(Refusal::EnrollmentNotFound)),
            "{refused:?}"
        );
        // Disabling a user voids their open links (USER_DISABLED), and enabling them again
        // revives none.
        for enabled in [false, true] {
            setup
                .users
                .set_enabled("alice", enabled, "admin")
                .await
                .unwrap();
            let refused = setup.rules.begin_enrollment(CLIENT, &token, None, "").await;
            assert!(
                matches!(&refused, Err(Refusal::EnrollmentVoided)),
                "{refused:?}"
            );
            assert_eq!(refused.unwrap_err().code(), "USER_DISABLED");
        }
    }

    #[tokio::test]
    async fn a_discoverable_sign_in_opens_a_session_and_its_finish_works_once() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let device = Device::new(ORIGIN);
        let enrolled = setup.enroll(&device, &token).await;

        let begun = setup.rules.begin_login(CLIENT, None).await.unwrap();
        let credential = parsed::<PublicKeyCredential>(device.get(&begun.public_key).await);
        let session = setup
            .rules
            .finish_login(&begun.ceremony_id, &credential, "agent")
            .await
            .unwrap();
        assert_eq!(
            (session.user_id.as_str(), session.passkey_id.as_str()),
            ("alice", enrolled.passkey_id.as_str())
        );
        setup.signed_in(&session).await.unwrap();
        let replay = setup
            .rules
            .finish_login(&begun.ceremony_id, &credential, "agent")
            .await;
        assert!(
            matches!(replay, Err(Refusal::CeremonyUnknown)),
            "{replay:?}"
        );
    }

    #[tokio::test]
    async fn only_a_verified_signature_learns_that_a_user_is_disabled() {
        let setup = setup(unlimited()).await;
        let alice = Device::new(ORIGIN);
        let token = setup.user_with_link("alice").await;
        setup.enroll(&alice, &token).await;
        setup
            .users
            .set_enabled("alice", false, "test")
            .await
            .unwrap();

        // Alice's credential id, signed over another ceremony's challenge: whoever replays it
        // holds no signature for this ceremony.
        let first = setup.rules.begin_login(CLIENT, None).await.unwrap();
        let second = setup.rules.begin_login(CLIENT, None).await.unwrap();
        let replayed = alice.get(&second.public_key).await;
        let refusal = setup
            .rules
            .finish_login(&first.ceremony_id, &parsed(replayed), "test agent")
            .await
            .unwrap_err();
        assert_ne!(refusal.code(), "USER_DISABLED", "{refusal}");

        // Alice herself, with a good signature, is told.
        let refusal = setup.login(&alice).await.unwrap_err();
        assert_eq!(refusal.code(), "USER_DISABLED", "{refusal}");
    }

    #[tokio::test]
    async fn a_sign_in_for_a_named_user_refuses_another_users_passkey_as_unknown() {
        let setup = setup(unlimited()).await;
        let (alice, bob, stranger) = (
            Device::new(ORIGIN),
            Device::new(ORIGIN),
            Device::new(ORIGIN),
        );
        let token = setup.user_with_link("alice").await;
        setup.enroll(&alice, &token).await;
        let token = setup.user_with_link("bob").await;
        setup.enroll(&bob, &token).await;
        // A passkey this site never registered (enrolled nowhere).
        let _ = stranger
            .create(
                &setup
                    .rules
                    .relying_party()
                    .start_registration(
                        &crate::store::UserRecord {
                            user_id: "stranger".into(),
                            handle: [9; 16],
                            created_unix_ms: 0,
                            disabled: false,
                            sessions_revoked_before_unix_ms: 0,
                            state_prune_after_unix_ms: 0,
                        },
                        &[],
                    )
                    .unwrap()
                    .0,
            )
            .await;

        let refusal = |outcome: Result<IssuedSession, Refusal>| match outcome {
            Err(refusal) => (refusal.code(), refusal.to_string()),
            Ok(session) => panic!("signed in as {}", session.user_id),
        };
        // Bob's passkey, for a sign-in naming alice.
        let begun = setup
            .rules
            .begin_login(CLIENT, Some("alice".into()))
            .await
            .unwrap();
        let credential = bob.get(&begun.public_key).await;
        let another_users = refusal(
            setup
                .rules
                .finish_login(&begun.ceremony_id, &parsed(credential), "")
                .await,
        );
        // A passkey nobody registered.
        let begun = setup
            .rules
            .begin_login(CLIENT, Some("alice".into()))
            .await
            .unwrap();
        let credential = stranger.get(&begun.public_key).await;
        let unknown = refusal(
            setup
                .rules
                .finish_login(&begun.ceremony_id, &parsed(credential), "")
                .await,
        );
        assert_eq!(
            another_users, unknown,
            "the same refusal: nothing to tell them apart"
        );
        assert_eq!(unknown.0, "AUTHENTICATION_FAILED");

        // Alice's own passkey signs in for her, named or not.
        let begun = setup
            .rules
            .begin_login(CLIENT, Some("alice".into()))
            .await
            .unwrap();
        let credential = alice.get(&begun.public_key).await;
        let session = setup
            .rules
            .finish_login(&begun.ceremony_id, &parsed(credential), "")
            .await
            .unwrap();
        assert_eq!(session.user_id, "alice");
    }

    #[tokio::test]
    async fn begin_looks_the_same_for_an_existing_a_missing_and_no_user() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        setup.enroll(&Device::new(ORIGIN), &token).await;
        let shape = |begun: Begun| {
            let mut options = begun.public_key;
            // The challenge is random; only its length may be compared.
            let challenge = options["challenge"].take();
            (
                begun.ceremony_id.len(),
                challenge.as_str().map(str::len),
                options,
            )
        };
        let existing = shape(
            setup
                .rules
                .begin_login(CLIENT, Some("alice".into()))
                .await
                .unwrap(),
        );
        let missing = shape(
            setup
                .rules
                .begin_login(CLIENT, Some("nobody".into()))
                .await
                .unwrap(),
        );
        let none = shape(setup.rules.begin_login(CLIENT, None).await.unwrap());
        assert_eq!(existing, missing);
        assert_eq!(existing, none);
        let empty = existing.2["allowCredentials"]
            .as_array()
            .is_none_or(Vec::is_empty);
        assert!(empty, "no credentials listed: {}", existing.2);
    }

    #[tokio::test]
    async fn a_ceremony_answered_in_the_wrong_flow_is_unknown_and_gone() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let device = Device::new(ORIGIN);
        let begun = setup
            .rules
            .begin_enrollment(CLIENT, &token, None, "")
            .await
            .unwrap();
        let credential =
            parsed::<RegisterPublicKeyCredential>(device.create(&begun.public_key).await);
        let session = {
            // Another device enrolls through a second link, to have a session.
            let other = Device::new(ORIGIN);
            let token = setup.enrollment_token("alice").await;
            setup.enroll(&other, &token).await
        };
        let signed_in = setup.signed_in(&session).await.unwrap();
        let wrong = setup
            .rules
            .finish_adding(&signed_in, &begun.ceremony_id, &credential)
            .await;
        assert!(matches!(wrong, Err(Refusal::CeremonyUnknown)), "{wrong:?}");
        let late = setup
            .rules
            .finish_enrollment(&begun.ceremony_id, &credential)
            .await;
        assert!(
            matches!(late, Err(Refusal::CeremonyUnknown)),
            "taken by the wrong finish: {late:?}"
        );
    }

    #[tokio::test]
    async fn only_the_session_that_began_an_add_may_finish_it() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let laptop = Device::new(ORIGIN);
        let first = setup.enroll(&laptop, &token).await;
        let second = setup.login(&laptop).await.unwrap();
        let (first, second) = (
            setup.signed_in(&first).await.unwrap(),
            setup.signed_in(&second).await.unwrap(),
        );
        let phone = Device::new(ORIGIN);
        let begun = setup
            .rules
            .begin_adding(CLIENT, &first, None, "")
            .await
            .unwrap();
        let credential = phone.create(&begun.public_key).await;
        let stolen = setup
            .rules
            .finish_adding(&second, &begun.ceremony_id, &parsed(credential))
            .await;
        assert!(
            matches!(stolen, Err(Refusal::CeremonyUnknown)),
            "{stolen:?}"
        );
        assert_eq!(setup.rules.passkeys(&first).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_last_passkey_stays_and_removing_the_sessions_own_signs_it_out() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let (laptop, phone) = (Device::new(ORIGIN), Device::new(ORIGIN));
        let on_laptop = setup.enroll(&laptop, &token).await;
        let signed_in = setup.signed_in(&on_laptop).await.unwrap();
        let added = setup.add(&signed_in, &phone).await;
        assert_eq!(
            (added.user_id.as_str(), added.name.as_str()),
            ("alice", "phone")
        );

        let malformed = setup.rules.remove_passkey(&signed_in, "pk_nope").await;
        assert!(
            matches!(malformed, Err(Refusal::PasskeyNotFound(_))),
            "{malformed:?}"
        );
        let removed = setup
            .rules
            .remove_passkey(&signed_in, &on_laptop.passkey_id)
            .await
            .unwrap();
        assert!(removed.signed_out, "the session's own passkey");
        let after = setup.signed_in(&on_laptop).await;
        assert!(
            matches!(after, Err(Refusal::Session(SessionRefusal::Revoked))),
            "{after:?}"
        );
        // The laptop's passkey is gone; the phone signs in and cannot remove its last one.
        let refused = setup.login(&laptop).await;
        assert!(
            matches!(refused, Err(Refusal::AuthenticationFailed(_))),
            "{refused:?}"
        );
        let on_phone = setup.login(&phone).await.unwrap();
        let signed_in = setup.signed_in(&on_phone).await.unwrap();
        let last = setup
            .rules
            .remove_passkey(&signed_in, &added.passkey_id)
            .await;
        assert!(matches!(last, Err(Refusal::LastPasskey)), "{last:?}");
    }

    #[tokio::test]
    async fn a_user_renames_their_own_passkey_only_and_never_to_nothing() {
        let setup = setup(unlimited()).await;
        let alice = setup.user_with_link("alice").await;
        let bob = setup.user_with_link("bob").await;
        let (alices, bobs) = (Device::new(ORIGIN), Device::new(ORIGIN));
        let alice = setup
            .signed_in(&setup.enroll(&alices, &alice).await)
            .await
            .unwrap();
        let bob = setup
            .signed_in(&setup.enroll(&bobs, &bob).await)
            .await
            .unwrap();

        let renamed = setup
            .rules
            .rename_passkey(&alice, &alice.passkey_id, "  work laptop ")
            .await
            .unwrap();
        assert_eq!(renamed.name, "work laptop");
        assert_eq!(renamed.passkey_id, alice.passkey_id);
        let listed = setup.rules.passkeys(&alice).await.unwrap();
        assert_eq!(listed, [renamed]);

        let someone_elses = setup
            .rules
            .rename_passkey(&bob, &alice.passkey_id, "mine now")
            .await;
        assert!(
            matches!(someone_elses, Err(Refusal::PasskeyNotFound(_))),
            "{someone_elses:?}"
        );
        for bad in ["", "   ", &"x".repeat(65), "tab\there"] {
            let refused = setup.rules.rename_passkey(&bob, &bob.passkey_id, bad).await;
            assert!(
                matches!(&refused, Err(refusal) if refusal.code() == "INVALID_NAME"),
                "{bad:?}: {refused:?}"
            );
        }
        let unchanged = setup.rules.passkeys(&bob).await.unwrap();
        assert_eq!(unchanged[0].name, "laptop");
        assert_eq!(
            setup.rules.passkeys(&alice).await.unwrap()[0].name,
            "work laptop"
        );
    }

    #[tokio::test]
    async fn signing_out_revokes_the_session() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let session = setup.enroll(&Device::new(ORIGIN), &token).await;
        let signed_in = setup.signed_in(&session).await.unwrap();
        assert!(setup.rules.sign_out(&signed_in).await.unwrap().is_some());
        let after = setup.signed_in(&session).await;
        assert!(
            matches!(after, Err(Refusal::Session(SessionRefusal::Revoked))),
            "{after:?}"
        );
        let none = setup.rules.authenticate(None).await;
        assert!(matches!(none, Err(Refusal::NotSignedIn)), "{none:?}");
        let garbage = setup.rules.authenticate(Some("v4.public.garbage")).await;
        assert!(
            matches!(garbage, Err(Refusal::Session(SessionRefusal::Malformed))),
            "{garbage:?}"
        );
    }

    #[tokio::test]
    async fn addresses_and_users_have_their_own_buckets() {
        let setup = setup(Limits {
            per_address: Rate::per_minute(2),
            per_user: Rate::per_minute(2),
            ceremonies_per_address: 0,
        })
        .await;
        setup.rules.admit(CLIENT).unwrap();
        setup.rules.admit(CLIENT).unwrap();
        let refused = setup.rules.admit(CLIENT);
        assert!(
            matches!(refused, Err(Refusal::RateLimited(wait)) if wait > Duration::ZERO),
            "{refused:?}"
        );
        setup
            .rules
            .admit(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)))
            .unwrap();
        // IPv6 clients count per /64.
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        setup.rules.admit(ip("2001:db8::1")).unwrap();
        setup.rules.admit(ip("2001:db8::2")).unwrap();
        assert!(setup.rules.admit(ip("2001:db8::3")).is_err());
        setup.rules.admit(ip("2001:db8:0:1::1")).unwrap();
    }

    #[tokio::test]
    async fn naming_a_user_never_spends_their_bucket_only_their_own_calls_do() {
        let setup = setup(Limits {
            per_address: Rate::per_minute(0),
            per_user: Rate::per_minute(2),
            ceremonies_per_address: 0,
        })
        .await;
        let token = setup.user_with_link("carol").await;
        let device = Device::new(ORIGIN);
        // The link's holder is carol: enrolling spends one of her two.
        setup.enroll(&device, &token).await;
        // Anyone may name carol at sign-in as often as the address limit allows.
        for _ in 0..50 {
            setup
                .rules
                .begin_login(CLIENT, Some("carol".into()))
                .await
                .unwrap();
        }
        // She still signs in, and her own calls are what her bucket counts.
        let session = setup.login(&device).await.unwrap();
        setup.signed_in(&session).await.unwrap();
        let refused = setup.signed_in(&session).await;
        assert!(
            matches!(refused, Err(Refusal::RateLimited(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn user_agents_are_kept_short_and_printable() {
        assert_eq!(clean_user_agent("a\u{0}b\nc"), "abc");
        assert_eq!(
            clean_user_agent(&"x".repeat(1000)).len(),
            MAX_USER_AGENT_CHARS
        );
    }
}
