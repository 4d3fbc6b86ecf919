//! Envoy's gRPC external authorization (`--authz-grpc-listen`,
//! `envoy.service.auth.v3.Authorization/Check`) on a synced gateway, asked with Envoy-shaped
//! checks (lower-case `headers` map, `path` with its query, `method`): the decision is the HTTP
//! authz endpoint's, answered as an `ok_response` with the identity headers to set and the
//! credential to remove, or a `denied_response` with keygate's status, headers and JSON body.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use keygate_proto::envoy_pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use keygate_proto::envoy_pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use keygate_proto::envoy_pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate_proto::envoy_pb::envoy::service::auth::v3::check_response::HttpResponse;
use keygate_proto::envoy_pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use keygate_proto::session::SessionSigner;
use keygate_proxy::{AuthMode, Gateway, GatewayStatus, ProxyConfig, RouteConfig};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;
/// `HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE: i32 = 2;

struct Setup {
    control_plane: ControlPlane,
    upstream: Upstream,
    status: GatewayStatus,
    /// The gRPC listener.
    addr: SocketAddr,
    client: AuthorizationClient<Channel>,
    key: String,
    disabled: String,
    signer: SessionSigner,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), keygate_proxy::ProxyError>>,
}

impl Setup {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.served.await.unwrap().unwrap();
    }
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
    config.authz_grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    config.routes = vec![
        route("/", upstream.url(), AuthMode::Key),
        route("/open", upstream.url(), AuthMode::None),
        route("/app", upstream.url(), AuthMode::KeyOrSession),
    ];
    adjust(&mut config);
    let gateway = Gateway::bind(config, metrics_handle()).await.unwrap();
    let addr: SocketAddr = gateway.authz_grpc_addr().unwrap();
    let status = gateway.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(async move {
        let _ = stopped.await;
    }));
    let ready = status.clone();
    eventually("both keys and the signing key", WAIT, || {
        ready.is_ready() && ready.replica_len() == 2 && ready.session_state().signing_keys == 1
    })
    .await;
    let client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Setup {
        control_plane,
        upstream,
        status,
        addr,
        client,
        key,
        disabled,
        signer,
        stop,
        served,
    }
}

/// A check as Envoy sends it: pseudo headers and lower-case names in `headers`.
fn envoy_check(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut map: HashMap<String, String> = [
        (":authority", "api.example"),
        (":method", method),
        (":path", path),
        ("x-request-id", "req-envoy"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    map.extend(
        headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "1".into(),
                    method: method.into(),
                    headers: map,
                    path: path.into(),
                    host: "api.example".into(),
                    scheme: "https".into(),
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

async fn check(setup: &Setup, request: CheckRequest) -> CheckResponse {
    setup
        .client
        .clone()
        .check(request)
        .await
        .unwrap()
        .into_inner()
}

fn ok(response: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(response.status.as_ref().unwrap().code, OK, "{response:?}");
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not an ok_response: {other:?}"),
    }
}

fn denied(response: &CheckResponse) -> &DeniedHttpResponse {
    assert_ne!(response.status.as_ref().unwrap().code, OK, "{response:?}");
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("not a denied_response: {other:?}"),
    }
}

fn http_status(denied: &DeniedHttpResponse) -> i32 {
    denied.status.as_ref().unwrap().code
}

fn header<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|option| {
        let header = option.header.as_ref().unwrap();
        (header.key == name).then_some(header.value.as_str())
    })
}

fn error_code(denied: &DeniedHttpResponse) -> String {
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_valid_key_is_allowed_with_identity_headers_and_its_credential_removed() {
    let setup = setup(|_| {}).await;
    let bearer = format!("Bearer {}", setup.key);
    let response = check(
        &setup,
        envoy_check(
            "POST",
            "/api/items?x=1",
            &[
                ("authorization", &bearer),
                // Spoofed: must not reach the upstream.
                ("x-keygate-owner", "mallory"),
                ("x-keygate-session-id", "ses_forged"),
            ],
        ),
    )
    .await;
    let allowed = ok(&response);
    assert_eq!(header(&allowed.headers, "x-keygate-owner"), Some("alice"));
    assert!(
        header(&allowed.headers, "x-keygate-key-id")
            .unwrap()
            .starts_with("key_")
    );
    assert!(
        allowed
            .headers
            .iter()
            .all(|option| option.append_action == OVERWRITE),
        "{allowed:?}"
    );
    let mut removed = allowed.headers_to_remove.clone();
    removed.sort();
    assert_eq!(removed, ["authorization", "x-keygate-session-id"]);

    // The API-key header is consumed the same way.
    let api_key = check(
        &setup,
        envoy_check("GET", "/api", &[("x-api-key", &setup.key)]),
    )
    .await;
    assert_eq!(ok(&api_key).headers_to_remove, ["x-api-key"]);
    assert_eq!(
        setup.upstream.requests(),
        0,
        "a check never reaches the upstream"
    );
    setup.stop().await;
}

#[tokio::test]
async fn unknown_and_disabled_keys_are_denied_like_the_http_endpoint() {
    let setup = setup(|_| {}).await;
    let unknown = new_key("nobody").0;
    let response = check(
        &setup,
        envoy_check("GET", "/api", &[("x-api-key", &unknown)]),
    )
    .await;
    assert_eq!(response.status.as_ref().unwrap().code, UNAUTHENTICATED);
    let refused = denied(&response);
    assert_eq!(http_status(refused), 401);
    assert_eq!(
        header(&refused.headers, "www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(
        header(&refused.headers, "content-type"),
        Some("application/json")
    );
    assert_eq!(header(&refused.headers, "x-request-id"), Some("req-envoy"));
    assert_eq!(error_code(refused), "NOT_FOUND");
    let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(body["requestId"], "req-envoy");

    let missing = check(&setup, envoy_check("GET", "/api", &[])).await;
    assert_eq!(http_status(denied(&missing)), 401);
    assert_eq!(error_code(denied(&missing)), "MISSING");

    let bearer = format!("Bearer {}", setup.disabled);
    let response = check(
        &setup,
        envoy_check("GET", "/api", &[("authorization", &bearer)]),
    )
    .await;
    assert_eq!(response.status.as_ref().unwrap().code, PERMISSION_DENIED);
    let disabled = denied(&response);
    assert_eq!(http_status(disabled), 403);
    assert_eq!(error_code(disabled), "DISABLED");
    assert_eq!(header(&disabled.headers, "x-keygate-owner"), None);
    setup.stop().await;
}

#[tokio::test]
async fn the_path_selects_the_route_and_is_normalised_like_a_proxied_one() {
    let setup = setup(|_| {}).await;
    let open = check(&setup, envoy_check("DELETE", "/open/page?a=b", &[])).await;
    let allowed = ok(&open);
    assert_eq!(header(&allowed.headers, "x-keygate-owner"), None);
    assert!(allowed.headers_to_remove.is_empty(), "{allowed:?}");

    // Dot segments cannot climb out of the open route into an auth one...
    let climbed = check(&setup, envoy_check("GET", "/open/../api", &[])).await;
    assert_eq!(error_code(denied(&climbed)), "MISSING");
    // ...and a path normalisation refuses is refused the same way.
    let bad = check(&setup, envoy_check("GET", "/open/%zz", &[])).await;
    assert_eq!(http_status(denied(&bad)), 400);
    assert_eq!(error_code(denied(&bad)), "INVALID_PATH");
    // A check without an origin-form path or a method says nothing to decide on.
    for (method, path) in [("GET", "http://elsewhere/open"), ("GET", ""), ("", "/open")] {
        let broken = check(&setup, envoy_check(method, path, &[])).await;
        assert_eq!(http_status(denied(&broken)), 400, "{method:?} {path:?}");
        assert_eq!(error_code(denied(&broken)), "BAD_REQUEST");
    }
    let empty = check(&setup, CheckRequest::default()).await;
    assert_eq!(http_status(denied(&empty)), 400);
    setup.stop().await;
}

#[tokio::test]
async fn raw_header_maps_and_cookie_sessions_are_understood() {
    let setup = setup(|_| {}).await;
    // Envoy's `encode_raw_headers`: `header_map` with `raw_value`s instead of `headers`.
    let mut request = envoy_check("GET", "/api", &[]);
    let http = request
        .attributes
        .as_mut()
        .and_then(|attributes| attributes.request.as_mut())
        .and_then(|request| request.http.as_mut())
        .unwrap();
    http.headers.clear();
    http.header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "x-api-key".into(),
            value: String::new(),
            raw_value: setup.key.clone().into_bytes(),
        }],
    });
    let raw = check(&setup, request).await;
    assert_eq!(header(&ok(&raw).headers, "x-keygate-owner"), Some("alice"));

    // A session cookie: the `Cookie` header is rewritten without it, other cookies kept.
    let token = session_token(&setup.signer, "ses_1", "carol", "pk_1");
    let cookie = format!("theme=dark; keygate_session={token}");
    let response = check(
        &setup,
        envoy_check("GET", "/app/page", &[("cookie", &cookie)]),
    )
    .await;
    let allowed = ok(&response);
    assert_eq!(header(&allowed.headers, "x-keygate-user-id"), Some("carol"));
    assert_eq!(header(&allowed.headers, "cookie"), Some("theme=dark"));
    // Only the session cookie: the header goes.
    let only = format!("keygate_session={token}");
    let response = check(
        &setup,
        envoy_check("GET", "/app/page", &[("cookie", &only)]),
    )
    .await;
    assert_eq!(ok(&response).headers_to_remove, ["cookie"]);
    // The CSRF rule holds for the original method.
    let cross_site = check(
        &setup,
        envoy_check("POST", "/app/page", &[("cookie", &only)]),
    )
    .await;
    assert_eq!(http_status(denied(&cross_site)), 403);
    assert_eq!(error_code(denied(&cross_site)), "FORBIDDEN_ORIGIN");
    setup.stop().await;
}

#[tokio::test]
async fn a_gateway_cut_off_beyond_the_bound_denies_503_but_open_routes_stay_open() {
    let setup = setup(|config| {
        config.propagation_bound = Duration::from_millis(400);
    })
    .await;
    let bearer = format!("Bearer {}", setup.key);
    let request = || envoy_check("GET", "/api", &[("authorization", &bearer)]);
    ok(&check(&setup, request()).await);

    // The control plane goes away: no stream, no pings answered.
    setup.control_plane.refuse_streams(true);
    setup.control_plane.answer_pings(false);
    setup.control_plane.disconnect_all();
    let status = setup.status.clone();
    eventually("staleness past the bound", WAIT, || status.is_stale()).await;
    let response = check(&setup, request()).await;
    let stale = denied(&response);
    assert_eq!(http_status(stale), 503);
    assert_eq!(error_code(stale), "STALE");
    assert_eq!(header(&stale.headers, "retry-after"), Some("1"));
    ok(&check(&setup, envoy_check("GET", "/open", &[])).await);
    setup.stop().await;
}

/// Envoy is not installed where the tests run: the examples are checked for the settings this
/// service and the HTTP endpoint depend on, not run.
#[test]
fn the_envoy_examples_ask_keygate_fail_closed_and_pass_the_identity_on() {
    let read = |name: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples/envoy")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path:?}: {error}"))
    };
    let grpc = read("envoy-grpc.yaml");
    for line in [
        "name: envoy.filters.http.ext_authz",
        "transport_api_version: V3",
        "envoy_grpc: { cluster_name: keygate_authz }",
        "failure_mode_allow: false",
        "http2_protocol_options: {}",
        "socket_address: { address: keygate, port_value: 9191 }",
        "--authz-grpc-listen 0.0.0.0:9191",
    ] {
        assert!(grpc.contains(line), "{line:?} in envoy-grpc.yaml");
    }
    let http = read("envoy-http.yaml");
    for line in [
        "name: envoy.filters.http.ext_authz",
        "transport_api_version: V3",
        "path_prefix: /_keygate/v1/authz",
        "uri: http://keygate:8080",
        "allowed_upstream_headers:",
        "- prefix: \"x-keygate-\"",
        "key_matcher: { prefix: \"x-keygate-\" }",
        "- exact: x-api-key",
        "- exact: cookie",
        "failure_mode_allow: false",
    ] {
        assert!(http.contains(line), "{line:?} in envoy-http.yaml");
    }
    // The spoofed identity is dropped before the check, the credential after it.
    let spoof = http.find("remove_on_match").unwrap();
    let check = http.find("name: envoy.filters.http.ext_authz").unwrap();
    let credential = http.find("- remove: x-api-key").unwrap();
    assert!(spoof < check && check < credential);
}

/// Whether the gateway closes `stream` (EOF or reset) before `deadline`, reading and dropping
/// whatever it sends first (its HTTP/2 SETTINGS, a GOAWAY).
async fn closed_by_gateway(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn silent_connections_to_the_grpc_listener_are_cut_by_their_deadlines() {
    let setup = setup(|config| {
        config.header_read_timeout = Duration::from_secs(1);
        config.idle_timeout = Duration::from_secs(2);
    })
    .await;
    // One that sends nothing; one that stops inside the HTTP/2 preface; one with the preface
    // and SETTINGS and then silence; one that speaks HTTP/1.1 to a listener that speaks only
    // HTTP/2. Without their deadlines each would hold a connection slot for ever.
    let mut silent = TcpStream::connect(setup.addr).await.unwrap();
    let mut partial = TcpStream::connect(setup.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut preface = TcpStream::connect(setup.addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut http1 = TcpStream::connect(setup.addr).await.unwrap();
    http1
        .write_all(b"POST /envoy.service.auth.v3.Authorization/Check HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT * 3;
    for (name, connection) in [
        ("silent", &mut silent),
        ("partial preface", &mut partial),
        ("preface then silence", &mut preface),
        ("HTTP/1.1", &mut http1),
    ] {
        assert!(
            closed_by_gateway(connection, deadline).await,
            "the {name} connection is still open"
        );
    }
    // The listener still serves. (A new client: the setup's connected before the silent ones
    // and, having sent nothing for longer than the first-request deadline, was cut as well.)
    let mut client = AuthorizationClient::connect(format!("http://{}", setup.addr))
        .await
        .unwrap();
    let bearer = format!("Bearer {}", setup.key);
    let allowed = client
        .check(envoy_check("GET", "/api", &[("authorization", &bearer)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        header(&ok(&allowed).headers, "x-keygate-owner"),
        Some("alice")
    );
    setup.stop().await;
}
