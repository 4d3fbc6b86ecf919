//! The passkey HTTP JSON API and the self-service page (DESIGN.md, "Passkeys and sessions"):
//!
//! - `POST /v1/enroll/begin {"token","name"?}`, `POST /v1/enroll/finish {"ceremonyId","credential"}`
//! - `POST /v1/login/begin {"userId"?}`, `POST /v1/login/finish {"ceremonyId","credential"}`
//! - signed in (cookie `keygate_session` or `Authorization: Bearer`): `GET /v1/me/passkeys`,
//!   `POST /v1/me/passkeys/begin {"name"?}` + `/finish`, `DELETE /v1/me/passkeys/{id}`,
//!   `POST /v1/logout`
//! - `GET /` (and `/app.js`): the page.
//!
//! Every refusal is `{"error":{"code","message"}}` with a 4xx status. Bodies are bounded, state
//! changes from a browser must come from the relying party's own origin, and every endpoint is
//! rate-limited per client address and, once the user is known, per user.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HeaderMap,
    HeaderValue, ORIGIN, RETRY_AFTER, SET_COOKIE, USER_AGENT,
};
use hyper::{Method, Request, Response, StatusCode};
use keygate_proto::time::now_unix_ms;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use webauthn_rs::prelude::{PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential};

use crate::ceremonies::{CEREMONY_TTL, Ceremonies, MAX_CEREMONIES, Taken};
use crate::ids;
use crate::rate_limit::{Rate, RateLimiter};
use crate::sessions::{SessionRefusal, Sessions, SignedIn};
use crate::store::passkeys::{
    LoggedIn, Login, NewPasskey, NewSession, PasskeyRecord, PasskeyRemoval, PasskeyRemoved,
    Registered, RegisteredVia, Registration,
};
use crate::store::{Store, StoreError};
use crate::users::clean_passkey_name;
use crate::webauthn::{CeremonyError, LoginState, RelyingParty};

/// The session cookie's name (the gateway reads the same one).
pub const SESSION_COOKIE: &str = "keygate_session";
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `User-Agent` kept with a passkey.
const MAX_USER_AGENT_CHARS: usize = 256;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
/// The page loads nothing from elsewhere and runs no inline script.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

type Reply = Response<Full<Bytes>>;

/// How the passkey endpoints are configured.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Requests per minute per client address (0: unlimited).
    pub per_address: Rate,
    /// Requests per minute per user (0: unlimited).
    pub per_user: Rate,
}

/// A ceremony between its begin and its finish.
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

/// The passkey API's state.
pub struct PasskeyApi {
    store: Arc<dyn Store>,
    relying_party: RelyingParty,
    sessions: Sessions,
    ceremonies: Ceremonies<Pending>,
    per_address: RateLimiter<IpAddr>,
    per_user: RateLimiter<String>,
    secure_cookie: bool,
}

/// A refusal: status, code, message (and, for 429, when to retry).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
    clear_cookie: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            clear_cookie: false,
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see the control plane's log",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "passkey endpoint failed in the store");
        Self::internal()
    }
}

impl From<CeremonyError> for ApiError {
    fn from(error: CeremonyError) -> Self {
        let status = match error.code {
            "INTERNAL" => StatusCode::INTERNAL_SERVER_ERROR,
            "AUTHENTICATION_FAILED" => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, error.code, error.message)
    }
}

impl From<SessionRefusal> for ApiError {
    fn from(refusal: SessionRefusal) -> Self {
        match refusal {
            SessionRefusal::Store(error) => error.into(),
            refusal => {
                let mut error = Self::new(
                    StatusCode::UNAUTHORIZED,
                    refusal.code(),
                    refusal.to_string(),
                );
                error.clear_cookie = true;
                error
            }
        }
    }
}

/// `{"token","name"?}`
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnrollBegin {
    token: String,
    #[serde(default)]
    name: Option<String>,
}

/// `{"userId"?}`
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LoginBegin {
    #[serde(default)]
    user_id: Option<String>,
}

/// `{"name"?}`
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AddBegin {
    #[serde(default)]
    name: Option<String>,
}

/// `{"ceremonyId","credential"}`
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Finish {
    ceremony_id: String,
    credential: Value,
}

impl Finish {
    /// The credential in the library's type; a shape it cannot read is MALFORMED_CREDENTIAL.
    fn credential<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_value(self.credential.clone()).map_err(|error| {
            ApiError::bad_request(
                "MALFORMED_CREDENTIAL",
                format!("the credential is not a WebAuthn response: {error}"),
            )
        })
    }
}

/// What a request is, once routed.
enum Endpoint<'a> {
    Page,
    Script,
    EnrollBegin,
    EnrollFinish,
    LoginBegin,
    LoginFinish,
    MyPasskeys,
    AddBegin,
    AddFinish,
    RemovePasskey(&'a str),
    Logout,
}

impl PasskeyApi {
    pub fn new(
        store: Arc<dyn Store>,
        relying_party: RelyingParty,
        sessions: Sessions,
        settings: &ApiSettings,
    ) -> Self {
        // A Secure cookie is never sent over plain HTTP, and browsers treat only localhost as
        // a secure context without TLS.
        let secure_cookie = !relying_party.is_plain_http_localhost();
        Self {
            store,
            relying_party,
            sessions,
            ceremonies: Ceremonies::new(CEREMONY_TTL, MAX_CEREMONIES),
            per_address: RateLimiter::new(settings.per_address),
            per_user: RateLimiter::new(settings.per_user),
            secure_cookie,
        }
    }

    /// Whether this module serves `path`.
    pub fn serves(path: &str) -> bool {
        path == "/" || path == "/app.js" || path == "/index.html" || path.starts_with("/v1/")
    }

    /// Answers one request from `client`.
    pub async fn handle(&self, request: Request<Incoming>, client: IpAddr) -> Reply {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        let Some((endpoint, allowed)) = route(&path, &method) else {
            return error_reply(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!(
                    "no such endpoint: {method} {}",
                    path.chars().take(200).collect::<String>()
                ),
            ));
        };
        let Some(endpoint) = endpoint else {
            let mut reply = error_reply(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("{path} answers {allowed}"),
            ));
            reply
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return reply;
        };
        let mut reply = match self.dispatch(endpoint, request, client).await {
            Ok(reply) => reply,
            Err(error) => {
                let clear_cookie = error.clear_cookie;
                let mut reply = error_reply(error);
                if clear_cookie {
                    self.clear_cookie(&mut reply);
                }
                reply
            }
        };
        reply
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        reply.headers_mut().insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        reply
    }

    async fn dispatch(
        &self,
        endpoint: Endpoint<'_>,
        request: Request<Incoming>,
        client: IpAddr,
    ) -> Result<Reply, ApiError> {
        match endpoint {
            Endpoint::Page => return Ok(page("text/html; charset=utf-8", INDEX_HTML)),
            Endpoint::Script => return Ok(page("text/javascript; charset=utf-8", APP_JS)),
            _ => {}
        }
        limited(self.per_address.check(client))?;
        if request.method() != Method::GET {
            self.check_origin(request.headers())?;
        }
        match endpoint {
            Endpoint::Page | Endpoint::Script => Err(ApiError::internal()),
            Endpoint::EnrollBegin => self.enroll_begin(request).await,
            Endpoint::EnrollFinish => self.enroll_finish(request).await,
            Endpoint::LoginBegin => self.login_begin(request).await,
            Endpoint::LoginFinish => self.login_finish(request).await,
            Endpoint::MyPasskeys => {
                let signed_in = self.signed_in(request.headers()).await?;
                self.my_passkeys(&signed_in).await
            }
            Endpoint::AddBegin => {
                let signed_in = self.signed_in(request.headers()).await?;
                self.add_begin(&signed_in, request).await
            }
            Endpoint::AddFinish => {
                let signed_in = self.signed_in(request.headers()).await?;
                self.add_finish(&signed_in, request).await
            }
            Endpoint::RemovePasskey(passkey_id) => {
                let signed_in = self.signed_in(request.headers()).await?;
                self.remove_passkey(&signed_in, passkey_id).await
            }
            Endpoint::Logout => self.logout(request.headers()).await,
        }
    }

    /// A browser sends `Origin` with every cross-origin POST or DELETE: anything but our own
    /// origin is refused, so no other site can act with the user's cookie.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match headers.get(ORIGIN) {
            None => Ok(()),
            Some(origin) if origin.as_bytes() == self.relying_party.origin().as_bytes() => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "ORIGIN_MISMATCH",
                "requests must come from the passkey page's own origin",
            )),
        }
    }

    /// The caller's session, checked, and a token from the per-user bucket.
    async fn signed_in(&self, headers: &HeaderMap) -> Result<SignedIn, ApiError> {
        let token = session_token(headers)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "MISSING", "sign in first"))?;
        let signed_in = self.sessions.authenticate(token).await?;
        limited(self.per_user.check(signed_in.user_id.clone()))?;
        Ok(signed_in)
    }

    async fn enroll_begin(&self, request: Request<Incoming>) -> Result<Reply, ApiError> {
        let user_agent = user_agent(request.headers());
        let body: EnrollBegin = read_json(request, false).await?;
        let name = passkey_name(body.name.as_deref())?;
        let token_hash = ids::token_hash(&body.token);
        let enrollment = self
            .store
            .enrollment_by_token_hash(token_hash)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "ENROLLMENT_NOT_FOUND",
                    "this enrollment link is not valid; ask for a new one",
                )
            })?;
        if enrollment.used_unix_ms.is_some() {
            return Err(ApiError::new(
                StatusCode::GONE,
                "ENROLLMENT_USED",
                "this enrollment link has been used already; ask for a new one",
            ));
        }
        if enrollment.expires_unix_ms <= now_unix_ms() {
            return Err(ApiError::new(
                StatusCode::GONE,
                "ENROLLMENT_EXPIRED",
                "this enrollment link has expired; ask for a new one",
            ));
        }
        limited(self.per_user.check(enrollment.user_id.clone()))?;
        let user = self
            .store
            .get_user(&enrollment.user_id)
            .await?
            .filter(|user| !user.disabled)
            .ok_or_else(user_disabled)?;
        let existing = self.store.list_passkeys(&user.user_id).await?;
        let (options, state) = self.relying_party.start_registration(&user, &existing)?;
        self.begun(
            Pending::Enroll {
                user_id: user.user_id,
                token_hash,
                name,
                user_agent,
                state,
            },
            options,
        )
    }

    async fn enroll_finish(&self, request: Request<Incoming>) -> Result<Reply, ApiError> {
        let body: Finish = read_json(request, false).await?;
        let credential: RegisterPublicKeyCredential = body.credential()?;
        let Pending::Enroll {
            user_id,
            token_hash,
            name,
            user_agent,
            state,
        } = self.take(&body.ceremony_id)?
        else {
            return Err(unknown_ceremony());
        };
        let verified = self
            .relying_party
            .finish_registration(&credential, &state)?;
        let registration = Registration {
            passkey: NewPasskey {
                passkey_id: ids::passkey_id(),
                user_id: user_id.clone(),
                credential_id: verified.credential_id,
                name,
                user_agent: user_agent.clone(),
                backup_eligible: verified.backup_eligible,
                backed_up: verified.backed_up,
                credential_json: verified.credential_json,
            },
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
                let token = self.sessions.sign(&session).await?;
                Ok(self.signed_in_reply(
                    &session.user_id,
                    &session.passkey_id,
                    &token,
                    session.expires_unix_ms,
                ))
            }
            Registered::Done { session: None, .. } => Err(ApiError::internal()),
            Registered::EnrollmentUsed => Err(ApiError::new(
                StatusCode::GONE,
                "ENROLLMENT_USED",
                "this enrollment link has been used already; ask for a new one",
            )),
            Registered::UserDisabled | Registered::SessionInvalid => Err(user_disabled()),
            Registered::CredentialExists => Err(credential_exists()),
        }
    }

    async fn login_begin(&self, request: Request<Incoming>) -> Result<Reply, ApiError> {
        let body: LoginBegin = read_json(request, true).await?;
        let user_id = body.user_id.filter(|id| !id.is_empty());
        // An unknown or disabled user gets a discoverable ceremony like anyone else, so begin
        // does not tell who exists; the finish refuses.
        let passkeys = match &user_id {
            Some(user_id) => {
                limited(self.per_user.check(user_id.clone()))?;
                match self.store.get_user(user_id).await? {
                    Some(user) if !user.disabled => self.store.list_passkeys(user_id).await?,
                    _ => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        let (options, state) = self
            .relying_party
            .start_authentication(Some(passkeys.as_slice()))?;
        self.begun(Pending::Login { user_id, state }, options)
    }

    async fn login_finish(&self, request: Request<Incoming>) -> Result<Reply, ApiError> {
        let user_agent = user_agent(request.headers());
        let body: Finish = read_json(request, false).await?;
        let credential: PublicKeyCredential = body.credential()?;
        let Pending::Login {
            user_id: named,
            state,
        } = self.take(&body.ceremony_id)?
        else {
            return Err(unknown_ceremony());
        };
        let (credential_id, handle) = self.relying_party.identify(&credential);
        let passkey = self
            .store
            .passkey_by_credential_id(&credential_id)
            .await?
            .ok_or_else(|| authentication_failed("this passkey is not registered (any more)"))?;
        if named
            .as_ref()
            .is_some_and(|named| *named != passkey.user_id)
        {
            return Err(authentication_failed(
                "this passkey belongs to another user",
            ));
        }
        limited(self.per_user.check(passkey.user_id.clone()))?;
        let user = self
            .store
            .get_user(&passkey.user_id)
            .await?
            .ok_or_else(|| authentication_failed("this passkey's user is gone"))?;
        let discoverable = matches!(state, LoginState::Discoverable(_));
        match handle {
            Some(handle) if handle != user.handle => {
                return Err(authentication_failed(
                    "the passkey's user handle does not match its user",
                ));
            }
            None if discoverable => {
                return Err(ApiError::bad_request(
                    "MALFORMED_CREDENTIAL",
                    "a discoverable sign-in must return the user handle",
                ));
            }
            _ => {}
        }
        if user.disabled {
            return Err(user_disabled());
        }
        let updated = self
            .relying_party
            .finish_authentication(&credential, state, &passkey)?;
        let login = Login {
            passkey_id: passkey.passkey_id.clone(),
            updated_credential: updated,
            session: self.new_session(user_agent),
        };
        match self
            .store
            .record_login(login, &user_actor(&passkey.user_id))
            .await?
        {
            LoggedIn::Done(session) => {
                let token = self.sessions.sign(&session).await?;
                Ok(self.signed_in_reply(
                    &session.user_id,
                    &session.passkey_id,
                    &token,
                    session.expires_unix_ms,
                ))
            }
            LoggedIn::PasskeyGone => Err(authentication_failed(
                "this passkey is not registered (any more)",
            )),
            LoggedIn::UserDisabled => Err(user_disabled()),
        }
    }

    async fn my_passkeys(&self, signed_in: &SignedIn) -> Result<Reply, ApiError> {
        let passkeys = self.store.list_passkeys(&signed_in.user_id).await?;
        let passkeys: Vec<Value> = passkeys.iter().map(passkey_json).collect();
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "userId": signed_in.user_id,
                "currentPasskeyId": signed_in.passkey_id,
                "sessionExpires": rfc3339(signed_in.expires_unix_ms),
                "passkeys": passkeys,
            }),
        ))
    }

    async fn add_begin(
        &self,
        signed_in: &SignedIn,
        request: Request<Incoming>,
    ) -> Result<Reply, ApiError> {
        let user_agent = user_agent(request.headers());
        let body: AddBegin = read_json(request, true).await?;
        let name = passkey_name(body.name.as_deref())?;
        let user = self
            .store
            .get_user(&signed_in.user_id)
            .await?
            .ok_or_else(user_disabled)?;
        let existing = self.store.list_passkeys(&user.user_id).await?;
        let (options, state) = self.relying_party.start_registration(&user, &existing)?;
        self.begun(
            Pending::AddPasskey {
                user_id: user.user_id,
                session_id: signed_in.session_id.clone(),
                name,
                user_agent,
                state,
            },
            options,
        )
    }

    async fn add_finish(
        &self,
        signed_in: &SignedIn,
        request: Request<Incoming>,
    ) -> Result<Reply, ApiError> {
        let body: Finish = read_json(request, false).await?;
        let credential: RegisterPublicKeyCredential = body.credential()?;
        let Pending::AddPasskey {
            user_id,
            session_id,
            name,
            user_agent,
            state,
        } = self.take(&body.ceremony_id)?
        else {
            return Err(unknown_ceremony());
        };
        // Another session's ceremony is none of this one's business.
        if session_id != signed_in.session_id {
            return Err(unknown_ceremony());
        }
        let verified = self
            .relying_party
            .finish_registration(&credential, &state)?;
        let registration = Registration {
            passkey: NewPasskey {
                passkey_id: ids::passkey_id(),
                user_id: user_id.clone(),
                credential_id: verified.credential_id,
                name,
                user_agent,
                backup_eligible: verified.backup_eligible,
                backed_up: verified.backed_up,
                credential_json: verified.credential_json,
            },
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
                Ok(json_reply(
                    StatusCode::CREATED,
                    &json!({ "passkey": passkey_json(&passkey) }),
                ))
            }
            Registered::SessionInvalid => Err(SessionRefusal::Revoked.into()),
            Registered::UserDisabled | Registered::EnrollmentUsed => Err(user_disabled()),
            Registered::CredentialExists => Err(credential_exists()),
        }
    }

    async fn remove_passkey(
        &self,
        signed_in: &SignedIn,
        passkey_id: &str,
    ) -> Result<Reply, ApiError> {
        let not_found = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!(
                    "you have no passkey {:?}",
                    passkey_id.chars().take(64).collect::<String>()
                ),
            )
        };
        if !ids::is_valid("pk", passkey_id) {
            return Err(not_found());
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
                // Removing the passkey this session was minted with ends this session too.
                let signed_out = signed_in.passkey_id == passkey_id;
                let mut reply = json_reply(
                    StatusCode::OK,
                    &json!({
                        "passkeyId": passkey_id,
                        "revision": revision.0,
                        "signedOut": signed_out,
                    }),
                );
                if signed_out {
                    self.clear_cookie(&mut reply);
                }
                Ok(reply)
            }
            PasskeyRemoved::NotFound => Err(not_found()),
            PasskeyRemoved::LastPasskey => Err(ApiError::new(
                StatusCode::CONFLICT,
                "LAST_PASSKEY",
                "This is your only passkey. Removing it would lock you out of your account: \
                 add another passkey first, then remove this one.",
            )),
        }
    }

    async fn logout(&self, headers: &HeaderMap) -> Result<Reply, ApiError> {
        let signed_in = self.signed_in(headers).await?;
        let revision = self
            .store
            .revoke_session(&signed_in.session_id, &user_actor(&signed_in.user_id))
            .await?;
        tracing::info!(user_id = %signed_in.user_id, session_id = %signed_in.session_id, "signed out");
        let mut reply = json_reply(
            StatusCode::OK,
            &json!({ "signedOut": true, "revision": revision.map(|r| r.0) }),
        );
        self.clear_cookie(&mut reply);
        Ok(reply)
    }

    /// Keeps a ceremony and answers `{"ceremonyId","publicKey"}`.
    fn begun(&self, pending: Pending, options: Value) -> Result<Reply, ApiError> {
        let ceremony_id = self.ceremonies.insert(pending).map_err(|full| {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TOO_MANY_CEREMONIES",
                full.to_string(),
            );
            error.retry_after = Some(Duration::from_secs(60));
            error
        })?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({ "ceremonyId": ceremony_id, "publicKey": options }),
        ))
    }

    fn take(&self, ceremony_id: &str) -> Result<Pending, ApiError> {
        match self.ceremonies.take(ceremony_id) {
            Taken::Found(pending) => Ok(pending),
            Taken::Unknown => Err(unknown_ceremony()),
            Taken::Expired => Err(ApiError::bad_request(
                "CEREMONY_EXPIRED",
                "this ceremony took too long; start again",
            )),
        }
    }

    fn new_session(&self, user_agent: String) -> NewSession {
        NewSession {
            session_id: ids::session_id(),
            lifetime_ms: self.sessions.lifetime_ms(),
            user_agent,
        }
    }

    /// `{"userId","passkeyId","sessionToken","expires"}` with the session cookie.
    fn signed_in_reply(
        &self,
        user_id: &str,
        passkey_id: &str,
        token: &str,
        expires_unix_ms: i64,
    ) -> Reply {
        let mut reply = json_reply(
            StatusCode::OK,
            &json!({
                "userId": user_id,
                "passkeyId": passkey_id,
                "sessionToken": token,
                "expires": rfc3339(expires_unix_ms),
            }),
        );
        let max_age = (expires_unix_ms - now_unix_ms()).max(0) / 1000;
        let cookie = format!(
            "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            if self.secure_cookie { "; Secure" } else { "" }
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            reply.headers_mut().insert(SET_COOKIE, value);
        }
        reply
    }

    fn clear_cookie(&self, reply: &mut Reply) {
        let cookie = format!(
            "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
            if self.secure_cookie { "; Secure" } else { "" }
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            reply.headers_mut().insert(SET_COOKIE, value);
        }
    }
}

/// The endpoint for a path and method: `None` for an unknown path; `Some((None, allowed))`
/// for a known path with another method.
fn route<'a>(path: &'a str, method: &Method) -> Option<(Option<Endpoint<'a>>, &'static str)> {
    let (endpoint, allowed) = match path {
        "/" | "/index.html" => ((method == Method::GET).then_some(Endpoint::Page), "GET"),
        "/app.js" => ((method == Method::GET).then_some(Endpoint::Script), "GET"),
        "/v1/enroll/begin" => (
            (method == Method::POST).then_some(Endpoint::EnrollBegin),
            "POST",
        ),
        "/v1/enroll/finish" => (
            (method == Method::POST).then_some(Endpoint::EnrollFinish),
            "POST",
        ),
        "/v1/login/begin" => (
            (method == Method::POST).then_some(Endpoint::LoginBegin),
            "POST",
        ),
        "/v1/login/finish" => (
            (method == Method::POST).then_some(Endpoint::LoginFinish),
            "POST",
        ),
        "/v1/me/passkeys" => (
            (method == Method::GET).then_some(Endpoint::MyPasskeys),
            "GET",
        ),
        "/v1/me/passkeys/begin" => (
            (method == Method::POST).then_some(Endpoint::AddBegin),
            "POST",
        ),
        "/v1/me/passkeys/finish" => (
            (method == Method::POST).then_some(Endpoint::AddFinish),
            "POST",
        ),
        "/v1/logout" => ((method == Method::POST).then_some(Endpoint::Logout), "POST"),
        _ => {
            let id = path
                .strip_prefix("/v1/me/passkeys/")
                .filter(|id| !id.is_empty() && !id.contains('/'))?;
            (
                (method == Method::DELETE).then_some(Endpoint::RemovePasskey(id)),
                "DELETE",
            )
        }
    };
    Some((endpoint, allowed))
}

/// Reads a bounded JSON body. `empty_ok`: an empty body reads as `{}`.
async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
    empty_ok: bool,
) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!(
                "request bodies are limited to {} KiB",
                MAX_BODY_BYTES / 1024
            ),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::bad_request("MALFORMED_REQUEST", "the request body could not be read")
            }
        })?
        .to_bytes();
    let body: &[u8] = if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(body).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::bad_request("INVALID_REQUEST", format!("invalid request: {error}"))
        }
        _ => ApiError::bad_request(
            "MALFORMED_JSON",
            format!("the request body is not valid JSON: {error}"),
        ),
    })
}

/// The session token from `Authorization: Bearer` or the `keygate_session` cookie.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    bearer.or_else(|| {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .map(|(_, value)| value.trim())
            .filter(|value| !value.is_empty())
    })
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_AGENT_CHARS)
        .collect()
}

fn passkey_name(name: Option<&str>) -> Result<String, ApiError> {
    clean_passkey_name(name.unwrap_or_default())
        .map_err(|message| ApiError::bad_request("INVALID_NAME", message))
}

fn limited(check: Result<(), Duration>) -> Result<(), ApiError> {
    check.map_err(|wait| {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "too many requests; slow down",
        );
        error.retry_after = Some(wait);
        error
    })
}

fn user_actor(user_id: &str) -> String {
    format!("user:{user_id}")
}

fn unknown_ceremony() -> ApiError {
    ApiError::bad_request(
        "CEREMONY_UNKNOWN",
        "no such ceremony in progress (finished already, or never begun); start again",
    )
}

fn user_disabled() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "USER_DISABLED",
        "this account is disabled",
    )
}

fn authentication_failed(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED", message)
}

fn credential_exists() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "CREDENTIAL_EXISTS",
        "this passkey is registered already",
    )
}

/// One passkey as the page lists it.
fn passkey_json(passkey: &PasskeyRecord) -> Value {
    json!({
        "id": passkey.passkey_id,
        "name": passkey.name,
        "created": rfc3339(passkey.created_unix_ms),
        "lastUsed": passkey.last_used_unix_ms.map(rfc3339),
        "userAgent": passkey.user_agent,
        "backedUp": passkey.backed_up,
        "deviceType": device_type(passkey.backup_eligible),
    })
}

/// A credential that may be backed up is a synced (multi-device) passkey.
pub fn device_type(backup_eligible: bool) -> &'static str {
    if backup_eligible {
        "multi_device"
    } else {
        "single_device"
    }
}

fn rfc3339(unix_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    super::json_response(status, body)
}

fn page(content_type: &'static str, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    reply
}

fn error_reply(error: ApiError) -> Reply {
    let mut reply = json_reply(
        error.status,
        &json!({ "error": { "code": error.code, "message": error.message } }),
    );
    if let Some(wait) = error.retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        reply
            .headers_mut()
            .insert(RETRY_AFTER, seconds.max(1).into());
    }
    reply
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert!(matches!(
            route("/v1/login/begin", &Method::POST),
            Some((Some(Endpoint::LoginBegin), _))
        ));
        assert!(matches!(
            route("/v1/login/begin", &Method::GET),
            Some((None, "POST"))
        ));
        assert!(matches!(
            route("/v1/me/passkeys/pk_1", &Method::DELETE),
            Some((Some(Endpoint::RemovePasskey("pk_1")), _))
        ));
        assert!(route("/v1/me/passkeys/a/b", &Method::DELETE).is_none());
        assert!(route("/v1/nope", &Method::GET).is_none());
    }

    #[test]
    fn tokens_come_from_bearer_or_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_token(&headers), None);
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=b; keygate_session=v4.public.x; c=d"),
        );
        assert_eq!(session_token(&headers), Some("v4.public.x"));
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer v4.public.y"),
        );
        assert_eq!(session_token(&headers), Some("v4.public.y"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(session_token(&headers), Some("v4.public.x"));
    }
}
