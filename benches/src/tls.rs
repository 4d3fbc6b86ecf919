//! The load generator's TLS client: rustls (ring provider), TLS 1.3 only, ALPN `http/1.1`, the
//! server verified against a CA file, and **no session resumption** (no session cache, no
//! tickets kept), so every new connection is a full handshake.
//!
//! Verifying the server's chain costs the client an ECDSA verification and parsing per
//! handshake, and in the handshakes-per-second benchmark the generator shares its core with the
//! upstream. So by default the chain is verified in full once per distinct chain and server
//! name, and a later handshake that presents byte-identical certificates for the same name reuses
//! that verdict ([`Verification::OncePerChain`]); the handshake signature, which proves the
//! server holds the key in *this* handshake, is still verified every time. The full check on
//! every handshake is [`Verification::EveryHandshake`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rustls::HandshakeKind;
use rustls::client::Resumption;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How often the server's certificate chain is verified against the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verification {
    /// In full for the first handshake with each distinct chain and name; the handshake
    /// signature on every handshake.
    #[default]
    OncePerChain,
    /// Chain and signature on every handshake (what a browser without caches does).
    EveryHandshake,
}

/// TLS settings of a load run.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) the server's chain must lead to.
    pub ca_file: PathBuf,
    /// Name to send as SNI and to verify the certificate for; by default the URL's host (an IP
    /// address is verified against the certificate's IP SANs, and sent as no SNI).
    pub server_name: Option<String>,
    pub verification: Verification,
}

/// A ready client: the rustls configuration and the name to connect to.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// Builds the client for `options`; `host` is the URL's host, the default name.
    pub fn new(options: &TlsOptions, host: &str) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots(&options.ca_file)?);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .context("cannot build the certificate verifier")?;
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is not supported by the provider")?;
        let mut config = match options.verification {
            Verification::EveryHandshake => builder.with_webpki_verifier(verifier),
            Verification::OncePerChain => {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(OncePerChain {
                        inner: verifier,
                        verified: Mutex::new(Vec::new()),
                    }))
            }
        }
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        config.enable_early_data = false;
        let name = options
            .server_name
            .as_deref()
            .unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
        let server_name = ServerName::try_from(name.to_owned())
            .with_context(|| format!("{name:?} is not a valid TLS server name"))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read the CA file {}", path.display()))?
    {
        let certificate =
            certificate.with_context(|| format!("bad PEM in the CA file {}", path.display()))?;
        roots
            .add(certificate)
            .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no certificate in the CA file {}",
        path.display()
    );
    Ok(roots)
}

/// A short description of a finished handshake, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519
/// ALPN http/1.1 (full)`.
pub fn describe(connection: &rustls::ClientConnection) -> String {
    format!(
        "{} {} {} ALPN {} ({})",
        connection
            .protocol_version()
            .map(|version| format!("{version:?}"))
            .unwrap_or_else(|| "?".into()),
        connection
            .negotiated_cipher_suite()
            .map(|suite| format!("{:?}", suite.suite()))
            .unwrap_or_else(|| "?".into()),
        connection
            .negotiated_key_exchange_group()
            .map(|group| format!("{:?}", group.name()))
            .unwrap_or_else(|| "?".into()),
        connection
            .alpn_protocol()
            .map(|alpn| String::from_utf8_lossy(alpn).into_owned())
            .unwrap_or_else(|| "none".into()),
        kind_name(connection.handshake_kind()),
    )
}

/// `full`, `full-hrr` (an extra round trip for another key share) or `resumed`.
pub fn kind_name(kind: Option<HandshakeKind>) -> &'static str {
    match kind {
        Some(HandshakeKind::Full) => "full",
        Some(HandshakeKind::FullWithHelloRetryRequest) => "full-hrr",
        Some(HandshakeKind::Resumed) => "resumed",
        None => "unknown",
    }
}

/// Chain verdicts already reached: (leaf, intermediates, name).
type Verified = Vec<(Vec<u8>, Vec<Vec<u8>>, String)>;

/// Verifies each distinct chain once (see the module documentation).
#[derive(Debug)]
struct OncePerChain {
    inner: Arc<WebPkiServerVerifier>,
    verified: Mutex<Verified>,
}

impl ServerCertVerifier for OncePerChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = server_name.to_str();
        let same = |(leaf, chain, verified_name): &(Vec<u8>, Vec<Vec<u8>>, String)| {
            leaf.as_slice() == end_entity.as_ref()
                && chain.len() == intermediates.len()
                && chain
                    .iter()
                    .zip(intermediates)
                    .all(|(a, b)| a.as_slice() == b.as_ref())
                && verified_name.as_str() == name.as_ref()
        };
        {
            let verified = self
                .verified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if verified.iter().any(same) {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if verified.len() < 16 {
            verified.push((
                end_entity.as_ref().to_vec(),
                intermediates.iter().map(|c| c.as_ref().to_vec()).collect(),
                name.into_owned(),
            ));
        }
        Ok(verdict)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The provider every client of this module uses (for callers that build servers in tests).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
