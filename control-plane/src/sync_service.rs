//! The Sync gRPC service: one replication stream per gateway, and point lookups of keys that
//! have not reached a gateway yet. Authentication runs before any method, in the layer around
//! the service (`auth::layer`), which leaves the [`GatewayCredential`] in the request.
//!
//! Who may be which gateway: the shared `--gateway-token` may say hello as any id; a named
//! gateway token only as the id it is bound to, and with a client CA only as the id the
//! client certificate names (a Hello claiming another is PERMISSION_DENIED, counted in
//! `keygate_sync_refused_total{reason}`). A named token serves one live stream at a time (see
//! `registry`). Acks carry no gateway id: they count for the id the stream said hello as, so a
//! gateway cannot ack for another. A revoked token's streams end at once on the replica that
//! revoked it, and within [`TOKEN_RECHECK_INTERVAL`] on every other ([`recheck_tokens`]).
//!
//! Each stream is two tasks sharing one bounded outbound channel:
//! - the writer sends the snapshot or the missed events, then follows the head of the event
//!   log (woken by its `watch` channel, reading from its in-memory ring, falling back to the
//!   store), so every event reaches the gateway once, in order, with no gap;
//! - the reader answers pings and records acks in the registry;
//! - limits (DESIGN.md, "Limits and permissions per key"): the reader hands usage reports to
//!   the aggregator (in memory, at once) and lease requests and returns to the stream's lease
//!   task, which asks the store, several at a time; a third task pushes the usage updates the
//!   gateway is owed, at most one per [`PUSH_GAP`]. Their answers share the outbound channel,
//!   so neither a slow store nor a burst of reports holds up events or pongs. A lease is
//!   recorded for the id the stream said hello as; a grant that can no longer be sent (the
//!   stream ended) is returned at once.
//!
//! Log identity (DESIGN.md, "Storage and a highly available control plane"): the gateway's
//! Hello names the log its revisions belong to; a gateway of another log gets a snapshot, never
//! events, since its revisions say nothing about this log. SnapshotBegin and Pong name this
//! store's log, so a gateway can tell an older copy of its own log (a restored backup, whose head
//! is below what the gateway applied) and refuse it: that decision is the gateway's.
//!
//! A pong's head is the store's committed head, read after the ping arrived, never this
//! replica's in-memory head: replicas sharing one database would otherwise vouch with a head
//! they have not caught up with. A replica that cannot read its store sends no pong, so its
//! gateways go stale at their bound or fail over instead of being told they are current.
//!
//! A gateway that stops reading fills its channel; when a send has waited too long its stream
//! ends (it reconnects and resumes from its applied revision) instead of holding anyone else up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use keygate_proto::pb::control_message::Msg as ControlMsg;
use keygate_proto::pb::gateway_message::Msg as GatewayMsg;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{Event, KeyHash, LogId, Revision, pb};
use keygate_transport::ConnectInfo;
use prost::Message;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::GatewayCredential;
use crate::event_log::EventLog;
use crate::limits::{Limits, PUSH_GAP, Subscription};
use crate::metrics;
use crate::registry::{GatewayHello, Registry, Session, StreamCredential};
use crate::store::{LogBounds, SessionState, Store};

/// Most keys in one snapshot chunk.
pub const SNAPSHOT_CHUNK_KEYS: usize = 5000;
/// Most events in one batch.
pub const EVENT_BATCH_EVENTS: usize = 1000;
/// Encoded size at which a chunk or batch is cut short, well under gRPC's default 4 MiB
/// receive limit even when keys carry large meta maps.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Lease requests and returns of one stream being answered at once (more wait in its queue).
const LEASES_IN_FLIGHT: usize = 16;
/// Lease requests and returns queued per stream before its reader waits.
const LEASE_QUEUE: usize = 1024;
/// Longest gateway id, in characters.
const MAX_GATEWAY_ID_CHARS: usize = 128;
/// Longest region, version or address in a hello, in characters.
const MAX_HELLO_FIELD_CHARS: usize = 256;
/// How often each replica checks that the named tokens of its open streams still exist, so a
/// token revoked through another replica ends its streams here within this (new calls with it
/// fail at once everywhere: every call looks its token up).
pub const TOKEN_RECHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Timing and buffering of sync streams.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// How long one outbound message may wait for room in a full channel before the stream is
    /// ended as too slow.
    pub send_timeout: Duration,
    /// Outbound messages buffered per stream.
    pub channel_capacity: usize,
    /// Whether gateways must present a client certificate (the listener has a client CA). The
    /// gateway's id is then its certificate's, and a Hello claiming another is refused.
    pub require_client_certificate: bool,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(5),
            channel_capacity: 256,
            require_client_certificate: false,
        }
    }
}

type Outbound = mpsc::Sender<Result<pb::ControlMessage, Status>>;

/// The Sync service.
#[derive(Clone)]
pub struct SyncService {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Store>,
    event_log: Arc<EventLog>,
    registry: Arc<Registry>,
    /// Usage aggregation and the lease service.
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    settings: SyncSettings,
    /// The committed heads that pongs carry.
    pong_heads: PongHeads,
}

impl SyncService {
    /// A service whose streams all end when `shutdown` is cancelled.
    pub fn new(
        store: Arc<dyn Store>,
        event_log: Arc<EventLog>,
        registry: Arc<Registry>,
        limits: Arc<Limits>,
        shutdown: CancellationToken,
        settings: SyncSettings,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                event_log,
                registry,
                limits,
                shutdown,
                settings,
                pong_heads: PongHeads::default(),
            }),
        }
    }
}

#[tonic::async_trait]
impl pb::sync_server::Sync for SyncService {
    type StreamStream = ReceiverStream<Result<pb::ControlMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::GatewayMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let credential = authenticated(&request)?;
        let connection = request.extensions().get::<ConnectInfo>();
        let remote = connection.and_then(|info| info.remote);
        let certified_id = self.shared.certified_gateway(connection, remote)?;
        let (tx, rx) = mpsc::channel(self.shared.settings.channel_capacity.max(1));
        let shared = Arc::clone(&self.shared);
        tokio::spawn(run_stream(
            shared,
            request.into_inner(),
            tx,
            remote,
            Credentials {
                presented: credential,
                certified_id,
            },
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup_key(
        &self,
        request: Request<pb::LookupKeyRequest>,
    ) -> Result<Response<pb::LookupKeyResponse>, Status> {
        authenticated(&request)?;
        let connection = request.extensions().get::<ConnectInfo>();
        self.shared
            .certified_gateway(connection, connection.and_then(|info| info.remote))?;
        let bytes = request.into_inner().key_hash;
        let hash = KeyHash::from_slice(&bytes).ok_or_else(|| {
            Status::invalid_argument(format!("key_hash must be 32 bytes, got {}", bytes.len()))
        })?;
        let (key, head) = self.shared.store.key_by_hash(hash).await.map_err(|error| {
            tracing::error!(%error, "key lookup failed in the store");
            Status::internal("internal store error; see the control plane's log")
        })?;
        // The log id never changes while a store is open; the answer names it so a gateway
        // holding another log's revisions can tell (and discard it).
        let log_id = self.shared.store.log_bounds().await.map_err(|error| {
            tracing::error!(%error, "key lookup failed in the store");
            Status::internal("internal store error; see the control plane's log")
        })?;
        metrics::lookup(key.is_some());
        Ok(Response::new(pb::LookupKeyResponse {
            key_revision: key.as_ref().map_or(0, |key| key.revision.0),
            key: key.map(|key| pb::ReplicaKey::from(&key.replica())),
            head_revision: head.0,
            log_id: log_id.log_id.0,
        }))
    }
}

/// The credential the authentication layer found for `request`. Every call passes that layer;
/// should one not have, it is refused (fail closed).
fn authenticated<T>(request: &Request<T>) -> Result<GatewayCredential, Status> {
    request
        .extensions()
        .get::<GatewayCredential>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

/// What a stream's gateway proved about itself: its bearer token and, with a client CA, the id
/// its certificate names.
struct Credentials {
    presented: GatewayCredential,
    certified_id: Option<String>,
}

impl Credentials {
    /// Refuses a Hello for `claimed` when a credential names another gateway id.
    fn check_claim(
        &self,
        claimed: &str,
        remote: Option<std::net::SocketAddr>,
    ) -> Result<(), Status> {
        if let Some(certified) = &self.certified_id
            && certified != claimed
        {
            tracing::warn!(
                certificate = %certified,
                claimed = %claimed,
                remote = ?remote,
                "sync refused: the Hello claims another gateway id than the client certificate names"
            );
            metrics::sync_refused("identity_mismatch");
            return Err(Status::permission_denied(format!(
                "the client certificate identifies gateway {certified:?}, but the Hello claims {claimed:?}"
            )));
        }
        if let GatewayCredential::Token(token) = &self.presented
            && token.gateway_id != claimed
        {
            tracing::warn!(
                token = %token.name,
                bound_to = %token.gateway_id,
                claimed = %claimed,
                remote = ?remote,
                "sync refused: the Hello claims another gateway id than its gateway token is bound to"
            );
            metrics::sync_refused("credential_mismatch");
            return Err(Status::permission_denied(format!(
                "the gateway token {:?} is bound to gateway {:?}, but the Hello claims {claimed:?}",
                token.name, token.gateway_id
            )));
        }
        Ok(())
    }

    /// The credential the registry records for the stream: the named token when there is one
    /// (it is what a revocation ends), else the certificate, else the shared token.
    fn for_registry(&self) -> StreamCredential {
        match (&self.presented, &self.certified_id) {
            (GatewayCredential::Token(token), _) => StreamCredential::Token {
                name: token.name.clone(),
                token_hash: token.token_hash,
            },
            (GatewayCredential::Shared, Some(id)) => StreamCredential::Certificate(id.clone()),
            (GatewayCredential::Shared, None) => StreamCredential::Shared,
        }
    }
}

impl Shared {
    /// The gateway id the connection's client certificate names, when this control plane
    /// requires one (mutual TLS); `None` when it does not. A connection without a verified
    /// certificate, or with one naming no DNS or URI SAN, is refused.
    fn certified_gateway(
        &self,
        connection: Option<&ConnectInfo>,
        remote: Option<std::net::SocketAddr>,
    ) -> Result<Option<String>, Status> {
        if !self.settings.require_client_certificate {
            return Ok(None);
        }
        let Some(chain) = connection.and_then(|info| info.peer_certificates.as_ref()) else {
            tracing::warn!(remote = ?remote, "sync refused: no client certificate");
            metrics::sync_refused("no_client_certificate");
            return Err(Status::unauthenticated(
                "this control plane requires a client certificate (mutual TLS): set the gateway's client_cert and client_key",
            ));
        };
        match chain
            .first()
            .and_then(keygate_transport::identity::first_san)
        {
            Some(id) => Ok(Some(id)),
            None => {
                tracing::warn!(remote = ?remote, "sync refused: the client certificate names no DNS or URI SAN");
                metrics::sync_refused("certificate_without_name");
                Err(Status::unauthenticated(
                    "the client certificate names no DNS or URI subject alternative name to identify the gateway",
                ))
            }
        }
    }
}

/// Why a stream's writer stopped.
enum End {
    /// Shutdown, replacement by a newer stream, or the reader saw the gateway leave.
    Stopped,
    /// The gateway closed the stream or the connection.
    Gone,
    /// The outbound channel stayed full for the whole send timeout.
    TooSlow,
    /// Something the gateway should hear about.
    Failed(Status),
}

async fn run_stream(
    shared: Arc<Shared>,
    mut inbound: Streaming<pb::GatewayMessage>,
    tx: Outbound,
    remote: Option<std::net::SocketAddr>,
    credentials: Credentials,
) {
    let hello = match tokio::time::timeout(shared.settings.hello_timeout, inbound.next()).await {
        Err(_) => {
            let message = format!(
                "expected Hello within {}s of opening the stream",
                shared.settings.hello_timeout.as_secs()
            );
            let _ = tx.try_send(Err(Status::invalid_argument(message)));
            return;
        }
        Ok(None) | Ok(Some(Err(_))) => return,
        Ok(Some(Ok(pb::GatewayMessage {
            msg: Some(GatewayMsg::Hello(hello)),
        }))) => hello,
        Ok(Some(Ok(_))) => {
            let status =
                Status::invalid_argument("the first message of a sync stream must be Hello");
            let _ = tx.try_send(Err(status));
            return;
        }
    };
    let (hello, gateway_log) = match check_hello(hello) {
        Ok(checked) => checked,
        Err(status) => {
            let _ = tx.try_send(Err(status));
            return;
        }
    };
    if let Err(status) = credentials.check_claim(&hello.id, remote) {
        let _ = tx.try_send(Err(status));
        return;
    }
    let applied = hello.applied;
    let credential = credentials.for_registry();
    let session = match shared
        .registry
        .connect(hello.clone(), credential.clone(), &shared.shutdown)
    {
        Ok(session) => session,
        Err(in_use) => {
            let heard_ms = u64::try_from(in_use.heard_ago.as_millis()).unwrap_or(u64::MAX);
            let replica = in_use.replica_id.as_deref().unwrap_or("this one");
            tracing::warn!(
                gateway_id = %hello.id,
                credential = %in_use.credential,
                heard_ms,
                replica,
                remote = ?remote,
                "sync refused: a live stream already uses this gateway token"
            );
            metrics::sync_refused("credential_in_use");
            let status = Status::already_exists(format!(
                "a live sync stream of gateway {:?} already uses {} (heard from {heard_ms} ms ago, \
                 on control-plane replica {replica}); a gateway token serves one connection at a \
                 time: is another gateway using this one's token? A restarted gateway is let in \
                 once its old stream has been silent for {} s",
                hello.id,
                in_use.credential,
                crate::registry::LIVE_WINDOW.as_secs()
            ));
            let _ = tx.try_send(Err(status));
            return;
        }
    };
    let _registered = Registered {
        registry: Arc::clone(&shared.registry),
        session: session.clone(),
    };
    tracing::info!(
        gateway_id = %hello.id,
        region = %hello.region,
        version = %hello.version,
        log_id = %gateway_log,
        applied = %applied,
        remote = ?remote,
        credential = ?credential,
        "gateway connected"
    );

    let subscription = shared.limits.usage.attach(&hello.id);
    let _subscribed = Subscribed {
        limits: Arc::clone(&shared.limits),
        subscription: subscription.clone(),
    };
    let (lease_ops, lease_queue) = mpsc::channel(LEASE_QUEUE);
    let leases = tokio::spawn(lease_loop(
        Arc::clone(&shared),
        lease_queue,
        tx.clone(),
        session.clone(),
    ));
    let pusher = tokio::spawn(push_usage(
        Arc::clone(&shared),
        subscription,
        tx.clone(),
        session.clone(),
    ));
    let reader = tokio::spawn(read_loop(
        Arc::clone(&shared),
        inbound,
        tx.clone(),
        session.clone(),
        lease_ops,
    ));
    let end = write_loop(&shared, &tx, &session, &gateway_log, applied).await;
    session.stop.cancel();
    let _ = reader.await;
    let _ = pusher.await;
    // Returns already queued still reach the store; requests are dropped (nobody to answer).
    let _ = leases.await;

    let farewell = match end {
        End::Failed(status) => Some(status),
        End::Stopped if session.was_revoked() => Some(Status::unauthenticated(
            "the gateway token this stream authenticated with was revoked",
        )),
        End::Stopped if session.was_replaced() => Some(Status::aborted(
            "replaced by a newer sync stream with the same gateway id",
        )),
        End::Stopped if shared.shutdown.is_cancelled() => {
            Some(Status::unavailable("the control plane is shutting down"))
        }
        End::TooSlow => {
            tracing::warn!(gateway_id = %hello.id, "ending the sync stream of a gateway that does not keep up");
            None
        }
        End::Stopped | End::Gone => None,
    };
    if let Some(status) = farewell {
        let _ = tx.try_send(Err(status));
    }
    tracing::info!(gateway_id = %hello.id, "gateway disconnected");
}

/// Marks the gateway disconnected however its stream ends.
struct Registered {
    registry: Arc<Registry>,
    session: Session,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.disconnect(&self.session);
    }
}

/// Ends the stream's subscription to usage updates however the stream ends.
struct Subscribed {
    limits: Arc<Limits>,
    subscription: Subscription,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.limits.usage.detach(&self.subscription);
    }
}

/// Ends this replica's streams whose named gateway token no longer exists (revoked through any
/// replica), every [`TOKEN_RECHECK_INTERVAL`] until `stop`. One store read per round, and
/// none while no open stream used a named token. A store that cannot be read ends nothing:
/// the replica cannot vouch for its gateways then anyway (no pongs), so they go stale.
pub async fn recheck_tokens(
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(TOKEN_RECHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !registry.has_token_streams() {
            continue;
        }
        let tokens = match store.list_tokens().await {
            Ok(tokens) => tokens,
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot check the gateway tokens of open sync streams");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        let live: std::collections::HashSet<[u8; 32]> =
            tokens.into_iter().map(|token| token.token_hash).collect();
        let ended = registry.end_token_streams(|hash| !live.contains(hash));
        if !ended.is_empty() {
            metrics::token_streams_ended(ended.len());
            tracing::warn!(gateways = ?ended, "ended the sync streams of revoked gateway tokens");
        }
    }
}

/// Checks a Hello; returns what the registry keeps of it and the log id of the gateway's
/// revisions (unknown when it has none or does not say).
fn check_hello(hello: pb::Hello) -> Result<(GatewayHello, LogId), Status> {
    let printable = |text: &str| !text.chars().any(char::is_control);
    if hello.gateway_id.is_empty() {
        return Err(Status::invalid_argument("Hello.gateway_id is required"));
    }
    if hello.gateway_id.chars().count() > MAX_GATEWAY_ID_CHARS || !printable(&hello.gateway_id) {
        return Err(Status::invalid_argument(format!(
            "Hello.gateway_id must be at most {MAX_GATEWAY_ID_CHARS} printable characters"
        )));
    }
    for (field, value) in [
        ("region", &hello.region),
        ("version", &hello.version),
        ("address", &hello.address),
        ("log_id", &hello.log_id),
    ] {
        if value.chars().count() > MAX_HELLO_FIELD_CHARS || !printable(value) {
            return Err(Status::invalid_argument(format!(
                "Hello.{field} must be at most {MAX_HELLO_FIELD_CHARS} printable characters"
            )));
        }
    }
    let gateway = GatewayHello {
        id: hello.gateway_id,
        region: hello.region,
        address: hello.address,
        version: hello.version,
        applied: Revision(hello.applied_revision),
        propagation_bound: (hello.propagation_bound_ms > 0)
            .then(|| Duration::from_millis(hello.propagation_bound_ms)),
        stale_policy: match hello.stale_policy.as_str() {
            "" | "fail-closed" | "serve" => hello.stale_policy,
            _ => {
                return Err(Status::invalid_argument(
                    "Hello.stale_policy must be \"fail-closed\" or \"serve\"",
                ));
            }
        },
    };
    Ok((gateway, LogId(hello.log_id)))
}

/// Whether a gateway at `applied` of log `gateway_log` must start over from a snapshot: it has
/// nothing, its revisions are of another log, it is ahead of the log (the store was restored:
/// the snapshot tells it so, and the gateway refuses it when the log is its own), or the events
/// it needs were compacted away. An unknown log id on either side (a peer from before log ids)
/// compares revisions alone, as then.
fn needs_snapshot(applied: Revision, gateway_log: &LogId, bounds: &LogBounds) -> bool {
    applied == Revision::ZERO
        || another_log(gateway_log, &bounds.log_id)
        || applied > bounds.head
        || applied.next() < bounds.oldest_retained
}

/// Whether the gateway's revisions are known to be of another log than this store's.
fn another_log(gateway_log: &LogId, ours: &LogId) -> bool {
    !gateway_log.is_unknown() && !ours.is_unknown() && gateway_log != ours
}

async fn write_loop(
    shared: &Shared,
    tx: &Outbound,
    session: &Session,
    gateway_log: &LogId,
    applied: Revision,
) -> End {
    let sender = Sender {
        tx,
        stop: &session.stop,
        timeout: shared.settings.send_timeout,
    };
    let mut head = shared.event_log.subscribe();
    let bounds = match shared.store.log_bounds().await {
        Ok(bounds) => bounds,
        Err(error) => return store_failure(&error),
    };
    let mut sent = applied;
    if needs_snapshot(applied, gateway_log, &bounds) {
        if applied != Revision::ZERO && another_log(gateway_log, &bounds.log_id) {
            tracing::info!(
                gateway_id = %session.gateway_id,
                gateway_log = %gateway_log,
                log_id = %bounds.log_id,
                applied = %applied,
                "the gateway holds revisions of another log; sending a snapshot"
            );
        }
        match send_snapshot(shared, &sender, &bounds.log_id).await {
            Ok(revision) => sent = revision,
            Err(end) => return end,
        }
    }
    loop {
        if session.stop.is_cancelled() {
            return End::Stopped;
        }
        let target = *head.borrow_and_update();
        if sent < target {
            let events = match shared.event_log.events_after(sent, EVENT_BATCH_EVENTS) {
                Some(events) if !events.is_empty() => events,
                _ => match shared.store.events_after(sent, EVENT_BATCH_EVENTS).await {
                    Ok(events) => events,
                    Err(error) => return store_failure(&error),
                },
            };
            match events.first() {
                Some(first) if first.revision == sent.next() => {}
                // The events after `sent` are gone (compacted under us) or missing: the
                // gateway must resync, which it does on a fresh stream.
                _ => {
                    return End::Failed(Status::unavailable(format!(
                        "events after revision {sent} are no longer available; reconnect to resync"
                    )));
                }
            }
            match send_events(&sender, &events).await {
                Ok(last) => sent = last,
                Err(end) => return end,
            }
            continue;
        }
        tokio::select! {
            () = session.stop.cancelled() => return End::Stopped,
            changed = head.changed() => {
                if changed.is_err() {
                    return End::Stopped;
                }
            }
        }
    }
}

fn store_failure(error: &crate::store::StoreError) -> End {
    tracing::error!(%error, "sync stream failed to read the store");
    End::Failed(Status::unavailable(
        "the control plane cannot read its store; reconnect later",
    ))
}

/// Sends messages to one gateway, giving up when it is stopped or does not keep up.
struct Sender<'a> {
    tx: &'a Outbound,
    stop: &'a CancellationToken,
    timeout: Duration,
}

impl Sender<'_> {
    async fn send(&self, msg: ControlMsg) -> Result<(), End> {
        let message = pb::ControlMessage { msg: Some(msg) };
        tokio::select! {
            () = self.stop.cancelled() => Err(End::Stopped),
            sent = self.tx.send_timeout(Ok(message), self.timeout) => match sent {
                Ok(()) => Ok(()),
                Err(SendTimeoutError::Timeout(_)) => Err(End::TooSlow),
                Err(SendTimeoutError::Closed(_)) => Err(End::Gone),
            },
        }
    }
}

/// Sends a snapshot of log `log_id` consistent at one revision; returns that revision.
async fn send_snapshot(
    shared: &Shared,
    sender: &Sender<'_>,
    log_id: &LogId,
) -> Result<Revision, End> {
    let snapshot = shared
        .store
        .snapshot()
        .await
        .map_err(|e| store_failure(&e))?;
    let revision = snapshot.revision;
    sender
        .send(ControlMsg::SnapshotBegin(pb::SnapshotBegin {
            revision: revision.0,
            key_count: snapshot.keys.len() as u64,
            log_id: log_id.0.clone(),
        }))
        .await?;
    let mut chunk = pb::SnapshotChunk::default();
    let mut bytes = 0;
    for key in &snapshot.keys {
        let key = pb::ReplicaKey::from(key);
        let size = key.encoded_len() + 8;
        if !chunk.keys.is_empty()
            && (chunk.keys.len() == SNAPSHOT_CHUNK_KEYS || bytes + size > MAX_MESSAGE_BYTES)
        {
            sender
                .send(ControlMsg::SnapshotChunk(std::mem::take(&mut chunk)))
                .await?;
            bytes = 0;
        }
        bytes += size;
        chunk.keys.push(key);
    }
    // The identities and the session state at the same revision follow the keys, in chunks
    // bounded alike.
    let mut items = chunk.keys.len();
    let identities = snapshot
        .identities
        .iter()
        .map(|identity| SnapshotEntry::Identity(identity.into()));
    for entry in identities.chain(SnapshotEntry::all(&snapshot.sessions)) {
        let size = entry.encoded_len() + 8;
        if items > 0 && (items == SNAPSHOT_CHUNK_KEYS || bytes + size > MAX_MESSAGE_BYTES) {
            sender
                .send(ControlMsg::SnapshotChunk(std::mem::take(&mut chunk)))
                .await?;
            bytes = 0;
            items = 0;
        }
        bytes += size;
        items += 1;
        entry.add_to(&mut chunk);
    }
    if items > 0 {
        sender.send(ControlMsg::SnapshotChunk(chunk)).await?;
    }
    sender
        .send(ControlMsg::SnapshotEnd(pb::SnapshotEnd {
            revision: revision.0,
        }))
        .await?;
    Ok(revision)
}

/// One entry of a snapshot besides its keys: an identity or session state (SnapshotChunk
/// fields 2 to 5 and 10).
enum SnapshotEntry {
    Identity(pb::Identity),
    SigningKey(pb::SigningKey),
    RevokedSession(pb::SessionRevoked),
    RevokedPasskey(pb::PasskeyRevoked),
    User(pb::UserState),
}

impl SnapshotEntry {
    /// Every entry of `state`.
    fn all(state: &SessionState) -> impl Iterator<Item = Self> + '_ {
        let keys = state
            .signing_keys
            .iter()
            .map(|k| Self::SigningKey(k.into()));
        let sessions = state
            .revoked_sessions
            .iter()
            .map(|s| Self::RevokedSession(s.into()));
        let passkeys = state
            .revoked_passkeys
            .iter()
            .map(|p| Self::RevokedPasskey(p.into()));
        let users = state.users.iter().map(|u| Self::User(u.into()));
        keys.chain(sessions).chain(passkeys).chain(users)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Identity(m) => m.encoded_len(),
            Self::SigningKey(m) => m.encoded_len(),
            Self::RevokedSession(m) => m.encoded_len(),
            Self::RevokedPasskey(m) => m.encoded_len(),
            Self::User(m) => m.encoded_len(),
        }
    }

    fn add_to(self, chunk: &mut pb::SnapshotChunk) {
        match self {
            Self::Identity(m) => chunk.identities.push(m),
            Self::SigningKey(m) => chunk.signing_keys.push(m),
            Self::RevokedSession(m) => chunk.revoked_sessions.push(m),
            Self::RevokedPasskey(m) => chunk.revoked_passkeys.push(m),
            Self::User(m) => chunk.users.push(m),
        }
    }
}

/// Sends contiguous events in batches; returns the last revision sent.
async fn send_events(sender: &Sender<'_>, events: &[Event]) -> Result<Revision, End> {
    let mut batch = pb::EventBatch::default();
    let mut bytes = 0;
    let mut last = Revision::ZERO;
    for event in events {
        let message = pb::Event::from(event);
        let size = message.encoded_len() + 8;
        if !batch.events.is_empty()
            && (batch.events.len() == EVENT_BATCH_EVENTS || bytes + size > MAX_MESSAGE_BYTES)
        {
            sender
                .send(ControlMsg::Events(std::mem::take(&mut batch)))
                .await?;
            bytes = 0;
        }
        bytes += size;
        batch.events.push(message);
        last = event.revision;
    }
    if !batch.events.is_empty() {
        sender.send(ControlMsg::Events(batch)).await?;
    }
    Ok(last)
}

async fn read_loop(
    shared: Arc<Shared>,
    mut inbound: Streaming<pb::GatewayMessage>,
    tx: Outbound,
    session: Session,
    lease_ops: mpsc::Sender<LeaseOp>,
) {
    let sender = Sender {
        tx: &tx,
        stop: &session.stop,
        timeout: shared.settings.send_timeout,
    };
    loop {
        let message = tokio::select! {
            () = session.stop.cancelled() => return,
            message = inbound.next() => message,
        };
        let msg = match message {
            Some(Ok(message)) => message.msg,
            Some(Err(status)) => {
                tracing::debug!(gateway_id = %session.gateway_id, %status, "sync stream read failed");
                break;
            }
            None => break,
        };
        shared.registry.seen(&session);
        match msg {
            Some(GatewayMsg::Ping(ping)) => {
                shared
                    .registry
                    .reported_staleness(&session, ping.staleness_ms);
                let Some(bounds) = shared.committed_log().await else {
                    continue;
                };
                let pong = pb::Pong {
                    nonce: ping.nonce,
                    sent_at_nanos: ping.sent_at_nanos,
                    head_revision: bounds.head.0,
                    log_id: bounds.log_id.0,
                };
                if sender.send(ControlMsg::Pong(pong)).await.is_err() {
                    break;
                }
            }
            Some(GatewayMsg::Ack(ack)) => record_ack(&shared, &session, Revision(ack.revision)),
            Some(GatewayMsg::Usage(report)) => {
                let reported =
                    shared
                        .limits
                        .usage
                        .report(&session.gateway_id, &report, now_unix_ms());
                if reported.ignored > 0 {
                    tracing::debug!(gateway_id = %session.gateway_id, ignored = reported.ignored, "ignored windows of a usage report");
                }
            }
            Some(GatewayMsg::LeaseRequest(request)) => {
                // Fails only once the lease task is gone, which it is not before this loop ends.
                let _ = lease_ops.send(LeaseOp::Request(request)).await;
            }
            Some(GatewayMsg::LeaseReturn(returned)) => {
                let _ = lease_ops.send(LeaseOp::Return(returned)).await;
            }
            Some(GatewayMsg::Hello(_)) => {
                let status = Status::invalid_argument("Hello may only be sent once per stream");
                let _ = tx.try_send(Err(status));
                break;
            }
            // A message kind from a newer gateway: nothing to do with it.
            None => {}
        }
    }
    // The gateway left or broke the protocol: stop the writer too.
    session.stop.cancel();
}

/// A lease message of one stream, for its lease task.
enum LeaseOp {
    Request(pb::LeaseRequest),
    Return(pb::LeaseReturn),
}

/// Answers one stream's lease requests and takes its returns, [`LEASES_IN_FLIGHT`] at a time,
/// until the reader is gone and every queued return has reached the store.
async fn lease_loop(
    shared: Arc<Shared>,
    mut ops: mpsc::Receiver<LeaseOp>,
    tx: Outbound,
    session: Session,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(LEASES_IN_FLIGHT));
    let mut running = tokio::task::JoinSet::new();
    while let Some(op) = ops.recv().await {
        while running.try_join_next().is_some() {}
        if matches!(op, LeaseOp::Request(_)) && session.stop.is_cancelled() {
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let (shared, tx, session) = (Arc::clone(&shared), tx.clone(), session.clone());
        running.spawn(async move {
            answer_lease(&shared, &tx, &session, op).await;
            drop(permit);
        });
    }
    running.join_all().await;
}

async fn answer_lease(shared: &Shared, tx: &Outbound, session: &Session, op: LeaseOp) {
    let gateway_id = &session.gateway_id;
    match op {
        LeaseOp::Request(request) => {
            let grant = shared.limits.lease(gateway_id, &request).await;
            let sender = Sender {
                tx,
                stop: &session.stop,
                timeout: shared.settings.send_timeout,
            };
            let (lease_id, granted) = (grant.lease_id.clone(), grant.granted);
            if sender.send(ControlMsg::Lease(grant)).await.is_err() && granted > 0 {
                // The gateway will never spend it: give it back rather than write it off.
                if let Err(error) = shared
                    .limits
                    .give_back(gateway_id, &lease_id, granted)
                    .await
                {
                    tracing::warn!(%gateway_id, %lease_id, %error, "cannot return an undelivered lease; it is written off when it expires");
                }
            }
        }
        LeaseOp::Return(returned) => {
            if let Err(error) = shared
                .limits
                .give_back(gateway_id, &returned.lease_id, returned.unspent)
                .await
            {
                tracing::error!(%gateway_id, lease_id = %returned.lease_id, %error, "cannot take back a returned lease; it is written off when it expires");
            }
        }
    }
}

/// Sends the gateway the usage updates it is owed, at most one per [`PUSH_GAP`], until its
/// stream stops.
async fn push_usage(
    shared: Arc<Shared>,
    subscription: Subscription,
    tx: Outbound,
    session: Session,
) {
    let sender = Sender {
        tx: &tx,
        stop: &session.stop,
        timeout: shared.settings.send_timeout,
    };
    loop {
        tokio::select! {
            () = session.stop.cancelled() => return,
            () = subscription.notify.notified() => {}
        }
        if let Some(update) = shared.limits.take_update(&subscription) {
            if sender.send(ControlMsg::Usage(update)).await.is_err() {
                return;
            }
            metrics::usage_update_pushed();
        }
        // Reports arriving meanwhile leave one wake-up: they become the next update.
        tokio::select! {
            () = session.stop.cancelled() => return,
            () = tokio::time::sleep(PUSH_GAP) => {}
        }
    }
}

impl Shared {
    /// The store's log id and committed head, read after this call began, for a pong; `None`
    /// when the store cannot be read (then no pong is sent: see the module docs).
    async fn committed_log(&self) -> Option<LogBounds> {
        let bounds = self.pong_heads.read(self.store.as_ref()).await;
        if bounds.is_none() {
            metrics::pong_withheld();
        }
        bounds
    }
}

/// Reads of the committed head for pongs, shared by every stream of this replica: pings that
/// arrive while a read is running share the next read, so a replica with many gateways reads
/// its store about once per read time rather than once per ping. A ping never gets a read that
/// began before it arrived: that read may miss a commit the gateway has already applied.
#[derive(Default)]
struct PongHeads {
    /// Reads begun so far; a read numbered above the count a ping saw on arrival began after.
    begun: AtomicU64,
    /// The latest read, by number: what it found (`None`: the store could not be read). Held
    /// during a read, so reads run one at a time.
    latest: tokio::sync::Mutex<Option<(u64, Option<LogBounds>)>>,
    /// Whether the latest read failed: failures are logged once per streak.
    failing: AtomicBool,
}

impl PongHeads {
    async fn read(&self, store: &dyn Store) -> Option<LogBounds> {
        let arrived = self.begun.load(Ordering::SeqCst);
        let mut latest = self.latest.lock().await;
        if let Some((number, bounds)) = latest.as_ref()
            && *number > arrived
        {
            return bounds.clone();
        }
        let number = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        let bounds = match store.log_bounds().await {
            Ok(bounds) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("the store answers again: answering pings again");
                }
                Some(bounds)
            }
            Err(error) => {
                if self.failing.swap(true, Ordering::AcqRel) {
                    tracing::debug!(%error, "withholding pongs: cannot read the committed head");
                } else {
                    tracing::warn!(
                        %error,
                        "cannot read the committed head from the store: withholding pongs until it \
                         answers, so that no gateway is told it is current"
                    );
                }
                None
            }
        };
        *latest = Some((number, bounds.clone()));
        bounds
    }
}

fn record_ack(shared: &Shared, session: &Session, revision: Revision) {
    if revision > shared.event_log.head() {
        tracing::debug!(gateway_id = %session.gateway_id, %revision, "ignoring an ack beyond the head");
        return;
    }
    let previous = shared.registry.ack(session, revision);
    if previous.is_some_and(|previous| revision > previous)
        && let Some(committed) = shared.event_log.committed_at(revision)
    {
        metrics::propagation(committed.elapsed());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_decision() {
        let ours = LogId("log_ours".into());
        let bounds = LogBounds {
            log_id: ours.clone(),
            oldest_retained: Revision(10),
            head: Revision(20),
        };
        for gateway_log in [&ours, &LogId::default()] {
            assert!(
                needs_snapshot(Revision(0), gateway_log, &bounds),
                "nothing applied"
            );
            assert!(
                needs_snapshot(Revision(21), gateway_log, &bounds),
                "ahead of the log"
            );
            assert!(
                needs_snapshot(Revision(8), gateway_log, &bounds),
                "needs compacted event 9"
            );
            assert!(
                !needs_snapshot(Revision(9), gateway_log, &bounds),
                "event 10 is still kept"
            );
            assert!(
                !needs_snapshot(Revision(20), gateway_log, &bounds),
                "up to date"
            );
        }
        // Revisions of another log say nothing about this one, however they compare.
        let other = LogId("log_other".into());
        for applied in [9, 15, 20] {
            assert!(
                needs_snapshot(Revision(applied), &other, &bounds),
                "{applied}"
            );
        }
        // A store that does not know its log id compares revisions alone, as before log ids.
        let unnamed = LogBounds {
            log_id: LogId::default(),
            ..bounds
        };
        assert!(!needs_snapshot(Revision(15), &other, &unnamed));
    }

    #[test]
    fn hellos_are_checked() {
        let hello = |id: &str| pb::Hello {
            gateway_id: id.into(),
            ..pb::Hello::default()
        };
        let (checked, log_id) = check_hello(hello("gw-1")).unwrap();
        assert_eq!((checked.id.as_str(), log_id), ("gw-1", LogId::default()));
        let named = pb::Hello {
            log_id: "log_abc".into(),
            ..hello("gw-1")
        };
        assert_eq!(check_hello(named).unwrap().1, LogId("log_abc".into()));
        let too_long = pb::Hello {
            log_id: "x".repeat(MAX_HELLO_FIELD_CHARS + 1),
            ..hello("gw-1")
        };
        assert!(check_hello(too_long).is_err());
        assert_eq!(
            check_hello(hello("")).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(check_hello(hello(&"x".repeat(129))).is_err());
        assert!(check_hello(hello("a\nb")).is_err());
    }

    /// A pong's head is the store's committed head with its log id, not this replica's
    /// in-memory head; there is no pong while the store cannot be read; and pings that arrive
    /// during a read share the next one, never an earlier one.
    #[tokio::test]
    async fn pongs_vouch_with_the_committed_head_or_not_at_all() {
        use std::task::{Context, Poll, Waker};

        use crate::keys::{CreateKey, Keys};
        use crate::store::sqlite::SqliteStore;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let committed = Arc::new(EventLog::new(16));
        let store = SqliteStore::open(&path, committed as _).await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let keys = Keys::new(Arc::clone(&store));
        let create = || CreateKey {
            owner: "alice".into(),
            ..CreateKey::default()
        };
        for _ in 0..2 {
            keys.create(create(), "test").await.unwrap();
        }
        // This replica's in-memory log has not seen those commits (another replica made them).
        let registry = Arc::new(Registry::new(Duration::from_secs(60), "cp-test".into()));
        let shared = Shared {
            limits: Arc::new(Limits::new(Arc::clone(&store), Arc::clone(&registry))),
            store,
            event_log: Arc::new(EventLog::new(16)),
            registry,
            shutdown: CancellationToken::new(),
            settings: SyncSettings::default(),
            pong_heads: PongHeads::default(),
        };
        assert_eq!(shared.event_log.head(), Revision::ZERO);
        let bounds = shared.committed_log().await.unwrap();
        assert_eq!(bounds.head, Revision(2));
        assert!(!bounds.log_id.is_unknown());

        // Three pings arrive while a read runs (the lock held here stands for it): they share
        // one read, begun after they arrived, which sees the commit made meanwhile.
        let running = shared.pong_heads.latest.lock().await;
        let mut pings: Vec<_> = (0..3).map(|_| Box::pin(shared.committed_log())).collect();
        let mut cx = Context::from_waker(Waker::noop());
        for ping in &mut pings {
            assert!(matches!(ping.as_mut().poll(&mut cx), Poll::Pending));
        }
        keys.create(create(), "test").await.unwrap();
        let begun = shared.pong_heads.begun.load(Ordering::SeqCst);
        drop(running);
        for ping in pings {
            assert_eq!(ping.await.unwrap().head, Revision(3));
        }
        assert_eq!(
            shared.pong_heads.begun.load(Ordering::SeqCst),
            begun + 1,
            "three pings, one read"
        );

        // The store cannot be read: nothing to vouch with, however often the gateway asks, and
        // no earlier read stands in.
        let sqlite = rusqlite::Connection::open(&path).unwrap();
        sqlite
            .execute_batch("ALTER TABLE log_state RENAME TO log_state_away")
            .unwrap();
        assert!(shared.committed_log().await.is_none());
        assert!(shared.committed_log().await.is_none());
        assert!(shared.pong_heads.failing.load(Ordering::Acquire));

        sqlite
            .execute_batch("ALTER TABLE log_state_away RENAME TO log_state")
            .unwrap();
        let bounds = shared.committed_log().await.unwrap();
        assert_eq!(bounds.head, Revision(3));
        assert!(!shared.pong_heads.failing.load(Ordering::Acquire));
    }

    /// A token revoked elsewhere (here: straight in the store, as another replica would) ends
    /// the streams that used it at the next check; streams of live tokens and of the shared
    /// token go on.
    #[tokio::test]
    async fn streams_of_tokens_revoked_elsewhere_end_at_the_next_check() {
        use crate::store::sqlite::SqliteStore;
        use crate::store::{NewToken, TokenStore};

        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            &dir.path().join("db"),
            Arc::new(crate::store::suite::Recorder::default()),
        )
        .await
        .unwrap();
        for (name, hash) in [("gw-a", 1), ("gw-b", 2)] {
            let token = NewToken {
                name: name.into(),
                token_hash: [hash; 32],
                scopes: Vec::new(),
                gateway_id: Some(name.into()),
            };
            store.create_token(token, "admin").await.unwrap();
        }
        let registry = Arc::new(Registry::new(Duration::from_secs(60), "cp-test".into()));
        let shutdown = CancellationToken::new();
        let hello = |id: &str| GatewayHello {
            id: id.into(),
            region: String::new(),
            address: String::new(),
            version: String::new(),
            applied: Revision::ZERO,
            propagation_bound: None,
            stale_policy: String::new(),
        };
        let token = |name: &str, hash: u8| StreamCredential::Token {
            name: name.into(),
            token_hash: [hash; 32],
        };
        let a = registry
            .connect(hello("gw-a"), token("gw-a", 1), &shutdown)
            .unwrap();
        let b = registry
            .connect(hello("gw-b"), token("gw-b", 2), &shutdown)
            .unwrap();
        let shared = registry
            .connect(hello("gw-c"), StreamCredential::Shared, &shutdown)
            .unwrap();
        store.revoke_token("gw-b", "admin").await.unwrap();

        let checker = tokio::spawn(recheck_tokens(
            Arc::clone(&registry),
            Arc::new(store),
            shutdown.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(10), b.stop.cancelled())
            .await
            .unwrap();
        // Decided in the same round as gw-b's end.
        assert!(b.was_revoked());
        assert!(!a.stop.is_cancelled() && !shared.stop.is_cancelled());
        shutdown.cancel();
        checker.await.unwrap();
    }

    /// A gateway that never reads fills its channel and has its stream ended, while another
    /// stream over the same log receives every event.
    #[tokio::test]
    async fn a_gateway_that_does_not_keep_up_is_cut_off_without_slowing_others() {
        use crate::keys::{CreateKey, Keys};
        use crate::store::sqlite::SqliteStore;

        let dir = tempfile::tempdir().unwrap();
        let event_log = Arc::new(EventLog::new(1024));
        let store = SqliteStore::open(&dir.path().join("db"), event_log.clone() as _)
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let shutdown = CancellationToken::new();
        let registry = Arc::new(Registry::new(Duration::from_secs(60), "cp-test".into()));
        let shared = Arc::new(Shared {
            store: Arc::clone(&store),
            event_log,
            limits: Arc::new(Limits::new(Arc::clone(&store), Arc::clone(&registry))),
            registry,
            shutdown: shutdown.clone(),
            settings: SyncSettings {
                hello_timeout: Duration::from_secs(10),
                send_timeout: Duration::from_millis(50),
                channel_capacity: 2,
                require_client_certificate: false,
            },
            pong_heads: PongHeads::default(),
        });
        let keys = Keys::new(store);
        let create = || CreateKey {
            owner: "alice".into(),
            ..CreateKey::default()
        };
        keys.create(create(), "test").await.unwrap();

        let hello = |id: &str| GatewayHello {
            id: id.into(),
            region: String::new(),
            address: String::new(),
            version: String::new(),
            applied: Revision(1),
            propagation_bound: None,
            stale_policy: String::new(),
        };
        let (slow_tx, _slow_rx) = mpsc::channel(2);
        let slow_session = shared
            .registry
            .connect(hello("slow"), StreamCredential::Shared, &shutdown)
            .unwrap();
        let slow = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                write_loop(
                    &shared,
                    &slow_tx,
                    &slow_session,
                    &LogId::default(),
                    Revision(1),
                )
                .await
            })
        };
        let (fast_tx, mut fast_rx) = mpsc::channel(2);
        let fast_session = shared
            .registry
            .connect(hello("fast"), StreamCredential::Shared, &shutdown)
            .unwrap();
        let fast = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                write_loop(
                    &shared,
                    &fast_tx,
                    &fast_session,
                    &LogId::default(),
                    Revision(1),
                )
                .await
            })
        };

        // The fast gateway reads as events come.
        let reader = tokio::spawn(async move {
            let mut revisions = Vec::new();
            while revisions.last() != Some(&11) {
                match fast_rx.recv().await {
                    Some(Ok(pb::ControlMessage {
                        msg: Some(ControlMsg::Events(batch)),
                    })) => {
                        revisions.extend(batch.events.iter().map(|e| e.revision));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            revisions
        });
        for _ in 0..10 {
            keys.create(create(), "test").await.unwrap();
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), slow)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ended, End::TooSlow));
        let revisions = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revisions, (2..=11).collect::<Vec<u64>>());
        shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(10), fast)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ended, End::Stopped));
    }
}
