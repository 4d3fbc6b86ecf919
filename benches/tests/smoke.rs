//! CI smoke of the benchmark harness, timing nothing: a synthetic control plane with 1000 keys,
//! a real gateway and the fixed-response upstream, all in-process on 127.0.0.1:0; the load
//! generator sends a few hundred requests of a mixed key set in each mode, and every verdict
//! must be the one its key calls for. Then the side-by-side summary and chart are built from
//! the reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::echo::EchoUpstream;
use keygate_benches::keyset::KeySetSpec;
use keygate_benches::load::{self, LoadSpec, Pace};
use keygate_benches::mix::{Distribution, KeyMix, KeyMixSpec};
use keygate_benches::synthetic_cp::SyntheticControlPlane;
use keygate_benches::{chart, summary};
use keygate_proxy::{AuthMode, Gateway, ProxyConfig, RouteConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A future that resolves when `stop` is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_tool_against_a_gateway_fed_by_the_synthetic_control_plane() {
    let (stop, stop_rx) = watch::channel(false);
    let token = "smoke-token";

    let (control_plane, keys) =
        SyntheticControlPlane::generate(KeySetSpec::standard(1000, 9), 200, Some(token));
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let cp_task = tokio::spawn(
        control_plane
            .clone()
            .serve(listener, stopped(stop_rx.clone())),
    );

    let upstream = EchoUpstream::bind(localhost())
        .await
        .unwrap()
        .fixed_response();
    let upstream_url = format!("http://{}", upstream.addr().unwrap());
    let upstream_task = tokio::spawn(upstream.serve(stopped(stop_rx.clone())));

    let config = ProxyConfig {
        listen: localhost(),
        admin_listen: localhost(),
        routes: vec![
            RouteConfig {
                path_prefix: "/".into(),
                upstream: upstream_url.clone(),
                ..RouteConfig::default()
            },
            RouteConfig {
                path_prefix: "/public/".into(),
                upstream: upstream_url,
                auth: AuthMode::None,
                ..RouteConfig::default()
            },
        ],
        control_plane: vec![format!("http://{cp_addr}")],
        gateway_token: token.into(),
        gateway_id: Some("smoke".into()),
        ..ProxyConfig::default()
    };
    let gateway = Gateway::bind(config, keygate::telemetry::metrics())
        .await
        .unwrap();
    let gateway_addr = gateway.addr();
    let status = gateway.status();
    let gateway_task = tokio::spawn(gateway.serve(stopped(stop_rx.clone())));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !status.is_ready() {
        assert!(Instant::now() < deadline, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status.replica_len(), 1000);
    assert_eq!(control_plane.snapshots_sent(), 1);

    let mix = Arc::new(
        KeyMix::new(
            KeyMixSpec {
                valid: keys.valid.clone(),
                malformed: keys.malformed.clone(),
                disabled: keys.disabled.clone(),
                unknown: keys.unknown.clone(),
                malformed_share: 0.1,
                disabled_share: 0.1,
                unknown_share: 0.1,
            },
            Distribution::Zipf(1.0),
        )
        .unwrap(),
    );
    let closed = LoadSpec {
        label: "keygate-key".into(),
        url: format!("http://{gateway_addr}/x"),
        pace: Pace::Closed,
        connections: 4,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        requests: Some(400),
        cpu_pids: vec![std::process::id()],
        seed: 3,
        tls: None,
        new_connection_per_request: false,
        method: http::Method::GET,
    };
    let report = load::run(&closed, Arc::clone(&mix)).await.unwrap();
    assert_eq!(report.requests, 400, "{}", report.line());
    assert_eq!(report.errors, 0, "{}", report.line());
    for code in ["200", "401 MALFORMED", "403 DISABLED", "401 NOT_FOUND"] {
        assert!(
            report.codes.get(code).copied().unwrap_or(0) > 0,
            "no {code}: {}",
            report.line()
        );
    }
    assert_eq!(
        report.codes.values().sum::<u64>(),
        400,
        "unexpected codes: {}",
        report.line()
    );
    assert_eq!(report.cpu.len(), 1);

    let open = LoadSpec {
        label: "keygate-noauth".into(),
        url: format!("http://{gateway_addr}/public/x"),
        pace: Pace::Open { rate: 1000.0 },
        connections: 4,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        requests: None,
        cpu_pids: Vec::new(),
        seed: 4,
        tls: None,
        new_connection_per_request: false,
        method: http::Method::GET,
    };
    let open_report = load::run(&open, mix).await.unwrap();
    assert!(open_report.requests > 100, "{}", open_report.line());
    assert_eq!(
        open_report.codes.keys().collect::<Vec<_>>(),
        ["200"],
        "the no-auth route forwards everything"
    );
    assert_eq!(open_report.errors, 0);

    // The summary and the chart read such reports back.
    let dir = tempfile::tempdir().unwrap();
    for (name, run) in [
        ("pinned-saturation-keygate-key-r1", &report),
        ("pinned-half-peak-keygate-key-r1", &report),
        ("pinned-half-peak-upstream-r1", &open_report),
    ] {
        std::fs::write(
            dir.path().join(format!("{name}.json")),
            serde_json::to_string(run).unwrap(),
        )
        .unwrap();
    }
    let summary = summary::summarize(dir.path(), "smoke".into()).unwrap();
    assert_eq!(summary.groups.len(), 3);
    assert!(
        summary
            .targets
            .iter()
            .any(|check| check.target.contains("added p99"))
    );
    let svg = chart::render(&summary);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    stop.send(true).unwrap();
    gateway_task.await.unwrap().unwrap();
    cp_task.await.unwrap().unwrap();
    upstream_task.await.unwrap();
}
