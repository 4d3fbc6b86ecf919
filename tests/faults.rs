//! Faults between the control plane and the gateways (DESIGN.md, "Sync"): a control plane
//! that dies or restarts, a link that is cut or blackholed or slow, a snapshot broken in the
//! middle, compaction while a gateway is away, failover to another control plane, and random
//! sequences of changes and disconnects. In every case a gateway either serves what the control
//! plane says or, past its propagation bound, refuses with STALE; nothing revoked comes back.
//!
//! Real components on loopback: the control plane, gateways and echo upstream in-process, the
//! `keygate` binary for `--wait`, and the fault proxy of `support::fault` on the links.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keygate_proto::pb;
use keygate_proxy::{Gateway, ProxyConfig, StalePolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::fault::{FaultProxy, Link};
use support::{Cluster, Running, eventually, expect_verdict, get_with_key, send, verdict};

/// The propagation bound of the gateways under test: short, so that STALE comes quickly, but
/// long enough that a loaded CI machine never misses a ping by that much.
const BOUND: Duration = Duration::from_secs(2);
const PING: Duration = Duration::from_millis(100);

/// A gateway config for `cluster` that reaches the control plane at `control_plane` (a fault
/// proxy or the control plane itself), with a short bound and frequent pings.
fn gateway_config(
    cluster: &Cluster,
    index: usize,
    control_plane: &[String],
    policy: StalePolicy,
) -> ProxyConfig {
    ProxyConfig {
        control_plane: control_plane.to_vec(),
        propagation_bound: BOUND,
        ping_interval: PING,
        stale_policy: policy,
        ..cluster.gateway_config(index)
    }
}

fn direct(cluster: &Cluster) -> Vec<String> {
    vec![format!("http://{}", cluster.grpc_addr)]
}

async fn readyz(admin: std::net::SocketAddr) -> u16 {
    send("GET", &format!("http://{admin}/readyz"), &[], b"")
        .await
        .status
}

/// Sends one request with `key`. A gateway already past its bound when the request is sent
/// must refuse it with 503 STALE (its staleness only grows while it hears nothing); otherwise
/// the answer is `status`, or STALE if the bound passed during the request. Returns whether it
/// was served.
async fn served_while_fresh_else_stale(
    gateway: &support::TestGateway,
    key: &str,
    status: u16,
) -> bool {
    let stale_before = gateway.status.staleness().is_none_or(|s| s > BOUND);
    let reply = get_with_key(&gateway.url("/x"), key).await;
    if reply.status == 503 {
        assert_eq!(reply.code(), "STALE");
        return false;
    }
    assert!(
        !stale_before,
        "a gateway past its bound answered {}",
        reply.status
    );
    assert_eq!(reply.status, status);
    true
}

async fn set_enabled(cluster: &Cluster, key_id: &str, enabled: bool) -> u64 {
    cluster
        .admin()
        .await
        .set_key_enabled(pb::SetKeyEnabledRequest {
            key_id: key_id.into(),
            enabled,
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

async fn delete(cluster: &Cluster, key_id: &str) -> u64 {
    cluster
        .admin()
        .await
        .delete_key(pb::DeleteKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

async fn gateways(cluster: &Cluster) -> pb::ListGatewaysResponse {
    cluster
        .admin()
        .await
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Runs the `keygate` binary against the cluster; returns (exit code, stdout JSON, stderr).
async fn keygate_cli(cluster: &Cluster, args: &[&str]) -> (i32, Value, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .args(["--json", "--endpoint"])
        .arg(format!("http://{}", cluster.grpc_addr))
        .env("KEYGATE_TOKEN", &cluster.admin_token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}"));
    (
        output.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What the control plane says a request with this key must get.
async fn expected(cluster: &Cluster, key_id: &str) -> (u16, String) {
    let key = cluster
        .admin()
        .await
        .get_key(pb::GetKeyRequest {
            key_id: key_id.into(),
        })
        .await;
    match key {
        Err(status) if status.code() == tonic::Code::NotFound => (401, "NOT_FOUND".into()),
        Err(status) => panic!("get_key: {status}"),
        Ok(key) => {
            let key = key.into_inner();
            if !key.enabled {
                (403, "DISABLED".into())
            } else if key
                .expires_unix_ms
                .is_some_and(|at| at <= keygate_proto::time::now_unix_ms())
            {
                (401, "EXPIRED".into())
            } else {
                (200, "VALID".into())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_control_plane_means_serving_until_the_bound_then_stale_then_recovery_without_a_snapshot()
 {
    let mut cluster = Cluster::start(0).await;
    let urls = direct(&cluster);
    let closed = gateway_config(&cluster, 0, &urls, StalePolicy::FailClosed);
    cluster.add_gateway_with(closed).await;
    let serving = gateway_config(&cluster, 1, &urls, StalePolicy::Serve);
    cluster.add_gateway_with(serving).await;
    let issued = cluster.create_key("alice").await;
    cluster.wait_applied(issued.revision).await;
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/x"), &issued.key, 200, None).await;
    }

    cluster.stop_control_plane().await;
    // Known keys are served for as long as the gateway can show it was current within the
    // bound...
    for gateway in &cluster.gateways {
        served_while_fresh_else_stale(gateway, &issued.key, 200).await;
    }
    // ...then the fail-closed gateway answers STALE and leaves the load balancer's pool,
    expect_verdict(
        &cluster.gateways[0].url("/x"),
        &issued.key,
        503,
        Some("STALE"),
    )
    .await;
    assert_eq!(readyz(cluster.gateways[0].admin_addr).await, 503);
    // while the one told to serve when stale keeps serving, but reports it.
    let serving = &cluster.gateways[1];
    eventually("the serving gateway to report itself stale", || async {
        serving.status.is_stale()
    })
    .await;
    assert_eq!(readyz(serving.admin_addr).await, 503);
    assert_eq!(verdict(&serving.url("/x"), &issued.key).await.0, 200);
    // Routes without auth need no proof of freshness.
    assert_eq!(
        send("GET", &cluster.gateways[0].url("/public/x"), &[], b"")
            .await
            .status,
        200
    );

    cluster.start_control_plane().await;
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/x"), &issued.key, 200, None).await;
        let admin = gateway.admin_addr;
        eventually("ready again", || async move { readyz(admin).await == 200 }).await;
        assert_eq!(
            gateway.status.snapshots_applied(),
            1,
            "resumed from its revision, without a snapshot"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_is_noticed_by_the_ping_deadline_and_goes_stale_at_the_bound() {
    let mut cluster = Cluster::start(0).await;
    let link = FaultProxy::start(cluster.grpc_addr).await;
    let config = gateway_config(&cluster, 0, &[link.url()], StalePolicy::FailClosed);
    cluster.add_gateway_with(config).await;
    let issued = cluster.create_key("alice").await;
    cluster.wait_applied(issued.revision).await;
    let gateway = &cluster.gateways[0];
    expect_verdict(&gateway.url("/x"), &issued.key, 200, None).await;

    // No RST, no FIN: only the silence tells.
    link.set(Link::Blackhole);
    let status = gateway.status.clone();
    eventually("the gateway to notice the silent stream", || {
        let status = status.clone();
        async move { !status.connected() }
    })
    .await;
    expect_verdict(&gateway.url("/x"), &issued.key, 503, Some("STALE")).await;

    link.set(Link::Pass);
    expect_verdict(&gateway.url("/x"), &issued.key, 200, None).await;
    assert_eq!(gateway.status.snapshots_applied(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_a_gateway_is_cut_off_is_never_served_past_the_bound_and_wait_names_it()
{
    let mut cluster = Cluster::start(1).await;
    let link = FaultProxy::start(cluster.grpc_addr).await;
    let config = gateway_config(&cluster, 1, &[link.url()], StalePolicy::FailClosed);
    cluster.add_gateway_with(config).await;
    let issued = cluster.create_key("alice").await;
    cluster.wait_applied(issued.revision).await;
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/x"), &issued.key, 200, None).await;
    }

    // Blackholed, gw-1 still looks connected to the control plane, so `--wait` times out and
    // names it.
    link.set(Link::Blackhole);
    let (code, json, stderr) = keygate_cli(
        &cluster,
        &[
            "keys",
            "disable",
            &issued.key_id,
            "--wait",
            "--timeout",
            "300ms",
        ],
    )
    .await;
    assert_eq!(code, 1, "an incomplete wait fails: {stderr}");
    assert!(stderr.contains("gw-1"), "{stderr}");
    assert_eq!(json["wait"]["complete"], false);
    assert_eq!(json["wait"]["acked"], serde_json::json!(["gw-0"]));
    assert_eq!(json["wait"]["pending"][0]["gatewayId"], "gw-1");
    expect_verdict(
        &cluster.gateways[0].url("/x"),
        &issued.key,
        403,
        Some("DISABLED"),
    )
    .await;

    // The cut-off gateway serves the revoked key at most until its bound, then refuses.
    let cut_off = &cluster.gateways[1];
    let started = std::time::Instant::now();
    while served_while_fresh_else_stale(cut_off, &issued.key, 200).await {
        assert!(
            started.elapsed() < support::DEADLINE,
            "the cut-off gateway never went stale"
        );
    }
    for _ in 0..5 {
        assert_eq!(verdict(&cut_off.url("/x"), &issued.key).await.0, 503);
    }
    link.set(Link::Pass);
    expect_verdict(&cut_off.url("/x"), &issued.key, 403, Some("DISABLED")).await;

    // A cut (RST/FIN) is seen by the control plane: `--wait` then counts the lost gateway only
    // until its bound has passed, since by then it refuses everything.
    link.set(Link::Cut);
    eventually("the control plane to see gw-1 go", || async {
        !gateways(&cluster).await.gateways[1].connected
    })
    .await;
    let (code, json, stderr) =
        keygate_cli(&cluster, &["keys", "delete", &issued.key_id, "--wait"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["wait"]["complete"], true);
    assert_eq!(json["wait"]["acked"], serde_json::json!(["gw-0"]));
    assert_eq!(json["wait"]["pastBound"], serde_json::json!(["gw-1"]));
    expect_verdict(&cut_off.url("/x"), &issued.key, 503, Some("STALE")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_compaction_a_returning_gateway_resyncs_by_snapshot_and_matches_a_fresh_one() {
    let mut cluster = Cluster::start_configured(
        0,
        Some(Box::new(|config| config.event_retention = Duration::ZERO)),
    )
    .await;
    let link = FaultProxy::start(cluster.grpc_addr).await;
    let mut config = gateway_config(&cluster, 0, &[link.url()], StalePolicy::FailClosed);
    config.propagation_bound = Duration::from_secs(60);
    cluster.add_gateway_with(config).await;
    let [a, b, c] = [
        cluster.create_key("alice").await,
        cluster.create_key("bob").await,
        cluster.create_key("carol").await,
    ];
    cluster.wait_applied(c.revision).await;
    let away = cluster.gateways[0].status.clone();
    let left_at = away.applied_revision();
    assert_eq!(away.snapshots_applied(), 1);

    link.set(Link::Cut);
    eventually("the gateway to see the link go", || {
        let away = away.clone();
        async move { !away.connected() }
    })
    .await;
    set_enabled(&cluster, &a.key_id, false).await;
    delete(&cluster, &b.key_id).await;
    let rerolled = cluster
        .admin()
        .await
        .reroll_key(pb::RerollKeyRequest {
            key_id: c.key_id.clone(),
            grace_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let d = cluster.create_key("dave").await;
    eventually("compaction past the gateway's revision", || async {
        gateways(&cluster).await.oldest_retained_revision > left_at + 1
    })
    .await;

    link.set(Link::Pass);
    cluster.wait_applied(d.revision).await;
    assert_eq!(away.snapshots_applied(), 2, "came back through a snapshot");

    cluster.add_gateway().await;
    let fresh = &cluster.gateways[1];
    assert_eq!(fresh.status.replica_len(), away.replica_len());
    for (key, key_id) in [
        (&a.key, &a.key_id),
        (&b.key, &b.key_id),
        (&c.key, &c.key_id),
        (&rerolled.key, &rerolled.key_id),
        (&d.key, &d.key_id),
    ] {
        let want = expected(&cluster, key_id).await;
        for gateway in &cluster.gateways {
            assert_eq!(verdict(&gateway.url("/x"), key).await, want, "{key_id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_in_the_middle_of_a_snapshot_never_serves_a_partial_replica() {
    let mut cluster = Cluster::start(0).await;
    let mut keys = Vec::new();
    for i in 0..200 {
        keys.push(cluster.create_key(&format!("owner-{}", i % 7)).await);
    }
    let disabled = &keys[17];
    set_enabled(&cluster, &disabled.key_id, false).await;

    // Every connection is cut after a few kilobytes: well inside the snapshot (~15 KB).
    let link = FaultProxy::start(cluster.grpc_addr).await;
    link.limit_downstream(6_000);
    let config = gateway_config(&cluster, 0, &[link.url()], StalePolicy::FailClosed);
    let gateway = Gateway::bind(config.clone(), keygate::telemetry::metrics())
        .await
        .unwrap();
    let (status, url) = (gateway.status(), format!("http://{}/x", gateway.addr()));
    let first = Running::spawn(|shutdown| gateway.serve(shutdown));
    eventually("several snapshots broken off", || async {
        link.connections() >= 3
    })
    .await;
    assert_eq!(status.snapshots_applied(), 0);
    assert_eq!(
        status.replica_len(),
        0,
        "a partial snapshot is never installed"
    );
    assert!(!status.is_ready());
    assert_eq!(verdict(&url, &keys[0].key).await.1, "STALE");
    first.stop().await.unwrap();

    // Restarted with the same id and a healthy link.
    link.limit_downstream(0);
    cluster.add_gateway_with(config).await;
    let gateway = &cluster.gateways[0];
    assert_eq!(gateway.status.replica_len(), 200);
    assert_eq!(gateway.status.snapshots_applied(), 1);
    for issued in keys.iter().step_by(13) {
        expect_verdict(&gateway.url("/x"), &issued.key, 200, None).await;
    }
    expect_verdict(&gateway.url("/x"), &disabled.key, 403, Some("DISABLED")).await;
}

/// Remembers, per gateway and key, that a revoked key was refused; a later 200 is a
/// resurrection.
#[derive(Default)]
struct ResurrectionWatch {
    refused: Mutex<HashMap<(usize, String), bool>>,
    resurrections: Mutex<Vec<String>>,
}

impl ResurrectionWatch {
    async fn probe(&self, gateway: usize, url: &str, key: &str) {
        let (status, code) = verdict(url, key).await;
        let mut refused = self.refused.lock().unwrap();
        let seen = refused.entry((gateway, key.to_owned())).or_default();
        if status == 200 && *seen {
            self.resurrections
                .lock()
                .unwrap()
                .push(format!("gateway {gateway} served a revoked key again"));
        }
        if status != 200 && code != "STALE" {
            *seen = true;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restarted_mid_stream_leaves_every_gateway_converged() {
    let mut cluster = Cluster::start(1).await;
    // gw-1 lags behind on a slow link, so the restart catches it mid-stream.
    let link = FaultProxy::start(cluster.grpc_addr).await;
    let mut config = gateway_config(&cluster, 1, &[link.url()], StalePolicy::FailClosed);
    config.propagation_bound = Duration::from_secs(60);
    cluster.add_gateway_with(config).await;
    let mut keys = Vec::new();
    for i in 0..40 {
        keys.push(cluster.create_key(&format!("owner-{}", i % 3)).await);
    }
    cluster.wait_applied(keys[39].revision).await;

    let watch = Arc::new(ResurrectionWatch::default());
    let revoked: Vec<(String, String)> = keys[..30]
        .iter()
        .map(|k| (k.key.clone(), k.key_id.clone()))
        .collect();
    let urls: Vec<String> = cluster.gateways.iter().map(|g| g.url("/x")).collect();
    let stop_probing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (watch, revoked, urls, stop) = (
            Arc::clone(&watch),
            revoked.clone(),
            urls.clone(),
            Arc::clone(&stop_probing),
        );
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (gateway, url) in urls.iter().enumerate() {
                    for (key, _) in &revoked {
                        watch.probe(gateway, url, key).await;
                    }
                }
            }
        })
    };

    link.set(Link::Delay(Duration::from_millis(30)));
    for (i, (_, key_id)) in revoked.iter().enumerate() {
        if i % 2 == 0 {
            set_enabled(&cluster, key_id, false).await;
        } else {
            delete(&cluster, key_id).await;
        }
    }
    cluster.stop_control_plane().await;
    cluster.start_control_plane().await;
    link.set(Link::Pass);
    let last = delete(&cluster, &keys[35].key_id).await;
    cluster.wait_applied(last).await;

    stop_probing.store(true, std::sync::atomic::Ordering::Relaxed);
    prober.await.unwrap();
    assert!(
        watch.resurrections.lock().unwrap().is_empty(),
        "{:?}",
        watch.resurrections.lock().unwrap()
    );
    for issued in &keys {
        let want = expected(&cluster, &issued.key_id).await;
        for gateway in &cluster.gateways {
            assert_eq!(
                verdict(&gateway.url("/x"), &issued.key).await,
                want,
                "{}",
                issued.key_id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_fails_over_to_the_next_control_plane_and_resumes_without_a_snapshot() {
    let mut cluster = Cluster::start(0).await;
    // A second control plane will come up on this port, over the same database.
    let standby = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let urls = vec![
        format!("http://{}", cluster.grpc_addr),
        format!("http://{standby}"),
    ];
    let config = gateway_config(&cluster, 0, &urls, StalePolicy::FailClosed);
    cluster.add_gateway_with(config).await;
    let issued = cluster.create_key("alice").await;
    cluster.wait_applied(issued.revision).await;

    cluster.stop_control_plane().await;
    cluster.grpc_addr = standby;
    cluster.start_control_plane().await;
    eventually("the gateway on the standby", || async {
        gateways(&cluster)
            .await
            .gateways
            .iter()
            .any(|g| g.gateway_id == "gw-0" && g.connected)
    })
    .await;
    let revision = set_enabled(&cluster, &issued.key_id, false).await;
    cluster.wait_applied(revision).await;
    let gateway = &cluster.gateways[0];
    expect_verdict(&gateway.url("/x"), &issued.key, 403, Some("DISABLED")).await;
    assert_eq!(gateway.status.snapshots_applied(), 1);
}

/// Random sequences of changes and link faults; once quiet, every gateway's verdict for every
/// key equals the control plane's. The seed is printed; `KEYGATE_FAULT_SEED=N` replays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_changes_and_disconnects_converge_to_the_control_plane_s_verdicts() {
    let seeds: Vec<u64> = match std::env::var("KEYGATE_FAULT_SEED") {
        Ok(seed) => vec![seed.parse().expect("KEYGATE_FAULT_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        println!("seed {seed}");
        converge_after_random_faults(seed, 40).await;
    }
}

async fn converge_after_random_faults(seed: u64, operations: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(0).await;
    let links = [
        FaultProxy::start(cluster.grpc_addr).await,
        FaultProxy::start(cluster.grpc_addr).await,
    ];
    for (index, link) in links.iter().enumerate() {
        let mut config = gateway_config(&cluster, index, &[link.url()], StalePolicy::FailClosed);
        config.propagation_bound = Duration::from_secs(60);
        cluster.add_gateway_with(config).await;
    }
    let owners = ["alice", "bob", "carol"];
    // (plaintext, key id) of every key ever issued.
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut admin = cluster.admin().await;
    for step in 0..operations {
        let pick = |rng: &mut StdRng, keys: &[(String, String)]| {
            keys[rng.random_range(0..keys.len())].1.clone()
        };
        let choice = if keys.is_empty() {
            0
        } else {
            rng.random_range(0..9)
        };
        let outcome = match choice {
            0 | 1 => {
                let owner = owners[rng.random_range(0..owners.len())];
                let issued = cluster.create_key(owner).await;
                keys.push((issued.key, issued.key_id));
                Ok(())
            }
            2 | 3 => {
                let key_id = pick(&mut rng, &keys);
                let enabled = rng.random_bool(0.5);
                admin
                    .set_key_enabled(pb::SetKeyEnabledRequest { key_id, enabled })
                    .await
                    .map(drop)
            }
            4 => {
                let key_id = pick(&mut rng, &keys);
                admin
                    .delete_key(pb::DeleteKeyRequest { key_id })
                    .await
                    .map(drop)
            }
            5 => {
                let key_id = pick(&mut rng, &keys);
                let grace_ms = if rng.random_bool(0.5) { 0 } else { 3_600_000 };
                admin
                    .reroll_key(pb::RerollKeyRequest { key_id, grace_ms })
                    .await
                    .map(|issued| {
                        let issued = issued.into_inner();
                        keys.push((issued.key, issued.key_id));
                    })
            }
            6 => {
                let owner = owners[rng.random_range(0..owners.len())];
                admin
                    .revoke_owner(pb::RevokeOwnerRequest {
                        owner: owner.into(),
                    })
                    .await
                    .map(drop)
            }
            _ => {
                let link = &links[rng.random_range(0..links.len())];
                let fault = match rng.random_range(0..4) {
                    0 => Link::Cut,
                    1 => Link::Blackhole,
                    2 => Link::Delay(Duration::from_millis(rng.random_range(1..40))),
                    _ => Link::Pass,
                };
                println!("step {step}: link {fault:?}");
                link.set(fault);
                Ok(())
            }
        };
        // Changing a key that a revoke-owner or delete already removed is refused: fine.
        if let Err(status) = outcome {
            assert_eq!(
                status.code(),
                tonic::Code::NotFound,
                "step {step}: {status}"
            );
        }
    }

    for link in &links {
        link.set(Link::Pass);
    }
    let head = gateways(&cluster).await.head_revision;
    cluster.wait_applied(head).await;
    for (key, key_id) in &keys {
        let want = expected(&cluster, key_id).await;
        for (index, gateway) in cluster.gateways.iter().enumerate() {
            assert_eq!(
                verdict(&gateway.url("/x"), key).await,
                want,
                "seed {seed}: gateway {index}, {key_id}"
            );
        }
    }
}
