//! Passkeys beyond the basics (DESIGN.md): provider names from the AAGUID, renaming, and the
//! control plane's AAGUID and backup policy, through the HTTP API and the real `keygate`
//! binary.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::Cluster;
use support::cli::Cli;
use support::passkeys::{BackupFlags, Device};

/// A control plane with no rate limits (the tests make many calls from one address).
async fn cluster() -> Cluster {
    Cluster::start_configured(
        0,
        Some(Box::new(|config| {
            config.passkey_rate_per_address = 0;
            config.passkey_rate_per_user = 0;
        })),
    )
    .await
}

/// The passkeys of `session`'s user as `GET /v1/me/passkeys` lists them.
async fn my_passkeys(cluster: &Cluster, session: &support::passkeys::Session) -> Vec<Value> {
    let reply = cluster.my_passkeys(session).await;
    assert_eq!(reply.status, 200);
    reply.json()["passkeys"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_renames_their_own_passkeys_and_an_operator_any() {
    let cluster = cluster().await;
    let origin = cluster.passkey_origin();
    let (laptop, phone) = (Device::new(&origin), Device::new(&origin));
    let token = cluster.user_with_enrollment("alice").await;
    let alice = cluster.enroll(&laptop, &token, "laptop").await;
    let token = cluster.user_with_enrollment("bob").await;
    let bob = cluster.enroll(&phone, &token, "phone").await;
    let path = format!("/v1/me/passkeys/{}", alice.passkey_id);

    let renamed = cluster
        .as_user(
            &alice,
            "PATCH",
            &path,
            Some(&json!({ "name": " Work laptop " })),
        )
        .await;
    assert_eq!(
        renamed.status,
        200,
        "{}",
        String::from_utf8_lossy(&renamed.body)
    );
    let renamed = renamed.json()["passkey"].clone();
    assert_eq!(renamed["name"], "Work laptop");
    // The same shape as the listing.
    assert_eq!(my_passkeys(&cluster, &alice).await, [renamed]);

    // Someone else's passkey, or none at all: the 404 a removal gives, and nothing changes.
    for (who, path) in [
        (&bob, path.clone()),
        (
            &alice,
            "/v1/me/passkeys/pk_0000000000000000000000".to_owned(),
        ),
        (&alice, "/v1/me/passkeys/nonsense".to_owned()),
    ] {
        let refused = cluster
            .as_user(who, "PATCH", &path, Some(&json!({ "name": "mine" })))
            .await;
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (404, "NOT_FOUND"),
            "{path}"
        );
    }
    for bad in [json!({ "name": "" }), json!({ "name": "x".repeat(65) })] {
        let refused = cluster.as_user(&alice, "PATCH", &path, Some(&bad)).await;
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (400, "INVALID_NAME"),
            "{bad}"
        );
    }
    let missing = cluster
        .as_user(&alice, "PATCH", &path, Some(&json!({})))
        .await;
    assert_eq!(missing.status, 400);
    assert_eq!(
        my_passkeys(&cluster, &alice).await[0]["name"],
        "Work laptop"
    );
    assert_eq!(my_passkeys(&cluster, &bob).await[0]["name"], "phone");
}

/// Google Password Manager's AAGUID (ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4), on the vendored
/// list.
const GOOGLE: [u8; 16] = [
    0xea, 0x9b, 0x8d, 0x66, 0x4d, 0x01, 0x1d, 0x21, 0x3c, 0xe4, 0xb6, 0xb4, 0x8c, 0xb5, 0x75, 0xd4,
];
const GOOGLE_TEXT: &str = "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4";
/// An AAGUID on no list.
const UNLISTED: [u8; 16] = [0x42; 16];
const UNLISTED_TEXT: &str = "42424242-4242-4242-4242-424242424242";

/// A synced passkey's flags (what the software authenticator sends unless told otherwise),
/// and a device-bound one's.
const SYNCED: BackupFlags = BackupFlags::SYNCED;
const BOUND: BackupFlags = BackupFlags::DEVICE_BOUND;

/// Each passkey's `(id, provider)` in a listing.
fn providers(passkeys: &[Value], id: &str) -> Vec<(String, String)> {
    passkeys
        .iter()
        .map(|passkey| {
            (
                passkey[id].as_str().unwrap().to_owned(),
                passkey["provider"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_are_named_by_their_provider_in_the_api_and_the_cli() {
    let mut cluster = cluster().await;
    let origin = cluster.passkey_origin();
    let google = Device::new(&origin).with_aaguid(GOOGLE);
    let unlisted = Device::new(&origin).with_aaguid(UNLISTED);
    let token = cluster.user_with_enrollment("alice").await;
    let alice = cluster.enroll(&google, &token, "phone").await;
    let added = cluster.add_passkey(&alice, &unlisted, "key").await;
    let added_id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(added["provider"], "Unknown authenticator");

    let listed = my_passkeys(&cluster, &alice).await;
    let expected = vec![
        (
            alice.passkey_id.clone(),
            "Google Password Manager".to_owned(),
        ),
        (added_id.clone(), "Unknown authenticator".to_owned()),
    ];
    assert_eq!(providers(&listed, "id"), expected);
    let icon = listed[0]["providerIcon"].as_str().unwrap();
    assert!(icon.starts_with("data:image/svg+xml;base64,"), "{icon}");
    assert_eq!(listed[0]["aaguid"], GOOGLE_TEXT);
    assert!(listed[1]["providerIcon"].is_null());
    assert_eq!(listed[1]["aaguid"], UNLISTED_TEXT);

    let cli = Cli::admin(&cluster);
    let operators = cli.json(&["passkeys", "list", "--user", "alice"]).await;
    let operators = operators["passkeys"].as_array().unwrap();
    assert_eq!(providers(operators, "passkeyId"), expected);
    assert_eq!(operators[0]["providerIcon"], icon);
    assert!(operators[1]["providerIcon"].is_null());
    let human = cli.run(&["passkeys", "list", "--user", "alice"]).await;
    let human = String::from_utf8(human.stdout).unwrap();
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 2, "{human}");
    assert!(lines[0].contains(&alice.passkey_id) && lines[0].contains("Google Password Manager"));
    assert!(lines[1].contains(&added_id) && lines[1].contains("Unknown authenticator"));

    // An operator's list replaces the vendored one: Google is unknown to it, the other named.
    let names = cluster.data_dir.path().join("names.json");
    std::fs::write(
        &names,
        format!(r#"{{"{UNLISTED_TEXT}": {{"name": "Example Key"}}}}"#),
    )
    .unwrap();
    restart_with(&mut cluster, move |config| {
        config.aaguid_names = Some(names.clone());
    })
    .await;
    let listed = my_passkeys(&cluster, &alice).await;
    assert_eq!(
        providers(&listed, "id"),
        [
            (alice.passkey_id.clone(), "Unknown authenticator".to_owned()),
            (added_id.clone(), "Example Key".to_owned()),
        ]
    );
    assert!(
        listed
            .iter()
            .all(|passkey| passkey["providerIcon"].is_null())
    );

    // An empty list: everything is unknown.
    let empty = cluster.data_dir.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    restart_with(&mut cluster, move |config| {
        config.aaguid_names = Some(empty.clone());
    })
    .await;
    let listed = Cli::admin(&cluster)
        .json(&["passkeys", "list", "--user", "alice"])
        .await;
    let listed = listed["passkeys"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .all(|passkey| passkey["provider"] == "Unknown authenticator"),
        "{listed:?}"
    );
}

/// Stops the cluster's control plane and starts it again (same database and ports) with its
/// config changed by `configure` (after the rate limits are turned off).
async fn restart_with(
    cluster: &mut Cluster,
    configure: impl Fn(&mut keygate_control_plane::ControlPlaneConfig) + Send + Sync + 'static,
) {
    cluster.stop_control_plane().await;
    cluster.configure_control_plane = Some(Box::new(move |config| {
        config.passkey_rate_per_address = 0;
        config.passkey_rate_per_user = 0;
        configure(config);
    }));
    cluster.start_control_plane().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_aaguid_list_or_policy_stops_the_control_plane_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = |dir: &std::path::Path| {
        vec![
            "control-plane".to_owned(),
            "--grpc-listen=127.0.0.1:0".to_owned(),
            "--http-listen=127.0.0.1:0".to_owned(),
            format!("--database=sqlite://{}", dir.join("keygate.db").display()),
            "--admin-token=admin-token-0123456789".to_owned(),
            "--gateway-token=gateway-token-0123456789".to_owned(),
        ]
    };
    let cli = Cli::offline();
    let run = |args: Vec<String>| {
        let cli = &cli;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli.fails(&args).await
        }
    };

    let names = dir.path().join("names.json");
    std::fs::write(&names, r#"{"not-a-uuid": {"name": "X"}}"#).unwrap();
    let mut args = base(dir.path());
    args.push(format!("--aaguid-names={}", names.display()));
    let refused = run(args).await;
    assert!(refused.contains("aaguid_names"), "{refused}");
    assert!(
        refused.contains("names.json") && refused.contains("\"not-a-uuid\": the key is not a UUID"),
        "{refused}"
    );
    let mut args = base(dir.path());
    args.push(format!(
        "--aaguid-names={}",
        dir.path().join("missing.json").display()
    ));
    let refused = run(args).await;
    assert!(refused.contains("missing.json"), "{refused}");

    for (policy, says) in [
        (
            "[passkey_policy]\nmode = \"allow\"\n",
            "would refuse every passkey",
        ),
        (
            "[passkey_policy]\naaguids = [\"ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4\"]\n",
            "needs passkey_policy.mode",
        ),
        (
            "[passkey_policy]\nmode = \"block\"\naaguids = [\"google\"]\n",
            "\"google\" is not an AAGUID",
        ),
        (
            "[passkey_policy]\nbackup = \"cloud\"\n",
            "unknown variant `cloud`",
        ),
    ] {
        let config = dir.path().join("keygate.toml");
        std::fs::write(&config, policy).unwrap();
        let mut args = base(dir.path());
        args.push(format!("--config={}", config.display()));
        let refused = run(args).await;
        assert!(refused.contains(says), "{policy}: {refused}");
    }
    // Nothing was ever started: no database either.
    assert!(!dir.path().join("keygate.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_rename_passkeys_from_the_command_line_and_every_rename_is_audited() {
    let cluster = cluster().await;
    let origin = cluster.passkey_origin();
    let token = cluster.user_with_enrollment("alice").await;
    let alice = cluster
        .enroll(&Device::new(&origin), &token, "laptop")
        .await;
    let token = cluster.user_with_enrollment("bob").await;
    let bob = cluster.enroll(&Device::new(&origin), &token, "phone").await;
    let cli = Cli::admin(&cluster);

    let renamed = cli
        .json(&[
            "passkeys",
            "rename",
            "--user",
            "alice",
            &alice.passkey_id,
            "Desk key",
        ])
        .await;
    assert_eq!(renamed["name"], "Desk key");
    assert_eq!(renamed["passkey"]["name"], "Desk key");
    assert_eq!(my_passkeys(&cluster, &alice).await[0]["name"], "Desk key");
    let human = cli
        .run(&[
            "passkeys",
            "rename",
            "--user",
            "alice",
            &alice.passkey_id,
            "Desk",
        ])
        .await;
    assert!(human.status.success());
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(
        human.contains("Renamed passkey") && human.contains("\"Desk\""),
        "{human}"
    );

    // Not bob's passkey; nor a name of nothing, or of 65 characters.
    let refused = cli
        .fails(&[
            "passkeys",
            "rename",
            "--user",
            "bob",
            &alice.passkey_id,
            "Mine",
        ])
        .await;
    assert!(refused.contains("has no passkey"), "{refused}");
    let long = "x".repeat(65);
    for bad in ["", "  ", long.as_str()] {
        let refused = cli
            .fails(&[
                "passkeys",
                "rename",
                "--user",
                "alice",
                &alice.passkey_id,
                bad,
            ])
            .await;
        assert!(refused.contains("64 characters"), "{bad:?}: {refused}");
    }
    assert_eq!(my_passkeys(&cluster, &alice).await[0]["name"], "Desk");
    assert_eq!(my_passkeys(&cluster, &bob).await[0]["name"], "phone");

    // The user renames too; every rename is one audit row with its actor.
    let reply = cluster
        .as_user(
            &bob,
            "PATCH",
            &format!("/v1/me/passkeys/{}", bob.passkey_id),
            Some(&json!({ "name": "Old phone" })),
        )
        .await;
    assert_eq!(reply.status, 200);
    let audit = cli.json(&["audit", "list", "--limit", "100"]).await;
    let renames: Vec<(String, String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == "passkey.rename")
        .map(|entry| {
            let text = |value: &Value| value.as_str().unwrap().to_owned();
            (
                text(&entry["actor"]),
                text(&entry["target"]),
                text(&entry["detail"]["passkeyId"]),
                text(&entry["detail"]["name"]),
            )
        })
        .collect();
    let mut renames = renames;
    renames.sort();
    assert_eq!(
        renames,
        [
            (
                "admin".into(),
                "alice".into(),
                alice.passkey_id.clone(),
                "Desk".into()
            ),
            (
                "admin".into(),
                "alice".into(),
                alice.passkey_id.clone(),
                "Desk key".into()
            ),
            (
                "user:bob".into(),
                "bob".into(),
                bob.passkey_id.clone(),
                "Old phone".into()
            ),
        ]
    );
}

/// Begins and finishes an enrollment with `device`; the finish's reply (not asserted).
async fn try_enroll(cluster: &Cluster, device: &Device, token: &str) -> support::Reply {
    let begun = cluster
        .post_json(
            "/v1/enroll/begin",
            &json!({ "token": token, "name": "new" }),
        )
        .await;
    assert_eq!(
        begun.status,
        200,
        "{}",
        String::from_utf8_lossy(&begun.body)
    );
    let begun = begun.json();
    let credential = device.create(&begun["publicKey"]).await;
    cluster
        .post_json(
            "/v1/enroll/finish",
            &json!({ "ceremonyId": begun["ceremonyId"], "credential": credential }),
        )
        .await
}

/// Begins and finishes adding a passkey on `device`; the finish's reply (not asserted).
async fn try_add(
    cluster: &Cluster,
    session: &support::passkeys::Session,
    device: &Device,
) -> support::Reply {
    let begun = cluster
        .as_user(session, "POST", "/v1/me/passkeys/begin", Some(&json!({})))
        .await
        .json();
    let credential = device.create(&begun["publicKey"]).await;
    cluster
        .as_user(
            session,
            "POST",
            "/v1/me/passkeys/finish",
            Some(&json!({ "ceremonyId": begun["ceremonyId"], "credential": credential })),
        )
        .await
}

/// Blocks Google Password Manager and synced passkeys.
fn strict_policy(config: &mut keygate_control_plane::ControlPlaneConfig) {
    use keygate_control_plane::config::{Aaguid, AaguidMode, BackupRule, PasskeyPolicy};
    config.passkey_policy = PasskeyPolicy {
        mode: Some(AaguidMode::Block),
        aaguids: vec![Aaguid(GOOGLE)],
        backup: BackupRule::DeviceBound,
    };
}

/// The user's passkeys as the operator sees them.
async fn stored(cli: &Cli, user: &str) -> Vec<Value> {
    cli.json(&["passkeys", "list", "--user", user]).await["passkeys"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_that_break_the_policy_are_refused_and_store_nothing() {
    let mut cluster = cluster().await;
    restart_with(&mut cluster, strict_policy).await;
    let origin = cluster.passkey_origin();
    let cli = Cli::admin(&cluster);
    let token = cluster.user_with_enrollment("alice").await;

    // A blocked AAGUID, at enrollment: refused naming the rule and the provider.
    let google = Device::new(&origin).with_aaguid(GOOGLE).with_backup(BOUND);
    let refused = try_enroll(&cluster, &google, &token).await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (400, "POLICY_REFUSED")
    );
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("mode = \"block\""), "{message}");
    assert!(message.contains("Google Password Manager"), "{message}");
    assert!(message.contains(GOOGLE_TEXT), "{message}");
    assert!(stored(&cli, "alice").await.is_empty());
    let audit = cli.json(&["audit", "list", "--limit", "100"]).await;
    assert!(
        !audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["action"] == "passkey.register"),
        "{audit}"
    );

    // A synced passkey (BE set) under backup = "device_bound": refused too.
    let synced = Device::new(&origin).with_backup(SYNCED);
    let refused = try_enroll(&cluster, &synced, &token).await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (400, "POLICY_REFUSED")
    );
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("backup = \"device_bound\""), "{message}");
    assert!(stored(&cli, "alice").await.is_empty());

    // The link was never consumed: a device-bound passkey of another provider enrolls with it.
    let bound = Device::new(&origin)
        .with_aaguid(UNLISTED)
        .with_backup(BOUND);
    let alice = cluster.enroll(&bound, &token, "laptop").await;
    let listed = stored(&cli, "alice").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["deviceType"], "single_device");

    // Adding a passkey while signed in goes through the same policy.
    for device in [
        Device::new(&origin).with_aaguid(GOOGLE).with_backup(BOUND),
        Device::new(&origin).with_backup(BackupFlags {
            eligible: true,
            backed_up: false,
        }),
    ] {
        let refused = try_add(&cluster, &alice, &device).await;
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (400, "POLICY_REFUSED"),
            "{}",
            String::from_utf8_lossy(&refused.body)
        );
    }
    assert_eq!(stored(&cli, "alice").await.len(), 1);
    let added = try_add(&cluster, &alice, &Device::new(&origin).with_backup(BOUND)).await;
    assert_eq!(
        added.status,
        201,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    assert_eq!(stored(&cli, "alice").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_violations_lists_exactly_the_stored_passkeys_a_new_policy_refuses() {
    let mut cluster = cluster().await;
    let origin = cluster.passkey_origin();
    let cli = Cli::admin(&cluster);
    assert_eq!(
        cli.json(&["passkeys", "list", "--policy-violations"]).await["passkeys"],
        json!([])
    );

    // Under the open default policy everything registers.
    let enroll = |user: &'static str, device: Device| {
        let cluster = &cluster;
        async move {
            let token = cluster.user_with_enrollment(user).await;
            cluster.enroll(&device, &token, user).await
        }
    };
    let alice = enroll(
        "alice",
        Device::new(&origin).with_aaguid(GOOGLE).with_backup(SYNCED),
    )
    .await;
    let alice_bound = cluster
        .add_passkey(
            &alice,
            &Device::new(&origin)
                .with_aaguid(UNLISTED)
                .with_backup(BOUND),
            "bound",
        )
        .await;
    let bob = enroll("bob", Device::new(&origin).with_backup(SYNCED)).await;
    let carol = enroll(
        "carol",
        Device::new(&origin).with_aaguid(GOOGLE).with_backup(BOUND),
    )
    .await;
    let dave = enroll("dave", Device::new(&origin).with_backup(BOUND)).await;
    let none = cli.json(&["passkeys", "list", "--policy-violations"]).await;
    assert_eq!(
        none["passkeys"],
        json!([]),
        "the open policy refuses nothing"
    );

    // The new policy: block Google, device-bound passkeys only.
    restart_with(&mut cluster, strict_policy).await;
    let cli = Cli::admin(&cluster);
    let listed = cli.json(&["passkeys", "list", "--policy-violations"]).await;
    let mut violators: Vec<(String, String, String)> = listed["passkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|passkey| {
            let text = |field: &str| passkey[field].as_str().unwrap().to_owned();
            (text("passkeyId"), text("userId"), text("policyViolation"))
        })
        .collect();
    violators.sort();
    let mut expected = vec![
        (alice.passkey_id.clone(), "alice", "mode = \"block\""),
        (bob.passkey_id.clone(), "bob", "backup = \"device_bound\""),
        (carol.passkey_id.clone(), "carol", "mode = \"block\""),
    ];
    expected.sort();
    assert_eq!(violators.len(), expected.len(), "{violators:?}");
    for ((id, user, reason), (expected_id, expected_user, rule)) in violators.iter().zip(&expected)
    {
        assert_eq!((id, user.as_str()), (expected_id, *expected_user));
        assert!(reason.contains(rule), "{reason}");
    }
    let listed_ids = |listed: &Value| -> Vec<String> {
        listed["passkeys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|passkey| passkey["passkeyId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!listed_ids(&listed).contains(&dave.passkey_id));
    assert!(!listed_ids(&listed).contains(&alice_bound["id"].as_str().unwrap().to_owned()));

    // One user's only; and the human form names each rule.
    let alices = cli
        .json(&["passkeys", "list", "--policy-violations", "--user", "alice"])
        .await;
    assert_eq!(listed_ids(&alices), [alice.passkey_id.as_str()]);
    assert_eq!(alices["passkeys"][0]["provider"], "Google Password Manager");
    let human = cli.run(&["passkeys", "list", "--policy-violations"]).await;
    let human = String::from_utf8(human.stdout).unwrap();
    assert_eq!(
        human.matches("refused: passkey_policy").count(),
        3,
        "{human}"
    );
    assert!(human.contains(&bob.passkey_id), "{human}");

    // Revoking the violators leaves none.
    for (id, user, _) in &violators {
        cli.json(&["passkeys", "revoke", "--user", user, id]).await;
    }
    let after = cli.json(&["passkeys", "list", "--policy-violations"]).await;
    assert_eq!(after["passkeys"], json!([]));
}
