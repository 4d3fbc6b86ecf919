//! The operator's passkey commands through the real `keygate` binary: users, enrollment links,
//! passkey listing and revocation, sign-out everywhere, signing-key rotation. Each prints
//! exactly one JSON object with `--json`, and a refusal is one line on stderr.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::Cluster;
use support::cli::Cli;
use support::passkeys::Device;

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
    let cli = Cli::admin(&cluster);

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
    // For a person: one line per key, newest first, saying what it is.
    let human = cli.run(&["signing-keys", "list"]).await;
    let lines: Vec<String> = String::from_utf8_lossy(&human.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let current = rotated["keyId"].as_str().unwrap();
    let retired = rotated["retiredKeyId"].as_str().unwrap();
    assert!(
        lines[0].starts_with(current) && lines[0].ends_with("current  sessions up to 12h"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(retired) && lines[1].contains("retired, verifies until"),
        "{lines:?}"
    );
    let human = cli.run(&["signing-keys", "revoke", retired]).await;
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains(&format!("Revoked signing key {retired}")),
        "{text}"
    );

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
