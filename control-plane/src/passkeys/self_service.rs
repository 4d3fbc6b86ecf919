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
//! - Limits: every call takes a token from its client address's bucket ([`SelfService::admit`]),
//!   and once the user is known (signed in, named at sign-in, or behind an enrollment link or a
//!   passkey) one from the user's.
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

use super::refusal::Refusal;
use crate::ceremonies::{CEREMONY_TTL, Ceremonies, MAX_CEREMONIES, Taken};
use crate::ids;
use crate::rate_limit::{Rate, RateLimiter};
use crate::sessions::{SessionRefusal, Sessions, SignedIn};
use crate::store::{
    LoggedIn, Login, NewPasskey, NewSession, PasskeyRecord, PasskeyRemoval, PasskeyRemoved,
    Registered, RegisteredVia, Registration, SessionRecord, Store,
};
use crate::users::clean_passkey_name;
use crate::webauthn::{LoginState, RelyingParty, VerifiedPasskey};

/// Longest `User-Agent` kept with a passkey or a session.
const MAX_USER_AGENT_CHARS: usize = 256;

/// How fast one client and one user may call the passkey endpoints.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per minute per client address (0: unlimited).
    pub per_address: Rate,
    /// Requests per minute per user (0: unlimited).
    pub per_user: Rate,
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
        /// The user named at begin, if any.
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
    per_address: RateLimiter<IpAddr>,
    per_user: RateLimiter<String>,
}

impl SelfService {
    pub fn new(
        store: Arc<dyn Store>,
        relying_party: RelyingParty,
        sessions: Sessions,
        limits: &Limits,
    ) -> Self {
        Self {
            ceremonies: Ceremonies::new(Arc::clone(&store), CEREMONY_TTL, MAX_CEREMONIES),
            store,
            relying_party,
            sessions,
            per_address: RateLimiter::new(limits.per_address),
            per_user: RateLimiter::new(limits.per_user),
        }
    }

    /// The relying party (its origin is the only one the page's requests may come from).
    pub fn relying_party(&self) -> &RelyingParty {
        &self.relying_party
    }

    /// Takes a token from `client`'s bucket; every call of the API does, first.
    pub fn admit(&self, client: IpAddr) -> Result<(), Refusal> {
        limited(self.per_address.check(client))
    }

    /// The caller's session (`token`, if one was presented), checked, and a token from the
    /// user's bucket.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<SignedIn, Refusal> {
        let token = token.ok_or(Refusal::NotSignedIn)?;
        let signed_in = self.sessions.authenticate(token).await?;
        self.limit_user(&signed_in.user_id)?;
        Ok(signed_in)
    }

    /// Begins registering a passkey named `name` through the enrollment link whose token is
    /// `token`. The link is checked (known, unused, unexpired) but not consumed: the finish
    /// consumes it in the transaction that stores the passkey.
    pub async fn begin_enrollment(
        &self,
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
        if enrollment.used_unix_ms.is_some() {
            return Err(Refusal::EnrollmentUsed);
        }
        if enrollment.expires_unix_ms <= now_unix_ms() {
            return Err(Refusal::EnrollmentExpired);
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
            Registered::UserDisabled | Registered::SessionInvalid => Err(Refusal::UserDisabled),
            Registered::CredentialExists => Err(Refusal::CredentialExists),
        }
    }

    /// Begins a sign-in: for the named user's passkeys, or (no user) with any discoverable one.
    /// An unknown or disabled user gets a discoverable ceremony like anyone else, so begin does
    /// not tell who exists; the finish refuses.
    pub async fn begin_login(&self, user_id: Option<String>) -> Result<Begun, Refusal> {
        let user_id = user_id.filter(|id| !id.is_empty());
        let passkeys = match &user_id {
            Some(user_id) => {
                self.limit_user(user_id)?;
                match self.store.get_user(user_id).await? {
                    Some(user) if !user.disabled => self.store.list_passkeys(user_id).await?,
                    _ => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        let (public_key, state) = self
            .relying_party
            .start_authentication(Some(passkeys.as_slice()))?;
        self.begun(Pending::Login { user_id, state }, public_key)
            .await
    }

    /// Finishes a sign-in: the answering passkey must be registered, belong to the user named
    /// at begin (if any) and carry its user's handle; then a session is opened.
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
        let passkey = self
            .store
            .passkey_by_credential_id(&credential_id)
            .await?
            .ok_or(Refusal::AuthenticationFailed(
                "this passkey is not registered (any more)",
            ))?;
        if named
            .as_ref()
            .is_some_and(|named| *named != passkey.user_id)
        {
            return Err(Refusal::AuthenticationFailed(
                "this passkey belongs to another user",
            ));
        }
        self.limit_user(&passkey.user_id)?;
        let user = self
            .store
            .get_user(&passkey.user_id)
            .await?
            .ok_or(Refusal::AuthenticationFailed("this passkey's user is gone"))?;
        let discoverable = matches!(state, LoginState::Discoverable(_));
        match handle {
            Some(handle) if handle != user.handle => {
                return Err(Refusal::AuthenticationFailed(
                    "the passkey's user handle does not match its user",
                ));
            }
            None if discoverable => {
                return Err(Refusal::MalformedCredential(
                    "a discoverable sign-in must return the user handle".into(),
                ));
            }
            _ => {}
        }
        if user.disabled {
            return Err(Refusal::UserDisabled);
        }
        let updated = self
            .relying_party
            .finish_authentication(credential, state, &passkey)?;
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
            LoggedIn::PasskeyGone => Err(Refusal::AuthenticationFailed(
                "this passkey is not registered (any more)",
            )),
            LoggedIn::UserDisabled => Err(Refusal::UserDisabled),
        }
    }

    /// The signed-in user's passkeys, oldest first.
    pub async fn passkeys(&self, signed_in: &SignedIn) -> Result<Vec<PasskeyRecord>, Refusal> {
        Ok(self.store.list_passkeys(&signed_in.user_id).await?)
    }

    /// Begins adding a passkey named `name` for the signed-in user; only this session may
    /// finish it.
    pub async fn begin_adding(
        &self,
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
            | Registered::EnrollmentExpired => Err(Refusal::UserDisabled),
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

    fn limit_user(&self, user_id: &str) -> Result<(), Refusal> {
        limited(self.per_user.check(user_id.to_owned()))
    }

    /// Keeps a ceremony until its finish.
    async fn begun(&self, pending: Pending, public_key: Value) -> Result<Begun, Refusal> {
        let ceremony_id = self
            .ceremonies
            .insert(&pending)
            .await?
            .map_err(Refusal::TooManyCeremonies)?;
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
        let token = self.sessions.sign(&session).await?;
        Ok(IssuedSession {
            user_id: session.user_id,
            passkey_id: session.passkey_id,
            token,
            expires_unix_ms: session.expires_unix_ms,
        })
    }
}

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
            per_address: Rate { per_minute: 0 },
            per_user: Rate { per_minute: 0 },
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
                .begin_enrollment(token, Some("laptop"), "test agent")
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
            let begun = self.rules.begin_login(None).await?;
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
                .begin_adding(signed_in, Some("phone"), "phone agent")
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
        let again = setup.rules.begin_enrollment(&token, None, "").await;
        assert!(matches!(again, Err(Refusal::EnrollmentUsed)), "{again:?}");
    }

    #[tokio::test]
    async fn enrollment_refusals_come_before_any_ceremony() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let long_name = "n".repeat(65);
        let refused = setup
            .rules
            .begin_enrollment(&token, Some(&long_name), "")
            .await;
        assert!(
            matches!(refused, Err(Refusal::InvalidName(_))),
            "{refused:?}"
        );
        let refused = setup
            .rules
            .begin_enrollment("no-such-token", None, "")
            .await;
        assert!(
            matches!(refused, Err(Refusal::EnrollmentNotFound)),
            "{refused:?}"
        );
        setup
            .users
            .set_enabled("alice", false, "admin")
            .await
            .unwrap();
        let refused = setup.rules.begin_enrollment(&token, None, "").await;
        // Disabling a user voids their links, or (if the link survives) refuses the user.
        assert!(
            matches!(
                refused,
                Err(Refusal::UserDisabled | Refusal::EnrollmentUsed | Refusal::EnrollmentNotFound)
            ),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_discoverable_sign_in_opens_a_session_and_its_finish_works_once() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let device = Device::new(ORIGIN);
        let enrolled = setup.enroll(&device, &token).await;

        let begun = setup.rules.begin_login(None).await.unwrap();
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
    async fn a_sign_in_for_a_named_user_refuses_another_users_passkey() {
        let setup = setup(unlimited()).await;
        let (alice, bob) = (Device::new(ORIGIN), Device::new(ORIGIN));
        let token = setup.user_with_link("alice").await;
        setup.enroll(&alice, &token).await;
        let token = setup.user_with_link("bob").await;
        setup.enroll(&bob, &token).await;

        // Unknown users get a ceremony too: begin does not tell who exists.
        setup
            .rules
            .begin_login(Some("nobody".into()))
            .await
            .unwrap();
        let begun = setup.rules.begin_login(Some("alice".into())).await.unwrap();
        // Bob's device answers a discoverable-style request with his own passkey.
        let mut options = begun.public_key.clone();
        options["allowCredentials"] = Value::Array(Vec::new());
        let credential = bob.get(&options).await;
        let refused = setup
            .rules
            .finish_login(&begun.ceremony_id, &parsed(credential), "")
            .await;
        assert!(
            matches!(
                refused,
                Err(Refusal::AuthenticationFailed(
                    "this passkey belongs to another user"
                ))
            ),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_ceremony_answered_in_the_wrong_flow_is_unknown_and_gone() {
        let setup = setup(unlimited()).await;
        let token = setup.user_with_link("alice").await;
        let device = Device::new(ORIGIN);
        let begun = setup
            .rules
            .begin_enrollment(&token, None, "")
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
        let begun = setup.rules.begin_adding(&first, None, "").await.unwrap();
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
            per_address: Rate { per_minute: 2 },
            per_user: Rate { per_minute: 2 },
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

        for _ in 0..2 {
            setup.rules.begin_login(Some("carol".into())).await.unwrap();
        }
        let refused = setup.rules.begin_login(Some("carol".into())).await;
        assert!(
            matches!(refused, Err(Refusal::RateLimited(_))),
            "{refused:?}"
        );
        setup.rules.begin_login(Some("dave".into())).await.unwrap();
        setup.rules.begin_login(None).await.unwrap();
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
