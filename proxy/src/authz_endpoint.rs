//! `/_keygate/v1/authz` on the main listener: HTTP external authorization for gateways that ask
//! before they forward (nginx `auth_request`, Traefik ForwardAuth, Envoy's HTTP `ext_authz`).
//! Any method is answered; nothing is forwarded.
//!
//! The request is a copy of the client's request headers. The credential is read from them as
//! on a proxied request (`Authorization: Bearer`, the API-key header, the session cookie). The
//! original path is the part after `/_keygate/v1/authz` (Envoy's `path_prefix` form,
//! `/_keygate/v1/authz/<original path>`), else `X-Forwarded-Uri` (Traefik) or `X-Original-URI`
//! (nginx), else `/`; it is normalised like a proxied request's path and selects the route whose
//! `auth` applies. The original method is `X-Forwarded-Method` or `X-Original-Method`, else the
//! request's own (Envoy sends the original one); it and the request's `Origin` and
//! `Sec-Fetch-Site` decide the CSRF rule for a cookie session.
//!
//! The asking gateway copies client headers into the check, so a client can send either header
//! of a pair itself: when both of a pair are present and differ, or one is repeated, the check is
//! refused (400) rather than trusting either.
//!
//! Limits: the route's `permissions` and `cost` apply as on a proxied request (a check
//! consumes like one). The asking gateway may require more permissions in
//! `X-Keygate-Permissions` (comma- or space-separated, e.g. nginx's
//! `proxy_set_header X-Keygate-Permissions "orders.read";`): the key needs the route's and
//! these. A client cannot lower what is required that way, only raise it. Permissions asked
//! for on an `auth = "none"` route are refused (INSUFFICIENT_PERMISSIONS): nobody is verified
//! there to have them.
//!
//! Answers: 200 with the `x-keygate-*` identity headers a forwarded request would carry (none
//! for an `auth = "none"` route) and, for a key with rate limits, `RateLimit-Policy` and
//! `RateLimit`; a refusal with the same status, JSON body and `WWW-Authenticate` as on a
//! proxied request (401, 403, 429 with `Retry-After` and the rate-limit headers, 503 STALE);
//! 400 for a path normalisation refuses or bad `X-Keygate-Permissions`; 404 when no route
//! serves the path.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};

use crate::checks::{self, Checks};
use crate::client_body::ClientBody;
use crate::credential::Carrier;
use crate::forward;
use crate::limits::{self, Admission};
use crate::metrics::AuthzOutcome;
use crate::response::{self, ProxyBody, codes};
use crate::route::RouteTable;
use crate::verify::{Code, Verdict};

/// Where the endpoint is served; `PATH` + `/<original path>` is the `path_prefix` form.
pub const PATH: &str = "/_keygate/v1/authz";

static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_KEYGATE_PERMISSIONS: HeaderName = HeaderName::from_static("x-keygate-permissions");

/// Whether `path` (normalised) is this endpoint, in either form.
pub(crate) fn serves(path: &str) -> bool {
    path.strip_prefix(PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answers one check. `request`'s path may be unnormalised (see `handler.rs`).
pub(crate) async fn answer(
    checks: &Checks,
    routes: &RouteTable,
    request: Request<ClientBody>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let (parts, _body) = request.into_parts();
    check(
        checks,
        routes,
        &parts.method,
        &parts.uri,
        &parts.headers,
        request_id,
    )
    .await
}

/// The verdict for one check; the body of the check request is never read.
async fn check(
    checks: &Checks,
    routes: &RouteTable,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let refuse = |outcome: AuthzOutcome, status, code, message| {
        checks.verifier.authz_other(outcome);
        response::error(status, code, message, request_id)
    };
    let Ok(original) = original_uri(uri, headers) else {
        return refuse(
            AuthzOutcome::BadRequest,
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "X-Forwarded-Uri and X-Original-URI must be one valid request target, and agree when both are sent",
        );
    };
    let Ok(method) = original_method(method, headers) else {
        return refuse(
            AuthzOutcome::BadRequest,
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "X-Forwarded-Method and X-Original-Method must be one valid method, and agree when both are sent",
        );
    };
    let Ok(permissions) = asked_permissions(headers) else {
        return refuse(
            AuthzOutcome::BadRequest,
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "X-Keygate-Permissions must list permissions ([A-Za-z0-9._:-], 1-64 characters each) separated by commas or spaces",
        );
    };
    decide(
        checks,
        routes,
        &method,
        original,
        headers,
        &permissions,
        request_id,
    )
    .await
    .response
}

/// The permissions an `X-Keygate-Permissions` header (any number of them) requires besides
/// the route's, checked.
fn asked_permissions(headers: &HeaderMap) -> Result<Vec<String>, ()> {
    let mut permissions = Vec::new();
    for value in headers.get_all(&X_KEYGATE_PERMISSIONS) {
        let text = value.to_str().map_err(|_| ())?;
        permissions.extend(
            text.split([',', ' '])
                .filter(|part| !part.is_empty())
                .map(str::to_owned),
        );
    }
    keygate_proto::limits::canonical_permissions(permissions).map_err(|_| ())
}

/// What one check decided; shared by this endpoint and the gRPC one (`authz_grpc.rs`).
pub(crate) struct Decision {
    /// 200 with the `x-keygate-*` identity headers to add, or the refusal as on a proxied
    /// request (status, `WWW-Authenticate`, `Retry-After`, JSON body).
    pub response: Response<ProxyBody>,
    /// On 200: whether the upstream must not see the credential (the route does not forward
    /// it), as `forward.rs` strips it from a proxied request.
    pub strip_credential: bool,
}

/// The verdict for a request with the original `method`, target `original` (not yet
/// normalised) and client `headers`: normalised and routed like a proxied request, the
/// credential read from `headers` for the route's `auth`, then the key's limits for the
/// route's permissions plus `permissions` (sorted) and its cost, counted in the authz metrics.
pub(crate) async fn decide(
    checks: &Checks,
    routes: &RouteTable,
    method: &Method,
    original: Uri,
    headers: &HeaderMap,
    permissions: &[String],
    request_id: &HeaderValue,
) -> Decision {
    let refused = |response| Decision {
        response,
        strip_credential: false,
    };
    let refuse = |outcome: AuthzOutcome, status, code, message| {
        checks.verifier.authz_other(outcome);
        refused(response::error(status, code, message, request_id))
    };
    let original = match routes.normalize(&original) {
        Ok(None) => original,
        Ok(Some(normalised)) => normalised,
        Err(error) => {
            return refuse(
                AuthzOutcome::InvalidPath,
                StatusCode::BAD_REQUEST,
                codes::INVALID_PATH,
                error.message(),
            );
        }
    };
    let Some(route) = routes.find(original.path()) else {
        return refuse(
            AuthzOutcome::NoRoute,
            StatusCode::NOT_FOUND,
            codes::NO_ROUTE,
            "no route for this path",
        );
    };
    let allow = |response| Decision {
        response,
        strip_credential: !route.forward_credential,
    };
    if !route.auth.verifies() {
        if !permissions.is_empty() {
            // Permissions asked for on a route that verifies nobody: fail closed.
            checks.verifier.authz_checked(Code::InsufficientPermissions);
            return refused(response::denied(Code::InsufficientPermissions, request_id));
        }
        checks.verifier.authz_other(AuthzOutcome::Unverified);
        return allow(allowed(request_id));
    }
    let (credential, carrier) = checks.credentials.find(headers, route.auth);
    if carrier == Carrier::Cookie && !route.accepts_cookie_session(method, headers) {
        checks.verifier.refused(Code::ForbiddenOrigin);
        checks.verifier.authz_checked(Code::ForbiddenOrigin);
        return refused(response::denied(Code::ForbiddenOrigin, request_id));
    }
    let now = keygate_proto::time::now_unix_ms();
    let grant = match checks.verifier.verify_at(credential, now).await {
        Verdict::Valid(grant) => grant,
        Verdict::Denied(code) => {
            checks.verifier.authz_checked(code);
            return refused(response::denied(code, request_id));
        }
    };
    let mut admitted = None;
    if !permissions.is_empty() || checks::needs_limits(&grant, route) {
        let required = union(&route.permissions, permissions);
        let admission = checks.admit_with(&grant, &required, route.cost, now).await;
        if let Admission::Denied { code, .. } = &admission {
            checks.verifier.authz_checked(*code);
            return refused(response::limit_denied(&admission, request_id));
        }
        admitted = Some(admission);
    }
    let mut response = allowed(request_id);
    if let Some(admitted) = &admitted {
        limits::headers::apply(response.headers_mut(), admitted);
    }
    if !forward::add_grant_headers(response.headers_mut(), &grant) {
        // Allowing without the owner could let the upstream take the request for someone
        // else's, as when forwarding.
        checks.verifier.authz_other(AuthzOutcome::Internal);
        return refused(response::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "the key's owner cannot be sent as a header",
            request_id,
        ));
    }
    checks.verifier.authz_checked(Code::Valid);
    allow(response)
}

/// Two sorted permission lists as one, sorted, without duplicates.
fn union(route: &[String], asked: &[String]) -> Vec<String> {
    let mut all: Vec<String> = route.iter().chain(asked).cloned().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn allowed(request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Right(Default::default()));
    response
        .headers_mut()
        .insert(response::REQUEST_ID.clone(), request_id.clone());
    response
}

/// The header pair's single agreed value: `Ok(None)` when neither is sent, `Err` when one is
/// repeated or both are sent and differ.
fn one_of<'a>(
    headers: &'a HeaderMap,
    first: &HeaderName,
    second: &HeaderName,
) -> Result<Option<&'a HeaderValue>, ()> {
    let single = |name: &HeaderName| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (value, None) => Ok(value),
            (Some(_), Some(_)) | (None, Some(_)) => Err(()),
        }
    };
    match (single(first)?, single(second)?) {
        (Some(a), Some(b)) if a != b => Err(()),
        (Some(value), _) | (None, Some(value)) => Ok(Some(value)),
        (None, None) => Ok(None),
    }
}

/// The original request target: the path after [`PATH`] with the check's query, else the
/// headers' origin-form target, else `/`.
fn original_uri(uri: &Uri, headers: &HeaderMap) -> Result<Uri, ()> {
    let rest = uri.path().strip_prefix(PATH).unwrap_or_default();
    if !rest.is_empty() {
        let target = match uri.query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        return Uri::try_from(target).map_err(|_| ());
    }
    match one_of(headers, &X_FORWARDED_URI, &X_ORIGINAL_URI)? {
        None => Ok(Uri::from_static("/")),
        Some(value) => {
            // Only an origin-form target (`/path?query`) names a path on this gateway.
            if !value.as_bytes().starts_with(b"/") {
                return Err(());
            }
            Uri::try_from(value.as_bytes()).map_err(|_| ())
        }
    }
}

fn original_method(method: &Method, headers: &HeaderMap) -> Result<Method, ()> {
    match one_of(headers, &X_FORWARDED_METHOD, &X_ORIGINAL_METHOD)? {
        None => Ok(method.clone()),
        Some(value) => Method::from_bytes(value.as_bytes()).map_err(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn both_forms_are_served_and_nothing_else() {
        assert!(serves("/_keygate/v1/authz"));
        assert!(serves("/_keygate/v1/authz/"));
        assert!(serves("/_keygate/v1/authz/api/items"));
        assert!(!serves("/_keygate/v1/authzz"));
        assert!(!serves("/_keygate/v1/verify"));
    }

    #[test]
    fn the_original_target_comes_from_the_path_then_the_headers() {
        let uri: Uri = "/_keygate/v1/authz/api/items?x=1".parse().expect("uri");
        let from_path = original_uri(&uri, &headers(&[("x-original-uri", "/other")]))
            .expect("an original target");
        assert_eq!(from_path, "/api/items?x=1");
        let bare: Uri = PATH.parse().expect("uri");
        assert_eq!(
            original_uri(&bare, &HeaderMap::new()).expect("an original target"),
            "/"
        );
        let traefik = headers(&[("x-forwarded-uri", "/api?y=2")]);
        assert_eq!(
            original_uri(&bare, &traefik).expect("an original target"),
            "/api?y=2"
        );
        let nginx = headers(&[("x-original-uri", "/api")]);
        assert_eq!(
            original_uri(&bare, &nginx).expect("an original target"),
            "/api"
        );
        let agreeing = headers(&[("x-original-uri", "/api"), ("x-forwarded-uri", "/api")]);
        assert_eq!(
            original_uri(&bare, &agreeing).expect("an original target"),
            "/api"
        );
    }

    #[test]
    fn a_spoofable_or_absolute_target_is_refused() {
        let bare: Uri = PATH.parse().expect("uri");
        for pairs in [
            &[("x-original-uri", "/private"), ("x-forwarded-uri", "/open")][..],
            &[("x-original-uri", "/private"), ("x-original-uri", "/open")][..],
            &[("x-original-uri", "http://elsewhere/open")][..],
            &[("x-forwarded-uri", "open")][..],
        ] {
            assert!(original_uri(&bare, &headers(pairs)).is_err(), "{pairs:?}");
        }
    }

    #[test]
    fn asked_permissions_are_listed_and_checked() {
        assert_eq!(asked_permissions(&HeaderMap::new()), Ok(vec![]));
        let two = headers(&[
            ("x-keygate-permissions", "orders.write, orders.read"),
            ("x-keygate-permissions", "users.read"),
        ]);
        assert_eq!(
            asked_permissions(&two),
            Ok(vec![
                "orders.read".to_owned(),
                "orders.write".to_owned(),
                "users.read".to_owned()
            ])
        );
        assert!(asked_permissions(&headers(&[("x-keygate-permissions", "orders.*")])).is_err());
        assert_eq!(
            union(&["b".to_owned()], &["a".to_owned(), "b".to_owned()]),
            ["a", "b"]
        );
    }

    #[test]
    fn the_original_method_comes_from_the_headers_then_the_request() {
        assert_eq!(
            original_method(&Method::POST, &HeaderMap::new()).expect("the request's method"),
            Method::POST
        );
        let nginx = headers(&[("x-original-method", "DELETE")]);
        assert_eq!(
            original_method(&Method::GET, &nginx).expect("the header's method"),
            Method::DELETE
        );
        let disagreeing = headers(&[("x-original-method", "POST"), ("x-forwarded-method", "GET")]);
        assert!(original_method(&Method::GET, &disagreeing).is_err());
    }
}
