//! The crate's one error type at its boundary: everything that can stop the control plane
//! from starting or serving.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::store::StoreError;

/// Why the control plane could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("could not create the data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not listen for {listener} on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {listener} server failed: {message}")]
    Serve {
        listener: &'static str,
        message: String,
    },
}
