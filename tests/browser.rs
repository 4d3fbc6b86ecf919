//! The passkey page in a real browser: a control plane, one gateway and the echo upstream
//! in-process, and `tests/browser/passkeys.mjs` driving headless Chromium with a CDP virtual
//! authenticator through enrollment from a link, sign-in, the list, adding a second passkey,
//! removing one, the refusal to remove the last, sign-out, sign-in again, and an API call through
//! the gateway with the session cookie. It leaves a screenshot of the passkey page in
//! `target/test-artifacts/passkey-page.png`.
//!
//! Needs Node.js, Debian's Chromium and the pinned playwright-core: `tests/browser/setup.sh`
//! installs them (README's test command runs it first). Without them the test fails and says so.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keygate_proto::pb;
use support::Cluster;

/// The whole browser run, Chromium's start included; the script has its own 90 s bound.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

const CHROMIUM: &str = "/usr/bin/chromium";
const USER_ID: &str = "ada@example.com";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passkey_page_enrolls_signs_in_manages_passkeys_and_calls_the_gateway() {
    require_browser_tools();
    // The RP id is `localhost` and the origin defaults to http://localhost:<HTTP port>: the
    // browser must use `localhost`, not 127.0.0.1, for WebAuthn to accept the page and for the
    // host-scoped session cookie to reach the gateway on another port of the same host.
    let cluster = Cluster::start_configured(
        1,
        Some(Box::new(|config| config.rp_id = Some("localhost".into()))),
    )
    .await;
    let page_origin = format!("http://localhost:{}", cluster.http_addr.port());

    let mut admin = cluster.admin().await;
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
        })
        .await
        .expect("create enrollment")
        .into_inner();
    assert!(
        enrollment
            .link
            .starts_with(&format!("{page_origin}/#enroll=")),
        "enrollment link {} is not on {page_origin}",
        enrollment.link
    );
    // The gateway's `/` route takes a key or a session (the default auth).
    let gateway_url = format!(
        "http://localhost:{}/orders?from=browser",
        cluster.gateways[0].addr.port()
    );

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("passkey-page.png");
    let _ = std::fs::remove_file(&screenshot);

    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join("passkeys.mjs"))
        .current_dir(browser_dir())
        .env("KEYGATE_ENROLL_URL", &enrollment.link)
        .env("KEYGATE_USER_ID", USER_ID)
        .env("KEYGATE_CP_URL", format!("{page_origin}/"))
        .env("KEYGATE_GATEWAY_URL", &gateway_url)
        .env("KEYGATE_SCREENSHOT", &screenshot)
        .env("KEYGATE_CHROMIUM", CHROMIUM)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("the browser run took longer than {BROWSER_DEADLINE:?}"))
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}browser run: {:?}", started.elapsed());
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}{stderr}",
        output.status
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
