//! The registry of gateways: who is connected, where, and which revision each has applied.
//! Serves `keygate gateways` and the `--wait` of revocations.
//!
//! Each control-plane replica holds its own streams here. When replicas share a PostgreSQL
//! database, `shared` publishes this replica's entries to the store and reads the other
//! replicas' back ([`Registry::set_remote`]), so `keygate gateways` and `--wait` on any replica
//! see every gateway. A gateway whose replica stopped publishing counts as disconnected since
//! then: it may serve for its bound after that, and no longer.
//!
//! A gateway id has at most one live stream: when a gateway reconnects before its old stream
//! has noticed the disconnect, the newer stream wins and the older one is told to end. A
//! gateway that stays disconnected longer than the configured timeout is forgotten — but never
//! while it may still be serving: a fail-closed gateway serves for at most its propagation bound
//! after it last heard from the control plane, so until then it still counts for `--wait`.
//!
//! Each stream records the credential it authenticated with ([`StreamCredential`], shown by
//! `keygate gateways` and published with the rest). A named gateway token is one gateway's,
//! and one connection's at a time: while a stream that used it is live (its gateway heard from
//! within [`LIVE_WINDOW`], on this replica or, as last read, another), a second stream with it
//! is refused instead of replacing the first, so a stolen token cannot push the real gateway
//! off; once the first has gone quiet (a restarted gateway whose old stream is half-open), the
//! second replaces it as any reconnect does. Revoking a token ends its streams here at once
//! ([`Registry::end_token_streams`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keygate_proto::Revision;
use keygate_proto::time::now_unix_ms;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::store::{GatewayRecord, PublishedGateway};

pub mod shared;

/// How often a replica publishes its gateways (its heartbeat), when nothing changes sooner.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// A replica silent for this long is taken as gone: its gateways count as disconnected since
/// its last heartbeat plus one interval (when they may last have had a pong from it).
pub const REPLICA_SILENCE: Duration = Duration::from_secs(5);

/// What a gateway says about itself in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHello {
    pub id: String,
    pub region: String,
    pub address: String,
    pub version: String,
    pub applied: Revision,
    /// The gateway's propagation bound; `None` when it did not say (then
    /// [`DEFAULT_PROPAGATION_BOUND`] is assumed).
    pub propagation_bound: Option<Duration>,
    /// "fail-closed" or "serve"; empty when the gateway did not say (then fail-closed).
    pub stale_policy: String,
}

/// The contract's default bound, assumed for a gateway that does not report its own.
pub const DEFAULT_PROPAGATION_BOUND: Duration = Duration::from_secs(60);

/// How long after its gateway was last heard from a stream with a named token counts as live,
/// so that a second stream with the same token is refused. Gateways ping every second by
/// default and give up on a stream after three silent intervals, so a live one is heard
/// several times within it; another replica's rows are read every second. A gateway whose
/// old stream was cut without a word can reconnect this long after it last spoke on it.
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);

/// What a stream authenticated with.
#[derive(Clone, PartialEq, Eq)]
pub enum StreamCredential {
    /// The shared `--gateway-token`.
    Shared,
    /// A verified client certificate naming this gateway id.
    Certificate(String),
    /// A named gateway token: one live stream at a time. Its hash lets a revocation find the
    /// stream.
    Token { name: String, token_hash: [u8; 32] },
}

impl StreamCredential {
    /// How `keygate gateways` shows it: "token:NAME", "certificate:ID" or "shared".
    pub fn label(&self) -> String {
        match self {
            Self::Shared => "shared".to_owned(),
            Self::Certificate(id) => format!("certificate:{id}"),
            Self::Token { name, .. } => format!("token:{name}"),
        }
    }

    fn token_hash(&self) -> Option<[u8; 32]> {
        match self {
            Self::Token { token_hash, .. } => Some(*token_hash),
            Self::Shared | Self::Certificate(_) => None,
        }
    }
}

impl std::fmt::Debug for StreamCredential {
    /// The label: the hash stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// Why [`Registry::connect`] refused a stream: its named token is in use by a live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInUse {
    /// The credential's label, "token:NAME".
    pub credential: String,
    /// How long ago the live stream's gateway was last heard from.
    pub heard_ago: Duration,
    /// The replica serving the live stream, when it is another one.
    pub replica_id: Option<String>,
}

/// One gateway as `keygate gateways` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    pub id: String,
    pub region: String,
    pub address: String,
    pub version: String,
    pub applied: Revision,
    /// Last message of any kind from the gateway.
    pub last_seen_unix_ms: i64,
    /// When its current (or last) stream opened.
    pub connected_unix_ms: i64,
    pub connected: bool,
    /// The gateway's staleness as it reported it in its latest ping; `None` before its first
    /// proof of freshness.
    pub staleness_ms: Option<u64>,
    pub propagation_bound: Duration,
    pub stale_policy: String,
    /// What its stream authenticated with ([`StreamCredential::label`]).
    pub credential: String,
}

impl GatewayStatus {
    /// Whether the gateway keeps serving past its bound.
    pub fn serves_when_stale(&self) -> bool {
        self.stale_policy == "serve"
    }
}

/// The answer to [`Registry::wait_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitOutcome {
    /// Every gateway that may be serving has applied the revision.
    pub complete: bool,
    pub elapsed: Duration,
    /// Gateways that have applied it, by id.
    pub acked: Vec<String>,
    /// Gateways that may be serving and have not applied it.
    pub pending: Vec<GatewayStatus>,
    /// Disconnected fail-closed gateways that have not applied it but are past their bound
    /// since they last heard from the control plane, so they refuse every credential.
    pub past_bound: Vec<String>,
}

/// One sync stream's membership in the registry.
#[derive(Debug, Clone)]
pub struct Session {
    pub gateway_id: String,
    number: u64,
    /// Cancelled when the stream must end: shutdown, replacement, revocation of its token, or
    /// the stream's own end.
    pub stop: CancellationToken,
    replaced: Arc<AtomicBool>,
    revoked: Arc<AtomicBool>,
}

impl Session {
    /// Whether a newer stream with the same gateway id took over.
    pub fn was_replaced(&self) -> bool {
        self.replaced.load(Ordering::Acquire)
    }

    /// Whether the named token the stream authenticated with was revoked.
    pub fn was_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

struct Entry {
    status: GatewayStatus,
    session: Session,
    /// The hash of the named token the stream used, if it used one.
    token_hash: Option<[u8; 32]>,
    /// When the gateway was last heard from on this stream (monotonic: for liveness).
    heard_at: Instant,
    disconnected_at: Option<Instant>,
    /// The same instant on the wall clock, for other replicas.
    disconnected_unix_ms: Option<i64>,
}

/// A gateway on another replica, as that replica last published it.
#[derive(Debug, Clone)]
struct RemoteGateway {
    status: GatewayStatus,
    replica_id: String,
    /// When its stream ended (or its replica went silent); `None` while it is connected.
    disconnected_at: Option<Instant>,
}

/// Where a gateway stands with respect to one revision.
enum Standing {
    Acked,
    /// May be serving without it; for a disconnected gateway, until the given instant (`None`:
    /// indefinitely, because it serves when stale).
    Pending(Option<Instant>),
    PastBound,
}

/// Where `status` stands with respect to `revision`, given when its stream ended.
fn standing(
    status: &GatewayStatus,
    disconnected_at: Option<Instant>,
    revision: Revision,
    now: Instant,
) -> Standing {
    if status.applied >= revision {
        return Standing::Acked;
    }
    let Some(since) = disconnected_at else {
        return Standing::Pending(None);
    };
    if status.serves_when_stale() {
        return Standing::Pending(None);
    }
    // The gateway's latest proof of freshness is from a ping answered before the stream
    // ended, so it refuses credentials by one bound after the end at the latest.
    let serves_until = since + status.propagation_bound;
    if now < serves_until {
        Standing::Pending(Some(serves_until))
    } else {
        Standing::PastBound
    }
}

/// Whether a gateway may be forgotten: disconnected longer than `timeout`, and no longer
/// serving (past its bound, unless it serves when stale).
fn forgettable(
    status: &GatewayStatus,
    disconnected_at: Option<Instant>,
    timeout: Duration,
    now: Instant,
) -> bool {
    let Some(since) = disconnected_at else {
        return false;
    };
    let gone = now.saturating_duration_since(since);
    gone >= timeout && (status.serves_when_stale() || gone >= status.propagation_bound)
}

/// Connected and recently connected gateways.
pub struct Registry {
    gateways: Mutex<HashMap<String, Entry>>,
    /// What the other replicas published, by gateway id (empty on a single node).
    remote: Mutex<HashMap<String, RemoteGateway>>,
    /// This replica's id in the shared registry.
    replica_id: String,
    timeout: Duration,
    sessions: AtomicU64,
    /// Bumped on every connect, ack and disconnect, to wake waiters.
    changes: watch::Sender<u64>,
    /// Bumped by [`Registry::set_remote`], to wake waiters.
    remote_changes: watch::Sender<u64>,
    /// `wait_for` calls in progress: while there are any, other replicas' acks are read often.
    waiters: AtomicU64,
}

impl Registry {
    /// An empty registry that forgets gateways disconnected for longer than `timeout`.
    /// `replica_id` names this control plane among replicas sharing one database.
    /// Publishes a connected-gateway count of 0 at once, so a control plane that never had a
    /// gateway shows 0 rather than no series (the alert on it needs a value).
    pub fn new(timeout: Duration, replica_id: String) -> Self {
        metrics::connected_gateways(0);
        Self {
            gateways: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            replica_id,
            timeout,
            sessions: AtomicU64::new(0),
            changes: watch::Sender::new(0),
            remote_changes: watch::Sender::new(0),
            waiters: AtomicU64::new(0),
        }
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Registers a new stream that authenticated with `credential`. `shutdown` ends it along
    /// with the server. An older stream with the same gateway id is told to end, unless the
    /// credential is a named token that a live stream uses: then this one is refused.
    pub fn connect(
        &self,
        hello: GatewayHello,
        credential: StreamCredential,
        shutdown: &CancellationToken,
    ) -> Result<Session, CredentialInUse> {
        let now = now_unix_ms();
        let label = credential.label();
        let token_hash = credential.token_hash();
        let mut gateways = self.lock();
        if token_hash.is_some() {
            // This replica's own stream is judged by the monotonic clock; another replica's
            // by the wall-clock time it published.
            if let Some(entry) = gateways.get(&hello.id)
                && entry.status.connected
                && entry.status.credential == label
                && entry.heard_at.elapsed() < LIVE_WINDOW
            {
                return Err(CredentialInUse {
                    credential: label,
                    heard_ago: entry.heard_at.elapsed(),
                    replica_id: None,
                });
            }
            if let Some(remote) = lock(&self.remote).get(&hello.id)
                && remote.status.connected
                && remote.status.credential == label
            {
                let heard_ago = Duration::from_millis(
                    u64::try_from(now.saturating_sub(remote.status.last_seen_unix_ms)).unwrap_or(0),
                );
                if heard_ago < LIVE_WINDOW {
                    return Err(CredentialInUse {
                        credential: label,
                        heard_ago,
                        replica_id: Some(remote.replica_id.clone()),
                    });
                }
            }
        }
        let session = Session {
            gateway_id: hello.id.clone(),
            number: self.sessions.fetch_add(1, Ordering::Relaxed),
            stop: shutdown.child_token(),
            replaced: Arc::new(AtomicBool::new(false)),
            revoked: Arc::new(AtomicBool::new(false)),
        };
        let entry = Entry {
            status: GatewayStatus {
                id: hello.id,
                region: hello.region,
                address: hello.address,
                version: hello.version,
                applied: hello.applied,
                last_seen_unix_ms: now,
                connected_unix_ms: now,
                connected: true,
                staleness_ms: None,
                propagation_bound: hello.propagation_bound.unwrap_or(DEFAULT_PROPAGATION_BOUND),
                stale_policy: if hello.stale_policy.is_empty() {
                    "fail-closed".to_owned()
                } else {
                    hello.stale_policy
                },
                credential: label,
            },
            session: session.clone(),
            token_hash,
            heard_at: Instant::now(),
            disconnected_at: None,
            disconnected_unix_ms: None,
        };
        if let Some(old) = gateways.insert(session.gateway_id.clone(), entry)
            && old.disconnected_at.is_none()
        {
            old.session.replaced.store(true, Ordering::Release);
            old.session.stop.cancel();
        }
        self.publish_count(&gateways);
        drop(gateways);
        self.changed();
        Ok(session)
    }

    /// Ends this replica's open streams whose named token `revoked` says is revoked (by its
    /// hash); returns their gateway ids, sorted. Each stream tells its gateway why, and its
    /// gateway is then disconnected like any other.
    pub fn end_token_streams(&self, revoked: impl Fn(&[u8; 32]) -> bool) -> Vec<String> {
        let gateways = self.lock();
        let mut ended: Vec<String> = gateways
            .values()
            .filter(|entry| entry.disconnected_at.is_none())
            .filter(|entry| entry.token_hash.as_ref().is_some_and(&revoked))
            .map(|entry| {
                entry.session.revoked.store(true, Ordering::Release);
                entry.session.stop.cancel();
                entry.status.id.clone()
            })
            .collect();
        ended.sort();
        ended
    }

    /// Whether any open stream here authenticated with a named token.
    pub fn has_token_streams(&self) -> bool {
        self.lock()
            .values()
            .any(|entry| entry.disconnected_at.is_none() && entry.token_hash.is_some())
    }

    /// Notes a message of any kind from the gateway.
    pub fn seen(&self, session: &Session) {
        let mut gateways = self.lock();
        if let Some(entry) = gateways.get_mut(&session.gateway_id)
            && entry.session.number == session.number
        {
            entry.status.last_seen_unix_ms = now_unix_ms();
            entry.heard_at = Instant::now();
        }
    }

    /// Notes the staleness a gateway reported in a ping.
    pub fn reported_staleness(&self, session: &Session, staleness_ms: Option<u64>) {
        self.update(session, |status| status.staleness_ms = staleness_ms);
    }

    /// Records an ack. Returns the revision the gateway had applied before, or `None` when
    /// this stream is no longer the gateway's current one.
    pub fn ack(&self, session: &Session, revision: Revision) -> Option<Revision> {
        let previous = self.update(session, |status| {
            status.last_seen_unix_ms = now_unix_ms();
            // Not a max: after a snapshot from a restored store a gateway may legitimately
            // report a lower revision than before.
            std::mem::replace(&mut status.applied, revision)
        });
        self.changed();
        previous
    }

    /// Marks the stream's gateway disconnected, unless a newer stream has taken its place.
    pub fn disconnect(&self, session: &Session) {
        let mut gateways = self.lock();
        if let Some(entry) = gateways.get_mut(&session.gateway_id)
            && entry.session.number == session.number
        {
            entry.status.connected = false;
            entry.disconnected_at = Some(Instant::now());
            entry.disconnected_unix_ms = Some(now_unix_ms());
        }
        self.publish_count(&gateways);
        drop(gateways);
        self.changed();
    }

    /// Forgets gateways disconnected for longer than the timeout that can no longer be serving.
    pub fn prune(&self) {
        let mut gateways = self.lock();
        let (timeout, now) = (self.timeout, Instant::now());
        gateways
            .retain(|_, entry| !forgettable(&entry.status, entry.disconnected_at, timeout, now));
    }

    /// Waits until every gateway that may be serving has applied `revision`, or `timeout`
    /// runs out. Gateways that connect meanwhile count too; a disconnected fail-closed gateway
    /// stops counting once it is past its bound (it refuses everything by then).
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> WaitOutcome {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut changes = self.changes.subscribe();
        let mut remote_changes = self.remote_changes.subscribe();
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = scopeguard(|| {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        });
        // Wakes the shared registry's loop, which now reads other replicas' acks often.
        self.changed();
        loop {
            changes.borrow_and_update();
            remote_changes.borrow_and_update();
            let now = Instant::now();
            let mut outcome = WaitOutcome {
                complete: false,
                elapsed: started.elapsed(),
                acked: Vec::new(),
                pending: Vec::new(),
                past_bound: Vec::new(),
            };
            let mut next_change: Option<Instant> = None;
            for (status, disconnected_at) in self.views() {
                match standing(&status, disconnected_at, revision, now) {
                    Standing::Acked => outcome.acked.push(status.id),
                    Standing::PastBound => outcome.past_bound.push(status.id),
                    Standing::Pending(until) => {
                        outcome.pending.push(status);
                        next_change = next_change.min(until).or(until);
                    }
                }
            }
            outcome.acked.sort();
            outcome.past_bound.sort();
            outcome.pending.sort_by(|a, b| a.id.cmp(&b.id));
            outcome.complete = outcome.pending.is_empty();
            if outcome.complete || now >= deadline {
                return outcome;
            }
            // Wake on any registry change, when a lost gateway passes its bound, or at the end.
            let wake = next_change.map_or(deadline, |until| deadline.min(until));
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return outcome;
                    }
                }
                changed = remote_changes.changed() => {
                    if changed.is_err() {
                        return outcome;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Every known gateway, on this replica and (as last read) on the others, ordered by id.
    pub fn list(&self) -> Vec<GatewayStatus> {
        self.prune();
        let (timeout, now) = (self.timeout, Instant::now());
        let mut list: Vec<GatewayStatus> = self
            .views()
            .into_iter()
            .filter(|(status, disconnected_at)| {
                !forgettable(status, *disconnected_at, timeout, now)
            })
            .map(|(status, _)| status)
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Whether a `wait_for` is in progress (then other replicas' acks are worth reading often).
    pub fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::Acquire) > 0
    }

    /// A receiver that wakes on every local connect, ack and disconnect.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// This replica's gateways as rows for the shared registry.
    pub fn records(&self) -> Vec<GatewayRecord> {
        self.lock()
            .values()
            .map(|entry| {
                let status = &entry.status;
                GatewayRecord {
                    gateway_id: status.id.clone(),
                    replica_id: self.replica_id.clone(),
                    region: status.region.clone(),
                    address: status.address.clone(),
                    version: status.version.clone(),
                    applied: status.applied,
                    last_seen_unix_ms: status.last_seen_unix_ms,
                    connected_unix_ms: status.connected_unix_ms,
                    disconnected_unix_ms: entry.disconnected_unix_ms,
                    staleness_ms: status.staleness_ms,
                    propagation_bound_ms: u64::try_from(status.propagation_bound.as_millis())
                        .unwrap_or(u64::MAX),
                    stale_policy: status.stale_policy.clone(),
                    credential: status.credential.clone(),
                }
            })
            .collect()
    }

    /// Replaces what the other replicas published (rows of this replica are skipped: its own
    /// entries are the truth). A row whose replica has been silent for [`REPLICA_SILENCE`] is
    /// a gateway that lost its control plane when that replica last beat.
    pub fn set_remote(&self, rows: Vec<PublishedGateway>, now_unix_ms: i64) {
        let now = Instant::now();
        let at = |unix_ms: i64| {
            let ago = u64::try_from(now_unix_ms.saturating_sub(unix_ms)).unwrap_or(0);
            now.checked_sub(Duration::from_millis(ago)).unwrap_or(now)
        };
        let silence_ms = i64::try_from(REPLICA_SILENCE.as_millis()).unwrap_or(i64::MAX);
        let interval_ms = i64::try_from(PUBLISH_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        let remote =
            rows.into_iter()
                .filter(|row| row.record.replica_id != self.replica_id)
                .map(|row| {
                    let record = row.record;
                    let replica_silent =
                        now_unix_ms.saturating_sub(row.replica_seen_unix_ms) >= silence_ms;
                    let disconnected_unix_ms = record.disconnected_unix_ms.or(replica_silent
                        .then(|| row.replica_seen_unix_ms.saturating_add(interval_ms)));
                    let status = GatewayStatus {
                        id: record.gateway_id,
                        region: record.region,
                        address: record.address,
                        version: record.version,
                        applied: record.applied,
                        last_seen_unix_ms: record.last_seen_unix_ms,
                        connected_unix_ms: record.connected_unix_ms,
                        connected: disconnected_unix_ms.is_none(),
                        staleness_ms: record.staleness_ms,
                        propagation_bound: Duration::from_millis(record.propagation_bound_ms),
                        stale_policy: record.stale_policy,
                        credential: record.credential,
                    };
                    let gateway = RemoteGateway {
                        status,
                        replica_id: record.replica_id,
                        disconnected_at: disconnected_unix_ms.map(at),
                    };
                    (gateway.status.id.clone(), gateway)
                })
                .collect();
        *lock(&self.remote) = remote;
        self.remote_changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Every gateway with when its stream ended: this replica's entries, and the other
    /// replicas' where this replica has no open stream of the same gateway and theirs opened
    /// later.
    fn views(&self) -> Vec<(GatewayStatus, Option<Instant>)> {
        let mut views: HashMap<String, (GatewayStatus, Option<Instant>)> = self
            .lock()
            .values()
            .map(|entry| {
                (
                    entry.status.id.clone(),
                    (entry.status.clone(), entry.disconnected_at),
                )
            })
            .collect();
        for (id, remote) in lock(&self.remote).iter() {
            let newer = views.get(id).is_none_or(|(local, _)| {
                !local.connected && remote.status.connected_unix_ms >= local.connected_unix_ms
            });
            if newer {
                views.insert(id.clone(), (remote.status.clone(), remote.disconnected_at));
            }
        }
        views.into_values().collect()
    }

    fn update<T>(
        &self,
        session: &Session,
        change: impl FnOnce(&mut GatewayStatus) -> T,
    ) -> Option<T> {
        let mut gateways = self.lock();
        let entry = gateways.get_mut(&session.gateway_id)?;
        (entry.session.number == session.number).then(|| change(&mut entry.status))
    }

    fn changed(&self) {
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    fn publish_count(&self, gateways: &HashMap<String, Entry>) {
        metrics::connected_gateways(gateways.values().filter(|e| e.status.connected).count());
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.gateways)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hello(id: &str, applied: u64) -> GatewayHello {
        GatewayHello {
            id: id.into(),
            region: "eu".into(),
            address: "10.0.0.1:8080".into(),
            version: "0.1.0".into(),
            applied: Revision(applied),
            propagation_bound: Some(Duration::from_secs(60)),
            stale_policy: String::new(),
        }
    }

    #[test]
    fn newer_stream_with_the_same_id_wins() {
        let registry = Registry::new(Duration::from_secs(60), "cp-test".into());
        let shutdown = CancellationToken::new();
        let first = registry
            .connect(hello("gw-1", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        let second = registry
            .connect(hello("gw-1", 5), StreamCredential::Shared, &shutdown)
            .unwrap();
        assert!(first.stop.is_cancelled() && first.was_replaced());
        assert!(!second.stop.is_cancelled());
        // The old stream's late ack and disconnect do not touch the new one's entry.
        assert_eq!(registry.ack(&first, Revision(9)), None);
        registry.disconnect(&first);
        let list = registry.list();
        assert_eq!(list.len(), 1);
        assert!(list[0].connected);
        assert_eq!(list[0].applied, Revision(5));
        assert_eq!(registry.ack(&second, Revision(7)), Some(Revision(5)));
        assert_eq!(registry.list()[0].applied, Revision(7));
    }

    #[tokio::test(start_paused = true)]
    async fn disconnected_gateways_are_dropped_after_the_timeout_and_their_bound() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::ZERO, "cp-test".into());
        let session = registry
            .connect(hello("gw-1", 0), StreamCredential::Shared, &shutdown)
            .unwrap();
        assert_eq!(
            registry.list().len(),
            1,
            "connected gateways are never pruned"
        );
        registry.disconnect(&session);
        // Zero timeout, but a fail-closed gateway may serve for its 60 s bound: kept until then.
        assert_eq!(registry.list().len(), 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(registry.list().is_empty());

        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        let session = registry
            .connect(hello("gw-2", 0), StreamCredential::Shared, &shutdown)
            .unwrap();
        registry.disconnect(&session);
        tokio::time::advance(Duration::from_secs(120)).await;
        let list = registry.list();
        assert_eq!(list.len(), 1);
        assert!(!list[0].connected);
        tokio::time::advance(Duration::from_secs(200)).await;
        assert!(registry.list().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_once_every_connected_gateway_has_acked() {
        let shutdown = CancellationToken::new();
        let registry = Arc::new(Registry::new(Duration::from_secs(300), "cp-test".into()));
        let a = registry
            .connect(hello("a", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        let b = registry
            .connect(hello("b", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        let waiter = {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                registry
                    .wait_for(Revision(5), Duration::from_secs(10))
                    .await
            })
        };
        tokio::task::yield_now().await;
        registry.ack(&a, Revision(5));
        tokio::time::advance(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "b has not acked");
        registry.ack(&b, Revision(6));
        let outcome = waiter.await.unwrap();
        assert!(outcome.complete);
        assert_eq!(outcome.acked, ["a", "b"]);
        assert!(outcome.pending.is_empty());
        assert_eq!(outcome.elapsed, Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_times_out_naming_the_gateways_that_did_not_ack() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        let a = registry
            .connect(hello("a", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        registry
            .connect(hello("b", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        registry.ack(&a, Revision(4));
        let outcome = registry.wait_for(Revision(4), Duration::from_secs(2)).await;
        assert!(!outcome.complete);
        assert_eq!(outcome.elapsed, Duration::from_secs(2));
        assert_eq!(outcome.acked, ["a"]);
        let pending: Vec<&str> = outcome.pending.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(pending, ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_fail_closed_gateway_counts_until_its_bound_has_passed() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        let mut lost = hello("lost", 3);
        lost.propagation_bound = Some(Duration::from_secs(5));
        let session = registry
            .connect(lost, StreamCredential::Shared, &shutdown)
            .unwrap();
        let mut serving = hello("serving-when-stale", 3);
        serving.stale_policy = "serve".into();
        let serve_session = registry
            .connect(serving, StreamCredential::Shared, &shutdown)
            .unwrap();
        registry.disconnect(&session);
        registry.disconnect(&serve_session);

        tokio::time::advance(Duration::from_secs(1)).await;
        let outcome = registry
            .wait_for(Revision(4), Duration::from_secs(60))
            .await;
        // The fail-closed one is fenced 5 s after it was lost; the other may serve forever.
        assert!(!outcome.complete);
        assert_eq!(outcome.past_bound, ["lost"]);
        assert_eq!(outcome.pending[0].id, "serving-when-stale");
        assert_eq!(outcome.elapsed, Duration::from_secs(60));

        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        let mut lost = hello("lost", 3);
        lost.propagation_bound = Some(Duration::from_secs(5));
        let session = registry
            .connect(lost, StreamCredential::Shared, &shutdown)
            .unwrap();
        registry.disconnect(&session);
        let outcome = registry
            .wait_for(Revision(4), Duration::from_secs(60))
            .await;
        assert!(
            outcome.complete,
            "complete once the lost gateway is past its bound"
        );
        assert_eq!(outcome.elapsed, Duration::from_secs(5));
        assert_eq!(outcome.past_bound, ["lost"]);
    }

    fn published(
        id: &str,
        replica: &str,
        applied: u64,
        replica_seen_unix_ms: i64,
    ) -> PublishedGateway {
        PublishedGateway {
            record: GatewayRecord {
                gateway_id: id.into(),
                replica_id: replica.into(),
                region: "us".into(),
                address: "10.0.0.2:8080".into(),
                version: "0.1.0".into(),
                applied: Revision(applied),
                last_seen_unix_ms: replica_seen_unix_ms,
                connected_unix_ms: replica_seen_unix_ms - 1_000,
                disconnected_unix_ms: None,
                staleness_ms: Some(5),
                propagation_bound_ms: 60_000,
                stale_policy: "fail-closed".into(),
                credential: "shared".into(),
            },
            replica_seen_unix_ms,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gateways_of_other_replicas_count_for_wait_and_are_listed() {
        let shutdown = CancellationToken::new();
        let registry = Arc::new(Registry::new(Duration::from_secs(300), "cp-test".into()));
        let local = registry
            .connect(hello("local", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        let now = now_unix_ms();
        // Our own row, read back from the store, is ignored: the local entry is the truth.
        registry.set_remote(
            vec![
                published("remote", "cp-other", 3, now),
                published("local", "cp-test", 1, now),
            ],
            now,
        );
        let ids: Vec<String> = registry.list().into_iter().map(|g| g.id).collect();
        assert_eq!(ids, ["local", "remote"]);

        let waiter = {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                registry
                    .wait_for(Revision(4), Duration::from_secs(10))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        registry.ack(&local, Revision(4));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiter.is_finished(),
            "the other replica's gateway has not acked"
        );
        assert!(registry.has_waiters());
        registry.set_remote(vec![published("remote", "cp-other", 4, now)], now);
        let outcome = waiter.await.unwrap();
        assert!(outcome.complete);
        assert_eq!(outcome.acked, ["local", "remote"]);
        assert!(!registry.has_waiters());
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_of_a_silent_replica_is_fenced_one_bound_after_its_last_heartbeat() {
        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        let now = now_unix_ms();
        // Its replica last beat 30 s ago: the gateway may serve until 31 s + its 60 s bound.
        let mut row = published("orphan", "cp-dead", 3, now - 30_000);
        row.record.propagation_bound_ms = 60_000;
        registry.set_remote(vec![row], now);
        let listed = registry.list();
        assert!(
            !listed[0].connected,
            "a silent replica's gateway is not connected"
        );
        let outcome = registry
            .wait_for(Revision(4), Duration::from_secs(120))
            .await;
        assert!(outcome.complete);
        assert_eq!(outcome.past_bound, ["orphan"]);
        assert_eq!(outcome.elapsed, Duration::from_secs(31));
    }

    fn token(name: &str, hash: u8) -> StreamCredential {
        StreamCredential::Token {
            name: name.into(),
            token_hash: [hash; 32],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_named_token_serves_one_live_stream_at_a_time() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        let first = registry
            .connect(hello("gw-a", 3), token("gw-a", 1), &shutdown)
            .unwrap();
        assert_eq!(registry.list()[0].credential, "token:gw-a");

        // While the first is heard from, a second stream with the token is refused, and the
        // first goes on undisturbed.
        for _ in 0..3 {
            tokio::time::advance(LIVE_WINDOW - Duration::from_secs(1)).await;
            registry.seen(&first);
            let refused = registry
                .connect(hello("gw-a", 3), token("gw-a", 1), &shutdown)
                .unwrap_err();
            assert_eq!(refused.credential, "token:gw-a");
            assert_eq!(refused.replica_id, None);
            assert!(!first.stop.is_cancelled());
        }

        // Silent for the whole window (a half-open stream of a restarted gateway): the new
        // stream takes over, as any reconnect does.
        tokio::time::advance(LIVE_WINDOW).await;
        let second = registry
            .connect(hello("gw-a", 3), token("gw-a", 1), &shutdown)
            .unwrap();
        assert!(first.was_replaced() && first.stop.is_cancelled());

        // A stream that ended frees the token at once.
        registry.disconnect(&second);
        let third = registry
            .connect(hello("gw-a", 3), token("gw-a", 1), &shutdown)
            .unwrap();
        assert!(!second.was_replaced());
        assert!(!third.stop.is_cancelled());

        // The shared token and certificates keep the newest-stream-wins rule.
        let shared = registry
            .connect(hello("gw-b", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        registry
            .connect(hello("gw-b", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        assert!(shared.was_replaced());
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_live_on_another_replica_is_refused_here() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        let now = now_unix_ms();
        let mut row = published("gw-a", "cp-other", 3, now);
        row.record.credential = "token:gw-a".into();
        row.record.last_seen_unix_ms = now - 1_000;
        registry.set_remote(vec![row.clone()], now);
        let refused = registry
            .connect(hello("gw-a", 3), token("gw-a", 1), &shutdown)
            .unwrap_err();
        assert_eq!(refused.replica_id.as_deref(), Some("cp-other"));
        assert!(refused.heard_ago >= Duration::from_secs(1), "{refused:?}");

        // Another credential of the same gateway is not that token's stream.
        let mut other = row.clone();
        other.record.credential = "shared".into();
        registry.set_remote(vec![other], now);
        assert!(
            registry
                .connect(hello("gw-a", 3), token("gw-a", 1), &shutdown)
                .is_ok()
        );

        // Not heard from for the whole window there: the gateway may move here.
        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        row.record.last_seen_unix_ms = now - 6_000;
        registry.set_remote(vec![row], now);
        assert!(
            registry
                .connect(hello("gw-a", 3), token("gw-a", 1), &shutdown)
                .is_ok()
        );
    }

    #[test]
    fn revoking_a_token_ends_only_its_open_streams() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::from_secs(300), "cp-test".into());
        assert!(!registry.has_token_streams());
        let a = registry
            .connect(hello("gw-a", 3), token("gw-a", 1), &shutdown)
            .unwrap();
        let b = registry
            .connect(hello("gw-b", 3), token("gw-b", 2), &shutdown)
            .unwrap();
        let shared = registry
            .connect(hello("gw-c", 3), StreamCredential::Shared, &shutdown)
            .unwrap();
        assert!(registry.has_token_streams());
        assert_eq!(
            registry.end_token_streams(|hash| *hash == [1; 32]),
            ["gw-a"]
        );
        assert!(a.was_revoked() && a.stop.is_cancelled());
        assert!(!b.stop.is_cancelled() && !shared.stop.is_cancelled());
        registry.disconnect(&a);
        // An ended stream is not ended twice.
        assert_eq!(
            registry.end_token_streams(|_| true),
            ["gw-b"],
            "the shared stream has no token to revoke"
        );
        registry.disconnect(&b);
        assert!(!registry.has_token_streams());
    }

    #[test]
    fn shutdown_stops_every_session() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::from_secs(60), "cp-test".into());
        let a = registry
            .connect(hello("a", 0), StreamCredential::Shared, &shutdown)
            .unwrap();
        let b = registry
            .connect(hello("b", 0), StreamCredential::Shared, &shutdown)
            .unwrap();
        shutdown.cancel();
        assert!(a.stop.is_cancelled() && b.stop.is_cancelled());
        assert!(!a.was_replaced());
    }
}
