//! Certificates, private keys and trust anchors from PEM files. Every error names the file and
//! what was expected in it; a key file's contents never appear in a message.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// The certificates of a PEM file, leaf first (a full chain), at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = "certificate file";
    let bytes = read(what, path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(what, path, format!("not valid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid(what, path, "holds no CERTIFICATE block".to_owned()));
    }
    Ok(certificates)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key file";
    let bytes = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        invalid(
            what,
            path,
            "holds no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block".to_owned(),
        )
    })
}

/// Trust anchors from a PEM file of one or more CA certificates.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let what = "CA file";
    let mut store = RootCertStore::empty();
    for certificate in certificates(path).map_err(|error| match error {
        TlsError::Invalid { path, reason, .. } => TlsError::Invalid { what, path, reason },
        TlsError::Read { path, source, .. } => TlsError::Read { what, path, source },
        other => other,
    })? {
        store.add(certificate).map_err(|error| {
            invalid(what, path, format!("not a usable CA certificate: {error}"))
        })?;
    }
    Ok(store)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, reason: String) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.display().to_string(),
        reason,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = certificates(&missing).unwrap_err().to_string();
        assert!(error.starts_with("cannot read certificate file"), "{error}");
        assert!(error.contains("missing.pem"), "{error}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let error = certificates(&empty).unwrap_err().to_string();
        assert!(error.contains("holds no CERTIFICATE block"), "{error}");
        let error = roots(&empty).unwrap_err().to_string();
        assert!(error.starts_with("CA file"), "{error}");
        let error = private_key(&empty).unwrap_err().to_string();
        assert!(error.contains("holds no PRIVATE KEY"), "{error}");

        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        assert_eq!(certificates(&cert_path).unwrap().len(), 1);
        assert!(private_key(&key_path).is_ok());
        // A key file given as a certificate names what is missing, not the key.
        let error = certificates(&key_path).unwrap_err().to_string();
        assert!(!error.contains("BEGIN"), "{error}");
    }
}
