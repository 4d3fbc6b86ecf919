//! Test support: a control plane on 127.0.0.1:0 over a temporary SQLite file, and clients that
//! present the right (or a chosen) token.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use keygate_control_plane::{ControlPlane, ControlPlaneConfig, ControlPlaneError};
use keygate_proto::pb;
use keygate_proto::pb::admin_client::AdminClient;
use keygate_proto::pb::sync_client::SyncClient;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123";
pub const GATEWAY_TOKEN: &str = "gateway-token-for-tests-0123";
/// Upper bound for anything a test waits for; far above what any step takes.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct TestControlPlane {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<Result<(), ControlPlaneError>>>,
    _dir: tempfile::TempDir,
}

pub fn config(dir: &tempfile::TempDir) -> ControlPlaneConfig {
    ControlPlaneConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}", dir.path().join("data/keygate.db").display()),
        admin_token: ADMIN_TOKEN.into(),
        gateway_token: GATEWAY_TOKEN.into(),
        ..ControlPlaneConfig::default()
    }
}

pub fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle()
}

impl TestControlPlane {
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// A control plane on `database` (a `postgres://` URL that other replicas may share), or
    /// on a SQLite file of its own when `None`.
    pub async fn start_on(database: Option<&str>) -> Self {
        Self::start_configured(database, |_| {}).await
    }

    /// Like [`TestControlPlane::start_on`], with the config changed by `configure` first.
    pub async fn start_configured(
        database: Option<&str>,
        configure: impl FnOnce(&mut ControlPlaneConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(&dir);
        if let Some(database) = database {
            config.database = database.to_owned();
        }
        configure(&mut config);
        let control_plane = ControlPlane::bind(config, prometheus()).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let grpc_addr = control_plane.grpc_addr();
        let http_addr = control_plane.http_addr();
        let server = tokio::spawn(control_plane.serve(async {
            let _ = stopped.await;
        }));
        Self {
            grpc_addr,
            http_addr,
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
        }
    }

    /// Triggers shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) -> Result<(), ControlPlaneError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let server = self.server.take().unwrap();
        tokio::time::timeout(DEADLINE, server)
            .await
            .expect("serve returned before the deadline")
            .unwrap()
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn admin(&self) -> Admin {
        Admin {
            client: AdminClient::new(self.channel().await),
            token: Some(ADMIN_TOKEN.into()),
            actor: None,
        }
    }

    pub async fn sync_client(&self) -> SyncClient<Channel> {
        SyncClient::new(self.channel().await)
    }

    /// Opens a sync stream with `token` (None: no authorization header).
    pub async fn open_stream(&self, token: Option<&str>) -> Result<Gateway, Status> {
        let (tx, rx) = mpsc::channel(64);
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let inbound = self.sync_client().await.stream(request).await?.into_inner();
        Ok(Gateway { tx, inbound })
    }

    /// A gateway stream that has sent its hello.
    pub async fn gateway(&self, id: &str, applied: u64) -> Gateway {
        let gateway = self.open_stream(Some(GATEWAY_TOKEN)).await.unwrap();
        gateway.hello(id, applied).await;
        gateway
    }
}

pub fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// An admin client that presents `token` and names itself `actor`.
pub struct Admin {
    pub client: AdminClient<Channel>,
    pub token: Option<String>,
    pub actor: Option<String>,
}

impl Admin {
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = with_token(message, self.token.as_deref());
        if let Some(actor) = &self.actor {
            request
                .metadata_mut()
                .insert("x-keygate-actor", actor.parse().unwrap());
        }
        request
    }

    pub async fn create(&mut self, owner: &str) -> pb::IssuedKey {
        let request = self.request(pb::CreateKeyRequest {
            owner: owner.into(),
            ..pb::CreateKeyRequest::default()
        });
        self.client.create_key(request).await.unwrap().into_inner()
    }
}

/// The gateway end of one sync stream.
pub struct Gateway {
    pub tx: mpsc::Sender<pb::GatewayMessage>,
    pub inbound: Streaming<pb::ControlMessage>,
}

impl Gateway {
    pub async fn send(&self, msg: pb::gateway_message::Msg) {
        self.tx
            .send(pb::GatewayMessage { msg: Some(msg) })
            .await
            .unwrap();
    }

    pub async fn hello(&self, id: &str, applied: u64) {
        self.send(pb::gateway_message::Msg::Hello(pb::Hello {
            gateway_id: id.into(),
            region: "test".into(),
            version: "0.0.0".into(),
            applied_revision: applied,
            address: "127.0.0.1:8080".into(),
            ..pb::Hello::default()
        }))
        .await;
    }

    /// The next message, or the status that ended the stream (`Ok(None)`: ended cleanly).
    pub async fn next(&mut self) -> Result<Option<pb::control_message::Msg>, Status> {
        let message = tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .expect("a message before the deadline")?;
        Ok(message.map(|m| m.msg.expect("every control message has a kind")))
    }

    /// The next message, which must exist.
    pub async fn expect(&mut self) -> pb::control_message::Msg {
        self.next()
            .await
            .unwrap()
            .expect("the stream is still open")
    }

    /// Reads event batches until `revision` has arrived; returns every event seen.
    pub async fn events_until(&mut self, revision: u64) -> Vec<pb::Event> {
        let mut events = Vec::new();
        while events
            .last()
            .is_none_or(|e: &pb::Event| e.revision < revision)
        {
            match self.expect().await {
                pb::control_message::Msg::Events(batch) => events.extend(batch.events),
                other => panic!("expected events, got {other:?}"),
            }
        }
        events
    }
}

/// Polls `check` until it holds; panics after [`DEADLINE`]. For state that changes in the
/// background (the registry after an ack), never as a stand-in for a sleep.
pub async fn eventually_async<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
