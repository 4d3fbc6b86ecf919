//! `keygate-bench`: measurements through real, separately started gateways.
//!
//! - `disable-latency`: time from `keys disable` returning to every gateway answering 403
//!   DISABLED, probed by requests (not by internal state), over many tries.
//! - `rps`: closed-loop requests/s and latency percentiles against one URL, with or without a
//!   key, so the key route and the no-auth route can be compared in one run.
//!
//! `benches/quick.sh` starts a control plane, two gateways and an echo upstream and runs both.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_proto::pb;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

#[derive(Parser)]
#[command(name = "keygate-bench")]
struct Cli {
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
    /// Closed-loop load against one URL.
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
    },
}

#[tokio::main]
async fn main() {
    let result = match Cli::parse().command {
        Bench::DisableLatency {
            gateways,
            endpoint,
            token,
            tries,
        } => disable_latency(&gateways, &endpoint, &token, tries).await,
        Bench::Rps {
            url,
            key,
            duration,
            connections,
            requests,
        } => rps(&url, key, duration, connections, requests).await,
    };
    if let Err(message) = result {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

async fn status_of(client: &HttpClient, url: &str, key: Option<&str>) -> Result<u16, String> {
    let mut request = http::Request::get(url);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// Polls every gateway until each answers `status` for `key`; returns when the last one does.
async fn until_all(
    client: &HttpClient,
    gateways: &[String],
    key: &str,
    status: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending: Vec<&String> = gateways.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for gateway in pending {
            if status_of(client, gateway, Some(key)).await? != status {
                still.push(gateway);
            }
        }
        pending = still;
        if Instant::now() > deadline {
            return Err(format!(
                "gateways {pending:?} did not answer {status} within 10 s"
            ));
        }
    }
    Ok(())
}

async fn disable_latency(
    gateways: &[String],
    endpoint: &str,
    token: &str,
    tries: usize,
) -> Result<(), String> {
    let mut admin = keygate::admin_client::connect(endpoint, Some(token))
        .await
        .map_err(|e| e.to_string())?;
    let http = client();
    let issued = admin
        .create_key(pb::CreateKeyRequest {
            owner: "bench".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut samples = Vec::with_capacity(tries);
    for _ in 0..tries {
        admin
            .set_key_enabled(pb::SetKeyEnabledRequest {
                key_id: issued.key_id.clone(),
                enabled: true,
            })
            .await
            .map_err(|e| e.to_string())?;
        until_all(&http, gateways, &issued.key, 200).await?;
        admin
            .set_key_enabled(pb::SetKeyEnabledRequest {
                key_id: issued.key_id.clone(),
                enabled: false,
            })
            .await
            .map_err(|e| e.to_string())?;
        let returned = Instant::now();
        until_all(&http, gateways, &issued.key, 403).await?;
        samples.push(returned.elapsed());
    }
    admin
        .delete_key(pb::DeleteKeyRequest {
            key_id: issued.key_id,
        })
        .await
        .map_err(|e| e.to_string())?;
    let summary = percentiles(&mut samples);
    println!(
        "disable -> 403 DISABLED at all {} gateways, {tries} tries: p50 {} p90 {} p99 {} max {}",
        gateways.len(),
        ms(summary[0]),
        ms(summary[1]),
        ms(summary[2]),
        ms(summary[3])
    );
    Ok(())
}

async fn rps(
    url: &str,
    key: Option<String>,
    duration: Duration,
    connections: usize,
    requests: Option<u64>,
) -> Result<(), String> {
    let http = client();
    let expected = status_of(&http, url, key.as_deref()).await?;
    if expected != 200 {
        return Err(format!(
            "{url} answers {expected}, not 200: check the key and route"
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    // Requests still to send when counting; unlimited otherwise.
    let budget = Arc::new(AtomicU64::new(requests.unwrap_or(u64::MAX)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (http, url, key, stop, errors) = (
            http.clone(),
            url.to_owned(),
            key.clone(),
            stop.clone(),
            errors.clone(),
        );
        let budget = budget.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let take_one = |left: u64| left.checked_sub(1);
            while !stop.load(Ordering::Relaxed)
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take_one)
                    .is_ok()
            {
                let sent = Instant::now();
                match status_of(&http, &url, key.as_deref()).await {
                    Ok(200) => latencies.push(sent.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    if requests.is_none() {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = latencies.len();
    let summary = percentiles(&mut latencies);
    println!(
        "{url} ({}): {:.0} req/s over {:.1} s, {connections} in flight, {} errors; latency p50 {} p90 {} p99 {} max {}",
        if key.is_some() { "key sent" } else { "no key" },
        count as f64 / elapsed,
        elapsed,
        errors.load(Ordering::Relaxed),
        ms(summary[0]),
        ms(summary[1]),
        ms(summary[2]),
        ms(summary[3])
    );
    Ok(())
}

/// p50, p90, p99, max.
fn percentiles(samples: &mut [Duration]) -> [Duration; 4] {
    if samples.is_empty() {
        return [Duration::ZERO; 4];
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.9), at(0.99), samples[samples.len() - 1]]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}
