//! Tracing at the gateway (DESIGN.md, "Plugging into other gateways"), with the real `keygate`
//! binary: with `--trace-context`, a W3C `traceparent` reaches the upstream with the same trace
//! id and a new parent id, and a missing or invalid one is replaced by a fresh valid one;
//! without it, the headers pass through untouched; with `--otlp-endpoint`, the request, verify,
//! forward and sync-apply spans reach an OTLP collector, in the caller's trace, and the
//! upstream's `traceparent` names the forward span; `--log-format json` writes JSON lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use keygate_proxy::trace_context::TraceParent;
use serde_json::Value;
use support::otlp::{Collector, Received};
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Process, Tokens, eventually_within, keygate_cli,
    run_to_exit, sqlite_url, start_echo_upstream,
};
use support::{DEADLINE, send};

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What the echo upstream saw of `name`, as text (one value).
fn upstream_header(echoed: &Value, name: &str) -> Option<String> {
    echoed["headers"][name].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_or_started_and_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::random();
    let control_plane =
        ControlPlaneProcess::start("cp", &sqlite_url(dir.path()), &tokens, "127.0.0.1:0").await;
    let (_upstream, upstream_url) = start_echo_upstream().await;
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[route]]\npath_prefix = \"/open\"\nupstream = \"{upstream_url}\"\nauth = \"none\"\n"
        ),
    )
    .unwrap();
    let gateway = GatewayProcess::start(
        "tracing",
        &upstream_url,
        &[&control_plane.grpc],
        &tokens,
        &["--config", config.to_str().unwrap(), "--trace-context"],
    )
    .await;
    let url = gateway.url("/open/x");

    // A valid traceparent: the same trace and flags, a new parent id, tracestate unchanged.
    let reply = send(
        "GET",
        &url,
        &[
            ("traceparent", INCOMING.as_bytes()),
            ("tracestate", b"vendor=abc"),
        ],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let echoed = reply.json();
    let sent = upstream_header(&echoed, "traceparent").expect("traceparent forwarded");
    let sent = TraceParent::parse(sent.as_bytes()).expect("a valid traceparent upstream");
    let incoming = TraceParent::parse(INCOMING.as_bytes()).unwrap();
    assert_eq!(sent.trace_id, incoming.trace_id);
    assert_ne!(sent.parent_id, incoming.parent_id);
    assert_eq!(sent.flags, 1);
    assert_eq!(
        upstream_header(&echoed, "tracestate").as_deref(),
        Some("vendor=abc")
    );

    // None: a fresh trace whose id is the request id the gateway made up.
    let reply = send("GET", &url, &[], b"").await;
    let echoed = reply.json();
    let sent = upstream_header(&echoed, "traceparent").expect("traceparent started");
    let sent = TraceParent::parse(sent.as_bytes()).expect("a valid traceparent upstream");
    let request_id = upstream_header(&echoed, "x-request-id").expect("request id");
    assert_eq!(format!("{:032x}", sent.trace_id), request_id);

    // Invalid (uppercase hex): a fresh trace, and the tracestate that came with it is dropped.
    let invalid = INCOMING.to_ascii_uppercase();
    let reply = send(
        "GET",
        &url,
        &[
            ("traceparent", invalid.as_bytes()),
            ("tracestate", b"vendor=abc"),
            ("x-request-id", b"client-chosen"),
        ],
        b"",
    )
    .await;
    let echoed = reply.json();
    let sent = upstream_header(&echoed, "traceparent").expect("traceparent replaced");
    let sent = TraceParent::parse(sent.as_bytes()).expect("a valid traceparent upstream");
    assert_ne!(sent.trace_id, incoming.trace_id);
    assert_eq!(upstream_header(&echoed, "tracestate"), None);

    // Off (the default): both headers pass through untouched, none is added.
    let untouched = GatewayProcess::start(
        "not-tracing",
        &upstream_url,
        &[&control_plane.grpc],
        &tokens,
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let url = untouched.url("/open/x");
    let reply = send(
        "GET",
        &url,
        &[
            ("traceparent", invalid.as_bytes()),
            ("tracestate", b"vendor=abc"),
        ],
        b"",
    )
    .await;
    let echoed = reply.json();
    assert_eq!(upstream_header(&echoed, "traceparent"), Some(invalid));
    assert_eq!(
        upstream_header(&echoed, "tracestate").as_deref(),
        Some("vendor=abc")
    );
    let echoed = send("GET", &url, &[], b"").await.json();
    assert_eq!(upstream_header(&echoed, "traceparent"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_json_lines() {
    // A gateway whose control plane is not there logs (at warn) that it cannot connect.
    let process = Process::start(
        "json-logs",
        &[
            "--log-format",
            "json",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
            "--gateway-token",
            "not-used",
            "--control-plane",
            "http://127.0.0.1:1",
        ],
    )
    .await;
    let logged = &process;
    eventually_within(DEADLINE, "a whole log line", move || async move {
        logged.log_text().contains('\n')
    })
    .await;
    let text = process.log_text();
    let line = text.lines().next().unwrap();
    let event: Value = serde_json::from_str(line)
        .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
    assert_eq!(event["level"], "WARN", "{line}");
    assert!(event["fields"]["message"].is_string(), "{line}");
    assert!(
        event["target"].as_str().unwrap().starts_with("keygate"),
        "{line}"
    );
}

/// The received span named `name` in trace `trace_id`, if there is exactly one.
fn one_span(spans: &[Received], trace_id: &str, name: &str) -> Option<Received> {
    let mut found = spans
        .iter()
        .filter(|span| span.trace_id_hex() == trace_id && span.name() == name);
    match (found.next(), found.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_in_the_callers_trace() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::random();
    let control_plane =
        ControlPlaneProcess::start("cp", &sqlite_url(dir.path()), &tokens, "127.0.0.1:0").await;
    let (_upstream, upstream_url) = start_echo_upstream().await;
    let collector_url = collector.url();
    let gateway = GatewayProcess::start(
        "spans",
        &upstream_url,
        &[&control_plane.grpc],
        &tokens,
        &["--otlp-endpoint", &collector_url],
    )
    .await;
    let created = keygate_cli(
        &control_plane.grpc,
        &tokens,
        &["keys", "create", "--owner", "alice"],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let bearer = format!("Bearer {}", created.json["key"].as_str().unwrap());

    // Once the key has arrived, a request in the caller's (sampled) trace is served.
    let url = gateway.url("/api/items");
    let headers: [(&str, &[u8]); 2] = [
        ("authorization", bearer.as_bytes()),
        ("traceparent", INCOMING.as_bytes()),
    ];
    let served = &headers;
    let url_ref = &url;
    eventually_within(DEADLINE, "the key at the gateway", move || async move {
        send("GET", url_ref, served, b"").await.status == 200
    })
    .await;
    let echoed = send("GET", &url, &headers, b"").await.json();
    let sent = upstream_header(&echoed, "traceparent").expect("traceparent forwarded");
    let sent = TraceParent::parse(sent.as_bytes()).expect("a valid traceparent upstream");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(format!("{:032x}", sent.trace_id), trace_id);
    assert_eq!(sent.flags, 1, "the caller's trace is sampled");

    // The spans of that last request: request (child of the caller's span), verify and
    // forward inside it, and the upstream's traceparent names the forward span.
    let forward_id = format!("{:016x}", sent.parent_id);
    let collected = &collector;
    let forward_ref = &forward_id;
    eventually_within(
        DEADLINE,
        "the forward span at the collector",
        move || async move {
            collected
                .spans()
                .iter()
                .any(|span| span.span_id_hex() == *forward_ref)
        },
    )
    .await;
    let spans = collector.spans();
    let forward = spans
        .iter()
        .find(|span| span.span_id_hex() == forward_id)
        .unwrap();
    assert_eq!(forward.name(), "forward");
    assert_eq!(forward.trace_id_hex(), trace_id);
    assert_eq!(
        forward.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    let request = spans
        .iter()
        .find(|span| span.span_id_hex() == forward.parent_id_hex())
        .expect("the forward span's parent was exported");
    assert_eq!(request.name(), "request");
    assert_eq!(
        request.parent_id_hex(),
        "00f067aa0ba902b7",
        "the caller's span"
    );
    assert_eq!(
        request.attribute("http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(request.attribute("url.path").as_deref(), Some("/api/items"));
    // A forwarded response carries its request id outside its map (`h1::HeadFields`); the
    // span finds it there.
    assert_eq!(
        request.attribute("keygate.request_id"),
        upstream_header(&echoed, "x-request-id"),
    );
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(request.service.as_deref(), Some("keygate"));
    let verify = spans
        .iter()
        .find(|span| span.name() == "verify" && span.parent_id_hex() == request.span_id_hex())
        .expect("a verify span inside the request span");
    assert_eq!(verify.attribute("keygate.code"), None, "the key was valid");

    // A refused request: its verify span carries the code, and nothing is forwarded.
    let refused_trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{refused_trace}-b7ad6b7169203331-01");
    let reply = send(
        "GET",
        &url,
        &[
            ("authorization", b"Bearer kg_not_a_key"),
            ("traceparent", traceparent.as_bytes()),
        ],
        b"",
    )
    .await;
    assert_eq!(reply.status, 401);
    let code = reply.json()["error"]["code"].as_str().unwrap().to_owned();
    eventually_within(
        DEADLINE,
        "the refused request's spans",
        move || async move {
            let spans = collected.spans();
            one_span(&spans, refused_trace, "request").is_some()
                && one_span(&spans, refused_trace, "verify").is_some()
        },
    )
    .await;
    let spans = collector.spans();
    let verify = one_span(&spans, refused_trace, "verify").unwrap();
    assert_eq!(
        verify.attribute("keygate.code").as_deref(),
        Some(code.as_str())
    );
    let request = one_span(&spans, refused_trace, "request").unwrap();
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("401")
    );
    assert!(one_span(&spans, refused_trace, "forward").is_none());

    // Sync: the snapshot and the key's event were applied in spans of their own.
    let kinds: Vec<String> = spans
        .iter()
        .filter(|span| span.name() == "sync.apply")
        .filter_map(|span| span.attribute("keygate.sync.kind"))
        .collect();
    assert!(kinds.iter().any(|kind| kind == "snapshot"), "{kinds:?}");
    assert!(kinds.iter().any(|kind| kind == "events"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_endpoint_that_is_not_a_grpc_url_stops_the_start() {
    for endpoint in [
        "ftp://collector:4317",
        "collector:4317",
        "http://exa mple:4317",
    ] {
        let (code, stderr) = run_to_exit(&[
            "--otlp-endpoint",
            endpoint,
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--gateway-token",
            "not-used",
            "--control-plane",
            "http://127.0.0.1:1",
        ])
        .await;
        assert_eq!(code, 78, "{endpoint}: {stderr}");
        assert!(stderr.contains("--otlp-endpoint"), "{endpoint}: {stderr}");
    }
}
