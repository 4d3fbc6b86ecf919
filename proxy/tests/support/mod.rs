//! Test support: a scripted in-process control plane (the `Sync` gRPC service), upstreams with
//! chosen behaviours, a gateway builder and a small HTTP client.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_proto::pb::{self, control_message, gateway_message};
use keygate_proto::session::{SessionClaims, SessionSigner};
use keygate_proto::{
    ApiKey, Change, Event, KeyHash, KeyId, KeyPrefix, Meta, PasskeyRevocation, ReplicaKey,
    Revision, SessionRevocation, SessionVerifyingKey, UserState,
};
use keygate_proxy::{AuthMode, Gateway, GatewayStatus, ProxyConfig, RouteConfig};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Status, Streaming};

pub const TOKEN: &str = "test-gateway-token";

/// One Prometheus recorder for the whole test binary.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            keygate_proxy::metrics::prometheus_builder()
                .install_recorder()
                .unwrap()
        })
        .clone()
}

/// A fresh plaintext key and its record.
pub fn new_key(owner: &str) -> (String, ReplicaKey) {
    let plaintext = ApiKey::generate(&KeyPrefix::default());
    let hash = ApiKey::parse(&plaintext).unwrap().hash();
    let key = ReplicaKey {
        limits: Default::default(),
        hash,
        id: KeyId::generate(),
        owner: owner.to_owned(),
        enabled: true,
        expires_unix_ms: None,
        meta: Meta::new(),
    };
    (plaintext, key)
}

/// A signed session token with these ids, issued an hour ago and valid for another hour.
pub fn session_token(
    signer: &SessionSigner,
    session_id: &str,
    user_id: &str,
    passkey_id: &str,
) -> String {
    let now = keygate_proto::time::now_unix_ms();
    signer.sign(&SessionClaims {
        session_id: session_id.into(),
        user_id: user_id.into(),
        passkey_id: passkey_id.into(),
        issued_unix_ms: now - 3_600_000,
        expires_unix_ms: now + 3_600_000,
    })
}

/// A far-future prune instant for revocations in tests.
pub const PRUNE_LATER: i64 = 4_102_444_800_000;

/// Polls `condition` every 10 ms until it holds or `within` passes.
pub async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Control plane

#[derive(Clone)]
enum Update {
    Logged(Event),
    Raw(Vec<pb::Event>),
    Disconnect,
}

#[derive(Default)]
struct ControlState {
    log: Vec<Event>,
    keys: BTreeMap<KeyHash, (ReplicaKey, u64)>,
    /// The session state a snapshot carries.
    signing_keys: BTreeMap<String, SessionVerifyingKey>,
    revoked_sessions: BTreeMap<String, SessionRevocation>,
    revoked_passkeys: BTreeMap<String, PasskeyRevocation>,
    users: BTreeMap<String, UserState>,
    head: u64,
    /// The log id it reports; empty: a control plane from before log ids.
    log_id: String,
    hellos: Vec<u64>,
    /// The log id of each hello, in order.
    hello_logs: Vec<String>,
    acks: Vec<u64>,
    /// Identities a snapshot carries.
    identities: BTreeMap<String, keygate_proto::Identity>,
    /// Credits per holder (`key:…`, `identity:…`) not leased out.
    credits: BTreeMap<String, u64>,
    /// Leases granted and not returned: lease id → (holder, granted).
    leases: BTreeMap<String, (String, u64)>,
    /// Every lease return received.
    returned: Vec<pb::LeaseReturn>,
    /// Every usage report received.
    reports: Vec<pb::UsageReport>,
    next_lease: u64,
    /// How long a gateway may spend a lease, ms; 0: 10 s.
    lease_ttl_ms: u64,
    /// Smallest lease granted (when the balance allows), whatever is wanted.
    lease_size: u64,
}

struct ControlShared {
    state: Mutex<ControlState>,
    updates: broadcast::Sender<Update>,
    answer_pings: AtomicBool,
    /// When set, new streams are refused (Unavailable), as by a control plane that is down.
    refuse_streams: AtomicBool,
    lookups: AtomicUsize,
    /// When set, lookups wait for it before answering (to test coalescing).
    lookup_gate: Mutex<Option<Arc<Notify>>>,
}

/// A control plane that keeps an event log and serves `Sync`.
#[derive(Clone)]
pub struct ControlPlane {
    pub addr: SocketAddr,
    shared: Arc<ControlShared>,
}

impl ControlPlane {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (updates, _) = broadcast::channel(1024);
        let shared = Arc::new(ControlShared {
            state: Mutex::new(ControlState::default()),
            updates,
            answer_pings: AtomicBool::new(true),
            refuse_streams: AtomicBool::new(false),
            lookups: AtomicUsize::new(0),
            lookup_gate: Mutex::new(None),
        });
        let service = pb::sync_server::SyncServer::new(SyncService {
            shared: Arc::clone(&shared),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn commit(&self, change: Change, broadcast: bool) -> u64 {
        let event = {
            let mut state = self.shared.state.lock().unwrap();
            state.head += 1;
            let revision = state.head;
            match &change {
                Change::KeyUpserted(key) => {
                    state.keys.insert(key.hash, (key.clone(), revision));
                }
                Change::KeyDeleted { hash, .. } => {
                    state.keys.remove(hash);
                }
                Change::SigningKey(key) => {
                    state.signing_keys.insert(key.key_id.clone(), key.clone());
                }
                Change::SessionRevoked(revoked) => {
                    state
                        .revoked_sessions
                        .insert(revoked.session_id.clone(), revoked.clone());
                }
                Change::PasskeyRevoked(revoked) => {
                    state
                        .revoked_passkeys
                        .insert(revoked.passkey_id.clone(), revoked.clone());
                }
                Change::UserState(user) => {
                    state.users.insert(user.user_id.clone(), user.clone());
                }
                Change::IdentityUpserted(identity) => {
                    state
                        .identities
                        .insert(identity.id.clone(), identity.clone());
                }
                Change::IdentityDeleted { id } => {
                    state.identities.remove(id);
                }
                Change::CreditsChanged { .. } => {}
            }
            let event = Event {
                revision: Revision(revision),
                committed_unix_ms: 0,
                change,
            };
            state.log.push(event.clone());
            event
        };
        let revision = event.revision.0;
        if broadcast {
            let _ = self.shared.updates.send(Update::Logged(event));
        }
        revision
    }

    /// Commits and streams an upsert; returns its revision.
    pub fn upsert(&self, key: &ReplicaKey) -> u64 {
        self.commit(Change::KeyUpserted(key.clone()), true)
    }

    /// Commits and streams a delete; returns its revision.
    pub fn delete(&self, key: &ReplicaKey) -> u64 {
        self.commit(
            Change::KeyDeleted {
                id: key.id,
                hash: key.hash,
            },
            true,
        )
    }

    /// Sets the credits a holder (`key:…`, `identity:…`) has to lease out.
    pub fn set_credits(&self, holder: &str, credits: u64) {
        self.shared
            .state
            .lock()
            .unwrap()
            .credits
            .insert(holder.to_owned(), credits);
    }

    /// How long gateways may spend the leases granted from now on.
    pub fn set_lease_ttl(&self, ttl: Duration) {
        self.shared.state.lock().unwrap().lease_ttl_ms = ttl.as_millis() as u64;
    }

    /// Grants at least `size` credits per lease (when the balance allows).
    pub fn set_lease_size(&self, size: u64) {
        self.shared.state.lock().unwrap().lease_size = size;
    }

    /// Credits a holder has not leased out.
    pub fn credits(&self, holder: &str) -> u64 {
        let state = self.shared.state.lock().unwrap();
        state.credits.get(holder).copied().unwrap_or(0)
    }

    /// Every lease return received so far.
    pub fn returned(&self) -> Vec<pb::LeaseReturn> {
        self.shared.state.lock().unwrap().returned.clone()
    }

    /// Every usage report received so far.
    pub fn reports(&self) -> Vec<pb::UsageReport> {
        self.shared.state.lock().unwrap().reports.clone()
    }

    /// Commits and streams any change; returns its revision.
    pub fn commit_change(&self, change: Change) -> u64 {
        self.commit(change, true)
    }

    /// Commits and streams a signing key (current, or retired with `verify_until_unix_ms`).
    pub fn signing_key(&self, signer: &SessionSigner, verify_until_unix_ms: Option<i64>) -> u64 {
        self.commit_change(Change::SigningKey(SessionVerifyingKey {
            key_id: signer.key_id().to_owned(),
            public_key: signer.public_key(),
            created_unix_ms: 0,
            verify_until_unix_ms,
            revoked: false,
            max_session_lifetime_ms: None,
        }))
    }

    /// Commits and streams the revocation of one session.
    pub fn revoke_session(&self, session_id: &str, user_id: &str) -> u64 {
        self.commit_change(Change::SessionRevoked(SessionRevocation {
            session_id: session_id.to_owned(),
            user_id: user_id.to_owned(),
            prune_after_unix_ms: PRUNE_LATER,
        }))
    }

    /// Commits and streams the revocation of a passkey (and so of its sessions).
    pub fn revoke_passkey(&self, user_id: &str, passkey_id: &str) -> u64 {
        self.commit_change(Change::PasskeyRevoked(PasskeyRevocation {
            user_id: user_id.to_owned(),
            passkey_id: passkey_id.to_owned(),
            revoked_unix_ms: keygate_proto::time::now_unix_ms(),
            prune_after_unix_ms: PRUNE_LATER,
        }))
    }

    /// Commits and streams a user's whole state.
    pub fn user_state(
        &self,
        user_id: &str,
        disabled: bool,
        sessions_revoked_before_unix_ms: i64,
    ) -> u64 {
        self.commit_change(Change::UserState(UserState {
            user_id: user_id.to_owned(),
            disabled,
            sessions_revoked_before_unix_ms,
            prune_after_unix_ms: PRUNE_LATER,
        }))
    }

    /// Commits an upsert whose event has not reached the stream yet (only lookups see it).
    pub fn upsert_unstreamed(&self, key: &ReplicaKey) -> u64 {
        self.commit(Change::KeyUpserted(key.clone()), false)
    }

    /// Sends events to every open stream without logging them (e.g. to cause a gap).
    pub fn send_raw(&self, events: Vec<pb::Event>) {
        let _ = self.shared.updates.send(Update::Raw(events));
    }

    /// Closes every open stream.
    pub fn disconnect_all(&self) {
        let _ = self.shared.updates.send(Update::Disconnect);
    }

    pub fn answer_pings(&self, answer: bool) {
        self.shared.answer_pings.store(answer, Ordering::SeqCst);
    }

    pub fn hellos(&self) -> Vec<u64> {
        self.shared.state.lock().unwrap().hellos.clone()
    }

    /// The log id each hello carried, in order.
    pub fn hello_logs(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().hello_logs.clone()
    }

    /// Sets the log id this control plane reports (in snapshots and pongs) and compares hellos
    /// with: a hello of another log gets a snapshot.
    pub fn set_log_id(&self, log_id: &str) {
        self.shared.state.lock().unwrap().log_id = log_id.to_owned();
    }

    /// Refuses new streams (`true`) or accepts them again.
    pub fn refuse_streams(&self, refuse: bool) {
        self.shared.refuse_streams.store(refuse, Ordering::SeqCst);
    }

    pub fn acks(&self) -> Vec<u64> {
        self.shared.state.lock().unwrap().acks.clone()
    }

    pub fn lookups(&self) -> usize {
        self.shared.lookups.load(Ordering::SeqCst)
    }

    /// Makes lookups wait until the returned notify is notified.
    pub fn hold_lookups(&self) -> Arc<Notify> {
        let gate = Arc::new(Notify::new());
        *self.shared.lookup_gate.lock().unwrap() = Some(Arc::clone(&gate));
        gate
    }
}

struct SyncService {
    shared: Arc<ControlShared>,
}

fn control(msg: control_message::Msg) -> Result<pb::ControlMessage, Status> {
    Ok(pb::ControlMessage { msg: Some(msg) })
}

fn authorized<T>(request: &tonic::Request<T>) -> Result<(), Status> {
    let expected = format!("Bearer {TOKEN}");
    match request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
    {
        Some(value) if value == expected => Ok(()),
        _ => Err(Status::unauthenticated("bad gateway token")),
    }
}

#[tonic::async_trait]
impl pb::sync_server::Sync for SyncService {
    type StreamStream = ReceiverStream<Result<pb::ControlMessage, Status>>;

    async fn stream(
        &self,
        request: tonic::Request<Streaming<pb::GatewayMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, Status> {
        authorized(&request)?;
        if self.shared.refuse_streams.load(Ordering::SeqCst) {
            return Err(Status::unavailable("refusing streams"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let Ok(Some(pb::GatewayMessage {
                msg: Some(gateway_message::Msg::Hello(hello)),
            })) = inbound.message().await
            else {
                return;
            };
            let mut updates = shared.updates.subscribe();
            let (initial, mut sent_up_to) = {
                let mut state = shared.state.lock().unwrap();
                state.hellos.push(hello.applied_revision);
                state.hello_logs.push(hello.log_id.clone());
                let head = state.head;
                let log_id = state.log_id.clone();
                let other_log =
                    !hello.log_id.is_empty() && !log_id.is_empty() && hello.log_id != log_id;
                let mut initial = Vec::new();
                if hello.applied_revision == 0 || hello.applied_revision > head || other_log {
                    let keys: Vec<pb::ReplicaKey> =
                        state.keys.values().map(|(key, _)| key.into()).collect();
                    initial.push(control(control_message::Msg::SnapshotBegin(
                        pb::SnapshotBegin {
                            revision: head,
                            key_count: keys.len() as u64,
                            log_id,
                        },
                    )));
                    for chunk in keys.chunks(2) {
                        initial.push(control(control_message::Msg::SnapshotChunk(
                            pb::SnapshotChunk {
                                keys: chunk.to_vec(),
                                ..pb::SnapshotChunk::default()
                            },
                        )));
                    }
                    // The session state in chunks of its own after the keys, split between
                    // two, so a gateway must take it from whichever chunk it comes in.
                    initial.push(control(control_message::Msg::SnapshotChunk(
                        pb::SnapshotChunk {
                            signing_keys: state.signing_keys.values().map(Into::into).collect(),
                            revoked_sessions: state
                                .revoked_sessions
                                .values()
                                .map(Into::into)
                                .collect(),
                            ..pb::SnapshotChunk::default()
                        },
                    )));
                    initial.push(control(control_message::Msg::SnapshotChunk(
                        pb::SnapshotChunk {
                            revoked_passkeys: state
                                .revoked_passkeys
                                .values()
                                .map(Into::into)
                                .collect(),
                            users: state.users.values().map(Into::into).collect(),
                            identities: state.identities.values().map(Into::into).collect(),
                            ..pb::SnapshotChunk::default()
                        },
                    )));
                    initial.push(control(control_message::Msg::SnapshotEnd(
                        pb::SnapshotEnd { revision: head },
                    )));
                } else {
                    let events: Vec<pb::Event> = state
                        .log
                        .iter()
                        .filter(|event| event.revision.0 > hello.applied_revision)
                        .map(pb::Event::from)
                        .collect();
                    if !events.is_empty() {
                        initial.push(control(control_message::Msg::Events(pb::EventBatch {
                            events,
                        })));
                    }
                }
                (initial, head)
            };
            for message in initial {
                if tx.send(message).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    received = inbound.message() => match received {
                        Ok(Some(pb::GatewayMessage { msg: Some(gateway_message::Msg::Ping(ping)) })) => {
                            if !shared.answer_pings.load(Ordering::SeqCst) {
                                continue;
                            }
                            let (head, log_id) = {
                                let state = shared.state.lock().unwrap();
                                (state.head, state.log_id.clone())
                            };
                            let pong = pb::Pong { nonce: ping.nonce, sent_at_nanos: ping.sent_at_nanos, head_revision: head, log_id };
                            if tx.send(control(control_message::Msg::Pong(pong))).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(pb::GatewayMessage { msg: Some(gateway_message::Msg::Ack(ack)) })) => {
                            shared.state.lock().unwrap().acks.push(ack.revision);
                        }
                        Ok(Some(pb::GatewayMessage { msg: Some(gateway_message::Msg::Usage(report)) })) => {
                            shared.state.lock().unwrap().reports.push(report);
                        }
                        Ok(Some(pb::GatewayMessage { msg: Some(gateway_message::Msg::LeaseReturn(lease)) })) => {
                            let mut state = shared.state.lock().unwrap();
                            if let Some((holder, granted)) = state.leases.remove(&lease.lease_id) {
                                *state.credits.entry(holder).or_default() += lease.unspent.min(granted);
                            }
                            state.returned.push(lease);
                        }
                        Ok(Some(pb::GatewayMessage { msg: Some(gateway_message::Msg::LeaseRequest(request)) })) => {
                            // Grants up to what is wanted, 10 s to spend it.
                            let grant = {
                                let mut state = shared.state.lock().unwrap();
                                let left = state.credits.get(&request.holder).copied().unwrap_or(0);
                                let granted = left.min(request.wanted.max(state.lease_size));
                                state.credits.insert(request.holder.clone(), left - granted);
                                state.next_lease += 1;
                                let lease_id = format!("lease-{}", state.next_lease);
                                state.leases.insert(lease_id.clone(), (request.holder.clone(), granted));
                                pb::LeaseGrant {
                                    holder: request.holder,
                                    request_id: request.request_id,
                                    lease_id,
                                    granted,
                                    ttl_ms: if state.lease_ttl_ms == 0 { 10_000 } else { state.lease_ttl_ms },
                                    exhausted: granted < request.wanted && left == granted,
                                }
                            };
                            if tx.send(control(control_message::Msg::Lease(grant))).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return,
                    },
                    update = updates.recv() => {
                        let events = match update {
                            Ok(Update::Logged(event)) if event.revision.0 > sent_up_to => {
                                sent_up_to = event.revision.0;
                                vec![pb::Event::from(&event)]
                            }
                            Ok(Update::Logged(_)) => continue,
                            Ok(Update::Raw(events)) => events,
                            Ok(Update::Disconnect) | Err(_) => return,
                        };
                        let batch = control(control_message::Msg::Events(pb::EventBatch { events }));
                        if tx.send(batch).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup_key(
        &self,
        request: tonic::Request<pb::LookupKeyRequest>,
    ) -> Result<tonic::Response<pb::LookupKeyResponse>, Status> {
        authorized(&request)?;
        self.shared.lookups.fetch_add(1, Ordering::SeqCst);
        let gate = self.shared.lookup_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        let hash = KeyHash::from_slice(&request.get_ref().key_hash)
            .ok_or_else(|| Status::invalid_argument("hash"))?;
        let state = self.shared.state.lock().unwrap();
        let (key, key_revision) = match state.keys.get(&hash) {
            Some((key, revision)) => (Some(pb::ReplicaKey::from(key)), *revision),
            None => (None, 0),
        };
        Ok(tonic::Response::new(pb::LookupKeyResponse {
            key,
            key_revision,
            head_revision: state.head,
            log_id: state.log_id.clone(),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams

/// An upstream that answers every request with JSON describing what it received. Paths
/// starting with `/hang` never answer; `/hop` answers with hop-by-hop headers set; `/close`
/// answers with `Connection: close` and closes the connection.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests received so far.
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    /// Notified when a request to `/held` arrives; such requests answer once `release` is
    /// notified.
    pub arrived: Arc<Notify>,
    pub release: Arc<Notify>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (held_arrived, held_release) = (Arc::clone(&arrived), Arc::clone(&release));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let received = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (arrived, release) = (Arc::clone(&held_arrived), Arc::clone(&held_release));
                let received = Arc::clone(&received);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (arrived, release) = (Arc::clone(&arrived), Arc::clone(&release));
                    async move { Ok::<_, Infallible>(echo(request, arrived, release).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            connections,
            requests,
            arrived,
            release,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn echo(
    request: Request<Incoming>,
    arrived: Arc<Notify>,
    release: Arc<Notify>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    if path.starts_with("/hang") {
        std::future::pending::<()>().await;
    }
    if path.starts_with("/held") {
        arrived.notify_one();
        release.notified().await;
    }
    let mut headers = serde_json::Map::new();
    for name in request.headers().keys() {
        let values: Vec<serde_json::Value> = request
            .headers()
            .get_all(name)
            .iter()
            .map(|value| {
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into()
            })
            .collect();
        headers.insert(name.as_str().to_owned(), values.into());
    }
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "method": method,
        "uri": uri,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    if path.starts_with("/hop") {
        let headers = response.headers_mut();
        headers.insert("connection", "x-upstream-hop".parse().unwrap());
        headers.insert("x-upstream-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-upstream-end", "kept".parse().unwrap());
        headers.insert("x-request-id", "upstream-made".parse().unwrap());
    }
    if path.starts_with("/close") {
        response
            .headers_mut()
            .insert("connection", "close".parse().unwrap());
    }
    response
}

/// An upstream that reads each request and closes the connection without answering.
pub async fn dropping_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
            });
        }
    });
    addr
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Gateway

/// A serving gateway and the means to stop it.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub status: GatewayStatus,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<Result<(), keygate_proxy::ProxyError>>,
}

impl RunningGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.served).await.unwrap().unwrap();
    }

    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn wait_stopped(self) {
        self.served.await.unwrap().unwrap();
    }
}

/// Bounds the wait for an answer in [`exchange`]; never a figure a test asserts.
const ANSWER_DEADLINE: Duration = Duration::from_secs(20);

/// Sends one request on `stream` and reads its whole answer (a `Content-Length` body); returns
/// the status line.
pub async fn exchange(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(stream, request.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if answer.len() >= end + 4 + length {
                return head.lines().next().unwrap().to_owned();
            }
        }
        let read = tokio::time::timeout(
            ANSWER_DEADLINE,
            tokio::io::AsyncReadExt::read(stream, &mut chunk),
        )
        .await
        .expect("an answer in time")
        .unwrap();
        assert!(read > 0, "closed before answering {path}");
        answer.extend_from_slice(&chunk[..read]);
    }
}

/// One route, `/`, to `upstream` with no credential needed.
pub fn open_route(upstream: String) -> RouteConfig {
    RouteConfig {
        path_prefix: "/".into(),
        upstream,
        auth: AuthMode::None,
        ..RouteConfig::default()
    }
}

/// A config for tests: loopback listeners on free ports, one control plane, the test token.
pub fn config(control_plane: &ControlPlane) -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        control_plane: vec![control_plane.url()],
        gateway_token: TOKEN.into(),
        gateway_id: Some("test-gateway".to_owned()),
        ping_interval: Duration::from_millis(50),
        ..ProxyConfig::default()
    }
}

pub async fn start_gateway(config: ProxyConfig) -> RunningGateway {
    let gateway = Gateway::bind(config, metrics_handle()).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let addr = gateway.addr();
    let admin_addr = gateway.admin_addr();
    let status = gateway.status();
    let served = tokio::spawn(gateway.serve(async move {
        let _ = stopped.await;
    }));
    RunningGateway {
        addr,
        admin_addr,
        status,
        stop: Some(stop),
        served,
    }
}

/// Starts a gateway and waits until it is ready (synced within the bound).
pub async fn start_ready_gateway(config: ProxyConfig) -> RunningGateway {
    let gateway = start_gateway(config).await;
    let status = gateway.status.clone();
    eventually("the gateway to be ready", Duration::from_secs(10), || {
        status.is_ready()
    })
    .await;
    gateway
}

// ---------------------------------------------------------------------------------------------
// Client

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Values of one header the echo upstream saw.
    pub fn upstream_saw(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .map(|value| value.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub async fn send(client: &TestClient, request: Request<Full<Bytes>>) -> Reply {
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> http::request::Builder {
    Request::get(url)
}

/// Sends `head` (a request line and header lines, without the blank line that ends the head)
/// byte for byte over a new connection, with `Connection: close`, and reads the whole answer:
/// for requests a client library would refuse to build or would tidy up.
pub async fn raw_request(addr: SocketAddr, head: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let end = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&answer)));
    let text = String::from_utf8_lossy(&answer[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            http::HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    assert!(
        headers.get("transfer-encoding").is_none(),
        "raw_request reads Content-Length bodies only"
    );
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::copy_from_slice(&answer[end + 4..]),
    }
}

pub async fn get_with(client: &TestClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(client, request.body(Full::new(Bytes::new())).unwrap()).await
}
