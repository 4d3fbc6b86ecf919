//! `keygate store copy` through the real binary: a control plane's SQLite store, with keys in
//! every state and passkey sessions, copied into PostgreSQL; a control plane on the copy then
//! answers every verification exactly as the original did, and a gateway of the original
//! resumes against it without a snapshot (same log id, same revisions). Bad input is one line
//! on stderr and a non-zero exit, with nothing half-done.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use keygate_proto::{ApiKey, KeyPrefix};
use keygate_test_postgres::TestPostgres;
use serde_json::{Value, json};
use support::cli::Cli;
use support::passkeys::{Device, Session};
use support::{Cluster, TestGateway, eventually, send};

/// What a gateway answers for `credential` (an API key or a session token): the status, the
/// error code, and on success the identity it forwards upstream (the echo upstream reflects
/// the `x-keygate-*` headers).
async fn verdict(gateway: &TestGateway, credential: &str) -> Value {
    let auth = format!("Bearer {credential}");
    let reply = send(
        "GET",
        &gateway.url("/verify"),
        &[("authorization", auth.as_bytes())],
        b"",
    )
    .await;
    if reply.status != 200 {
        return json!({"status": reply.status, "code": reply.code()});
    }
    let forwarded = reply.json()["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.starts_with("x-keygate-"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect::<BTreeMap<_, _>>();
    json!({"status": 200, "identity": forwarded})
}

async fn verdicts(gateway: &TestGateway, credentials: &[(String, String)]) -> Vec<Value> {
    let mut answers = Vec::new();
    for (what, credential) in credentials {
        answers.push(json!({"credential": what, "verdict": verdict(gateway, credential).await}));
    }
    answers
}

/// Google Password Manager's AAGUID (ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4).
const GOOGLE_AAGUID: [u8; 16] = [
    0xea, 0x9b, 0x8d, 0x66, 0x4d, 0x01, 0x1d, 0x21, 0x3c, 0xe4, 0xb6, 0xb4, 0x8c, 0xb5, 0x75, 0xd4,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_copied_to_postgres_answers_every_verification_as_the_original() {
    let postgres = TestPostgres::start().unwrap();
    let copy_url = postgres.create_database("copy").unwrap();
    let mut cluster = Cluster::start_configured(
        1,
        Some(Box::new(|config| {
            config.passkey_rate_per_address = 0;
            config.passkey_rate_per_user = 0;
        })),
    )
    .await;
    let cli = Cli::admin(&cluster);

    // Keys in every state, and passkey sessions: one signed in, one signed out.
    let mut credentials: Vec<(String, String)> = Vec::new();
    let mut create = async |name: &str, extra: &[&str]| {
        let mut args = vec!["keys", "create", "--owner", "acme", "--name", name];
        args.extend_from_slice(extra);
        let created = cli.json(&args).await;
        let (id, key) = (created["keyId"].as_str().unwrap(), created["key"].as_str());
        credentials.push((name.to_owned(), key.unwrap().to_owned()));
        id.to_owned()
    };
    create("plain", &[]).await;
    create("with meta", &["--meta", "plan=pro", "--meta", "tier=gold"]).await;
    create("expiring", &["--expires", "30d"]).await;
    let disabled = create("disabled", &[]).await;
    let deleted = create("deleted", &[]).await;
    let graceful = create("rerolled with grace", &[]).await;
    let revoked = create("rerolled without grace", &[]).await;
    cli.json(&["keys", "disable", &disabled]).await;
    cli.json(&["keys", "delete", &deleted]).await;
    for (id, grace, name) in [
        (&graceful, "1h", "replacement with grace"),
        (&revoked, "0s", "replacement without grace"),
    ] {
        let issued = cli.json(&["keys", "reroll", id, "--grace", grace]).await;
        let key = issued["key"].as_str().unwrap().to_owned();
        credentials.push((name.to_owned(), key));
    }
    let gone = cli
        .json(&[
            "keys",
            "create",
            "--owner",
            "gone",
            "--name",
            "owner revoked",
        ])
        .await;
    credentials.push((
        "owner revoked".into(),
        gone["key"].as_str().unwrap().to_owned(),
    ));
    cli.json(&["keys", "revoke-owner", "gone"]).await;
    // Limits: an identity and a credit balance are copied too.
    cli.json(&[
        "keys",
        "create",
        "--owner",
        "acme",
        "--name",
        "with credits",
        "--credits",
        "500",
        "--identity",
        "acme-team",
    ])
    .await;
    credentials.push((
        "never issued".into(),
        ApiKey::generate(&KeyPrefix::default()),
    ));
    credentials.push(("malformed".into(), "kg_0000".into()));

    // Alice's passkey is Google Password Manager's (its AAGUID), bob's of an unknown model.
    let device = Device::new(&cluster.passkey_origin()).with_aaguid(GOOGLE_AAGUID);
    let token = cluster.user_with_enrollment("alice").await;
    let alice: Session = cluster.enroll(&device, &token, "Laptop").await;
    let bob_device = Device::new(&cluster.passkey_origin());
    let token = cluster.user_with_enrollment("bob").await;
    let bob = cluster.enroll(&bob_device, &token, "Phone").await;
    cli.json(&["sessions", "revoke", "--user", "bob"]).await;
    credentials.push(("alice's session".into(), alice.token.clone()));
    credentials.push(("bob's revoked session".into(), bob.token.clone()));

    let alices_passkeys = cli.json(&["passkeys", "list", "--user", "alice"]).await;
    assert_eq!(
        alices_passkeys["passkeys"][0]["provider"],
        "Google Password Manager"
    );
    let original = cli.json(&["gateways"]).await;
    let head = original["headRevision"].as_u64().unwrap();
    cluster.wait_applied(head).await;
    let before = verdicts(&cluster.gateways[0], &credentials).await;
    let statuses: Vec<u64> = before
        .iter()
        .map(|answer| answer["verdict"]["status"].as_u64().unwrap())
        .collect();
    let codes: Vec<&str> = before
        .iter()
        .filter_map(|answer| answer["verdict"]["code"].as_str())
        .collect();
    assert!(statuses.contains(&200), "{before:#?}");
    for code in ["DISABLED", "NOT_FOUND", "EXPIRED", "REVOKED", "MALFORMED"] {
        assert!(codes.contains(&code), "{code} missing: {before:#?}");
    }
    let keys_before = cli.json(&["keys", "list", "--limit", "1000"]).await;
    let audit_before = cli.json(&["audit", "list", "--limit", "1000"]).await;
    let log_id = cluster.gateways[0].status.log_id();
    let snapshots = cluster.gateways[0].status.snapshots_applied();

    let from = format!("sqlite://{}", cluster.database_path().display());
    // A control plane still serving the source: refused, and the target is left untouched.
    let in_use = cli
        .fails_with(&["store", "copy", "--from", &from, "--to", &copy_url], 1)
        .await;
    assert!(
        in_use.contains("already using the SQLite database"),
        "{in_use}"
    );
    let tables = postgres
        .psql(
            "copy",
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'",
        )
        .unwrap();
    assert_eq!(tables.trim(), "0", "nothing was written to the target");

    cluster.stop_control_plane().await;
    let copied = cli
        .json(&["store", "copy", "--from", &from, "--to", &copy_url])
        .await;
    assert_eq!(copied["from"], from.as_str());
    assert_eq!(copied["to"], copy_url.as_str());
    assert_eq!(copied["logId"], log_id.as_str());
    assert_eq!(copied["head"], head);
    let listed = keys_before["keys"].as_array().unwrap().len();
    assert_eq!(copied["keys"], listed);
    assert_eq!(
        (
            copied["identities"].as_u64(),
            copied["creditBalances"].as_u64()
        ),
        (Some(1), Some(1)),
        "the identity acme-team, and the balance of the key with credits"
    );
    assert_eq!(
        (copied["users"].as_u64(), copied["passkeys"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(copied["sessions"], 2);
    assert_eq!(copied["events"], head, "no compaction yet: every event");
    assert_eq!(
        copied["auditRows"],
        audit_before["entries"].as_array().unwrap().len()
    );

    // A second copy into the same database is refused: it is not empty any more.
    let not_empty = cli
        .fails_with(&["store", "copy", "--from", &from, "--to", &copy_url], 1)
        .await;
    assert!(not_empty.contains("not empty"), "{not_empty}");

    // A restore under a new log id: the same content, another history for gateways.
    let restored_url = postgres.create_database("restored").unwrap();
    let restored = cli
        .json(&[
            "store",
            "copy",
            "--from",
            &from,
            "--to",
            &restored_url,
            "--new-log-id",
        ])
        .await;
    assert_eq!(restored["head"], head);
    assert_eq!(restored["keys"], listed);
    let new_log_id = restored["logId"].as_str().unwrap();
    assert!(new_log_id.starts_with("log_"), "{new_log_id}");
    assert_ne!(new_log_id, log_id.as_str());

    // The control plane starts again on the copy, on the same ports.
    cluster.configure_control_plane = Some(Box::new(move |config| {
        config.database = copy_url.clone();
        config.passkey_rate_per_address = 0;
        config.passkey_rate_per_user = 0;
    }));
    cluster.start_control_plane().await;
    assert_eq!(
        cli.json(&["keys", "list", "--limit", "1000"]).await,
        keys_before
    );
    assert_eq!(
        cli.json(&["audit", "list", "--limit", "1000"]).await,
        audit_before
    );
    assert_eq!(cli.json(&["gateways"]).await["headRevision"], head);
    // Passkeys keep their AAGUID (so their provider) and backup flags.
    assert_eq!(
        cli.json(&["passkeys", "list", "--user", "alice"]).await,
        alices_passkeys
    );

    // The original's gateway resumes where it was: same log, no snapshot.
    let status = cluster.gateways[0].status.clone();
    eventually("the gateway reconnects to the copy", || {
        let status = status.clone();
        async move { status.connected() }
    })
    .await;
    assert_eq!(status.log_id(), log_id);
    assert_eq!(status.snapshots_applied(), snapshots);

    // A new gateway, which takes its snapshot from the copy, answers exactly as the original's
    // gateway did; so does that gateway.
    cluster.add_gateway().await;
    assert_eq!(verdicts(&cluster.gateways[1], &credentials).await, before);
    assert_eq!(verdicts(&cluster.gateways[0], &credentials).await, before);
    // The passkey itself came along: the device signs in against the copy.
    let again = cluster.login(&device).await;
    assert_eq!(again.user_id, "alice");

    // Changes go on from the copied head, and reach both gateways.
    let plain = keys_before["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["name"] == "plain")
        .unwrap()["keyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let deleted = cli.json(&["keys", "delete", &plain, "--wait"]).await;
    assert_eq!(deleted["revision"], head + 1, "a sign-in appends no event");
    cluster.wait_applied(head + 1).await;
    for gateway in &cluster.gateways {
        assert_eq!(
            verdict(gateway, &credentials[0].1).await,
            json!({"status": 401, "code": "NOT_FOUND"})
        );
    }
    assert_eq!(status.snapshots_applied(), snapshots);
    cluster.stop_control_plane().await;
}

#[tokio::test]
async fn bad_copies_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::offline();
    let target = format!("sqlite://{}", dir.path().join("target.db").display());

    let scheme = cli
        .fails_with(
            &[
                "store",
                "copy",
                "--from",
                "mysql://db/keys",
                "--to",
                &target,
            ],
            78,
        )
        .await;
    assert!(
        scheme.contains("--from") && scheme.contains("sqlite://"),
        "{scheme}"
    );

    let missing = dir.path().join("missing.db");
    let absent = cli
        .fails_with(
            &[
                "store",
                "copy",
                "--from",
                &format!("sqlite://{}", missing.display()),
                "--to",
                &target,
            ],
            1,
        )
        .await;
    assert!(absent.contains("no SQLite database"), "{absent}");
    assert!(!missing.exists(), "the missing source was not created");
    assert!(!dir.path().join("target.db").exists(), "nor the target");

    let same = cli
        .fails_with(&["store", "copy", "--from", &target, "--to", &target], 78)
        .await;
    assert!(same.contains("same database"), "{same}");

    // An unreachable PostgreSQL: the error names it without its password.
    let unreachable = cli
        .fails_with(
            &[
                "store",
                "copy",
                "--from",
                "postgres://keygate:hunter2@127.0.0.1:1/keygate",
                "--to",
                &target,
            ],
            1,
        )
        .await;
    assert!(unreachable.contains("127.0.0.1:1"), "{unreachable}");
    assert!(!unreachable.contains("hunter2"), "{unreachable}");
}
