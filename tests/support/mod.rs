//! Test support: a real control plane (SQLite in a temp dir), N gateways and the echo upstream,
//! all in-process on 127.0.0.1:0, plus a small HTTP client and a deadline-bound poller.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cli;
pub mod fault;
pub mod limits;
pub mod otlp;
pub mod passkeys;
pub mod processes;
pub mod smtp;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::admin_client::{self, AdminClient};
use keygate::echo::EchoUpstream;
use keygate_control_plane::{ControlPlane, ControlPlaneConfig};
use keygate_proto::pb;
use keygate_proxy::{Gateway, GatewayStatus, ProxyConfig, RouteConfig};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A server running in this process, stoppable on demand.
pub struct Running<T> {
    stop: watch::Sender<bool>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    pub fn spawn<F>(
        serve: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
    ) -> Self
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (stop, rx) = watch::channel(false);
        let shutdown = Box::pin(async move {
            let mut rx = rx;
            let _ = rx.wait_for(|s| *s).await;
        });
        Self {
            stop,
            task: tokio::spawn(serve(shutdown)),
        }
    }

    /// Signals shutdown and waits for the server to return.
    pub async fn stop(self) -> T {
        let _ = self.stop.send(true);
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub status: GatewayStatus,
    pub server: Running<Result<(), keygate_proxy::ProxyError>>,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Changes the control plane's config before each start.
pub type ConfigureControlPlane = Box<dyn Fn(&mut ControlPlaneConfig) + Send + Sync>;

pub struct Cluster {
    pub configure_control_plane: Option<ConfigureControlPlane>,
    pub data_dir: tempfile::TempDir,
    pub admin_token: String,
    pub gateway_token: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub control_plane: Option<Running<Result<(), keygate_control_plane::ControlPlaneError>>>,
    pub upstream_addr: SocketAddr,
    pub upstream: Running<()>,
    pub gateways: Vec<TestGateway>,
}

impl Cluster {
    /// A control plane, `gateways` gateways and an echo upstream; returns once every gateway
    /// holds a snapshot.
    pub async fn start(gateways: usize) -> Self {
        Self::start_configured(gateways, None).await
    }

    /// Like [`Cluster::start`], with the control plane's config changed by `configure`.
    pub async fn start_configured(
        gateways: usize,
        configure: Option<ConfigureControlPlane>,
    ) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let admin_token = keygate::dev::random_token();
        let gateway_token = keygate::dev::random_token();
        let upstream = EchoUpstream::bind(localhost()).await.unwrap();
        let upstream_addr = upstream.addr().unwrap();
        let upstream = Running::spawn(|shutdown| upstream.serve(shutdown));
        let mut cluster = Self {
            configure_control_plane: configure,
            data_dir,
            admin_token,
            gateway_token,
            grpc_addr: localhost(),
            http_addr: localhost(),
            control_plane: None,
            upstream_addr,
            upstream,
            gateways: Vec::new(),
        };
        cluster.start_control_plane().await;
        for _ in 0..gateways {
            cluster.add_gateway().await;
        }
        cluster
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.path().join("keygate.db")
    }

    pub fn control_plane_config(&self) -> ControlPlaneConfig {
        let mut config = ControlPlaneConfig {
            grpc_listen: self.grpc_addr,
            http_listen: self.http_addr,
            database: format!("sqlite://{}", self.database_path().display()),
            admin_token: self.admin_token.clone(),
            gateway_token: self.gateway_token.clone(),
            ..ControlPlaneConfig::default()
        };
        if let Some(configure) = &self.configure_control_plane {
            configure(&mut config);
        }
        config
    }

    /// Starts the control plane; after the first start it reuses the same ports and database.
    pub async fn start_control_plane(&mut self) {
        assert!(
            self.control_plane.is_none(),
            "control plane already running"
        );
        let server = ControlPlane::bind(self.control_plane_config(), keygate::telemetry::metrics())
            .await
            .expect("control plane binds");
        self.grpc_addr = server.grpc_addr();
        self.http_addr = server.http_addr();
        self.control_plane = Some(Running::spawn(|shutdown| server.serve(shutdown)));
    }

    pub async fn stop_control_plane(&mut self) {
        let server = self.control_plane.take().expect("control plane running");
        server.stop().await.expect("control plane stopped cleanly");
    }

    pub fn gateway_config(&self, index: usize) -> ProxyConfig {
        let upstream = format!("http://{}", self.upstream_addr);
        ProxyConfig {
            listen: localhost(),
            admin_listen: localhost(),
            routes: vec![
                RouteConfig {
                    path_prefix: "/".into(),
                    upstream: upstream.clone(),
                    ..RouteConfig::default()
                },
                RouteConfig {
                    path_prefix: "/public/".into(),
                    upstream,
                    auth: keygate_proxy::AuthMode::None,
                    ..RouteConfig::default()
                },
            ],
            control_plane: vec![format!("http://{}", self.grpc_addr)],
            gateway_token: self.gateway_token.as_str().into(),
            gateway_id: Some(format!("gw-{index}")),
            region: "test".into(),
            ..ProxyConfig::default()
        }
    }

    /// Starts one more gateway and waits until it is ready (holds a snapshot, fresh).
    pub async fn add_gateway(&mut self) -> &TestGateway {
        let config = self.gateway_config(self.gateways.len());
        self.add_gateway_with(config).await
    }

    pub async fn add_gateway_with(&mut self, config: ProxyConfig) -> &TestGateway {
        let gateway = Gateway::bind(config, keygate::telemetry::metrics())
            .await
            .expect("gateway binds");
        let addr = gateway.addr();
        let admin_addr = gateway.admin_addr();
        let status = gateway.status();
        let server = Running::spawn(|shutdown| gateway.serve(shutdown));
        let ready = status.clone();
        eventually("gateway ready", || {
            let ready = ready.clone();
            async move { ready.is_ready() }
        })
        .await;
        self.gateways.push(TestGateway {
            addr,
            admin_addr,
            status,
            server,
        });
        self.gateways.last().expect("just pushed")
    }

    pub async fn admin(&self) -> AdminClient {
        admin_client::connect(
            &format!("http://{}", self.grpc_addr),
            Some(&self.admin_token),
            None,
        )
        .await
        .expect("admin client connects")
    }

    pub async fn create_key(&self, owner: &str) -> pb::IssuedKey {
        self.admin()
            .await
            .create_key(pb::CreateKeyRequest {
                owner: owner.into(),
                ..Default::default()
            })
            .await
            .expect("create key")
            .into_inner()
    }

    /// Waits until every gateway has applied `revision`.
    pub async fn wait_applied(&self, revision: u64) {
        for gateway in &self.gateways {
            let status = gateway.status.clone();
            eventually(&format!("gateway applied r{revision}"), || {
                let status = status.clone();
                async move { status.applied_revision() >= revision }
            })
            .await;
        }
    }
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Polls `check` every 5 ms until it holds, failing the test after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A response, read whole (test responses are small).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The verdict code of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request with raw header values (which may be non-UTF-8 or huge).
pub async fn send(method: &str, url: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(
            *name,
            http::HeaderValue::from_bytes(value).expect("header value"),
        );
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .expect("response in time")
        .expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// (status, code) of one request with `key` at `url`; code "VALID" for a 200.
pub async fn verdict(url: &str, key: &str) -> (u16, String) {
    let reply = get_with_key(url, key).await;
    let code = if reply.status == 200 {
        "VALID".to_owned()
    } else {
        reply.code()
    };
    (reply.status, code)
}

/// GET with a bearer key.
pub async fn get_with_key(url: &str, key: &str) -> Reply {
    let auth = format!("Bearer {key}");
    send("GET", url, &[("authorization", auth.as_bytes())], b"").await
}

/// Waits until `url` answers `status` (and, for errors, `code`) for `key`.
pub async fn expect_verdict(url: &str, key: &str, status: u16, code: Option<&str>) {
    let start = Instant::now();
    loop {
        let reply = get_with_key(url, key).await;
        if reply.status == status && code.is_none_or(|c| reply.code() == c) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{url}: wanted {status} {code:?}, last got {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[allow(unused_imports)]
pub use keygate_proto::error_chain;
