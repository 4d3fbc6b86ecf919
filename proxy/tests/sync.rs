//! The sync client against an in-process control plane: snapshot, events, gaps, reconnects,
//! miss lookups and the staleness bound.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use keygate_proto::pb;
use keygate_proxy::{AuthMode, RouteConfig, StalePolicy};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

async fn verify(client: &TestClient, gateway: &RunningGateway, key: &str) -> serde_json::Value {
    let body = serde_json::json!({ "key": key }).to_string();
    let request = Request::post(gateway.url("/_keygate/v1/verify"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = send(client, request).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.json()
}

fn upstream_config(control_plane: &ControlPlane) -> keygate_proxy::ProxyConfig {
    keygate_proxy::ProxyConfig {
        upstream: Some("http://127.0.0.1:9".to_owned()),
        ..config(control_plane)
    }
}

#[tokio::test]
async fn snapshot_then_events_then_a_gap_resyncs_without_a_snapshot() {
    let control_plane = ControlPlane::start().await;
    let (alice_text, alice) = new_key("alice");
    let (bob_text, bob) = new_key("bob");
    let (carol_text, carol) = new_key("carol");
    for key in [&alice, &bob, &carol] {
        control_plane.upsert(key);
    }
    let gateway = start_ready_gateway(upstream_config(&control_plane)).await;
    let status = gateway.status.clone();
    eventually("the snapshot", WAIT, || status.applied_revision() == 3).await;
    assert_eq!(status.snapshots_applied(), 1);
    assert_eq!(status.replica_len(), 3);
    assert!(status.connected());
    assert_eq!(control_plane.hellos(), vec![0]);

    let client = client();
    let valid = verify(&client, &gateway, &alice_text).await;
    assert_eq!(valid["valid"], true);
    assert_eq!(valid["owner"], "alice");
    assert_eq!(valid["keyId"], alice.id.to_string());

    // Events after the snapshot: disable bob, delete carol, add dave.
    let (dave_text, dave) = new_key("dave");
    control_plane.upsert(&keygate_proto::ReplicaKey {
        enabled: false,
        ..bob.clone()
    });
    control_plane.delete(&carol);
    control_plane.upsert(&dave);
    eventually("the events", WAIT, || status.applied_revision() == 6).await;
    assert_eq!(
        verify(&client, &gateway, &bob_text).await["code"],
        "DISABLED"
    );
    assert_eq!(
        verify(&client, &gateway, &carol_text).await["code"],
        "NOT_FOUND"
    );
    assert_eq!(verify(&client, &gateway, &dave_text).await["code"], "VALID");
    eventually("the ack of revision 6", WAIT, || {
        control_plane.acks().contains(&6)
    })
    .await;

    // An event that skips revision 7 is a gap: the gateway drops the stream and resumes from 6.
    let (_, skipped) = new_key("eve");
    let mut gap = pb::Event::from(&keygate_proto::Event {
        revision: keygate_proto::Revision(8),
        committed_unix_ms: 0,
        change: keygate_proto::Change::KeyUpserted(skipped.clone()),
    });
    gap.committed_unix_ms = 1;
    control_plane.send_raw(vec![gap]);
    eventually("a resume with hello(6)", WAIT, || {
        control_plane.hellos() == vec![0, 6]
    })
    .await;
    assert_eq!(
        status.applied_revision(),
        6,
        "nothing after the gap was applied"
    );
    assert_eq!(status.snapshots_applied(), 1, "resumed without a snapshot");
    assert_eq!(verify(&client, &gateway, &dave_text).await["code"], "VALID");
    // Nothing revoked before the gap comes back to life after it.
    assert_eq!(
        verify(&client, &gateway, &bob_text).await["code"],
        "DISABLED"
    );
    assert_eq!(
        verify(&client, &gateway, &carol_text).await["code"],
        "NOT_FOUND"
    );

    // The resumed stream delivers new events.
    let (frank_text, frank) = new_key("frank");
    control_plane.upsert(&frank);
    eventually("revision 7", WAIT, || status.applied_revision() == 7).await;
    assert_eq!(
        verify(&client, &gateway, &frank_text).await["code"],
        "VALID"
    );

    // A dropped stream also resumes from the applied revision, again without a snapshot.
    control_plane.disconnect_all();
    eventually("a resume with hello(7)", WAIT, || {
        control_plane.hellos() == vec![0, 6, 7]
    })
    .await;
    control_plane.delete(&alice);
    eventually("revision 8", WAIT, || status.applied_revision() == 8).await;
    assert_eq!(
        verify(&client, &gateway, &alice_text).await["code"],
        "NOT_FOUND"
    );
    assert_eq!(status.snapshots_applied(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_key_not_streamed_yet_is_looked_up_once_and_unknown_keys_are_negative_cached() {
    let control_plane = ControlPlane::start().await;
    let gateway = start_ready_gateway(upstream_config(&control_plane)).await;
    let client = client();

    // The key is committed, but its event has not reached the gateway.
    let (text, key) = new_key("alice");
    control_plane.upsert_unstreamed(&key);
    let gate = control_plane.hold_lookups();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let (client, url, text) = (
                client.clone(),
                gateway.url("/_keygate/v1/verify"),
                text.clone(),
            );
            tokio::spawn(async move {
                let body = serde_json::json!({ "key": text }).to_string();
                send(
                    &client,
                    Request::post(url)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap(),
                )
                .await
                .json()
            })
        })
        .collect();
    eventually("the first lookup", WAIT, || control_plane.lookups() == 1).await;
    gate.notify_one();
    for request in requests {
        let verdict = request.await.unwrap();
        assert_eq!(verdict["code"], "VALID");
        assert_eq!(verdict["owner"], "alice");
    }
    assert_eq!(
        control_plane.lookups(),
        1,
        "concurrent misses share one lookup"
    );
    assert_eq!(
        gateway.status.replica_len(),
        1,
        "the found key was inserted"
    );

    // Unknown keys: one lookup, then remembered.
    let gate = control_plane.hold_lookups();
    let (unknown, _) = new_key("nobody");
    let pending = {
        let (client, gateway_url, unknown) = (
            client.clone(),
            gateway.url("/_keygate/v1/verify"),
            unknown.clone(),
        );
        tokio::spawn(async move {
            let body = serde_json::json!({ "key": unknown }).to_string();
            send(
                &client,
                Request::post(gateway_url)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
            .await
            .json()
        })
    };
    eventually("the second lookup", WAIT, || control_plane.lookups() == 2).await;
    gate.notify_one();
    assert_eq!(pending.await.unwrap()["code"], "NOT_FOUND");
    assert_eq!(
        verify(&client, &gateway, &unknown).await["code"],
        "NOT_FOUND"
    );
    assert_eq!(control_plane.lookups(), 2, "the negative answer is cached");
    gateway.stop().await;
}

#[tokio::test]
async fn a_stale_gateway_fails_closed_on_auth_routes_and_recovers() {
    let control_plane = ControlPlane::start().await;
    let upstream = Upstream::start().await;
    let (text, key) = new_key("alice");
    control_plane.upsert(&key);
    let config = keygate_proxy::ProxyConfig {
        routes: vec![
            RouteConfig {
                path_prefix: "/".into(),
                upstream: upstream.url(),
                auth: AuthMode::Key,
                forward_credential: false,
                ..RouteConfig::default()
            },
            RouteConfig {
                path_prefix: "/open".into(),
                upstream: upstream.url(),
                auth: AuthMode::None,
                forward_credential: false,
                ..RouteConfig::default()
            },
        ],
        propagation_bound: Duration::from_millis(400),
        ping_interval: Duration::from_millis(50),
        ..config(&control_plane)
    };
    let gateway = start_ready_gateway(config).await;
    let client = client();
    let bearer = format!("Bearer {text}");
    let ready = |gateway: &RunningGateway| {
        let (client, url) = (client.clone(), gateway.admin_url("/readyz"));
        async move { get_with(&client, &url, &[]).await }
    };
    assert_eq!(
        get_with(&client, &gateway.url("/api"), &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    assert_eq!(ready(&gateway).await.status, 200);

    // The control plane stops answering pings: the link looks blackholed.
    control_plane.answer_pings(false);
    let status = gateway.status.clone();
    eventually("staleness past the bound", WAIT, || status.is_stale()).await;
    let refused = get_with(&client, &gateway.url("/api"), &[("authorization", &bearer)]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "STALE");
    let readiness = ready(&gateway).await;
    assert_eq!(readiness.status, 503);
    assert_eq!(readiness.json()["ready"], false);
    // Routes without auth keep forwarding.
    assert_eq!(
        get_with(&client, &gateway.url("/open"), &[]).await.status,
        200
    );
    // A silent stream is treated as dead and reconnected.
    eventually("a reconnect attempt", WAIT, || {
        control_plane.hellos().len() >= 2
    })
    .await;

    control_plane.answer_pings(true);
    eventually("recovery", WAIT, || status.is_ready()).await;
    assert_eq!(
        get_with(&client, &gateway.url("/api"), &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    assert_eq!(ready(&gateway).await.status, 200);
    gateway.stop().await;
}

#[tokio::test]
async fn the_serve_policy_keeps_verifying_when_stale() {
    let control_plane = ControlPlane::start().await;
    let (text, key) = new_key("alice");
    control_plane.upsert(&key);
    let config = keygate_proxy::ProxyConfig {
        propagation_bound: Duration::from_millis(300),
        stale_policy: StalePolicy::Serve,
        ..upstream_config(&control_plane)
    };
    let gateway = start_ready_gateway(config).await;
    let status = gateway.status.clone();
    eventually("the snapshot", WAIT, || status.replica_len() == 1).await;
    control_plane.answer_pings(false);
    eventually("staleness past the bound", WAIT, || status.is_stale()).await;
    let client = client();
    assert_eq!(verify(&client, &gateway, &text).await["code"], "VALID");
    assert_eq!(
        get_with(&client, &gateway.admin_url("/readyz"), &[])
            .await
            .status,
        503
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_wrong_token_never_syncs_and_stays_stale() {
    let control_plane = ControlPlane::start().await;
    let config = keygate_proxy::ProxyConfig {
        gateway_token: "wrong".into(),
        ..upstream_config(&control_plane)
    };
    let gateway = start_gateway(config).await;
    let client = client();
    let (text, _) = new_key("alice");
    let reply = get_with(&client, &gateway.url("/x"), &[("x-api-key", &text)]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["code"], "STALE");
    assert!(!gateway.status.connected());
    assert_eq!(gateway.status.applied_revision(), 0);
    gateway.stop().await;
}

/// The value of `keygate_sync_refused_total{reason="older_history"}` in the Prometheus text
/// (0 before the first refusal).
fn older_history_refusals_metric() -> u64 {
    metrics_handle()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("keygate_sync_refused_total{reason=\"older_history\"} "))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn an_older_copy_of_the_log_is_refused_and_another_log_is_taken_by_snapshot() {
    let client = client();
    // Control plane A holds log L up to revision 4, where carol's key is deleted.
    let a = ControlPlane::start().await;
    a.set_log_id("L");
    let (alice_text, alice) = new_key("alice");
    let (carol_text, carol) = new_key("carol");
    a.upsert(&alice);
    a.upsert(&carol);
    let (bob_text, bob) = new_key("bob");
    a.upsert(&bob);
    a.delete(&carol);
    // Control plane B serves a backup of the same log taken before the delete: head 3.
    let b = ControlPlane::start().await;
    b.set_log_id("L");
    b.upsert(&alice);
    b.upsert(&carol);
    b.upsert(&bob);

    let gateway = start_ready_gateway(keygate_proxy::ProxyConfig {
        control_plane: vec![a.url(), b.url()],
        ..upstream_config(&a)
    })
    .await;
    let status = gateway.status.clone();
    eventually("revision 4 of log L", WAIT, || {
        status.applied_revision() == 4 && status.log_id() == "L"
    })
    .await;
    assert_eq!(
        verify(&client, &gateway, &carol_text).await["code"],
        "NOT_FOUND"
    );
    let refused_before = older_history_refusals_metric();

    // A goes away; the gateway fails over to B, which would take it back to revision 3.
    a.refuse_streams(true);
    a.disconnect_all();
    eventually("a refusal of B", WAIT, || {
        status.older_history_refusals() >= 1
    })
    .await;
    assert!(
        b.hello_logs().iter().all(|log| log == "L") && b.hellos().iter().all(|&r| r == 4),
        "the gateway resumes by (log id, revision): {:?} {:?}",
        b.hello_logs(),
        b.hellos()
    );
    assert!(
        b.acks().is_empty(),
        "nothing from B was applied: {:?}",
        b.acks()
    );
    assert!(older_history_refusals_metric() > refused_before);
    assert_eq!(status.applied_revision(), 4);
    assert_eq!(
        status.snapshots_applied(),
        1,
        "B's snapshot was not installed"
    );
    assert_eq!(status.log_id(), "L");
    // Carol's delete stays applied: the older copy did not bring her key back.
    assert_eq!(
        verify(&client, &gateway, &carol_text).await["code"],
        "NOT_FOUND"
    );
    assert_eq!(
        verify(&client, &gateway, &alice_text).await["code"],
        "VALID"
    );

    // B turns out to serve another store altogether (another log id): its revisions do not
    // compare with L's, so the gateway starts over from its snapshot, lower revision or not.
    b.set_log_id("M");
    eventually("the snapshot of log M", Duration::from_secs(30), || {
        status.snapshots_applied() == 2 && status.log_id() == "M"
    })
    .await;
    assert_eq!(status.applied_revision(), 3);
    eventually("the ack of revision 3 of M", WAIT, || b.acks().contains(&3)).await;
    assert_eq!(
        verify(&client, &gateway, &carol_text).await["code"],
        "VALID"
    );
    assert_eq!(verify(&client, &gateway, &bob_text).await["code"], "VALID");
    // And M's pongs vouch for it: a proof newer than the switch (B is the only control plane
    // the gateway reaches, and B's pongs of L were refused).
    let switched = tokio::time::Instant::now();
    eventually("a proof from log M", WAIT, || {
        status
            .staleness()
            .is_some_and(|staleness| staleness < switched.elapsed())
    })
    .await;
    gateway.stop().await;
}
