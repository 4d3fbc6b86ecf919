//! Enrollment links by email, end to end: `keygate enrollments create --email` and
//! `--users-file` through the real binary, against a real control plane whose `smtp_url` points
//! at an SMTP sink (tests/support/smtp.rs), or at a closed port. The link in the message enrolls
//! a passkey once (a software authenticator performs the real WebAuthn registration); a send
//! that fails leaves a revoked link and a token shown nowhere; a control plane without
//! `smtp_url` makes no link at all; bad email settings stop the control plane at start.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use keygate_control_plane::config::SmtpCredentials;
use keygate_proto::pb;
use serde_json::{Value, json};
use support::cli::Cli;
use support::passkeys::Device;
use support::smtp::{Received, SmtpSink};
use support::{Cluster, Reply};

const ORG_NAME: &str = "Example Corp";
const SENDER: &str = "it@example.com";

/// A control plane (no gateway) that emails through `smtp_url`; rate limits off, so the many
/// calls of a test are never throttled.
async fn cluster_mailing_to(smtp_url: Option<String>) -> Cluster {
    Cluster::start_configured(
        0,
        Some(Box::new(move |config| {
            config.passkey_rate_per_address = 0;
            config.passkey_rate_per_user = 0;
            if let Some(url) = &smtp_url {
                config.smtp_url = Some(url.clone());
                config.smtp_from = Some(format!("Example IT <{SENDER}>"));
                config.org_name = Some(ORG_NAME.into());
            }
        })),
    )
    .await
}

/// The enrollment link in a message's text part: the line that holds `#enroll=`.
fn link_in(message: &Received) -> String {
    let text = message.part("text/plain").expect("a text/plain part");
    let links: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("#enroll="))
        .collect();
    assert_eq!(links.len(), 1, "{text}");
    links[0].trim().to_owned()
}

fn token_of(link: &str) -> String {
    link.split_once("#enroll=").unwrap().1.to_owned()
}

async fn begin(cluster: &Cluster, token: &str) -> Reply {
    cluster
        .post_json(
            "/v1/enroll/begin",
            &json!({ "token": token, "name": "Laptop" }),
        )
        .await
}

/// The user's links as `enrollments list --json` prints them.
async fn links_of(cli: &Cli, user: &str) -> Vec<Value> {
    let listed = cli.json(&["enrollments", "list", "--user", user]).await;
    listed["enrollments"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emailed_link_names_the_organisation_and_works_exactly_once() {
    let sink = SmtpSink::start().await;
    let cluster = cluster_mailing_to(Some(sink.url())).await;
    let cli = Cli::admin(&cluster);
    cli.json(&["users", "create", "alice"]).await;

    let out = cli
        .run(&[
            "enrollments",
            "create",
            "--user",
            "alice",
            "--email",
            "alice@example.com",
            "--json",
        ])
        .await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("#enroll="),
        "an emailed link is not printed: {stdout}"
    );
    let created: Value = serde_json::from_str(stdout.trim()).unwrap();
    let fields: BTreeSet<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["enrollmentId", "userId", "emailedTo", "expires"])
    );
    assert_eq!(created["userId"], "alice");
    assert_eq!(created["emailedTo"], "alice@example.com");

    // The sink holds the message: multipart, from the configured sender to the address given,
    // naming the organisation, the link and its expiry in both parts.
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.from, SENDER);
    assert_eq!(message.to, ["alice@example.com"]);
    let subject = message.header("Subject").unwrap();
    assert!(subject.contains(ORG_NAME), "{subject}");
    assert!(
        message
            .header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"),
        "{}",
        message.data
    );
    let link = link_in(message);
    assert!(
        link.starts_with(&format!("{}/#enroll=", cluster.passkey_origin())),
        "{link}"
    );
    // "2026-12-02T15:04:05Z" is written "2026-12-02 15:04 UTC".
    let expires = created["expires"].as_str().unwrap();
    let expiry = format!("{} {} UTC", &expires[..10], &expires[11..16]);
    let text = message.part("text/plain").unwrap();
    let html = message.part("text/html").unwrap();
    for part in [&text, &html] {
        assert!(part.contains(ORG_NAME), "{part}");
        assert!(part.contains(&expiry), "{expiry} in {part}");
        assert!(part.contains("alice"), "{part}");
    }
    assert!(html.contains(&format!("href=\"{link}\"")), "{html}");

    // The link enrolls a passkey once; the second use is refused, and nothing more is stored.
    let device = Device::new(&cluster.passkey_origin());
    let token = token_of(&link);
    let session = cluster.enroll(&device, &token, "Laptop").await;
    assert_eq!(session.user_id, "alice");
    let again = begin(&cluster, &token).await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (410, "ENROLLMENT_USED"),
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    let passkeys = cli.json(&["passkeys", "list", "--user", "alice"]).await;
    assert_eq!(passkeys["passkeys"].as_array().unwrap().len(), 1);
    let links = links_of(&cli, "alice").await;
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["enrollmentId"], created["enrollmentId"]);
    assert_eq!(links[0]["state"], "used");

    // A person reading the command's answer is told where the link went, not the link.
    let human = cli
        .run(&[
            "enrollments",
            "create",
            "--user",
            "alice",
            "--email",
            "a2@example.com",
        ])
        .await;
    assert!(human.status.success());
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(human.contains("Emailed enrollment link enr_"), "{human}");
    assert!(human.contains("a2@example.com"), "{human}");
    assert!(!human.contains("#enroll="), "{human}");
    assert_eq!(sink.messages().len(), 2);
    let audit = cli.json(&["audit", "list"]).await.to_string();
    assert!(
        !audit.contains(&token),
        "a link's token is in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_smtp_connection_fails_the_command_and_leaves_no_usable_link() {
    // A port nothing listens on: connections to it are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let cluster = cluster_mailing_to(Some(format!("smtp://{closed_addr}"))).await;
    let cli = Cli::admin(&cluster);
    cli.json(&["users", "create", "alice"]).await;

    let out = cli
        .run(&[
            "enrollments",
            "create",
            "--user",
            "alice",
            "--email",
            "alice@example.com",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "printed on stdout");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("could not email the enrollment link"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&closed_addr.to_string()),
        "names the relay: {stderr}"
    );
    assert!(stderr.contains("revoked and cannot be used"), "{stderr}");
    assert!(!stderr.contains("#enroll="), "{stderr}");

    // The one link made is revoked, and the revocation is audited with its reason.
    let links = links_of(&cli, "alice").await;
    assert_eq!(links.len(), 1, "{links:?}");
    let link_id = links[0]["enrollmentId"].as_str().unwrap().to_owned();
    assert!(stderr.contains(&link_id), "{stderr}");
    assert_eq!(links[0]["state"], "revoked");
    assert!(links[0]["voided"].is_string(), "{links:?}");
    let audit = cli.json(&["audit", "list"]).await;
    let voids: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == "enrollment.void")
        .collect();
    assert_eq!(voids.len(), 1, "{audit}");
    assert_eq!(voids[0]["target"], "alice");
    assert_eq!(voids[0]["actor"], "admin");
    assert_eq!(
        voids[0]["detail"],
        json!({ "enrollmentId": link_id, "reason": "email_failed", "changed": true })
    );

    // A malformed address is refused before any link is made.
    let malformed = cli
        .fails_with(
            &[
                "enrollments",
                "create",
                "--user",
                "alice",
                "--email",
                "alice-at-example",
            ],
            1,
        )
        .await;
    assert!(malformed.contains("not an email address"), "{malformed}");
    assert_eq!(links_of(&cli, "alice").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_never_sent_to_a_relay_that_offers_no_starttls() {
    // The sink offers no STARTTLS: with credentials, smtp:// insists on it, so the session
    // ends before AUTH or MAIL, and the link is revoked.
    let sink = SmtpSink::start().await;
    let smtp_url = sink.url();
    let cluster = Cluster::start_configured(
        0,
        Some(Box::new(move |config| {
            config.smtp_url = Some(smtp_url.clone());
            config.smtp_from = Some(SENDER.into());
            config.org_name = Some(ORG_NAME.into());
            config.smtp_credentials = Some(SmtpCredentials::new(
                "keygate".into(),
                "hunter2-password".into(),
            ));
        })),
    )
    .await;
    let cli = Cli::admin(&cluster);
    cli.json(&["users", "create", "alice"]).await;
    let refused = cli
        .fails_with(
            &[
                "enrollments",
                "create",
                "--user",
                "alice",
                "--email",
                "alice@example.com",
            ],
            1,
        )
        .await;
    assert!(refused.contains("could not email"), "{refused}");
    assert!(!refused.contains("hunter2"), "{refused}");
    let verbs = sink.verbs();
    assert!(verbs.contains(&"EHLO".to_owned()), "{verbs:?}");
    assert!(
        !verbs.iter().any(|verb| verb == "AUTH" || verb == "MAIL"),
        "{verbs:?}"
    );
    assert!(sink.messages().is_empty());
    let links = links_of(&cli, "alice").await;
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["state"], "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_url_email_is_refused_and_no_link_is_made() {
    let cluster = cluster_mailing_to(None).await;
    let cli = Cli::admin(&cluster);
    cli.json(&["users", "create", "alice"]).await;
    let refused = cli
        .fails_with(
            &[
                "enrollments",
                "create",
                "--user",
                "alice",
                "--email",
                "alice@example.com",
            ],
            1,
        )
        .await;
    assert!(refused.contains("smtp_url"), "{refused}");
    let status = cluster
        .admin()
        .await
        .create_enrollment(pb::CreateEnrollmentRequest {
            user_id: "alice".into(),
            expires_in_ms: 0,
            email: "alice@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(links_of(&cli, "alice").await.is_empty());
}

/// `count` users `{prefix}000`…, created through the Admin API.
async fn create_users(cluster: &Cluster, prefix: &str, count: usize) -> Vec<String> {
    let mut admin = cluster.admin().await;
    let mut users = Vec::new();
    for i in 0..count {
        let user = format!("{prefix}{i:03}");
        admin
            .create_user(pb::CreateUserRequest {
                user_id: user.clone(),
            })
            .await
            .unwrap();
        users.push(user);
    }
    users
}

/// Runs `enrollments create --users-file` on `csv`; returns (exit code, stdout lines as JSON,
/// stderr).
async fn bulk(cli: &Cli, csv: &str, extra: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), csv).unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let mut args = vec!["enrollments", "create", "--users-file", path.as_str()];
    args.extend_from_slice(extra);
    let out = cli.run(&args).await;
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_enrollment_makes_one_link_per_good_row_and_names_the_bad_ones() {
    let sink = SmtpSink::start().await;
    let cluster = cluster_mailing_to(Some(sink.url())).await;
    let cli = Cli::admin(&cluster);

    // Emailed: 100 rows; u013 is disabled and u057's address is malformed.
    let users = create_users(&cluster, "u", 100).await;
    let mut admin = cluster.admin().await;
    admin
        .set_user_enabled(pb::SetUserEnabledRequest {
            user_id: "u013".into(),
            enabled: false,
        })
        .await
        .unwrap();
    let mut csv = String::from("user,email,team\n");
    for user in &users {
        let email = if user == "u057" {
            "u057-at-example.com".to_owned()
        } else {
            format!("{user}@example.com")
        };
        csv.push_str(&format!("{user},{email},blue\n"));
    }
    let (code, lines, stderr) = bulk(&cli, &csv, &["--email-column", "email"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(lines.len(), 98, "{stderr}");
    let summary: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        summary[0], "enrolled 98 of 100 users; 2 failed:",
        "{stderr}"
    );
    // The header is line 1, so user uNNN is on line NNN + 2.
    assert!(
        summary[1].starts_with("  line 15, user \"u013\": "),
        "{stderr}"
    );
    assert!(summary[1].contains("disabled"), "{stderr}");
    assert!(
        summary[2].starts_with("  line 59, user \"u057\": "),
        "{stderr}"
    );
    assert!(summary[2].contains("not an email address"), "{stderr}");
    assert!(
        summary[3].starts_with("error: 2 of 100 rows failed"),
        "{stderr}"
    );
    assert_eq!(summary.len(), 4, "{stderr}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 98);
    let recipients: BTreeSet<String> = messages.iter().map(|m| m.to.join(",")).collect();
    let emailed: BTreeSet<String> = lines
        .iter()
        .map(|line| {
            assert!(line.get("link").is_none(), "{line}");
            line["emailedTo"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(recipients, emailed);
    assert!(!recipients.contains("u013@example.com"));
    let tokens: BTreeSet<String> = messages.iter().map(|m| token_of(&link_in(m))).collect();
    assert_eq!(tokens.len(), 98, "every link is its own");
    // Atomic per user: the failed rows left no link behind.
    assert!(links_of(&cli, "u057").await.is_empty());
    assert!(links_of(&cli, "u013").await.is_empty());
    assert_eq!(links_of(&cli, "u058").await.len(), 1);

    // Printed: 100 rows of users that exist but "ghost", and one row with no user; the links
    // come out as JSON lines, in file order, and each one works.
    let mut users = create_users(&cluster, "v", 100).await;
    users[42] = "ghost".into();
    users[70] = String::new();
    let csv: String = std::iter::once("User,team\n".to_owned())
        .chain(users.iter().map(|user| format!("{user},red\n")))
        .collect();
    let (code, lines, stderr) = bulk(&cli, &csv, &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(lines.len(), 98, "{stderr}");
    assert!(
        stderr.contains("  line 44, user \"ghost\": user \"ghost\" not found"),
        "{stderr}"
    );
    assert!(stderr.contains("  line 72, user \"\": no user"), "{stderr}");
    let printed_lines: Vec<u64> = lines
        .iter()
        .map(|line| line["line"].as_u64().unwrap())
        .collect();
    assert!(
        printed_lines.windows(2).all(|pair| pair[0] < pair[1]),
        "file order"
    );
    let first = &lines[0];
    assert_eq!(first["userId"], "v000");
    assert_eq!(first["line"], 2);
    let device = Device::new(&cluster.passkey_origin());
    let session = cluster
        .enroll(
            &device,
            &token_of(first["link"].as_str().unwrap()),
            "Laptop",
        )
        .await;
    assert_eq!(session.user_id, "v000");

    // Every row fine: exit 0, with the summary.
    let (code, lines, stderr) = bulk(&cli, "user\nv001\nv002\n", &[]).await;
    assert_eq!((code, lines.len()), (Some(0), 2), "{stderr}");
    assert_eq!(stderr.trim(), "enrolled 2 of 2 users");

    // A file that cannot be used at all is refused before any link is made (exit 78).
    let (code, lines, stderr) = bulk(&cli, "name,email\nu057,u057@example.com\n", &[]).await;
    assert_eq!((code, lines.len()), (Some(78), 0), "{stderr}");
    assert!(stderr.contains("no `user` column"), "{stderr}");
    let (code, _, stderr) = bulk(&cli, "user\nu057\n", &["--email-column", "email"]).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("no `email` column"), "{stderr}");
    assert!(links_of(&cli, "u057").await.is_empty());
}

/// `keygate control-plane` with `toml` as its config file and `env` set: how it ended.
fn control_plane_with(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, toml).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    command
        .args(["control-plane", "--config"])
        .arg(&config)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--database")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("keygate.db").display()
        ))
        .args(["--admin-token", "admin-token-0123456789"])
        .args(["--gateway-token", "gateway-token-0123456789"])
        .env_remove("KEYGATE_SMTP_USER")
        .env_remove("KEYGATE_SMTP_PASSWORD");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn bad_email_settings_stop_the_control_plane_with_a_clear_error() {
    let good = "smtp_url = \"smtp://127.0.0.1:2525\"\n\
                smtp_from = \"it@example.com\"\n\
                org_name = \"Example Corp\"\n";
    for (toml, env, says) in [
        (
            "smtp_url = \"smtp://127.0.0.1:2525\"\norg_name = \"Example Corp\"\n",
            &[][..],
            "smtp_url needs smtp_from",
        ),
        (
            "smtp_url = \"http://mail.example.com\"\nsmtp_from = \"it@example.com\"\norg_name = \"X\"\n",
            &[][..],
            "smtp_url must start with smtp:// or smtps://",
        ),
        (
            "smtp_url = \"smtp://keygate:hunter2@mail.example.com\"\nsmtp_from = \"it@example.com\"\norg_name = \"X\"\n",
            &[][..],
            "must not hold a user or password",
        ),
        (
            good,
            &[("KEYGATE_SMTP_USER", "keygate")][..],
            "set both KEYGATE_SMTP_USER",
        ),
        (
            "smtp_from = \"it@example.com\"\n",
            &[][..],
            "smtp_from is set but smtp_url is not",
        ),
    ] {
        let (code, stderr) = control_plane_with(toml, env);
        assert_eq!(code, Some(78), "{toml}: {stderr}");
        assert!(stderr.contains(says), "{toml}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
