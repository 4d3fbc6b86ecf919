//! TLS origination: rustls client settings for https upstreams, and tonic's for the gateway's
//! and the CLI's connections to the control plane. Both trust either the system's roots or a
//! CA file, and may present a client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;

use crate::{PROTOCOL_VERSIONS, TlsError, pem, provider};

/// Which certificate authorities a client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's roots (`/etc/ssl/certs` on Debian).
    System,
    /// Only the CA certificates in this PEM file.
    Ca(PathBuf),
}

impl Trust {
    /// `Ca(path)` when a file is named, else `System`.
    pub fn from_ca_file(path: Option<&Path>) -> Self {
        path.map_or(Self::System, |path| Self::Ca(path.to_path_buf()))
    }

    /// The trust anchors.
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        match self {
            Self::Ca(path) => pem::roots(path),
            Self::System => {
                let found = rustls_native_certs::load_native_certs();
                let mut store = RootCertStore::empty();
                let (added, _ignored) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsError::Invalid {
                        what: "system trust store",
                        path: "(system roots)".to_owned(),
                        reason: "no usable root certificates found; install ca-certificates or name a CA file".to_owned(),
                    });
                }
                Ok(store)
            }
        }
    }
}

/// A client certificate and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// rustls client settings: TLS 1.3 and 1.2, `trust`'s roots, `alpn`, and `identity` as the
/// client certificate when given.
pub fn client_config(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(Arc::new(trust.roots()?));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder.with_client_auth_cert(
            pem::certificates(&identity.cert)?,
            pem::private_key(&identity.key)?,
        )?,
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

/// tonic's TLS settings for a gRPC connection to `host`: the same trust and identity as
/// [`client_config`], read from the files now (so a rotated client certificate is used from
/// the next connection on).
pub fn grpc_client_tls(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    host: &str,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let mut config = tonic::transport::ClientTlsConfig::new().domain_name(host);
    config = match trust {
        Trust::System => config.with_native_roots(),
        Trust::Ca(path) => {
            // Parsed first, so a bad file gets keygate's message rather than tonic's.
            pem::roots(path)?;
            config.ca_certificate(tonic::transport::Certificate::from_pem(read(
                "CA file", path,
            )?))
        }
    };
    if let Some(identity) = identity {
        pem::certificates(&identity.cert)?;
        pem::private_key(&identity.key)?;
        config = config.identity(tonic::transport::Identity::from_pem(
            read("certificate file", &identity.cert)?,
            read("private key file", &identity.key)?,
        ));
    }
    Ok(config)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}
