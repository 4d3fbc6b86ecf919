//! The passkey page in a real browser: a control plane, one gateway and the echo upstream
//! in-process, and `tests/browser/passkeys.mjs` driving headless Chromium with a CDP virtual
//! authenticator through enrollment from a link, sign-in, the list with each passkey's provider,
//! adding a second passkey, renaming it, removing one, the refusal to remove the last, sign-out,
//! a sign-in with the removed passkey, sign-in again with the button and from autofill
//! (conditional mediation, where Chromium offers it), and an API call through the gateway with
//! the session cookie. The script also checks the WebAuthn Signal API calls the page makes.
//!
//! The control plane gets an `--aaguid-names` list that names the AAGUID of Chromium's virtual
//! platform authenticator, with an icon, so the page has a provider name and icon to show (the
//! community list does not name a test device); the virtual security key's passkey shows
//! "Unknown authenticator".
//!
//! The same flow runs twice: over plain HTTP (the origin `http://localhost:<port>`, which browsers
//! treat as a secure context), and over HTTPS, with the control plane (gRPC and HTTP) and the
//! gateway serving certificates from a throwaway CA, so the relying-party origin is
//! `https://localhost:<port>` and the session cookie is `Secure`. Chromium is told to accept
//! exactly those two server certificates by their SPKI hashes
//! (`--ignore-certificate-errors-spki-list`), not to ignore certificate errors in general. The
//! runs leave screenshots of the passkey page in `target/test-artifacts/passkey-page.png` and
//! `passkey-page-https.png`.
//!
//! Needs Node.js, Debian's Chromium and the pinned playwright-core: `tests/browser/setup.sh`
//! installs them (README's test command runs it first). Without them the tests fail and say so.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keygate::admin_client::AdminClient;
use keygate_control_plane::ControlPlaneConfig;
use keygate_proto::pb;
use support::Cluster;
use support::tls::Pki;

/// The whole browser run, Chromium's start included; the script has its own 90 s bound.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

const CHROMIUM: &str = "/usr/bin/chromium";
const USER_ID: &str = "ada@example.com";

/// The AAGUID of Chromium's virtual platform (`internal`) authenticator. Its virtual USB
/// security key reports the all-zero AAGUID, so that passkey stays "Unknown authenticator".
const VIRTUAL_AUTHENTICATOR_AAGUID: &str = "01020304-0506-0708-0102-030405060708";
/// The provider name the test's AAGUID list gives them.
const VIRTUAL_PROVIDER: &str = "Chromium virtual authenticator";
/// Its icon: a key on a blue tile.
const VIRTUAL_PROVIDER_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><rect width="24" height="24" rx="5" fill="#2456d6"/><circle cx="8.5" cy="12" r="3.5" fill="none" stroke="#fff" stroke-width="2"/><path d="M12 12h8m-3 0v3m3-3v2" fill="none" stroke="#fff" stroke-width="2" stroke-linecap="round"/></svg>"##;

/// One Chromium at a time: the two runs share a small machine, and each has a time bound.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails (never skips) when what the browser test needs is not installed.
fn require_browser_tools() {
    let fix = "run tests/browser/setup.sh (README's test command does) to install them";
    assert!(
        std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success()),
        "the browser test needs Node.js (`node` on PATH): {fix}"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "the browser test needs Chromium at {CHROMIUM}: {fix}"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "the browser test needs playwright-core in tests/browser/node_modules: {fix}"
    );
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// An `--aaguid-names` list (the community list's format) naming Chromium's virtual
/// authenticators, written into `dir`.
fn aaguid_names(dir: &Path) -> PathBuf {
    use base64::Engine as _;
    let icon = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(VIRTUAL_PROVIDER_SVG)
    );
    let list = serde_json::json!({
        VIRTUAL_AUTHENTICATOR_AAGUID: { "name": VIRTUAL_PROVIDER, "icon_light": icon },
    });
    let path = dir.join("aaguid-names.json");
    std::fs::write(&path, list.to_string()).unwrap();
    path
}

/// A control plane and one gateway, over plain HTTP or, with `pki`, over TLS throughout.
struct Servers {
    cluster: Cluster,
    /// Holds the AAGUID list the control plane read at start.
    _names_dir: tempfile::TempDir,
    /// The CA and the server certificates (kept on disk while the servers run).
    pki: Option<Pki>,
    /// The server certificates Chromium is to accept.
    server_certs: Vec<PathBuf>,
}

impl Servers {
    async fn start(scheme: Scheme) -> Self {
        // The RP id is `localhost` and the origin defaults to <scheme>://localhost:<HTTP port>:
        // the browser must use `localhost`, not 127.0.0.1, for WebAuthn to accept the page and
        // for the host-scoped session cookie to reach the gateway on another port of the host.
        let names_dir = tempfile::tempdir().unwrap();
        let names = aaguid_names(names_dir.path());
        if scheme == Scheme::Http {
            let cluster = Cluster::start_configured(
                1,
                Some(Box::new(move |config| {
                    config.rp_id = Some("localhost".into());
                    config.aaguid_names = Some(names.clone());
                })),
            )
            .await;
            return Self {
                cluster,
                _names_dir: names_dir,
                pki: None,
                server_certs: Vec::new(),
            };
        }
        let pki = Pki::new("keygate browser test CA");
        let (cp_cert, cp_key) = pki.server("control-plane", None);
        let cert = cp_cert.clone();
        let mut cluster = Cluster::start_configured(
            0,
            Some(Box::new(move |config: &mut ControlPlaneConfig| {
                config.rp_id = Some("localhost".into());
                config.aaguid_names = Some(names.clone());
                config.tls_cert = Some(cert.clone());
                config.tls_key = Some(cp_key.clone());
            })),
        )
        .await;
        let (gateway_cert, gateway_key) = pki.server("gateway", None);
        let mut config = cluster.gateway_config(0);
        // The control plane's certificate names localhost; the gateway verifies it against
        // the test CA.
        config.control_plane = vec![format!("https://localhost:{}", cluster.grpc_addr.port())];
        config.ca = Some(pki.ca_path.clone());
        config.tls_cert = Some(gateway_cert.clone());
        config.tls_key = Some(gateway_key);
        cluster.add_gateway_with(config).await;
        Self {
            cluster,
            _names_dir: names_dir,
            pki: Some(pki),
            server_certs: vec![cp_cert, gateway_cert],
        }
    }

    async fn admin(&self) -> AdminClient {
        match &self.pki {
            None => self.cluster.admin().await,
            Some(pki) => keygate::admin_client::connect(
                &format!("https://localhost:{}", self.cluster.grpc_addr.port()),
                Some(&self.cluster.admin_token),
                Some(&pki.ca_path),
            )
            .await
            .expect("admin client over TLS"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passkey_page_enrolls_signs_in_manages_passkeys_and_calls_the_gateway() {
    passkey_flow(Scheme::Http, "passkey-page.png").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passkey_page_does_the_same_over_https_with_an_https_origin() {
    passkey_flow(Scheme::Https, "passkey-page-https.png").await;
}

/// Runs `passkeys.mjs` against servers speaking `scheme`, saving the screenshot as
/// `target/test-artifacts/<screenshot_name>`.
async fn passkey_flow(scheme: Scheme, screenshot_name: &str) {
    require_browser_tools();
    let servers = Servers::start(scheme).await;
    let cluster = &servers.cluster;
    let page_origin = format!(
        "{}://localhost:{}",
        scheme.as_str(),
        cluster.http_addr.port()
    );

    let mut admin = servers.admin().await;
    admin
        .create_user(pb::CreateUserRequest {
            user_id: USER_ID.into(),
        })
        .await
        .expect("create user");
    let enrollment = admin
        .create_enrollment(pb::CreateEnrollmentRequest {
            user_id: USER_ID.into(),
            expires_in_ms: 0,
            ..Default::default()
        })
        .await
        .expect("create enrollment")
        .into_inner();
    // The link is on the relying party's origin, so this also checks `rp_origin`'s scheme.
    assert!(
        enrollment
            .link
            .starts_with(&format!("{page_origin}/#enroll=")),
        "enrollment link {} is not on {page_origin}",
        enrollment.link
    );
    // The gateway's `/` route takes a key or a session (the default auth).
    let gateway_url = format!(
        "{}://localhost:{}/orders?from=browser",
        scheme.as_str(),
        cluster.gateways[0].addr.port()
    );

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join(screenshot_name);
    let _ = std::fs::remove_file(&screenshot);
    let trusted = std::env::join_paths(&servers.server_certs).unwrap();

    let _one_browser = ONE_BROWSER.lock().await;
    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join("passkeys.mjs"))
        .current_dir(browser_dir())
        .env("KEYGATE_ENROLL_URL", &enrollment.link)
        .env("KEYGATE_USER_ID", USER_ID)
        .env("KEYGATE_CP_URL", format!("{page_origin}/"))
        .env("KEYGATE_GATEWAY_URL", &gateway_url)
        .env("KEYGATE_SCREENSHOT", &screenshot)
        .env("KEYGATE_PROVIDER", VIRTUAL_PROVIDER)
        .env("KEYGATE_CHROMIUM", CHROMIUM)
        .env("KEYGATE_TRUST_CERTS", &trusted)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("the browser run took longer than {BROWSER_DEADLINE:?}"))
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "{stdout}{stderr}browser run over {}: {:?}",
        scheme.as_str(),
        started.elapsed()
    );
    assert!(
        output.status.success(),
        "the browser test over {} failed ({}):\n{stdout}{stderr}",
        scheme.as_str(),
        output.status
    );
    // The script says which protocol the page and the gateway were served over.
    assert!(
        stdout.contains(&format!("page served over {}:", scheme.as_str())),
        "the page was not served over {}:\n{stdout}",
        scheme.as_str()
    );

    let png = std::fs::read(&screenshot).unwrap_or_else(|e| {
        panic!("no screenshot at {}: {e}", screenshot.display());
    });
    assert!(
        png.len() > 1024 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG ({} bytes)",
        screenshot.display(),
        png.len()
    );
}
