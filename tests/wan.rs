//! The sync link over a simulated WAN (DESIGN.md, "Performance targets": over a WAN): a real
//! control plane and a real gateway, as `keygate` processes, with the gateway reaching its
//! control plane through a `keygate_wan` relay that delays every byte 50 ms each way. The
//! gateway syncs, enforces a revocation (a delete without a lookup round trip), goes STALE at its bound when the relay partitions the
//! link, and after the partition heals resumes from its revision with events, not a snapshot.
//!
//! Timing figures (revoke → refused per region, snapshot time over a long round trip) are the
//! region simulator's (`benches/wan.sh`); this test asserts only what cannot depend on how busy
//! the machine is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keygate_proto::pb;
use keygate_wan::{Link, WanRelay};
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Tokens, sqlite_url, start_echo_upstream,
};
use support::{eventually, expect_verdict};

const ONE_WAY: Duration = Duration::from_millis(50);
const BOUND: Duration = Duration::from_secs(3);

async fn create_key(admin: &mut keygate::admin_client::AdminClient, owner: &str) -> pb::IssuedKey {
    admin
        .create_key(pb::CreateKeyRequest {
            owner: owner.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn disable(admin: &mut keygate::admin_client::AdminClient, key_id: &str) -> u64 {
    admin
        .set_key_enabled(pb::SetKeyEnabledRequest {
            key_id: key_id.into(),
            enabled: false,
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_50ms_away_syncs_enforces_goes_stale_in_a_partition_and_heals_without_a_snapshot()
{
    let data = tempfile::tempdir().unwrap();
    let tokens = Tokens::random();
    let control_plane = ControlPlaneProcess::start(
        "control-plane",
        &sqlite_url(data.path()),
        &tokens,
        "127.0.0.1:0",
    )
    .await;
    let (_upstream, upstream) = start_echo_upstream().await;
    let target: SocketAddr = control_plane
        .grpc
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let relay = WanRelay::start(target, Link::delayed(ONE_WAY))
        .await
        .unwrap();
    let mut admin = control_plane.admin(&tokens).await;
    let revoked = create_key(&mut admin, "alice").await;
    let kept = create_key(&mut admin, "bob").await;
    let revoked_in_partition = create_key(&mut admin, "carol").await;
    let deleted = create_key(&mut admin, "dave").await;

    // Pings every 250 ms: a silent stream is noticed within 750 ms, well inside the bound.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("gateway.toml");
    std::fs::write(&config, "ping_interval = \"250ms\"\n").unwrap();
    let gateway = GatewayProcess::start(
        "gw-far",
        &upstream,
        &[&relay.url()],
        &tokens,
        &[
            "--propagation-bound",
            "3s",
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .await;
    let (_, readiness) = gateway.readiness().await;
    assert!(readiness["appliedRevision"].as_u64().unwrap() >= revoked_in_partition.revision);
    assert_eq!(readiness["snapshotsApplied"], 1);
    assert!(
        relay.connections() >= 1,
        "the gateway went around the relay"
    );
    let url = gateway.url("/x");
    for key in [&revoked, &kept, &revoked_in_partition, &deleted] {
        expect_verdict(&url, &key.key, 200, None).await;
    }

    // A revocation crosses the WAN and is enforced there.
    disable(&mut admin, &revoked.key_id).await;
    expect_verdict(&url, &revoked.key, 403, Some("DISABLED")).await;
    expect_verdict(&url, &kept.key, 200, None).await;
    // A deleted key is refused from what the gateway applied, without asking the control
    // plane about it: over a WAN that lookup would cost a round trip before the refusal.
    let absent = r#"keygate_miss_lookups_total{result="absent"}"#;
    let lookups_before = gateway.metric(absent).await;
    assert!(lookups_before.is_some(), "no {absent} on /metrics");
    admin
        .delete_key(pb::DeleteKeyRequest {
            key_id: deleted.key_id.clone(),
        })
        .await
        .unwrap();
    expect_verdict(&url, &deleted.key, 401, Some("NOT_FOUND")).await;
    assert_eq!(gateway.metric(absent).await, lookups_before);

    // Partition. The gateway is current when it begins; its staleness then only grows, so it
    // cannot turn STALE before the bound minus the staleness it had when the partition began.
    let (status, before) = gateway.readiness().await;
    assert_eq!(status, 200, "{before}");
    // `stalenessMs` is truncated to whole milliseconds: round it up.
    let staleness_before = Duration::from_millis(before["stalenessMs"].as_u64().unwrap() + 1);
    let partitioned = Instant::now();
    relay.blackhole();
    // A change the gateway cannot hear about until the link heals.
    disable(&mut admin, &revoked_in_partition.key_id).await;
    expect_verdict(&url, &kept.key, 503, Some("STALE")).await;
    let stale_after = partitioned.elapsed();
    assert!(
        stale_after + staleness_before >= BOUND,
        "STALE {stale_after:?} into the partition, {staleness_before:?} stale when it began"
    );
    assert_eq!(gateway.readiness().await.0, 503);
    eventually("the silent stream noticed by the ping deadline", || async {
        gateway.readiness().await.1["connected"] == false
    })
    .await;

    // Heal: the gateway resumes from its revision, catches up with events only.
    relay.heal();
    expect_verdict(&url, &revoked_in_partition.key, 403, Some("DISABLED")).await;
    expect_verdict(&url, &kept.key, 200, None).await;
    expect_verdict(&url, &revoked.key, 403, Some("DISABLED")).await;
    eventually("ready again", || async {
        gateway.readiness().await.0 == 200
    })
    .await;
    let (_, readiness) = gateway.readiness().await;
    assert_eq!(readiness["snapshotsApplied"], 1, "healed with a snapshot");
    assert_eq!(gateway.metric("keygate_snapshots_total").await, Some(1.0));
}
