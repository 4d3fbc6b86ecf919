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

    let (control_plane, line) = start(&[
        "control-plane",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--database",
        &database,
        "--admin-token",
        &admin_token,
        "--gateway-token",
        &gateway_token,
    ]);
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
