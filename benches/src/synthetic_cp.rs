//! A synthetic control plane: serves the `keygate.v1.Sync` service with a snapshot of N
//! deterministically generated keys, so real gateway processes can hold a million keys without
//! a million admin calls. It answers the gateway's hello with the snapshot (unless the gateway
//! already has its revision), pings with pongs carrying the snapshot's revision as the head (so
//! a gateway becomes fresh, hence ready, as soon as it has installed the snapshot), and every
//! `LookupKey` with "absent". No events ever follow: the key set is fixed.
//!
//! It also writes the plaintexts (valid, disabled, expired, unknown, malformed) to files, for
//! the load generator and for the nginx/HAProxy maps of the side-by-side comparison.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use keygate_proto::pb::sync_server::{Sync, SyncServer};
use keygate_proto::pb::{self, control_message, gateway_message};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::keyfile;
use crate::keyset::{self, KeyKind, KeySetSpec, KeyStream, Malformation};

/// Keys per snapshot chunk, as the real control plane sends them.
pub const CHUNK_KEYS: usize = 5000;

/// The plaintexts of a generated set, by what a gateway answers for them.
#[derive(Debug, Default, Clone)]
pub struct KeyFiles {
    pub valid: Vec<String>,
    pub disabled: Vec<String>,
    pub expired: Vec<String>,
    pub unknown: Vec<String>,
    pub malformed: Vec<String>,
}

impl KeyFiles {
    /// Writes `valid.txt`, `disabled.txt`, `expired.txt`, `unknown.txt` and `malformed.txt`
    /// into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, keys) in [
            (keyfile::VALID, &self.valid),
            (keyfile::DISABLED, &self.disabled),
            (keyfile::EXPIRED, &self.expired),
            (keyfile::UNKNOWN, &self.unknown),
            (keyfile::MALFORMED, &self.malformed),
        ] {
            keyfile::write(&dir.join(name), keys.iter().map(String::as_str))?;
        }
        Ok(())
    }
}

/// The snapshot every gateway gets, encoded once.
struct SnapshotMessages {
    revision: u64,
    key_count: u64,
    chunks: Vec<pb::SnapshotChunk>,
}

/// A synthetic control plane, built and ready to serve.
#[derive(Clone)]
pub struct SyntheticControlPlane {
    snapshot: Arc<SnapshotMessages>,
    /// `Bearer <token>` the gateways must send; `None` accepts any.
    authorization: Option<Arc<str>>,
    snapshots_sent: Arc<AtomicU64>,
}

impl SyntheticControlPlane {
    /// Generates the key set of `spec` (and `unknown` keys outside it); returns the server and
    /// the plaintexts.
    pub fn generate(
        spec: KeySetSpec,
        unknown: usize,
        gateway_token: Option<&str>,
    ) -> (Self, KeyFiles) {
        let mut files = KeyFiles::default();
        let mut chunks = Vec::with_capacity(spec.keys.div_ceil(CHUNK_KEYS));
        let mut chunk = pb::SnapshotChunk::default();
        for key in KeyStream::new(spec) {
            match key.kind {
                KeyKind::Valid => files.valid.push(key.plaintext),
                KeyKind::Disabled => files.disabled.push(key.plaintext),
                KeyKind::Expired => files.expired.push(key.plaintext),
            }
            chunk.keys.push(pb::ReplicaKey::from(&key.record));
            if chunk.keys.len() == CHUNK_KEYS {
                chunks.push(std::mem::take(&mut chunk));
            }
        }
        if !chunk.keys.is_empty() {
            chunks.push(chunk);
        }
        files.unknown = keyset::unknown_keys(spec.seed, unknown);
        let malformations = [
            Malformation::WrongChecksum,
            Malformation::Truncated,
            Malformation::BadCharacter,
        ];
        files.malformed = files
            .unknown
            .iter()
            .take(3000)
            .enumerate()
            .map(|(index, key)| keyset::malformed(key, malformations[index % 3]))
            .collect();
        let server = Self {
            snapshot: Arc::new(SnapshotMessages {
                // As if every key had been created by its own event.
                revision: (spec.keys as u64).max(1),
                key_count: spec.keys as u64,
                chunks,
            }),
            authorization: gateway_token.map(|token| Arc::from(format!("Bearer {token}"))),
            snapshots_sent: Arc::new(AtomicU64::new(0)),
        };
        (server, files)
    }

    /// The revision of the snapshot (the head, as far as gateways can tell).
    pub fn revision(&self) -> u64 {
        self.snapshot.revision
    }

    /// Snapshots sent so far.
    pub fn snapshots_sent(&self) -> u64 {
        self.snapshots_sent.load(Ordering::Relaxed)
    }

    /// Serves gRPC on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tonic::transport::Server::builder()
            .add_service(SyncServer::new(self))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.authorization else {
            return Ok(());
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        if presented == Some(&**expected) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid gateway token"))
        }
    }
}

type ControlStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

fn control(msg: control_message::Msg) -> Result<pb::ControlMessage, Status> {
    Ok(pb::ControlMessage { msg: Some(msg) })
}

#[tonic::async_trait]
impl Sync for SyntheticControlPlane {
    type StreamStream = ControlStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::GatewayMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        self.authorize(&request)?;
        let mut inbound = request.into_inner();
        let snapshot = Arc::clone(&self.snapshot);
        let sent = Arc::clone(&self.snapshots_sent);
        let (outbound, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            let hello = match inbound.message().await {
                Ok(Some(pb::GatewayMessage {
                    msg: Some(gateway_message::Msg::Hello(hello)),
                })) => hello,
                _ => {
                    let refusal = Status::invalid_argument("the first message must be a hello");
                    let _ = outbound.send(Err(refusal)).await;
                    return;
                }
            };
            if hello.applied_revision != snapshot.revision {
                let started = Instant::now();
                if send_snapshot(&outbound, &snapshot).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "synthetic-cp: snapshot of {} keys at revision {} sent to {:?} in {:.0} ms",
                    snapshot.key_count,
                    snapshot.revision,
                    hello.gateway_id,
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(gateway_message::Msg::Ping(ping)) = message.msg {
                    let pong = pb::Pong {
                        nonce: ping.nonce,
                        sent_at_nanos: ping.sent_at_nanos,
                        head_revision: snapshot.revision,
                        // No log id: the gateway judges revisions as before log ids.
                        log_id: String::new(),
                    };
                    if outbound
                        .send(control(control_message::Msg::Pong(pong)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn lookup_key(
        &self,
        request: Request<pb::LookupKeyRequest>,
    ) -> Result<Response<pb::LookupKeyResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(pb::LookupKeyResponse {
            key: None,
            key_revision: 0,
            head_revision: self.snapshot.revision,
            log_id: String::new(),
        }))
    }
}

type Outbound = mpsc::Sender<Result<pb::ControlMessage, Status>>;

async fn send_snapshot(outbound: &Outbound, snapshot: &SnapshotMessages) -> Result<(), ()> {
    let begin = pb::SnapshotBegin {
        revision: snapshot.revision,
        key_count: snapshot.key_count,
        // No log id (see the pong above).
        log_id: String::new(),
    };
    outbound
        .send(control(control_message::Msg::SnapshotBegin(begin)))
        .await
        .map_err(drop)?;
    for chunk in &snapshot.chunks {
        outbound
            .send(control(control_message::Msg::SnapshotChunk(chunk.clone())))
            .await
            .map_err(drop)?;
    }
    let end = pb::SnapshotEnd {
        revision: snapshot.revision,
    };
    outbound
        .send(control(control_message::Msg::SnapshotEnd(end)))
        .await
        .map_err(drop)
}
