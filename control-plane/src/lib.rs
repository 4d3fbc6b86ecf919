//! The keygate control plane: it owns the truth about keys and pushes every change to every
//! gateway.
//!
//! - [`store`]: durable state behind one async trait per aggregate, in SQLite (one node) or
//!   PostgreSQL (any number of replicas); every change appends its events to the log and an
//!   audit row in the same transaction;
//! - `event_log`: the head revision and recent events in memory, feeding the sync streams;
//! - `keys`: the rules of the operator operations; `admin_service`: the Admin gRPC service;
//! - `sync_service`: the Sync gRPC service (replication streams, key lookups);
//! - `limits`: limits per key: usage aggregation across gateways, the credit lease service,
//!   refills and write-offs;
//! - `registry`: the connected gateways, shared among replicas through the store;
//!   `auth`: who may call (bootstrap and named tokens, checked in a layer around both
//!   services, failures limited per address) and what they may do (scopes); `tokens`: the
//!   rules of named operator and gateway tokens;
//! - `http`: health and metrics over HTTP, and the passkey API and page;
//! - passkeys and sessions: `webauthn` (the relying party), `ceremonies` (begin-to-finish
//!   state), `sessions` (signing keys, tokens), `users` (operator rules), `ids`, wired
//!   together by `passkeys`; rate limits come from the `keygate-ratelimit` crate, and `cidr`
//!   reads the `trusted_proxies` ranges.
//!
//! [`ControlPlane::bind`] opens everything and binds both listeners; [`ControlPlane::serve`]
//! runs until its shutdown future resolves.

#![forbid(unsafe_code)]

mod admin_service;
mod auth;
mod ceremonies;
pub mod cidr;
pub mod config;
mod error;
mod event_log;
mod http;
mod ids;
mod keys;
mod limits;
mod mail;
pub mod metrics;
mod passkeys;
mod registry;
mod sessions;
pub mod store;
mod sync_service;
mod tokens;
mod users;
mod webauthn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keygate_proto::pb::admin_server::AdminServer;
use keygate_proto::pb::sync_server::SyncServer;
use keygate_transport::server::{ALPN_H2, ALPN_HTTP1};
use keygate_transport::{AcceptSettings, Accepted, ReloadingCert, ServerTls, accept_loop};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

pub use config::ControlPlaneConfig;
pub use error::ControlPlaneError;

use crate::admin_service::AdminService;
use crate::auth::Authenticator;
use crate::auth::layer::Authenticated;
use crate::config::{ConfigError, DatabaseUrl};
use crate::event_log::{DEFAULT_RING_CAPACITY, EventLog};
use crate::keys::Keys;
use crate::limits::Limits;
use crate::passkeys::{Passkeys, Providers};
use crate::registry::Registry;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{CommitObserver, Store};
use crate::sync_service::{SyncService, SyncSettings};
use crate::tokens::Tokens;

/// How long open gRPC calls get to finish after shutdown starts (sync streams end at once).
const GRPC_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive pings on idle HTTP/2 connections, so a vanished gateway is noticed.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Most gRPC connections (gateways and operators) open at once.
const GRPC_MAX_CONNECTIONS: usize = 10_000;
/// Streams one gRPC connection may have open at once (a gateway uses one sync stream and a few
/// lookups; an operator one call).
const GRPC_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 reset limits on the gRPC listener: streams a client may reset before they are
/// accepted (the rapid-reset attack, CVE-2023-44487) and streams the server may reset for a
/// client's errors, before the connection is closed. tonic passes "no limit" unless told, which
/// turns h2's own protection off.
const GRPC_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const GRPC_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Largest request header block on the gRPC listener.
const GRPC_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// HTTP/2 receive windows of the gRPC listener follow each connection's measured bandwidth-delay
/// product (hyper's adaptive window, at most 16 MiB): a gateway or operator far away is not held
/// to 64 KiB per round trip, and an idle connection is not granted more than it uses. (What the
/// control plane sends, snapshots above all, is paced by the gateway's windows: `proxy::sync`.)
const GRPC_ADAPTIVE_WINDOW: bool = true;
/// Longest TLS handshake on either listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS of both listeners: one certificate; client certificates requested on gRPC only.
struct ListenerTls {
    grpc: ServerTls,
    http: ServerTls,
}

impl ListenerTls {
    fn load(config: &ControlPlaneConfig) -> Result<Option<Self>, ControlPlaneError> {
        let Some((cert, key)) = config.tls_files() else {
            return Ok(None);
        };
        let tls = |error: keygate_transport::TlsError| {
            ControlPlaneError::Config(ConfigError::Tls(error.to_string()))
        };
        let certificate = ReloadingCert::load("control-plane", cert, key).map_err(tls)?;
        Ok(Some(Self {
            grpc: ServerTls::new(
                Arc::clone(&certificate),
                ALPN_H2,
                config.client_ca.as_deref(),
            )
            .map_err(tls)?,
            http: ServerTls::new(certificate, ALPN_HTTP1, None).map_err(tls)?,
        }))
    }
}

/// A control plane with its store open and both listeners bound, ready to serve.
pub struct ControlPlane {
    config: ControlPlaneConfig,
    store: Arc<dyn Store>,
    passkeys: Passkeys,
    event_log: Arc<EventLog>,
    registry: Arc<Registry>,
    /// Other replicas may share the store (PostgreSQL): the registry is shared through it.
    shared: bool,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tls: Option<ListenerTls>,
    metrics: PrometheusHandle,
}

impl ControlPlane {
    /// Validates the config, opens (creating if needed) the store, runs migrations and binds
    /// both listeners (port 0 picks a free port).
    pub async fn bind(
        config: ControlPlaneConfig,
        metrics: PrometheusHandle,
    ) -> Result<ControlPlane, ControlPlaneError> {
        config.validate()?;
        let tls = ListenerTls::load(&config)?;
        // Like the certificates, before the store is touched: a bad file changes nothing.
        let providers = Providers::load(&config)?;
        crate::metrics::describe();
        let event_log = Arc::new(EventLog::new(DEFAULT_RING_CAPACITY));
        let (store, shared) = open_store(&config.database, Arc::clone(&event_log) as _).await?;
        let bounds = store.log_bounds().await?;
        event_log.resume(bounds.head);
        let replica_id = ids::random_id("cp");
        tracing::info!(
            database = %DatabaseUrl::redacted(&config.database),
            log_id = %bounds.log_id,
            head = %bounds.head,
            replica_id,
            "store open"
        );

        let grpc_listener = bind_listener("gRPC", config.grpc_listen).await?;
        let http_listener = bind_listener("HTTP", config.http_listen).await?;
        let local_addr = |listener: &TcpListener, name, addr| {
            listener
                .local_addr()
                .map_err(|source| ControlPlaneError::Bind {
                    listener: name,
                    addr,
                    source,
                })
        };
        let grpc_addr = local_addr(&grpc_listener, "gRPC", config.grpc_listen)?;
        let http_addr = local_addr(&http_listener, "HTTP", config.http_listen)?;
        let passkeys = Passkeys::open(&config, http_addr, Arc::clone(&store), providers).await?;
        Ok(ControlPlane {
            registry: Arc::new(Registry::new(config.gateway_timeout, replica_id)),
            shared,
            config,
            store,
            passkeys,
            event_log,
            grpc_listener,
            http_listener,
            grpc_addr,
            http_addr,
            tls,
            metrics,
        })
    }

    /// Where the gRPC listener (Admin and Sync) is bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the HTTP listener (health, metrics) is bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves gRPC (Admin and Sync) and HTTP until `shutdown` resolves, then stops gracefully:
    /// open sync streams are ended at once (gateways reconnect elsewhere), other calls and
    /// requests get a short drain period.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlPlaneError> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let signal = tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });

        let limits = Arc::new(Limits::new(
            Arc::clone(&self.store),
            Arc::clone(&self.registry),
        ));
        let admin = AdminService::new(
            Keys::new(Arc::clone(&self.store)),
            self.passkeys.users.clone(),
            Tokens::new(Arc::clone(&self.store)),
            Arc::clone(&self.registry),
            Arc::clone(&self.event_log),
            Arc::clone(&limits),
        );
        // Every call to either service is authenticated first, by one authenticator (one
        // limit on failures per address, whichever service they were for).
        let authenticator = Arc::new(Authenticator::new(
            &self.config.admin_token,
            &self.config.gateway_token,
            Arc::clone(&self.store),
        ));
        let sync = SyncService::new(
            Arc::clone(&self.store),
            Arc::clone(&self.event_log),
            Arc::clone(&self.registry),
            Arc::clone(&limits),
            stop.clone(),
            SyncSettings {
                require_client_certificate: self.config.client_ca.is_some(),
                ..SyncSettings::default()
            },
        );
        let (grpc_tls, http_tls) = match self.tls {
            Some(tls) => (Some(tls.grpc), Some(tls.http)),
            None => (None, None),
        };
        let certificate_watch = keygate_transport::watch_certificates(
            grpc_tls
                .iter()
                .map(|tls| Arc::clone(tls.certificate()))
                .collect(),
            keygate_transport::reload::WATCH_INTERVAL,
            stop.clone(),
        );
        // Connections reach tonic through a channel; the accept loop bounds how many exist.
        let (connections, accepted) = mpsc::unbounded_channel::<Accepted>();
        let grpc_accept = accept_loop(
            self.grpc_listener,
            AcceptSettings {
                name: "grpc",
                max_connections: GRPC_MAX_CONNECTIONS,
                handshake_timeout: HANDSHAKE_TIMEOUT,
            },
            grpc_tls,
            stop.clone(),
            move |connection| {
                // Fails only once the server has stopped taking connections.
                let _ = connections.send(connection);
            },
        );
        let incoming = UnboundedReceiverStream::new(accepted).map(Ok::<_, std::io::Error>);
        let grpc = Server::builder()
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE))
            .max_concurrent_streams(Some(GRPC_MAX_CONCURRENT_STREAMS))
            .http2_max_pending_accept_reset_streams(Some(GRPC_MAX_PENDING_ACCEPT_RESET_STREAMS))
            .http2_max_local_error_reset_streams(Some(GRPC_MAX_LOCAL_ERROR_RESET_STREAMS))
            .http2_max_header_list_size(Some(GRPC_MAX_HEADER_LIST_BYTES))
            .http2_adaptive_window(Some(GRPC_ADAPTIVE_WINDOW))
            .add_service(Authenticated::admin(
                AdminServer::new(admin),
                Arc::clone(&authenticator),
            ))
            .add_service(Authenticated::sync(SyncServer::new(sync), authenticator))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let grpc = async {
            let grpc = async {
                let (result, ()) = tokio::join!(grpc, grpc_accept);
                result
            };
            let drained = async {
                stop.cancelled().await;
                tokio::time::sleep(GRPC_DRAIN_TIMEOUT).await;
            };
            let result = tokio::select! {
                result = grpc => result.map_err(|e| ControlPlaneError::Serve {
                    listener: "gRPC",
                    message: e.to_string(),
                }),
                () = drained => {
                    tracing::warn!("gRPC calls still open after the drain timeout; closing them");
                    Ok(())
                }
            };
            // Whatever ended the gRPC server ends the rest too.
            stop.cancel();
            result
        };

        let state = Arc::new(http::HttpState {
            store: Arc::clone(&self.store),
            metrics: self.metrics.clone(),
            passkeys: Arc::clone(&self.passkeys.api),
        });
        let http = async {
            http::serve(self.http_listener, http_tls, state, stop.clone()).await;
            stop.cancel();
        };

        let registry = Arc::clone(&self.registry);
        let prune_every = (self.config.gateway_timeout / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let pruner = async {
            let mut tick = tokio::time::interval(prune_every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => registry.prune(),
                }
            }
        };

        // Replicas on PostgreSQL share their gateways and their rate-limit use.
        let shared_registry = async {
            if self.shared {
                tokio::join!(
                    crate::registry::shared::run(
                        Arc::clone(&self.registry),
                        Arc::clone(&self.store),
                        self.config.gateway_timeout,
                        stop.clone(),
                    ),
                    crate::limits::shared::run(Arc::clone(&limits), stop.clone()),
                );
            }
        };

        let token_recheck = sync_service::recheck_tokens(
            Arc::clone(&self.registry),
            Arc::clone(&self.store),
            stop.clone(),
        );

        let limits_upkeep = Arc::clone(&limits).maintain(stop.clone());

        let compactor = compact_events(
            Arc::clone(&self.store),
            self.config.event_retention,
            stop.clone(),
        );

        tracing::info!(grpc = %self.grpc_addr, http = %self.http_addr, "control plane serving");
        let session_pruner = self.passkeys.maintain(stop.clone());

        let (result, (), (), (), (), (), (), (), ()) = tokio::join!(
            grpc,
            http,
            pruner,
            shared_registry,
            compactor,
            session_pruner,
            certificate_watch,
            token_recheck,
            limits_upkeep
        );
        signal.abort();
        tracing::info!("control plane stopped");
        result
    }
}

/// Opens the store the database URL names; true when other replicas may share it.
async fn open_store(
    database: &str,
    observer: Arc<dyn CommitObserver>,
) -> Result<(Arc<dyn Store>, bool), ControlPlaneError> {
    match DatabaseUrl::parse(database)? {
        DatabaseUrl::Sqlite(path) => {
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                tokio::fs::create_dir_all(parent).await.map_err(|source| {
                    ControlPlaneError::DataDir {
                        path: parent.to_path_buf(),
                        source,
                    }
                })?;
            }
            Ok((Arc::new(SqliteStore::open(&path, observer).await?), false))
        }
        DatabaseUrl::Postgres => Ok((Arc::new(PgStore::open(database, observer).await?), true)),
    }
}

/// Opens the store the database URL names (`sqlite://PATH` or `postgres://…`) for work on the
/// store itself, with no control plane serving it (`keygate store copy`): created and migrated
/// as at a control plane's start, and announcing its commits to no one. A SQLite database that
/// a control plane has open is refused ([`StoreError::InUse`](store::StoreError::InUse)).
pub async fn open_store_offline(database: &str) -> Result<Arc<dyn Store>, ControlPlaneError> {
    let (store, _shared) = open_store(database, Arc::new(NoObserver)).await?;
    Ok(store)
}

/// The observer of a store no control plane serves: no gateway is listening.
struct NoObserver;

impl CommitObserver for NoObserver {
    fn committed(&self, _events: &[keygate_proto::Event]) {}
}

/// Drops events older than `retention` from the log, periodically (a quarter of the retention,
/// between 100 ms and one minute), until `stop`.
async fn compact_events(store: Arc<dyn Store>, retention: Duration, stop: CancellationToken) {
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let before = keygate_proto::time::now_unix_ms().saturating_sub(retention_ms);
        match store.compact(before).await {
            Ok(bounds) => metrics::log_bounds(bounds),
            Err(error) => tracing::error!(%error, "event log compaction failed"),
        }
    }
}

async fn bind_listener(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, ControlPlaneError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ControlPlaneError::Bind {
            listener,
            addr,
            source,
        })
}
