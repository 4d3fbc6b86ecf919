//! Choosing the route for a request path: the longest matching `path_prefix` wins. Prefixes
//! are plain string prefixes (`/api` also matches `/apis`), as in nginx's and Envoy's prefix
//! matching.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::uri::Authority;

use keygate_transport::Trust;

use crate::config::{AuthMode, ResolvedRoute};
use crate::error::ConfigError;
use crate::upstream::{UpstreamPool, UpstreamTls};

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
    /// Keep-alive connections to the upstream, shared by every route that names it.
    pub(crate) pool: Arc<UpstreamPool>,
}

/// The routes, longest prefix first.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// The routes, with one connection pool per distinct upstream (authority and TLS trust).
    /// Fails when an https upstream's trust anchors cannot be loaded.
    pub(crate) fn new(
        resolved: Vec<ResolvedRoute>,
        connect_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let mut pools: Vec<Arc<UpstreamPool>> = Vec::new();
        let mut tls_configs: Vec<(Trust, Arc<rustls::ClientConfig>)> = Vec::new();
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
                    let pool = Arc::new(UpstreamPool::new(
                        route.upstream.clone(),
                        tls,
                        connect_timeout,
                    ));
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
                pool,
            });
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.path_prefix.len()));
        Ok(Self { routes })
    }

    /// The route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| path.starts_with(route.path_prefix.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, upstream: &str, auth: AuthMode) -> ResolvedRoute {
        ResolvedRoute {
            path_prefix: prefix.into(),
            upstream: upstream.parse().expect("authority"),
            upstream_tls: None,
            auth,
            forward_credential: false,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let table = RouteTable::new(
            vec![
                route("/", "root:1", AuthMode::KeyOrSession),
                route("/api/public", "public:1", AuthMode::None),
                route("/api", "api:1", AuthMode::Key),
                route("/v2", "api:1", AuthMode::Key),
            ],
            Duration::from_secs(1),
        )
        .expect("routes");
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

        let no_root = RouteTable::new(
            vec![route("/api", "api:1", AuthMode::Key)],
            Duration::from_secs(1),
        )
        .expect("routes");
        assert!(no_root.find("/else").is_none());
    }
}
