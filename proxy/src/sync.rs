//! The sync client: one task that owns the replication stream to the control plane and feeds
//! the replica (DESIGN.md, "Sync").
//!
//! Per connection: hello with the applied (log id, revision); then a snapshot (built off to the
//! side, swapped in at its end) or the events after that revision; then events as they commit,
//! each exactly the one after the applied revision. Anything else is a gap: the stream is
//! dropped and the client reconnects with hello(applied), which resumes without a snapshot
//! whenever the control plane still has the events. An ack follows every applied batch and
//! snapshot.
//!
//! Every `ping_interval` a ping carries the gateway's monotonic send time; pongs feed
//! [`crate::freshness`]. A stream that delivers nothing for three ping intervals is treated as
//! dead (a blackholed link sends no error). Connection failures move on to the next control
//! plane URL after an exponential backoff with jitter (50 ms doubling to 5 s). Network errors
//! are logged, never fatal; the task stops only on shutdown.
//!
//! Limits (DESIGN.md, "Limits and permissions per key") ride the same stream, in
//! [`crate::limits`]'s domain types: every [`limits::REPORT_INTERVAL`] (100 ms) the use not
//! reported yet goes out as one `UsageReport`, and the limiter wakes the task for what cannot
//! wait (a report when a gateway has used its share, lease requests); `UsageUpdate` and
//! `LeaseGrant` go to the limiter, which also learns when the stream opens and closes and when
//! anything is heard (cut off, it falls back to its own share). Leases that expired while the
//! stream was down are given back by the first tick of the next stream; on shutdown every
//! unspent lease is given back before the stream is closed (best effort, at most
//! [`SHUTDOWN_RETURN_WAIT`]).
//!
//! Log identity (DESIGN.md, "Storage and a highly available control plane"): revisions only
//! compare within one log, so the gateway remembers the log id of what it has applied and
//! judges every log id and head a control plane reports (in SnapshotBegin and Pong) with
//! [`judge_log`]:
//!
//! | the control plane reports        | snapshot begins            | pong                          |
//! |----------------------------------|----------------------------|-------------------------------|
//! | no log id, or we have none       | installed (as before ids)  | proof as before ids           |
//! | our log, head ≥ what we hold     | installed                  | proof once its head is applied|
//! | our log, head < what we hold     | refused: fail over         | refused: fail over            |
//! | another log                      | installed; now our log     | no proof (see below)          |
//!
//! "Refused" ends the stream, moves on to the next `--control-plane` URL as a failed connection
//! does, logs one warning and counts `keygate_sync_refused_total{reason="older_history"}`: such
//! a control plane serves an older copy of our log (a restored backup), and installing it would
//! bring back whatever was revoked after its head. "What we hold" for a pong is what the gateway
//! had applied when the stream opened (or the revision of the snapshot begun on it): a pong's
//! head is read when the ping arrives, so events streamed after that read may already be
//! applied when the pong comes, and the live applied revision would misjudge an honest pong.
//!
//! A pong of another log vouches for another history and proves nothing. It is ignored, without
//! reconnecting, while the stream has not yet shown which log it serves: a control plane answers
//! a hello of another log with a snapshot, and its pong (sent by another task) may overtake the
//! SnapshotBegin. Once the stream has shown its log (a snapshot began, or events came, which a
//! control plane sends only for the gateway's own log), a pong of another log means the control
//! plane's log changed under the stream: the client reconnects, and the new hello sorts it out.
//! Pongs of a snapshot's log that arrive while the snapshot is still coming wait for it to be
//! installed; pongs waiting for a head of the log being left are dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keygate_proto::pb::{self, control_message, gateway_message};
use keygate_proto::{Change, Event, LogId, ReplicaKey, Revision};
use keygate_transport::{ClientIdentity, Trust};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::error::error_chain;
use crate::freshness::{Freshness, PendingProofs};
use crate::limits::{self, LeaseGrant, Limiter, Outgoing, WindowUsage};
use crate::metrics::Metrics;
use crate::miss::ControlPlaneSlot;
use crate::replica::{Gap, Replica, Snapshot};
use crate::spans;
use crate::status::SyncState;

/// First reconnect delay; doubles per consecutive failure.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Intervals of silence after which a stream is treated as dead.
const SILENT_INTERVALS: u32 = 3;
/// Outbound messages (hello, acks, pings, limits) queued at most; pings beyond it are skipped.
const OUTBOUND_CAPACITY: usize = 256;
/// Longest wait, on shutdown, for the control plane to take the leases given back.
const SHUTDOWN_RETURN_WAIT: Duration = Duration::from_secs(1);
/// HTTP/2 receive windows of the sync connection (stream and connection). The control plane
/// may send this much before it must wait for a WINDOW_UPDATE, which takes a round trip: at
/// 240 ms round trip, hyper's default 2 MiB stream window caps a snapshot at ~8 MiB/s; 16 MiB
/// lets it stream as fast as the gateway applies it (BENCHMARKS.md, "WAN"). The gateway reads
/// the stream as it applies it, so this bounds what may be in flight, not what it keeps.
const SYNC_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// How to reach the control plane and what to tell it.
#[derive(Debug, Clone)]
pub(crate) struct SyncSettings {
    pub urls: Vec<String>,
    pub authorization: MetadataValue<Ascii>,
    pub gateway_id: String,
    pub region: String,
    pub address: String,
    pub ping_interval: Duration,
    pub connect_timeout: Duration,
    pub tls: ControlPlaneTls,
}

/// How to speak TLS to `https://` control planes.
#[derive(Debug, Clone)]
pub(crate) struct ControlPlaneTls {
    /// Whom to trust (`ca`, else the system's roots).
    pub trust: Trust,
    /// The client certificate, for control planes that require one.
    pub identity: Option<ClientIdentity>,
}

impl ControlPlaneTls {
    /// tonic's TLS settings for `url` (`None` for `http://`), read from the files now, so a
    /// renewed client certificate is presented from the next connection on.
    pub fn for_url(&self, url: &str) -> Result<Option<ClientTlsConfig>, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Ok(None);
        }
        let host = uri.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        keygate_transport::client::grpc_client_tls(&self.trust, self.identity.as_ref(), host)
            .map(Some)
            .map_err(|error| error.to_string())
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("stream refused: {0}")]
    Refused(tonic::Status),
    #[error("stream failed: {0}")]
    Stream(tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
    #[error("nothing heard for {0:?}; treating the stream as dead")]
    Silent(Duration),
    #[error("{0}; resyncing")]
    Gap(#[from] Gap),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error(
        "serves an older copy of log {log_id} (head {head}) than this gateway has applied ({applied})"
    )]
    OlderHistory {
        log_id: LogId,
        head: Revision,
        applied: Revision,
    },
    #[error("the control plane's log changed from {from} to {to} during the stream; reconnecting")]
    LogChanged { from: LogId, to: LogId },
    #[error("shutting down")]
    Shutdown,
}

/// An open stream: what to send on, what arrives, and what it is known to serve.
struct Opened {
    outbound: mpsc::Sender<pb::GatewayMessage>,
    inbound: tonic::Streaming<pb::ControlMessage>,
    stream_log: StreamLog,
}

/// What a control plane's report of its log (a log id and a head, in SnapshotBegin or Pong)
/// means to a gateway holding `held` of log `ours`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogVerdict {
    /// The gateway's own log, or unknown on either side (a peer from before log ids): the
    /// revisions compare as they are.
    Same,
    /// Another log: its revisions have nothing to do with the gateway's.
    Other,
    /// The gateway's own log, but with a head below what the gateway holds of it: an older
    /// copy (a restored backup). The control plane must be refused.
    Older,
}

/// Judges a control plane's log id and head against the gateway's log id and what it holds of
/// that log (see the module docs for what follows from each verdict).
fn judge_log(ours: &LogId, held: Revision, theirs: &LogId, head: Revision) -> LogVerdict {
    if ours.is_unknown() || theirs.is_unknown() {
        LogVerdict::Same
    } else if ours != theirs {
        LogVerdict::Other
    } else if head < held {
        LogVerdict::Older
    } else {
        LogVerdict::Same
    }
}

/// What one stream has shown so far about the log it serves.
struct StreamLog {
    /// The log the stream's reports are judged against: the gateway's own, or that of the
    /// snapshot begun on the stream.
    log_id: LogId,
    /// What the gateway held of that log when the stream opened, or the revision of the
    /// snapshot begun on it: any later head of the same log is at least this.
    held: Revision,
    /// Whether the stream has shown which log it serves (a snapshot began, or events came).
    shown: bool,
    /// The snapshot being received.
    snapshot: Option<Snapshot>,
    /// Whether that snapshot is of another log than the replica's: its pongs then wait for it.
    switching: bool,
}

impl StreamLog {
    fn new(log_id: LogId, held: Revision) -> Self {
        Self {
            log_id,
            held,
            shown: false,
            snapshot: None,
            switching: false,
        }
    }
}

/// The sync task's state.
pub(crate) struct SyncTask {
    settings: SyncSettings,
    replica: Arc<Replica>,
    freshness: Arc<Freshness>,
    state: Arc<SyncState>,
    control_plane: Arc<ControlPlaneSlot>,
    metrics: Metrics,
    proofs: PendingProofs,
    next_nonce: u64,
    /// Whether the current connection has delivered any message.
    heard: bool,
}

impl SyncTask {
    pub fn new(
        settings: SyncSettings,
        replica: Arc<Replica>,
        freshness: Arc<Freshness>,
        state: Arc<SyncState>,
        control_plane: Arc<ControlPlaneSlot>,
        metrics: Metrics,
    ) -> Self {
        Self {
            settings,
            replica,
            freshness,
            state,
            control_plane,
            metrics,
            proofs: PendingProofs::default(),
            next_nonce: 0,
            heard: false,
        }
    }

    /// Keeps a stream open, reconnecting as needed, until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut url_index = 0;
        loop {
            let url = self.settings.urls[url_index % self.settings.urls.len()].clone();
            self.heard = false;
            let ended = self.session(&url, &shutdown).await;
            self.disconnected();
            if shutdown.is_cancelled() {
                break;
            }
            if let SyncError::OlderHistory {
                log_id,
                head,
                applied,
            } = &ended
            {
                // Refused like a control plane that cannot be reached: the next one is tried.
                failures = failures.saturating_add(1);
                url_index = url_index.wrapping_add(1);
                self.state
                    .older_history_refusals
                    .fetch_add(1, Ordering::AcqRel);
                self.metrics.sync_refused_older_history.increment(1);
                tracing::warn!(
                    control_plane = %url,
                    %log_id,
                    head = head.0,
                    applied = applied.0,
                    "control plane {url} serves an older copy of log {log_id} (head {head}) than \
                     this gateway has applied ({applied}): refusing it; restored from a backup?"
                );
            } else if self.heard {
                // The connection worked; reconnect to the same control plane at once-ish.
                failures = 0;
                tracing::warn!(control_plane = %url, reason = %ended, "sync stream ended; reconnecting");
            } else {
                failures = failures.saturating_add(1);
                url_index = url_index.wrapping_add(1);
                tracing::warn!(control_plane = %url, reason = %ended, failures, "sync connection failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff(failures)) => {}
            }
        }
        self.disconnected();
    }

    fn disconnected(&self) {
        self.limiter()
            .set_connected(false, keygate_proto::time::now_unix_ms());
        self.control_plane.store(None);
        self.state.set_control_plane(None);
        self.state.connected.store(false, Ordering::Release);
        self.metrics.sync_connected.set(0.0);
    }

    fn limiter(&self) -> &Limiter {
        self.replica.limiter()
    }

    /// One connection, from connect to whatever ends it (shutdown included).
    async fn session(&mut self, url: &str, shutdown: &CancellationToken) -> SyncError {
        let opened = tokio::select! {
            () = shutdown.cancelled() => return SyncError::Shutdown,
            opened = self.open(url) => opened,
        };
        let Opened {
            outbound,
            mut inbound,
            mut stream_log,
        } = match opened {
            Ok(opened) => opened,
            Err(error) => return error,
        };
        self.limiter()
            .set_connected(true, keygate_proto::time::now_unix_ms());

        let ping_interval = self.settings.ping_interval;
        let silence_limit = ping_interval * SILENT_INTERVALS;
        let mut ticker = tokio::time::interval(ping_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut report_ticker = tokio::time::interval(limits::REPORT_INTERVAL);
        report_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut ack_due: Option<Revision> = None;
        let replica = Arc::clone(&self.replica);
        let limiter = replica.limiter();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    return_leases(limiter, outbound, inbound).await;
                    return SyncError::Shutdown;
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() > silence_limit {
                        return SyncError::Silent(silence_limit);
                    }
                    self.next_nonce = self.next_nonce.wrapping_add(1);
                    let ping = pb::Ping {
                        nonce: self.next_nonce,
                        sent_at_nanos: self.freshness.now_nanos(),
                        staleness_ms: self.freshness.staleness().map(millis),
                    };
                    // A full queue means the link is backed up; the silence check catches a dead one.
                    let _ = outbound.try_send(message(gateway_message::Msg::Ping(ping)));
                }
                _ = report_ticker.tick() => {
                    let outgoing = limiter.take_outgoing(keygate_proto::time::now_unix_ms(), true);
                    send_limits(limiter, &outbound, outgoing);
                }
                () = limiter.wakeup() => {
                    let outgoing = limiter.take_outgoing(keygate_proto::time::now_unix_ms(), false);
                    send_limits(limiter, &outbound, outgoing);
                }
                received = inbound.message() => {
                    let control = match received {
                        Ok(Some(control)) => control,
                        Ok(None) => return SyncError::Closed,
                        Err(status) => return SyncError::Stream(status),
                    };
                    last_heard = Instant::now();
                    self.heard = true;
                    limiter.heard(keygate_proto::time::now_unix_ms());
                    match self.handle(control, &mut stream_log) {
                        Ok(Some(applied)) => ack_due = Some(applied),
                        Ok(None) => {}
                        Err(error) => return error,
                    }
                }
            }
            if let Some(revision) = ack_due {
                let ack = message(gateway_message::Msg::Ack(pb::Ack {
                    revision: revision.0,
                }));
                // Acks are cumulative: one that does not fit now is retried after the next message.
                if outbound.try_send(ack).is_ok() {
                    ack_due = None;
                }
            }
        }
    }

    /// Connects, says hello and opens the stream.
    async fn open(&mut self, url: &str) -> Result<Opened, SyncError> {
        let timeout = self.settings.connect_timeout;
        let mut endpoint = match Endpoint::from_shared(url.to_owned()) {
            Ok(endpoint) => endpoint
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                .initial_stream_window_size(SYNC_WINDOW_BYTES)
                .initial_connection_window_size(SYNC_WINDOW_BYTES),
            Err(error) => return Err(SyncError::Connect(error.to_string())),
        };
        match self.settings.tls.for_url(url) {
            Ok(None) => {}
            Ok(Some(tls)) => match endpoint.tls_config(tls) {
                Ok(with_tls) => endpoint = with_tls,
                Err(error) => return Err(SyncError::Connect(error_chain(&error))),
            },
            Err(reason) => return Err(SyncError::Connect(reason)),
        }
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return Err(SyncError::Connect(error_chain(&error))),
            Err(_) => return Err(SyncError::Connect(format!("timed out after {timeout:?}"))),
        };

        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        // Only this task writes the replica's revision and log id, so the two agree.
        let log_id = self.state.log_id();
        let applied = self.replica.applied_revision();
        let stream_log = StreamLog::new(log_id.clone(), applied);
        let hello = pb::Hello {
            gateway_id: self.settings.gateway_id.clone(),
            region: self.settings.region.clone(),
            version: keygate_proto::VERSION.to_owned(),
            applied_revision: applied.0,
            address: self.settings.address.clone(),
            propagation_bound_ms: millis(self.freshness.bound()),
            stale_policy: self.freshness.policy().as_str().to_owned(),
            log_id: log_id.0,
        };
        // The queue is new and empty, so this cannot fail.
        let _ = outbound.try_send(message(gateway_message::Msg::Hello(hello)));
        let mut request = tonic::Request::new(ReceiverStream::new(outbound_rx));
        request
            .metadata_mut()
            .insert("authorization", self.settings.authorization.clone());
        let mut client = pb::sync_client::SyncClient::new(channel.clone());
        let inbound = match tokio::time::timeout(timeout, client.stream(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(SyncError::Refused(status)),
            Err(_) => {
                return Err(SyncError::Connect(format!(
                    "no stream response after {timeout:?}"
                )));
            }
        };
        self.control_plane.store(Some(Arc::new(channel)));
        self.state.set_control_plane(Some(url));
        self.state.connected.store(true, Ordering::Release);
        self.metrics.sync_connected.set(1.0);
        tracing::info!(control_plane = %url, log_id = %stream_log.log_id, applied = applied.0, "sync stream open");
        Ok(Opened {
            outbound,
            inbound,
            stream_log,
        })
    }

    /// Applies one control message; returns the revision to ack when it applied something.
    fn handle(
        &mut self,
        control: pb::ControlMessage,
        stream: &mut StreamLog,
    ) -> Result<Option<Revision>, SyncError> {
        let Some(control) = control.msg else {
            return Err(SyncError::Protocol("empty control message".to_owned()));
        };
        match control {
            control_message::Msg::SnapshotBegin(begin) => {
                let theirs = LogId(begin.log_id);
                let revision = Revision(begin.revision);
                let applied = self.replica.applied_revision();
                if judge_log(&stream.log_id, applied, &theirs, revision) == LogVerdict::Older {
                    return Err(SyncError::OlderHistory {
                        log_id: theirs,
                        head: revision,
                        applied,
                    });
                }
                // Another log (or one we cannot tell is ours): the pongs waiting for a head
                // of the log being left would prove nothing about the new one.
                stream.switching = theirs != self.state.log_id();
                if stream.switching {
                    self.proofs.clear();
                }
                let expected = usize::try_from(begin.key_count).unwrap_or(usize::MAX);
                stream.snapshot = Some(Snapshot::new(revision, expected));
                stream.log_id = theirs;
                stream.held = revision;
                stream.shown = true;
                tracing::info!(
                    log_id = %stream.log_id,
                    revision = begin.revision,
                    keys = begin.key_count,
                    "receiving snapshot"
                );
                Ok(None)
            }
            control_message::Msg::SnapshotChunk(chunk) => {
                let building = stream.snapshot.as_mut().ok_or_else(|| {
                    SyncError::Protocol("snapshot chunk outside a snapshot".to_owned())
                })?;
                for key in chunk.keys {
                    let key = ReplicaKey::try_from(key).map_err(|error| {
                        SyncError::Protocol(format!("invalid snapshot key: {error}"))
                    })?;
                    building.insert(&key);
                }
                // The session state at the snapshot's revision, in whichever chunks it comes.
                let sessions = building.sessions_mut();
                for key in chunk.signing_keys {
                    sessions.insert_signing_key(&from_wire(key, "signing key")?);
                }
                for revoked in chunk.revoked_sessions {
                    sessions.insert_revoked_session(&from_wire(revoked, "revoked session")?);
                }
                for revoked in chunk.revoked_passkeys {
                    sessions.insert_revoked_passkey(&from_wire(revoked, "revoked passkey")?);
                }
                for user in chunk.users {
                    sessions.insert_user(&from_wire(user, "user state")?);
                }
                for identity in chunk.identities {
                    building.insert_identity(from_wire(identity, "identity")?);
                }
                Ok(None)
            }
            control_message::Msg::SnapshotEnd(end) => {
                let built = stream.snapshot.take().ok_or_else(|| {
                    SyncError::Protocol("snapshot end without a snapshot".to_owned())
                })?;
                if built.revision() != Revision(end.revision) {
                    return Err(SyncError::Protocol(format!(
                        "snapshot began at revision {} but ended at {}",
                        built.revision(),
                        end.revision
                    )));
                }
                let keys = built.len();
                let _span = spans::sync_apply("snapshot", end.revision, keys).entered();
                if stream.switching {
                    // Another store: nothing looked up in the old one may survive the switch.
                    self.replica.install_snapshot_of_another_log(built);
                    self.state.deleted.clear();
                } else {
                    self.replica.install_snapshot(built);
                }
                // From now on the replica's revisions are of the snapshot's log.
                self.state.set_log_id(stream.log_id.clone());
                stream.switching = false;
                self.state.snapshots_applied.fetch_add(1, Ordering::AcqRel);
                self.metrics.snapshots.increment(1);
                self.metrics.replica_keys.set(keys as f64);
                tracing::info!(log_id = %stream.log_id, revision = end.revision, keys, "snapshot installed");
                Ok(Some(self.after_apply()))
            }
            control_message::Msg::Events(batch) => {
                if stream.snapshot.is_some() {
                    return Err(SyncError::Protocol("events inside a snapshot".to_owned()));
                }
                // A control plane streams events only to a gateway on its own log.
                stream.shown = true;
                if batch.events.is_empty() {
                    return Ok(None);
                }
                let last = batch.events.last().map_or(0, |event| event.revision);
                let _span = spans::sync_apply("events", last, batch.events.len()).entered();
                for event in batch.events {
                    let event = Event::try_from(event)
                        .map_err(|error| SyncError::Protocol(format!("invalid event: {error}")))?;
                    // Remembered before the key leaves the replica, so that no request finds it
                    // in neither and asks the control plane. (Deleted it is, whether or not this
                    // event applies here.)
                    if let Change::KeyDeleted { hash, .. } = &event.change {
                        self.state.deleted.remember(*hash);
                    }
                    let applied = self.replica.apply(&event);
                    if let Err(gap) = applied {
                        // Whatever was applied before the gap stays; the hello says how far.
                        self.after_apply();
                        return Err(gap.into());
                    }
                }
                Ok(Some(self.after_apply()))
            }
            control_message::Msg::Usage(update) => {
                let windows: Vec<WindowUsage> = update
                    .windows
                    .into_iter()
                    .map(|window| WindowUsage {
                        holder: window.holder,
                        limit: window.limit,
                        window_start_unix_ms: window.window_start_unix_ms,
                        used: window.used,
                    })
                    .collect();
                self.limiter().apply_usage(
                    &windows,
                    update.live_gateways,
                    keygate_proto::time::now_unix_ms(),
                );
                Ok(None)
            }
            control_message::Msg::Lease(lease) => {
                self.limiter().apply_grant(
                    LeaseGrant {
                        holder: lease.holder,
                        request_id: lease.request_id,
                        lease_id: lease.lease_id,
                        granted: lease.granted,
                        ttl_ms: lease.ttl_ms,
                        exhausted: lease.exhausted,
                    },
                    keygate_proto::time::now_unix_ms(),
                );
                Ok(None)
            }
            control_message::Msg::Pong(pong) => {
                // The echo is our own clock; an echo from the future is not ours to trust.
                if pong.sent_at_nanos > self.freshness.now_nanos() {
                    return Ok(None);
                }
                let theirs = LogId(pong.log_id);
                let head = Revision(pong.head_revision);
                match judge_log(&stream.log_id, stream.held, &theirs, head) {
                    LogVerdict::Older => {
                        return Err(SyncError::OlderHistory {
                            log_id: theirs,
                            head,
                            applied: self.replica.applied_revision(),
                        });
                    }
                    LogVerdict::Other if stream.shown => {
                        return Err(SyncError::LogChanged {
                            from: stream.log_id.clone(),
                            to: theirs,
                        });
                    }
                    // Its snapshot is on the way (see the module docs); until then it proves
                    // nothing.
                    LogVerdict::Other => return Ok(None),
                    LogVerdict::Same => {}
                }
                if stream.switching {
                    self.proofs.defer(head, pong.sent_at_nanos);
                    return Ok(None);
                }
                if stream.log_id.is_unknown()
                    && !theirs.is_unknown()
                    && stream.snapshot.is_none()
                    && head >= stream.held
                {
                    // Revisions from a control plane that did not say its log id, resumed by
                    // one that does and whose log reaches them: that log is ours from now on,
                    // so that an older copy of it is recognised later.
                    tracing::info!(log_id = %theirs, "the control plane names the log of the applied revisions");
                    self.state.set_log_id(theirs.clone());
                    stream.log_id = theirs;
                }
                let applied = self.replica.applied_revision();
                self.proofs
                    .on_pong(&self.freshness, head, pong.sent_at_nanos, applied);
                Ok(None)
            }
        }
    }

    /// Turns pending pongs into proofs and publishes the new revision; returns it.
    fn after_apply(&mut self) -> Revision {
        let applied = self.replica.applied_revision();
        self.proofs.on_applied(&self.freshness, applied);
        self.metrics.replica_revision.set(applied.0 as f64);
        applied
    }
}

/// Sends what the limiter has to send: one usage report, the lease requests and returns. A
/// return that does not fit is kept for the next tick; a report or request that does not fit
/// is dropped (the use is reported again with the next use, the request asked again after
/// its wait).
fn send_limits(limiter: &Limiter, outbound: &mpsc::Sender<pb::GatewayMessage>, outgoing: Outgoing) {
    if outgoing.is_empty() {
        return;
    }
    if !outgoing.report.is_empty() {
        let report = pb::UsageReport {
            windows: outgoing
                .report
                .into_iter()
                .map(|usage| pb::WindowUsage {
                    holder: usage.holder,
                    limit: usage.limit,
                    window_start_unix_ms: usage.window_start_unix_ms,
                    used: usage.used,
                })
                .collect(),
        };
        let _ = outbound.try_send(message(gateway_message::Msg::Usage(report)));
    }
    for request in outgoing.requests {
        let _ = outbound.try_send(message(gateway_message::Msg::LeaseRequest(
            pb::LeaseRequest {
                holder: request.holder,
                wanted: request.wanted,
                request_id: request.request_id,
            },
        )));
    }
    let mut kept = Vec::new();
    for lease in outgoing.returns {
        let wire = pb::LeaseReturn {
            lease_id: lease.lease_id.clone(),
            holder: lease.holder.clone(),
            unspent: lease.unspent,
        };
        if outbound
            .try_send(message(gateway_message::Msg::LeaseReturn(wire)))
            .is_err()
        {
            kept.push(lease);
        }
    }
    limiter.keep_returns(kept);
}

/// On shutdown: gives every unspent lease back, closes the gateway's side of the stream and
/// waits (at most [`SHUTDOWN_RETURN_WAIT`]) for the control plane to end it, so the returns
/// are read before the connection goes.
async fn return_leases(
    limiter: &Limiter,
    outbound: mpsc::Sender<pb::GatewayMessage>,
    mut inbound: tonic::Streaming<pb::ControlMessage>,
) {
    let returns = limiter.return_everything();
    if returns.is_empty() {
        return;
    }
    let count = returns.len();
    let mut returns = returns.into_iter();
    let sent = tokio::time::timeout(SHUTDOWN_RETURN_WAIT, async {
        for lease in returns.by_ref() {
            let wire = pb::LeaseReturn {
                lease_id: lease.lease_id,
                holder: lease.holder,
                unspent: lease.unspent,
            };
            if outbound
                .send(message(gateway_message::Msg::LeaseReturn(wire)))
                .await
                .is_err()
            {
                break;
            }
        }
        drop(outbound);
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    if sent.is_err() {
        tracing::warn!(
            leases = count,
            "shutdown: the control plane did not confirm the returned leases in time; unreturned ones are written off"
        );
    }
}

/// Converts one snapshot item to its domain type; an invalid one is a protocol violation.
fn from_wire<W, T>(wire: W, what: &str) -> Result<T, SyncError>
where
    T: TryFrom<W>,
    T::Error: std::fmt::Display,
{
    T::try_from(wire)
        .map_err(|error| SyncError::Protocol(format!("invalid snapshot {what}: {error}")))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn message(msg: gateway_message::Msg) -> pb::GatewayMessage {
    pb::GatewayMessage { msg: Some(msg) }
}

/// Delay before the next attempt: 50 ms doubling per failure up to 5 s, with the upper half
/// randomised so that gateways restarted together do not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    let exponential = BACKOFF_START.saturating_mul(1u32 << failures.min(16));
    let ceiling = exponential.min(BACKOFF_MAX);
    let half = ceiling / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::StalePolicy;

    fn log(id: &str) -> LogId {
        LogId(id.to_owned())
    }

    #[test]
    fn log_reports_are_judged_by_log_id_then_head() {
        let (l, m, unknown) = (log("L"), log("M"), LogId::default());
        // Our log: a head at or above what we hold is fine, below it is an older copy.
        assert_eq!(
            judge_log(&l, Revision(5), &l, Revision(5)),
            LogVerdict::Same
        );
        assert_eq!(
            judge_log(&l, Revision(5), &l, Revision(9)),
            LogVerdict::Same
        );
        assert_eq!(
            judge_log(&l, Revision(5), &l, Revision(4)),
            LogVerdict::Older
        );
        // Another log: its revisions do not compare with ours, whichever is higher.
        assert_eq!(
            judge_log(&l, Revision(5), &m, Revision(4)),
            LogVerdict::Other
        );
        assert_eq!(
            judge_log(&l, Revision(5), &m, Revision(9)),
            LogVerdict::Other
        );
        // Unknown on either side: as before log ids, the revisions compare as they are.
        assert_eq!(
            judge_log(&unknown, Revision(5), &l, Revision(4)),
            LogVerdict::Same
        );
        assert_eq!(
            judge_log(&l, Revision(5), &unknown, Revision(4)),
            LogVerdict::Same
        );
    }

    fn task() -> SyncTask {
        SyncTask::new(
            SyncSettings {
                urls: vec!["http://127.0.0.1:1".to_owned()],
                authorization: MetadataValue::from_static("Bearer test"),
                gateway_id: "gw-test".to_owned(),
                region: String::new(),
                address: String::new(),
                ping_interval: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                tls: ControlPlaneTls {
                    trust: Trust::System,
                    identity: None,
                },
            },
            Arc::new(Replica::new()),
            Arc::new(Freshness::new(
                Duration::from_secs(60),
                StalePolicy::FailClosed,
            )),
            Arc::new(SyncState::default()),
            Arc::new(ControlPlaneSlot::empty()),
            Metrics::register(),
        )
    }

    fn control(msg: control_message::Msg) -> pb::ControlMessage {
        pb::ControlMessage { msg: Some(msg) }
    }

    fn begin(log_id: &str, revision: u64) -> pb::ControlMessage {
        control(control_message::Msg::SnapshotBegin(pb::SnapshotBegin {
            revision,
            key_count: 1,
            log_id: log_id.to_owned(),
        }))
    }

    /// A distinct hash per (short) owner name.
    fn hash_of(owner: &str) -> keygate_proto::KeyHash {
        let mut hash = [0; 32];
        hash[..owner.len()].copy_from_slice(owner.as_bytes());
        keygate_proto::KeyHash(hash)
    }

    fn chunk(owner: &str) -> pb::ControlMessage {
        let key = ReplicaKey {
            hash: hash_of(owner),
            id: keygate_proto::KeyId::generate(),
            owner: owner.to_owned(),
            enabled: true,
            expires_unix_ms: None,
            meta: keygate_proto::Meta::new(),
            limits: Default::default(),
        };
        control(control_message::Msg::SnapshotChunk(pb::SnapshotChunk {
            keys: vec![(&key).into()],
            ..pb::SnapshotChunk::default()
        }))
    }

    fn end(revision: u64) -> pb::ControlMessage {
        control(control_message::Msg::SnapshotEnd(pb::SnapshotEnd {
            revision,
        }))
    }

    fn pong(task: &SyncTask, log_id: &str, head: u64) -> pb::ControlMessage {
        control(control_message::Msg::Pong(pb::Pong {
            nonce: 1,
            sent_at_nanos: task.freshness.now_nanos(),
            head_revision: head,
            log_id: log_id.to_owned(),
        }))
    }

    /// A stream as `session` opens it: judged against what the gateway holds now.
    fn open(task: &SyncTask) -> StreamLog {
        StreamLog::new(task.state.log_id(), task.replica.applied_revision())
    }

    /// Installs a one-key snapshot of `log_id` at `revision` over a fresh stream.
    fn install(task: &mut SyncTask, log_id: &str, revision: u64, owner: &str) {
        let mut stream = open(task);
        assert!(
            task.handle(begin(log_id, revision), &mut stream)
                .unwrap()
                .is_none()
        );
        assert!(task.handle(chunk(owner), &mut stream).unwrap().is_none());
        let acked = task.handle(end(revision), &mut stream).unwrap();
        assert_eq!(acked, Some(Revision(revision)));
    }

    fn owner_of(task: &SyncTask, owner: &str) -> bool {
        task.replica.with_entry(&hash_of(owner), |_| ()).is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_of_our_log_below_what_we_applied_is_refused_and_nothing_changes() {
        let mut task = task();
        install(&mut task, "L", 5, "kept");
        assert_eq!(task.state.log_id(), log("L"));

        let mut stream = open(&task);
        match task.handle(begin("L", 3), &mut stream) {
            Err(SyncError::OlderHistory {
                log_id,
                head,
                applied,
            }) => assert_eq!(
                (log_id, head, applied),
                (log("L"), Revision(3), Revision(5))
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Nothing of it was taken: no snapshot in progress, the replica as it was.
        assert!(stream.snapshot.is_none());
        assert!(matches!(
            task.handle(chunk("restored"), &mut stream),
            Err(SyncError::Protocol(_))
        ));
        assert_eq!(task.replica.applied_revision(), Revision(5));
        assert!(owner_of(&task, "kept") && !owner_of(&task, "restored"));
        assert_eq!(task.state.log_id(), log("L"));
        assert_eq!(task.state.snapshots_applied.load(Ordering::Acquire), 1);

        // The same log at or above what we hold is an ordinary snapshot.
        install(&mut task, "L", 5, "same");
        assert!(owner_of(&task, "same"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pong_of_our_log_below_what_we_held_when_the_stream_opened_is_refused() {
        let mut task = task();
        install(&mut task, "L", 5, "kept");
        let mut stream = open(&task);
        let refused = task.handle(pong(&task, "L", 4), &mut stream);
        assert!(
            matches!(
                refused,
                Err(SyncError::OlderHistory {
                    head: Revision(4),
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(
            task.freshness.staleness().is_none(),
            "and it proves nothing"
        );

        // An honest pong whose head was read before events that are already applied is not
        // refused: it is judged against what the gateway held when the stream opened.
        let mut stream = open(&task);
        let event = pb::Event::from(&Event {
            revision: Revision(6),
            committed_unix_ms: 1,
            change: keygate_proto::Change::KeyDeleted {
                id: keygate_proto::KeyId::generate(),
                hash: keygate_proto::KeyHash([7; 32]),
            },
        });
        let batch = control(control_message::Msg::Events(pb::EventBatch {
            events: vec![event],
        }));
        assert_eq!(task.handle(batch, &mut stream).unwrap(), Some(Revision(6)));
        assert!(
            task.handle(pong(&task, "L", 5), &mut stream)
                .unwrap()
                .is_none()
        );
        assert_eq!(task.freshness.staleness(), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_of_another_log_is_installed_and_that_log_becomes_ours() {
        let mut task = task();
        install(&mut task, "L", 5, "old");
        let mut stream = open(&task);

        // A pong of the other log may overtake its snapshot: ignored, no reconnect.
        assert!(
            task.handle(pong(&task, "M", 2), &mut stream)
                .unwrap()
                .is_none()
        );
        assert!(
            task.freshness.staleness().is_none(),
            "another log vouches for nothing"
        );

        // The snapshot is of a lower revision, but of another log: installed.
        task.handle(begin("M", 2), &mut stream).unwrap();
        task.handle(chunk("new"), &mut stream).unwrap();
        // Its pong waits for the snapshot, though the old log's revision 5 is past its head.
        task.handle(pong(&task, "M", 2), &mut stream).unwrap();
        assert!(task.freshness.staleness().is_none());
        assert_eq!(task.handle(end(2), &mut stream).unwrap(), Some(Revision(2)));
        assert_eq!(task.freshness.staleness(), Some(Duration::ZERO));
        assert_eq!(task.replica.applied_revision(), Revision(2));
        assert_eq!(task.state.log_id(), log("M"));
        assert!(owner_of(&task, "new") && !owner_of(&task, "old"));

        // Once the stream has shown its log, a pong of yet another one means the control
        // plane's log changed under it: reconnect.
        let changed = task.handle(pong(&task, "N", 9), &mut stream);
        assert!(
            matches!(changed, Err(SyncError::LogChanged { .. })),
            "{changed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_log_ids_revisions_compare_as_before() {
        let mut task = task();
        // A control plane that names no log: snapshots are taken whatever their revision.
        install(&mut task, "", 5, "first");
        assert_eq!(task.state.log_id(), LogId::default());
        install(&mut task, "", 3, "second");
        assert_eq!(task.replica.applied_revision(), Revision(3));
        let mut stream = open(&task);
        task.handle(pong(&task, "", 3), &mut stream).unwrap();
        assert_eq!(task.freshness.staleness(), Some(Duration::ZERO));

        // A gateway with known revisions of an unnamed log, met by a control plane naming
        // its log below them: no proof of ours, taken as before (a snapshot would follow).
        let mut stream = open(&task);
        task.handle(pong(&task, "L", 2), &mut stream).unwrap();
        assert_eq!(
            task.state.log_id(),
            LogId::default(),
            "not adopted below what we hold"
        );
        install(&mut task, "L", 2, "named");
        assert_eq!(task.state.log_id(), log("L"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_control_plane_that_resumes_unnamed_revisions_names_their_log() {
        let mut task = task();
        install(&mut task, "", 5, "first");
        let mut stream = open(&task);
        task.handle(pong(&task, "L", 7), &mut stream).unwrap();
        assert_eq!(task.state.log_id(), log("L"));
        // From then on an older copy of that log is recognised.
        let mut stream = open(&task);
        assert!(matches!(
            task.handle(begin("L", 4), &mut stream),
            Err(SyncError::OlderHistory { .. })
        ));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for failures in 0..40 {
            let delay = backoff(failures);
            let ceiling = BACKOFF_START
                .saturating_mul(1u32 << failures.min(16))
                .min(BACKOFF_MAX);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{failures}: {delay:?}"
            );
        }
        assert!(backoff(0) <= Duration::from_millis(50));
        assert!(backoff(30) >= Duration::from_millis(2500));
    }
}
