//! A throwaway certificate authority for `keygate dev --tls` (and the TLS tests): ECDSA P-256
//! keys, a self-signed CA, and leaf certificates it signs for servers (SANs `localhost`,
//! `127.0.0.1`, `::1`) and for gateways (SAN = the gateway id, which is how a control plane
//! requiring mutual TLS names the gateway). Its key never leaves memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Failure;

/// A certificate and its key, as PEM text.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    pub cert: String,
    pub key: String,
}

impl IssuedPem {
    /// Writes `<name>.pem` and `<name>-key.pem` (mode 0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), Failure> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        write_file(&cert, &self.cert, 0o644)?;
        write_file(&key, &self.key, 0o600)?;
        Ok((cert, key))
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// Optional details of a leaf certificate.
#[derive(Debug, Clone, Default)]
pub struct LeafOptions {
    /// Serial number; random when `None`.
    pub serial: Option<u64>,
    /// Validity; from an hour ago for a year when `None`.
    pub valid: Option<(SystemTime, SystemTime)>,
}

/// A self-signed CA that issues leaf certificates.
pub struct LocalCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

impl LocalCa {
    /// A new CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self, Failure> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, None);
        let key = KeyPair::generate().map_err(ca_error)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(ca_error)?;
        Ok(Self { issuer })
    }

    /// The CA certificate, to trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), the first one also its
    /// common name.
    pub fn issue(
        &self,
        names: &[&str],
        usage: Usage,
        options: &LeafOptions,
    ) -> Result<IssuedPem, Failure> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(names.first().copied().unwrap_or("keygate"));
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => (*name).try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()
            .map_err(ca_error)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.serial_number = options.serial.map(rcgen::SerialNumber::from);
        set_validity(&mut params, options.valid);
        let key = KeyPair::generate().map_err(ca_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(ca_error)?;
        Ok(IssuedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The files `keygate dev --tls` runs with.
#[derive(Debug, Clone)]
pub struct DevCertificates {
    /// The CA to trust (`curl --cacert`, `KEYGATE_CA`).
    pub ca: PathBuf,
    /// The certificate of every listener (`localhost`, `127.0.0.1`, `::1`).
    pub server: (PathBuf, PathBuf),
    /// The gateway's client certificate, naming `gateway_id`.
    pub gateway: (PathBuf, PathBuf),
}

impl DevCertificates {
    /// Makes a new CA and certificates in `dir` (created if missing), replacing earlier ones.
    pub fn create(dir: &Path, gateway_id: &str) -> Result<Self, Failure> {
        std::fs::create_dir_all(dir).map_err(|error| {
            Failure::Runtime(format!("cannot create {}: {error}", dir.display()))
        })?;
        let ca = LocalCa::new("keygate dev CA")?;
        let ca_path = dir.join("ca.pem");
        write_file(&ca_path, &ca.cert_pem(), 0o644)?;
        let defaults = LeafOptions::default();
        let server = ca
            .issue(&["localhost", "127.0.0.1", "::1"], Usage::Server, &defaults)?
            .write(dir, "server")?;
        let gateway = ca
            .issue(&[gateway_id], Usage::Client, &defaults)?
            .write(dir, "gateway")?;
        Ok(Self {
            ca: ca_path,
            server,
            gateway,
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Sets the validity period: `valid`, or from an hour ago for a year.
fn set_validity(params: &mut CertificateParams, valid: Option<(SystemTime, SystemTime)>) {
    let now = SystemTime::now();
    let (from, until) = valid.unwrap_or((
        now - Duration::from_secs(3600),
        now + Duration::from_secs(365 * 24 * 3600),
    ));
    params.not_before = from.into();
    params.not_after = until.into();
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        // Written aside and renamed, so a watcher never reads half a file.
        let aside = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&aside)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        std::fs::rename(&aside, path)
    };
    write().map_err(|error| Failure::Runtime(format!("cannot write {}: {error}", path.display())))
}

fn ca_error(error: rcgen::Error) -> Failure {
    Failure::Runtime(format!("cannot make a certificate: {error}"))
}
