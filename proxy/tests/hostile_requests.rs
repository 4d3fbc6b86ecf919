//! Requests an attacker would send (DESIGN.md, "Hostile traffic"), through a synced gateway on
//! loopback whose open route `/` and protected routes (`/admin/` and the others) go to two
//! different echo upstreams: path tricks, duplicate and conflicting credentials, cross-site
//! cookie posts, and the forwarding hygiene that goes with them (HTTP/2 cookie fields,
//! `Forwarded`).
//!
//! Every attack checks that the protected upstream received nothing, and every test ends with
//! normal requests still served.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use keygate_proto::session::SessionSigner;
use keygate_proxy::{AuthMode, EscapedSlashes, ProxyConfig, RouteConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(10);
/// Header name and value pairs of one request.
type Headers<'a> = Vec<(&'a str, &'a str)>;
/// The one origin allowed to use the session cookie for unsafe requests on `/app/`.
const APP_ORIGIN: &str = "https://app.example.com";

struct Setup {
    gateway: RunningGateway,
    /// Behind the open route `/`.
    public: Upstream,
    /// Behind every route that verifies.
    protected: Upstream,
    client: TestClient,
    key: String,
    other_key: String,
    session: String,
}

fn route(prefix: &str, upstream: &Upstream, auth: AuthMode) -> RouteConfig {
    RouteConfig {
        path_prefix: prefix.into(),
        upstream: upstream.url(),
        auth,
        ..RouteConfig::default()
    }
}

async fn setup(adjust: impl FnOnce(&mut ProxyConfig)) -> Setup {
    let control_plane = ControlPlane::start().await;
    let (key, record) = new_key("alice");
    let (other_key, other_record) = new_key("bob");
    control_plane.upsert(&record);
    control_plane.upsert(&other_record);
    let signer = SessionSigner::generate("sk_1");
    control_plane.signing_key(&signer, None);
    let session = session_token(&signer, "ses_1", "usr_1", "pk_1");
    let (public, protected) = (Upstream::start().await, Upstream::start().await);
    let mut config = config(&control_plane);
    config.routes = vec![
        route("/", &public, AuthMode::None),
        route("/admin/", &protected, AuthMode::Key),
        RouteConfig {
            session_origins: vec![APP_ORIGIN.to_owned()],
            ..route("/app/", &protected, AuthMode::Session)
        },
        route("/either/", &protected, AuthMode::KeyOrSession),
        RouteConfig {
            forward_credential: true,
            ..route("/pass/", &protected, AuthMode::Key)
        },
    ];
    adjust(&mut config);
    let gateway = start_ready_gateway(config).await;
    let status = gateway.status.clone();
    eventually("two keys and a signing key", WAIT, || {
        status.replica_len() == 2 && status.session_state().signing_keys == 1
    })
    .await;
    Setup {
        gateway,
        public,
        protected,
        client: client(),
        key,
        other_key,
        session,
    }
}

impl Setup {
    /// Sends `head` as it is (see [`raw_request`]).
    async fn raw(&self, head: &str) -> Reply {
        raw_request(self.gateway.addr, &format!("{head}\r\nHost: gw")).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        get_with(&self.client, &self.gateway.url(path), headers).await
    }

    async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(self.gateway.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        send(&self.client, request.body(Full::new(Bytes::new())).unwrap()).await
    }

    /// A keyed request to the protected upstream and an open one to the public upstream are
    /// still served.
    async fn still_serves(self) {
        let before = self.protected.requests();
        let reply = self.get("/admin/ok", &[("x-api-key", &self.key)]).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.json()["uri"], "/admin/ok");
        assert_eq!(self.protected.requests(), before + 1);
        let reply = self.get("/public/ok", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.upstream_saw("host"),
            vec![self.public.addr.to_string()]
        );
        self.gateway.stop().await;
    }
}

/// The error code of a refusal.
fn code(reply: &Reply) -> String {
    reply.json()["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn path_tricks_never_reach_the_protected_upstream_unauthenticated() {
    let setup = setup(|_| {}).await;
    // (request target, status, refusal code): each would be `/admin/…` to an upstream that
    // decodes or normalises, so each must be on the protected route (401) or refused (400).
    let refused = [
        ("/%61dmin/x", 401, "MISSING"),
        ("/%61%64%6D%69%6E/x", 401, "MISSING"),
        ("//admin/x", 401, "MISSING"),
        ("///admin//x", 401, "MISSING"),
        ("/public/../admin/x", 401, "MISSING"),
        ("/public/%2e%2E/admin/x", 401, "MISSING"),
        ("/public/.%2e/.%2E/../admin/x", 401, "MISSING"),
        ("/./admin/x", 401, "MISSING"),
        ("/../../admin/x", 401, "MISSING"),
        ("/public//../../admin/x", 401, "MISSING"),
        ("/public/..%2forders", 400, "INVALID_PATH"),
        ("/public/..%2Fadmin/x", 400, "INVALID_PATH"),
        ("/admin%2Fx", 400, "INVALID_PATH"),
        ("/admin%2fx", 400, "INVALID_PATH"),
        ("/public/..%5Cadmin/x", 400, "INVALID_PATH"),
        ("/public/%zz/../admin/x", 400, "INVALID_PATH"),
        ("/public/%/admin", 400, "INVALID_PATH"),
    ];
    for (target, status, expected) in refused {
        let reply = setup.raw(&format!("GET {target} HTTP/1.1")).await;
        assert_eq!(reply.status, status, "{target}: {:?}", reply.body);
        assert_eq!(code(&reply), expected, "{target}");
    }
    // A literal backslash (which an upstream on Windows may take for a slash).
    let reply = setup.raw("GET /public\\..\\admin/x HTTP/1.1").await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    assert_eq!(code(&reply), "INVALID_PATH");
    assert_eq!(
        setup.protected.requests(),
        0,
        "the protected upstream was reached"
    );

    // Served by the open route, which receives exactly the normalised path: another path
    // (case is significant), an escape that stays an escape, a query left as it came.
    let open = [
        ("/ADMIN/x", "/ADMIN/x"),
        ("/Admin/x", "/Admin/x"),
        ("/%2561dmin/x", "/%2561dmin/x"),
        ("/public/./x/../y", "/public/y"),
        (
            "/public/%7e%2d?next=/../admin/%2F",
            "/public/~-?next=/../admin/%2F",
        ),
    ];
    for (target, seen) in open {
        let reply = setup.raw(&format!("GET {target} HTTP/1.1")).await;
        assert_eq!(reply.status, 200, "{target}: {:?}", reply.body);
        assert_eq!(
            reply.upstream_saw("host"),
            vec![setup.public.addr.to_string()]
        );
        assert_eq!(reply.json()["uri"], seen, "{target}");
    }
    assert_eq!(setup.protected.requests(), 0);

    // With a key, the protected upstream receives the path that was authorised.
    let reply = setup
        .raw(&format!(
            "GET /public/..//%61dmin/./x?q=%2f HTTP/1.1\r\nX-API-Key: {}",
            setup.key
        ))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["uri"], "/admin/x?q=%2f");
    assert_eq!(setup.protected.requests(), 1);

    // The verify endpoint is found by its normalised path too.
    let reply = setup
        .raw(&format!(
            "POST /_keygate//v1/./verify HTTP/1.1\r\nX-API-Key: {}\r\nContent-Length: 0",
            setup.key
        ))
        .await;
    assert_eq!(reply.json()["code"], "VALID");
    setup.still_serves().await;
}

#[tokio::test]
async fn escaped_slashes_keep_forwards_them_encoded_as_data() {
    let setup = setup(|config| config.escaped_slashes = EscapedSlashes::Keep).await;
    let reply = setup.raw("GET /public/..%2forders HTTP/1.1").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["uri"], "/public/..%2Forders");
    let reply = setup.raw("GET /files/a\\b%5c HTTP/1.1").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["uri"], "/files/a%5Cb%5C");
    // Still on the protected route, where the segments stay as they are.
    let reply = setup.raw("GET /admin/a%2f..%2f..%2fx HTTP/1.1").await;
    assert_eq!(reply.status, 401);
    assert_eq!(setup.protected.requests(), 0);
    let reply = setup
        .raw(&format!(
            "GET /admin/a%2f..%2fx HTTP/1.1\r\nX-API-Key: {}",
            setup.key
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["uri"], "/admin/a%2F..%2Fx");
    setup.still_serves().await;
}

#[tokio::test]
async fn duplicate_and_conflicting_credentials_are_malformed() {
    let setup = setup(|_| {}).await;
    let (key, other) = (setup.key.as_str(), setup.other_key.as_str());
    let (bearer, other_bearer) = (format!("Bearer {key}"), format!("Bearer {other}"));
    let (bearer, other_bearer) = (bearer.as_str(), other_bearer.as_str());
    let conflicting: [(&str, Headers); 7] = [
        // The case: an unverified Bearer beside a Basic and a valid key.
        (
            "/admin/x",
            vec![
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("authorization", "Bearer anything"),
                ("x-api-key", key),
            ],
        ),
        (
            "/admin/x",
            vec![("authorization", bearer), ("authorization", bearer)],
        ),
        (
            "/admin/x",
            vec![("authorization", bearer), ("x-api-key", other)],
        ),
        ("/admin/x", vec![("x-api-key", key), ("x-api-key", other)]),
        (
            "/either/x",
            vec![("authorization", other_bearer), ("x-api-key", key)],
        ),
        (
            "/app/x",
            vec![
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("authorization", "Bearer x"),
            ],
        ),
        // A route that forwards the credential never forwards one it did not verify.
        (
            "/pass/x",
            vec![("authorization", "Basic eA=="), ("authorization", bearer)],
        ),
    ];
    for (path, headers) in &conflicting {
        let reply = setup.get(path, headers).await;
        assert_eq!(reply.status, 401, "{path} {headers:?}");
        assert_eq!(code(&reply), "MALFORMED", "{path} {headers:?}");
    }
    assert_eq!(setup.protected.requests(), 0);

    // The same key twice is one credential; neither copy reaches the upstream.
    let reply = setup
        .get("/admin/x", &[("authorization", bearer), ("x-api-key", key)])
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.upstream_saw("authorization").is_empty());
    assert!(reply.upstream_saw("x-api-key").is_empty());
    // A lone Basic is not keygate's: it goes to the upstream as it came.
    let reply = setup
        .get(
            "/admin/x",
            &[("authorization", "Basic dXNlcjpwYXNz"), ("x-api-key", key)],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.upstream_saw("authorization"),
        vec!["Basic dXNlcjpwYXNz"]
    );
    assert!(reply.upstream_saw("x-api-key").is_empty());
    assert_eq!(reply.upstream_saw("x-keygate-owner"), vec!["alice"]);
    assert_eq!(setup.protected.requests(), 2);

    // On the open route nothing is verified, so every credential header is stripped: every
    // Bearer value, every API key, the session cookie.
    let reply = setup
        .get(
            "/public/x",
            &[
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("authorization", "Bearer unverified"),
                ("x-api-key", key),
                ("x-api-key", other),
                ("cookie", "keygate_session=s; theme=dark"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.upstream_saw("authorization"),
        vec!["Basic dXNlcjpwYXNz"]
    );
    assert!(reply.upstream_saw("x-api-key").is_empty());
    assert_eq!(reply.upstream_saw("cookie"), vec!["theme=dark"]);
    setup.still_serves().await;
}

/// The control plane names the session cookie `__Host-keygate_session` whenever it is Secure:
/// the gateway reads both names, strips both, and refuses two that disagree (a cookie planted
/// by a sibling subdomain beside the real one) as it refuses any other pair of credentials.
#[tokio::test]
async fn session_cookies_are_read_under_both_names_and_conflicting_ones_are_malformed() {
    let setup = setup(|_| {}).await;
    let session = setup.session.as_str();
    let host = format!("theme=dark; __Host-keygate_session={session}");
    let both = format!("__Host-keygate_session={session}; keygate_session={session}");
    let twice = format!("keygate_session={session}");
    for headers in [
        vec![("cookie", host.as_str())],
        vec![("cookie", both.as_str())],
        vec![("cookie", twice.as_str()), ("cookie", twice.as_str())],
    ] {
        let reply = setup.get("/app/x", &headers).await;
        assert_eq!(reply.status, 200, "{headers:?}: {:?}", reply.body);
        // Neither name reaches the upstream; other cookies do.
        let forwarded = reply.upstream_saw("cookie").join("; ");
        assert!(!forwarded.contains("keygate_session"), "{forwarded}");
    }
    assert_eq!(setup.protected.requests(), 3);

    let planted = format!("keygate_session=v4.public.planted; __Host-keygate_session={session}");
    let split_first = format!("keygate_session={session}");
    let conflicting: [Headers; 3] = [
        vec![("cookie", planted.as_str())],
        vec![
            ("cookie", split_first.as_str()),
            ("cookie", "keygate_session=v4.public.other"),
        ],
        vec![(
            "cookie",
            "__Host-keygate_session=v4.public.a; __Host-keygate_session=v4.public.b",
        )],
    ];
    for headers in &conflicting {
        for path in ["/app/x", "/either/x"] {
            let reply = setup.get(path, headers).await;
            assert_eq!(reply.status, 401, "{path} {headers:?}");
            assert_eq!(code(&reply), "MALFORMED", "{path} {headers:?}");
        }
    }
    assert_eq!(
        setup.protected.requests(),
        3,
        "nothing conflicting got through"
    );
    setup.still_serves().await;
}

#[tokio::test]
async fn a_cross_site_cookie_post_is_refused_while_a_bearer_post_passes() {
    let setup = setup(|_| {}).await;
    let cookie = format!("theme=dark; keygate_session={}", setup.session);
    let bearer = format!("Bearer {}", setup.session);
    let (cookie, bearer) = (cookie.as_str(), bearer.as_str());
    let evil = ("origin", "https://evil.example");
    let refused: [(Method, Headers); 8] = [
        (Method::POST, vec![("cookie", cookie)]),
        (Method::POST, vec![("cookie", cookie), evil]),
        (Method::PUT, vec![("cookie", cookie), evil]),
        (Method::PATCH, vec![("cookie", cookie), evil]),
        (Method::DELETE, vec![("cookie", cookie), evil]),
        (
            Method::POST,
            vec![
                ("cookie", cookie),
                ("origin", "https://app.example.com.evil.example"),
            ],
        ),
        (
            Method::POST,
            vec![("cookie", cookie), ("sec-fetch-site", "same-site")],
        ),
        (Method::POST, vec![("cookie", cookie), ("origin", "null")]),
    ];
    for (method, headers) in &refused {
        for path in ["/app/x", "/either/x"] {
            let reply = setup.call(method.clone(), path, headers).await;
            assert_eq!(reply.status, 403, "{method} {path} {headers:?}");
            assert_eq!(code(&reply), "FORBIDDEN_ORIGIN", "{method} {path}");
            assert!(reply.headers.get("www-authenticate").is_none());
        }
    }
    assert_eq!(setup.protected.requests(), 0);

    let served: [(Method, &str, Headers); 7] = [
        // The allowed origin, and a same-origin page.
        (
            Method::POST,
            "/app/x",
            vec![("cookie", cookie), ("origin", APP_ORIGIN)],
        ),
        (
            Method::DELETE,
            "/app/x",
            vec![("cookie", cookie), ("sec-fetch-site", "same-origin")],
        ),
        // Safe methods, from anywhere.
        (Method::GET, "/app/x", vec![("cookie", cookie), evil]),
        (Method::HEAD, "/either/x", vec![("cookie", cookie), evil]),
        // A Bearer session or a key is not CSRF-able: no other site can make a browser send it.
        (
            Method::POST,
            "/app/x",
            vec![("authorization", bearer), evil],
        ),
        (
            Method::POST,
            "/either/x",
            vec![("authorization", bearer), ("cookie", cookie), evil],
        ),
        (
            Method::POST,
            "/either/x",
            vec![("x-api-key", setup.key.as_str()), ("cookie", cookie), evil],
        ),
    ];
    for (method, path, headers) in &served {
        let reply = setup.call(method.clone(), path, headers).await;
        assert_eq!(reply.status, 200, "{method} {path} {headers:?}");
    }
    assert_eq!(setup.protected.requests(), served.len());

    let metrics = get_with(&setup.client, &setup.gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let forbidden = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("keygate_verifications_total{code=\"FORBIDDEN_ORIGIN\"} ")
        })
        .and_then(|count| count.parse::<f64>().ok());
    assert!(
        forbidden.is_some_and(|count| count >= 16.0),
        "FORBIDDEN_ORIGIN is counted: {forbidden:?}"
    );
    setup.still_serves().await;
}

#[tokio::test]
async fn http2_cookie_fields_and_forwarded_reach_the_upstream_in_http1_shape() {
    let setup = setup(|_| {}).await;
    let h2: TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = Request::get(setup.gateway.url("/public/h2"))
        .header("cookie", "a=1")
        .header("cookie", format!("keygate_session={}", setup.session))
        .header("cookie", "b=2")
        .header("forwarded", "for=203.0.113.9;proto=https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&h2, request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_saw("cookie"), vec!["a=1; b=2"]);
    assert_eq!(
        reply.upstream_saw("forwarded"),
        vec!["for=203.0.113.9;proto=https, for=127.0.0.1;proto=http"]
    );

    // A cookie session over h2 on a session route, the cookie split across fields: verified,
    // and the other cookies arrive as one line.
    let request = Request::get(setup.gateway.url("/app/h2"))
        .header("cookie", "a=1")
        .header("cookie", format!("keygate_session={}", setup.session))
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&h2, request).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.upstream_saw("cookie"), vec!["a=1; b=2"]);
    assert_eq!(reply.upstream_saw("x-keygate-user-id"), vec!["usr_1"]);

    // Without an inbound Forwarded, the gateway's element alone.
    let reply = setup.get("/public/h1", &[]).await;
    assert_eq!(
        reply.upstream_saw("forwarded"),
        vec!["for=127.0.0.1;proto=http"]
    );
    setup.still_serves().await;
}
