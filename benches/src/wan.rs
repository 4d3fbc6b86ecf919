//! The region simulator (`keygate-bench wan`, driven by `benches/wan.sh`): keygate at internet
//! latencies (DESIGN.md, "Performance targets": over a WAN, p99 ≤ the region's one-way delay +
//! 5 ms; a 1M-key snapshot at 120 ms one-way ready in ≤ 3 s).
//!
//! Real `keygate` processes: a control plane (SQLite), a fixed-response upstream, and M
//! gateways per region, each region's gateways reaching the control plane through that
//! region's [`WanRelay`] (one-way delay, jitter, bandwidth cap, loss bursts as stalls), plus
//! gateways on plain loopback, the baseline measured in the same run. With `--replicas 2`, two
//! control planes share a real PostgreSQL server (started here, stopped at the end) and each
//! region's gateways alternate between them, one relay per region and replica; the operator
//! (revocations, `--wait`) talks to replica 1, so half the gateways hear of each change
//! through the other replica. The probes, the background load and the operator talk to the
//! gateways and the control plane directly, so the figures are enforcement at the gateway after
//! the WAN, not the WAN twice.
//!
//! Phases (all by default):
//! - `propagation`: N revocations (alternately disable and delete) under a paced background
//!   load; per region, p50/p99/max of admin call returned → every gateway of the region
//!   refuses, probed with real requests back to back from [`PROBE_LEAD`] before the region's
//!   one-way delay (a refusal seen at the first poll counts from then: figures are never
//!   below the truth); and `WaitForRevision` (what `--wait` calls), issued at the same
//!   instant, which returns when the slowest region acked.
//! - `snapshot`: a fresh gateway's time to ready from a synthetic control plane's N-key
//!   snapshot, on loopback and behind a relay of `--snapshot-delay`, alternately.
//! - `partition`: one gateway per bound (default 10 s and 60 s) behind its own relay of the
//!   slowest region's delay; the relays blackhole at one instant; time until each gateway's
//!   `/readyz` turns 503 (STALE), and the proof's age when the partition began. Changes are
//!   made meanwhile; after the heal, time until each gateway is ready with the head applied,
//!   and whether it took a snapshot (it must not: events only).
//!
//! Every process is a child of this one and is killed when the run ends, fails, or is
//! interrupted (Ctrl-C, SIGTERM); the work directory is removed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use keygate::admin_client::AdminClient;
use keygate_proto::pb;
use keygate_test_postgres::TestPostgres;
use keygate_wan::{Direction, Link, WanRelay};
use rand::Rng;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::percentiles::Percentiles;
use crate::probe::{self, HttpClient};
use crate::propagation;

/// A gateway's probe starts polling this long before its region's one-way delay has passed,
/// then polls back to back: a tight loop over 16 gateways for the whole delay would take the
/// two cores from the relays and gateways it measures, and a pause between polls would add
/// its own length to every figure.
const PROBE_LEAD: Duration = Duration::from_millis(3);
/// How long any process may take to start, and any gateway to sync or refuse.
const GIVE_UP: Duration = Duration::from_secs(120);

/// A part of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Propagation,
    Snapshot,
    Partition,
}

/// `keygate-bench wan`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WanArgs {
    /// The `keygate` binary under test.
    #[arg(long, default_value = "target/release/keygate")]
    pub keygate: PathBuf,
    /// One region per value: its one-way delay (both directions).
    #[arg(long, value_delimiter = ',', default_value = "20ms,60ms,120ms", value_parser = humantime::parse_duration)]
    pub regions: Vec<Duration>,
    /// Gateways in each region.
    #[arg(long, default_value_t = 4)]
    pub gateways: usize,
    /// Gateways on plain loopback, the baseline of the same run (0: none).
    #[arg(long, default_value_t = 4)]
    pub loopback_gateways: usize,
    /// Control planes: 1 (SQLite), or 2 replicas sharing a PostgreSQL server started for the
    /// run, each region's gateways alternating between them.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Each read is delayed by its region's delay ± up to this much.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub jitter: Duration,
    /// Bytes per second each way, per region; unset: unlimited.
    #[arg(long)]
    pub bandwidth: Option<u64>,
    /// Length of a loss burst (a stall of one direction of one region's link); 0: none.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub loss_burst: Duration,
    /// Mean time between loss bursts (each at a random region and direction).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub loss_every: Duration,
    /// Revocations in the propagation phase.
    #[arg(long, default_value_t = 1000)]
    pub revocations: usize,
    /// Background requests per second over all gateways during the propagation phase.
    #[arg(long, default_value_t = 2000)]
    pub load_rps: u64,
    /// Which phases to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "propagation,snapshot,partition"
    )]
    pub phases: Vec<Phase>,
    /// Keys in the snapshot phase's synthetic control plane.
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_keys: usize,
    /// One-way delay of the snapshot phase's relay.
    #[arg(long, default_value = "120ms", value_parser = humantime::parse_duration)]
    pub snapshot_delay: Duration,
    /// Snapshot transfers per path (loopback, WAN).
    #[arg(long, default_value_t = 3)]
    pub snapshot_tries: usize,
    /// Propagation bounds of the partition phase's gateways.
    #[arg(long, value_delimiter = ',', default_value = "10s,60s", value_parser = humantime::parse_duration)]
    pub bounds: Vec<Duration>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw revoke → refused per region as an SVG chart here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
}

/// Runs the simulator until it is done or interrupted; prints the results as it goes.
pub async fn run(args: WanArgs) -> anyhow::Result<()> {
    // Dropping the run (on a signal) drops its processes, which kills them.
    tokio::select! {
        result = simulate(&args) => result,
        () = interrupted() => bail!("interrupted; every process started was stopped"),
    }
}

/// Ctrl-C, or SIGTERM on Unix: how a run is interrupted (its processes are then dropped, which
/// kills them).
pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn simulate(args: &WanArgs) -> anyhow::Result<()> {
    if args.regions.is_empty() {
        bail!("--regions: name at least one region's delay");
    }
    if !(1..=2).contains(&args.replicas) {
        bail!(
            "--replicas: 1 (SQLite) or 2 (PostgreSQL), not {}",
            args.replicas
        );
    }
    let mut results = serde_json::Map::new();
    results.insert("date".into(), json!(today()));
    results.insert("machine".into(), json!(machine()));
    println!("machine: {}", machine());
    let mut world = World::start(args).await?;
    results.insert("controlPlane".into(), json!(world.database));
    if args.phases.contains(&Phase::Propagation) {
        let report = world.propagation(args).await?;
        if let Some(path) = &args.chart {
            std::fs::write(path, chart(&report))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        results.insert("propagation".into(), report);
    }
    if args.phases.contains(&Phase::Partition) {
        results.insert("partition".into(), world.partition(args).await?);
    }
    drop(world);
    if args.phases.contains(&Phase::Snapshot) {
        results.insert("snapshot".into(), snapshot(args).await?);
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&Value::Object(results))?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Child processes and the directory they work in; dropping it kills them and removes it.
pub(crate) struct Processes {
    pub(crate) work: PathBuf,
    children: Vec<Child>,
}

impl Processes {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let work = std::env::temp_dir().join(format!("keygate-wan-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        Ok(Self {
            work,
            children: Vec::new(),
        })
    }

    /// Starts `program args…` (stderr to `WORK/name.log`) and returns the first line it prints
    /// on stdout, the "listening on" line of keygate's servers.
    pub(crate) async fn start(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let log = std::fs::File::create(self.work.join(format!("{name}.log")))?;
        let mut child = Command::new(program)
            .args(args)
            .env("KEYGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        self.children.push(child);
        let (first, rx) = tokio::sync::oneshot::channel();
        // The rest is read and dropped, so that no write meets a closed pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first.send(lines.next());
            for _ in lines {}
        });
        match tokio::time::timeout(GIVE_UP, rx).await {
            Ok(Ok(Some(Ok(line)))) => Ok(line),
            _ => {
                let log = std::fs::read_to_string(self.work.join(format!("{name}.log")));
                bail!(
                    "{name} printed no line; stderr: {}",
                    log.unwrap_or_default()
                )
            }
        }
    }
}

impl Processes {
    /// The process id of the child started last.
    pub(crate) fn last_pid(&self) -> Option<u32> {
        self.children.last().map(Child::id)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// The address after `marker` in a "listening on" line.
pub(crate) fn addr_after(line: &str, marker: &str) -> anyhow::Result<SocketAddr> {
    let start = line
        .find(marker)
        .ok_or_else(|| anyhow!("no {marker:?} in {line:?}"))?
        + marker.len();
    let addr = line[start..].split([' ', ')']).next().unwrap_or_default();
    addr.parse()
        .with_context(|| format!("{addr:?} in {line:?} is not an address"))
}

pub(crate) fn random_token() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// A free port on 127.0.0.1 (for a process whose address must be known before it prints).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A gateway under test.
struct Gateway {
    region: String,
    /// The region's one-way delay.
    delay: Duration,
    /// `http://host:port/x`: a path on the key route.
    url: String,
    admin: SocketAddr,
    /// Which control plane it syncs from (index into `World::control_planes`).
    replica: usize,
}

/// The control plane(s), the upstream and the regions' gateways.
struct World {
    processes: Processes,
    /// The shared database of `--replicas 2`; declared after `processes`, so it stops after
    /// the control planes.
    _postgres: Option<TestPostgres>,
    /// What the control planes store in, for the report.
    database: String,
    keygate: PathBuf,
    gateway_token: String,
    /// Replica 1 first: the operator's (revocations, `--wait`) and the partition phase's.
    control_planes: Vec<SocketAddr>,
    upstream: String,
    admin: AdminClient,
    http: HttpClient,
    relays: Vec<(String, WanRelay)>,
    gateways: Vec<Gateway>,
}

fn region_name(delay: Duration) -> String {
    format!("{}ms", delay.as_millis())
}

impl World {
    async fn start(args: &WanArgs) -> anyhow::Result<Self> {
        let mut processes = Processes::new()?;
        let keygate = args.keygate.clone();
        let (admin_token, gateway_token) = (random_token(), random_token());
        let line = processes
            .start(
                "upstream",
                &keygate,
                &["echo-upstream", "--fixed", "--listen", "127.0.0.1:0"],
            )
            .await?;
        let upstream = format!("http://{}", addr_after(&line, "listening on ")?);
        let (postgres, database, about) = if args.replicas > 1 {
            let postgres = tokio::task::spawn_blocking(TestPostgres::start)
                .await?
                .context("cannot start PostgreSQL")?;
            let version = postgres
                .psql("keygate", "SHOW server_version")
                .context("cannot query PostgreSQL")?;
            let about = format!(
                "{} replicas on PostgreSQL {} (fsync=off, synchronous_commit=off)",
                args.replicas,
                version.trim()
            );
            let url = postgres.url();
            (Some(postgres), url, about)
        } else {
            let path = processes.work.join("keygate.db");
            (
                None,
                format!("sqlite://{}", path.display()),
                "1, SQLite".into(),
            )
        };
        println!("control plane: {about}");
        let mut control_planes = Vec::new();
        for replica in 1..=args.replicas {
            let line = processes
                .start(
                    &format!("control-plane-{replica}"),
                    &keygate,
                    &[
                        "control-plane",
                        "--grpc-listen",
                        "127.0.0.1:0",
                        "--http-listen",
                        "127.0.0.1:0",
                        "--database",
                        &database,
                        "--admin-token",
                        &admin_token,
                        "--gateway-token",
                        &gateway_token,
                    ],
                )
                .await?;
            control_planes.push(addr_after(&line, "listening on ")?);
        }
        let control_plane = control_planes[0];
        let admin = keygate::admin_client::connect(
            &format!("http://{control_plane}"),
            Some(&admin_token),
            None,
        )
        .await
        .map_err(|e| anyhow!("cannot reach the control plane: {e}"))?;
        let mut world = Self {
            processes,
            _postgres: postgres,
            database: about,
            keygate,
            gateway_token,
            control_planes,
            upstream,
            admin,
            http: probe::client(),
            relays: Vec::new(),
            gateways: Vec::new(),
        };
        if args.phases.contains(&Phase::Propagation) {
            for i in 0..args.loopback_gateways {
                let replica = i % world.control_planes.len();
                let url = format!("http://{}", world.control_planes[replica]);
                world
                    .add_gateway(
                        ("loopback", Duration::ZERO),
                        &format!("loopback-{i}"),
                        (&url, replica),
                        &[],
                    )
                    .await?;
            }
            for delay in &args.regions {
                let name = region_name(*delay);
                let link = Link {
                    delay: *delay,
                    jitter: args.jitter,
                    bandwidth: args.bandwidth,
                    blackhole: false,
                };
                let mut urls = Vec::new();
                for replica in world.control_planes.clone() {
                    let relay = WanRelay::start(replica, link).await?;
                    urls.push(relay.url());
                    world.relays.push((name.clone(), relay));
                }
                for i in 0..args.gateways {
                    let replica = i % urls.len();
                    world
                        .add_gateway(
                            (&name, *delay),
                            &format!("{name}-{i}"),
                            (&urls[replica], replica),
                            &[],
                        )
                        .await?;
                }
            }
            for gateway in &world.gateways {
                wait_ready(&world.http, gateway.admin).await?;
            }
            println!(
                "{} gateways ready: {} on loopback, {} in each of the regions {}",
                world.gateways.len(),
                args.loopback_gateways,
                args.gateways,
                args.regions
                    .iter()
                    .map(|delay| region_name(*delay))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(world)
    }

    /// Starts gateway `id` of `region` (its name and one-way delay) syncing from `control_plane`
    /// (the URL of replica number `replica`, or of a relay in front of it).
    async fn add_gateway(
        &mut self,
        (region, delay): (&str, Duration),
        id: &str,
        (control_plane, replica): (&str, usize),
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let mut flags = vec![
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &self.upstream,
            "--control-plane",
            control_plane,
            "--gateway-token",
            &self.gateway_token,
            "--gateway-id",
            id,
            "--region",
            region,
        ];
        flags.extend(extra);
        let line = self.processes.start(id, &self.keygate, &flags).await?;
        self.gateways.push(Gateway {
            region: region.to_owned(),
            delay,
            url: format!("http://{}/x", addr_after(&line, "listening on ")?),
            admin: addr_after(&line, "(admin ")?,
            replica,
        });
        Ok(())
    }

    async fn propagation(&mut self, args: &WanArgs) -> anyhow::Result<Value> {
        let urls: Vec<String> = self.gateways.iter().map(|g| g.url.clone()).collect();
        let load_key = create_key(&mut self.admin, "wan-load").await?;
        for url in &urls {
            probe::until_served(&self.http, url, &load_key.key)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let load_started = Instant::now();
        let mut background = propagation::start_load(
            &urls,
            &load_key.key,
            args.load_rps,
            Arc::clone(&sent),
            Arc::clone(&failures),
            Arc::clone(&stop),
        );
        let relays: Vec<&WanRelay> = self.relays.iter().map(|(_, relay)| relay).collect();
        let bursts = loss_bursts(&relays, args, Arc::clone(&stop));

        let regions: Vec<String> = {
            let mut names: Vec<String> = self.gateways.iter().map(|g| g.region.clone()).collect();
            names.dedup();
            names
        };
        let mut per_region: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        // The same per kind of revocation: a deleted key costs what a disabled one does only if
        // the gateway knows it is gone without asking the control plane.
        let mut by_kind: BTreeMap<(String, &str), Vec<Duration>> = BTreeMap::new();
        // And per replica the region's gateways sync from (with two control planes: the ones
        // syncing from replica 2 hear of each change through PostgreSQL's NOTIFY first).
        let mut by_replica: BTreeMap<(String, usize), Vec<Duration>> = BTreeMap::new();
        let mut everywhere = Vec::with_capacity(args.revocations);
        let mut waited = Vec::with_capacity(args.revocations);
        for i in 0..args.revocations {
            let issued = create_key(&mut self.admin, "wan").await?;
            for url in &urls {
                probe::until_served(&self.http, url, &issued.key)
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
            let (revision, refusal) = if i % 2 == 0 {
                let revision = self
                    .admin
                    .set_key_enabled(pb::SetKeyEnabledRequest {
                        key_id: issued.key_id.clone(),
                        enabled: false,
                    })
                    .await?
                    .into_inner()
                    .revision;
                (revision, (403, "DISABLED"))
            } else {
                let revision = self
                    .admin
                    .delete_key(pb::DeleteKeyRequest {
                        key_id: issued.key_id.clone(),
                    })
                    .await?
                    .into_inner()
                    .revision;
                (revision, (401, "NOT_FOUND"))
            };
            let since = Instant::now();
            let mut waiter = self.admin.clone();
            let wait = tokio::spawn(async move {
                let outcome = waiter
                    .wait_for_revision(pb::WaitForRevisionRequest {
                        revision,
                        timeout_ms: 10_000,
                    })
                    .await;
                (since.elapsed(), outcome.map(|r| r.into_inner().complete))
            });
            let mut probes = JoinSet::new();
            for gateway in &self.gateways {
                let (http, url, key) = (self.http.clone(), gateway.url.clone(), issued.key.clone());
                let (region, replica) = (gateway.region.clone(), gateway.replica);
                let start = since + gateway.delay.saturating_sub(PROBE_LEAD);
                probes.spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    until_refused(&http, &url, &key, since)
                        .await
                        .map(|(elapsed, answer)| (region, replica, elapsed, answer))
                });
            }
            let mut slowest: BTreeMap<String, Duration> = BTreeMap::new();
            let mut slowest_by_replica: BTreeMap<(String, usize), Duration> = BTreeMap::new();
            while let Some(probed) = probes.join_next().await {
                let (region, replica, elapsed, answer) = probed??;
                if !answer.is(refusal.0, refusal.1) {
                    bail!("a gateway in {region} answered {answer}, not {refusal:?}");
                }
                let entry = slowest_by_replica
                    .entry((region.clone(), replica))
                    .or_default();
                *entry = (*entry).max(elapsed);
                let entry = slowest.entry(region).or_default();
                *entry = (*entry).max(elapsed);
            }
            for (key, elapsed) in slowest_by_replica {
                by_replica.entry(key).or_default().push(elapsed);
            }
            everywhere.push(slowest.values().copied().max().unwrap_or_default());
            for (region, elapsed) in slowest {
                by_kind
                    .entry((region.clone(), refusal.1))
                    .or_default()
                    .push(elapsed);
                per_region.entry(region).or_default().push(elapsed);
            }
            let (elapsed, complete) = wait.await?;
            match complete {
                Ok(true) => waited.push(elapsed),
                Ok(false) => bail!("WaitForRevision({revision}) timed out"),
                Err(status) => bail!("WaitForRevision({revision}): {status}"),
            }
            if (i + 1) % 100 == 0 {
                eprintln!("{} revocations", i + 1);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let load_rps = sent.load(Ordering::Relaxed) as f64 / load_started.elapsed().as_secs_f64();
        while background.join_next().await.is_some() {}
        let bursts = bursts.await.unwrap_or(0);

        let delays: BTreeMap<String, Duration> =
            std::iter::once(("loopback".to_owned(), Duration::ZERO))
                .chain(args.regions.iter().map(|d| (region_name(*d), *d)))
                .collect();
        println!(
            "== revoke → refused at every gateway of a region ({} revocations, alternately disable and delete; background load {load_rps:.0} req/s, {} not 200; jitter ±{:?}; {bursts} loss bursts of {:?})",
            args.revocations,
            failures.load(Ordering::Relaxed),
            args.jitter,
            args.loss_burst
        );
        let mut report_regions = Vec::new();
        for region in &regions {
            let mut samples = per_region.remove(region).unwrap_or_default();
            let percentiles = Percentiles::of(&mut samples);
            let delay = delays.get(region).copied().unwrap_or_default();
            let target = delay.as_secs_f64() * 1000.0 + 5.0;
            let met = if region == "loopback" {
                "baseline"
            } else if percentiles.p99 <= target {
                "met"
            } else {
                "missed"
            };
            println!(
                "  {region:>8}: {}   target p99 ≤ {target:.0} ms: {met}",
                percentiles.line()
            );
            let mut kinds = serde_json::Map::new();
            for kind in ["DISABLED", "NOT_FOUND"] {
                let mut samples = by_kind.remove(&(region.clone(), kind)).unwrap_or_default();
                let percentiles = Percentiles::of(&mut samples);
                println!("  {:>8}  {kind:<9}: {}", "", percentiles.line());
                kinds.insert(kind.into(), percentiles.json());
            }
            let mut replicas = serde_json::Map::new();
            if self.control_planes.len() > 1 {
                for replica in 0..self.control_planes.len() {
                    let mut samples = by_replica
                        .remove(&(region.clone(), replica))
                        .unwrap_or_default();
                    if samples.is_empty() {
                        continue;
                    }
                    let percentiles = Percentiles::of(&mut samples);
                    let name = format!("replica {}", replica + 1);
                    println!("  {:>8}  {name:<9}: {}", "", percentiles.line());
                    replicas.insert(name, percentiles.json());
                }
            }
            report_regions.push(json!({
                "byReplica": replicas,
                "byRefusal": kinds,
                "region": region,
                "oneWayDelayMs": delay.as_secs_f64() * 1000.0,
                "gateways": self.gateways.iter().filter(|g| &g.region == region).count(),
                "refusedAtEveryGateway": percentiles.json(),
                "targetP99Ms": target,
            }));
        }
        let everywhere = Percentiles::of(&mut everywhere);
        let waited = Percentiles::of(&mut waited);
        let slowest = args.regions.iter().max().copied().unwrap_or_default();
        let wait_target = (slowest * 2).as_secs_f64() * 1000.0 + 10.0;
        println!("  all gateways: {}", everywhere.line());
        println!(
            "  --wait (WaitForRevision): {}   target ≤ {wait_target:.0} ms: {}",
            waited.line(),
            if waited.p99 <= wait_target {
                "met (p99)"
            } else {
                "missed (p99)"
            }
        );
        Ok(json!({
            "revocations": args.revocations,
            "jitterMs": args.jitter.as_secs_f64() * 1000.0,
            "bandwidthBytesPerSecond": args.bandwidth,
            "lossBursts": bursts,
            "lossBurstMs": args.loss_burst.as_secs_f64() * 1000.0,
            "backgroundLoadRps": load_rps,
            "backgroundLoadFailures": failures.load(Ordering::Relaxed),
            "probeLeadMs": PROBE_LEAD.as_secs_f64() * 1000.0,
            "regions": report_regions,
            "refusedAtAllGateways": everywhere.json(),
            "waitForRevision": waited.json(),
            "waitTargetMs": wait_target,
        }))
    }

    async fn partition(&mut self, args: &WanArgs) -> anyhow::Result<Value> {
        let delay = args.regions.iter().max().copied().unwrap_or_default();
        let mut partitioned = Vec::new();
        for bound in &args.bounds {
            let relay = WanRelay::start(
                self.control_planes[0],
                Link {
                    delay,
                    jitter: args.jitter,
                    ..Link::default()
                },
            )
            .await?;
            let id = format!("partition-{}s", bound.as_secs());
            let bound_flag = humantime::format_duration(*bound).to_string();
            let url = relay.url();
            self.add_gateway(
                (&region_name(delay), delay),
                &id,
                (&url, 0),
                &["--propagation-bound", &bound_flag],
            )
            .await?;
            let admin = self
                .gateways
                .last()
                .map(|g| g.admin)
                .unwrap_or(self.control_planes[0]);
            wait_ready(&self.http, admin).await?;
            partitioned.push((*bound, relay, admin));
        }
        // A change they hear before the partition, so the proofs are current.
        let before = create_key(&mut self.admin, "wan-partition").await?;
        for (_, _, admin) in &partitioned {
            wait_applied(&self.http, *admin, before.revision).await?;
        }
        let mut ages = Vec::new();
        for (_, _, admin) in &partitioned {
            let (_, body) = readiness(&self.http, *admin).await?;
            ages.push(body["stalenessMs"].as_u64().unwrap_or_default());
        }
        let started = Instant::now();
        for (_, relay, _) in &partitioned {
            relay.blackhole();
        }
        println!(
            "== partition: {} gateway(s) {}ms away, blackholed at once (ping interval 1 s)",
            partitioned.len(),
            delay.as_millis()
        );
        // Changes they cannot hear about until the heal: the catch-up is events only.
        let mut head = before.revision;
        for _ in 0..10 {
            head = create_key(&mut self.admin, "wan-partition").await?.revision;
        }
        let mut stale_at = vec![None; partitioned.len()];
        while stale_at.iter().any(Option::is_none) {
            for (i, (_, _, admin)) in partitioned.iter().enumerate() {
                if stale_at[i].is_none() && readiness(&self.http, *admin).await?.0 == 503 {
                    stale_at[i] = Some(started.elapsed());
                }
            }
            if started.elapsed() > GIVE_UP * 2 {
                bail!("a partitioned gateway never went stale");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let healed = Instant::now();
        for (_, relay, _) in &partitioned {
            relay.heal();
        }
        let mut results = Vec::new();
        for (i, (bound, _, admin)) in partitioned.iter().enumerate() {
            let current = loop {
                let (status, body) = readiness(&self.http, *admin).await?;
                if status == 200 && body["appliedRevision"].as_u64().unwrap_or_default() >= head {
                    break healed.elapsed();
                }
                if healed.elapsed() > GIVE_UP {
                    bail!("a healed gateway never caught up");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let (_, body) = readiness(&self.http, *admin).await?;
            let snapshots = body["snapshotsApplied"].as_u64().unwrap_or_default();
            let stale = stale_at[i].unwrap_or_default();
            println!(
                "  bound {:>3} s: STALE {:.3} s after the partition began (bound {:+.3} s; its last proof was {} ms old then); after the heal, current in {:.0} ms with {} snapshot(s) in all ({})",
                bound.as_secs(),
                stale.as_secs_f64(),
                stale.as_secs_f64() - bound.as_secs_f64(),
                ages[i],
                current.as_secs_f64() * 1000.0,
                snapshots,
                if snapshots == 1 {
                    "events only"
                } else {
                    "took a snapshot"
                }
            );
            results.push(json!({
                "boundMs": bound.as_secs_f64() * 1000.0,
                "oneWayDelayMs": delay.as_secs_f64() * 1000.0,
                "proofAgeAtPartitionMs": ages[i],
                "staleAfterMs": stale.as_secs_f64() * 1000.0,
                "changesDuringPartition": 10,
                "currentAfterHealMs": current.as_secs_f64() * 1000.0,
                "snapshotsApplied": snapshots,
            }));
        }
        Ok(Value::Array(results))
    }
}

/// The snapshot phase: a synthetic control plane with N keys; fresh gateways ready from it on
/// loopback and behind a relay, alternately.
async fn snapshot(args: &WanArgs) -> anyhow::Result<Value> {
    let mut processes = Processes::new()?;
    let token = random_token();
    let listen = free_port()?.to_string();
    let keys = args.snapshot_keys.to_string();
    let bench = std::env::current_exe()?;
    let line = processes
        .start(
            "synthetic-cp",
            &bench,
            &[
                "synthetic-cp",
                "--keys",
                &keys,
                "--listen",
                &listen,
                "--gateway-token",
                &token,
            ],
        )
        .await?;
    println!("== snapshot: {line}");
    let control_plane = addr_after(&line, "listening on ")?;
    let relay = WanRelay::start(control_plane, Link::delayed(args.snapshot_delay)).await?;
    let upstream = format!("http://{}", free_port()?);
    let http = probe::client();
    let mut paths: Vec<(String, String, Vec<Duration>)> = vec![
        (
            "loopback".into(),
            format!("http://{control_plane}"),
            Vec::new(),
        ),
        (region_name(args.snapshot_delay), relay.url(), Vec::new()),
    ];
    for attempt in 0..args.snapshot_tries {
        for (name, url, times) in &mut paths {
            let admin = free_port()?;
            let admin_flag = admin.to_string();
            let id = format!("snapshot-{name}-{attempt}");
            let started = Instant::now();
            let mut child = Command::new(&args.keygate)
                .args([
                    "proxy",
                    "--listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    &admin_flag,
                    "--upstream",
                    &upstream,
                    "--control-plane",
                    url,
                    "--gateway-token",
                    &token,
                    "--gateway-id",
                    &id,
                ])
                .env("KEYGATE_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start a gateway")?;
            let ready = loop {
                if readiness(&http, admin)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
                {
                    break Ok(started.elapsed());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(anyhow!("the gateway exited early: {status}"));
                }
                if started.elapsed() > GIVE_UP {
                    break Err(anyhow!("not ready within {GIVE_UP:?}"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let _ = child.kill();
            let _ = child.wait();
            let ready = ready?;
            println!(
                "  {name:>8}, try {}: ready in {:.0} ms",
                attempt + 1,
                ready.as_secs_f64() * 1000.0
            );
            times.push(ready);
        }
    }
    let mut report = Vec::new();
    for (name, _, mut times) in paths {
        let ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1000.0).collect();
        let median = Percentiles::of(&mut times).p50;
        println!("  {name:>8}: median {median:.0} ms over {} tries", ms.len());
        report.push(json!({"path": name, "readyMs": ms, "medianMs": median}));
    }
    drop(processes);
    Ok(json!({"keys": args.snapshot_keys, "paths": report}))
}

async fn create_key(admin: &mut AdminClient, owner: &str) -> anyhow::Result<pb::IssuedKey> {
    Ok(admin
        .create_key(pb::CreateKeyRequest {
            owner: owner.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// `/readyz` of a gateway's admin listener: status and body.
pub(crate) async fn readiness(
    http: &HttpClient,
    admin: SocketAddr,
) -> anyhow::Result<(u16, Value)> {
    let request =
        http::Request::get(format!("http://{admin}/readyz")).body(http_body_util::Empty::new())?;
    let response = http.request(request).await?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

pub(crate) async fn wait_ready(http: &HttpClient, admin: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    while !readiness(http, admin)
        .await
        .is_ok_and(|(status, _)| status == 200)
    {
        if started.elapsed() > GIVE_UP {
            bail!("the gateway with admin {admin} never became ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(crate) async fn wait_applied(
    http: &HttpClient,
    admin: SocketAddr,
    revision: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let (_, body) = readiness(http, admin).await?;
        if body["appliedRevision"].as_u64().unwrap_or_default() >= revision {
            return Ok(());
        }
        if started.elapsed() > GIVE_UP {
            bail!("the gateway with admin {admin} never applied r{revision}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `url` until it stops serving `key`; the time since `since`.
async fn until_refused(
    http: &HttpClient,
    url: &str,
    key: &str,
    since: Instant,
) -> anyhow::Result<(Duration, probe::Answer)> {
    loop {
        let answer = probe::answer(http, url, key)
            .await
            .map_err(anyhow::Error::msg)?;
        if answer.status != 200 {
            return Ok((since.elapsed(), answer));
        }
        if since.elapsed() > GIVE_UP {
            bail!("{url} still serves a revoked key after {GIVE_UP:?}");
        }
    }
}

/// Until `stop`: every `loss_every` (± half, at random) one direction of one random region's
/// link stalls for `loss_burst`. Returns how many bursts there were.
fn loss_bursts(
    relays: &[&WanRelay],
    args: &WanArgs,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let controls: Vec<_> = relays.iter().map(|relay| relay.control()).collect();
    let (burst, every) = (args.loss_burst, args.loss_every);
    tokio::spawn(async move {
        let mut bursts = 0;
        if burst.is_zero() || controls.is_empty() {
            return 0;
        }
        while !stop.load(Ordering::Relaxed) {
            let pause = every.mul_f64(rand::rng().random_range(0.5..1.5));
            tokio::time::sleep(pause).await;
            let (which, down) = {
                let mut rng = rand::rng();
                (rng.random_range(0..controls.len()), rng.random_bool(0.5))
            };
            let direction = if down { Direction::Down } else { Direction::Up };
            controls[which].stall(direction, burst);
            bursts += 1;
        }
        bursts
    })
}

/// Revoke → refused per region as an SVG: p50, p99 and max bars beside the target.
fn chart(report: &Value) -> String {
    let regions = report["regions"].as_array().cloned().unwrap_or_default();
    let max = regions
        .iter()
        .flat_map(|r| {
            [
                r["refusedAtEveryGateway"]["maxMs"].as_f64().unwrap_or(0.0),
                r["targetP99Ms"].as_f64().unwrap_or(0.0),
            ]
        })
        .fold(1.0_f64, f64::max);
    let (width, height, left, bottom, top) = (720.0, 360.0, 60.0, 40.0, 40.0);
    let plot = height - bottom - top;
    let group = (width - left - 20.0) / regions.len().max(1) as f64;
    let y = |ms: f64| top + plot - ms / max * plot;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<text x="{left}" y="20" font-size="14">Revoke → refused at every gateway of a region (ms): p50, p99, max; line: target p99</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
"#,
        top + plot,
        width - 20.0,
        top + plot
    );
    for tick in 0..=4 {
        let ms = max * f64::from(tick) / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{ms:.0}</text>\n",
            left - 6.0,
            y(ms) + 4.0
        );
    }
    for (i, region) in regions.iter().enumerate() {
        let x = left + group * i as f64 + group * 0.15;
        let bar = group * 0.2;
        let figures = &region["refusedAtEveryGateway"];
        for (j, (key, colour)) in [
            ("p50Ms", "#7aa6d6"),
            ("p99Ms", "#2f6fb0"),
            ("maxMs", "#16385c"),
        ]
        .into_iter()
        .enumerate()
        {
            let ms = figures[key].as_f64().unwrap_or(0.0);
            svg += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{key} {ms:.2}</title></rect>\n",
                x + bar * j as f64,
                y(ms),
                top + plot - y(ms)
            );
        }
        if region["region"] != "loopback" {
            let target = region["targetP99Ms"].as_f64().unwrap_or(0.0);
            svg += &format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"4 2\"/>\n",
                x - 4.0,
                y(target),
                x + bar * 3.0 + 4.0,
                y(target)
            );
        }
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x + bar * 1.5,
            top + plot + 16.0,
            region["region"].as_str().unwrap_or_default()
        );
    }
    svg + "</svg>\n"
}

pub(crate) fn today() -> String {
    Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} cores, {}; load average at start {}",
        std::env::consts::ARCH,
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    )
}
