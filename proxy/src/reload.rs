//! Route reload: on SIGHUP the gateway reads its configuration again (the same file, flags and
//! environment, through the same validation as at start) and swaps in a new route table.
//!
//! The table lives in an `ArcSwap`: a request loads it once, so it pays one atomic load and
//! no lock, and keeps the table it started with until it is answered, while requests that
//! start after the swap see the new one. No connection is closed. Upstream pools of upstreams
//! that both tables name are carried over ([`RouteTable::reusing`]).
//!
//! What reloads: `[[route]]`, `upstream` and `escaped_slashes`, that is, everything the route
//! table holds. Every other setting is bound to a listener, a connection, a pool or a task
//! built at start; a changed one is named in one log line as ignored until a restart. A bad
//! configuration changes nothing: the old routes stay, one line says why, and
//! `keygate_config_reload_total{result="error"}` counts it.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::metrics::{CONFIG_LAST_RELOAD_SUCCESS, CONFIG_RELOADS};
use crate::route::RouteTable;

/// Where a reload reads the configuration from. It returns the message to log when the
/// configuration cannot be read.
pub type ConfigSource = Arc<dyn Fn() -> Result<ProxyConfig, String> + Send + Sync>;

/// Swaps the gateway's route table for the one a new configuration describes.
pub struct RouteReloader {
    routes: Arc<ArcSwap<RouteTable>>,
    /// The configuration the gateway runs with: as started, with the reloadable settings of
    /// the last successful reload. Changes are reported against it.
    running: Mutex<ProxyConfig>,
    ok: Counter,
    error: Counter,
    last_success: Gauge,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Routes now served.
    pub routes: usize,
    /// Settings that changed but take effect only on restart.
    pub ignored: Vec<&'static str>,
}

impl RouteReloader {
    /// A reloader for `routes`, which were built from `running`.
    pub(crate) fn new(routes: Arc<ArcSwap<RouteTable>>, running: ProxyConfig) -> Self {
        metrics::describe_counter!(CONFIG_RELOADS, "Configuration reloads, by result");
        metrics::describe_gauge!(
            CONFIG_LAST_RELOAD_SUCCESS,
            metrics::Unit::Seconds,
            "Unix time of the last successful configuration load"
        );
        let last_success = metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESS);
        last_success.set(now_unix_seconds());
        Self {
            routes,
            running: Mutex::new(running),
            ok: metrics::counter!(CONFIG_RELOADS, "result" => "ok"),
            error: metrics::counter!(CONFIG_RELOADS, "result" => "error"),
            last_success,
        }
    }

    /// Applies `next` (or the reason it could not be read): on success new requests take the
    /// new routes; on failure the old ones stay. Either way the outcome is logged in one line
    /// (plus one naming ignored settings) and counted.
    pub fn reload(&self, next: Result<ProxyConfig, String>) -> Result<Reloaded, String> {
        match self.apply(next) {
            Ok(reloaded) => {
                self.ok.increment(1);
                self.last_success.set(now_unix_seconds());
                tracing::info!(
                    routes = reloaded.routes,
                    "config reloaded: new routes in effect"
                );
                if !reloaded.ignored.is_empty() {
                    tracing::warn!(
                        settings = %reloaded.ignored.join(", "),
                        "config reload: changed settings ignored until restart"
                    );
                }
                Ok(reloaded)
            }
            Err(reason) => {
                self.error.increment(1);
                tracing::error!(%reason, "config reload failed; keeping the previous routes");
                Err(reason)
            }
        }
    }

    fn apply(&self, next: Result<ProxyConfig, String>) -> Result<Reloaded, String> {
        let next = next?;
        next.validate().map_err(|error| error.to_string())?;
        let resolved = next.resolved_routes().map_err(|error| error.to_string())?;
        // One reload at a time: the table is built against the one it replaces.
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let table = RouteTable::reusing(
            resolved,
            running.upstream_limits(),
            Some(&self.routes.load()),
        )
        .map_err(|error| error.to_string())?;
        let ignored = restart_only_changes(&running, &next);
        let routes = table.len();
        self.routes.store(Arc::new(table));
        running.routes = next.routes;
        running.upstream = next.upstream;
        running.escaped_slashes = next.escaped_slashes;
        Ok(Reloaded { routes, ignored })
    }
}

/// Reloads through `reloader` from `source` on every `hangup` until `shutdown`. Reading the
/// files happens off the async threads.
pub(crate) async fn reload_on_hangup(
    reloader: Arc<RouteReloader>,
    source: ConfigSource,
    mut hangup: Signal,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangup.recv() => if received.is_none() { return },
        }
        let (reloader, source) = (Arc::clone(&reloader), Arc::clone(&source));
        // The outcome is logged and counted inside.
        if let Err(error) = tokio::task::spawn_blocking(move || reloader.reload(source())).await {
            tracing::error!(%error, "config reload task failed");
        }
    }
}

/// The settings other than the routes that differ between `running` and `next`. The
/// destructuring is exhaustive, so a new setting cannot be added without deciding here
/// whether it reloads.
pub(crate) fn restart_only_changes(running: &ProxyConfig, next: &ProxyConfig) -> Vec<&'static str> {
    let ProxyConfig {
        listen,
        admin_listen,
        authz_grpc_listen,
        // Reloaded: the route table.
        upstream: _,
        routes: _,
        escaped_slashes: _,
        trace_context,
        // Set by `--otlp-endpoint` for the process, never by the file.
        spans: _,
        control_plane,
        gateway_token,
        gateway_id,
        region,
        propagation_bound,
        stale_policy,
        authorization_header,
        api_key_header,
        session_cookie,
        session_cache_capacity,
        upstream_timeout,
        upstream_connect_timeout,
        max_upstream_connections,
        upstream_queue_timeout,
        upstream_body_timeout,
        header_read_timeout,
        request_body_timeout,
        idle_timeout,
        max_header_bytes,
        max_connections,
        workers,
        negative_cache_ttl,
        lookup_timeout,
        max_lookups_per_second,
        max_concurrent_lookups,
        ping_interval,
        shutdown_grace,
        tls_cert,
        tls_key,
        admin_tls_cert,
        admin_tls_key,
        ca,
        client_cert,
        client_key,
        http2_max_concurrent_streams,
        http2_keepalive_interval,
    } = next;
    let changed = [
        ("listen", *listen != running.listen),
        // The running count was resolved at start (`Gateway::build`); a file that leaves it
        // unset keeps it.
        ("workers", workers.is_some() && *workers != running.workers),
        ("admin_listen", *admin_listen != running.admin_listen),
        (
            "authz_grpc_listen",
            *authz_grpc_listen != running.authz_grpc_listen,
        ),
        ("trace_context", *trace_context != running.trace_context),
        ("control_plane", *control_plane != running.control_plane),
        ("gateway_token", *gateway_token != running.gateway_token),
        ("gateway_id", *gateway_id != running.gateway_id),
        ("region", *region != running.region),
        (
            "propagation_bound",
            *propagation_bound != running.propagation_bound,
        ),
        ("stale_policy", *stale_policy != running.stale_policy),
        (
            "authorization_header",
            *authorization_header != running.authorization_header,
        ),
        ("api_key_header", *api_key_header != running.api_key_header),
        ("session_cookie", *session_cookie != running.session_cookie),
        (
            "session_cache_capacity",
            *session_cache_capacity != running.session_cache_capacity,
        ),
        (
            "upstream_timeout",
            *upstream_timeout != running.upstream_timeout,
        ),
        (
            "upstream_connect_timeout",
            *upstream_connect_timeout != running.upstream_connect_timeout,
        ),
        (
            "max_upstream_connections",
            *max_upstream_connections != running.max_upstream_connections,
        ),
        (
            "upstream_queue_timeout",
            *upstream_queue_timeout != running.upstream_queue_timeout,
        ),
        (
            "upstream_body_timeout",
            *upstream_body_timeout != running.upstream_body_timeout,
        ),
        (
            "header_read_timeout",
            *header_read_timeout != running.header_read_timeout,
        ),
        (
            "request_body_timeout",
            *request_body_timeout != running.request_body_timeout,
        ),
        ("idle_timeout", *idle_timeout != running.idle_timeout),
        (
            "max_header_bytes",
            *max_header_bytes != running.max_header_bytes,
        ),
        (
            "max_connections",
            *max_connections != running.max_connections,
        ),
        (
            "negative_cache_ttl",
            *negative_cache_ttl != running.negative_cache_ttl,
        ),
        ("lookup_timeout", *lookup_timeout != running.lookup_timeout),
        (
            "max_lookups_per_second",
            *max_lookups_per_second != running.max_lookups_per_second,
        ),
        (
            "max_concurrent_lookups",
            *max_concurrent_lookups != running.max_concurrent_lookups,
        ),
        ("ping_interval", *ping_interval != running.ping_interval),
        ("shutdown_grace", *shutdown_grace != running.shutdown_grace),
        ("tls_cert", *tls_cert != running.tls_cert),
        ("tls_key", *tls_key != running.tls_key),
        ("admin_tls_cert", *admin_tls_cert != running.admin_tls_cert),
        ("admin_tls_key", *admin_tls_key != running.admin_tls_key),
        ("ca", *ca != running.ca),
        ("client_cert", *client_cert != running.client_cert),
        ("client_key", *client_key != running.client_key),
        (
            "http2_max_concurrent_streams",
            *http2_max_concurrent_streams != running.http2_max_concurrent_streams,
        ),
        (
            "http2_keepalive_interval",
            *http2_keepalive_interval != running.http2_keepalive_interval,
        ),
    ];
    changed
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}

fn now_unix_seconds() -> f64 {
    keygate_proto::time::now_unix_ms() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMode, EscapedSlashes, RouteConfig};

    fn route(prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            path_prefix: prefix.to_owned(),
            upstream: upstream.to_owned(),
            auth: AuthMode::None,
            ..RouteConfig::default()
        }
    }

    fn config(routes: Vec<RouteConfig>) -> ProxyConfig {
        ProxyConfig {
            routes,
            control_plane: vec!["http://127.0.0.1:1".to_owned()],
            gateway_token: "token".into(),
            ..ProxyConfig::default()
        }
    }

    fn reloader(running: ProxyConfig) -> (Arc<ArcSwap<RouteTable>>, RouteReloader) {
        let table = RouteTable::new(
            running.resolved_routes().expect("routes"),
            running.upstream_limits(),
        )
        .expect("table");
        let routes = Arc::new(ArcSwap::from_pointee(table));
        let reloader = RouteReloader::new(Arc::clone(&routes), running);
        (routes, reloader)
    }

    #[test]
    fn route_settings_reload_and_other_changes_are_named() {
        let running = config(vec![route("/api", "http://a:1")]);
        let routes_only = ProxyConfig {
            routes: vec![route("/v2", "http://b:2")],
            upstream: Some("http://c:3".to_owned()),
            escaped_slashes: EscapedSlashes::Keep,
            ..running.clone()
        };
        assert!(restart_only_changes(&running, &routes_only).is_empty());
        assert!(restart_only_changes(&running, &running.clone()).is_empty());

        let restart = ProxyConfig {
            listen: "127.0.0.1:1".parse().expect("address"),
            gateway_token: "another".into(),
            max_connections: running.max_connections + 1,
            tls_cert: Some("cert.pem".into()),
            ..routes_only
        };
        assert_eq!(
            restart_only_changes(&running, &restart),
            ["listen", "gateway_token", "max_connections", "tls_cert"]
        );

        // The running count is resolved at start; a file that leaves it unset keeps it.
        let resolved = ProxyConfig {
            workers: Some(4),
            ..running.clone()
        };
        assert!(restart_only_changes(&resolved, &running).is_empty());
        let more = ProxyConfig {
            workers: Some(8),
            ..running.clone()
        };
        assert_eq!(restart_only_changes(&resolved, &more), ["workers"]);
    }

    #[test]
    fn route_permissions_and_cost_reload_and_bad_ones_keep_the_old_routes() {
        let keyed = |permissions: &[&str], cost: Option<u64>| RouteConfig {
            auth: AuthMode::Key,
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            cost,
            ..route("/api", "http://a:1")
        };
        let (routes, reloader) = reloader(config(vec![keyed(&[], None)]));
        let find = |routes: &ArcSwap<RouteTable>| {
            let table = routes.load();
            let route = table.find("/api/x").expect("route");
            (route.permissions.clone(), route.cost)
        };
        assert_eq!(find(&routes), (Vec::<String>::new(), 1));
        reloader
            .reload(Ok(config(vec![keyed(&["orders.read"], Some(3))])))
            .expect("valid");
        assert_eq!(find(&routes), (vec!["orders.read".to_owned()], 3));
        let reason = reloader
            .reload(Ok(config(vec![keyed(&["orders.*"], None)])))
            .expect_err("invalid permission");
        assert!(reason.contains("permissions"), "{reason}");
        assert_eq!(find(&routes), (vec!["orders.read".to_owned()], 3));
    }

    #[test]
    fn a_bad_config_keeps_the_routes_and_a_good_one_replaces_them() {
        let running = config(vec![route("/api", "http://a:1")]);
        let (routes, reloader) = reloader(running.clone());
        let before = routes.load_full();

        assert_eq!(
            reloader.reload(Err("cannot read config file".to_owned())),
            Err("cannot read config file".to_owned())
        );
        let bad_prefix = config(vec![route("api", "http://a:1")]);
        let reason = reloader.reload(Ok(bad_prefix)).expect_err("invalid");
        assert!(reason.contains("\"api\""), "{reason}");
        let no_routes = config(Vec::new());
        assert!(reloader.reload(Ok(no_routes)).is_err());
        let no_control_plane = ProxyConfig {
            control_plane: Vec::new(),
            ..config(vec![route("/new", "http://b:2")])
        };
        assert!(reloader.reload(Ok(no_control_plane)).is_err());
        assert!(Arc::ptr_eq(&before, &routes.load_full()));

        let next = ProxyConfig {
            max_connections: running.max_connections + 1,
            ..config(vec![
                route("/api", "http://a:1"),
                route("/new", "http://b:2"),
            ])
        };
        assert_eq!(
            reloader.reload(Ok(next.clone())),
            Ok(Reloaded {
                routes: 2,
                ignored: vec!["max_connections"],
            })
        );
        let after = routes.load_full();
        let upstream = |path: &str| after.find(path).map(|route| route.upstream.to_string());
        assert_eq!(upstream("/new/x").as_deref(), Some("b:2"));
        assert_eq!(upstream("/api/x").as_deref(), Some("a:1"));
        assert_eq!(upstream("/other"), None);
        // The upstream both tables name keeps its pool (and its connections).
        let pool = |table: &RouteTable| table.find("/api").map(|route| Arc::clone(&route.pool));
        assert!(
            pool(&before)
                .zip(pool(&after))
                .is_some_and(|(old, new)| Arc::ptr_eq(&old, &new))
        );
        // The ignored setting stays ignored: it is reported against what runs.
        assert_eq!(
            reloader.reload(Ok(next)).map(|reloaded| reloaded.ignored),
            Ok(vec!["max_connections"])
        );
    }
}
