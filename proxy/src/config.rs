//! The gateway's configuration: what the `keygate proxy` CLI loads from a TOML file (and then
//! overrides from flags and the environment), with the defaults DESIGN.md names, and the
//! validation that turns a bad setting into one clear message before anything is bound.
//!
//! Durations are humantime strings in TOML (`"60s"`, `"250ms"`); sizes are bytes.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Uri};
use keygate_transport::{ClientIdentity, Trust};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::upstream::UpstreamLimits;

/// Verified session tokens the signature cache remembers unless `session_cache_capacity` says
/// otherwise (`session_verify.rs`).
pub const DEFAULT_SESSION_CACHE_CAPACITY: u64 = 65_536;

/// Everything a gateway needs to run. `Default` gives DESIGN.md's defaults; unknown TOML keys
/// are an error so that a typo cannot silently fall back to a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Main listener (proxied traffic and `POST /_keygate/v1/verify`). Default `0.0.0.0:8080`;
    /// port 0 picks a free port.
    pub listen: SocketAddr,
    /// Admin listener for `/healthz`, `/readyz` and `/metrics`. Default `127.0.0.1:9901`.
    pub admin_listen: SocketAddr,
    /// Listener for Envoy's gRPC external authorization (`envoy.service.auth.v3.Authorization`,
    /// the `ext_authz` filter's `grpc_service`). Default none (not served). It speaks TLS with
    /// the main listener's `tls_cert`/`tls_key` when those are set, else plaintext HTTP/2.
    pub authz_grpc_listen: Option<SocketAddr>,
    /// Shorthand for one route `/` to this URL with the default auth (`key_or_session`).
    /// Default none. May be combined with `[[route]]`s unless one of them is also `/`.
    pub upstream: Option<String>,
    /// `[[route]]` tables: path prefix → upstream, with an auth mode. Longest prefix wins.
    /// Default none.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// What `%2F`, `%5C` (any case) and a literal `\` in a request path do: `reject` answers 400
    /// `INVALID_PATH`; `keep` leaves them encoded (`\` becomes `%5C`) as data, never a path
    /// separator, which is safe only when no upstream decodes them into separators either.
    /// Paths are otherwise always normalised before a route is chosen (see `path.rs`). Default
    /// `reject`.
    pub escaped_slashes: EscapedSlashes,
    /// W3C Trace Context on forwarded requests: continue a valid incoming `traceparent` (same
    /// trace id, a new parent id) or start a trace, and send it upstream (see
    /// `trace_context.rs`). Default false: `traceparent` and `tracestate` then pass through
    /// untouched like any other header, and the gateway adds no work to the request.
    pub trace_context: bool,
    /// Spans for each request (verify, forward) and each sync apply, for an OpenTelemetry
    /// layer to export (see `spans.rs`); implies `trace_context`, so the upstream's
    /// `traceparent` names the gateway's forward span. Set by `--otlp-endpoint`, not by the file.
    /// Default false: no span is created.
    #[serde(skip)]
    pub spans: bool,
    /// Control-plane gRPC URLs (`http://host:port`), tried in this order when (re)connecting.
    /// Default none; at least one is required.
    pub control_plane: Vec<String>,
    /// Token the control plane expects from gateways (`authorization: Bearer …`). Required.
    pub gateway_token: Secret,
    /// Name in the control plane's gateway registry. Default: `<hostname>-<pid>`.
    pub gateway_id: Option<String>,
    /// Region reported to the control plane (informational). Default empty.
    pub region: String,
    /// Longest time the gateway may go without proving its replica is current before it
    /// answers STALE (see `stale_policy`). Default 60 s.
    #[serde(with = "humantime_duration")]
    pub propagation_bound: Duration,
    /// What to do when the propagation bound is exceeded. Default `fail-closed`.
    pub stale_policy: StalePolicy,
    /// Header carrying `Bearer <key>`. Default `authorization`.
    pub authorization_header: String,
    /// Header carrying a bare API key. Default `x-api-key`.
    pub api_key_header: String,
    /// Cookie carrying a session token. Default `keygate_session`. Its `__Host-` twin
    /// (`__Host-keygate_session`, the name the control plane sets when the cookie is Secure)
    /// is read too; two session cookies with different values are MALFORMED.
    pub session_cookie: String,
    /// Session tokens whose verified signature is remembered (by token hash), so a repeat
    /// request skips the Ed25519 check; revocations are checked on every request regardless.
    /// Default 65 536 entries; 0 turns the cache off.
    pub session_cache_capacity: u64,
    /// Longest wait for an upstream's response headers before answering 504. Default 30 s.
    #[serde(with = "humantime_duration")]
    pub upstream_timeout: Duration,
    /// Longest wait for a TCP connection (and TLS handshake) to an upstream before answering
    /// 502. Default 5 s.
    #[serde(with = "humantime_duration")]
    pub upstream_connect_timeout: Duration,
    /// Connections open at once to one upstream (busy and idle). Default 1024.
    pub max_upstream_connections: usize,
    /// How long a request waits for an upstream connection when all `max_upstream_connections`
    /// are busy, before answering 503 `UPSTREAM_BUSY`. Default 5 s.
    #[serde(with = "humantime_duration")]
    pub upstream_queue_timeout: Duration,
    /// How long an upstream's response body may send nothing before it is abandoned (the
    /// client's response is cut off). Default 60 s.
    #[serde(with = "humantime_duration")]
    pub upstream_body_timeout: Duration,
    /// Longest time a client may take to send a request's headers: from accept (TLS handshake
    /// and protocol detection included) to the first request's head, and for each later
    /// HTTP/1 head. Default 10 s.
    #[serde(with = "humantime_duration")]
    pub header_read_timeout: Duration,
    /// How long a request body may send nothing: the verify endpoint (which reads at most
    /// 8 KiB itself) then answers 408 `BODY_TIMEOUT`; a forwarded request's upstream exchange
    /// is abandoned and the client gets 400 (or, once the response has begun, a cut-off
    /// response). Default 30 s.
    #[serde(with = "humantime_duration")]
    pub request_body_timeout: Duration,
    /// A client connection with no request in flight for this long is closed (keep-alive
    /// idle; HTTP/1 and HTTP/2 alike). Default 60 s.
    #[serde(with = "humantime_duration")]
    pub idle_timeout: Duration,
    /// Streams one client HTTP/2 connection may have open at once. Default 256.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keepalive: a PING after this much silence on a client connection, which is closed
    /// when the PING is not answered within the same time. Default 20 s.
    #[serde(with = "humantime_duration")]
    pub http2_keepalive_interval: Duration,
    /// Largest request head a client may send, in bytes; larger gets 431. Default 65 536
    /// (64 KiB); at least 8 192.
    pub max_header_bytes: usize,
    /// Most client connections served at once; further connections wait in the accept
    /// backlog. Default 10 000.
    pub max_connections: usize,
    /// Threads that serve the main listener, each with its own runtime, listener
    /// (`SO_REUSEPORT`) and idle upstream connections; a connection stays on the thread that
    /// accepted it. Default: the CPUs the process may run on (its affinity mask and cgroup
    /// quota). At most 1 024.
    pub workers: Option<usize>,
    /// How long "this key does not exist" answers of the control plane are remembered, so a
    /// flood of unknown well-formed keys costs one lookup each per period. Default 2 s.
    #[serde(with = "humantime_duration")]
    pub negative_cache_ttl: Duration,
    /// Longest wait for a control-plane key lookup before answering NOT_FOUND. Default 1 s.
    #[serde(with = "humantime_duration")]
    pub lookup_timeout: Duration,
    /// Most key lookups started per second (token bucket, burst of the same size); misses
    /// beyond it answer NOT_FOUND without asking. 0 turns lookups off. Default 200 per second.
    pub max_lookups_per_second: u32,
    /// Most key lookups in flight at once; misses beyond it answer NOT_FOUND without asking.
    /// Default 64.
    pub max_concurrent_lookups: usize,
    /// Interval between freshness pings on the sync stream. A stream that hears nothing for
    /// three intervals is treated as dead and reconnected. Default 1 s.
    #[serde(with = "humantime_duration")]
    pub ping_interval: Duration,
    /// How long shutdown waits for in-flight requests before closing them. Default 30 s.
    #[serde(with = "humantime_duration")]
    pub shutdown_grace: Duration,
    /// PEM certificate chain (leaf first) of the main listener. With `tls_key` the listener
    /// speaks HTTPS only: TLS 1.2 and 1.3, ALPN h2 and http/1.1. Re-read on SIGHUP and when the
    /// file changes. Default none: plain HTTP (behind a TLS-terminating load balancer).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`. Default none.
    pub tls_key: Option<PathBuf>,
    /// PEM certificate chain of the admin listener; with `admin_tls_key` it speaks HTTPS.
    /// Default none: plain HTTP.
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key of `admin_tls_cert`. Default none.
    pub admin_tls_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted for `https://` control-plane URLs, instead of the system's
    /// roots. Default none: the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate presented to `https://` control planes (mutual TLS). Its first
    /// DNS or URI SAN is the gateway's id there. Default none.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`. Default none.
    pub client_key: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080)),
            admin_listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901)),
            authz_grpc_listen: None,
            upstream: None,
            routes: Vec::new(),
            escaped_slashes: EscapedSlashes::Reject,
            trace_context: false,
            spans: false,
            control_plane: Vec::new(),
            gateway_token: Secret::default(),
            gateway_id: None,
            region: String::new(),
            propagation_bound: Duration::from_secs(60),
            stale_policy: StalePolicy::FailClosed,
            authorization_header: "authorization".to_owned(),
            api_key_header: "x-api-key".to_owned(),
            session_cookie: "keygate_session".to_owned(),
            session_cache_capacity: DEFAULT_SESSION_CACHE_CAPACITY,
            upstream_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            max_upstream_connections: 1024,
            upstream_queue_timeout: Duration::from_secs(5),
            upstream_body_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 256,
            http2_keepalive_interval: Duration::from_secs(20),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            workers: None,
            negative_cache_ttl: Duration::from_secs(2),
            lookup_timeout: Duration::from_secs(1),
            max_lookups_per_second: 200,
            max_concurrent_lookups: 64,
            ping_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            admin_tls_cert: None,
            admin_tls_key: None,
            ca: None,
            client_cert: None,
            client_key: None,
        }
    }
}

/// A secret setting (the gateway token). Its `Debug` never shows the value, so a config can be
/// logged; read it with [`Secret::expose`] where it is actually sent.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

/// One `[[route]]`: requests whose path starts with `path_prefix` go to `upstream`.
/// `Default` leaves `path_prefix` and `upstream` empty (invalid until set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Plain string prefix of the request path, starting with `/`. Required.
    pub path_prefix: String,
    /// `http://host[:port]` of the service behind this route. Required.
    pub upstream: String,
    /// Which credentials the route accepts. Default `key_or_session`.
    #[serde(default)]
    pub auth: AuthMode,
    /// Forward the credential to the upstream instead of removing it. Default false.
    #[serde(default)]
    pub forward_credential: bool,
    /// CA certificates (PEM) trusted for an `https://` upstream, instead of the system's
    /// roots. Default none.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// Origins (`scheme://host[:port]`, exactly as a browser sends `Origin`) whose pages may
    /// send unsafe requests (any method but GET, HEAD, OPTIONS and TRACE) that carry only the
    /// session cookie; such a request from anywhere else gets 403 `FORBIDDEN_ORIGIN` unless it
    /// says `Sec-Fetch-Site: same-origin` (CSRF protection). Requests with a Bearer token or an
    /// API key are not affected. Only for routes that take sessions. Default none.
    #[serde(default)]
    pub session_origins: Vec<String>,
    /// Permissions a key must have, every one of them, to be served here (exact names,
    /// `[A-Za-z0-9._:-]`, at most 64); a key without them gets 403 `INSUFFICIENT_PERMISSIONS`,
    /// and so does a session (sessions carry no permissions). Not for `auth = "none"` or
    /// `"session"` routes. Default none.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// What one request costs, in credits and in every rate limit of the key and its identity
    /// (0: free). Not for `auth = "none"` routes. Default 1.
    #[serde(default)]
    pub cost: Option<u64>,
}

/// Which credentials a route accepts. On `key_or_session` routes a Bearer token starting with
/// `v4.public.` is a session, anything else a key; a credential of the kind a route does not
/// accept is not looked for (X-API-Key on a `session` route: MISSING) or, in `Authorization`,
/// is taken as the route's kind and is MALFORMED.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// An API key (`Authorization: Bearer` or `X-API-Key`).
    Key,
    /// A passkey session (`keygate_session` cookie or `Authorization: Bearer`).
    Session,
    /// Either of the above.
    #[default]
    KeyOrSession,
    /// No verification: forwarded as is (apart from header hygiene).
    None,
}

impl AuthMode {
    /// Whether requests on such a route are verified at all.
    pub fn verifies(self) -> bool {
        self != Self::None
    }
}

/// What a gateway does when it cannot prove it is within the propagation bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StalePolicy {
    /// Answer 503 STALE on every route that needs a credential, and fail `/readyz`.
    #[default]
    FailClosed,
    /// Keep verifying against the replica it has; only `/readyz` and metrics report it.
    Serve,
}

/// What an encoded slash or backslash (`%2F`, `%5C`) or a literal `\` in a request path does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400 `INVALID_PATH`: an upstream that decodes them after the route was chosen could
    /// serve another route's path.
    #[default]
    Reject,
    /// Forwarded encoded (`\` as `%5C`), as data inside a path segment.
    Keep,
}

impl StalePolicy {
    /// The name used in config files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailClosed => "fail-closed",
            Self::Serve => "serve",
        }
    }
}

/// A route with its upstream parsed, as the request path uses it.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedRoute {
    pub path_prefix: String,
    pub upstream: Authority,
    /// `None` for `http://`; for `https://`, whom to trust.
    pub upstream_tls: Option<Trust>,
    pub auth: AuthMode,
    pub forward_credential: bool,
    /// Lowercase, without a default port (a browser's serialisation of an origin).
    pub session_origins: Vec<String>,
    /// Sorted, without duplicates.
    pub permissions: Vec<String>,
    pub cost: u64,
}

/// The route table's settings: its routes, and how paths are normalised before one is chosen.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedRoutes {
    pub routes: Vec<ResolvedRoute>,
    pub escaped_slashes: EscapedSlashes,
}

impl ProxyConfig {
    /// Checks everything that can be checked before binding, with a message naming the
    /// setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolved_routes()?;
        if self.control_plane.is_empty() {
            return Err(ConfigError::NoControlPlane);
        }
        let mut any_https = false;
        for url in &self.control_plane {
            any_https |= control_plane_url(url)?;
        }
        self.listener_tls()?;
        self.admin_tls()?;
        let client = self.client_identity()?;
        if !any_https {
            for (field, set) in [("ca", self.ca.is_some()), ("client_cert", client.is_some())] {
                if set {
                    return Err(ConfigError::Invalid {
                        field,
                        reason: "is only used with https:// control-plane URLs, and none is"
                            .to_owned(),
                    });
                }
            }
        }
        if self.gateway_token.expose().trim().is_empty() {
            return Err(ConfigError::NoGatewayToken);
        }
        if http::HeaderValue::from_str(&format!("Bearer {}", self.gateway_token.expose())).is_err()
        {
            return Err(ConfigError::Invalid {
                field: "gateway_token",
                reason: "must be printable ASCII".to_owned(),
            });
        }
        for (field, name) in [
            ("authorization_header", &self.authorization_header),
            ("api_key_header", &self.api_key_header),
        ] {
            header_name(field, name)?;
        }
        if self.session_cookie.is_empty()
            || !self
                .session_cookie
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b))
        {
            return Err(ConfigError::Invalid {
                field: "session_cookie",
                reason: format!("{:?} is not a cookie name", self.session_cookie),
            });
        }
        for (field, value) in [
            ("propagation_bound", self.propagation_bound),
            ("ping_interval", self.ping_interval),
            ("upstream_timeout", self.upstream_timeout),
            ("upstream_connect_timeout", self.upstream_connect_timeout),
            ("upstream_queue_timeout", self.upstream_queue_timeout),
            ("upstream_body_timeout", self.upstream_body_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("request_body_timeout", self.request_body_timeout),
            ("http2_keepalive_interval", self.http2_keepalive_interval),
            ("lookup_timeout", self.lookup_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be greater than zero".to_owned(),
                });
            }
        }
        if self.ping_interval >= self.propagation_bound {
            return Err(ConfigError::Invalid {
                field: "ping_interval",
                reason: format!(
                    "{} must be shorter than propagation_bound ({}), or the gateway can never prove it is fresh",
                    humantime::format_duration(self.ping_interval),
                    humantime::format_duration(self.propagation_bound)
                ),
            });
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::Invalid {
                field: "max_header_bytes",
                reason: format!("must be at least {MIN_HEADER_BYTES}"),
            });
        }
        if u32::try_from(self.max_header_bytes).is_err() {
            return Err(ConfigError::Invalid {
                field: "max_header_bytes",
                reason: "too large".to_owned(),
            });
        }
        if self.max_upstream_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "max_upstream_connections",
                reason: "must be at least 1".to_owned(),
            });
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid {
                field: "http2_max_concurrent_streams",
                reason: "must be at least 1".to_owned(),
            });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "max_connections",
                reason: "must be at least 1".to_owned(),
            });
        }
        if let Some(workers) = self.workers
            && !(1..=MAX_WORKERS).contains(&workers)
        {
            return Err(ConfigError::Invalid {
                field: "workers",
                reason: format!("must be between 1 and {MAX_WORKERS}, not {workers}"),
            });
        }
        Ok(())
    }

    /// Threads serving the main listener: `workers`, else one per CPU the process may use.
    pub fn serving_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_WORKERS)
        })
    }

    /// The main listener's certificate and key files, when it serves HTTPS.
    pub(crate) fn listener_tls(&self) -> Result<Option<(&Path, &Path)>, ConfigError> {
        pem_pair(("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key))
    }

    /// The admin listener's certificate and key files, when it serves HTTPS.
    pub(crate) fn admin_tls(&self) -> Result<Option<(&Path, &Path)>, ConfigError> {
        pem_pair(
            ("admin_tls_cert", &self.admin_tls_cert),
            ("admin_tls_key", &self.admin_tls_key),
        )
    }

    /// The client certificate for `https://` control planes, if any.
    pub(crate) fn client_identity(&self) -> Result<Option<ClientIdentity>, ConfigError> {
        Ok(pem_pair(
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        )?
        .map(|(cert, key)| ClientIdentity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }))
    }

    /// The gateway id to report: the configured one, else `<hostname>-<pid>`.
    pub fn effective_gateway_id(&self) -> String {
        match &self.gateway_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => format!("{}-{}", hostname(), std::process::id()),
        }
    }

    /// The bounds of every upstream pool.
    pub(crate) fn upstream_limits(&self) -> UpstreamLimits {
        UpstreamLimits {
            connect_timeout: self.upstream_connect_timeout,
            max_connections: self.max_upstream_connections,
            queue_timeout: self.upstream_queue_timeout,
            body_idle_timeout: self.upstream_body_timeout,
            threads: self.serving_threads(),
        }
    }

    /// The routes to serve, the `upstream` shorthand included, with their upstreams parsed.
    pub(crate) fn resolved_routes(&self) -> Result<ResolvedRoutes, ConfigError> {
        let mut routes: Vec<ResolvedRoute> = Vec::with_capacity(self.routes.len() + 1);
        let shorthand = self.upstream.as_ref().map(|upstream| RouteConfig {
            path_prefix: "/".to_owned(),
            upstream: upstream.clone(),
            auth: AuthMode::default(),
            forward_credential: false,
            upstream_ca: None,
            session_origins: Vec::new(),
            permissions: Vec::new(),
            cost: None,
        });
        for route in self.routes.iter().chain(shorthand.as_ref()) {
            if !route.path_prefix.starts_with('/') {
                return Err(ConfigError::BadPathPrefix(route.path_prefix.clone()));
            }
            if routes
                .iter()
                .any(|seen| seen.path_prefix == route.path_prefix)
            {
                return Err(ConfigError::DuplicateRoute(route.path_prefix.clone()));
            }
            let (upstream, https) = upstream_authority(&route.upstream)?;
            let upstream_tls = match (https, &route.upstream_ca) {
                (true, ca) => Some(Trust::from_ca_file(ca.as_deref())),
                (false, None) => None,
                (false, Some(_)) => {
                    return Err(ConfigError::BadUpstream {
                        url: route.upstream.clone(),
                        reason: "upstream_ca is set but the upstream is not https://".to_owned(),
                    });
                }
            };
            let session_origins = route
                .session_origins
                .iter()
                .map(|origin| session_origin(route, origin))
                .collect::<Result<Vec<String>, ConfigError>>()?;
            if !session_origins.is_empty()
                && !matches!(route.auth, AuthMode::Session | AuthMode::KeyOrSession)
            {
                return Err(ConfigError::Invalid {
                    field: "session_origins",
                    reason: format!(
                        "route {:?} takes no sessions (auth = {:?}), so it reads no session cookie to protect",
                        route.path_prefix, route.auth
                    ),
                });
            }
            let (permissions, cost) = route_limits(route)?;
            routes.push(ResolvedRoute {
                path_prefix: route.path_prefix.clone(),
                upstream,
                upstream_tls,
                auth: route.auth,
                forward_credential: route.forward_credential,
                session_origins,
                permissions,
                cost,
            });
        }
        if routes.is_empty() {
            return Err(ConfigError::NoRoutes);
        }
        Ok(ResolvedRoutes {
            routes,
            escaped_slashes: self.escaped_slashes,
        })
    }
}

/// A route's `permissions` (checked, sorted) and `cost` (default 1).
fn route_limits(route: &RouteConfig) -> Result<(Vec<String>, u64), ConfigError> {
    let permissions = keygate_proto::limits::canonical_permissions(route.permissions.clone())
        .map_err(|error| ConfigError::Invalid {
            field: "permissions",
            reason: format!("of route {:?}: {error}", route.path_prefix),
        })?;
    let cost = route.cost.unwrap_or(1);
    if cost > keygate_proto::limits::MAX_AMOUNT {
        return Err(ConfigError::Invalid {
            field: "cost",
            reason: format!(
                "of route {:?} is {cost}; at most {}",
                route.path_prefix,
                keygate_proto::limits::MAX_AMOUNT
            ),
        });
    }
    let takes_keys = matches!(route.auth, AuthMode::Key | AuthMode::KeyOrSession);
    if !permissions.is_empty() && !takes_keys {
        return Err(ConfigError::Invalid {
            field: "permissions",
            reason: format!(
                "route {:?} takes no API keys (auth = {:?}), and only keys carry permissions",
                route.path_prefix, route.auth
            ),
        });
    }
    if route.cost.is_some() && route.auth == AuthMode::None {
        return Err(ConfigError::Invalid {
            field: "cost",
            reason: format!(
                "route {:?} verifies no credential (auth = \"none\"), so nothing is charged",
                route.path_prefix
            ),
        });
    }
    Ok((permissions, cost))
}

/// One of a route's `session_origins`, as a browser serialises an origin in `Origin`:
/// `scheme://host[:port]` with `http` or `https`, lowercase, no default port, no path.
fn session_origin(route: &RouteConfig, origin: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::Invalid {
        field: "session_origins",
        reason: format!(
            "{origin:?} of route {:?} {reason}; expected scheme://host[:port], e.g. \"https://app.example.com\"",
            route.path_prefix
        ),
    };
    let lower = origin.to_ascii_lowercase();
    let (scheme, authority) = lower
        .split_once("://")
        .ok_or_else(|| bad("is not an origin"))?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return Err(bad("is not an http:// or https:// origin")),
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad("has a path, query, user or no host"));
    }
    let parsed: Authority = authority.parse().map_err(|_| bad("has no valid host"))?;
    if parsed.host().is_empty()
        || (authority.contains(':') && !authority.ends_with(']') && parsed.port_u16().is_none())
    {
        return Err(bad("has no valid host or port"));
    }
    Ok(match parsed.port_u16() {
        Some(port) if port == default_port => format!("{scheme}://{}", parsed.host()),
        _ => format!("{scheme}://{authority}"),
    })
}

/// hyper refuses smaller HTTP/1 read buffers.
const MIN_HEADER_BYTES: usize = 8192;

/// Most serving threads (`workers`).
const MAX_WORKERS: usize = 1024;

fn header_name(field: &'static str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| ConfigError::Invalid {
        field,
        reason: format!("{name:?} is not a header name"),
    })
}

/// Parses a configured header name (validated by [`ProxyConfig::validate`]).
pub(crate) fn parse_header_name(
    field: &'static str,
    name: &str,
) -> Result<HeaderName, ConfigError> {
    header_name(field, name)
}

/// The upstream's authority, and whether it is `https://`.
fn upstream_authority(url: &str) -> Result<(Authority, bool), ConfigError> {
    let bad = |reason: &str| ConfigError::BadUpstream {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("expected http://host[:port] or https://host[:port]")),
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "upstream URLs take no path or query; requests keep their own path",
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| bad("missing host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in upstream URLs are not supported"));
    }
    Ok((authority, https))
}

/// Checks a control-plane URL; true when it is `https://`.
pub(crate) fn control_plane_url(url: &str) -> Result<bool, ConfigError> {
    let bad = |reason: &str| ConfigError::BadControlPlane {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("expected http://host:port or https://host:port")),
    };
    if uri.authority().is_none() {
        return Err(bad("missing host"));
    }
    Ok(https)
}

/// `Some((cert, key))` when both are set, `None` when neither is, an error naming the missing
/// one otherwise.
fn pem_pair<'a>(
    cert: (&'static str, &'a Option<PathBuf>),
    key: (&'static str, &'a Option<PathBuf>),
) -> Result<Option<(&'a Path, &'a Path)>, ConfigError> {
    match (cert.1, key.1) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Invalid {
            field: key.0,
            reason: format!("{} is set, so {} must be too", cert.0, key.0),
        }),
        (None, Some(_)) => Err(ConfigError::Invalid {
            field: cert.0,
            reason: format!("{} is set, so {} must be too", key.0, cert.0),
        }),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "gateway".to_owned())
}

/// Serde adapter for durations written as humantime strings (`"60s"`, `"1m 30s"`, `"250ms"`).
pub mod humantime_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads `"60s"`-style text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|error| {
            serde::de::Error::custom(format!("invalid duration {text:?}: {error}"))
        })
    }

    /// Writes `"1m 30s"`-style text.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ProxyConfig {
        ProxyConfig {
            upstream: Some("http://127.0.0.1:3000".into()),
            control_plane: vec!["http://127.0.0.1:7070".into()],
            gateway_token: "secret".into(),
            ..ProxyConfig::default()
        }
    }

    #[test]
    fn toml_with_routes_and_durations_loads() {
        let config: ProxyConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:0"
            control_plane = ["http://cp1:7070", "http://cp2:7070"]
            gateway_token = "t"
            propagation_bound = "30s"
            stale_policy = "serve"
            negative_cache_ttl = "250ms"

            [[route]]
            path_prefix = "/api"
            upstream = "http://127.0.0.1:3000"
            auth = "key"

            [[route]]
            path_prefix = "/public"
            upstream = "http://127.0.0.1:3001/"
            auth = "none"
            forward_credential = true
            "#,
        )
        .expect("parses");
        assert_eq!(config.propagation_bound, Duration::from_secs(30));
        assert_eq!(config.negative_cache_ttl, Duration::from_millis(250));
        assert_eq!(config.stale_policy, StalePolicy::Serve);
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[0].auth, AuthMode::Key);
        assert!(config.routes[1].forward_credential);
        assert_eq!(config.upstream_timeout, Duration::from_secs(30));
        config.validate().expect("valid");
    }

    #[test]
    fn typos_and_bad_durations_are_errors() {
        assert!(toml::from_str::<ProxyConfig>("listne = \"127.0.0.1:1\"").is_err());
        assert!(toml::from_str::<ProxyConfig>("ping_interval = \"soon\"").is_err());
        assert!(toml::from_str::<ProxyConfig>("stale_policy = \"maybe\"").is_err());
        let route = "[[route]]\npath_prefix = \"/\"\nupstream = \"http://a\"\nauht = \"key\"";
        assert!(toml::from_str::<ProxyConfig>(route).is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        valid().validate().expect("valid");
        let cases: Vec<(ProxyConfig, &str)> = vec![
            (
                ProxyConfig {
                    upstream: None,
                    ..valid()
                },
                "no upstream",
            ),
            (
                ProxyConfig {
                    upstream: Some("ftp://x".into()),
                    ..valid()
                },
                "ftp://x",
            ),
            (
                ProxyConfig {
                    upstream: Some("http://x/api".into()),
                    ..valid()
                },
                "no path",
            ),
            (
                ProxyConfig {
                    control_plane: vec![],
                    ..valid()
                },
                "control plane",
            ),
            (
                ProxyConfig {
                    control_plane: vec!["cp:7070".into()],
                    ..valid()
                },
                "cp:7070",
            ),
            (
                ProxyConfig {
                    gateway_token: " ".into(),
                    ..valid()
                },
                "gateway token",
            ),
            (
                ProxyConfig {
                    max_header_bytes: 100,
                    ..valid()
                },
                "max_header_bytes",
            ),
            (
                ProxyConfig {
                    ping_interval: Duration::from_secs(60),
                    ..valid()
                },
                "ping_interval",
            ),
            (
                ProxyConfig {
                    api_key_header: "x api key".into(),
                    ..valid()
                },
                "api_key_header",
            ),
            (
                ProxyConfig {
                    routes: vec![RouteConfig {
                        path_prefix: "/".into(),
                        upstream: "http://y".into(),
                        auth: AuthMode::Key,
                        ..RouteConfig::default()
                    }],
                    ..valid()
                },
                "more than once",
            ),
            (
                ProxyConfig {
                    workers: Some(0),
                    ..valid()
                },
                "workers",
            ),
            (
                ProxyConfig {
                    workers: Some(MAX_WORKERS + 1),
                    ..valid()
                },
                "workers",
            ),
        ];
        for (config, needle) in cases {
            let message = config.validate().expect_err(needle).to_string();
            assert!(
                message.contains(needle),
                "{message:?} does not mention {needle:?}"
            );
        }
    }

    #[test]
    fn serving_threads_are_the_workers_set_else_the_usable_cpus() {
        let config: ProxyConfig = toml::from_str("workers = 3").expect("parses");
        assert_eq!(config.serving_threads(), 3);
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(valid().serving_threads(), cpus.min(MAX_WORKERS));
        assert_eq!(valid().upstream_limits().threads, cpus.min(MAX_WORKERS));
    }

    #[test]
    fn escaped_slashes_and_session_origins_load_and_are_checked() {
        let config: ProxyConfig = toml::from_str(
            r#"
            control_plane = ["http://cp:7070"]
            gateway_token = "t"
            escaped_slashes = "keep"

            [[route]]
            path_prefix = "/"
            upstream = "http://127.0.0.1:3000"
            session_origins = ["https://App.Example.com:443", "http://localhost:5173", "https://[::1]:8443"]
            "#,
        )
        .expect("parses");
        assert_eq!(config.escaped_slashes, EscapedSlashes::Keep);
        let resolved = config.resolved_routes().expect("valid");
        assert_eq!(resolved.escaped_slashes, EscapedSlashes::Keep);
        assert_eq!(
            resolved.routes[0].session_origins,
            [
                "https://app.example.com",
                "http://localhost:5173",
                "https://[::1]:8443"
            ]
        );
        assert_eq!(
            ProxyConfig::default().escaped_slashes,
            EscapedSlashes::Reject
        );
        assert!(toml::from_str::<ProxyConfig>("escaped_slashes = \"decode\"").is_err());

        let with_origins = |auth: AuthMode, origins: &[&str]| ProxyConfig {
            routes: vec![RouteConfig {
                path_prefix: "/app/".into(),
                upstream: "http://y".into(),
                auth,
                session_origins: origins.iter().map(|origin| (*origin).to_owned()).collect(),
                ..RouteConfig::default()
            }],
            ..valid()
        };
        for origin in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "ftp://app.example.com",
            "https://",
            "https://app.example.com:port",
            "null",
        ] {
            let message = with_origins(AuthMode::Session, &[origin])
                .validate()
                .expect_err(origin)
                .to_string();
            assert!(
                message.contains("session_origins") && message.contains(origin),
                "{message}"
            );
        }
        let message = with_origins(AuthMode::Key, &["https://app.example.com"])
            .validate()
            .expect_err("a key route reads no cookie")
            .to_string();
        assert!(message.contains("takes no sessions"), "{message}");
        with_origins(AuthMode::KeyOrSession, &["https://app.example.com"])
            .validate()
            .expect("valid");
    }

    #[test]
    fn route_permissions_and_cost_load_and_are_checked() {
        let config: ProxyConfig = toml::from_str(
            r#"
            control_plane = ["http://cp:7070"]
            gateway_token = "t"

            [[route]]
            path_prefix = "/orders/"
            upstream = "http://127.0.0.1:3000"
            permissions = ["orders.write", "orders.read", "orders.read"]
            cost = 5

            [[route]]
            path_prefix = "/"
            upstream = "http://127.0.0.1:3000"
            "#,
        )
        .expect("parses");
        let resolved = config.resolved_routes().expect("valid");
        let orders = &resolved.routes[0];
        assert_eq!(orders.permissions, ["orders.read", "orders.write"]);
        assert_eq!(orders.cost, 5);
        assert_eq!(
            (
                resolved.routes[1].permissions.len(),
                resolved.routes[1].cost
            ),
            (0, 1)
        );

        let route = |auth: AuthMode, permissions: &[&str], cost: Option<u64>| ProxyConfig {
            routes: vec![RouteConfig {
                path_prefix: "/x/".into(),
                upstream: "http://y".into(),
                auth,
                permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
                cost,
                ..RouteConfig::default()
            }],
            ..valid()
        };
        for (config, words) in [
            (route(AuthMode::Key, &["orders.*"], None), "contains '*'"),
            (route(AuthMode::Key, &[""], None), "must not be empty"),
            (route(AuthMode::None, &["a"], None), "takes no API keys"),
            (route(AuthMode::Session, &["a"], None), "takes no API keys"),
            (route(AuthMode::None, &[], Some(2)), "nothing is charged"),
            (route(AuthMode::Key, &[], Some(u64::MAX)), "at most"),
        ] {
            let message = config.validate().expect_err(words).to_string();
            assert!(
                message.contains(words) && message.contains("/x/"),
                "{message}"
            );
        }
        route(AuthMode::KeyOrSession, &["a"], Some(0))
            .validate()
            .expect("free requests are allowed");
        assert!(
            toml::from_str::<ProxyConfig>(
                "[[route]]\npath_prefix = \"/\"\nupstream = \"http://y\"\ncost = -1"
            )
            .is_err()
        );
    }

    #[test]
    fn debug_output_never_shows_the_gateway_token() {
        let config = ProxyConfig {
            gateway_token: "do-not-print-this-token".into(),
            ..ProxyConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("do-not-print-this-token"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }
}
