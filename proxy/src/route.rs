//! Choosing the route for a request path: the longest matching `path_prefix` wins. Prefixes
//! are plain string prefixes (`/api` also matches `/apis`), as in nginx's and Envoy's prefix
//! matching, and they are matched against the normalised path ([`RouteTable::normalize`],
//! see [`crate::path`]), never the raw one.
//!
//! A route also says which pages may use its session cookie for unsafe requests
//! ([`Route::accepts_cookie_session`]).

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderMap, ORIGIN};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderName, HeaderValue, Method};

use keygate_transport::Trust;

use crate::config::{AuthMode, EscapedSlashes, ResolvedRoutes};
use crate::error::ConfigError;
use crate::path::{self, PathError};
use crate::upstream::{UpstreamLimits, UpstreamPool, UpstreamTls};

/// The client settings for `trust`, built once per distinct trust (system roots are read once).
fn tls_config(
    built: &mut Vec<(Trust, Arc<rustls::ClientConfig>)>,
    trust: &Trust,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    if let Some((_, config)) = built.iter().find(|(seen, _)| seen == trust) {
        return Ok(Arc::clone(config));
    }
    // The pool speaks HTTP/1.1 to upstreams.
    let config = keygate_transport::client_config(trust, None, &[b"http/1.1"])
        .map(Arc::new)
        .map_err(|error| ConfigError::Tls {
            what: "upstreams",
            reason: error.to_string(),
        })?;
    built.push((trust.clone(), Arc::clone(&config)));
    Ok(config)
}

/// One route, ready for requests.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix it serves.
    pub path_prefix: String,
    /// Upstream `host[:port]`.
    pub upstream: Authority,
    /// The upstream authority as a `Host` header value.
    pub upstream_host: HeaderValue,
    /// Which credentials it accepts.
    pub auth: AuthMode,
    /// Whether the credential is forwarded to the upstream.
    pub forward_credential: bool,
    /// Origins allowed to send unsafe requests with only the session cookie: lowercase
    /// `scheme://host[:port]`, without a default port.
    pub session_origins: Vec<String>,
    /// Permissions a key needs here, sorted (`permissions`); empty: none.
    pub permissions: Vec<String>,
    /// What a request costs in credits and rate-limit units (`cost`, default 1).
    pub cost: u64,
    /// Keep-alive connections to the upstream, shared by every route that names it.
    pub(crate) pool: Arc<UpstreamPool>,
}

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

impl Route {
    /// Whether a request that carries only the session cookie may be served (CSRF): always for
    /// the safe methods of RFC 9110 §9.2.1 (GET, HEAD, OPTIONS, TRACE); for any other method
    /// only when the browser says the request comes from the same origin
    /// (`Sec-Fetch-Site: same-origin`, which no page can set) or from one of the route's
    /// `session_origins` (`Origin`, which no page can set either). A request without either
    /// (an old browser, or a non-browser client) is refused: such clients send the session as
    /// a Bearer token, which no other site can make a browser attach.
    pub fn accepts_cookie_session(&self, method: &Method, headers: &HeaderMap) -> bool {
        if matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        ) {
            return true;
        }
        if headers
            .get(&SEC_FETCH_SITE)
            .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"same-origin"))
        {
            return true;
        }
        headers.get(ORIGIN).is_some_and(|origin| {
            self.session_origins
                .iter()
                .any(|allowed| origin.as_bytes().eq_ignore_ascii_case(allowed.as_bytes()))
        })
    }
}

/// The routes, longest prefix first, and how request paths are normalised before one is
/// chosen.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    escaped_slashes: EscapedSlashes,
}

impl RouteTable {
    /// The routes, with one connection pool per distinct upstream (authority and TLS trust).
    /// Fails when an https upstream's trust anchors cannot be loaded.
    pub(crate) fn new(
        resolved: ResolvedRoutes,
        limits: UpstreamLimits,
    ) -> Result<Self, ConfigError> {
        Self::reusing(resolved, limits, None)
    }

    /// Like [`RouteTable::new`], but an upstream `previous` already has a pool for (same
    /// authority and TLS trust) keeps that pool: a route reload neither drops its idle
    /// connections nor lets in-flight and new requests together exceed its connection limit.
    pub(crate) fn reusing(
        resolved: ResolvedRoutes,
        limits: UpstreamLimits,
        previous: Option<&RouteTable>,
    ) -> Result<Self, ConfigError> {
        let mut pools: Vec<Arc<UpstreamPool>> = Vec::new();
        for route in previous.map_or(&[][..], |table| &table.routes) {
            if !pools.iter().any(|pool| Arc::ptr_eq(pool, &route.pool)) {
                pools.push(Arc::clone(&route.pool));
            }
        }
        let mut tls_configs: Vec<(Trust, Arc<rustls::ClientConfig>)> = Vec::new();
        let ResolvedRoutes {
            routes: resolved,
            escaped_slashes,
        } = resolved;
        let mut routes: Vec<Route> = Vec::with_capacity(resolved.len());
        for route in resolved {
            // An `Authority` is always a valid header value.
            let Ok(upstream_host) = HeaderValue::from_str(route.upstream.as_str()) else {
                continue;
            };
            let existing = pools.iter().find(|pool| {
                *pool.authority() == route.upstream && pool.trust() == route.upstream_tls.as_ref()
            });
            let pool = match existing {
                Some(pool) => Arc::clone(pool),
                None => {
                    let tls = match &route.upstream_tls {
                        None => None,
                        Some(trust) => Some(UpstreamTls::new(
                            trust.clone(),
                            tls_config(&mut tls_configs, trust)?,
                            &route.upstream,
                        )?),
                    };
                    let pool = Arc::new(UpstreamPool::new(route.upstream.clone(), tls, limits));
                    pools.push(Arc::clone(&pool));
                    pool
                }
            };
            routes.push(Route {
                path_prefix: route.path_prefix,
                upstream: route.upstream,
                upstream_host,
                auth: route.auth,
                forward_credential: route.forward_credential,
                session_origins: route.session_origins,
                permissions: route.permissions,
                cost: route.cost,
                pool,
            });
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.path_prefix.len()));
        Ok(Self {
            routes,
            escaped_slashes,
        })
    }

    /// The route for `path`, if any. `path` must be normalised ([`RouteTable::normalize`]).
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| path.starts_with(route.path_prefix.as_str()))
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are none (never, for a table built from a validated configuration).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// `uri` with its path normalised under this table's `escaped_slashes` setting (see
    /// [`crate::path`]), query untouched; `None` when it already is, which is the common case
    /// and costs one pass over the path.
    #[inline]
    pub fn normalize(&self, uri: &Uri) -> Result<Option<Uri>, PathError> {
        match path::normalize(uri.path(), self.escaped_slashes)? {
            Cow::Borrowed(_) => Ok(None),
            Cow::Owned(normal) => with_path(uri, normal).map(Some),
        }
    }
}

/// `uri` with `normal` as its path and its own query.
#[cold]
fn with_path(uri: &Uri, normal: String) -> Result<Uri, PathError> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    // Every byte of the normalised path was in the request's path, or is part of a `%XX`
    // escape, so this fails only when `\` → `%5C` made the path too long for a URI.
    parts.path_and_query =
        Some(PathAndQuery::try_from(path_and_query).map_err(|_| PathError::Unforwardable)?);
    Uri::from_parts(parts).map_err(|_| PathError::Unforwardable)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ResolvedRoute;

    const LIMITS: UpstreamLimits = UpstreamLimits {
        connect_timeout: Duration::from_secs(1),
        max_connections: 8,
        queue_timeout: Duration::from_secs(1),
        body_idle_timeout: Duration::from_secs(1),
        threads: 1,
    };

    fn route(prefix: &str, upstream: &str, auth: AuthMode) -> ResolvedRoute {
        ResolvedRoute {
            path_prefix: prefix.into(),
            upstream: upstream.parse().expect("authority"),
            upstream_tls: None,
            auth,
            forward_credential: false,
            session_origins: Vec::new(),
            permissions: Vec::new(),
            cost: 1,
        }
    }

    /// A route table over `routes`, for tests here and in other modules.
    pub(crate) fn table_of(
        routes: Vec<ResolvedRoute>,
        escaped_slashes: EscapedSlashes,
    ) -> RouteTable {
        let resolved = ResolvedRoutes {
            routes,
            escaped_slashes,
        };
        RouteTable::new(resolved, LIMITS).expect("routes")
    }

    #[test]
    fn longest_prefix_wins() {
        let table = table_of(
            vec![
                route("/", "root:1", AuthMode::KeyOrSession),
                route("/api/public", "public:1", AuthMode::None),
                route("/api", "api:1", AuthMode::Key),
                route("/v2", "api:1", AuthMode::Key),
            ],
            EscapedSlashes::Reject,
        );
        let upstream = |path: &str| table.find(path).map(|route| route.upstream.to_string());
        assert_eq!(upstream("/api/public/x").as_deref(), Some("public:1"));
        assert_eq!(upstream("/api/users").as_deref(), Some("api:1"));
        assert_eq!(upstream("/other").as_deref(), Some("root:1"));
        assert_eq!(
            table.find("/api").map(|route| route.auth),
            Some(AuthMode::Key)
        );

        // Routes to one upstream share its connections.
        let pool = |path: &str| table.find(path).map(|route| Arc::clone(&route.pool));
        let (api, v2, root) = (pool("/api/x"), pool("/v2/x"), pool("/x"));
        assert!(api.zip(v2).is_some_and(|(api, v2)| Arc::ptr_eq(&api, &v2)));
        assert!(
            pool("/api/x")
                .zip(root)
                .is_some_and(|(api, root)| !Arc::ptr_eq(&api, &root))
        );

        let no_root = table_of(
            vec![route("/api", "api:1", AuthMode::Key)],
            EscapedSlashes::Reject,
        );
        assert!(no_root.find("/else").is_none());
    }

    #[test]
    fn uris_are_normalised_with_the_query_untouched() {
        let reject = table_of(
            vec![route("/", "root:1", AuthMode::Key)],
            EscapedSlashes::Reject,
        );
        let normalize = |table: &RouteTable, uri: &str| {
            table
                .normalize(&uri.parse::<Uri>().expect("uri"))
                .map(|uri| uri.map(|uri| uri.to_string()))
        };
        assert_eq!(normalize(&reject, "/api/x?a=..//b"), Ok(None));
        assert_eq!(
            normalize(&reject, "/a/../%61pi//x?q=/../%2F"),
            Ok(Some("/api/x?q=/../%2F".to_owned()))
        );
        assert_eq!(
            normalize(&reject, "http://gw:8080//api/./x"),
            Ok(Some("http://gw:8080/api/x".to_owned()))
        );
        assert_eq!(normalize(&reject, "/a%2fb"), Err(PathError::EscapedSlash));
        let keep = table_of(
            vec![route("/", "root:1", AuthMode::Key)],
            EscapedSlashes::Keep,
        );
        assert_eq!(
            normalize(&keep, "/a%2fb?x"),
            Ok(Some("/a%2Fb?x".to_owned()))
        );
        assert_eq!(normalize(&keep, "*"), Ok(None));
    }

    #[test]
    fn cookie_sessions_need_a_safe_method_or_an_allowed_origin() {
        let mut resolved = route("/", "root:1", AuthMode::Session);
        resolved.session_origins = vec!["https://app.example.com".to_owned()];
        let table = table_of(vec![resolved], EscapedSlashes::Reject);
        let route = table.find("/").expect("route");
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_static(value));
            }
            map
        };
        let none = headers(&[]);
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(route.accepts_cookie_session(&method, &none), "{method}");
        }
        let unsafe_methods = [
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::from_bytes(b"PROPPATCH").expect("method"),
        ];
        for method in &unsafe_methods {
            assert!(!route.accepts_cookie_session(method, &none), "{method}");
            for allowed in [
                headers(&[("origin", "https://app.example.com")]),
                headers(&[("origin", "HTTPS://APP.example.com")]),
                headers(&[("sec-fetch-site", "same-origin")]),
                headers(&[
                    ("origin", "https://evil.example"),
                    ("sec-fetch-site", "same-origin"),
                ]),
            ] {
                assert!(
                    route.accepts_cookie_session(method, &allowed),
                    "{method} {allowed:?}"
                );
            }
            for refused in [
                headers(&[("origin", "https://evil.example")]),
                headers(&[("origin", "https://app.example.com.evil.example")]),
                headers(&[("origin", "http://app.example.com")]),
                headers(&[("origin", "https://app.example.com:8443")]),
                headers(&[("origin", "null")]),
                headers(&[("sec-fetch-site", "same-site")]),
                headers(&[("sec-fetch-site", "cross-site")]),
                headers(&[("referer", "https://app.example.com/")]),
            ] {
                assert!(
                    !route.accepts_cookie_session(method, &refused),
                    "{method} {refused:?}"
                );
            }
        }
    }
}
