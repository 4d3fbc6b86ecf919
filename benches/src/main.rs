//! `keygate-bench`: measurements through real, separately started gateways (and nginx and
//! HAProxy beside them). Each subcommand is a thin wrapper over the `keygate_benches` library.
//! `benches/side-by-side.sh`, `benches/tls-side-by-side.sh`, `benches/scale.sh`,
//! `benches/quick.sh` and `benches/callgrind-routes.sh` drive it; `BENCHMARKS.md` records what they measured.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keygate_benches::keyset::{self, KeySetSpec, Malformation};
use keygate_benches::load::{self, LoadSpec, Pace};
use keygate_benches::mix::{Distribution, KeyMix, KeyMixSpec};
use keygate_benches::synthetic_cp::SyntheticControlPlane;
use keygate_benches::tls::{TlsOptions, Verification};
use keygate_benches::{
    chart, cp_load, disable_latency, keyfile, memory_latency, ready_time, replica_memory, summary,
};

#[derive(Parser)]
#[command(name = "keygate-bench")]
struct Cli {
    /// Async runtime threads [default: the CPUs this process may run on].
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Disable → every gateway answers 403 DISABLED; median, p90, p99, max over `--tries`.
    DisableLatency {
        /// Gateway base URLs, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        gateways: Vec<String>,
        #[arg(
            long,
            env = "KEYGATE_ENDPOINT",
            default_value = "http://127.0.0.1:7070"
        )]
        endpoint: String,
        #[arg(long, env = "KEYGATE_TOKEN")]
        token: String,
        #[arg(long, default_value_t = 100)]
        tries: usize,
    },
    /// Closed-loop load against one URL with one key (or none); must answer 200.
    Rps {
        #[arg(long)]
        url: String,
        /// Sent as `Authorization: Bearer` (a no-auth route ignores it).
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Concurrent requests in flight.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Stop after this many requests instead of after `--duration` (for instruction
        /// counting under callgrind, where time means little).
        #[arg(long)]
        requests: Option<u64>,
        /// The request method (e.g. POST for `/_keygate/v1/verify`); the body is empty.
        #[arg(long, default_value = "GET")]
        method: http::Method,
    },
    /// The load generator: open loop at `--rate` or closed loop, with a key mix.
    Load(Box<LoadArgs>),
    /// Serve keygate.v1.Sync with a snapshot of N generated keys (see `synthetic_cp`).
    SyntheticCp {
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Gateways must send `authorization: Bearer <token>`; unset accepts any.
        #[arg(long, env = "KEYGATE_GATEWAY_TOKEN")]
        gateway_token: Option<String>,
        /// Directory for valid.txt, disabled.txt, expired.txt, unknown.txt, malformed.txt.
        #[arg(long)]
        write_keys: Option<PathBuf>,
        /// Well-formed keys outside the set written to unknown.txt.
        #[arg(long, default_value_t = 10_000)]
        unknown: usize,
        #[arg(long, default_value_t = 0.02)]
        disabled_share: f64,
        #[arg(long, default_value_t = 0.01)]
        expired_share: f64,
    },
    /// Start a gateway command and time until its `/readyz` answers 200.
    ReadyTime {
        /// The gateway's admin address.
        #[arg(long)]
        admin: SocketAddr,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// The command that starts the gateway.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Replica memory per key: RSS growth while building and installing N keys (no meta).
    ReplicaMemory {
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Memory latency: ns per dependent read of a random 64-byte line in `--mib` MiB, on huge
    /// pages (as the key table asks for) or, with `--small-pages`, without asking.
    MemoryLatency {
        #[arg(long, default_value_t = 128)]
        mib: usize,
        #[arg(long)]
        small_pages: bool,
        #[arg(long, default_value_t = 5_000_000)]
        accesses: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Control-plane throughput: key creations/s and deletes/s over concurrent admin clients.
    CpLoad {
        #[arg(
            long,
            env = "KEYGATE_ENDPOINT",
            default_value = "http://127.0.0.1:7070"
        )]
        endpoint: String,
        #[arg(long, env = "KEYGATE_TOKEN")]
        token: String,
        #[arg(long, default_value_t = 2000)]
        keys: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Medians, ratios and target checks over a directory of side-by-side run reports.
    Summarize {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Description of the machine, for the report.
        #[arg(long, default_value = "")]
        machine: String,
    },
    /// Draw a summary (from `summarize`) as SVG.
    Chart { summary: PathBuf, out: PathBuf },
    /// The region simulator: gateways behind WAN relays (delay, jitter, loss, partitions);
    /// revoke → refused per region, `--wait`, snapshot over a long round trip, partitions.
    Wan(Box<keygate_benches::wan::WanArgs>),
    /// Limits across gateways: rate-limit overshoot per window, credits stranded in leases
    /// when a key runs dry, control-plane CPU per 1,000 req/s of limited traffic.
    Limits(Box<keygate_benches::limits::LimitsArgs>),
    /// Render a summary (from `summarize`) as text tables; to stdout, or to `--out`.
    Table {
        summary: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long)]
    url: String,
    /// Name of what is measured, in the report.
    #[arg(long, default_value = "load")]
    label: String,
    /// Open loop at this many requests per second; without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Closed loop: stop after this many requests (no warm-up).
    #[arg(long)]
    requests: Option<u64>,
    /// One key for every request (instead of key files).
    #[arg(long, conflicts_with = "keys")]
    key: Option<String>,
    /// Valid keys, one per line.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Use only the first N valid keys of the file.
    #[arg(long)]
    key_limit: Option<usize>,
    #[arg(long)]
    disabled_keys: Option<PathBuf>,
    #[arg(long)]
    unknown_keys: Option<PathBuf>,
    /// Malformed keys; without it they are derived from the valid ones.
    #[arg(long)]
    malformed_keys: Option<PathBuf>,
    #[arg(long, default_value_t = 0.0)]
    malformed_share: f64,
    #[arg(long, default_value_t = 0.0)]
    disabled_share: f64,
    #[arg(long, default_value_t = 0.0)]
    unknown_share: f64,
    /// `uniform`, `zipf` or `zipf:S` over the valid keys.
    #[arg(long, default_value = "uniform")]
    distribution: Distribution,
    /// Processes whose CPU time to report per request (comma separated).
    #[arg(long, value_delimiter = ',')]
    cpu_pid: Vec<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// For `https://` URLs: PEM file of the CA the server's certificate must chain to.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Name sent as SNI and verified in the certificate [default: the URL's host].
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Verify the server's chain on every handshake, not once per distinct chain (the handshake
    /// signature is verified every time either way).
    #[arg(long, requires = "tls_ca")]
    tls_verify_every_handshake: bool,
    /// One request per connection (`Connection: close`, a new connect — over TLS a new full
    /// handshake — for every request) instead of keep-alive.
    #[arg(long)]
    new_connection_per_request: bool,
}

fn main() {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let result = runtime
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn run(command: Bench) -> anyhow::Result<()> {
    match command {
        Bench::DisableLatency {
            gateways,
            endpoint,
            token,
            tries,
        } => disable_latency::run(&gateways, &endpoint, &token, tries)
            .await
            .map_err(anyhow::Error::msg),
        Bench::Rps {
            url,
            key,
            duration,
            connections,
            requests,
            method,
        } => {
            let spec = LoadSpec {
                label: format!(
                    "{url} ({})",
                    if key.is_some() { "key sent" } else { "no key" }
                ),
                url,
                pace: Pace::Closed,
                connections,
                duration,
                warmup: Duration::ZERO,
                requests,
                cpu_pids: Vec::new(),
                seed: 1,
                tls: None,
                new_connection_per_request: false,
                method,
            };
            let report = load::run(&spec, Arc::new(KeyMix::single(key.as_deref())?)).await?;
            println!("{}", report.line());
            let refused: Vec<&String> = report.codes.keys().filter(|code| *code != "200").collect();
            anyhow::ensure!(
                refused.is_empty() && report.requests > 0,
                "{} answered {refused:?}, not only 200: check the key and route",
                spec.url
            );
            Ok(())
        }
        Bench::Load(args) => run_load(*args).await,
        Bench::SyntheticCp {
            keys,
            seed,
            listen,
            gateway_token,
            write_keys,
            unknown,
            disabled_share,
            expired_share,
        } => {
            let spec = KeySetSpec {
                disabled_share,
                expired_share,
                ..KeySetSpec::standard(keys, seed)
            };
            let started = std::time::Instant::now();
            let (server, files) =
                SyntheticControlPlane::generate(spec, unknown, gateway_token.as_deref());
            if let Some(dir) = write_keys {
                files.write(&dir)?;
            }
            drop(files);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot bind {listen}"))?;
            println!(
                "synthetic control plane listening on {} ({keys} keys at revision {}, generated in {:.1} s)",
                listener.local_addr()?,
                server.revision(),
                started.elapsed().as_secs_f64()
            );
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            server.serve(listener, shutdown).await
        }
        Bench::ReadyTime {
            admin,
            timeout,
            command,
        } => {
            let elapsed = ready_time::measure(&command, admin, timeout).await?;
            println!("ready after {:.0} ms", elapsed.as_secs_f64() * 1000.0);
            Ok(())
        }
        Bench::ReplicaMemory { keys, seed, json } => {
            let measured =
                tokio::task::spawn_blocking(move || replica_memory::measure(keys, seed)).await??;
            println!(
                "replica of {} keys ({} owners, no meta): RSS {:.1} MiB -> {:.1} MiB, {:.1} bytes/key; snapshot build {:.2} s (+ install {:.3} s)",
                measured.keys,
                measured.owners,
                measured.rss_before_bytes as f64 / 1048576.0,
                measured.rss_after_bytes as f64 / 1048576.0,
                measured.bytes_per_key,
                measured.build_seconds,
                measured.install_seconds,
            );
            write_json(json.as_deref(), &measured)
        }
        Bench::MemoryLatency {
            mib,
            small_pages,
            accesses,
            json,
        } => {
            let measured = tokio::task::spawn_blocking(move || {
                memory_latency::measure(mib << 20, !small_pages, accesses)
            })
            .await??;
            println!(
                "{} MiB, huge pages {}: {:.1} ns per dependent read ({} MiB of the process on huge pages)",
                measured.region_bytes >> 20,
                if measured.huge_pages_asked {
                    "asked"
                } else {
                    "not asked"
                },
                measured.nanoseconds_per_access,
                measured.anon_huge_pages_bytes >> 20,
            );
            write_json(json.as_deref(), &measured)
        }
        Bench::CpLoad {
            endpoint,
            token,
            keys,
            clients,
            json,
        } => {
            let report = cp_load::run(&endpoint, &token, keys, clients).await?;
            println!(
                "control plane, {clients} clients: {} creates at {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); {} deletes at {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); all {} gateways acked the last delete {} after it returned ({} revocations/s enforced everywhere)",
                report.creates.operations,
                report.creates.per_second,
                report.creates.latency.p50 / 1000.0,
                report.creates.latency.p99 / 1000.0,
                report.deletes.operations,
                report.deletes.per_second,
                report.deletes.latency.p50 / 1000.0,
                report.deletes.latency.p99 / 1000.0,
                report.gateways_acked,
                report
                    .all_gateways_acked_ms
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_else(|| "NOT".into()),
                report
                    .enforced_per_second
                    .map(|rate| format!("{rate:.0}"))
                    .unwrap_or_else(|| "-".into()),
            );
            write_json(json.as_deref(), &report)
        }
        Bench::Summarize { dir, out, machine } => {
            let summary = summary::summarize(&dir, machine)?;
            for check in &summary.targets {
                println!(
                    "{} {}: {:.3} ({}; limit {:.3})",
                    if check.met { "MET   " } else { "MISSED" },
                    check.target,
                    check.measured,
                    check.unit,
                    check.limit
                );
            }
            write_json(Some(&out), &summary)
        }
        Bench::Chart { summary, out } => {
            let text = std::fs::read_to_string(&summary)
                .with_context(|| format!("cannot read {}", summary.display()))?;
            let summary: summary::Summary = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a summary", summary.display()))?;
            std::fs::write(&out, chart::render(&summary))
                .with_context(|| format!("cannot write {}", out.display()))
        }
        Bench::Wan(args) => keygate_benches::wan::run(*args).await,
        Bench::Limits(args) => keygate_benches::limits::run(*args).await,
        Bench::Table { summary, out } => {
            let text = std::fs::read_to_string(&summary)
                .with_context(|| format!("cannot read {}", summary.display()))?;
            let summary: summary::Summary = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a summary", summary.display()))?;
            let table = summary::table(&summary);
            match out {
                Some(out) => std::fs::write(&out, table)
                    .with_context(|| format!("cannot write {}", out.display())),
                None => {
                    print!("{table}");
                    Ok(())
                }
            }
        }
    }
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let read = |path: &Option<PathBuf>| -> anyhow::Result<Vec<String>> {
        path.as_deref().map(keyfile::read).unwrap_or(Ok(Vec::new()))
    };
    let mut valid = match (&args.key, &args.keys) {
        (Some(key), _) => vec![key.clone()],
        (None, keys) => read(keys)?,
    };
    if let Some(limit) = args.key_limit {
        valid.truncate(limit);
    }
    let malformed = if args.malformed_keys.is_some() {
        read(&args.malformed_keys)?
    } else {
        let kinds = [
            Malformation::WrongChecksum,
            Malformation::Truncated,
            Malformation::BadCharacter,
        ];
        valid
            .iter()
            .take(3000)
            .enumerate()
            .map(|(index, key)| keyset::malformed(key, kinds[index % 3]))
            .collect()
    };
    let mix = KeyMix::new(
        KeyMixSpec {
            valid,
            malformed,
            disabled: read(&args.disabled_keys)?,
            unknown: read(&args.unknown_keys)?,
            malformed_share: args.malformed_share,
            disabled_share: args.disabled_share,
            unknown_share: args.unknown_share,
        },
        args.distribution,
    )?;
    let spec = LoadSpec {
        label: args.label,
        url: args.url,
        pace: match args.rate {
            Some(rate) => Pace::Open { rate },
            None => Pace::Closed,
        },
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        requests: args.requests,
        cpu_pids: args.cpu_pid,
        seed: args.seed,
        tls: args.tls_ca.map(|ca_file| TlsOptions {
            ca_file,
            server_name: args.tls_server_name,
            verification: if args.tls_verify_every_handshake {
                Verification::EveryHandshake
            } else {
                Verification::OncePerChain
            },
        }),
        new_connection_per_request: args.new_connection_per_request,
        method: http::Method::GET,
    };
    let report = load::run(&spec, Arc::new(mix)).await?;
    println!("{}", report.line());
    write_json(args.json.as_deref(), &report)
}

fn write_json(path: Option<&Path>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}
