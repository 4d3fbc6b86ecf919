//! A highly available control plane (DESIGN.md, "Storage and a highly available control plane"
//! and "Sync"): real `keygate` processes — control-plane replicas sharing one real PostgreSQL,
//! gateways, the echo upstream, operator commands — and the failures an operator meets: a
//! replica killed under load, the database gone for longer than the propagation bound, writes
//! racing through two replicas, a restored backup, and a second control plane on one SQLite
//! file. Each test has its own PostgreSQL server; every process is killed when the test ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keygate::admin_client::AdminClient;
use keygate_proto::pb;
use keygate_test_postgres::TestPostgres;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Process, Tokens, eventually_within, keygate_cli,
    run_to_exit, sqlite_url, start_echo_upstream,
};
use support::{DEADLINE, expect_verdict, get_with_key, verdict};
use tokio::task::JoinHandle;

/// The bound of the gateways that must go STALE: short, so the test is quick, yet three ping
/// intervals (the default 1 s) so a busy machine never misses one by that much.
const SHORT_BOUND: &str = "3s";
/// How long a recovery after the database returns may take: the replicas' pools reconnect and
/// the gateways' next pings must be answered.
const RECOVERY: Duration = Duration::from_secs(30);
/// How long the writers of the concurrency test write.
const WRITING: Duration = Duration::from_secs(10);

/// Starts a PostgreSQL server for this test (blocking work, off the runtime's threads).
async fn start_postgres() -> Arc<TestPostgres> {
    let postgres = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("PostgreSQL starts (tests/postgres/setup.sh installs it)");
    Arc::new(postgres)
}

/// `psql` in `database`, its output split into rows of columns.
fn psql(postgres: &TestPostgres, database: &str, sql: &str) -> Vec<Vec<String>> {
    let output = tokio::task::block_in_place(|| postgres.psql(database, sql))
        .unwrap_or_else(|error| panic!("psql {sql}: {error}"));
    output
        .lines()
        .map(|line| line.split('|').map(str::to_owned).collect())
        .collect()
}

/// The one value `sql` selects.
fn psql_value(postgres: &TestPostgres, database: &str, sql: &str) -> String {
    let rows = psql(postgres, database, sql);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone()
}

/// Control-plane replicas sharing the database `keygate` of one PostgreSQL, and an upstream.
struct Deployment {
    tokens: Tokens,
    replicas: Vec<ControlPlaneProcess>,
    upstream_url: String,
    /// Kept running: the gateways forward to it.
    _upstream: Process,
    /// Last, so it stops after every process that uses it.
    postgres: Arc<TestPostgres>,
}

impl Deployment {
    async fn start(replicas: usize) -> Self {
        let postgres = start_postgres().await;
        let tokens = Tokens::random();
        let mut started = Vec::new();
        for index in 1..=replicas {
            let name = format!("cp-{index}");
            started.push(
                ControlPlaneProcess::start(&name, &postgres.url(), &tokens, "127.0.0.1:0").await,
            );
        }
        let (upstream, upstream_url) = start_echo_upstream().await;
        Self {
            tokens,
            replicas: started,
            upstream_url,
            _upstream: upstream,
            postgres,
        }
    }

    /// Starts gateway `id` syncing from the replicas `indexes` (in that failover order).
    async fn gateway(&self, id: &str, indexes: &[usize], extra: &[&str]) -> GatewayProcess {
        let urls: Vec<&str> = indexes
            .iter()
            .map(|&i| self.replicas[i].grpc.as_str())
            .collect();
        GatewayProcess::start(id, &self.upstream_url, &urls, &self.tokens, extra).await
    }

    async fn admin(&self, replica: usize) -> AdminClient {
        self.replicas[replica].admin(&self.tokens).await
    }

    fn psql(&self, sql: &str) -> Vec<Vec<String>> {
        psql(&self.postgres, "keygate", sql)
    }
}

async fn create_key(admin: &mut AdminClient, owner: &str) -> pb::IssuedKey {
    admin
        .create_key(pb::CreateKeyRequest {
            owner: owner.into(),
            ..Default::default()
        })
        .await
        .expect("create key")
        .into_inner()
}

async fn delete_key(admin: &mut AdminClient, key_id: &str) -> u64 {
    admin
        .delete_key(pb::DeleteKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .expect("delete key")
        .into_inner()
        .revision
}

async fn list_gateways(admin: &mut AdminClient) -> pb::ListGatewaysResponse {
    admin
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .expect("list gateways")
        .into_inner()
}

/// Waits until `keygate gateways --json` on `endpoint` lists every one of `ids` as connected.
async fn wait_listed_connected(endpoint: &str, tokens: &Tokens, ids: &[&str]) {
    let what = format!("`keygate gateways` on {endpoint} to list {ids:?} as connected");
    eventually_within(DEADLINE, &what, || async {
        let listed = keygate_cli(endpoint, tokens, &["gateways"]).await;
        assert_eq!(listed.code, 0, "{}", listed.stderr);
        let gateways = listed.json["gateways"].as_array().unwrap().clone();
        ids.iter().all(|id| {
            gateways
                .iter()
                .any(|g| g["gatewayId"] == *id && g["connected"] == true)
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_gateways_of_every_replica_and_wait_counts_them_all() {
    let deployment = Deployment::start(2).await;
    let gateway_a = deployment.gateway("gw-a", &[0, 1], &[]).await;
    let gateway_b = deployment.gateway("gw-b", &[1], &[]).await;
    let (cp1, cp2) = (&deployment.replicas[0], &deployment.replicas[1]);

    // Created through cp-1; gw-b only ever talks to cp-2.
    let issued = create_key(&mut deployment.admin(0).await, "alice").await;
    expect_verdict(&gateway_b.url("/x"), &issued.key, 200, None).await;
    expect_verdict(&gateway_a.url("/x"), &issued.key, 200, None).await;

    // Each replica lists the other's gateways too.
    wait_listed_connected(&cp1.grpc, &deployment.tokens, &["gw-a", "gw-b"]).await;
    wait_listed_connected(&cp2.grpc, &deployment.tokens, &["gw-a", "gw-b"]).await;

    // `--wait` through cp-2 returns only once gw-a (on cp-1) has applied the change as well.
    let disabled = keygate_cli(
        &cp2.grpc,
        &deployment.tokens,
        &["keys", "disable", &issued.key_id, "--wait"],
    )
    .await;
    for gateway in [&gateway_a, &gateway_b] {
        assert_eq!(
            verdict(&gateway.url("/x"), &issued.key).await,
            (403, "DISABLED".to_owned()),
            "{} right after --wait returned",
            gateway.id
        );
    }
    assert_eq!(disabled.code, 0, "{}", disabled.stderr);
    let wait = &disabled.json["wait"];
    assert_eq!(wait["complete"], true, "{wait}");
    let mut acked: Vec<&str> = wait["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, ["gw-a", "gw-b"], "{wait}");
    assert_eq!(wait["pending"], serde_json::json!([]), "{wait}");
    assert_eq!(wait["pastBound"], serde_json::json!([]), "{wait}");
}

/// Requests with one key sent to one gateway by `loops` tasks, back to back, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(url: String, key: String, loops: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let tasks = (0..loops)
            .map(|_| {
                let (url, key) = (url.clone(), key.clone());
                let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let reply = get_with_key(&url, &key).await;
                        if reply.status == 200 {
                            served.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.push(format!(
                                "{} {}",
                                reply.status,
                                String::from_utf8_lossy(&reply.body)
                            ));
                        }
                    }
                    failures
                })
            })
            .collect();
        Self {
            stop,
            served,
            tasks,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops every loop; returns how many requests were served and every other answer.
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for task in self.tasks {
            failures.extend(task.await.unwrap());
        }
        (self.served.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_fails_over_without_a_failed_request_or_a_snapshot() {
    let mut deployment = Deployment::start(2).await;
    let gateway_a = deployment.gateway("gw-a", &[0, 1], &[]).await;
    // gw-b is on cp-2 only: its row in the shared registry names cp-2's replica id.
    let _gateway_b = deployment.gateway("gw-b", &[1], &[]).await;
    let issued = create_key(&mut deployment.admin(0).await, "alice").await;
    expect_verdict(&gateway_a.url("/x"), &issued.key, 200, None).await;
    let snapshots = "keygate_snapshots_total";
    assert_eq!(gateway_a.metric(snapshots).await, Some(1.0));

    let load = Load::start(gateway_a.url("/x"), issued.key.clone(), 4);
    eventually_within(DEADLINE, "the load to get going", || async {
        load.served() >= 50
    })
    .await;
    let cp1 = deployment.replicas.remove(0);
    cp1.process.kill().await;

    // gw-a is on cp-2 once cp-2 has published it as its own and gw-a says it is connected.
    let on_cp2 = "SELECT a.replica_id = b.replica_id AND a.disconnected_ms IS NULL \
                  FROM gateways a, gateways b \
                  WHERE a.gateway_id = 'gw-a' AND b.gateway_id = 'gw-b'";
    eventually_within(DEADLINE, "gw-a connected to cp-2", || async {
        deployment.psql(on_cp2) == [["t"]] && gateway_a.readiness().await.1["connected"] == true
    })
    .await;
    let mut cp2 = deployment.admin(0).await;
    let second = create_key(&mut cp2, "bob").await;
    expect_verdict(&gateway_a.url("/x"), &second.key, 200, None).await;
    delete_key(&mut cp2, &second.key_id).await;
    expect_verdict(&gateway_a.url("/x"), &second.key, 401, Some("NOT_FOUND")).await;

    let before_stop = load.served();
    eventually_within(DEADLINE, "more load after the failover", || async {
        load.served() > before_stop + 50
    })
    .await;
    let (served, failures) = load.finish().await;
    println!("{served} requests served across the failover");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        served as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let (status, readiness) = gateway_a.readiness().await;
    assert_eq!(status, 200, "{readiness}");
    assert_eq!(readiness["snapshotsApplied"], 1, "resumed, no new snapshot");
    assert_eq!(
        readiness["controlPlane"],
        deployment.replicas[0].grpc.as_str(),
        "/readyz names the control plane it failed over to"
    );
    assert_eq!(gateway_a.metric(snapshots).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_past_the_bound_makes_every_gateway_fail_closed_until_it_returns() {
    let deployment = Deployment::start(2).await;
    let bound = ["--propagation-bound", SHORT_BOUND];
    let gateways = [
        deployment.gateway("gw-a", &[0, 1], &bound).await,
        deployment.gateway("gw-b", &[1, 0], &bound).await,
    ];
    let issued = create_key(&mut deployment.admin(0).await, "alice").await;
    for gateway in &gateways {
        expect_verdict(&gateway.url("/x"), &issued.key, 200, None).await;
    }

    let postgres = Arc::clone(&deployment.postgres);
    tokio::task::spawn_blocking(move || postgres.stop())
        .await
        .unwrap()
        .expect("PostgreSQL stops");

    // No replica can read the committed head, so none vouches for a gateway: at the bound each
    // refuses (fail-closed) and leaves the load balancer's pool.
    for gateway in &gateways {
        expect_verdict(&gateway.url("/x"), &issued.key, 503, Some("STALE")).await;
        assert_eq!(gateway.readiness().await.0, 503, "{}", gateway.id);
    }
    // And none claims freshness again while the database is away: watched for three ping
    // intervals, across the gateways' reconnects and failovers.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        for gateway in &gateways {
            assert_eq!(
                verdict(&gateway.url("/x"), &issued.key).await,
                (503, "STALE".to_owned()),
                "{} while the database is down",
                gateway.id
            );
            let (status, readiness) = gateway.readiness().await;
            assert_eq!(status, 503, "{}: {readiness}", gateway.id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let postgres = Arc::clone(&deployment.postgres);
    tokio::task::spawn_blocking(move || postgres.restart())
        .await
        .unwrap()
        .expect("PostgreSQL restarts");
    for gateway in &gateways {
        let what = format!("{} serving and ready again", gateway.id);
        eventually_within(RECOVERY, &what, || async {
            verdict(&gateway.url("/x"), &issued.key).await.0 == 200
                && gateway.readiness().await.0 == 200
        })
        .await;
    }
}

/// What one writer did: every key it created, and the revision of each change, in order.
struct Written {
    keys: Vec<(String, String)>,
    revisions: Vec<u64>,
}

/// Creates, disables, enables and deletes its own keys through `admin` until `until`. Every
/// call changes something (a key is only ever flipped), so every call appends one event.
async fn write_until(mut admin: AdminClient, writer: usize, until: Instant) -> Written {
    let mut rng = StdRng::seed_from_u64(writer as u64);
    let owner = format!("writer-{writer}");
    // Live keys: (key id, enabled).
    let mut live: Vec<(String, bool)> = Vec::new();
    let mut written = Written {
        keys: Vec::new(),
        revisions: Vec::new(),
    };
    while Instant::now() < until {
        let revision = if live.is_empty() || rng.random_bool(0.4) {
            let issued = create_key(&mut admin, &owner).await;
            live.push((issued.key_id.clone(), true));
            written.keys.push((issued.key, issued.key_id));
            issued.revision
        } else {
            let index = rng.random_range(0..live.len());
            if rng.random_bool(0.7) {
                let (key_id, enabled) = &mut live[index];
                *enabled = !*enabled;
                admin
                    .set_key_enabled(pb::SetKeyEnabledRequest {
                        key_id: key_id.clone(),
                        enabled: *enabled,
                    })
                    .await
                    .expect("set key enabled")
                    .into_inner()
                    .revision
            } else {
                let (key_id, _) = live.swap_remove(index);
                delete_key(&mut admin, &key_id).await
            }
        };
        written.revisions.push(revision);
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_two_replicas_keep_one_contiguous_log_that_every_gateway_matches()
{
    const WRITERS_PER_REPLICA: usize = 2;
    let deployment = Deployment::start(2).await;
    let gateways = [
        deployment.gateway("gw-a", &[0], &[]).await,
        deployment.gateway("gw-b", &[1], &[]).await,
    ];

    let until = Instant::now() + WRITING;
    let mut writers = Vec::new();
    for writer in 0..2 * WRITERS_PER_REPLICA {
        let admin = deployment.admin(writer % 2).await;
        writers.push(tokio::spawn(write_until(admin, writer, until)));
    }
    let mut keys = Vec::new();
    let mut revisions = Vec::new();
    for (writer, task) in writers.into_iter().enumerate() {
        let written = task.await.unwrap();
        assert!(
            written.revisions.windows(2).all(|w| w[0] < w[1]),
            "writer {writer}: its changes got revisions out of order"
        );
        keys.extend(written.keys);
        revisions.extend(written.revisions);
    }
    let changes = revisions.len();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), changes, "two changes got one revision");

    // One log, no gaps: every revision from the first to the head is there, once.
    let state = deployment.psql("SELECT head, oldest_retained FROM log_state");
    let head: u64 = state[0][0].parse().unwrap();
    let oldest: u64 = state[0][1].parse().unwrap();
    let events = deployment.psql("SELECT count(*), min(revision), max(revision) FROM events");
    let [count, min, max]: [u64; 3] = std::array::from_fn(|i| events[0][i].parse().unwrap());
    assert_eq!(
        (min, max),
        (oldest, head),
        "events {events:?}, log_state {state:?}"
    );
    assert_eq!(count, head - oldest + 1, "a gap in the log");
    assert!(revisions[0] >= oldest && *revisions.last().unwrap() == head);
    println!("{changes} changes, {} keys, head {head}", keys.len());

    // Every gateway applies the head, and both replicas see that.
    for gateway in &gateways {
        let what = format!("{} applied the head {head}", gateway.id);
        eventually_within(DEADLINE, &what, || async {
            gateway.readiness().await.1["appliedRevision"] == head
        })
        .await;
    }
    for replica in 0..2 {
        let admin = deployment.admin(replica).await;
        eventually_within(DEADLINE, "the registry to show the head applied", || {
            let mut admin = admin.clone();
            async move {
                let listed = list_gateways(&mut admin).await;
                listed.head_revision == head
                    && listed.gateways.len() == 2
                    && listed.gateways.iter().all(|g| g.applied_revision == head)
            }
        })
        .await;
    }

    // Every gateway's replica is the store's, key for key.
    let stored: HashMap<String, bool> = deployment
        .psql("SELECT key_id, enabled FROM keys")
        .into_iter()
        .map(|row| (row[0].clone(), row[1] == "t"))
        .collect();
    for gateway in &gateways {
        assert_eq!(
            gateway.metric("keygate_replica_keys").await,
            Some(stored.len() as f64),
            "{}",
            gateway.id
        );
    }
    let checks = keys.iter().flat_map(|(key, key_id)| {
        let want = match stored.get(key_id) {
            Some(true) => (200, "VALID"),
            Some(false) => (403, "DISABLED"),
            None => (401, "NOT_FOUND"),
        };
        gateways
            .iter()
            .map(move |gateway| (gateway, key, key_id, want))
    });
    let mismatches: Vec<String> = futures_util::stream::iter(checks)
        .map(|(gateway, key, key_id, want)| async move {
            let got = verdict(&gateway.url("/x"), key).await;
            (got != (want.0, want.1.to_owned()))
                .then(|| format!("{} {key_id}: want {want:?}, got {got:?}", gateway.id))
        })
        .buffer_unordered(8)
        .filter_map(|mismatch| async move { mismatch })
        .collect()
        .await;
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_is_refused_and_another_store_brings_a_snapshot() {
    let postgres = start_postgres().await;
    let tokens = Tokens::random();
    let d1 = postgres.create_database("d1").unwrap();
    let d3 = postgres.create_database("d3").unwrap();
    let (_upstream, upstream_url) = start_echo_upstream().await;

    // The backup: d2 is d1 as it was after two keys.
    let cp1 = ControlPlaneProcess::start("cp-1", &d1, &tokens, "127.0.0.1:0").await;
    let mut admin = cp1.admin(&tokens).await;
    let deleted_later = create_key(&mut admin, "alice").await;
    let kept = create_key(&mut admin, "bob").await;
    drop(admin);
    cp1.process.terminate().await;
    // The template must have no connections; a stopped control plane's may linger a moment.
    eventually_within(DEADLINE, "CREATE DATABASE d2 TEMPLATE d1", || async {
        tokio::task::block_in_place(|| postgres.psql("keygate", "CREATE DATABASE d2 TEMPLATE d1"))
            .is_ok()
    })
    .await;
    let d2 = d1.replace("/d1", "/d2");
    let backup_head: u64 = psql_value(&postgres, "d2", "SELECT head FROM log_state")
        .parse()
        .unwrap();

    // d1 moves on: a key deleted and one created after the backup point.
    let cp1 = ControlPlaneProcess::start("cp-1", &d1, &tokens, "127.0.0.1:0").await;
    let cp1b = ControlPlaneProcess::start("cp-1b", &d1, &tokens, "127.0.0.1:0").await;
    let cp_backup = ControlPlaneProcess::start("cp-backup", &d2, &tokens, "127.0.0.1:0").await;
    let cp_fresh = ControlPlaneProcess::start("cp-fresh", &d3, &tokens, "127.0.0.1:0").await;
    let mut admin = cp1.admin(&tokens).await;
    delete_key(&mut admin, &deleted_later.key_id).await;
    let newer = create_key(&mut admin, "carol").await;
    assert!(newer.revision > backup_head);

    // Lookup answers are remembered longer than the default 2 s, so that one given by the old
    // store is still remembered when the gateway reaches the new one, however slow the machine.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("gateway.toml");
    std::fs::write(&config, "negative_cache_ttl = \"30s\"\n").unwrap();
    let gateway = GatewayProcess::start(
        "gw-g",
        &upstream_url,
        &[&cp1.grpc, &cp_backup.grpc, &cp1b.grpc, &cp_fresh.grpc],
        &tokens,
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let (_, readiness) = gateway.readiness().await;
    assert!(readiness["appliedRevision"].as_u64().unwrap() >= newer.revision);
    assert_eq!(readiness["snapshotsApplied"], 1);
    let url = gateway.url("/x");
    expect_verdict(&url, &deleted_later.key, 401, Some("NOT_FOUND")).await;
    expect_verdict(&url, &kept.key, 200, None).await;
    expect_verdict(&url, &newer.key, 200, None).await;

    // cp-1 dies: next in line is the backup, which serves an older copy of the gateway's log.
    cp1.process.kill().await;
    let refused = r#"keygate_sync_refused_total{reason="older_history"}"#;
    eventually_within(DEADLINE, "the backup refused, then cp-1b", || async {
        gateway.metric(refused).await.unwrap_or(0.0) >= 1.0
            && gateway.readiness().await.1["connected"] == true
    })
    .await;
    let log = gateway.process.log_text();
    assert!(
        log.contains("serves an older copy of log"),
        "no warning about the refusal:\n{log}"
    );
    let mut admin = cp1b.admin(&tokens).await;
    let on_cp1b = create_key(&mut admin, "dave").await;
    expect_verdict(&url, &on_cp1b.key, 200, None).await;
    assert_eq!(
        verdict(&url, &deleted_later.key).await,
        (401, "NOT_FOUND".to_owned()),
        "a key deleted after the backup point came back"
    );
    let (status, readiness) = gateway.readiness().await;
    assert_eq!(status, 200, "{readiness}");
    assert_eq!(
        readiness["snapshotsApplied"], 1,
        "the backup was not installed"
    );

    // A request for a key created a moment ago may beat the key's event to the gateway; the
    // gateway then looks the key up at cp-1b. Keys created through a replica the gateway is not
    // attached to (whose changes reach cp-1b by tailing the log) soon give such a request.
    let cp1c = ControlPlaneProcess::start("cp-1c", &d1, &tokens, "127.0.0.1:0").await;
    let mut writer = cp1c.admin(&tokens).await;
    let found = r#"keygate_miss_lookups_total{result="found"}"#;
    let started = Instant::now();
    let looked_up = loop {
        assert!(
            started.elapsed() < DEADLINE,
            "no request beat its key's event to the gateway"
        );
        let before = gateway.metric(found).await.unwrap_or(0.0);
        let issued = create_key(&mut writer, "frank").await;
        verdict(&url, &issued.key).await;
        if gateway.metric(found).await.unwrap_or(0.0) > before {
            break issued;
        }
    };

    // cp-1b goes too: next in line is another store, another log, so a full snapshot of it.
    let fresh = create_key(&mut cp_fresh.admin(&tokens).await, "erin").await;
    cp1b.process.kill().await;
    eventually_within(DEADLINE, "a snapshot of the other store", || async {
        gateway.readiness().await.1["snapshotsApplied"] == 2
    })
    .await;
    assert_eq!(gateway.metric("keygate_snapshots_total").await, Some(2.0));
    expect_verdict(&url, &fresh.key, 200, None).await;
    // Nothing of the old store survives the switch, not even what a lookup there answered.
    assert_eq!(
        verdict(&url, &looked_up.key).await,
        (401, "NOT_FOUND".to_owned()),
        "a key of the old store, looked up there just before the switch, is served from the \
         new store's replica: {}",
        gateway.readiness().await.1
    );
    assert_eq!(
        gateway.metric("keygate_replica_keys").await,
        Some(1.0),
        "the replica holds more than the new store's one key"
    );
    for (name, key) in [
        ("kept", &kept.key),
        ("newer", &newer.key),
        ("on_cp1b", &on_cp1b.key),
    ] {
        assert_eq!(
            verdict(&url, key).await,
            (401, "NOT_FOUND".to_owned()),
            "{name}: {}",
            gateway.readiness().await.1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_control_plane_on_one_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let database = sqlite_url(dir.path());
    let tokens = Tokens::random();
    let first = ControlPlaneProcess::start("cp-1", &database, &tokens, "127.0.0.1:0").await;

    let (code, stderr) = run_to_exit(&[
        "control-plane",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--database",
        &database,
        "--admin-token",
        &tokens.admin,
        "--gateway-token",
        &tokens.gateway,
    ])
    .await;
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("another keygate control plane is already using the SQLite database"),
        "{stderr}"
    );
    assert!(stderr.contains("SQLite is single-node"), "{stderr}");

    // The first one never noticed.
    let health = support::send("GET", &format!("{}/healthz", first.http), &[], b"").await;
    assert_eq!(health.status, 200);
    let issued = create_key(&mut first.admin(&tokens).await, "alice").await;
    assert!(issued.revision > 0);
    first.process.terminate().await;
}
