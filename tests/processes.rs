//! The real `keygate` binary as separate processes: a control plane, an echo upstream and two
//! gateways, all on port 0, found through the one line each prints when bound; a key created
//! with the CLI works through both gateways; SIGTERM stops every process cleanly.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use support::{DEADLINE, expect_verdict};

/// A child process killed on drop if the test fails before stopping it.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(exit) = self.0.try_wait().unwrap() {
                assert!(exit.success(), "exited with {exit}");
                return;
            }
            assert!(start.elapsed() < DEADLINE, "did not stop after SIGTERM");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Starts `keygate args…` and returns it with the first line it printed.
fn start(args: &[&str]) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env("KEYGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (Process(child), line.trim().to_owned())
}

/// `keygate control-plane` on free ports with `database` and the two tokens.
fn start_control_plane(
    database: &str,
    admin_token: &str,
    gateway_token: &str,
) -> (Process, String) {
    start(&[
        "control-plane",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--database",
        database,
        "--admin-token",
        admin_token,
        "--gateway-token",
        gateway_token,
    ])
}

/// The address after `marker` in a "listening on" line.
fn addr_after<'a>(line: &'a str, marker: &str) -> &'a str {
    let rest = &line[line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in {line:?}"))
        + marker.len()..];
    rest.split([' ', ')']).next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_sync_serve_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let admin_token = keygate::dev::random_token();
    let gateway_token = keygate::dev::random_token();

    let (control_plane, line) = start_control_plane(&database, &admin_token, &gateway_token);
    assert!(
        line.starts_with("keygate control-plane listening on 127.0.0.1:"),
        "{line}"
    );
    let grpc = format!("http://{}", addr_after(&line, "listening on "));

    let (upstream, line) = start(&["echo-upstream", "--listen", "127.0.0.1:0"]);
    let upstream_url = format!("http://{}", addr_after(&line, "listening on "));

    let mut gateways = Vec::new();
    for id in ["proc-a", "proc-b"] {
        let (process, line) = start(&[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream_url,
            "--control-plane",
            &grpc,
            "--gateway-token",
            &gateway_token,
            "--gateway-id",
            id,
        ]);
        assert!(
            line.starts_with("keygate proxy listening on 127.0.0.1:"),
            "{line}"
        );
        assert!(line.contains("(admin 127.0.0.1:"), "{line}");
        let url = format!("http://{}/", addr_after(&line, "listening on "));
        gateways.push((process, url));
    }

    let created = tokio::task::spawn_blocking({
        let (grpc, admin_token) = (grpc.clone(), admin_token.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(["keys", "create", "--owner", "proc", "--json"])
                .env("KEYGATE_ENDPOINT", grpc)
                .env("KEYGATE_TOKEN", admin_token)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = created["key"].as_str().unwrap();
    for (_, url) in &gateways {
        expect_verdict(url, key, 200, None).await;
    }

    for (process, _) in gateways {
        process.terminate();
    }
    upstream.terminate();
    control_plane.terminate();
}

/// `kill -HUP` the process.
fn hangup(process: &Process) {
    let status = Command::new("kill")
        .args(["-HUP", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The value of the Prometheus sample whose line starts with `series` at `url`.
async fn sample(url: &str, series: &str) -> Option<f64> {
    let page = support::send("GET", url, &[], b"").await;
    String::from_utf8_lossy(&page.body)
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_never_stops_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::tls::Pki::new("sighup CA");
    let (cert, key) = pki.server("gateway", None);
    let database = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let gateway_token = keygate::dev::random_token();
    let (control_plane, line) =
        start_control_plane(&database, &keygate::dev::random_token(), &gateway_token);
    let grpc = format!("http://{}", addr_after(&line, "listening on "));
    let health = format!("http://{}/healthz", addr_after(&line, "(http "));
    let (gateway, line) = start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--control-plane",
        &grpc,
        "--gateway-token",
        &gateway_token,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let metrics = format!("http://{}/metrics", addr_after(&line, "(admin "));
    let reloads = r#"keygate_tls_reloads_total{listener="main"}"#;
    assert_eq!(sample(&metrics, reloads).await, Some(0.0));

    // SIGHUP re-reads the certificate even though the files did not change.
    hangup(&gateway);
    support::eventually("SIGHUP reloads the certificate", || {
        let metrics = metrics.clone();
        async move { sample(&metrics, reloads).await == Some(1.0) }
    })
    .await;

    // A server without any certificate takes SIGHUP too (`systemctl reload`), and keeps serving.
    hangup(&control_plane);
    let reply = support::send("GET", &health, &[], b"").await;
    assert_eq!(reply.status, 200);
    gateway.terminate();
    control_plane.terminate();
}
