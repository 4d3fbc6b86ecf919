//! TLS termination: the rustls server settings every keygate listener uses, and
//! [`ServerStream`], the connection a listener hands to its HTTP or gRPC code, plain or TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::reload::ReloadingCert;
use crate::stream::MaybeTls;
use crate::{PROTOCOL_VERSIONS, TlsError, pem, provider};

/// ALPN for a listener that speaks HTTP/2 and HTTP/1.1 (the gateway).
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for a gRPC listener.
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN for an HTTP/1.1-only listener.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// TLS settings of one listener: its (reloadable) certificate, ALPN and, optionally, the CA
/// that client certificates must chain to.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    certificate: Arc<ReloadingCert>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS 1.3 and 1.2 only, with `alpn` offered in order of preference.
    ///
    /// With `client_ca`, a client certificate is *requested*: one that is presented must chain
    /// to that CA and be within its validity period, or the handshake fails. A client that
    /// presents none still connects; whether a service then requires one is its own decision
    /// (the control plane's Sync service does, its Admin service does not), read from
    /// [`ConnectInfo::peer_certificates`].
    pub fn new(
        certificate: Arc<ReloadingCert>,
        alpn: &[&[u8]],
        client_ca: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(PROTOCOL_VERSIONS)?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(pem::roots(path)?),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|error| TlsError::Invalid {
                    what: "client CA file",
                    path: path.display().to_string(),
                    reason: error.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(
            Arc::clone(&certificate) as Arc<dyn rustls::server::ResolvesServerCert>
        );
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        // Resumption by ticket (as nginx does by default) saves returning clients a full
        // handshake. No 0-RTT data: it could be replayed.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    /// Performs the server side of a handshake.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The listener's certificate, for the reload watcher.
    pub fn certificate(&self) -> &Arc<ReloadingCert> {
        &self.certificate
    }
}

/// An accepted connection, after its TLS handshake when the listener has TLS.
pub type ServerStream = MaybeTls<TlsStream<TcpStream>>;

impl ServerStream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// The certificate chain the client presented and the CA verified, if any.
    pub fn peer_certificates(&self) -> Option<Arc<[CertificateDer<'static>]>> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(stream) => stream
                .get_ref()
                .1
                .peer_certificates()
                .filter(|chain| !chain.is_empty())
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect()),
        }
    }
}

/// What a gRPC handler can learn about the connection a request came on (tonic puts it in the
/// request's extensions).
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate chain, leaf first, when the client presented one.
    pub peer_certificates: Option<Arc<[CertificateDer<'static>]>>,
}

impl tonic::transport::server::Connected for ServerStream {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> ConnectInfo {
        let tcp = match self {
            Self::Plain(stream) => stream,
            Self::Tls(stream) => stream.get_ref().0,
        };
        ConnectInfo {
            remote: tcp.peer_addr().ok(),
            peer_certificates: self.peer_certificates(),
        }
    }
}
