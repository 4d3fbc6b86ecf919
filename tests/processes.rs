//! The real `keygate` binary as separate processes: a control plane, an echo upstream and two
//! gateways, all on port 0, found through the one line each prints when bound; a key created
//! with the CLI works through both gateways; SIGTERM stops every process cleanly.

#![allow(clippy::unwrap_used)]

mod support;

use support::expect_verdict;
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Tokens, keygate_cli, sqlite_url, start_echo_upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_sync_serve_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::random();

    let database = sqlite_url(dir.path());
    let control_plane = ControlPlaneProcess::start("cp", &database, &tokens, "127.0.0.1:0").await;
    let line = &control_plane.process.line;
    assert!(
        line.starts_with("keygate control-plane listening on 127.0.0.1:"),
        "{line}"
    );

    let (upstream, upstream_url) = start_echo_upstream().await;

    let mut gateways = Vec::new();
    for id in ["proc-a", "proc-b"] {
        let gateway =
            GatewayProcess::start(id, &upstream_url, &[&control_plane.grpc], &tokens, &[]).await;
        let line = &gateway.process.line;
        assert!(
            line.starts_with("keygate proxy listening on 127.0.0.1:"),
            "{line}"
        );
        assert!(line.contains("(admin 127.0.0.1:"), "{line}");
        gateways.push(gateway);
    }

    let created = keygate_cli(
        &control_plane.grpc,
        &tokens,
        &["keys", "create", "--owner", "proc"],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let key = created.json["key"].as_str().unwrap();
    for gateway in &gateways {
        expect_verdict(&gateway.url("/"), key, 200, None).await;
    }

    for gateway in gateways {
        gateway.process.terminate().await;
    }
    upstream.terminate().await;
    control_plane.process.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_never_stops_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::tls::Pki::new("sighup CA");
    let (cert, key) = pki.server("gateway", None);
    let tokens = Tokens::random();
    let database = sqlite_url(dir.path());
    let control_plane = ControlPlaneProcess::start("cp", &database, &tokens, "127.0.0.1:0").await;
    let health = format!("{}/healthz", control_plane.http);
    let gateway = GatewayProcess::start(
        "gateway",
        "http://127.0.0.1:9",
        &[&control_plane.grpc],
        &tokens,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let reloads = r#"keygate_tls_reloads_total{listener="main"}"#;
    assert_eq!(gateway.metric(reloads).await, Some(0.0));

    // SIGHUP re-reads the certificate even though the files did not change.
    gateway.process.signal("HUP").await;
    support::eventually("SIGHUP reloads the certificate", || async {
        gateway.metric(reloads).await == Some(1.0)
    })
    .await;

    // A server without any certificate takes SIGHUP too (`systemctl reload`), and keeps serving.
    control_plane.process.signal("HUP").await;
    let reply = support::send("GET", &health, &[], b"").await;
    assert_eq!(reply.status, 200);
    gateway.process.terminate().await;
    control_plane.process.terminate().await;
}
