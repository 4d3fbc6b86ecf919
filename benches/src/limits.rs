//! Limits across gateways (`keygate-bench limits`, driven by `benches/limits.sh`): what the
//! design of DESIGN.md's "Limits and permissions per key" costs and how close it comes, measured
//! with real `keygate` processes — one control plane (SQLite), N gateways, a fixed-response
//! upstream — for each N of `--gateways`.
//!
//! Phases (all by default):
//! - `overshoot`: a key with `requests=LIMIT/1s`, a steady paced overload of `--overload` × the
//!   limit spread evenly over the N gateways for `--windows` whole windows; admitted requests per
//!   window (p50, p99, max) against the limit and the README's stated bound. A request is
//!   counted in a window when its send and its answer fall in it (the gateway admitted it in
//!   between); the few that straddle a window's edge are reported apart, and "max with
//!   straddlers" adds them to both windows they touch. One gateway (N = 1) is the baseline: a
//!   single counter, exact.
//! - `credits`: a key with `--credits` credits, `--connections` closed-loop senders per gateway;
//!   each sender stops at its first USAGE_EXCEEDED. When the last has stopped the key has run
//!   dry: credits that never served a request are *stranded* (still leased to a gateway that
//!   no longer has traffic, until the lease expires and returns them). Two loads, `--trials`
//!   fresh keys each: every gateway until dry, and a hand-off (every gateway until half the
//!   credits passed, then the first gateway alone), where the others' leases strand.
//! - `cpu`: control-plane CPU (`/proc/PID/stat` utime + stime, and the threads' schedstat) per
//!   1,000 req/s of paced traffic over `--cpu-gateways` gateways with `--cpu-keys` keys: plain
//!   keys (the baseline: pings and nothing else), keys with a rate limit that never refuses
//!   (usage reports and pushes), keys with credits that never run out (leases).
//!
//! Every process is a child of this one and is killed when the run ends, fails, or is
//! interrupted; the work directory is removed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use keygate::admin_client::AdminClient;
use keygate_proto::pb;
use keygate_proto::time::now_unix_ms;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cpu::CpuSample;
use crate::probe::{self, HttpClient};
use crate::wan::{
    Processes, addr_after, interrupted, machine, random_token, today, wait_applied, wait_ready,
};

/// A part of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Overshoot,
    Credits,
    Cpu,
}

/// `keygate-bench limits`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    /// The `keygate` binary under test.
    #[arg(long, default_value = "target/release/keygate")]
    pub keygate: PathBuf,
    /// Gateway counts to measure, each with a deployment of its own (1 is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub gateways: Vec<usize>,
    /// Which phases to run.
    #[arg(long, value_delimiter = ',', default_value = "overshoot,credits,cpu")]
    pub phases: Vec<Phase>,
    /// The rate limit of the overshoot phase, per 1 s window.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// Offered load of the overshoot phase, as a multiple of the limit, over all gateways.
    #[arg(long, default_value_t = 4.0)]
    pub overload: f64,
    /// Whole windows measured in the overshoot phase (after one of warm-up).
    #[arg(long, default_value_t = 30)]
    pub windows: usize,
    /// Credits of each key of the credits phase.
    #[arg(long, default_value_t = 10_000)]
    pub credits: u64,
    /// Closed-loop senders per gateway in the credits phase.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Keys run dry per gateway count in the credits phase.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Gateways of the CPU phase.
    #[arg(long, default_value_t = 4)]
    pub cpu_gateways: usize,
    /// Keys the CPU phase's traffic is spread over (each its own holder).
    #[arg(long, default_value_t = 100)]
    pub cpu_keys: usize,
    /// Requests per second over all gateways in the CPU phase.
    #[arg(long, default_value_t = 2000.0)]
    pub cpu_rate: f64,
    /// Length of each CPU measurement.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub cpu_duration: Duration,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How long any process may take to start, any gateway to sync, any phase to finish a step.
const GIVE_UP: Duration = Duration::from_secs(120);
const WINDOW_MS: i64 = 1000;
/// The longest time between two usage reports of a gateway (DESIGN.md: ≤ 250 ms).
const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// Runs the phases until done or interrupted; prints the results as it goes.
pub async fn run(args: LimitsArgs) -> anyhow::Result<()> {
    tokio::select! {
        result = measure(&args) => result,
        () = interrupted() => bail!("interrupted; every process started was stopped"),
    }
}

async fn measure(args: &LimitsArgs) -> anyhow::Result<()> {
    if args.gateways.contains(&0) || args.cpu_gateways == 0 {
        bail!("--gateways and --cpu-gateways: at least 1 gateway");
    }
    if args.limit == 0 || args.overload <= 0.0 || args.cpu_rate <= 0.0 || args.cpu_keys == 0 {
        bail!("--limit, --overload, --cpu-rate and --cpu-keys must be positive");
    }
    let mut results = serde_json::Map::new();
    results.insert("date".into(), json!(today()));
    results.insert("machine".into(), json!(machine()));
    println!("machine: {}", machine());
    let mut overshoot = Vec::new();
    let mut credits = Vec::new();
    for &gateways in &args.gateways {
        if !args.phases.contains(&Phase::Overshoot) && !args.phases.contains(&Phase::Credits) {
            break;
        }
        let mut world = World::start(&args.keygate, gateways).await?;
        if args.phases.contains(&Phase::Overshoot) {
            overshoot.push(world.overshoot(args).await?);
        }
        if args.phases.contains(&Phase::Credits) {
            credits.push(world.stranded(args).await?);
        }
    }
    results.insert("overshoot".into(), json!(overshoot));
    results.insert("credits".into(), json!(credits));
    if args.phases.contains(&Phase::Cpu) {
        let mut world = World::start(&args.keygate, args.cpu_gateways).await?;
        results.insert("cpu".into(), world.cpu(args).await?);
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&Value::Object(results))?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A control plane, N gateways and the upstream.
struct World {
    /// Killed when the world is dropped.
    _processes: Processes,
    control_plane_pid: u32,
    /// `http://host:port/metrics` of the control plane.
    control_plane_metrics: String,
    admin: AdminClient,
    http: HttpClient,
    /// `http://host:port/x` of each gateway (the upstream route).
    urls: Vec<String>,
    admins: Vec<SocketAddr>,
}

impl World {
    async fn start(keygate: &std::path::Path, gateways: usize) -> anyhow::Result<Self> {
        let mut processes = Processes::new()?;
        let (admin_token, gateway_token) = (random_token(), random_token());
        let line = processes
            .start(
                "upstream",
                keygate,
                &["echo-upstream", "--fixed", "--listen", "127.0.0.1:0"],
            )
            .await?;
        let upstream = format!("http://{}", addr_after(&line, "listening on ")?);
        let database = format!("sqlite://{}", processes.work.join("keygate.db").display());
        let line = processes
            .start(
                "control-plane",
                keygate,
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
        let control_plane_pid = processes
            .last_pid()
            .ok_or_else(|| anyhow!("no control plane"))?;
        let grpc = format!("http://{}", addr_after(&line, "listening on ")?);
        let control_plane_metrics = format!("http://{}/metrics", addr_after(&line, "(http ")?);
        let admin = keygate::admin_client::connect(&grpc, Some(&admin_token), None)
            .await
            .map_err(|e| anyhow!("cannot reach the control plane: {e}"))?;
        let http = probe::client();
        let (mut urls, mut admins) = (Vec::new(), Vec::new());
        for index in 0..gateways {
            let id = format!("gw-{index}");
            let line = processes
                .start(
                    &id,
                    keygate,
                    &[
                        "proxy",
                        "--listen",
                        "127.0.0.1:0",
                        "--admin-listen",
                        "127.0.0.1:0",
                        "--upstream",
                        &upstream,
                        "--control-plane",
                        &grpc,
                        "--gateway-token",
                        &gateway_token,
                        "--gateway-id",
                        &id,
                    ],
                )
                .await?;
            urls.push(format!("http://{}/x", addr_after(&line, "listening on ")?));
            admins.push(addr_after(&line, "(admin ")?);
        }
        for admin in &admins {
            wait_ready(&http, *admin).await?;
        }
        println!("{gateways} gateway(s) ready");
        Ok(Self {
            _processes: processes,
            control_plane_pid,
            control_plane_metrics,
            admin,
            http,
            urls,
            admins,
        })
    }

    /// Creates a key; returns its id and plaintext once every gateway has it.
    async fn create_key(
        &mut self,
        request: pb::CreateKeyRequest,
    ) -> anyhow::Result<(String, String)> {
        let issued = self.admin.create_key(request).await?.into_inner();
        for admin in &self.admins {
            wait_applied(&self.http, *admin, issued.revision).await?;
        }
        Ok((issued.key_id, issued.key))
    }

    async fn overshoot(&mut self, args: &LimitsArgs) -> anyhow::Result<Value> {
        let gateways = self.urls.len();
        let (_, key) = self
            .create_key(pb::CreateKeyRequest {
                owner: "bench-overshoot".into(),
                ratelimits: vec![pb::RateLimit {
                    name: "requests".into(),
                    limit: args.limit,
                    window_ms: WINDOW_MS as u64,
                }],
                ..Default::default()
            })
            .await?;
        let total_rate = args.limit as f64 * args.overload;
        let per_gateway = total_rate / gateways as f64;
        let started = now_unix_ms();
        let first = started - started.rem_euclid(WINDOW_MS) + 2 * WINDOW_MS;
        let end = first + args.windows as i64 * WINDOW_MS;
        let load = Load::paced(&self.urls, &[key], per_gateway, 4);
        // The run lasts until the last measured window has closed.
        tokio::time::sleep(Duration::from_millis(
            (end - now_unix_ms()).max(0) as u64 + 100,
        ))
        .await;
        let outcomes = load.stop().await;
        let mut admitted = vec![0u64; args.windows];
        let mut straddling = vec![0u64; args.windows];
        let (mut refused, mut odd, mut late) = (0u64, 0u64, Duration::ZERO);
        for outcome in outcomes
            .iter()
            .filter(|o| o.sent_ms >= first && o.sent_ms < end)
        {
            late = late.max(Duration::from_millis(
                (outcome.answered_ms - outcome.sent_ms).max(0) as u64,
            ));
            match outcome.status {
                200 => {}
                429 if outcome.code.as_deref() == Some("RATE_LIMITED") => {
                    refused += 1;
                    continue;
                }
                _ => {
                    odd += 1;
                    continue;
                }
            }
            let index = |ms: i64| ((ms - first).div_euclid(WINDOW_MS)) as usize;
            let (sent, answered) = (index(outcome.sent_ms), index(outcome.answered_ms));
            if sent == answered {
                admitted[sent] += 1;
            } else {
                straddling[sent] += 1;
                if answered < args.windows {
                    straddling[answered] += 1;
                }
            }
        }
        let with_straddlers = admitted
            .iter()
            .zip(&straddling)
            .map(|(a, s)| a + s)
            .max()
            .unwrap_or(0);
        let mut sorted = admitted.clone();
        sorted.sort_unstable();
        let at =
            |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        let bound = overshoot_bound(args.limit, gateways as u64, per_gateway);
        let report = json!({
            "gateways": gateways,
            "limit": args.limit,
            "offeredPerSecond": total_rate,
            "windows": args.windows,
            "admittedPerWindow": {"p50": at(0.5), "p99": at(0.99), "max": at(1.0),
                "maxWithStraddlers": with_straddlers, "min": sorted[0]},
            "overshootMax": at(1.0).saturating_sub(args.limit),
            "statedBound": bound,
            "perNodeLimitingWouldAllow": args.limit * gateways as u64,
            "straddling": straddling.iter().sum::<u64>() / 2,
            "refused": refused,
            "otherAnswers": odd,
            "slowestAnswerMs": late.as_millis() as u64,
            "perWindow": admitted,
        });
        println!(
            "overshoot, {gateways} gateway(s), limit {}/s, offered {total_rate:.0}/s: admitted per \
             window p50 {} p99 {} max {} (max {with_straddlers} with the {} straddling an edge), \
             min {}; stated bound {bound}; {refused} refused, {odd} other answers",
            args.limit,
            at(0.5),
            at(0.99),
            at(1.0),
            report["straddling"],
            sorted[0],
        );
        Ok(report)
    }

    async fn stranded(&mut self, args: &LimitsArgs) -> anyhow::Result<Value> {
        let gateways = self.urls.len();
        let mut modes = Vec::new();
        for hand_off in [None, Some(args.credits / 2)] {
            if hand_off.is_some() && gateways == 1 {
                continue;
            }
            modes.push(self.stranded_mode(args, hand_off).await?);
        }
        Ok(json!({
            "gateways": gateways,
            "credits": args.credits,
            "sendersPerGateway": args.connections,
            "modes": modes,
        }))
    }

    /// Keys run dry with load at every gateway (`hand_off` None) or, from `hand_off` passed
    /// requests on, at the first gateway only.
    async fn stranded_mode(
        &mut self,
        args: &LimitsArgs,
        hand_off: Option<u64>,
    ) -> anyhow::Result<Value> {
        let gateways = self.urls.len();
        let mode = match hand_off {
            None => "every gateway until dry".to_owned(),
            Some(n) => format!("every gateway until {n} passed, then gw-0 alone until dry"),
        };
        let mut trials = Vec::new();
        for trial in 0..args.trials {
            let (key_id, key) = self
                .create_key(pb::CreateKeyRequest {
                    owner: format!("bench-credits-{trial}"),
                    credits: Some(args.credits),
                    ..Default::default()
                })
                .await?;
            let started = Instant::now();
            let load = Load::closed_until_refused(&self.urls, &key, args.connections, hand_off);
            let outcomes = load.finish().await;
            let dry_after = started.elapsed();
            let passed = outcomes.iter().filter(|o| o.status == 200).count() as u64;
            let odd = answers_not_200(
                &outcomes
                    .iter()
                    .filter(|o| o.code.as_deref() != Some("USAGE_EXCEEDED"))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            let record = self
                .admin
                .get_key(pb::GetKeyRequest { key_id })
                .await?
                .into_inner();
            let (remaining, leased) = record
                .credits
                .map_or((None, None), |c| (Some(c.remaining), Some(c.leased)));
            if passed > args.credits {
                bail!("{passed} requests passed on {} credits", args.credits);
            }
            trials.push(json!({
                "passed": passed,
                "stranded": args.credits - passed,
                "dryAfterMs": dry_after.as_millis() as u64,
                "requests": outcomes.len(),
                "otherAnswers": odd,
                "remainingAtControlPlane": remaining,
                "leasedAtDry": leased,
            }));
        }
        let mut stranded: Vec<u64> = trials
            .iter()
            .map(|t| t["stranded"].as_u64().unwrap_or_default())
            .collect();
        stranded.sort_unstable();
        let median = stranded[stranded.len() / 2];
        let max = stranded.last().copied().unwrap_or_default();
        println!(
            "credits, {gateways} gateway(s), {} credits, {} senders each, {mode}: stranded \
             when dry median {median}, max {max} over {} keys ({})",
            args.credits,
            args.connections,
            trials.len(),
            trials
                .iter()
                .map(|t| format!(
                    "{} in {} ms, remaining {}, leased {}, other answers {}",
                    t["stranded"],
                    t["dryAfterMs"],
                    t["remainingAtControlPlane"],
                    t["leasedAtDry"],
                    t["otherAnswers"]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        Ok(json!({
            "load": mode,
            "strandedMedian": median,
            "strandedMax": max,
            "trials": trials,
        }))
    }

    async fn cpu(&mut self, args: &LimitsArgs) -> anyhow::Result<Value> {
        let gateways = self.urls.len();
        let mut runs = Vec::new();
        for kind in ["plain", "ratelimit", "credits"] {
            let mut keys = Vec::with_capacity(args.cpu_keys);
            for index in 0..args.cpu_keys {
                let mut request = pb::CreateKeyRequest {
                    owner: format!("bench-cpu-{kind}-{index}"),
                    ..Default::default()
                };
                match kind {
                    "ratelimit" => {
                        request.ratelimits = vec![pb::RateLimit {
                            name: "requests".into(),
                            limit: 1_000_000_000,
                            window_ms: WINDOW_MS as u64,
                        }];
                    }
                    "credits" => request.credits = Some(1_000_000_000),
                    _ => {}
                }
                keys.push(self.create_key(request).await?.1);
            }
            let per_gateway = args.cpu_rate / gateways as f64;
            let load = Load::paced(&self.urls, &keys, per_gateway, 8);
            // One second of warm-up: leases, first reports, connections.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = CpuSample::read(self.control_plane_pid)?;
            let counters_before = self.control_plane_counters().await?;
            let answered_before = load.answered();
            let started = Instant::now();
            tokio::time::sleep(args.cpu_duration).await;
            let after = CpuSample::read(self.control_plane_pid)?;
            let counters_after = self.control_plane_counters().await?;
            let answered = load.answered() - answered_before;
            let elapsed = started.elapsed().as_secs_f64();
            let outcomes = load.stop().await;
            let odd = answers_not_200(&outcomes);
            let per_second =
                |index: usize| (counters_after[index] - counters_before[index]) / elapsed;
            let (leases, updates) = (per_second(0), per_second(1));
            let (precise, ticks) = after.seconds_since(&before);
            let rate = answered as f64 / elapsed;
            let per_thousand = precise / elapsed / (rate / 1000.0);
            println!(
                "control-plane CPU, {kind} keys ({}), {gateways} gateways, {rate:.0} req/s: \
                 {:.2} % of a core ({:.2} % by ticks), {:.3} % of a core per 1,000 req/s; \
                 {leases:.0} lease grants/s, {updates:.0} usage updates pushed/s; answers not \
                 200: {odd:?}",
                args.cpu_keys,
                precise / elapsed * 100.0,
                ticks / elapsed * 100.0,
                per_thousand * 100.0,
            );
            runs.push(json!({
                "keys": kind,
                "keyCount": args.cpu_keys,
                "requestsPerSecond": rate,
                "seconds": elapsed,
                "cpuSeconds": precise,
                "cpuSecondsByTicks": ticks,
                "coreSharePer1000Rps": per_thousand,
                "leaseGrantsPerSecond": leases,
                "usageUpdatesPushedPerSecond": updates,
                "answersNot200": odd,
            }));
        }
        Ok(json!({"gateways": gateways, "runs": runs}))
    }
}

impl World {
    /// (lease grants, usage updates pushed) so far, from the control plane's `/metrics`.
    async fn control_plane_counters(&self) -> anyhow::Result<[f64; 2]> {
        let request =
            http::Request::get(&self.control_plane_metrics).body(http_body_util::Empty::new())?;
        let response = self.http.request(request).await?;
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        let page = String::from_utf8_lossy(&body);
        let sum = |name: &str| {
            page.lines()
                .filter(|line| line.starts_with(name))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        Ok([
            sum("keygate_credit_leases_granted_total"),
            sum("keygate_usage_updates_pushed_total"),
        ])
    }
}

/// Answers other than 200, counted by status and code: `{"503 STALE": 3}`.
fn answers_not_200(outcomes: &[Outcome]) -> std::collections::BTreeMap<String, u64> {
    let mut counted = std::collections::BTreeMap::new();
    for outcome in outcomes.iter().filter(|o| o.status != 200) {
        let what = match (&outcome.code, outcome.status) {
            (_, 0) => "no answer".to_owned(),
            (Some(code), status) => format!("{status} {code}"),
            (None, status) => status.to_string(),
        };
        *counted.entry(what).or_default() += 1;
    }
    counted
}

/// The overshoot bound the README states ("How limits hold across gateways"): per window,
/// admitted ≤ limit + (N − 1) × (one share + what one gateway admits during one report round
/// trip), with a share at most ⌈limit ÷ N⌉ and what a gateway admits in a round trip at most
/// what arrives at it during the longest report interval.
pub fn overshoot_bound(limit: u64, gateways: u64, rate_per_gateway: f64) -> u64 {
    let share = limit.div_ceil(gateways);
    let in_round_trip = (rate_per_gateway * REPORT_INTERVAL.as_secs_f64()).ceil() as u64;
    limit + (gateways - 1) * (share + in_round_trip)
}

/// One answer of the load.
#[derive(Debug, Clone)]
struct Outcome {
    sent_ms: i64,
    answered_ms: i64,
    status: u16,
    code: Option<String>,
}

/// Load over every gateway, recording every answer until stopped.
struct Load {
    stop: watch::Sender<bool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: JoinSet<()>,
}

impl Load {
    /// `rate` requests per second at each gateway from `senders` paced senders, cycling
    /// through `keys`.
    fn paced(urls: &[String], keys: &[String], rate: f64, senders: usize) -> Self {
        let period = Duration::from_secs_f64(senders as f64 / rate);
        Self::spawn(urls, keys, senders, Some(period), None)
    }

    /// `senders` closed-loop senders per gateway, each stopping at its first USAGE_EXCEEDED;
    /// with `hand_off`, the senders of every gateway but the first also stop once that many
    /// requests have passed in all.
    fn closed_until_refused(
        urls: &[String],
        key: &str,
        senders: usize,
        hand_off: Option<u64>,
    ) -> Self {
        Self::spawn(
            urls,
            &[key.to_owned()],
            senders,
            None,
            Some(hand_off.unwrap_or(u64::MAX)),
        )
    }

    fn spawn(
        urls: &[String],
        keys: &[String],
        senders: usize,
        period: Option<Duration>,
        // Stop at the first USAGE_EXCEEDED, and on gateways but the first once this many
        // requests passed.
        until_refused: Option<u64>,
    ) -> Self {
        let passed = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let keys: Arc<[String]> = keys.into();
        let client = probe::client();
        let mut tasks = JoinSet::new();
        for (gateway, url) in urls.iter().enumerate() {
            for sender in 0..senders {
                let (url, keys, outcomes) = (url.clone(), Arc::clone(&keys), Arc::clone(&outcomes));
                let passed = Arc::clone(&passed);
                let (client, mut stopped) = (client.clone(), stopped.clone());
                tasks.spawn(async move {
                    let mut tick = period.map(|period| {
                        let offset = period.mul_f64(sender as f64 / senders as f64);
                        let mut tick =
                            tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tick
                    });
                    let started = Instant::now();
                    let mut next = sender;
                    while !*stopped.borrow() && started.elapsed() < GIVE_UP {
                        if let Some(tick) = &mut tick {
                            tokio::select! {
                                _ = tick.tick() => {}
                                _ = stopped.wait_for(|s| *s) => return,
                            }
                        }
                        let key = &keys[next % keys.len()];
                        next += 1;
                        let sent_ms = now_unix_ms();
                        let (status, code) = match probe::answer(&client, &url, key).await {
                            Ok(answer) => (answer.status, answer.code),
                            Err(_) => (0, None),
                        };
                        let refused = code.as_deref() == Some("USAGE_EXCEEDED");
                        let outcome = Outcome {
                            sent_ms,
                            answered_ms: now_unix_ms(),
                            status,
                            code,
                        };
                        outcomes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(outcome);
                        let passed = if status == 200 {
                            passed.fetch_add(1, Ordering::Relaxed) + 1
                        } else {
                            passed.load(Ordering::Relaxed)
                        };
                        if let Some(hand_off) = until_refused
                            && (refused || (gateway > 0 && passed >= hand_off))
                        {
                            return;
                        }
                    }
                });
            }
        }
        Self {
            stop,
            outcomes,
            tasks,
        }
    }

    /// Answers so far.
    fn answered(&self) -> usize {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Waits until every sender has returned on its own; every answer.
    async fn finish(mut self) -> Vec<Outcome> {
        while self.tasks.join_next().await.is_some() {}
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stops the senders; every answer.
    async fn stop(self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        self.finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_of_one_gateway_is_the_limit() {
        assert_eq!(overshoot_bound(100, 1, 400.0), 100);
        // 4 gateways, 100/s each: 100 + 3 · (25 + 25).
        assert_eq!(overshoot_bound(100, 4, 100.0), 250);
    }
}
