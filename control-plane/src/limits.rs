//! The control plane's side of limits per key (DESIGN.md, "Limits and permissions per key"):
//!
//! - **usage aggregation** ([`usage`]): gateways report what they used in each rate-limit
//!   window; every gateway that reported a holder's window hears, within
//!   [`PUSH_GAP`], what all the others used there, and how many gateways are live, so that
//!   each keeps to its share of what is left;
//! - **leases**: a gateway spends only credits leased to it. A grant takes them off the
//!   holder's balance in the store (at most a `2 × live gateways`-th of what remains, so a few
//!   last credits are spread); a return gives back exactly what the gateway did not spend; a
//!   lease never returned is written off [`WRITE_OFF_GRACE`] after it expired. Credits are so
//!   never overspent (the store's invariant, `store::limits`);
//! - **upkeep** ([`Limits::maintain`]): every [`UPKEEP_INTERVAL`], due refills, write-offs,
//!   and the sweep of rate-limit windows that are over.
//!
//! Usage is kept per replica: with several replicas (PostgreSQL), gateways on different
//! replicas do not hear each other's use (README, "Limits, credits and permissions"), while
//! credits are global through the shared database.

pub mod shared;
pub mod usage;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keygate_proto::limits::Holder;
use keygate_proto::pb;
use keygate_proto::time::now_unix_ms;
use tokio_util::sync::CancellationToken;

use crate::ids;
use crate::metrics;
use crate::registry::Registry;
use crate::store::{NewLease, Store, StoreError};

pub use usage::{Subscription, Usage};

/// Shortest time between two usage updates to one gateway: a burst of reports becomes one.
pub const PUSH_GAP: Duration = Duration::from_millis(10);
/// How long a gateway spends a lease after receiving it before returning the rest.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How long after its ttl a lease that did not come back is written off (counted as spent): a
/// gateway cut off returns its leases when it reconnects, within this.
pub const WRITE_OFF_GRACE: Duration = Duration::from_secs(30);
/// Most credits one lease request may ask for.
pub const MAX_LEASE_WANTED: u64 = 10_000;
/// How often refills, write-offs and the window sweep run.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A rate-limit window no report touched for this long has its length looked up, so that it
/// can be dropped once over.
const IDLE_WINDOW: Duration = Duration::from_secs(60);
/// Most window lengths looked up in the store per upkeep round.
const LOOKUPS_PER_ROUND: usize = 100;
/// How long the live-gateway count is reused before the registry is asked again.
const LIVE_COUNT_TTL: Duration = Duration::from_millis(100);
/// The audit actor of refills.
const REFILL_ACTOR: &str = "refill";

/// Usage aggregation, the lease service and their upkeep; one per replica.
pub struct Limits {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    pub usage: Usage,
    /// The last live-gateway count and when it was read.
    live: Mutex<Option<(Instant, u32)>>,
}

impl Limits {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>) -> Self {
        Self {
            store,
            registry,
            usage: Usage::default(),
            live: Mutex::new(None),
        }
    }

    /// Gateways with an open stream to any replica, at least 1 (the one asking).
    pub fn live_gateways(&self) -> u32 {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((read_at, count)) = *live
            && read_at.elapsed() < LIVE_COUNT_TTL
        {
            return count;
        }
        let connected = self
            .registry
            .list()
            .iter()
            .filter(|gateway| gateway.connected)
            .count();
        let count = u32::try_from(connected).unwrap_or(u32::MAX).max(1);
        *live = Some((Instant::now(), count));
        count
    }

    /// The update `subscription`'s gateway is owed, with the live-gateway count; `None` when
    /// it is owed nothing.
    pub fn take_update(&self, subscription: &Subscription) -> Option<pb::UsageUpdate> {
        let mut update = self.usage.take_update(subscription)?;
        update.live_gateways = self.live_gateways();
        Some(update)
    }

    /// Answers a gateway's lease request. Never fails: a store error grants nothing without
    /// saying "exhausted" (the gateway asks again); a holder without credits (unknown, or its
    /// credits just cleared and the event not yet applied) is "exhausted", so the gateway
    /// refuses for a moment rather than asking in a loop.
    pub async fn lease(&self, gateway_id: &str, request: &pb::LeaseRequest) -> pb::LeaseGrant {
        let mut grant = pb::LeaseGrant {
            holder: request.holder.clone(),
            request_id: request.request_id,
            lease_id: String::new(),
            granted: 0,
            ttl_ms: millis(LEASE_TTL),
            exhausted: false,
        };
        let holder = match request.holder.parse::<Holder>() {
            Ok(holder) => holder,
            Err(error) => {
                tracing::warn!(%gateway_id, %error, "lease request for an unreadable holder");
                grant.exhausted = true;
                return grant;
            }
        };
        let wanted = request.wanted.clamp(1, MAX_LEASE_WANTED);
        let lease = NewLease {
            lease_id: ids::random_id("lease"),
            holder,
            gateway_id: gateway_id.to_owned(),
            wanted,
            share_divisor: 2 * u64::from(self.live_gateways()),
            expires_unix_ms: now_unix_ms()
                .saturating_add(i64::try_from(millis(LEASE_TTL + WRITE_OFF_GRACE)).unwrap_or(0)),
        };
        let lease_id = lease.lease_id.clone();
        match self.store.lease_credits(lease).await {
            Ok(Some(granted)) => {
                if granted.granted > 0 {
                    grant.lease_id = lease_id;
                    grant.granted = granted.granted;
                    metrics::credit_lease_granted(granted.granted);
                }
                grant.exhausted = granted.remaining == 0 && granted.granted < wanted;
            }
            Ok(None) => {
                tracing::debug!(%gateway_id, holder = %request.holder, "lease request for a holder without credits");
                grant.exhausted = true;
            }
            Err(error) => {
                tracing::error!(%gateway_id, holder = %request.holder, %error, "cannot lease credits: the store failed");
            }
        }
        grant
    }

    /// Gives back the unspent rest of a lease. False when the lease is not recorded (already
    /// returned, written off, or its holder's credits were cleared).
    pub async fn give_back(
        &self,
        gateway_id: &str,
        lease_id: &str,
        unspent: u64,
    ) -> Result<bool, StoreError> {
        let returned = self.store.return_lease(lease_id, unspent).await?;
        if !returned {
            tracing::debug!(%gateway_id, %lease_id, "a returned lease is not recorded; ignoring it");
        }
        Ok(returned)
    }

    /// Refills, write-offs and the sweep of rate-limit windows, every [`UPKEEP_INTERVAL`]
    /// until `stop`. A store that fails is logged once per streak and tried again next round.
    pub async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.upkeep(now_unix_ms()).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("refills and lease write-offs run again");
                    }
                    failing = false;
                }
                Err(error) => {
                    if !failing {
                        tracing::error!(%error, "refills or lease write-offs failed in the store; retrying every second");
                    }
                    failing = true;
                }
            }
        }
    }

    /// One round of upkeep at `now_unix_ms`.
    pub async fn upkeep(&self, now_unix_ms: i64) -> Result<(), StoreError> {
        // Each part runs whether or not another failed; the first failure is reported.
        let refilled = self.store.refill_due(now_unix_ms, REFILL_ACTOR).await;
        if let Ok(refilled) = &refilled
            && !refilled.is_empty()
        {
            metrics::credits_refilled(refilled.len());
            tracing::debug!(holders = refilled.len(), "credits refilled");
        }
        let written_off = self.store.write_off_leases(now_unix_ms).await;
        if let Ok(credits) = written_off
            && credits > 0
        {
            metrics::credits_written_off(credits);
            tracing::info!(credits, "wrote off credits of leases that never came back");
        }
        let swept = self.sweep(now_unix_ms).await;
        refilled.and(written_off).and(swept)
    }

    /// Learns the length of windows gone idle, and drops the windows that are over.
    async fn sweep(&self, now_unix_ms: i64) -> Result<(), StoreError> {
        for key in self.usage.unknown_idle(IDLE_WINDOW, LOOKUPS_PER_ROUND) {
            let window_ms = self.window_ms(&key.0, &key.1).await?;
            self.usage.set_window(&key, window_ms);
        }
        self.usage.drop_past(now_unix_ms);
        Ok(())
    }

    /// The window of a holder's rate limit, as the store has it; `None` when the holder or
    /// the limit no longer exists.
    async fn window_ms(&self, holder: &Holder, name: &str) -> Result<Option<u64>, StoreError> {
        let limits = match holder {
            Holder::Key(id) => self
                .store
                .get_key(*id)
                .await?
                .map(|key| key.limits.ratelimits),
            Holder::Identity(id) => self
                .store
                .get_identity(id)
                .await?
                .map(|identity| identity.ratelimits),
        };
        Ok(limits.and_then(|limits| {
            limits
                .into_iter()
                .find(|limit| limit.name == name)
                .map(|limit| limit.window_ms)
        }))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event_log::EventLog;
    use crate::keys::{CreateKey, Keys};
    use crate::store::sqlite::SqliteStore;

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        store: Arc<dyn Store>,
        limits: Limits,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = SqliteStore::open(&path, Arc::new(EventLog::new(16)) as _)
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let registry = Arc::new(Registry::new(Duration::from_secs(60), "cp-test".into()));
        Fixture {
            _dir: dir,
            path,
            limits: Limits::new(Arc::clone(&store), registry),
            store,
        }
    }

    /// A key with `credits`; its holder.
    async fn key_with_credits(store: &Arc<dyn Store>, credits: u64) -> Holder {
        let create = CreateKey {
            owner: "alice".into(),
            credits: Some(credits),
            ..CreateKey::default()
        };
        let issued = Keys::new(Arc::clone(store))
            .create(create, "test")
            .await
            .unwrap();
        Holder::Key(issued.record.id)
    }

    fn request(holder: &Holder, wanted: u64) -> pb::LeaseRequest {
        pb::LeaseRequest {
            holder: holder.to_string(),
            wanted,
            request_id: 7,
        }
    }

    /// With one live gateway a grant is at most half of what remains (rounded up), so the
    /// last credits go out one by one; "exhausted" only once nothing remains and the grant fell
    /// short of the request.
    #[tokio::test]
    async fn grants_share_what_remains_and_say_exhausted_only_when_short_and_empty() {
        let f = fixture().await;
        let holder = key_with_credits(&f.store, 10).await;
        let mut granted = Vec::new();
        for _ in 0..5 {
            let grant = f.limits.lease("gw-a", &request(&holder, 100)).await;
            assert_eq!((grant.request_id, grant.ttl_ms), (7, 10_000));
            assert_eq!(grant.holder, holder.to_string());
            assert_eq!(grant.lease_id.is_empty(), grant.granted == 0);
            granted.push((grant.granted, grant.exhausted));
        }
        assert_eq!(
            granted,
            [(5, false), (3, false), (1, false), (1, true), (0, true)]
        );
        let credits = f.store.credits(&holder).await.unwrap().unwrap();
        assert_eq!((credits.remaining, credits.leased), (0, 10));

        // Exactly what was asked for, even if it empties the balance: not exhausted.
        let holder = key_with_credits(&f.store, 1).await;
        let grant = f.limits.lease("gw-a", &request(&holder, 1)).await;
        assert_eq!((grant.granted, grant.exhausted), (1, false));

        // Requests are capped, and 0 counts as 1.
        let holder = key_with_credits(&f.store, 1_000_000).await;
        let grant = f.limits.lease("gw-a", &request(&holder, 50_000)).await;
        assert_eq!((grant.granted, grant.exhausted), (MAX_LEASE_WANTED, false));
        let grant = f.limits.lease("gw-a", &request(&holder, 0)).await;
        assert_eq!(grant.granted, 1);
    }

    #[tokio::test]
    async fn returns_give_back_exactly_the_unspent_rest_once() {
        let f = fixture().await;
        let holder = key_with_credits(&f.store, 100).await;
        let grant = f.limits.lease("gw-a", &request(&holder, 40)).await;
        assert_eq!(grant.granted, 40);
        assert!(
            f.limits
                .give_back("gw-a", &grant.lease_id, 15)
                .await
                .unwrap()
        );
        // A second return of the same lease changes nothing.
        assert!(
            !f.limits
                .give_back("gw-a", &grant.lease_id, 15)
                .await
                .unwrap()
        );
        let credits = f.store.credits(&holder).await.unwrap().unwrap();
        assert_eq!((credits.remaining, credits.leased), (75, 0));
    }

    #[tokio::test]
    async fn holders_without_credits_are_exhausted_and_store_failures_are_not() {
        let f = fixture().await;
        // A key without credits, an unknown identity, an unreadable holder.
        let plain = Keys::new(Arc::clone(&f.store))
            .create(
                CreateKey {
                    owner: "bob".into(),
                    ..CreateKey::default()
                },
                "test",
            )
            .await
            .unwrap();
        for holder in [
            Holder::Key(plain.record.id).to_string(),
            "identity:nobody".to_owned(),
            "user:x".to_owned(),
        ] {
            let asked = pb::LeaseRequest {
                holder: holder.clone(),
                wanted: 5,
                request_id: 1,
            };
            let grant = f.limits.lease("gw-a", &asked).await;
            assert_eq!((grant.granted, grant.exhausted), (0, true), "{holder}");
        }
        // The store fails: nothing granted, but the gateway may ask again.
        let holder = key_with_credits(&f.store, 10).await;
        let sqlite = rusqlite::Connection::open(&f.path).unwrap();
        sqlite
            .execute_batch("ALTER TABLE credits RENAME TO credits_away")
            .unwrap();
        let grant = f.limits.lease("gw-a", &request(&holder, 5)).await;
        assert_eq!((grant.granted, grant.exhausted), (0, false));
        sqlite
            .execute_batch("ALTER TABLE credits_away RENAME TO credits")
            .unwrap();
        let grant = f.limits.lease("gw-a", &request(&holder, 5)).await;
        assert_eq!((grant.granted, grant.exhausted), (5, false));
    }

    /// A lease that never comes back is written off once its ttl and the grace are over, and
    /// a return after that gives nothing back.
    #[tokio::test]
    async fn upkeep_writes_off_leases_that_never_came_back() {
        let f = fixture().await;
        let holder = key_with_credits(&f.store, 100).await;
        let grant = f.limits.lease("gw-a", &request(&holder, 30)).await;
        let now = now_unix_ms();
        f.limits.upkeep(now).await.unwrap();
        assert_eq!(f.store.credits(&holder).await.unwrap().unwrap().leased, 30);
        let past_grace = now + i64::try_from(millis(LEASE_TTL + WRITE_OFF_GRACE)).unwrap() + 1_000;
        f.limits.upkeep(past_grace).await.unwrap();
        let credits = f.store.credits(&holder).await.unwrap().unwrap();
        assert_eq!((credits.remaining, credits.leased), (70, 0));
        assert!(
            !f.limits
                .give_back("gw-a", &grant.lease_id, 30)
                .await
                .unwrap()
        );
        assert_eq!(
            f.store.credits(&holder).await.unwrap().unwrap().remaining,
            70
        );
    }

    /// The sweep learns a window's length from the store and drops the window once over; the
    /// counts of a limit that no longer exists are dropped at once.
    #[tokio::test]
    async fn upkeep_drops_windows_that_are_over() {
        let f = fixture().await;
        let create = CreateKey {
            owner: "alice".into(),
            ratelimits: vec!["requests=10/1m".parse().unwrap()],
            ..CreateKey::default()
        };
        let issued = Keys::new(Arc::clone(&f.store))
            .create(create, "test")
            .await
            .unwrap();
        let holder = Holder::Key(issued.record.id);
        let now = now_unix_ms();
        let start = now - now.rem_euclid(60_000);
        let report = |limit: &str| pb::UsageReport {
            windows: vec![pb::WindowUsage {
                holder: holder.to_string(),
                limit: limit.into(),
                window_start_unix_ms: start,
                used: 3,
            }],
        };
        f.limits.usage.report("gw-a", &report("requests"), now);
        f.limits.usage.report("gw-a", &report("gone"), now);
        let key = (holder.clone(), "requests".to_owned());
        let gone = (holder.clone(), "gone".to_owned());
        let mut idle = f.limits.usage.unknown_idle(Duration::ZERO, 10);
        idle.sort();
        assert_eq!(idle, [gone.clone(), key.clone()]);
        for key in idle {
            let window_ms = f.limits.window_ms(&key.0, &key.1).await.unwrap();
            f.limits.usage.set_window(&key, window_ms);
        }
        assert_eq!(f.limits.usage.windows(), 1);
        assert!(f.limits.usage.unknown_idle(Duration::ZERO, 10).is_empty());
        assert_eq!(f.limits.usage.drop_past(start + 59_999), 0);
        assert_eq!(f.limits.usage.drop_past(start + 60_000), 1);
    }
}
