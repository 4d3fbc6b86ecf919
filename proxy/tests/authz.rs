//! The external-authorization endpoint (`/_keygate/v1/authz`) of a synced gateway, asked the
//! way nginx (`X-Original-*`), Traefik (`X-Forwarded-*`) and Envoy (`path_prefix`) ask: the
//! route of the original path decides, a verdict is answered with identity headers or the usual
//! refusal, and nothing ever reaches the upstream.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use keygate_proto::session::SessionSigner;
use keygate_proxy::{AuthMode, ProxyConfig, RouteConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(10);
const AUTHZ: &str = "/_keygate/v1/authz";

struct Setup {
    control_plane: ControlPlane,
    gateway: RunningGateway,
    upstream: Upstream,
    client: TestClient,
    key: String,
    disabled: String,
    signer: SessionSigner,
}

fn route(prefix: &str, upstream: String, auth: AuthMode) -> RouteConfig {
    RouteConfig {
        path_prefix: prefix.into(),
        upstream,
        auth,
        ..RouteConfig::default()
    }
}

async fn setup(adjust: impl FnOnce(&mut ProxyConfig)) -> Setup {
    let control_plane = ControlPlane::start().await;
    let (key, record) = new_key("alice");
    control_plane.upsert(&record);
    let (disabled, mut disabled_record) = new_key("bob");
    disabled_record.enabled = false;
    control_plane.upsert(&disabled_record);
    let signer = SessionSigner::generate("sk_1");
    control_plane.signing_key(&signer, None);
    let upstream = Upstream::start().await;
    let mut config = config(&control_plane);
    config.routes = vec![
        route("/", upstream.url(), AuthMode::Key),
        route("/open", upstream.url(), AuthMode::None),
        route("/app", upstream.url(), AuthMode::KeyOrSession),
        // Open, as `/` often is: a check must never be mistaken for a request to it.
        route("/_keygate/", upstream.url(), AuthMode::None),
    ];
    adjust(&mut config);
    let gateway = start_ready_gateway(config).await;
    let status = gateway.status.clone();
    eventually("both keys and the signing key", WAIT, || {
        status.replica_len() == 2 && status.session_state().signing_keys == 1
    })
    .await;
    Setup {
        control_plane,
        gateway,
        upstream,
        client: client(),
        key,
        disabled,
        signer,
    }
}

async fn check(setup: &Setup, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(setup.gateway.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(
        &setup.client,
        request.body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

fn code(reply: &Reply) -> String {
    reply.json()["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn nginx_style_checks_answer_the_verdict_with_identity_headers() {
    let setup = setup(|_| {}).await;
    let bearer = format!("Bearer {}", setup.key);
    let allowed = check(
        &setup,
        "GET",
        AUTHZ,
        &[
            ("authorization", &bearer),
            ("x-original-uri", "/api/items?x=1"),
            ("x-original-method", "POST"),
            ("x-request-id", "req-7"),
        ],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.headers["x-keygate-owner"], "alice");
    assert!(
        allowed.headers["x-keygate-key-id"]
            .to_str()
            .unwrap()
            .starts_with("key_")
    );
    assert_eq!(allowed.headers["x-request-id"], "req-7");

    let unknown = new_key("nobody").0;
    let refused = check(
        &setup,
        "GET",
        AUTHZ,
        &[("x-api-key", &unknown), ("x-original-uri", "/api/items")],
    )
    .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(code(&refused), "NOT_FOUND");

    let missing = check(&setup, "GET", AUTHZ, &[("x-original-uri", "/api")]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");

    let disabled = check(
        &setup,
        "GET",
        AUTHZ,
        &[
            ("authorization", &format!("Bearer {}", setup.disabled)),
            ("x-original-uri", "/api"),
        ],
    )
    .await;
    assert_eq!(disabled.status, 403);
    assert_eq!(code(&disabled), "DISABLED");
    assert!(disabled.headers.get("x-keygate-owner").is_none());
    assert_eq!(
        setup.upstream.requests(),
        0,
        "a check never reaches the upstream"
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn the_original_path_selects_the_route_in_every_form() {
    let setup = setup(|_| {}).await;
    // An `auth = "none"` route: allowed without a credential, without identity.
    for (path, headers) in [
        (AUTHZ, &[("x-original-uri", "/open/page")][..]),
        (AUTHZ, &[("x-forwarded-uri", "/open/page?a=b")][..]),
        ("/_keygate/v1/authz/open/page", &[][..]),
    ] {
        let open = check(&setup, "DELETE", path, headers).await;
        assert_eq!(open.status, 200, "{path} {headers:?}");
        assert!(open.headers.get("x-keygate-owner").is_none());
    }
    // The same paths on an auth route need the key.
    for (path, headers) in [
        (AUTHZ, &[("x-original-uri", "/api")][..]),
        (AUTHZ, &[("x-forwarded-uri", "/api")][..]),
        ("/_keygate/v1/authz/api", &[][..]),
        // No original path: route `/`.
        (AUTHZ, &[][..]),
    ] {
        let refused = check(&setup, "GET", path, headers).await;
        assert_eq!(refused.status, 401, "{path} {headers:?}");
        assert_eq!(code(&refused), "MISSING");
    }
    // Normalised like a proxied path: the dot segments cannot climb into the open route.
    let climbed = check(&setup, "GET", AUTHZ, &[("x-original-uri", "/open/../api")]).await;
    assert_eq!(climbed.status, 401);
    let path_prefix = check(&setup, "GET", "/_keygate/v1/authz/open/%2e%2e/api", &[]).await;
    assert_eq!(path_prefix.status, 401);
    // Dot segments in the path_prefix form stay in the original path: this is a check of
    // `/api` (auth), not a request for `/_keygate/v1/api` (open) forwarded to the upstream.
    let escaped = check(&setup, "GET", "/_keygate/v1/authz/x/../../api", &[]).await;
    assert_eq!(escaped.status, 401);
    assert_eq!(code(&escaped), "MISSING");
    assert_eq!(setup.upstream.requests(), 0);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn spoofed_or_broken_originals_are_refused() {
    let setup = setup(|_| {}).await;
    // A client behind nginx sends X-Forwarded-Uri itself; nginx adds X-Original-URI.
    for headers in [
        &[("x-original-uri", "/api"), ("x-forwarded-uri", "/open")][..],
        &[("x-original-uri", "/api"), ("x-original-uri", "/open")][..],
        &[("x-original-uri", "http://elsewhere/open")][..],
        &[
            ("x-original-uri", "/open"),
            ("x-original-method", "NOT A METHOD"),
        ][..],
        &[("x-original-method", "GET"), ("x-forwarded-method", "POST")][..],
    ] {
        let refused = check(&setup, "GET", AUTHZ, headers).await;
        assert_eq!(refused.status, 400, "{headers:?}");
        assert_eq!(code(&refused), "BAD_REQUEST");
    }
    // A path normalisation refuses is refused as the proxy refuses it.
    let bad = check(&setup, "GET", AUTHZ, &[("x-original-uri", "/open/%zz")]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(code(&bad), "INVALID_PATH");
    let bad_prefix = check(&setup, "GET", "/_keygate/v1/authz/open/%zz", &[]).await;
    assert_eq!(bad_prefix.status, 400);
    assert_eq!(code(&bad_prefix), "INVALID_PATH");
    setup.gateway.stop().await;
}

#[tokio::test]
async fn a_cookie_session_follows_the_csrf_rule_of_the_original_method() {
    let setup = setup(|_| {}).await;
    let token = session_token(&setup.signer, "ses_1", "carol", "pk_1");
    let cookie = format!("keygate_session={token}");
    let read = check(
        &setup,
        "GET",
        AUTHZ,
        &[
            ("cookie", &cookie),
            ("x-original-uri", "/app/page"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.headers["x-keygate-user-id"], "carol");
    assert_eq!(read.headers["x-keygate-session-id"], "ses_1");
    // nginx's subrequest is a GET; the original POST is what counts.
    let cross_site = check(
        &setup,
        "GET",
        AUTHZ,
        &[
            ("cookie", &cookie),
            ("x-original-uri", "/app/page"),
            ("x-original-method", "POST"),
        ],
    )
    .await;
    assert_eq!(cross_site.status, 403);
    assert_eq!(code(&cross_site), "FORBIDDEN_ORIGIN");
    let same_origin = check(
        &setup,
        "GET",
        AUTHZ,
        &[
            ("cookie", &cookie),
            ("x-original-uri", "/app/page"),
            ("x-original-method", "POST"),
            ("sec-fetch-site", "same-origin"),
        ],
    )
    .await;
    assert_eq!(same_origin.status, 200);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn a_stale_gateway_answers_503_but_keeps_allowing_open_routes() {
    let setup = setup(|config| {
        config.propagation_bound = Duration::from_millis(400);
    })
    .await;
    let bearer = format!("Bearer {}", setup.key);
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-original-uri", "/api"),
    ];
    assert_eq!(check(&setup, "GET", AUTHZ, &headers).await.status, 200);

    setup.control_plane.answer_pings(false);
    let status = setup.gateway.status.clone();
    eventually("staleness past the bound", WAIT, || status.is_stale()).await;
    let stale = check(&setup, "GET", AUTHZ, &headers).await;
    assert_eq!(stale.status, 503);
    assert_eq!(code(&stale), "STALE");
    assert_eq!(stale.headers["retry-after"], "1");
    let open = check(&setup, "GET", "/_keygate/v1/authz/open", &[]).await;
    assert_eq!(open.status, 200);

    // The recorder is shared by this binary's tests: only this one makes a stale check.
    let metrics = get_with(&setup.client, &setup.gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for name in ["VALID", "STALE", "NO_AUTH"] {
        let line = format!("keygate_authz_checks_total{{code=\"{name}\"}} ");
        let count: u64 = text
            .lines()
            .find_map(|text_line| text_line.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("{line} missing from\n{text}"))
            .parse()
            .unwrap();
        assert!(count >= 1, "{line}{count}");
    }
    setup.gateway.stop().await;
}
