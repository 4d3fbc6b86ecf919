//! Control-plane write throughput through the real Admin gRPC API: key creations per second and
//! revocations (deletes) per second from concurrent clients, each on its own connection; then
//! how long until every attached gateway has acked the last revocation (`WaitForRevision`, what
//! `keys delete --wait` uses).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use keygate_proto::pb;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::report::LatencySummary;

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    pub operations: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// Per call, µs.
    pub latency: LatencySummary,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpLoadReport {
    pub clients: usize,
    pub creates: PhaseReport,
    pub deletes: PhaseReport,
    /// From the last delete's return until every live gateway acked it, ms.
    pub all_gateways_acked_ms: Option<u64>,
    /// From the first delete sent until every gateway acked the last one: revocations per
    /// second enforced everywhere.
    pub enforced_per_second: Option<f64>,
    pub gateways_acked: usize,
}

/// Creates `keys` keys and then deletes them all, over `clients` connections.
pub async fn run(
    endpoint: &str,
    token: &str,
    keys: usize,
    clients: usize,
) -> anyhow::Result<CpLoadReport> {
    anyhow::ensure!(clients > 0, "at least one client is needed");
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(
            keygate::admin_client::connect(endpoint, Some(token), None)
                .await
                .map_err(|failure| anyhow::anyhow!("{failure}"))?,
        );
    }

    let ids = Arc::new(Mutex::new(Vec::with_capacity(keys)));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut admin in connections.iter().cloned() {
        let (ids, next) = (Arc::clone(&ids), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram()?;
            while next.fetch_add(1, Ordering::Relaxed) < keys {
                let call = Instant::now();
                let issued = admin
                    .create_key(pb::CreateKeyRequest {
                        owner: "cp-load".into(),
                        name: "cp-load".into(),
                        ..Default::default()
                    })
                    .await
                    .context("CreateKey failed")?
                    .into_inner();
                latencies.saturating_record(micros(call.elapsed()));
                ids.lock().await.push(issued.key_id);
            }
            anyhow::Ok(latencies)
        }));
    }
    let create_latency = join(tasks).await?;
    let creates = phase(keys, started.elapsed(), &create_latency);

    let ids: Vec<String> = std::mem::take(&mut *ids.lock().await);
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let last_revision = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut admin in connections.iter().cloned() {
        let (ids, next, last_revision) = (
            Arc::clone(&ids),
            Arc::clone(&next),
            Arc::clone(&last_revision),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram()?;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(key_id) = ids.get(index) else { break };
                let call = Instant::now();
                let change = admin
                    .delete_key(pb::DeleteKeyRequest {
                        key_id: key_id.clone(),
                    })
                    .await
                    .context("DeleteKey failed")?
                    .into_inner();
                latencies.saturating_record(micros(call.elapsed()));
                last_revision.fetch_max(change.revision, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    let delete_latency = join(tasks).await?;
    let delete_elapsed = started.elapsed();
    let deletes = phase(ids.len(), delete_elapsed, &delete_latency);

    let waited = Instant::now();
    let mut admin = connections
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no client"))?;
    let answer = admin
        .wait_for_revision(pb::WaitForRevisionRequest {
            revision: last_revision.load(Ordering::Relaxed),
            timeout_ms: 60_000,
        })
        .await
        .context("WaitForRevision failed")?
        .into_inner();
    let acked_after = waited.elapsed();
    let (all_gateways_acked_ms, enforced_per_second) = if answer.complete {
        let total = delete_elapsed + acked_after;
        (
            Some(u64::try_from(acked_after.as_millis()).unwrap_or(u64::MAX)),
            Some(ids.len() as f64 / total.as_secs_f64()),
        )
    } else {
        (None, None)
    };
    Ok(CpLoadReport {
        clients,
        creates,
        deletes,
        all_gateways_acked_ms,
        enforced_per_second,
        gateways_acked: answer.acked.len(),
    })
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

async fn join(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Histogram<u64>>>>,
) -> anyhow::Result<Histogram<u64>> {
    let mut total = histogram()?;
    for task in tasks {
        let latencies = task.await.context("a client task panicked")??;
        total.add(&latencies)?;
    }
    Ok(total)
}

fn phase(operations: usize, elapsed: Duration, latencies: &Histogram<u64>) -> PhaseReport {
    // The summary helper reads nanoseconds; these histograms hold microseconds.
    let mut summary = LatencySummary::of(latencies);
    for value in [
        &mut summary.p50,
        &mut summary.p90,
        &mut summary.p99,
        &mut summary.p999,
        &mut summary.max,
        &mut summary.mean,
    ] {
        *value *= 1000.0;
    }
    PhaseReport {
        operations,
        seconds: elapsed.as_secs_f64(),
        per_second: operations as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: summary,
    }
}
