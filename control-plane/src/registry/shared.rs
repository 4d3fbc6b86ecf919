//! The registry shared among control-plane replicas through their database: each replica
//! publishes its own gateways (and so its heartbeat) and reads the others'.
//!
//! - Publishing: within [`MIN_PUBLISH_GAP`] of a local connect, ack or disconnect, and every
//!   [`PUBLISH_INTERVAL`] regardless (the heartbeat).
//! - Reading: every [`PUBLISH_INTERVAL`]; while a `--wait` is in progress here, at once when
//!   another replica publishes (the store's notification) and every [`WAITING_REFRESH`] in any
//!   case, so an ack on another replica ends the wait within milliseconds.
//!
//! Only replicas on PostgreSQL run this; a SQLite control plane is alone by construction.

use std::sync::Arc;
use std::time::Duration;

use keygate_proto::time::now_unix_ms;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{PUBLISH_INTERVAL, Registry};
use crate::store::Store;

/// Shortest time between two publishes: a burst of acks becomes one write.
pub const MIN_PUBLISH_GAP: Duration = Duration::from_millis(2);
/// How often other replicas' rows are read while a `--wait` is in progress on this replica.
pub const WAITING_REFRESH: Duration = Duration::from_millis(20);
/// Rows nobody has written for this long past the gateway timeout are deleted: every gateway
/// is past any sensible propagation bound by then.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How long the last publish at shutdown may take.
const FINAL_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes and reads the shared registry until `stop`, then publishes once more (streams
/// end at shutdown, so other replicas learn at once that this one's gateways left).
pub async fn run(
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    gateway_timeout: Duration,
    stop: CancellationToken,
) {
    let mut changes = registry.subscribe();
    let mut publications = store.publications();
    let start = Instant::now();
    let mut last_publish: Option<Instant> = None;
    let mut last_refresh: Option<Instant> = None;
    let mut last_forget = start;
    let mut dirty = true;
    let mut failing = false;
    loop {
        let publish_due = match last_publish {
            None => start,
            Some(at) if dirty => at + MIN_PUBLISH_GAP,
            Some(at) => at + PUBLISH_INTERVAL,
        };
        let refresh_every = if registry.has_waiters() {
            WAITING_REFRESH
        } else {
            PUBLISH_INTERVAL
        };
        let refresh_due = last_refresh.map_or(start, |at| at + refresh_every);
        let waiting = registry.has_waiters();
        tokio::select! {
            () = stop.cancelled() => break,
            changed = changes.changed(), if !dirty => {
                if changed.is_err() {
                    break;
                }
                dirty = true;
                continue;
            }
            published = published(&mut publications), if waiting => {
                if !published {
                    publications = None;
                }
                // Read the rows now: another replica's gateway may have acked.
                last_refresh = None;
                continue;
            }
            () = tokio::time::sleep_until(publish_due.min(refresh_due)) => {}
        }
        let now = Instant::now();
        let mut outcome = Ok(());
        if now >= publish_due {
            changes.borrow_and_update();
            dirty = false;
            last_publish = Some(now);
            outcome = publish(&registry, store.as_ref()).await;
        }
        if outcome.is_ok() && now >= refresh_due {
            last_refresh = Some(now);
            outcome = refresh(&registry, store.as_ref()).await;
        }
        if outcome.is_ok() && now.duration_since(last_forget) >= PUBLISH_INTERVAL * 60 {
            last_forget = now;
            let horizon = gateway_timeout.saturating_add(FORGET_AFTER);
            let before = now_unix_ms()
                .saturating_sub(i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX));
            outcome = store.forget_gateways(before).await.map(|_| ());
        }
        match outcome {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("shared gateway registry reachable again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "could not share the gateway registry through the database; `keygate gateways` and --wait on other replicas miss this replica's gateways until it recovers");
            }
            Err(_) => {}
        }
    }
    if tokio::time::timeout(FINAL_PUBLISH_TIMEOUT, publish(&registry, store.as_ref()))
        .await
        .is_err()
    {
        tracing::debug!("the last publish of the gateway registry timed out");
    }
}

/// Waits for the next publication of any replica; false when the store cannot tell (any more).
async fn published(publications: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match publications {
        Some(receiver) => receiver.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn publish(registry: &Registry, store: &dyn Store) -> Result<(), crate::store::StoreError> {
    store
        .publish_gateways(registry.replica_id(), now_unix_ms(), &registry.records())
        .await
}

async fn refresh(registry: &Registry, store: &dyn Store) -> Result<(), crate::store::StoreError> {
    let rows = store.list_gateways().await?;
    registry.set_remote(rows, now_unix_ms());
    Ok(())
}
