//! The gateway as a whole: [`Gateway::bind`] builds every part from a validated configuration
//! and binds both listeners; [`Gateway::serve`] runs the main listener, the admin listener and
//! the sync task until shutdown, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};

use crate::admin::Admin;
use crate::config::ProxyConfig;
use crate::credential::CredentialHeaders;
use crate::error::{ConfigError, ProxyError};
use crate::forward::Forwarder;
use crate::freshness::Freshness;
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::miss::{ControlPlaneSlot, MissLookup, MissSettings};
use crate::replica::Replica;
use crate::response::ProxyBody;
use crate::route::RouteTable;
use crate::server::{self, Peer, ServerLimits, Service};
use crate::sessions;
use crate::status::{GatewayStatus, SyncState};
use crate::sync::{SyncSettings, SyncTask};
use crate::verify::Verifier;

/// Connections the admin listener serves at once.
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Longest wait for a connection to one control plane before trying the next.
const CONTROL_PLANE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the admin listener drains after the main listener has.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// A bound, not yet serving gateway.
pub struct Gateway {
    listener: TcpListener,
    admin_listener: TcpListener,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    status: GatewayStatus,
    state: Arc<SyncState>,
    handler: Arc<Handler>,
    admin: Arc<Admin>,
    sync: SyncTask,
    /// For the task pruning session revocations.
    replica: Arc<Replica>,
    limits: ServerLimits,
}

impl Gateway {
    /// Validates `config`, builds the replica, binds the main and admin listeners (port 0
    /// picks a free port). Syncing starts with [`Gateway::serve`].
    pub async fn bind(
        config: ProxyConfig,
        metrics: PrometheusHandle,
    ) -> Result<Gateway, ProxyError> {
        config.validate()?;
        let routes = RouteTable::new(config.resolved_routes()?, config.upstream_connect_timeout);
        let credentials = CredentialHeaders::from_config(&config)?;
        let mut authorization: MetadataValue<Ascii> =
            format!("Bearer {}", config.gateway_token.expose())
                .parse()
                .map_err(|_| ConfigError::Invalid {
                    field: "gateway_token",
                    reason: "must be printable ASCII".to_owned(),
                })?;
        // Sensitive values print as "Sensitive" in Debug output: the token never reaches a log.
        authorization.set_sensitive(true);
        let handles = Metrics::register();

        let replica = Arc::new(Replica::new());
        let freshness = Arc::new(Freshness::new(
            config.propagation_bound,
            config.stale_policy,
        ));
        let state = Arc::new(SyncState::default());
        let control_plane = Arc::new(ControlPlaneSlot::empty());
        let miss = MissLookup::new(
            Arc::clone(&replica),
            Arc::clone(&control_plane),
            authorization.clone(),
            MissSettings {
                negative_ttl: config.negative_cache_ttl,
                timeout: config.lookup_timeout,
                per_second: config.max_lookups_per_second,
                concurrent: config.max_concurrent_lookups,
            },
            handles.clone(),
        );
        let verifier = Verifier::with_parts(
            Arc::clone(&replica),
            Arc::clone(&freshness),
            Some(Arc::new(miss)),
            config.session_cache_capacity,
            handles.clone(),
        );
        let forwarder = Forwarder::new(
            config.upstream_timeout,
            credentials.clone(),
            handles.clone(),
        );

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ProxyError::Bind {
                    listener: "main",
                    addr: config.listen,
                    source,
                })?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| ProxyError::Bind {
                listener: "admin",
                addr: config.admin_listen,
                source,
            })?;
        let addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let status = GatewayStatus::new(
            Arc::clone(&replica),
            Arc::clone(&freshness),
            Arc::clone(&state),
        );
        let pruned_replica = Arc::clone(&replica);
        let sync = SyncTask::new(
            SyncSettings {
                urls: config.control_plane.clone(),
                authorization,
                gateway_id: config.effective_gateway_id(),
                region: config.region.clone(),
                address: addr.to_string(),
                ping_interval: config.ping_interval,
                connect_timeout: CONTROL_PLANE_CONNECT_TIMEOUT,
            },
            replica,
            freshness,
            Arc::clone(&state),
            control_plane,
            handles.clone(),
        );
        Ok(Gateway {
            listener,
            admin_listener,
            addr,
            admin_addr,
            status: status.clone(),
            state,
            handler: Arc::new(Handler {
                routes,
                verifier,
                forwarder,
                credentials,
            }),
            admin: Arc::new(Admin {
                status,
                prometheus: metrics,
                metrics: handles,
            }),
            sync,
            replica: pruned_replica,
            limits: ServerLimits {
                header_read_timeout: config.header_read_timeout,
                max_header_bytes: config.max_header_bytes,
                max_connections: config.max_connections,
                shutdown_grace: config.shutdown_grace,
            },
        })
    }

    /// The main listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A handle on the gateway's state, usable while and after it serves.
    pub fn status(&self) -> GatewayStatus {
        self.status.clone()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish
    /// for up to `shutdown_grace`, stops the sync task and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ProxyError> {
        let stop_main = CancellationToken::new();
        let trigger = stop_main.clone();
        let state = Arc::clone(&self.state);
        let watcher = tokio::spawn(async move {
            shutdown.await;
            // Readiness fails first, so load balancers stop sending while we drain.
            state.draining.store(true, Ordering::Release);
            trigger.cancel();
        });

        let stop_background = CancellationToken::new();
        let sync = tokio::spawn(self.sync.run(stop_background.clone()));
        let pruning = tokio::spawn(sessions::prune_periodically(
            self.replica,
            sessions::PRUNE_INTERVAL,
            keygate_proto::time::now_unix_ms,
            stop_background.clone(),
        ));
        let admin_limits = ServerLimits {
            max_connections: ADMIN_MAX_CONNECTIONS,
            shutdown_grace: ADMIN_GRACE,
            ..self.limits
        };
        let admin = tokio::spawn(server::serve(
            "admin",
            self.admin_listener,
            self.admin,
            admin_limits,
            stop_background.clone(),
        ));
        tracing::info!(addr = %self.addr, admin = %self.admin_addr, "keygate proxy serving");

        server::serve("main", self.listener, self.handler, self.limits, stop_main).await;

        stop_background.cancel();
        watcher.abort();
        if let Err(error) = sync.await {
            tracing::error!(%error, "sync task failed");
        }
        if let Err(error) = pruning.await {
            tracing::error!(%error, "session pruning task failed");
        }
        if let Err(error) = admin.await {
            tracing::error!(%error, "admin listener failed");
        }
        tracing::info!("keygate proxy stopped");
        Ok(())
    }
}

impl Service for Handler {
    async fn call(&self, request: Request<Incoming>, peer: Arc<Peer>) -> Response<ProxyBody> {
        self.handle(request, &peer).await
    }
}
