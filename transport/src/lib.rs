//! keygate-transport: what crosses the network for keygate's servers and clients, kept out of
//! their request-handling code.
//!
//! - [`accept`]: the one accept loop every listener uses: a connection cap taken before
//!   `accept`, back-off when the process is out of file descriptors, and a TLS handshake (when
//!   configured) that runs in the connection's own task under a deadline, so a silent client
//!   never holds up the others;
//! - [`activity`]: deadlines for connections that never send a request or sit idle;
//! - [`drain`]: serving accepted connections so that shutdown lets in-flight requests finish
//!   within a grace period, then closes the rest;
//! - [`pem`]: reading certificates, keys and trust anchors from PEM files, with errors that name
//!   the file;
//! - [`reload`]: a server certificate that is re-read on SIGHUP and when its files change,
//!   keeping the old pair when the new one is broken;
//! - [`server`]: rustls server settings (TLS 1.2 and 1.3 only, ALPN, optional client
//!   certificates) and [`ServerStream`], an accepted plain or TLS connection;
//! - [`stream`]: [`MaybeTls`], TCP or TLS over it, for accepted and opened connections alike;
//! - [`client`]: rustls client settings for upstreams and the control plane (system roots or a
//!   CA file, an optional client certificate);
//! - [`identity`]: who a client certificate names (its first DNS or URI SAN).
//!
//! Every rustls configuration is built with [`provider`] explicitly, so the choice of crypto
//! provider is made here, once.

#![forbid(unsafe_code)]

pub mod accept;
pub mod activity;
pub mod client;
pub mod drain;
pub mod identity;
pub mod pem;
pub mod reload;
pub mod server;
pub mod stream;

use std::sync::Arc;

pub use accept::{AcceptSettings, Accepted, accept_loop, accept_loop_sharing};
pub use activity::{Activity, IdleLimits, Reading};
pub use client::{ClientIdentity, Trust, client_config};
pub use drain::{Connections, Graceful};
pub use reload::{ReloadingCert, watch_certificates};
pub use server::{ConnectInfo, ServerStream, ServerTls};
pub use stream::MaybeTls;

/// The crypto provider behind every TLS configuration keygate builds: `ring`.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS versions keygate speaks: 1.3 and 1.2, nothing older.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Invalid {
        what: &'static str,
        path: String,
        reason: String,
    },
    /// rustls refused the settings.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}
