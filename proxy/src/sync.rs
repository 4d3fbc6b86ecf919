//! The sync client: one task that owns the replication stream to the control plane and feeds
//! the replica (DESIGN.md, "Sync").
//!
//! Per connection: hello with the applied revision; then a snapshot (built off to the side,
//! swapped in at its end) or the events after that revision; then events as they commit, each
//! exactly the one after the applied revision. Anything else is a gap: the stream is dropped
//! and the client reconnects with hello(applied), which resumes without a snapshot whenever the
//! control plane still has the events. An ack follows every applied batch and snapshot.
//!
//! Every `ping_interval` a ping carries the gateway's monotonic send time; pongs feed
//! [`crate::freshness`]. A stream that delivers nothing for three ping intervals is treated as
//! dead (a blackholed link sends no error). Connection failures move on to the next control
//! plane URL after an exponential backoff with jitter (50 ms doubling to 5 s). Network errors
//! are logged, never fatal; the task stops only on shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keygate_proto::pb::{self, control_message, gateway_message};
use keygate_proto::{Event, ReplicaKey, Revision};
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
use crate::metrics::Metrics;
use crate::miss::ControlPlaneSlot;
use crate::replica::{Gap, Replica, Snapshot};
use crate::status::SyncState;

/// First reconnect delay; doubles per consecutive failure.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Intervals of silence after which a stream is treated as dead.
const SILENT_INTERVALS: u32 = 3;
/// Outbound messages (hello, acks, pings) queued at most; pings beyond it are skipped.
const OUTBOUND_CAPACITY: usize = 32;

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
            let ended = tokio::select! {
                () = shutdown.cancelled() => break,
                ended = self.session(&url) => ended,
            };
            self.disconnected();
            if self.heard {
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
        self.control_plane.store(None);
        self.state.connected.store(false, Ordering::Release);
        self.metrics.sync_connected.set(0.0);
    }

    /// One connection, from connect to whatever ends it.
    async fn session(&mut self, url: &str) -> SyncError {
        let timeout = self.settings.connect_timeout;
        let mut endpoint = match Endpoint::from_shared(url.to_owned()) {
            Ok(endpoint) => endpoint.connect_timeout(timeout).tcp_nodelay(true),
            Err(error) => return SyncError::Connect(error.to_string()),
        };
        match self.settings.tls.for_url(url) {
            Ok(None) => {}
            Ok(Some(tls)) => match endpoint.tls_config(tls) {
                Ok(with_tls) => endpoint = with_tls,
                Err(error) => return SyncError::Connect(error_chain(&error)),
            },
            Err(reason) => return SyncError::Connect(reason),
        }
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return SyncError::Connect(error_chain(&error)),
            Err(_) => return SyncError::Connect(format!("timed out after {timeout:?}")),
        };

        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let hello = pb::Hello {
            gateway_id: self.settings.gateway_id.clone(),
            region: self.settings.region.clone(),
            version: keygate_proto::VERSION.to_owned(),
            applied_revision: self.replica.applied_revision().0,
            address: self.settings.address.clone(),
            propagation_bound_ms: millis(self.freshness.bound()),
            stale_policy: self.freshness.policy().as_str().to_owned(),
        };
        // The queue is new and empty, so this cannot fail.
        let _ = outbound.try_send(message(gateway_message::Msg::Hello(hello)));
        let mut request = tonic::Request::new(ReceiverStream::new(outbound_rx));
        request
            .metadata_mut()
            .insert("authorization", self.settings.authorization.clone());
        let mut client = pb::sync_client::SyncClient::new(channel.clone());
        let mut inbound = match tokio::time::timeout(timeout, client.stream(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return SyncError::Refused(status),
            Err(_) => return SyncError::Connect(format!("no stream response after {timeout:?}")),
        };
        self.control_plane.store(Some(Arc::new(channel)));
        self.state.connected.store(true, Ordering::Release);
        self.metrics.sync_connected.set(1.0);
        tracing::info!(control_plane = %url, applied = self.replica.applied_revision().0, "sync stream open");

        let ping_interval = self.settings.ping_interval;
        let silence_limit = ping_interval * SILENT_INTERVALS;
        let mut ticker = tokio::time::interval(ping_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut snapshot: Option<Snapshot> = None;
        let mut ack_due: Option<Revision> = None;
        loop {
            tokio::select! {
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
                received = inbound.message() => {
                    let control = match received {
                        Ok(Some(control)) => control,
                        Ok(None) => return SyncError::Closed,
                        Err(status) => return SyncError::Stream(status),
                    };
                    last_heard = Instant::now();
                    self.heard = true;
                    match self.handle(control, &mut snapshot) {
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

    /// Applies one control message; returns the revision to ack when it applied something.
    fn handle(
        &mut self,
        control: pb::ControlMessage,
        snapshot: &mut Option<Snapshot>,
    ) -> Result<Option<Revision>, SyncError> {
        let Some(control) = control.msg else {
            return Err(SyncError::Protocol("empty control message".to_owned()));
        };
        match control {
            control_message::Msg::SnapshotBegin(begin) => {
                let expected = usize::try_from(begin.key_count).unwrap_or(usize::MAX);
                *snapshot = Some(Snapshot::new(Revision(begin.revision), expected));
                tracing::info!(
                    revision = begin.revision,
                    keys = begin.key_count,
                    "receiving snapshot"
                );
                Ok(None)
            }
            control_message::Msg::SnapshotChunk(chunk) => {
                let building = snapshot.as_mut().ok_or_else(|| {
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
                Ok(None)
            }
            control_message::Msg::SnapshotEnd(end) => {
                let built = snapshot.take().ok_or_else(|| {
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
                self.replica.install_snapshot(built);
                self.state.snapshots_applied.fetch_add(1, Ordering::AcqRel);
                self.metrics.snapshots.increment(1);
                self.metrics.replica_keys.set(keys as f64);
                tracing::info!(revision = end.revision, keys, "snapshot installed");
                Ok(Some(self.after_apply()))
            }
            control_message::Msg::Events(batch) => {
                if snapshot.is_some() {
                    return Err(SyncError::Protocol("events inside a snapshot".to_owned()));
                }
                if batch.events.is_empty() {
                    return Ok(None);
                }
                for event in batch.events {
                    let event = Event::try_from(event)
                        .map_err(|error| SyncError::Protocol(format!("invalid event: {error}")))?;
                    let applied = self.replica.apply(&event);
                    if let Err(gap) = applied {
                        // Whatever was applied before the gap stays; the hello says how far.
                        self.after_apply();
                        return Err(gap.into());
                    }
                }
                Ok(Some(self.after_apply()))
            }
            control_message::Msg::Pong(pong) => {
                // The echo is our own clock; an echo from the future is not ours to trust.
                if pong.sent_at_nanos <= self.freshness.now_nanos() {
                    let applied = self.replica.applied_revision();
                    self.proofs.on_pong(
                        &self.freshness,
                        Revision(pong.head_revision),
                        pong.sent_at_nanos,
                        applied,
                    );
                }
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
mod tests {
    use super::*;

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
