//! Rate-limit use shared among control-plane replicas through their database (PostgreSQL), so
//! that a limit is global across every gateway of every replica, not of each replica alone.
//!
//! Every [`SHARE_INTERVAL`], a replica writes the counts its own gateways reported since the
//! last time ([`Usage::take_unpublished`](super::usage::Usage::take_unpublished); absolute
//! counts per gateway and window, so a lost or repeated write does no harm) and reads the
//! rows the other replicas wrote since the last read, less [`READ_OVERLAP_MS`]
//! ([`Usage::merge`](super::usage::Usage::merge)), which pushes the new "others" count to its
//! gateways as a report from one of them would. A gateway on another replica so hears of a
//! count within about two intervals plus two database round trips, on top of the one-replica
//! path (README, "Limits, credits and permissions": the overshoot bound).
//!
//! Only replicas on PostgreSQL run this; a SQLite control plane is alone by construction.

use std::sync::Arc;
use std::time::Duration;

use keygate_proto::limits::MAX_WINDOW;
use keygate_proto::time::now_unix_ms;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Limits;

/// How often counts are written and read.
pub const SHARE_INTERVAL: Duration = Duration::from_millis(50);
/// How far back each read looks again, so a write whose transaction committed after a later
/// read began, or whose replica's clock is a little behind, is still seen. Counts merge by
/// their maximum, so reading a row twice changes nothing.
pub const READ_OVERLAP_MS: i64 = 2_000;
/// How often rows nobody wrote for longer than the longest window are deleted.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// Shares this replica's gateways' counts and takes the others' until `stop`.
pub async fn run(limits: Arc<Limits>, stop: CancellationToken) {
    let replica_id = limits.registry.replica_id().to_owned();
    limits.usage.share();
    let mut tick = tokio::time::interval(SHARE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first read takes every row: the windows in progress when this replica started.
    let mut since = i64::MIN;
    let mut last_forget = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = now_unix_ms();
        let outcome = share(&limits, &replica_id, now, since).await;
        match outcome {
            Ok(()) => {
                since = now.saturating_sub(READ_OVERLAP_MS);
                if failing {
                    tracing::info!("rate-limit use is shared with the other replicas again");
                    failing = false;
                }
            }
            Err(error) if !failing => {
                tracing::warn!(%error, "cannot share rate-limit use with the other replicas; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        if last_forget.elapsed() >= FORGET_EVERY {
            last_forget = Instant::now();
            let longest = i64::try_from(MAX_WINDOW.as_millis()).unwrap_or(i64::MAX);
            if let Err(error) = limits
                .store
                .forget_usage(now.saturating_sub(longest.saturating_mul(2)))
                .await
            {
                tracing::warn!(%error, "cannot delete old rate-limit use");
            }
        }
    }
}

/// One round: publish, then read and merge.
async fn share(
    limits: &Limits,
    replica_id: &str,
    now: i64,
    since: i64,
) -> Result<(), crate::store::StoreError> {
    let mine = limits.usage.take_unpublished();
    if !mine.is_empty()
        && let Err(error) = limits.store.publish_usage(replica_id, now, &mine).await
    {
        limits.usage.unpublish(&mine);
        return Err(error);
    }
    let theirs = limits.store.read_usage(replica_id, since).await?;
    limits.usage.merge(&theirs, now);
    Ok(())
}
