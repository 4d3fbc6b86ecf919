//! The gateway as a whole: [`Gateway::bind`] builds every part from a validated configuration
//! and binds both listeners; [`Gateway::serve`] runs the main listener, the admin listener and
//! the sync task until shutdown, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use keygate_transport::server::{ALPN_H2, ALPN_H2_HTTP1};
use keygate_transport::{ReloadingCert, ServerTls, Trust};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tracing::Instrument;

use crate::admin::Admin;
use crate::authz_grpc;
use crate::checks::Checks;
use crate::client_body::ClientBody;
use crate::config::ProxyConfig;
use crate::credential::CredentialHeaders;
use crate::error::{ConfigError, ProxyError};
use crate::forward::Forwarder;
use crate::freshness::Freshness;
use crate::h1::HeadFields;
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::miss::{ControlPlaneSlot, MissLookup, MissSettings};
use crate::reload::{self, ConfigSource, RouteReloader};
use crate::replica::Replica;
use crate::response::{self, ProxyBody};
use crate::route::RouteTable;
use crate::server::{self, Peer, ServerLimits, Service};
use crate::sessions;
use crate::spans::{self, Traced, Untraced};
use crate::status::{GatewayStatus, SyncState};
use crate::sync::{ControlPlaneTls, SyncSettings, SyncTask};
use crate::verify::Verifier;

/// Connections the admin listener serves at once.
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Longest wait for a connection to one control plane before trying the next.
const CONTROL_PLANE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the admin listener drains after the main listener has.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// A bound, not yet serving gateway.
pub struct Gateway {
    /// The main listener, once per serving thread, all on one port (`config.workers`).
    listeners: Vec<TcpListener>,
    admin_listener: TcpListener,
    /// TLS of the main and admin listeners, when configured.
    tls: Option<ServerTls>,
    admin_tls: Option<ServerTls>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    /// Envoy's gRPC external authorization, when `authz_grpc_listen` is set.
    authz_grpc: Option<AuthzGrpcListener>,
    status: GatewayStatus,
    state: Arc<SyncState>,
    handler: Arc<Handler>,
    admin: Arc<Admin>,
    sync: SyncTask,
    /// For the task pruning session revocations.
    replica: Arc<Replica>,
    limits: ServerLimits,
    reloader: Arc<RouteReloader>,
    /// SIGHUP and where to read the configuration again, once asked to reload on it.
    reload_on_hangup: Option<(tokio::signal::unix::Signal, ConfigSource)>,
}

/// The bound `authz_grpc_listen` listener and its TLS (the main listener's files).
struct AuthzGrpcListener {
    listener: TcpListener,
    tls: Option<ServerTls>,
    addr: SocketAddr,
}

impl Gateway {
    /// Validates `config`, builds the replica, binds the main and admin listeners (port 0
    /// picks a free port). Syncing starts with [`Gateway::serve`].
    pub async fn bind(
        mut config: ProxyConfig,
        metrics: PrometheusHandle,
    ) -> Result<Gateway, ProxyError> {
        config.validate()?;
        // Resolved once: the upstream pools keep one idle list per serving thread, and a
        // reload builds its pools from this configuration.
        let threads = config.serving_threads();
        config.workers = Some(threads);
        let routes = Arc::new(ArcSwap::from_pointee(RouteTable::new(
            config.resolved_routes()?,
            config.upstream_limits(),
        )?));
        let tls = listener_tls(
            "main listener",
            "main",
            config.listener_tls()?,
            ALPN_H2_HTTP1,
        )?;
        let admin_tls = listener_tls(
            "admin listener",
            "admin",
            config.admin_tls()?,
            ALPN_H2_HTTP1,
        )?;
        let control_plane_tls = ControlPlaneTls {
            trust: Trust::from_ca_file(config.ca.as_deref()),
            identity: config.client_identity()?,
        };
        // Read now, so a bad file stops the gateway before it binds rather than on first connect.
        if let Some(url) = config
            .control_plane
            .iter()
            .find(|url| url.starts_with("https://"))
        {
            control_plane_tls
                .for_url(url)
                .map_err(|reason| ConfigError::Tls {
                    what: "control-plane connection",
                    reason,
                })?;
        }
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
        replica.limiter().set_metrics(handles.clone());
        let freshness = Arc::new(Freshness::new(
            config.propagation_bound,
            config.stale_policy,
        ));
        let state = Arc::new(SyncState::default());
        let control_plane = Arc::new(ControlPlaneSlot::empty());
        let miss = MissLookup::new(
            Arc::clone(&replica),
            Arc::clone(&state),
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
            config.request_body_timeout,
            credentials.clone(),
            handles.clone(),
        )
        // With spans, the handler sets the `traceparent` itself, naming its forward span.
        .propagating_trace_context(config.trace_context && !config.spans);

        let listeners = bind_main(config.listen, threads)
            .await
            .map_err(bind_failed("main", config.listen))?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .map_err(bind_failed("admin", config.admin_listen))?;
        let addr = match listeners.first() {
            Some(listener) => listener.local_addr()?,
            None => config.listen,
        };
        let admin_addr = admin_listener.local_addr()?;
        let authz_grpc = match config.authz_grpc_listen {
            None => None,
            Some(listen) => {
                let listener = TcpListener::bind(listen)
                    .await
                    .map_err(bind_failed("authz gRPC", listen))?;
                Some(AuthzGrpcListener {
                    addr: listener.local_addr()?,
                    listener,
                    tls: listener_tls(
                        "authz gRPC listener",
                        "authz-grpc",
                        config.listener_tls()?,
                        ALPN_H2,
                    )?,
                })
            }
        };

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
                gateway_id: gateway_id(&config)?,
                region: config.region.clone(),
                address: addr.to_string(),
                ping_interval: config.ping_interval,
                connect_timeout: CONTROL_PLANE_CONNECT_TIMEOUT,
                tls: control_plane_tls,
            },
            replica,
            freshness,
            Arc::clone(&state),
            control_plane,
            handles.clone(),
        );
        Ok(Gateway {
            listeners,
            admin_listener,
            tls,
            admin_tls,
            addr,
            admin_addr,
            authz_grpc,
            status: status.clone(),
            state,
            reloader: Arc::new(RouteReloader::new(Arc::clone(&routes), config.clone())),
            reload_on_hangup: None,
            handler: Arc::new(Handler {
                routes,
                checks: Checks {
                    verifier,
                    credentials,
                },
                forwarder,
                request_body_timeout: config.request_body_timeout,
                spans: config.spans,
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
                idle_timeout: config.idle_timeout,
                max_header_bytes: config.max_header_bytes,
                max_connections: config.max_connections,
                http2_max_concurrent_streams: config.http2_max_concurrent_streams,
                http2_keepalive_interval: config.http2_keepalive_interval,
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

    /// The gRPC external-authorization listener's address, when `authz_grpc_listen` is set.
    pub fn authz_grpc_addr(&self) -> Option<SocketAddr> {
        self.authz_grpc.as_ref().map(|authz| authz.addr)
    }

    /// A handle on the gateway's state, usable while and after it serves.
    pub fn status(&self) -> GatewayStatus {
        self.status.clone()
    }

    /// Swaps in the routes of a new configuration on demand (see [`crate::reload`]).
    pub fn route_reloader(&self) -> Arc<RouteReloader> {
        Arc::clone(&self.reloader)
    }

    /// While serving, reloads the routes on every SIGHUP from what `source` returns (the
    /// configuration read again the way it was at start, or why it cannot be). The signal
    /// handler is installed by this call, so a SIGHUP after it never terminates the process.
    pub fn reload_routes_on_hangup(
        &mut self,
        source: impl Fn() -> Result<ProxyConfig, String> + Send + Sync + 'static,
    ) {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangup) => self.reload_on_hangup = Some((hangup, Arc::new(source))),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; routes will not reload");
            }
        }
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
        let certificates = self
            .tls
            .iter()
            .chain(&self.admin_tls)
            .chain(self.authz_grpc.iter().flat_map(|authz| &authz.tls))
            .map(|tls| Arc::clone(tls.certificate()))
            .collect();
        let certificate_watch = tokio::spawn(keygate_transport::watch_certificates(
            certificates,
            keygate_transport::reload::WATCH_INTERVAL,
            stop_background.clone(),
        ));
        let route_reload = self.reload_on_hangup.map(|(hangup, source)| {
            tokio::spawn(reload::reload_on_hangup(
                self.reloader,
                source,
                hangup,
                stop_background.clone(),
            ))
        });
        let admin = tokio::spawn(server::serve(
            "admin",
            self.admin_listener,
            self.admin_tls,
            self.admin,
            admin_limits,
            stop_background.clone(),
        ));
        let authz_grpc = self.authz_grpc.map(|authz| {
            tracing::info!(addr = %authz.addr, "envoy ext_authz gRPC serving");
            tokio::spawn(authz_grpc::serve(
                authz.listener,
                authz.tls,
                Arc::clone(&self.handler),
                self.limits,
                stop_main.clone(),
            ))
        });
        tracing::info!(
            addr = %self.addr,
            admin = %self.admin_addr,
            workers = self.listeners.len(),
            "keygate proxy serving"
        );

        let served = if self.handler.spans {
            let service = Arc::new(InSpans(self.handler));
            server::serve_on_threads(
                "main",
                self.listeners,
                self.tls,
                service,
                self.limits,
                stop_main,
            )
            .await
        } else {
            server::serve_on_threads(
                "main",
                self.listeners,
                self.tls,
                self.handler,
                self.limits,
                stop_main,
            )
            .await
        };

        if let Some(task) = authz_grpc
            && let Err(error) = task.await
        {
            tracing::error!(%error, "authz gRPC listener failed");
        }
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
        if let Err(error) = certificate_watch.await {
            tracing::error!(%error, "certificate watcher failed");
        }
        if let Some(task) = route_reload
            && let Err(error) = task.await
        {
            tracing::error!(%error, "route reload task failed");
        }
        tracing::info!("keygate proxy stopped");
        served.map_err(ProxyError::from)
    }
}

/// The id to register under. With a client certificate it is the certificate's first DNS or
/// URI SAN (what a control plane requiring mutual TLS takes it to be): `gateway_id` may be left
/// unset, and one that names someone else is refused here rather than by the control plane.
fn gateway_id(config: &ProxyConfig) -> Result<String, ConfigError> {
    let Some(identity) = config.client_identity()? else {
        return Ok(config.effective_gateway_id());
    };
    let chain =
        keygate_transport::pem::certificates(&identity.cert).map_err(|error| ConfigError::Tls {
            what: "control-plane connection",
            reason: error.to_string(),
        })?;
    let certified = chain
        .first()
        .and_then(keygate_transport::identity::first_san);
    match (certified, config.gateway_id.as_deref()) {
        (Some(certified), Some(configured))
            if !configured.is_empty() && configured != certified =>
        {
            Err(ConfigError::Invalid {
                field: "gateway_id",
                reason: format!(
                    "is {configured:?}, but the client certificate names {certified:?}; a control plane requiring mutual TLS would refuse it"
                ),
            })
        }
        (Some(certified), _) => Ok(certified),
        (None, _) => Ok(config.effective_gateway_id()),
    }
}

/// What a failed bind of `listener` on `addr` is reported as.
fn bind_failed(
    listener: &'static str,
    addr: SocketAddr,
) -> impl FnOnce(std::io::Error) -> ProxyError {
    move |source| ProxyError::Bind {
        listener,
        addr,
        source,
    }
}

/// The main listener once per serving thread, all on one port: with several, each socket has
/// `SO_REUSEPORT` and the kernel spreads new connections over them; port 0 picks a free port
/// for the first and the others take the same. (Only a process of the same user can join the
/// port's group, and only by setting the option too.)
async fn bind_main(addr: SocketAddr, threads: usize) -> std::io::Result<Vec<TcpListener>> {
    if threads <= 1 {
        return Ok(vec![TcpListener::bind(addr).await?]);
    }
    let first = bind_sharing(addr)?;
    let port = first.local_addr()?;
    let mut listeners = Vec::with_capacity(threads);
    listeners.push(first);
    for _ in 1..threads {
        listeners.push(bind_sharing(port)?);
    }
    Ok(listeners)
}

/// A listener on `addr` that others may share (`SO_REUSEPORT`).
fn bind_sharing(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restart can bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The accept queue of each main listener (what `TcpListener::bind` asks for).
const LISTEN_BACKLOG: u32 = 1024;

/// The TLS settings of a listener from its certificate and key files, if it has them.
fn listener_tls(
    what: &'static str,
    name: &'static str,
    files: Option<(&std::path::Path, &std::path::Path)>,
    alpn: &[&[u8]],
) -> Result<Option<ServerTls>, ConfigError> {
    let Some((cert, key)) = files else {
        return Ok(None);
    };
    let tls_error = |error: keygate_transport::TlsError| ConfigError::Tls {
        what,
        reason: error.to_string(),
    };
    let certificate = ReloadingCert::load(name, cert, key).map_err(tls_error)?;
    ServerTls::new(certificate, alpn, None)
        .map(Some)
        .map_err(tls_error)
}

impl Service for Handler {
    type Body = ProxyBody;
    const LEAN_HTTP1: bool = true;

    async fn call(&self, request: Request<ClientBody>, peer: &Peer) -> Response<ProxyBody> {
        self.handle(request, peer, &Untraced).await
    }

    fn head_fields(body: &mut ProxyBody) -> HeadFields {
        response::head_fields(body)
    }
}

/// The main listener's service when spans are exported: each request inside a `request` span
/// (`spans.rs`). A type of its own, chosen when the listener starts, so that [`Handler`]'s
/// own path carries no trace of it.
struct InSpans(Arc<Handler>);

impl Service for InSpans {
    type Body = ProxyBody;
    const LEAN_HTTP1: bool = true;

    async fn call(&self, request: Request<ClientBody>, peer: &Peer) -> Response<ProxyBody> {
        let span = spans::request(request.method(), request.uri().path(), request.headers());
        let response = self
            .0
            .handle(request, peer, &Traced(span.clone()))
            .instrument(span.clone())
            .await;
        spans::record_status(&span, response.status());
        if let Some(id) = response::request_id_of(&response).and_then(|id| id.to_str().ok()) {
            span.record("keygate.request_id", id);
        }
        response
    }

    fn head_fields(body: &mut ProxyBody) -> HeadFields {
        response::head_fields(body)
    }
}
