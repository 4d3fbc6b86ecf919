//! The Sync gRPC service: one replication stream per gateway, and point lookups of keys that
//! have not reached a gateway yet. The gateway-token check runs before any method, as an
//! interceptor (see `auth`).
//!
//! Each stream is two tasks sharing one bounded outbound channel:
//! - the writer sends the snapshot or the missed events, then follows the head of the event
//!   log (woken by its `watch` channel, reading from its in-memory ring, falling back to the
//!   store), so every event reaches the gateway once, in order, with no gap;
//! - the reader answers pings and records acks in the registry.
//!
//! A gateway that stops reading fills its channel; when a send has waited too long its stream
//! ends (it reconnects and resumes from its applied revision) instead of holding anyone else up.

use std::sync::Arc;
use std::time::Duration;

use keygate_proto::pb::control_message::Msg as ControlMsg;
use keygate_proto::pb::gateway_message::Msg as GatewayMsg;
use keygate_proto::{Event, KeyHash, Revision, pb};
use keygate_transport::ConnectInfo;
use prost::Message;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::event_log::EventLog;
use crate::metrics;
use crate::registry::{GatewayHello, Registry, Session};
use crate::store::{LogBounds, SessionState, Store};

/// Most keys in one snapshot chunk.
pub const SNAPSHOT_CHUNK_KEYS: usize = 5000;
/// Most events in one batch.
pub const EVENT_BATCH_EVENTS: usize = 1000;
/// Encoded size at which a chunk or batch is cut short, well under gRPC's default 4 MiB
/// receive limit even when keys carry large meta maps.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Longest gateway id, in characters.
const MAX_GATEWAY_ID_CHARS: usize = 128;
/// Longest region, version or address in a hello, in characters.
const MAX_HELLO_FIELD_CHARS: usize = 256;

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
    shutdown: CancellationToken,
    settings: SyncSettings,
}

impl SyncService {
    /// A service whose streams all end when `shutdown` is cancelled.
    pub fn new(
        store: Arc<dyn Store>,
        event_log: Arc<EventLog>,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
        settings: SyncSettings,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                event_log,
                registry,
                shutdown,
                settings,
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
            certified_id,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup_key(
        &self,
        request: Request<pb::LookupKeyRequest>,
    ) -> Result<Response<pb::LookupKeyResponse>, Status> {
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
        metrics::lookup(key.is_some());
        Ok(Response::new(pb::LookupKeyResponse {
            key_revision: key.as_ref().map_or(0, |key| key.revision.0),
            key: key.map(|key| pb::ReplicaKey::from(&key.replica())),
            head_revision: head.0,
        }))
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
            ::metrics::counter!("keygate_sync_refused_total", "reason" => "no_client_certificate")
                .increment(1);
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
                ::metrics::counter!("keygate_sync_refused_total", "reason" => "certificate_without_name")
                    .increment(1);
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
    certified_id: Option<String>,
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
    let hello = match check_hello(hello) {
        Ok(hello) => hello,
        Err(status) => {
            let _ = tx.try_send(Err(status));
            return;
        }
    };
    if let Some(certified) = certified_id
        && certified != hello.id
    {
        tracing::warn!(
            certificate = %certified,
            claimed = %hello.id,
            remote = ?remote,
            "sync refused: the Hello claims another gateway id than the client certificate names"
        );
        ::metrics::counter!("keygate_sync_refused_total", "reason" => "identity_mismatch")
            .increment(1);
        let status = Status::permission_denied(format!(
            "the client certificate identifies gateway {certified:?}, but the Hello claims {:?}",
            hello.id
        ));
        let _ = tx.try_send(Err(status));
        return;
    }
    let applied = hello.applied;
    let session = shared.registry.connect(hello.clone(), &shared.shutdown);
    let _registered = Registered {
        registry: Arc::clone(&shared.registry),
        session: session.clone(),
    };
    tracing::info!(
        gateway_id = %hello.id,
        region = %hello.region,
        version = %hello.version,
        applied = %applied,
        remote = ?remote,
        "gateway connected"
    );

    let reader = tokio::spawn(read_loop(
        Arc::clone(&shared),
        inbound,
        tx.clone(),
        session.clone(),
    ));
    let end = write_loop(&shared, &tx, &session, applied).await;
    session.stop.cancel();
    let _ = reader.await;

    let farewell = match end {
        End::Failed(status) => Some(status),
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

fn check_hello(hello: pb::Hello) -> Result<GatewayHello, Status> {
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
    ] {
        if value.chars().count() > MAX_HELLO_FIELD_CHARS || !printable(value) {
            return Err(Status::invalid_argument(format!(
                "Hello.{field} must be at most {MAX_HELLO_FIELD_CHARS} printable characters"
            )));
        }
    }
    Ok(GatewayHello {
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
    })
}

/// Whether a gateway at `applied` must start over from a snapshot: it has nothing, it is
/// ahead of the log (the store was restored), or the events it needs were compacted away.
fn needs_snapshot(applied: Revision, bounds: LogBounds) -> bool {
    applied == Revision::ZERO || applied > bounds.head || applied.next() < bounds.oldest_retained
}

async fn write_loop(shared: &Shared, tx: &Outbound, session: &Session, applied: Revision) -> End {
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
    if needs_snapshot(applied, bounds) {
        match send_snapshot(shared, &sender).await {
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

/// Sends a snapshot consistent at one revision; returns that revision.
async fn send_snapshot(shared: &Shared, sender: &Sender<'_>) -> Result<Revision, End> {
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
    // The session state at the same revision follows the keys, in chunks bounded alike.
    let mut items = chunk.keys.len();
    for entry in SessionEntry::all(&snapshot.sessions) {
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

/// One entry of a snapshot's session state (SnapshotChunk fields 2 to 5).
enum SessionEntry {
    SigningKey(pb::SigningKey),
    RevokedSession(pb::SessionRevoked),
    RevokedPasskey(pb::PasskeyRevoked),
    User(pb::UserState),
}

impl SessionEntry {
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
            Self::SigningKey(m) => m.encoded_len(),
            Self::RevokedSession(m) => m.encoded_len(),
            Self::RevokedPasskey(m) => m.encoded_len(),
            Self::User(m) => m.encoded_len(),
        }
    }

    fn add_to(self, chunk: &mut pb::SnapshotChunk) {
        match self {
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
                let pong = pb::Pong {
                    nonce: ping.nonce,
                    sent_at_nanos: ping.sent_at_nanos,
                    head_revision: shared.event_log.head().0,
                };
                if sender.send(ControlMsg::Pong(pong)).await.is_err() {
                    break;
                }
            }
            Some(GatewayMsg::Ack(ack)) => record_ack(&shared, &session, Revision(ack.revision)),
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
        let bounds = LogBounds {
            oldest_retained: Revision(10),
            head: Revision(20),
        };
        assert!(needs_snapshot(Revision(0), bounds), "nothing applied");
        assert!(needs_snapshot(Revision(21), bounds), "ahead of the log");
        assert!(
            needs_snapshot(Revision(8), bounds),
            "needs compacted event 9"
        );
        assert!(
            !needs_snapshot(Revision(9), bounds),
            "event 10 is still kept"
        );
        assert!(!needs_snapshot(Revision(20), bounds), "up to date");
    }

    #[test]
    fn hellos_are_checked() {
        let hello = |id: &str| pb::Hello {
            gateway_id: id.into(),
            ..pb::Hello::default()
        };
        assert!(check_hello(hello("gw-1")).is_ok());
        assert_eq!(
            check_hello(hello("")).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(check_hello(hello(&"x".repeat(129))).is_err());
        assert!(check_hello(hello("a\nb")).is_err());
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
        let shared = Arc::new(Shared {
            store: Arc::clone(&store),
            event_log,
            registry: Arc::new(Registry::new(Duration::from_secs(60))),
            shutdown: shutdown.clone(),
            settings: SyncSettings {
                hello_timeout: Duration::from_secs(10),
                send_timeout: Duration::from_millis(50),
                channel_capacity: 2,
                require_client_certificate: false,
            },
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
        let slow_session = shared.registry.connect(hello("slow"), &shutdown);
        let slow = {
            let shared = Arc::clone(&shared);
            tokio::spawn(
                async move { write_loop(&shared, &slow_tx, &slow_session, Revision(1)).await },
            )
        };
        let (fast_tx, mut fast_rx) = mpsc::channel(2);
        let fast_session = shared.registry.connect(hello("fast"), &shutdown);
        let fast = {
            let shared = Arc::clone(&shared);
            tokio::spawn(
                async move { write_loop(&shared, &fast_tx, &fast_session, Revision(1)).await },
            )
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
