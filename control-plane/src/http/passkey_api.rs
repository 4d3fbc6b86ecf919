//! The passkey HTTP JSON API and the self-service page's routes (DESIGN.md, "Passkeys and
//! sessions"), as axum handlers over the rules in `passkeys/self_service.rs`:
//!
//! - `POST /v1/enroll/begin {"token","name"?}`, `POST /v1/enroll/finish {"ceremonyId","credential"}`
//! - `POST /v1/login/begin {"userId"?}`, `POST /v1/login/finish {"ceremonyId","credential"}`
//! - signed in (cookie `__Host-keygate_session`, or `keygate_session` on plain-HTTP localhost,
//!   or `Authorization: Bearer`): `GET /v1/me/passkeys`,
//!   `POST /v1/me/passkeys/begin {"name"?}` + `/finish`, `DELETE /v1/me/passkeys/{id}`,
//!   `PATCH /v1/me/passkeys/{id} {"name"}` (rename), `POST /v1/logout`
//! - `GET /` (and `/index.html`, its scripts `/app.js`, …): the page (`page.rs`).
//!
//! A handler extracts (caller checks in `caller.rs`, bodies in `json_body.rs`), calls one rule,
//! and maps its outcome to a status, JSON and cookies. Every refusal is
//! `{"error":{"code","message"}}` (`api_error.rs`); a known path with another method is 405
//! with `Allow`. Every answer is `Cache-Control: no-store` and `nosniff`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::header::{ALLOW, CACHE_CONTROL, HeaderValue, SET_COOKIE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::map_response_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_proto::time::{now_unix_ms, rfc3339};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::api_error::ApiError;
use super::caller::{Admitted, Caller, UserAgent};
use super::cookies::{ClearSessionCookie, SessionCookie};
use super::forwarded::TrustedProxies;
use super::json_body::{JsonBody, JsonBodyOrEmpty};
use super::page;
use crate::passkeys::providers::{Providers, aaguid_text};
use crate::passkeys::refusal::Refusal;
use crate::passkeys::self_service::{Begun, IssuedSession, SelfService};
use crate::store::PasskeyRecord;

/// Where the passkey routes live, beside the page's.
const API_PREFIX: &str = "/v1/";
const PASSKEY_PATH_PREFIX: &str = "/v1/me/passkeys/";

/// The passkey API's state: the rules, how this control plane sets its cookie, and whose
/// forwarding headers it believes.
pub struct PasskeyApi {
    rules: SelfService,
    cookie: SessionCookie,
    /// The relying party's origin, the only one state changes may come from.
    origin: String,
    trusted_proxies: TrustedProxies,
}

impl PasskeyApi {
    pub fn new(rules: SelfService, trusted_proxies: TrustedProxies) -> Self {
        let cookie = SessionCookie::for_relying_party(rules.relying_party());
        let origin = rules.relying_party().origin();
        Self {
            rules,
            cookie,
            origin,
            trusted_proxies,
        }
    }

    /// The proxies whose `X-Forwarded-For` / `Forwarded` name the client.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.trusted_proxies
    }

    pub fn rules(&self) -> &SelfService {
        &self.rules
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether `path` is in the API's namespace, whose answers (404s included) carry its
    /// headers.
    pub fn owns(path: &str) -> bool {
        path.starts_with(API_PREFIX)
    }

    /// `{"userId","passkeyId","sessionToken","expires"}` with the session cookie.
    fn signed_in(&self, session: &IssuedSession) -> Response {
        let mut response = super::json_response(
            StatusCode::OK,
            &json!({
                "userId": session.user_id,
                "passkeyId": session.passkey_id,
                "sessionToken": session.token,
                "expires": rfc3339(session.expires_unix_ms),
            }),
        );
        let max_age = (session.expires_unix_ms - now_unix_ms()).max(0) / 1000;
        if let Some(cookie) = self.cookie.set(&session.token, max_age) {
            response.headers_mut().insert(SET_COOKIE, cookie);
        }
        response
    }
}

/// The page's and the API's routes.
pub fn router(api: Arc<PasskeyApi>) -> Router {
    page::SCRIPTS
        .into_iter()
        .fold(Router::new(), |router, (path, source)| {
            router.route(path, get_only(move || page::script(source)))
        })
        .route("/", get_only(page::index))
        .route("/index.html", get_only(page::index))
        .route("/v1/enroll/begin", post_only(enroll_begin))
        .route("/v1/enroll/finish", post_only(enroll_finish))
        .route("/v1/login/begin", post_only(login_begin))
        .route("/v1/login/finish", post_only(login_finish))
        .route("/v1/me/passkeys", get_only(my_passkeys))
        .route("/v1/me/passkeys/begin", post_only(add_begin))
        .route("/v1/me/passkeys/finish", post_only(add_finish))
        .route(
            "/v1/me/passkeys/{passkey_id}",
            delete_or_patch(remove_passkey, rename_passkey),
        )
        .route("/v1/logout", post_only(logout))
        .layer(map_response_with_state(Arc::clone(&api), finish))
        .with_state(api)
}

type ApiRoute = MethodRouter<Arc<PasskeyApi>>;

fn get_only<H: Handler<T, Arc<PasskeyApi>>, T: 'static>(handler: H) -> ApiRoute {
    only(MethodFilter::GET, "GET", handler)
}

fn post_only<H: Handler<T, Arc<PasskeyApi>>, T: 'static>(handler: H) -> ApiRoute {
    only(MethodFilter::POST, "POST", handler)
}

/// One passkey's route: `DELETE` removes it, `PATCH` renames it.
fn delete_or_patch<D, P, TD, TP>(delete: D, patch: P) -> ApiRoute
where
    D: Handler<TD, Arc<PasskeyApi>>,
    P: Handler<TP, Arc<PasskeyApi>>,
    TD: 'static,
    TP: 'static,
{
    refusing_others(
        on(MethodFilter::DELETE, delete).on(MethodFilter::PATCH, patch),
        "DELETE, PATCH",
    )
}

/// A route answering one method; any other (HEAD included: axum would run the GET handler) is
/// 405 METHOD_NOT_ALLOWED with `Allow`.
fn only<H, T>(method: MethodFilter, allowed: &'static str, handler: H) -> ApiRoute
where
    H: Handler<T, Arc<PasskeyApi>>,
    T: 'static,
{
    refusing_others(on(method, handler), allowed)
}

/// `route`, answering every method it does not (HEAD included) with 405 METHOD_NOT_ALLOWED and
/// `Allow: allowed`.
fn refusing_others(route: ApiRoute, allowed: &'static str) -> ApiRoute {
    let refuse = move |uri: Uri| async move {
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{} answers {allowed}", uri.path()),
        )
        .into_response();
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
        response
    };
    route.on(MethodFilter::HEAD, refuse).fallback(refuse)
}

/// What every answer of the API gets: no caching, no sniffing, and the cleared cookie an error
/// asked for.
async fn finish(State(api): State<Arc<PasskeyApi>>, mut response: Response) -> Response {
    if response
        .extensions_mut()
        .remove::<ClearSessionCookie>()
        .is_some()
    {
        api.cookie.clear_in(response.headers_mut());
    }
    with_api_headers(response)
}

fn with_api_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The 404 of a path in the API's namespace that no route answers.
pub fn no_such_endpoint(method: &Method, path: &str) -> Response {
    with_api_headers(ApiError::no_such_endpoint(method, path).into_response())
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

/// `{"name"}`
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rename {
    name: String,
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
        T::deserialize(&self.credential).map_err(|error| {
            Refusal::MalformedCredential(format!(
                "the credential is not a WebAuthn response: {error}"
            ))
            .into()
        })
    }
}

type Api = State<Arc<PasskeyApi>>;

async fn enroll_begin(
    State(api): Api,
    Admitted(client): Admitted,
    UserAgent(user_agent): UserAgent,
    JsonBody(body): JsonBody<EnrollBegin>,
) -> Result<Response, ApiError> {
    let begun = api
        .rules
        .begin_enrollment(client, &body.token, body.name.as_deref(), &user_agent)
        .await?;
    Ok(begun_reply(begun))
}

async fn enroll_finish(
    State(api): Api,
    _: Admitted,
    JsonBody(body): JsonBody<Finish>,
) -> Result<Response, ApiError> {
    let credential = body.credential()?;
    let session = api
        .rules
        .finish_enrollment(&body.ceremony_id, &credential)
        .await?;
    Ok(api.signed_in(&session))
}

async fn login_begin(
    State(api): Api,
    Admitted(client): Admitted,
    JsonBodyOrEmpty(body): JsonBodyOrEmpty<LoginBegin>,
) -> Result<Response, ApiError> {
    let begun = api.rules.begin_login(client, body.user_id).await?;
    Ok(begun_reply(begun))
}

async fn login_finish(
    State(api): Api,
    _: Admitted,
    UserAgent(user_agent): UserAgent,
    JsonBody(body): JsonBody<Finish>,
) -> Result<Response, ApiError> {
    let credential = body.credential()?;
    let session = api
        .rules
        .finish_login(&body.ceremony_id, &credential, &user_agent)
        .await?;
    Ok(api.signed_in(&session))
}

async fn my_passkeys(
    State(api): Api,
    _: Admitted,
    Caller(signed_in): Caller,
) -> Result<Response, ApiError> {
    let passkeys = api.rules.passkeys(&signed_in).await?;
    let handle = api.rules.user_handle(&signed_in).await?;
    let providers = api.rules.providers();
    let passkeys: Vec<Value> = passkeys
        .iter()
        .map(|passkey| passkey_json(passkey, providers))
        .collect();
    Ok(super::json_response(
        StatusCode::OK,
        &json!({
            "userId": signed_in.user_id,
            // What the page's WebAuthn Signal API calls name: the relying party, the user's
            // handle (base64url) and, on each passkey, its credential id.
            "rpId": api.rules.relying_party().rp_id(),
            "userHandle": URL_SAFE_NO_PAD.encode(handle),
            "currentPasskeyId": signed_in.passkey_id,
            "sessionExpires": rfc3339(signed_in.expires_unix_ms),
            "passkeys": passkeys,
        }),
    ))
}

async fn add_begin(
    State(api): Api,
    Admitted(client): Admitted,
    Caller(signed_in): Caller,
    UserAgent(user_agent): UserAgent,
    JsonBodyOrEmpty(body): JsonBodyOrEmpty<AddBegin>,
) -> Result<Response, ApiError> {
    let begun = api
        .rules
        .begin_adding(client, &signed_in, body.name.as_deref(), &user_agent)
        .await?;
    Ok(begun_reply(begun))
}

async fn add_finish(
    State(api): Api,
    _: Admitted,
    Caller(signed_in): Caller,
    JsonBody(body): JsonBody<Finish>,
) -> Result<Response, ApiError> {
    let credential = body.credential()?;
    let passkey = api
        .rules
        .finish_adding(&signed_in, &body.ceremony_id, &credential)
        .await?;
    Ok(super::json_response(
        StatusCode::CREATED,
        &json!({ "passkey": passkey_json(&passkey, api.rules.providers()) }),
    ))
}

async fn remove_passkey(
    State(api): Api,
    _: Admitted,
    Caller(signed_in): Caller,
    uri: Uri,
) -> Result<Response, ApiError> {
    let passkey_id = passkey_id_in(&uri);
    let removed = api.rules.remove_passkey(&signed_in, passkey_id).await?;
    let mut response = super::json_response(
        StatusCode::OK,
        &json!({
            "passkeyId": passkey_id,
            "revision": removed.revision.0,
            "signedOut": removed.signed_out,
        }),
    );
    if removed.signed_out {
        api.cookie.clear_in(response.headers_mut());
    }
    Ok(response)
}

async fn rename_passkey(
    State(api): Api,
    _: Admitted,
    Caller(signed_in): Caller,
    uri: Uri,
    JsonBody(body): JsonBody<Rename>,
) -> Result<Response, ApiError> {
    let passkey_id = passkey_id_in(&uri);
    let passkey = api
        .rules
        .rename_passkey(&signed_in, passkey_id, &body.name)
        .await?;
    Ok(super::json_response(
        StatusCode::OK,
        &json!({ "passkey": passkey_json(&passkey, api.rules.providers()) }),
    ))
}

async fn logout(
    State(api): Api,
    _: Admitted,
    Caller(signed_in): Caller,
) -> Result<Response, ApiError> {
    let revision = api.rules.sign_out(&signed_in).await?;
    let mut response = super::json_response(
        StatusCode::OK,
        &json!({ "signedOut": true, "revision": revision.map(|r| r.0) }),
    );
    api.cookie.clear_in(response.headers_mut());
    Ok(response)
}

/// The passkey id in `/v1/me/passkeys/{id}`, as sent, not percent-decoded: ids are base62, so
/// an encoded one is no id.
fn passkey_id_in(uri: &Uri) -> &str {
    uri.path()
        .strip_prefix(PASSKEY_PATH_PREFIX)
        .unwrap_or_default()
}

/// `{"ceremonyId","publicKey"}`
fn begun_reply(begun: Begun) -> Response {
    super::json_response(
        StatusCode::OK,
        &json!({ "ceremonyId": begun.ceremony_id, "publicKey": begun.public_key }),
    )
}

/// One passkey as the page lists it, with its provider ("Unknown authenticator" when its
/// AAGUID is not on the list) and the provider's icon (a data URI, or null).
fn passkey_json(passkey: &PasskeyRecord, providers: &Providers) -> Value {
    json!({
        "id": passkey.passkey_id,
        "credentialId": URL_SAFE_NO_PAD.encode(&passkey.credential_id),
        "name": passkey.name,
        "created": rfc3339(passkey.created_unix_ms),
        "lastUsed": passkey.last_used_unix_ms.map(rfc3339),
        "userAgent": passkey.user_agent,
        "backedUp": passkey.backed_up,
        "deviceType": device_type(passkey.backup_eligible),
        "provider": providers.name(passkey.aaguid),
        "providerIcon": providers.icon(passkey.aaguid),
        "aaguid": passkey.aaguid.map(aaguid_text),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_api_owns_its_namespace_only() {
        assert!(PasskeyApi::owns("/v1/nope"));
        assert!(!PasskeyApi::owns("/healthz"));
        assert!(!PasskeyApi::owns("/v1"));
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(device_type(true), "multi_device");
        assert_eq!(device_type(false), "single_device");
    }
}
