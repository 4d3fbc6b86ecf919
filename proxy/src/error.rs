//! The crate's error vocabulary at its boundary: what `Gateway::bind` and `Gateway::serve` can
//! fail with. Per-request outcomes are not errors: they are [`crate::verify::Verdict`]s and
//! JSON responses.

use std::net::SocketAddr;

/// A configuration that cannot work, with the setting at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no upstream: set `upstream` (--upstream) or at least one [[route]]")]
    NoRoutes,
    #[error("route path_prefix {0:?} must start with '/'")]
    BadPathPrefix(String),
    #[error(
        "route path_prefix {0:?} is configured more than once (the `upstream` shorthand is the route \"/\")"
    )]
    DuplicateRoute(String),
    #[error("invalid upstream {url:?}: {reason}")]
    BadUpstream { url: String, reason: String },
    #[error("no control plane: set `control_plane` (--control-plane URL, repeatable)")]
    NoControlPlane,
    #[error("invalid control plane URL {url:?}: {reason}")]
    BadControlPlane { url: String, reason: String },
    #[error("no gateway token: set `gateway_token` (--gateway-token)")]
    NoGatewayToken,
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("TLS settings of the {what}: {reason}")]
    Tls { what: &'static str, reason: String },
}

/// Why a gateway could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub(crate) use keygate_proto::error_chain;
