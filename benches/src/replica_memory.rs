//! Replica memory per key, measured in-process as the growth of the resident set while a
//! [`Snapshot`] of N synthetic keys (no meta) is built and installed. The workspace forbids
//! `unsafe`, so there is no counting allocator; RSS is what the operating system charges the
//! gateway anyway. Keys are generated one at a time and dropped, so only the replica stays.

use std::sync::Arc;
use std::time::Instant;

use keygate_proto::Revision;
use keygate_proxy::{Replica, Snapshot};
use serde::Serialize;

use crate::keyset::{KeySetSpec, KeyStream};

/// What one measurement found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaMemory {
    pub keys: usize,
    pub owners: usize,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub bytes_per_key: f64,
    /// Time to build the snapshot (generation of the synthetic keys excluded as far as it can
    /// be: it is timed separately and subtracted).
    pub build_seconds: f64,
    pub install_seconds: f64,
}

/// Resident set size of this process, bytes (`/proc/self/statm`, field 2, in pages).
pub fn rss_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/statm format"))?;
    // x86_64 and aarch64 Linux as configured here use 4 KiB pages.
    Ok(pages * 4096)
}

/// Builds and installs a replica of `keys` keys; measures RSS around it.
pub fn measure(keys: usize, seed: u64) -> anyhow::Result<ReplicaMemory> {
    let spec = KeySetSpec::standard(keys, seed);
    // Time the generation alone, so the build time below can be told apart from it.
    let sample = keys.clamp(1, 200_000);
    let generation = {
        let started = Instant::now();
        let mut count = 0usize;
        for key in KeyStream::new(spec).take(sample) {
            count += usize::from(key.record.enabled);
        }
        std::hint::black_box(count);
        started.elapsed().as_secs_f64() * keys as f64 / sample as f64
    };
    let replica = Arc::new(Replica::new());
    let before = rss_bytes()?;
    let started = Instant::now();
    let mut snapshot = Snapshot::new(Revision(1), keys);
    for key in KeyStream::new(spec) {
        snapshot.insert(&key.record);
    }
    let built = started.elapsed().as_secs_f64();
    let started = Instant::now();
    replica.install_snapshot(snapshot);
    let install_seconds = started.elapsed().as_secs_f64();
    let after = rss_bytes()?;
    anyhow::ensure!(
        replica.len() == keys,
        "the replica holds {} keys",
        replica.len()
    );
    Ok(ReplicaMemory {
        keys,
        owners: spec.owners,
        rss_before_bytes: before,
        rss_after_bytes: after,
        bytes_per_key: after.saturating_sub(before) as f64 / keys.max(1) as f64,
        build_seconds: (built - generation).max(0.0),
        install_seconds,
    })
}
