//! Requests through a synced gateway to in-process upstreams: verdict responses, header
//! hygiene, upstream failures, limits, the verify endpoint, the admin listener and shutdown.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;
use keygate_proto::ReplicaKey;
use keygate_proxy::{AuthMode, ProxyConfig, RouteConfig};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    gateway: RunningGateway,
    upstream: Upstream,
    client: TestClient,
    key: String,
    record: ReplicaKey,
}

fn route(prefix: &str, upstream: String, auth: AuthMode, forward_credential: bool) -> RouteConfig {
    RouteConfig {
        path_prefix: prefix.into(),
        upstream,
        auth,
        forward_credential,
        ..RouteConfig::default()
    }
}

async fn setup(adjust: impl FnOnce(&mut ProxyConfig, &Upstream)) -> Setup {
    let control_plane = ControlPlane::start().await;
    let (key, mut record) = new_key("alice");
    record.meta.insert("plan".into(), "pro".into());
    record.expires_unix_ms = Some(4_102_444_800_000);
    control_plane.upsert(&record);
    let upstream = Upstream::start().await;
    let mut config = config(&control_plane);
    config.routes = vec![
        route("/", upstream.url(), AuthMode::KeyOrSession, false),
        route("/open", upstream.url(), AuthMode::None, false),
        route("/pass", upstream.url(), AuthMode::Key, true),
        route("/sessions", upstream.url(), AuthMode::Session, false),
    ];
    adjust(&mut config, &upstream);
    let gateway = start_ready_gateway(config).await;
    let status = gateway.status.clone();
    eventually("the key", Duration::from_secs(10), || {
        status.replica_len() == 1
    })
    .await;
    Setup {
        gateway,
        upstream,
        client: client(),
        key,
        record,
    }
}

#[tokio::test]
async fn a_valid_key_is_forwarded_with_clean_headers() {
    let Setup {
        gateway,
        client,
        key,
        record,
        upstream,
    } = setup(|_, _| {}).await;
    let request = Request::get(gateway.url("/api/items?x=1"))
        .header("authorization", format!("Bearer {key}"))
        .header("x-keygate-owner", "mallory")
        .header("x-keygate-anything", "spoofed")
        .header("x-request-id", "req-42")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("cookie", "theme=dark; keygate_session=abc")
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&client, request).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.headers["x-request-id"], "req-42");
    let seen = reply.json();
    assert_eq!(seen["uri"], "/api/items?x=1");
    assert_eq!(
        reply.upstream_saw("x-keygate-key-id"),
        vec![record.id.to_string()]
    );
    assert_eq!(reply.upstream_saw("x-keygate-owner"), vec!["alice"]);
    assert!(reply.upstream_saw("x-keygate-anything").is_empty());
    assert!(
        reply.upstream_saw("authorization").is_empty(),
        "the credential is not forwarded"
    );
    assert_eq!(reply.upstream_saw("cookie"), vec!["theme=dark"]);
    assert!(reply.upstream_saw("x-drop-me").is_empty());
    assert!(reply.upstream_saw("connection").is_empty());
    assert_eq!(
        reply.upstream_saw("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(reply.upstream_saw("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        reply.upstream_saw("x-forwarded-host"),
        vec![gateway.addr.to_string()]
    );
    assert_eq!(reply.upstream_saw("host"), vec![upstream.addr.to_string()]);
    assert_eq!(reply.upstream_saw("x-request-id"), vec!["req-42"]);
    assert_eq!(reply.upstream_saw("accept"), vec!["application/json"]);

    // X-API-Key works too and is removed; response hop-by-hop headers are removed.
    let reply = get_with(&client, &gateway.url("/hop"), &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.upstream_saw("x-api-key").is_empty());
    assert!(reply.headers.get("x-upstream-hop").is_none());
    assert!(reply.headers.get("keep-alive").is_none());
    assert_eq!(reply.headers["x-upstream-end"], "kept");
    assert_eq!(
        reply.headers["x-request-id"].len(),
        32,
        "a generated request id, which replaces the upstream's"
    );
    assert_eq!(reply.headers.get_all("x-request-id").iter().count(), 1);

    // Request bodies stream through.
    let request = Request::post(gateway.url("/upload"))
        .header("x-api-key", &key)
        .body(Full::new(Bytes::from("x".repeat(200_000))))
        .unwrap();
    let reply = send(&client, request).await;
    assert_eq!(reply.json()["body"].as_str().unwrap().len(), 200_000);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_chunked_bodies_stream_through() {
    let Setup {
        gateway,
        upstream,
        client,
        key,
        ..
    } = setup(|config, _| {
        // One serving thread, so that upstream connections are counted exactly: idle ones are
        // kept per serving thread, and the test's client may open a second connection to the
        // gateway (hyper's pool takes a connection back a moment after its response), which
        // another thread would serve on an upstream connection of its own.
        config.workers = Some(1);
    })
    .await;
    let connections = || {
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    for index in 0..20 {
        let reply = get_with(
            &client,
            &gateway.url(&format!("/seq/{index}")),
            &[("x-api-key", &key)],
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["uri"], format!("/seq/{index}"), "origin form");
    }
    assert_eq!(connections(), 1, "one reused upstream connection");

    // An upstream that closes after answering: the next request goes on a new connection.
    let reply = get_with(&client, &gateway.url("/close"), &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, 200);
    let reply = get_with(
        &client,
        &gateway.url("/after-close"),
        &[("x-api-key", &key)],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(connections(), 2);

    // A chunked request body (no Content-Length) is streamed to the upstream.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""body":"hello world""#), "{answer}");
    gateway.stop().await;
}

#[tokio::test]
async fn refusals_carry_the_contract_codes_and_challenges() {
    let Setup {
        gateway,
        client,
        key,
        ..
    } = setup(|_, _| {}).await;
    let missing = get_with(&client, &gateway.url("/api"), &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    assert_eq!(missing.json()["error"]["code"], "MISSING");
    assert!(
        missing.json()["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );

    let malformed = get_with(
        &client,
        &gateway.url("/api"),
        &[("authorization", "Bearer kg_short")],
    )
    .await;
    assert_eq!(malformed.status, 401);
    assert_eq!(
        malformed.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(malformed.json()["error"]["code"], "MALFORMED");

    let mut wrong_checksum = key.clone().into_bytes();
    let last = wrong_checksum.len() - 1;
    wrong_checksum[last] = if wrong_checksum[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let wrong_checksum = String::from_utf8(wrong_checksum).unwrap();
    let reply = get_with(
        &client,
        &gateway.url("/api"),
        &[("x-api-key", &wrong_checksum)],
    )
    .await;
    assert_eq!(reply.json()["error"]["code"], "MALFORMED");

    let (unknown, _) = new_key("nobody");
    let reply = get_with(&client, &gateway.url("/api"), &[("x-api-key", &unknown)]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "NOT_FOUND");

    // A non-UTF-8 credential is MALFORMED, not a crash.
    let request = Request::get(gateway.url("/api"))
        .header(
            "x-api-key",
            HeaderValue::from_bytes(b"kg_\xff\xfe").unwrap(),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&client, request).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "MALFORMED");

    // Session routes take no API key, and a cookie that is no session token is MALFORMED.
    let reply = get_with(&client, &gateway.url("/sessions"), &[("x-api-key", &key)]).await;
    assert_eq!(reply.json()["error"]["code"], "MISSING");
    let reply = get_with(
        &client,
        &gateway.url("/sessions"),
        &[("cookie", "keygate_session=abc")],
    )
    .await;
    assert_eq!(reply.json()["error"]["code"], "MALFORMED");
    gateway.stop().await;
}

#[tokio::test]
async fn open_routes_and_credential_forwarding() {
    let Setup {
        gateway,
        client,
        key,
        ..
    } = setup(|_, _| {}).await;
    let reply = get_with(
        &client,
        &gateway.url("/open/x"),
        &[("x-keygate-owner", "mallory")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.upstream_saw("x-keygate-owner").is_empty());
    assert!(reply.upstream_saw("x-keygate-key-id").is_empty());

    let bearer = format!("Bearer {key}");
    let reply = get_with(
        &client,
        &gateway.url("/pass/x"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_saw("authorization"), vec![bearer]);
    assert_eq!(reply.upstream_saw("x-keygate-owner"), vec!["alice"]);
    gateway.stop().await;
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let down = closed_port().await;
    let dropping = dropping_upstream().await;
    let Setup {
        gateway,
        client,
        key,
        ..
    } = setup(|config, _| {
        config.upstream_timeout = Duration::from_millis(300);
        config.routes.push(route(
            "/down",
            format!("http://{down}"),
            AuthMode::Key,
            false,
        ));
        config.routes.push(route(
            "/dropping",
            format!("http://{dropping}"),
            AuthMode::Key,
            false,
        ));
    })
    .await;
    let auth = [("x-api-key", key.as_str())];

    let reply = get_with(&client, &gateway.url("/down"), &auth).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "UPSTREAM_UNAVAILABLE");

    let reply = get_with(&client, &gateway.url("/dropping"), &auth).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "UPSTREAM_UNAVAILABLE");

    let reply = get_with(&client, &gateway.url("/hang"), &auth).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"]["code"], "UPSTREAM_TIMEOUT");
    assert!(reply.json()["requestId"].is_string());
    gateway.stop().await;
}

#[tokio::test]
async fn a_huge_header_gets_431_and_the_gateway_keeps_serving() {
    let Setup {
        gateway,
        client,
        key,
        ..
    } = setup(|_, _| {}).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let request = format!(
        "GET /api HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // The gateway may stop reading (and close) before everything is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response:?}");

    let reply = get_with(&client, &gateway.url("/api"), &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, 200);
    gateway.stop().await;
}

#[tokio::test]
async fn the_verify_endpoint_answers_without_forwarding() {
    let Setup {
        gateway,
        client,
        key,
        record,
        ..
    } = setup(|_, _| {}).await;
    let post = |body: String| {
        Request::post(gateway.url("/_keygate/v1/verify"))
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let reply = send(&client, post(serde_json::json!({ "key": key }).to_string())).await;
    assert_eq!(reply.status, 200);
    let verdict = reply.json();
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["code"], "VALID");
    assert_eq!(verdict["keyId"], record.id.to_string());
    assert_eq!(verdict["owner"], "alice");
    assert_eq!(verdict["meta"]["plan"], "pro");
    assert_eq!(verdict["expires"], "2100-01-01T00:00:00.000Z");
    assert!(
        verdict.get("headers").is_none(),
        "answered by the gateway, not the upstream"
    );

    let reply = send(&client, post(r#"{"key":"kg_nope"}"#.to_owned())).await;
    assert_eq!(reply.json()["valid"], false);
    assert_eq!(reply.json()["code"], "MALFORMED");
    assert!(reply.json()["keyId"].is_null());

    let reply = send(&client, post("{not json".to_owned())).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], "BAD_REQUEST");

    let reply = send(&client, post("x".repeat(9 * 1024))).await;
    assert_eq!(reply.status, 413);

    let request = Request::post(gateway.url("/_keygate/v1/verify"))
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, request).await.json()["code"], "VALID");
    let reply = send(&client, post(String::new())).await;
    assert_eq!(reply.json()["code"], "MISSING");

    let reply = get_with(&client, &gateway.url("/_keygate/v1/verify"), &[]).await;
    assert_eq!(reply.status, 405);
    gateway.stop().await;
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let Setup {
        gateway,
        client,
        key,
        ..
    } = setup(|_, _| {}).await;
    let health = get_with(&client, &gateway.admin_url("/healthz"), &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = get_with(&client, &gateway.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["appliedRevision"], 1);
    assert_eq!(ready.json()["connected"], true);
    assert!(ready.json()["stalenessMs"].is_u64());

    assert_eq!(
        get_with(&client, &gateway.url("/api"), &[("x-api-key", &key)])
            .await
            .status,
        200
    );
    let metrics = get_with(&client, &gateway.admin_url("/metrics"), &[]).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    for name in [
        "keygate_verifications_total{code=\"VALID\"}",
        "keygate_verify_duration_seconds_bucket",
        "keygate_upstream_duration_seconds_bucket",
        "keygate_replica_keys",
        "keygate_replica_revision",
        "keygate_staleness_seconds",
        "keygate_sync_connected",
        "keygate_snapshots_total",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let Setup {
        mut gateway,
        client,
        key,
        upstream,
        ..
    } = setup(|_, _| {}).await;
    let in_flight = {
        let (client, url, key) = (client.clone(), gateway.url("/held"), key.clone());
        tokio::spawn(async move { get_with(&client, &url, &[("x-api-key", &key)]).await })
    };
    upstream.arrived.notified().await;
    gateway.signal_stop();
    let status = gateway.status.clone();
    eventually("draining", Duration::from_secs(5), || !status.is_ready()).await;
    upstream.release.notify_one();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request completed");
    let addr = gateway.addr;
    gateway.wait_stopped().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn h2c_clients_are_served_and_forwarded_over_http1() {
    let Setup {
        gateway,
        key,
        upstream,
        ..
    } = setup(|_, _| {}).await;
    let h2: TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = Request::get(gateway.url("/api/h2"))
        .header("x-api-key", &key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["host"][0], upstream.addr.to_string());
    assert_eq!(
        seen["headers"]["x-forwarded-host"][0],
        gateway.addr.to_string()
    );
    assert_eq!(seen["headers"]["x-keygate-owner"][0], "alice");
    // The upstream's response fields reach an h2 client too (hyper serves it: they are moved
    // into the response's map), less the hop-by-hop ones, which h2 forbids.
    let request = Request::get(gateway.url("/hop"))
        .header("x-api-key", &key)
        .header("x-request-id", "h2-req")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream-end"], "kept");
    let ids: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
    assert_eq!(
        ids,
        ["h2-req"],
        "the gateway's request id replaces the upstream's"
    );
    for gone in ["x-upstream-hop", "keep-alive", "connection"] {
        assert!(response.headers().get(gone).is_none(), "{gone}");
    }
    gateway.stop().await;
}
