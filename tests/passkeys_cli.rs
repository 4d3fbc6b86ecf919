//! The operator's passkey commands through the real `keygate` binary: users, enrollment links,
//! passkey listing and revocation, sign-out everywhere, signing-key rotation. Each prints
//! exactly one JSON object with `--json`, and a refusal is one line on stderr.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::Cluster;
use support::passkeys::Device;

struct Cli {
    endpoint: String,
    token: String,
}

impl Cli {
    async fn run(&self, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let (endpoint, token) = (self.endpoint.clone(), self.token.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(&args)
                .env("KEYGATE_ENDPOINT", &endpoint)
                .env("KEYGATE_TOKEN", &token)
                .env_remove("KEYGATE_LOG")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    /// Runs with `--json`, expects success and exactly one JSON object on stdout.
    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.run(&args).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
        let value: Value = serde_json::from_str(&stdout).unwrap();
        assert!(value.is_object(), "{stdout}");
        value
    }

    /// Runs and expects a failure with one line on stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_users_passkeys_and_sessions_from_the_command_line() {
    let cluster = Cluster::start_configured(
        1,
        Some(Box::new(|config| {
            config.passkey_rate_per_address = 0;
            config.passkey_rate_per_user = 0;
        })),
    )
    .await;
    let cli = Cli {
        endpoint: format!("http://{}", cluster.grpc_addr),
        token: cluster.admin_token.clone(),
    };

    let created = cli.json(&["users", "create", "alice"]).await;
    assert_eq!(created["userId"], "alice");
    assert_eq!(created["user"]["disabled"], false);
    let exists = cli.fails(&["users", "create", "alice"]).await;
    assert!(exists.contains("already exists"), "{exists}");

    let enrollment = cli
        .json(&[
            "enrollments",
            "create",
            "--user",
            "alice",
            "--expires",
            "2h",
        ])
        .await;
    let link = enrollment["link"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/#enroll=", cluster.passkey_origin())),
        "{link}"
    );
    assert!(enrollment["expires"].is_string());
    let unknown = cli
        .fails(&["enrollments", "create", "--user", "nobody"])
        .await;
    assert!(unknown.contains("not found"), "{unknown}");

    // The user enrolls with the link, on a software authenticator.
    let device = Device::new(&cluster.passkey_origin());
    let token = link.split_once("#enroll=").unwrap().1;
    let session = cluster.enroll(&device, token, "Laptop").await;

    let listed = cli.json(&["passkeys", "list", "--user", "alice"]).await;
    let passkey = &listed["passkeys"][0];
    assert_eq!(passkey["passkeyId"], session.passkey_id.as_str());
    assert_eq!(passkey["name"], "Laptop");
    for field in ["created", "lastUsed", "userAgent", "backedUp", "deviceType"] {
        assert!(passkey.get(field).is_some(), "{field} missing: {passkey}");
    }
    let human = cli.run(&["passkeys", "list", "--user", "alice"]).await;
    assert!(String::from_utf8_lossy(&human.stdout).contains(&session.passkey_id));

    let revoked = cli
        .json(&["sessions", "revoke", "--user", "alice", "--wait"])
        .await;
    assert!(revoked["revision"].as_u64().unwrap() > 0);
    assert_eq!(revoked["wait"]["complete"], true);

    let disabled = cli.json(&["users", "disable", "alice", "--wait"]).await;
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["changed"], true);
    assert_eq!(disabled["wait"]["complete"], true);
    let enabled = cli.json(&["users", "enable", "alice"]).await;
    assert_eq!(enabled["changed"], true);

    let rotated = cli.json(&["signing-keys", "rotate"]).await;
    assert!(rotated["keyId"].as_str().unwrap().starts_with("sk_"));
    assert!(rotated["retiredKeyId"].as_str().unwrap().starts_with("sk_"));
    assert!(rotated["retiredVerifyUntil"].is_string());

    let gone = cli
        .fails(&["passkeys", "revoke", "--user", "bob", &session.passkey_id])
        .await;
    assert!(
        gone.contains("not found") || gone.contains("no passkey"),
        "{gone}"
    );
    let revoked = cli
        .json(&[
            "passkeys",
            "revoke",
            "--user",
            "alice",
            &session.passkey_id,
            "--wait",
            "--timeout",
            "10s",
        ])
        .await;
    assert_eq!(revoked["revoked"], true);
    assert_eq!(revoked["wait"]["complete"], true);
    let listed = cli.json(&["passkeys", "list", "--user", "alice"]).await;
    assert_eq!(listed["passkeys"], Value::Array(Vec::new()));

    // Every change is in the audit log, and the link's token is not.
    let audit = cli.json(&["audit", "list"]).await;
    let text = audit.to_string();
    for action in [
        "user.create",
        "enrollment.create",
        "passkey.register",
        "sessions.revoke",
        "user.disable",
        "user.enable",
        "signing_key.rotate",
        "passkey.revoke",
    ] {
        assert!(text.contains(action), "{action} missing");
    }
    assert!(
        !text.contains(token),
        "the enrollment token is in the audit log"
    );
}
