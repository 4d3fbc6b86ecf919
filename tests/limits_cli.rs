//! Limits, credits, permissions and identities through the real `keygate` binary: bad input is
//! refused before anything is sent (exit 1, one line, nothing created), and an operator
//! creates, reads, changes and deletes them with `keys create|get|update` and
//! `keygate identities …`.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::Cluster;
use support::cli::Cli;

/// The ids of a `keys list --json` or `identities list --json` page.
fn ids(page: &Value, list: &str, id: &str) -> Vec<String> {
    page[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[id].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limit_input_is_refused_with_exit_1_and_nothing_is_created() {
    let cluster = Cluster::start(0).await;
    let cli = Cli::admin(&cluster);
    // The same command line pointed at a port nobody listens on: a refusal there that is not
    // "cannot reach the control plane" shows the input was refused before any connection.
    let unreachable = Cli {
        endpoint: "http://127.0.0.1:1".into(),
        token: cluster.admin_token.clone(),
    };
    let key_id = cli.json(&["keys", "create", "--owner", "acme"]).await["keyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let keys_before = cli.json(&["keys", "list"]).await;
    let key_before = cli.json(&["keys", "get", &key_id]).await;

    let create = |flags: &[&'static str]| {
        let mut args = vec!["keys", "create", "--owner", "acme"];
        args.extend_from_slice(flags);
        args
    };
    let update = |flags: &[&'static str]| {
        let mut args = vec!["keys", "update", key_id.as_str()];
        args.extend_from_slice(flags);
        args
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // Malformed rate-limit specs.
        (
            create(&["--ratelimit", "requests100/1s"]),
            "NAME=LIMIT/DURATION",
        ),
        (create(&["--ratelimit", "requests=100"]), "AMOUNT/DURATION"),
        (
            create(&["--ratelimit", "requests=100/soon"]),
            "not a duration",
        ),
        (create(&["--ratelimit", "requests=ten/1s"]), "whole number"),
        (create(&["--ratelimit", "=100/1s"]), "must not be empty"),
        (create(&["--ratelimit", "requests=100/10ms"]), "from 1s"),
        (
            create(&["--ratelimit", "a=1/1s", "--ratelimit", "a=2/1m"]),
            "given twice",
        ),
        // Zero and negative limits and credits.
        (create(&["--ratelimit", "requests=0/1s"]), "at least 1"),
        (create(&["--ratelimit", "requests=-5/1s"]), "whole number"),
        (
            create(&["--credits", "-5"]),
            "--credits: \"-5\" is not a whole number",
        ),
        (create(&["--credits", "lots"]), "not a whole number"),
        (
            create(&["--credits", "10", "--refill", "-1/1d"]),
            "--refill",
        ),
        (create(&["--credits", "10", "--refill", "10/0s"]), "from 1s"),
        // A refill of nothing.
        (create(&["--refill", "100/1d"]), "--refill needs --credits"),
        // Permissions that are not exact names, and identities with spaces.
        (create(&["--permission", "orders.*"]), "contains '*'"),
        (create(&["--permission", "orders read"]), "contains ' '"),
        (create(&["--permission", ""]), "must not be empty"),
        (create(&["--identity", "acme corp"]), "space"),
        // Updates that say nothing, contradict themselves, or carry bad values.
        (update(&[]), "nothing to change"),
        (
            update(&["--credits", "5", "--clear-credits"]),
            "--credits and --clear-credits contradict each other",
        ),
        (
            update(&["--refill", "5/1h", "--clear-credits"]),
            "--refill and --clear-credits contradict each other",
        ),
        (
            update(&["--refill", "5/1h", "--clear-refill"]),
            "--refill and --clear-refill",
        ),
        (
            update(&["--ratelimit", "r=1/1s", "--clear-ratelimits"]),
            "--ratelimit and --clear-ratelimits",
        ),
        (
            update(&["--permission", "a", "--clear-permissions"]),
            "--permission and --clear-permissions",
        ),
        (
            update(&["--identity", "x", "--clear-identity"]),
            "--identity and --clear-identity",
        ),
        (update(&["--ratelimit", "r=0/1s"]), "at least 1"),
        (update(&["--permission", "a,b"]), "contains ','"),
        // The same rules for identities.
        (vec!["identities", "create", "acme corp"], "space"),
        (
            vec!["identities", "create", "team", "--ratelimit", "r=5"],
            "AMOUNT/DURATION",
        ),
        (
            vec!["identities", "create", "team", "--refill", "5/1h"],
            "--refill needs --credits",
        ),
        (vec!["identities", "update", "team"], "nothing to change"),
        (
            vec![
                "identities",
                "update",
                "team",
                "--credits",
                "1",
                "--clear-credits",
            ],
            "contradict",
        ),
    ];
    for (args, words) in &cases {
        for cli in [&cli, &unreachable] {
            let line = cli.fails_with(args, 1).await;
            assert!(line.starts_with("error: "), "{args:?}: {line}");
            assert!(line.contains(words), "{args:?}: {line}");
        }
    }

    // Nothing was created or changed.
    assert_eq!(cli.json(&["keys", "list"]).await, keys_before);
    assert_eq!(cli.json(&["keys", "get", &key_id]).await, key_before);
    let identities = cli.json(&["identities", "list"]).await;
    assert!(ids(&identities, "identities", "identityId").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_give_keys_limits_permissions_and_identities_from_the_command_line() {
    let cluster = Cluster::start(1).await;
    let cli = Cli::admin(&cluster);

    let created = cli
        .json(&[
            "keys",
            "create",
            "--owner",
            "acme",
            "--ratelimit",
            "requests=100/1s",
            "--ratelimit",
            "tokens=10000/1m",
            "--credits",
            "1000",
            "--refill",
            "1000/1d",
            "--permission",
            "orders.write",
            "--permission",
            "orders.read",
            "--identity",
            "acme",
        ])
        .await;
    let key_id = created["keyId"].as_str().unwrap().to_owned();

    let key = cli.json(&["keys", "get", &key_id]).await;
    let mut ratelimits: Vec<(String, u64, u64)> = key["ratelimits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|limit| {
            (
                limit["name"].as_str().unwrap().to_owned(),
                limit["limit"].as_u64().unwrap(),
                limit["windowMs"].as_u64().unwrap(),
            )
        })
        .collect();
    ratelimits.sort();
    assert_eq!(
        ratelimits,
        [
            ("requests".to_owned(), 100, 1_000),
            ("tokens".to_owned(), 10_000, 60_000)
        ]
    );
    let credits = &key["credits"];
    assert_eq!(
        credits["remaining"].as_u64().unwrap() + credits["leased"].as_u64().unwrap(),
        1000,
        "{key}"
    );
    assert_eq!(credits["refill"]["amount"], 1000);
    assert_eq!(credits["refill"]["intervalMs"], 86_400_000);
    assert!(credits["refill"]["next"].is_string(), "{key}");
    assert_eq!(
        key["permissions"],
        serde_json::json!(["orders.read", "orders.write"])
    );
    assert_eq!(key["identity"], "acme");
    assert!(key["usage"].is_array(), "{key}");

    // For a person: one line per limit, and a marker in the listing.
    let shown = cli.run(&["keys", "get", &key_id]).await;
    assert!(shown.status.success());
    let shown = String::from_utf8(shown.stdout).unwrap();
    for words in [
        "rate limit requests=100/1s",
        "rate limit tokens=10000/1m",
        "refill 1000/1day",
        "permissions orders.read orders.write",
        "identity acme",
    ] {
        assert!(shown.contains(words), "{words}: {shown}");
    }
    let listed = cli.run(&["keys", "list"]).await;
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("2 rate limits, credits ") && listed.contains("2 permissions"),
        "{listed}"
    );

    // Update: permissions replaced (waiting for the gateway), credits set, refill dropped.
    let updated = cli
        .json(&[
            "keys",
            "update",
            &key_id,
            "--permission",
            "orders.read",
            "--credits",
            "5",
            "--clear-refill",
            "--wait",
        ])
        .await;
    assert!(
        updated["revision"].as_u64().unwrap() > key["revision"].as_u64().unwrap(),
        "{updated}"
    );
    assert_eq!(updated["wait"]["complete"], true, "{updated}");
    let after = &updated["key"];
    assert_eq!(after["permissions"], serde_json::json!(["orders.read"]));
    assert_eq!(after["credits"]["remaining"], 5, "{updated}");
    assert!(after["credits"]["refill"].is_null(), "{updated}");
    assert_eq!(after["ratelimits"].as_array().unwrap().len(), 2);
    // `get` agrees with what `update` returned, except the usage windows:
    // they start at the clock's window boundary, which may have moved on.
    let mut got = cli.json(&["keys", "get", &key_id]).await;
    let mut expected = after.clone();
    let got_usage = got["usage"].take();
    let _ = expected["usage"].take();
    assert_eq!(got, expected);
    let unused = |usage: &serde_json::Value| {
        usage.as_array().map(|windows| {
            windows
                .iter()
                .map(|w| w["used"].clone())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        unused(&got_usage),
        Some(vec![serde_json::json!(0), serde_json::json!(0)]),
        "{got_usage}"
    );

    // `--identity acme` made the identity, with no limits of its own.
    let acme = cli.json(&["identities", "get", "acme"]).await;
    assert_eq!(acme["identityId"], "acme");
    assert_eq!(acme["ratelimits"], serde_json::json!([]));
    assert!(acme["credits"].is_null(), "{acme}");

    let team = cli
        .json(&[
            "identities",
            "create",
            "team",
            "--ratelimit",
            "requests=10/1s",
            "--credits",
            "50",
            "--refill",
            "50/1h",
        ])
        .await;
    let team = &team["identity"];
    assert_eq!(team["identityId"], "team");
    assert_eq!(team["ratelimits"][0]["spec"], "requests=10/1s");
    assert_eq!(team["credits"]["remaining"], 50);
    assert_eq!(team["credits"]["refill"]["intervalMs"], 3_600_000);
    cli.fails_with(&["identities", "create", "team"], 1).await;

    let changed = cli
        .json(&[
            "identities",
            "update",
            "team",
            "--credits",
            "7",
            "--clear-ratelimits",
        ])
        .await;
    assert_eq!(changed["identity"]["credits"]["remaining"], 7, "{changed}");
    assert_eq!(changed["identity"]["ratelimits"], serde_json::json!([]));
    assert_eq!(
        cli.json(&["identities", "get", "team"]).await,
        changed["identity"]
    );

    // Listed a page at a time.
    let first = cli.json(&["identities", "list", "--limit", "1"]).await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let second = cli
        .json(&["identities", "list", "--limit", "1", "--cursor", &cursor])
        .await;
    assert!(second["cursor"].is_null(), "{second}");
    let mut all = ids(&first, "identities", "identityId");
    all.extend(ids(&second, "identities", "identityId"));
    all.sort();
    assert_eq!(all, ["acme", "team"]);

    // An identity a key names cannot be deleted; once the key moves, it can.
    let in_use = cli.fails_with(&["identities", "delete", "acme"], 1).await;
    assert!(in_use.contains("acme"), "{in_use}");
    assert_eq!(
        cli.json(&["identities", "get", "acme"]).await["identityId"],
        "acme"
    );
    let moved = cli
        .json(&["keys", "update", &key_id, "--identity", "team"])
        .await;
    assert_eq!(moved["key"]["identity"], "team");
    let deleted = cli.json(&["identities", "delete", "acme"]).await;
    assert_eq!(deleted["deleted"], true);
    let gone = cli.fails_with(&["identities", "get", "acme"], 1).await;
    assert!(gone.contains("not found"), "{gone}");

    // Everything cleared: a plain key again, and the last identity can go.
    let plain = cli
        .json(&[
            "keys",
            "update",
            &key_id,
            "--clear-ratelimits",
            "--clear-credits",
            "--clear-permissions",
            "--clear-identity",
        ])
        .await;
    let plain = &plain["key"];
    assert_eq!(plain["ratelimits"], serde_json::json!([]));
    assert!(plain["credits"].is_null(), "{plain}");
    assert_eq!(plain["permissions"], serde_json::json!([]));
    assert!(plain["identity"].is_null(), "{plain}");
    cli.json(&["identities", "delete", "team"]).await;
    let none = cli.json(&["identities", "list"]).await;
    assert!(ids(&none, "identities", "identityId").is_empty());
    let listed = cli.run(&["keys", "list"]).await;
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        !listed.contains('['),
        "a plain key shows no limits: {listed}"
    );
}
