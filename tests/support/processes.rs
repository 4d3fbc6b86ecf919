//! The real `keygate` binary as child processes of a test: control planes, gateways, the echo
//! upstream and operator commands. A server is found through the one "listening on" line it
//! prints once bound; its stderr goes to a temporary file that is printed only when the test
//! fails; it is killed when dropped.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{DEADLINE, send};

/// The binary under test.
pub const KEYGATE: &str = env!("CARGO_BIN_EXE_keygate");

/// The tokens of one deployment: operators present `admin`, gateways `gateway`.
#[derive(Clone)]
pub struct Tokens {
    pub admin: String,
    pub gateway: String,
}

impl Tokens {
    pub fn random() -> Self {
        Self {
            admin: keygate::dev::random_token(),
            gateway: keygate::dev::random_token(),
        }
    }
}

/// A running `keygate` server process, killed on drop.
pub struct Process {
    name: String,
    child: Child,
    /// Where its stderr goes.
    log: tempfile::NamedTempFile,
    /// The first line it printed on stdout.
    pub line: String,
}

impl Process {
    /// Starts `keygate args…` (logging at warn level) and returns once it has printed its first
    /// line. `name` labels it in failure messages.
    pub async fn start(name: &str, args: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let stderr = log.as_file().try_clone().expect("log file handle");
        let mut child = Command::new(KEYGATE)
            .args(args)
            .env("KEYGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("keygate starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{name} printed nothing within {DEADLINE:?}"))
            .expect("read stdout");
        // Whatever else it prints is read and dropped, so that no write meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut process = Self {
            name: name.to_owned(),
            child,
            log,
            line: String::new(),
        };
        match first {
            Some(line) => process.line = line,
            None => {
                let status = process.child.wait().await;
                panic!(
                    "{name} exited ({status:?}) before printing a line; stderr:\n{}",
                    process.log_text()
                );
            }
        }
        process
    }

    /// Everything the process has written to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The address after `marker` in the first line, e.g. after "listening on ".
    pub fn addr_after(&self, marker: &str) -> String {
        addr_after(&self.line, marker).to_owned()
    }

    /// SIGKILL: no shutdown path runs, open connections are reset by the kernel.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Sends the signal `kill` knows as `signal` (e.g. "HUP") and returns at once.
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(mut self) {
        self.signal("TERM").await;
        let exit = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop after SIGTERM", self.name))
            .expect("wait");
        assert!(
            exit.success(),
            "{} exited with {exit}; stderr:\n{}",
            self.name,
            self.log_text()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of {} ----\n{}---- end of {} ----",
                self.name,
                self.log_text(),
                self.name
            );
        }
    }
}

/// The address after `marker` in a "listening on" line.
pub fn addr_after<'a>(line: &'a str, marker: &str) -> &'a str {
    let start = line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in {line:?}"))
        + marker.len();
    line[start..].split([' ', ')']).next().expect("an address")
}

/// A `keygate control-plane` process.
pub struct ControlPlaneProcess {
    pub process: Process,
    /// `http://` URL of the gRPC listener (Admin and Sync).
    pub grpc: String,
    /// `http://` URL of the HTTP listener.
    pub http: String,
}

impl ControlPlaneProcess {
    /// Starts a control plane on `database` with `tokens`, its gRPC listener on `grpc_listen`
    /// (`127.0.0.1:0` for any free port), its HTTP listener on a free port.
    pub async fn start(name: &str, database: &str, tokens: &Tokens, grpc_listen: &str) -> Self {
        let process = Process::start(
            name,
            &[
                "control-plane",
                "--grpc-listen",
                grpc_listen,
                "--http-listen",
                "127.0.0.1:0",
                "--database",
                database,
                "--admin-token",
                &tokens.admin,
                "--gateway-token",
                &tokens.gateway,
            ],
        )
        .await;
        assert!(
            process
                .line
                .starts_with("keygate control-plane listening on "),
            "{name}: {}",
            process.line
        );
        Self {
            grpc: format!("http://{}", process.addr_after("listening on ")),
            http: format!("http://{}", process.addr_after("(http ")),
            process,
        }
    }

    /// An Admin client of this control plane.
    pub async fn admin(&self, tokens: &Tokens) -> keygate::admin_client::AdminClient {
        keygate::admin_client::connect(&self.grpc, Some(&tokens.admin), None)
            .await
            .expect("admin client connects")
    }
}

/// A `keygate proxy` process with one route `/` to an upstream.
pub struct GatewayProcess {
    pub id: String,
    pub process: Process,
    /// `http://` URL of the main listener (`https://` with `--tls-cert`), without a path.
    pub base: String,
    /// `http://` URL of the admin listener.
    pub admin: String,
}

impl GatewayProcess {
    /// Starts gateway `id` in front of `upstream`, syncing from `control_planes` in failover
    /// order, with further `extra` flags; returns once it is ready (synced and fresh).
    pub async fn start(
        id: &str,
        upstream: &str,
        control_planes: &[&str],
        tokens: &Tokens,
        extra: &[&str],
    ) -> Self {
        let mut args = vec![
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--gateway-token",
            &tokens.gateway,
            "--gateway-id",
            id,
        ];
        for url in control_planes {
            args.extend(["--control-plane", url]);
        }
        args.extend(extra);
        let process = Process::start(id, &args).await;
        assert!(
            process.line.starts_with("keygate proxy listening on "),
            "{id}: {}",
            process.line
        );
        let scheme = if extra.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        let gateway = Self {
            id: id.to_owned(),
            base: format!("{scheme}://{}", process.addr_after("listening on ")),
            admin: format!("http://{}", process.addr_after("(admin ")),
            process,
        };
        let ready = &gateway;
        eventually_within(DEADLINE, &format!("{id} ready"), move || async move {
            ready.readiness().await.0 == 200
        })
        .await;
        gateway
    }

    /// The URL of `path` on the main listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `/readyz`: its status and JSON body (`ready`, `appliedRevision`, `stalenessMs`,
    /// `connected`, `snapshotsApplied`, `draining`).
    pub async fn readiness(&self) -> (u16, Value) {
        let reply = send("GET", &format!("{}/readyz", self.admin), &[], b"").await;
        (reply.status, reply.json())
    }

    /// The value of the Prometheus sample whose line starts with `series` on `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let page = send("GET", &format!("{}/metrics", self.admin), &[], b"").await;
        String::from_utf8_lossy(&page.body)
            .lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }
}

/// Starts `keygate echo-upstream` on a free port; returns it with its `http://` URL.
pub async fn start_echo_upstream() -> (Process, String) {
    let process = Process::start(
        "echo-upstream",
        &["echo-upstream", "--listen", "127.0.0.1:0"],
    )
    .await;
    let url = format!("http://{}", process.addr_after("listening on "));
    (process, url)
}

/// What an operator command printed and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    /// Stdout, parsed as the one JSON object `--json` prints.
    pub json: Value,
    pub stderr: String,
}

/// Runs `keygate args… --json` against `endpoint` as an operator with `tokens`.
pub async fn keygate_cli(endpoint: &str, tokens: &Tokens, args: &[&str]) -> CliOutput {
    let output = Command::new(KEYGATE)
        .args(args)
        .args(["--json", "--endpoint", endpoint])
        .env("KEYGATE_TOKEN", &tokens.admin)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE * 2, output)
        .await
        .unwrap_or_else(|_| panic!("keygate {args:?} did not finish"))
        .expect("keygate runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "keygate {args:?}: stdout is not one JSON object ({error}): {stdout}; stderr: {stderr}"
        )
    });
    CliOutput {
        code: output.status.code().unwrap_or(-1),
        json,
        stderr,
    }
}

/// Runs `keygate args…` to its end (at most [`DEADLINE`]); returns its exit code and stderr.
pub async fn run_to_exit(args: &[&str]) -> (i32, String) {
    let output = Command::new(KEYGATE)
        .args(args)
        .env("KEYGATE_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .unwrap_or_else(|_| panic!("keygate {args:?} still runs after {DEADLINE:?}"))
        .expect("keygate runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Polls `check` every 10 ms until it holds, failing the test after `limit`.
pub async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `sqlite://` URL for `keygate.db` in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("keygate.db").display())
}
