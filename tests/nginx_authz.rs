//! A real nginx with `auth_request` to a real `keygate proxy`, in front of the echo upstream:
//! the example in deploy/examples/nginx/keygate.conf, with its addresses replaced, decides
//! every request by asking `/_keygate/v1/authz`. Valid keys reach the upstream with the
//! identity, unknown and disabled keys are refused with keygate's status and challenge, an
//! `auth = "none"` route passes without a credential, and a gateway past its propagation bound
//! refuses (fail closed).
//!
//! nginx comes from tests/nginx/setup.sh (Debian's package, built with auth_request).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keygate_proto::{ApiKey, KeyPrefix};
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Tokens, eventually_within, keygate_cli, sqlite_url,
    start_echo_upstream,
};
use support::{DEADLINE, Reply, send};
use tokio::process::{Child, Command};

const EXAMPLE: &str = "deploy/examples/nginx/keygate.conf";

/// An nginx in the foreground, one process, everything it writes in `dir`; killed on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    base: String,
}

impl Nginx {
    /// Starts nginx with the example's server block, pointed at `gateway` and `upstream`
    /// (`host:port` each), and waits until it accepts connections.
    async fn start(gateway: &str, upstream: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE))
            .expect("the nginx example");
        let server = replace_once(
            &example,
            "server 127.0.0.1:8080;",
            &format!("server {gateway};"),
        );
        let server = replace_once(
            &server,
            "server 127.0.0.1:3000;",
            &format!("server {upstream};"),
        );
        let server = replace_once(&server, "listen 80;", &format!("listen 127.0.0.1:{port};"));
        std::fs::write(dir.path().join("keygate.conf"), server).expect("write server block");
        let path = |name: &str| dir.path().join(name).display().to_string();
        // CI runs as root, where nginx would otherwise switch to `nobody`, who cannot read the
        // temporary directory.
        let user = if is_root() { "user root;" } else { "" };
        let main = format!(
            "{user}
daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {log} warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {server};
}}
",
            pid = path("nginx.pid"),
            log = path("error.log"),
            temp = dir.path().display(),
            server = path("keygate.conf"),
        );
        std::fs::write(dir.path().join("nginx.conf"), main).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .args([
                "-p",
                &path(""),
                "-c",
                &path("nginx.conf"),
                "-e",
                &path("error.log"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx starts (tests/nginx/setup.sh installs it)");
        let mut nginx = Self {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
        };
        let address = format!("127.0.0.1:{port}");
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(exit)) = nginx.child.try_wait() {
                panic!("nginx exited ({exit}):\n{}", nginx.error_log());
            }
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                return nginx;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "nginx did not listen on {address}:\n{}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("---- nginx error log ----\n{}", self.error_log());
        }
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in {EXAMPLE}");
    text.replacen(from, to, 1)
}

fn nginx_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("nginx")
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let headers: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(name, value)| (*name, value.as_bytes()))
        .collect();
    send("GET", url, &headers, b"").await
}

#[tokio::test]
async fn nginx_auth_request_asks_keygate_for_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::random();
    let control_plane = ControlPlaneProcess::start(
        "control-plane",
        &sqlite_url(dir.path()),
        &tokens,
        "127.0.0.1:0",
    )
    .await;
    let (_echo, echo_url) = start_echo_upstream().await;
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "ping_interval = \"200ms\"\n\n[[route]]\npath_prefix = \"/open\"\nupstream = \"{echo_url}\"\nauth = \"none\"\n"
        ),
    )
    .unwrap();
    let gateway = GatewayProcess::start(
        "gw-nginx",
        &echo_url,
        &[&control_plane.grpc],
        &tokens,
        &[
            "--config",
            config.to_str().unwrap(),
            "--propagation-bound",
            "2s",
        ],
    )
    .await;
    let nginx = Nginx::start(host_port(&gateway.base), host_port(&echo_url)).await;

    let created = keygate_cli(
        &control_plane.grpc,
        &tokens,
        &["keys", "create", "--owner", "alice"],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let key = created.json["key"].as_str().unwrap().to_owned();
    let key_id = created.json["keyId"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {key}");

    // A valid key reaches the upstream with the identity, and without the credential.
    let served = get(
        &nginx.url("/api/items?x=1"),
        &[("authorization", &bearer), ("x-keygate-owner", "mallory")],
    )
    .await;
    assert_eq!(
        served.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&served.body)
    );
    let echoed = served.json();
    assert_eq!(echoed["path"], "/api/items");
    assert_eq!(echoed["headers"]["x-keygate-owner"], "alice");
    assert_eq!(echoed["headers"]["x-keygate-key-id"], key_id.as_str());
    assert!(echoed["headers"].get("authorization").is_none(), "{echoed}");

    // An unknown (well-formed) key: 401 with keygate's challenge.
    let unknown = ApiKey::generate(&KeyPrefix::default());
    let unknown = get(&nginx.url("/api/items"), &[("x-api-key", &unknown)]).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let missing = get(&nginx.url("/api/items"), &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");

    // The `auth = "none"` route passes without a credential, and without a spoofed identity.
    let open = get(&nginx.url("/open/page"), &[("x-keygate-owner", "mallory")]).await;
    assert_eq!(open.status, 200);
    assert_eq!(open.json()["path"], "/open/page");
    assert!(open.json()["headers"].get("x-keygate-owner").is_none());
    // The original path is normalised like a proxied one: no climbing into the open route.
    let climbed = get(&nginx.url("/open/%2e%2e/api"), &[]).await;
    assert_eq!(climbed.status, 401);

    // A disabled key: 403.
    let disabled = keygate_cli(
        &control_plane.grpc,
        &tokens,
        &["keys", "disable", &key_id, "--wait"],
    )
    .await;
    assert_eq!(disabled.code, 0, "{}", disabled.stderr);
    let refused = get(&nginx.url("/api/items"), &[("authorization", &bearer)]).await;
    assert_eq!(refused.status, 403);

    // The control plane stops; past the bound the gateway refuses with STALE, and nginx
    // refuses with it (as 500: auth_request passes on only 401 and 403).
    let created_again = keygate_cli(
        &control_plane.grpc,
        &tokens,
        &["keys", "create", "--owner", "bob"],
    )
    .await;
    assert_eq!(created_again.code, 0, "{}", created_again.stderr);
    let bob = format!("Bearer {}", created_again.json["key"].as_str().unwrap());
    assert_eq!(
        get(&nginx.url("/api"), &[("authorization", &bob)])
            .await
            .status,
        200
    );
    control_plane.process.kill().await;
    let stale = &gateway;
    eventually_within(DEADLINE, "the gateway past its bound", move || async move {
        stale.readiness().await.0 == 503
    })
    .await;
    let refused = get(&nginx.url("/api"), &[("authorization", &bob)]).await;
    assert_eq!(
        refused.status, 500,
        "nginx turns keygate's 503 STALE into 500"
    );
    assert!(
        nginx
            .error_log()
            .contains("auth request unexpected status: 503"),
        "{}",
        nginx.error_log()
    );
    // Routes without auth keep working, as on the gateway itself.
    assert_eq!(get(&nginx.url("/open/page"), &[]).await.status, 200);
}
