//! Tracing at the gateway (DESIGN.md, "Plugging into other gateways"), with the real `keygate`
//! binary: with `--trace-context`, a W3C `traceparent` reaches the upstream with the same trace
//! id and a new parent id, and a missing or invalid one is replaced by a fresh valid one;
//! without it, the headers pass through untouched; `--log-format json` writes JSON lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use keygate_proxy::trace_context::TraceParent;
use serde_json::Value;
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Process, Tokens, eventually_within, sqlite_url,
    start_echo_upstream,
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
