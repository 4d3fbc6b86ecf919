//! Limits and permissions per key at the gateway (DESIGN.md, "Limits and permissions per
//! key"): the [`Limiter`], its registry of holder states ([`holder`]) and the response headers
//! ([`headers`]).
//!
//! A key with limits carries a [`KeyPolicy`] in the replica (beside its slot, like its meta):
//! its permissions and the holder states it counts against, its own (`key:<id>`) and its
//! identity's (`identity:<id>`). Holder states are created by key events, identity events and
//! snapshots, never by requests. A request checks, in order, permissions, credits and rate
//! limits, with the key holder locked before the identity holder, and commits only when every
//! check passed: **a refused request spends nothing** (no credit, no rate-limit unit).
//!
//! The fast path (permissions, a lease with credits left, a window with room) takes the
//! holders' std mutexes for a few comparisons and never waits. Only a holder out of leased
//! credits waits, for a lease grant from the control plane, at most [`LEASE_WAIT`].
//!
//! What crosses the sync stream ([`WindowUsage`], [`LeaseRequest`], [`LeaseGrant`],
//! [`LeaseReturn`]) is described here in domain types; `sync.rs` converts them. The sync client
//! tells the limiter when the stream is up and what it heard ([`Limiter::set_connected`],
//! [`Limiter::heard`]); cut off (stream down, or nothing heard for [`CUT_OFF_AFTER_MS`]), rate
//! limits fall back to an equal share of each limit, and credits to what is already leased.

pub mod headers;
pub mod holder;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use keygate_proto::{Holder, Identity, KeyId, RateLimit, ReplicaKey};
use tokio::sync::Notify;

use holder::{CreditCheck, HolderInner, LinkView, WindowRefusal};
pub use holder::{HolderState, RateLimitStatus};

use crate::metrics::Metrics;
use crate::verdict::Code;

/// Longest wait for a lease grant before a request that needs credits is refused STALE.
pub const LEASE_WAIT: Duration = Duration::from_secs(2);
/// Nothing heard from the control plane for this long (ms) counts as cut off.
pub const CUT_OFF_AFTER_MS: i64 = 2_000;
/// Usage is reported this often while some is unreported.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// One window of one holder's named limit, as reported (own use) or pushed (others' use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUsage {
    pub holder: String,
    pub limit: String,
    pub window_start_unix_ms: i64,
    pub used: u64,
}

/// A request for a block of credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub holder: String,
    pub wanted: u64,
    pub request_id: u64,
}

/// Credits leased to this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub holder: String,
    pub request_id: u64,
    pub lease_id: String,
    pub granted: u64,
    pub ttl_ms: u64,
    pub exhausted: bool,
}

/// The unspent rest of a lease, given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReturn {
    pub lease_id: String,
    pub holder: String,
    pub unspent: u64,
}

/// What the sync client has to send.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub report: Vec<WindowUsage>,
    pub requests: Vec<LeaseRequest>,
    pub returns: Vec<LeaseReturn>,
}

impl Outgoing {
    pub fn is_empty(&self) -> bool {
        self.report.is_empty() && self.requests.is_empty() && self.returns.is_empty()
    }
}

/// What a key may do and what it counts against.
#[derive(Debug)]
pub struct KeyPolicy {
    /// Sorted, without duplicates.
    permissions: Box<[Box<str>]>,
    /// The key's own limits and credits (`key:<id>`), when it has any.
    key: Option<Arc<HolderState>>,
    /// Its identity's (`identity:<id>`), when it has one.
    identity: Option<Arc<HolderState>>,
}

impl KeyPolicy {
    /// Whether the key has every permission in `required`.
    #[inline]
    pub fn permits(&self, required: &[String]) -> bool {
        required.iter().all(|permission| {
            self.permissions
                .binary_search_by(|held| (**held).cmp(permission.as_str()))
                .is_ok()
        })
    }

    /// The key's permissions, sorted.
    pub fn permissions(&self) -> impl Iterator<Item = &str> {
        self.permissions.iter().map(|permission| &**permission)
    }

    /// The holders the key counts against: its own, then its identity's.
    pub fn holders(&self) -> impl Iterator<Item = &Arc<HolderState>> {
        self.key.iter().chain(self.identity.iter())
    }
}

/// The decision on a request's permissions, credits and rate limits.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Admitted and counted; the tightest rate limit after it, for the headers (keys with rate
    /// limits only).
    Allowed(Option<RateLimitStatus>),
    /// Refused (INSUFFICIENT_PERMISSIONS, USAGE_EXCEEDED, RATE_LIMITED or STALE); nothing was
    /// spent.
    Denied {
        code: Code,
        /// `Retry-After`, on RATE_LIMITED.
        retry_after_secs: Option<u64>,
        status: Option<RateLimitStatus>,
    },
}

impl Admission {
    /// A refusal without headers.
    pub fn denied(code: Code) -> Self {
        Self::Denied {
            code,
            retry_after_secs: None,
            status: None,
        }
    }

    /// `Code::Valid` when allowed, else the refusal's code.
    pub fn code(&self) -> Code {
        match self {
            Self::Allowed(_) => Code::Valid,
            Self::Denied { code, .. } => *code,
        }
    }
}

/// The outcome of one check without waiting ([`Limiter::admit_now`]).
#[derive(Debug)]
pub enum Attempt {
    /// Decided.
    Done(Admission),
    /// Credits are missing and a lease has been asked for.
    NeedLease,
}

/// What the sync client must send besides the periodic report.
#[derive(Default)]
struct Outbox {
    requests: Vec<LeaseRequest>,
    returns: Vec<LeaseReturn>,
    report_now: bool,
}

/// The gateway's limits state: holder states by holder, and the link to the control plane.
pub struct Limiter {
    holders: DashMap<Holder, Arc<HolderState>>,
    connected: AtomicBool,
    last_heard_ms: AtomicI64,
    live_gateways: AtomicU64,
    /// Holders with use not reported yet.
    dirty: Mutex<Vec<Arc<HolderState>>>,
    /// Holders that may hold leases (swept for expiry, returned on shutdown).
    leased: Mutex<Vec<Arc<HolderState>>>,
    outbox: Mutex<Outbox>,
    /// Wakes the sync client when something must go out before the next tick.
    wake: Notify,
    next_request: AtomicU64,
    metrics: OnceLock<Metrics>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("holders", &self.holders.len())
            .finish_non_exhaustive()
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one push or take: a panic cannot leave them torn.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Limiter {
    /// A limiter with no holders, not connected, one live gateway.
    pub fn new() -> Self {
        Self {
            holders: DashMap::new(),
            connected: AtomicBool::new(false),
            last_heard_ms: AtomicI64::new(i64::MIN / 2),
            live_gateways: AtomicU64::new(1),
            dirty: Mutex::new(Vec::new()),
            leased: Mutex::new(Vec::new()),
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            next_request: AtomicU64::new(1),
            metrics: OnceLock::new(),
        }
    }

    /// Counts refusals, reports and leases in `metrics` from now on.
    pub(crate) fn set_metrics(&self, metrics: Metrics) {
        let _ = self.metrics.set(metrics);
    }

    /// The state of `holder`, if the registry has it.
    pub fn holder(&self, holder: &Holder) -> Option<Arc<HolderState>> {
        self.holders
            .get(holder)
            .map(|state| Arc::clone(state.value()))
    }

    /// Holders in the registry.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    fn holder_or_new(&self, holder: Holder) -> Arc<HolderState> {
        Arc::clone(
            self.holders
                .entry(holder.clone())
                .or_insert_with(|| HolderState::new(holder))
                .value(),
        )
    }

    fn define(&self, state: &HolderState, ratelimits: &[RateLimit], credits: bool) {
        let mut returns = Vec::new();
        state
            .lock()
            .define(ratelimits, credits, state.name(), &mut returns);
        self.queue_returns(returns);
    }

    // ---- from the replica: keys, identities, snapshots ----

    /// The policy of a key with limits (`None` for a plain key), defining its own holder (a
    /// key without limits of its own has none, and any it had is forgotten).
    pub fn policy_for(&self, key: &ReplicaKey) -> Option<KeyPolicy> {
        let limits = &key.limits;
        if limits.is_empty() {
            self.forget_key(key.id);
            return None;
        }
        let own = if limits.ratelimits.is_empty() && !limits.credits {
            self.forget_key(key.id);
            None
        } else {
            let state = self.holder_or_new(Holder::Key(key.id));
            self.define(&state, &limits.ratelimits, limits.credits);
            Some(state)
        };
        let identity = limits
            .identity
            .as_ref()
            .map(|id| self.holder_or_new(Holder::Identity(id.clone())));
        Some(KeyPolicy {
            permissions: limits
                .permissions
                .iter()
                .map(|permission| permission.as_str().into())
                .collect(),
            key: own,
            identity,
        })
    }

    /// Forgets a deleted key's own holder; its leases are given back.
    pub fn forget_key(&self, id: KeyId) {
        if let Some((_, state)) = self.holders.remove(&Holder::Key(id)) {
            self.define(&state, &[], false);
        }
    }

    /// An identity was created or changed.
    pub fn upsert_identity(&self, identity: &Identity) {
        let state = self.holder_or_new(Holder::Identity(identity.id.clone()));
        self.define(&state, &identity.ratelimits, identity.credits);
    }

    /// An identity was deleted: it limits nothing any more (keys still naming it keep its
    /// state, empty, until they change).
    pub fn delete_identity(&self, id: &str) {
        if let Some(state) = self.holder(&Holder::Identity(id.to_owned())) {
            self.define(&state, &[], false);
        }
    }

    /// A holder's credits changed at the control plane: a gateway told "exhausted" may ask
    /// again at once.
    pub fn credits_changed(&self, holder: &Holder) {
        if let Some(state) = self.holder(holder)
            && let Some(credits) = state.lock().credits.as_mut()
        {
            credits.exhausted_until = i64::MIN;
        }
    }

    /// A snapshot was installed: its identities are all there are, and only the keys in
    /// `keys` keep a holder of their own.
    pub fn install_snapshot(&self, identities: &[Identity], keys: &HashSet<KeyId>) {
        let listed: HashSet<&str> = identities
            .iter()
            .map(|identity| identity.id.as_str())
            .collect();
        let mut gone = Vec::new();
        for entry in &self.holders {
            match entry.key() {
                Holder::Identity(id) if !listed.contains(id.as_str()) => {
                    gone.push((entry.key().clone(), false));
                }
                Holder::Key(id) if !keys.contains(id) => gone.push((entry.key().clone(), true)),
                _ => {}
            }
        }
        for (holder, remove) in gone {
            if remove {
                if let Holder::Key(id) = holder {
                    self.forget_key(id);
                }
            } else if let Holder::Identity(id) = holder {
                self.delete_identity(&id);
            }
        }
        for identity in identities {
            self.upsert_identity(identity);
        }
    }

    // ---- the request path ----

    fn link(&self, now: i64) -> LinkView {
        let connected = self.connected.load(Ordering::Relaxed);
        let heard = self.last_heard_ms.load(Ordering::Relaxed);
        LinkView {
            cut_off: !connected || now.saturating_sub(heard) > CUT_OFF_AFTER_MS,
            live_gateways: self.live_gateways.load(Ordering::Relaxed).max(1),
        }
    }

    /// The decision on a request by a key with `policy` (or without one: `None`) needing
    /// `required` permissions (sorted) and costing `cost`, at `now_unix_ms`. Ready at once
    /// unless credits must be leased first.
    pub async fn admit(
        &self,
        policy: Option<&KeyPolicy>,
        required: &[String],
        cost: u64,
        now_unix_ms: i64,
    ) -> Admission {
        let first = self.admit_now(policy, required, cost, now_unix_ms);
        self.settle(first, policy, required, cost, now_unix_ms)
            .await
    }

    /// The decision once [`Limiter::admit_now`] answered `first` for the same request: `first`
    /// itself when it decided, else after waiting for a lease (which checks again first).
    pub async fn settle(
        &self,
        first: Attempt,
        policy: Option<&KeyPolicy>,
        required: &[String],
        cost: u64,
        now_unix_ms: i64,
    ) -> Admission {
        match (first, policy) {
            (Attempt::Done(admission), _) => admission,
            (Attempt::NeedLease, Some(policy)) => {
                Box::pin(self.admit_after_lease(policy, required, cost, now_unix_ms)).await
            }
            // Only a policy with credits needs a lease.
            (Attempt::NeedLease, None) => self.refuse(Code::Stale),
        }
    }

    /// [`Limiter::admit`] without waiting: the request path calls this, and awaits
    /// [`Limiter::settle`] only for [`Attempt::NeedLease`] (a future per request cost more
    /// than the decision: BENCHMARKS.md, "Limits per key").
    #[inline]
    pub fn admit_now(
        &self,
        policy: Option<&KeyPolicy>,
        required: &[String],
        cost: u64,
        now_unix_ms: i64,
    ) -> Attempt {
        match policy {
            Some(policy) => self.try_admit(policy, required, cost, now_unix_ms),
            None if required.is_empty() => Attempt::Done(Admission::Allowed(None)),
            None => Attempt::Done(self.refuse(Code::InsufficientPermissions)),
        }
    }

    /// Waits for lease grants (at most [`LEASE_WAIT`]) and decides again.
    async fn admit_after_lease(
        &self,
        policy: &KeyPolicy,
        required: &[String],
        cost: u64,
        first_now: i64,
    ) -> Admission {
        let started = tokio::time::Instant::now();
        let deadline = started + LEASE_WAIT;
        loop {
            // Subscribed before checking, so a grant between the check and the wait wakes it.
            let mut key_grant = policy
                .key
                .as_ref()
                .map(|state| Box::pin(state.granted.notified()));
            let mut identity_grant = policy
                .identity
                .as_ref()
                .map(|state| Box::pin(state.granted.notified()));
            for waiting in key_grant.iter_mut().chain(identity_grant.iter_mut()) {
                waiting.as_mut().enable();
            }
            let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            let now = first_now.saturating_add(elapsed);
            if let Attempt::Done(admission) = self.try_admit(policy, required, cost, now) {
                return admission;
            }
            if tokio::time::Instant::now() >= deadline {
                self.refused(Code::Stale);
                return Admission::denied(Code::Stale);
            }
            let key_wait = async {
                match key_grant {
                    Some(waiting) => waiting.await,
                    None => std::future::pending().await,
                }
            };
            let identity_wait = async {
                match identity_grant {
                    Some(waiting) => waiting.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = key_wait => {}
                () = identity_wait => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn refused(&self, code: Code) {
        if let Some(metrics) = self.metrics.get() {
            metrics.limit_refused(code);
        }
    }

    /// A refusal decided outside the limiter (a session on a route that requires
    /// permissions), counted with the others.
    pub fn refuse(&self, code: Code) -> Admission {
        self.refused(code);
        Admission::denied(code)
    }

    fn deny(
        &self,
        code: Code,
        retry_after_secs: Option<u64>,
        status: Option<RateLimitStatus>,
    ) -> Attempt {
        self.refused(code);
        Attempt::Done(Admission::Denied {
            code,
            retry_after_secs,
            status,
        })
    }

    /// One decision without waiting: check everything under the holder locks (key holder
    /// first), then commit everything, or nothing.
    #[inline]
    fn try_admit(&self, policy: &KeyPolicy, required: &[String], cost: u64, now: i64) -> Attempt {
        if !policy.permits(required) {
            return self.deny(Code::InsufficientPermissions, None, None);
        }
        if policy.key.is_none() && policy.identity.is_none() {
            return Attempt::Done(Admission::Allowed(None));
        }
        let connected = self.connected.load(Ordering::Relaxed);
        let link = self.link(now);
        let mut returns = Vec::new();
        let mut holders: [Option<(&Arc<HolderState>, MutexGuard<'_, HolderInner>)>; 2] = [
            policy.key.as_ref().map(|state| (state, state.lock())),
            policy.identity.as_ref().map(|state| (state, state.lock())),
        ];

        // Credits.
        let mut need_lease = false;
        let mut refusal = None;
        for (state, inner) in holders.iter_mut().flatten() {
            let Some(credits) = inner.credits.as_mut() else {
                continue;
            };
            credits.expire(now, state.name(), &mut returns);
            match credits.check(cost, now, connected) {
                CreditCheck::Enough => {}
                CreditCheck::Exhausted => {
                    refusal = Some(Code::UsageExceeded);
                    break;
                }
                CreditCheck::Unprovable => {
                    refusal = Some(Code::Stale);
                    break;
                }
                CreditCheck::NeedLease => {
                    need_lease = true;
                    if credits.may_request(now) {
                        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
                        credits.in_flight = Some((request_id, now));
                        let wanted = credits.wanted(cost);
                        self.request_lease(state.name(), wanted, request_id);
                    }
                }
            }
        }
        if let Some(code) = refusal {
            drop(holders);
            self.queue_returns(returns);
            return self.deny(code, None, None);
        }
        if need_lease {
            drop(holders);
            self.queue_returns(returns);
            return Attempt::NeedLease;
        }

        // Rate limits.
        let mut tightest = None;
        let mut limited: Option<WindowRefusal> = None;
        for (slot, held) in holders.iter_mut().enumerate() {
            let Some((_, inner)) = held else {
                continue;
            };
            if let Err(refused) = inner.check_windows(slot, cost, now, link, &mut tightest) {
                limited = Some(match (limited, refused) {
                    (
                        Some(WindowRefusal::Full {
                            retry_after_secs: a,
                        }),
                        WindowRefusal::Full {
                            retry_after_secs: b,
                        },
                    ) => WindowRefusal::Full {
                        retry_after_secs: a.max(b),
                    },
                    (Some(full @ WindowRefusal::Full { .. }), WindowRefusal::Share) => full,
                    (_, refused) => refused,
                });
            }
        }
        // The status for the headers, made for the one limit that is shown.
        let status = tightest.and_then(|tightest| {
            holders[tightest.holder]
                .as_ref()
                .map(|(_, inner)| inner.windows[tightest.window].status(tightest.remaining, now))
        });
        if let Some(limited) = limited {
            drop(holders);
            self.queue_returns(returns);
            let retry_after = match limited {
                WindowRefusal::Full { retry_after_secs } => retry_after_secs,
                WindowRefusal::Share => {
                    // This gateway used its share of the room: tell the control plane now,
                    // so the others' counts (and so the room) come back at once.
                    locked(&self.outbox).report_now = true;
                    self.wake.notify_one();
                    1
                }
            };
            return self.deny(Code::RateLimited, Some(retry_after), status);
        }

        // Commit.
        for (state, inner) in holders.iter_mut().flatten() {
            inner.count(cost);
            if let Some(credits) = inner.credits.as_mut() {
                credits.spend(cost, now, state.name(), &mut returns);
                if credits.wants_prefetch(now) {
                    let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
                    credits.in_flight = Some((request_id, now));
                    let wanted = credits.wanted(cost);
                    self.request_lease(state.name(), wanted, request_id);
                }
            }
            if !inner.windows.is_empty() && cost > 0 && state.mark_queued() {
                locked(&self.dirty).push(Arc::clone(state));
            }
        }
        drop(holders);
        if !returns.is_empty() {
            self.queue_returns(returns);
        }
        Attempt::Done(Admission::Allowed(status))
    }

    fn request_lease(&self, holder: &str, wanted: u64, request_id: u64) {
        locked(&self.outbox).requests.push(LeaseRequest {
            holder: holder.to_owned(),
            wanted,
            request_id,
        });
        self.wake.notify_one();
    }

    /// Returns the sync client could not send: sent with the next ones.
    pub fn keep_returns(&self, returns: Vec<LeaseReturn>) {
        self.queue_returns(returns);
    }

    fn queue_returns(&self, returns: Vec<LeaseReturn>) {
        if !returns.is_empty() {
            locked(&self.outbox).returns.extend(returns);
        }
    }

    // ---- from and to the sync client ----

    /// The sync stream opened (`true`) or closed. A new stream forgets the lease requests of
    /// the old one (their grants, if any come, are still taken).
    pub fn set_connected(&self, connected: bool, now_unix_ms: i64) {
        self.connected.store(connected, Ordering::Release);
        if connected {
            self.heard(now_unix_ms);
            locked(&self.outbox).requests.clear();
            for entry in &self.holders {
                if let Some(credits) = entry.value().lock().credits.as_mut() {
                    credits.in_flight = None;
                }
            }
        }
    }

    /// Something arrived from the control plane.
    pub fn heard(&self, now_unix_ms: i64) {
        self.last_heard_ms.store(now_unix_ms, Ordering::Relaxed);
    }

    /// Waits until something must be sent before the next report tick.
    pub async fn wakeup(&self) {
        self.wake.notified().await;
    }

    /// The other gateways' use, pushed by the control plane.
    pub fn apply_usage(&self, windows: &[WindowUsage], live_gateways: u32, now_unix_ms: i64) {
        self.heard(now_unix_ms);
        self.live_gateways
            .store(u64::from(live_gateways.max(1)), Ordering::Relaxed);
        for usage in windows {
            let Ok(holder) = usage.holder.parse::<Holder>() else {
                continue;
            };
            let Some(state) = self.holder(&holder) else {
                continue;
            };
            let mut inner = state.lock();
            if let Some(window) = inner
                .windows
                .iter_mut()
                .find(|window| *window.def.name == *usage.limit)
            {
                window.roll(now_unix_ms);
                if window.start == usage.window_start_unix_ms {
                    window.others = usage.used;
                }
            }
        }
    }

    /// A lease arrived: its credits may be spent until receipt + ttl. A lease for a holder
    /// this gateway no longer has, or that has no credits, is given back at once.
    pub fn apply_grant(&self, grant: LeaseGrant, now_unix_ms: i64) {
        self.heard(now_unix_ms);
        if let Some(metrics) = self.metrics.get() {
            metrics.credit_leases.increment(1);
        }
        let state = grant
            .holder
            .parse::<Holder>()
            .ok()
            .and_then(|holder| self.holder(&holder));
        let give_back = |grant: LeaseGrant| {
            if grant.granted > 0 {
                self.queue_returns(vec![LeaseReturn {
                    lease_id: grant.lease_id,
                    holder: grant.holder,
                    unspent: grant.granted,
                }]);
            }
        };
        let Some(state) = state else {
            give_back(grant);
            return;
        };
        let list = {
            let mut inner = state.lock();
            let Some(credits) = inner.credits.as_mut() else {
                drop(inner);
                give_back(grant);
                return;
            };
            if credits
                .in_flight
                .is_some_and(|(request_id, _)| request_id == grant.request_id)
            {
                credits.in_flight = None;
            }
            if grant.granted > 0 {
                let ttl = i64::try_from(grant.ttl_ms).unwrap_or(i64::MAX);
                credits.leases.push(holder::Lease {
                    id: grant.lease_id,
                    unspent: grant.granted,
                    deadline: now_unix_ms.saturating_add(ttl),
                });
                credits.available = credits.available.saturating_add(grant.granted);
                credits.last_grant = grant.granted;
            }
            if grant.exhausted {
                credits.exhausted_until = now_unix_ms.saturating_add(holder::EXHAUSTED_FOR_MS);
            } else if grant.granted == 0 {
                credits.ask_again_at = now_unix_ms.saturating_add(holder::ASK_AGAIN_AFTER_MS);
            }
            // Listed under the holder's lock, so a sweep that unlists it agrees.
            grant.granted > 0 && !state.listed.swap(true, Ordering::AcqRel)
        };
        if list {
            locked(&self.leased).push(Arc::clone(&state));
        }
        state.granted.notify_waiters();
    }

    /// Everything to send now: the unreported use (when `report` or a report was asked for at
    /// once), lease requests, and the leases past their deadline, given back.
    pub fn take_outgoing(&self, now_unix_ms: i64, report: bool) -> Outgoing {
        let mut out = Outgoing::default();
        let report_now = {
            let mut outbox = locked(&self.outbox);
            out.requests = std::mem::take(&mut outbox.requests);
            std::mem::replace(&mut outbox.report_now, false)
        };
        if report || report_now {
            let dirty = std::mem::take(&mut *locked(&self.dirty));
            for state in dirty {
                // Unmarked first: use counted after this point queues the holder again.
                state.queued.store(false, Ordering::Release);
                state.lock().take_report(state.name(), &mut out.report);
            }
            if !out.report.is_empty()
                && let Some(metrics) = self.metrics.get()
            {
                metrics.usage_reports.increment(1);
            }
        }
        self.sweep(now_unix_ms);
        out.returns = std::mem::take(&mut locked(&self.outbox).returns);
        out
    }

    /// Gives back the leases past their deadline; forgets holders left without leases.
    fn sweep(&self, now: i64) {
        let holders = std::mem::take(&mut *locked(&self.leased));
        let mut returns = Vec::new();
        let mut keep = Vec::with_capacity(holders.len());
        for state in holders {
            let mut inner = state.lock();
            let holding = match inner.credits.as_mut() {
                Some(credits) => {
                    credits.expire(now, state.name(), &mut returns);
                    !credits.leases.is_empty()
                }
                None => false,
            };
            if !holding {
                // Under the lock: a grant after this lists the holder again.
                state.listed.store(false, Ordering::Release);
            }
            drop(inner);
            if holding {
                keep.push(state);
            }
        }
        locked(&self.leased).extend(keep);
        self.queue_returns(returns);
    }

    /// Every unspent lease, given back (shutdown): nothing is spent afterwards.
    pub fn return_everything(&self) -> Vec<LeaseReturn> {
        let holders = std::mem::take(&mut *locked(&self.leased));
        let mut returns = std::mem::take(&mut locked(&self.outbox).returns);
        for state in holders {
            let mut inner = state.lock();
            state.listed.store(false, Ordering::Release);
            if let Some(credits) = inner.credits.as_mut() {
                let taken = std::mem::take(credits);
                // The holder keeps its credits flag; only the leases go.
                *credits = holder::Credits {
                    exhausted_until: taken.exhausted_until,
                    ..holder::Credits::default()
                };
                holder::return_all(taken, state.name(), &mut returns);
            }
        }
        returns.retain(|lease| !lease.lease_id.is_empty());
        returns
    }
}

#[cfg(test)]
mod tests;
