//! Operator access through the real `keygate` binary: named tokens made, used, listed and
//! revoked with `keygate tokens`; scoped tokens allowed and refused; a gateway with a token of
//! its own whose `--wait` acks are the only ones counted while a rogue holding that token is
//! refused; and failed authentications counted and limited per address by a control-plane
//! process.

#![allow(clippy::unwrap_used)]

mod support;

use keygate_proto::pb;
use keygate_proto::pb::sync_client::SyncClient;
use serde_json::Value;
use support::cli::Cli;
use support::processes::{ControlPlaneProcess, Tokens};
use support::{Cluster, eventually, send};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// The command line with another token.
fn cli_with(cluster: &Cluster, token: &str) -> Cli {
    Cli {
        endpoint: format!("http://{}", cluster.grpc_addr),
        token: token.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_create_use_list_and_revoke_scoped_tokens() {
    let cluster = Cluster::start(0).await;
    let admin = Cli::admin(&cluster);

    let ci = admin
        .json(&["tokens", "create", "ci", "--scope", "keys:create"])
        .await;
    let ci_token = ci["token"].as_str().unwrap().to_owned();
    assert!(
        ci_token.starts_with("kgo_") && ci_token.len() >= 4 + 32,
        "{ci}"
    );
    assert_eq!(ci["name"], "ci");
    assert_eq!(ci["scopes"], serde_json::json!(["keys:create"]));
    assert_eq!(ci["gatewayId"], Value::Null);
    assert!(ci["created"].is_string(), "{ci}");

    // Without --json the token is the first line, to pipe into a secret store.
    let out = admin
        .run(&["tokens", "create", "on-call", "--scope", "keys:disable"])
        .await;
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let on_call_token = stdout.lines().next().unwrap().to_owned();
    assert!(on_call_token.starts_with("kgo_"), "{stdout}");

    // Listing names the tokens and never shows one.
    let out = admin.run(&["tokens", "list", "--json"]).await;
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(!listed.contains(&ci_token) && !listed.contains(&on_call_token));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "on-call"]);
    assert_eq!(listed["tokens"][1]["scopes"][0], "keys:disable");
    assert_eq!(listed["tokens"][1]["createdBy"], "admin");

    // The CI token creates keys, and nothing else.
    let ci_cli = cli_with(&cluster, &ci_token);
    let key = ci_cli.json(&["keys", "create", "--owner", "acme"]).await;
    let key_id = key["keyId"].as_str().unwrap().to_owned();
    let refused = ci_cli.fails_with(&["keys", "list"], 1).await;
    assert!(
        refused.contains("\"ci\" lacks scope keys:read"),
        "{refused}"
    );
    let refused = ci_cli.fails_with(&["keys", "delete", &key_id], 1).await;
    assert!(refused.contains("keys:write"), "{refused}");

    // The on-call token disables, and may not enable again.
    let on_call = cli_with(&cluster, &on_call_token);
    let disabled = on_call.json(&["keys", "disable", &key_id]).await;
    assert_eq!(disabled["key"]["enabled"], false, "{disabled}");
    let refused = on_call.fails_with(&["keys", "enable", &key_id], 1).await;
    assert!(refused.contains("lacks scope keys:write"), "{refused}");

    // The audit names the tokens.
    let audit = admin.json(&["audit", "list"]).await;
    let rows: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("on-call", "key.disable"),
        ("ci", "key.create"),
        ("admin", "token.create"),
        ("admin", "token.create"),
    ]
    .map(|(actor, action)| (actor.to_owned(), action.to_owned()));
    assert_eq!(rows, expected);

    // Bad input: one line, the reason, nothing made.
    let unknown = admin
        .fails_with(&["tokens", "create", "x", "--scope", "keys:nuke"], 1)
        .await;
    assert!(
        unknown.contains("unknown scope \"keys:nuke\"")
            && unknown.contains("keys:read, keys:write, keys:create, keys:disable"),
        "{unknown}"
    );
    let reserved = admin
        .fails_with(&["tokens", "create", "admin", "--scope", "keys:read"], 1)
        .await;
    assert!(reserved.contains("reserved"), "{reserved}");
    let taken = admin
        .fails_with(&["tokens", "create", "ci", "--scope", "keys:read"], 1)
        .await;
    assert!(taken.contains("exists"), "{taken}");
    let nothing = admin.fails_with(&["tokens", "revoke", "nobody"], 1).await;
    assert!(nothing.contains("no token named \"nobody\""), "{nothing}");
    let not_admin = ci_cli.fails_with(&["tokens", "list"], 1).await;
    assert!(not_admin.contains("lacks scope admin"), "{not_admin}");
    let listed = admin.json(&["tokens", "list"]).await;
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2);

    // Revoked: the next call with it fails.
    let revoked = admin.json(&["tokens", "revoke", "ci"]).await;
    assert_eq!(
        revoked,
        serde_json::json!({"name": "ci", "disconnectedGateways": []})
    );
    let refused = ci_cli
        .fails_with(&["keys", "create", "--owner", "acme"], 1)
        .await;
    assert!(
        refused.contains("invalid operator token (unknown or revoked)"),
        "{refused}"
    );
}

/// A gateway's sync stream opened by hand with `token`: what a rogue holding a stolen token
/// would do. Returns how the control plane answered the Hello.
async fn hello_with(cluster: &Cluster, token: &str, gateway_id: &str) -> tonic::Status {
    let channel = Channel::from_shared(format!("http://{}", cluster.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut request = Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let hello = pb::GatewayMessage {
        msg: Some(pb::gateway_message::Msg::Hello(pb::Hello {
            gateway_id: gateway_id.into(),
            ..pb::Hello::default()
        })),
    };
    tx.send(hello).await.unwrap();
    let mut inbound = SyncClient::new(channel)
        .stream(request)
        .await
        .unwrap()
        .into_inner();
    let message = tokio::time::timeout(support::DEADLINE, inbound.message())
        .await
        .expect("an answer in time");
    match message {
        // A snapshot would mean the rogue got in: its acks could then count.
        Ok(Some(message)) => panic!("the control plane answered with {message:?}"),
        Ok(None) => panic!("the stream ended without a status"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_only_the_acks_of_the_gateway_that_holds_the_token() {
    let mut cluster = Cluster::start(0).await;
    let admin = Cli::admin(&cluster);
    let created = admin
        .json(&["tokens", "create", "gw-a", "--gateway", "gw-a"])
        .await;
    assert_eq!(created["gatewayId"], "gw-a");
    assert_eq!(created["scopes"], serde_json::json!([]));
    let token = created["token"].as_str().unwrap().to_owned();

    // The real gw-a syncs with its own token.
    let mut config = cluster.gateway_config(0);
    config.gateway_id = Some("gw-a".into());
    config.gateway_token = token.as_str().into();
    cluster.add_gateway_with(config).await;

    // A rogue with gw-a's token can be neither gw-b nor a second gw-a.
    let status = hello_with(&cluster, &token, "gw-b").await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("bound to gateway \"gw-a\""),
        "{status:?}"
    );
    let status = hello_with(&cluster, &token, "gw-a").await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    let key = admin.json(&["keys", "create", "--owner", "acme"]).await;
    let key_id = key["keyId"].as_str().unwrap();
    let disabled = admin
        .json(&["keys", "disable", key_id, "--wait", "--timeout", "10s"])
        .await;
    let wait = &disabled["wait"];
    assert_eq!(wait["complete"], true, "{disabled}");
    assert_eq!(wait["acked"], serde_json::json!(["gw-a"]), "{disabled}");
    assert_eq!(wait["pending"], serde_json::json!([]), "{disabled}");

    let listed = admin.json(&["gateways"]).await;
    let gateways = listed["gateways"].as_array().unwrap();
    assert_eq!(gateways.len(), 1, "{listed}");
    assert_eq!(gateways[0]["gatewayId"], "gw-a");
    assert_eq!(gateways[0]["credential"], "token:gw-a");
    assert_eq!(gateways[0]["connected"], true);
    let out = admin.run(&["gateways"]).await;
    let human = String::from_utf8(out.stdout).unwrap();
    assert!(
        human.contains("gw-a") && human.contains("token:gw-a"),
        "{human}"
    );

    // Revoking the token closes the gateway's stream at once.
    let revoked = admin.json(&["tokens", "revoke", "gw-a"]).await;
    assert_eq!(revoked["disconnectedGateways"], serde_json::json!(["gw-a"]));
    eventually("gw-a disconnected", || async {
        let listed = admin.json(&["gateways"]).await;
        listed["gateways"][0]["connected"] == false
    })
    .await;
}

/// The value of the Prometheus sample of `name` with all of `labels` (`key="value"`, in any
/// order) on `page`; 0 when absent.
fn sample(page: &str, name: &str, labels: &[&str]) -> u64 {
    page.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .find(|(found, _)| {
            let found: Vec<&str> = found.split(',').collect();
            found.len() == labels.len() && labels.iter().all(|label| found.contains(label))
        })
        .map_or(0, |(_, value)| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_counted_and_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::random();
    let database = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let cp = ControlPlaneProcess::start("control plane", &database, &tokens, "127.0.0.1:0").await;
    let cli = |token: &str| Cli {
        endpoint: cp.grpc.clone(),
        token: token.to_owned(),
    };

    // The command line refuses to call without a token at all.
    let missing = cli("").fails_with(&["keys", "list"], 78).await;
    assert!(missing.contains("no operator token"), "{missing}");
    // One call without a token, one with the gateway's, eighteen with nobody's: twenty
    // failures, each refused as what it is.
    let mut client = keygate_proto::pb::admin_client::AdminClient::new(
        Channel::from_shared(cp.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let call = |token: Option<&str>| {
        let mut request = Request::new(pb::ListGatewaysRequest {});
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    let status = client.list_gateways(call(None)).await.unwrap_err();
    assert_eq!(status.message(), "missing bearer token");
    let wrong = client
        .list_gateways(call(Some(&tokens.gateway)))
        .await
        .unwrap_err();
    assert!(
        wrong.message().starts_with("this is a gateway token"),
        "{wrong:?}"
    );
    for _ in 0..18 {
        let status = client
            .list_gateways(call(Some("kgo_guessed")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // The twenty-first is over the limit, and from now on even the right token is refused,
    // unread, from this address.
    let status = client
        .list_gateways(call(Some("kgo_guessed")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let refused = cli(&tokens.admin).fails_with(&["gateways"], 1).await;
    assert!(
        refused.contains("too many failed authentications from this address; retry in"),
        "{refused}"
    );

    let page = send("GET", &format!("{}/metrics", cp.http), &[], b"").await;
    let page = String::from_utf8_lossy(&page.body).into_owned();
    let failures = |reason: &str| {
        sample(
            &page,
            "keygate_auth_failures_total",
            &["service=\"admin\"", &format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(
        (
            failures("missing"),
            failures("wrong_service"),
            failures("invalid")
        ),
        (1, 1, 19),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "keygate_auth_throttled_total",
            &["service=\"admin\""]
        ),
        1,
        "{page}"
    );
    // Logged with the address and the reason, never the token.
    let log = cp.process.log_text();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(log.contains("127.0.0.1"), "{log}");
    assert!(
        !log.contains("kgo_guessed") && !log.contains(&tokens.gateway),
        "{log}"
    );
}
