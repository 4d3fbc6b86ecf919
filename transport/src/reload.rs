//! A server certificate that can change under a running listener.
//!
//! [`ReloadingCert`] is what rustls asks for the certificate at every handshake, so a reload
//! takes effect for the next connection while open connections keep theirs: nothing is dropped.
//! [`watch_certificates`] re-reads the files on SIGHUP and whenever they change (checked once a
//! second by modification time, size and inode, which also catches the symlink swap Kubernetes
//! does when it updates a mounted Secret). A pair that fails to load (unreadable, not PEM, key
//! not matching the certificate) keeps the old pair in service, logs one line and counts
//! `keygate_tls_reload_failures_total{listener}`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::{TlsError, pem, provider};

/// How often certificate files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file, cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    device: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: metadata.ino(),
            device: metadata.dev(),
        })
    }
}

/// A certificate chain and key read from two PEM files, replaceable while in use.
pub struct ReloadingCert {
    listener: &'static str,
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files as last read (successfully or not), so a change is noticed once.
    stamps: Mutex<(Option<FileStamp>, Option<FileStamp>)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("listener", &self.listener)
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Reads the pair for the listener named `listener` (used in logs and metric labels).
    /// Fails when the files are unreadable, not PEM, or the key does not match the leaf.
    pub fn load(
        listener: &'static str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = (FileStamp::of(cert_path), FileStamp::of(key_path));
        let certified = read_pair(cert_path, key_path)?;
        // Registered at zero, so dashboards and alerts see the series before the first failure.
        metrics::counter!("keygate_tls_reload_failures_total", "listener" => listener).increment(0);
        metrics::counter!("keygate_tls_reloads_total", "listener" => listener).increment(0);
        Ok(Arc::new(Self {
            listener,
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(certified),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The pair new handshakes use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Re-reads both files. On success new handshakes use the new pair; on failure the old
    /// one stays, one line is logged and the failure is counted.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.lock_stamps() = (
            FileStamp::of(&self.cert_path),
            FileStamp::of(&self.key_path),
        );
        match read_pair(&self.cert_path, &self.key_path) {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                metrics::counter!("keygate_tls_reloads_total", "listener" => self.listener)
                    .increment(1);
                tracing::info!(listener = self.listener, cert = %self.cert_path.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(error) => {
                metrics::counter!("keygate_tls_reload_failures_total", "listener" => self.listener)
                    .increment(1);
                tracing::error!(listener = self.listener, %error, "TLS certificate reload failed; still serving the previous certificate");
                Err(error)
            }
        }
    }

    /// Whether either file differs from when it was last read.
    fn changed(&self) -> bool {
        let now = (
            FileStamp::of(&self.cert_path),
            FileStamp::of(&self.key_path),
        );
        *self.lock_stamps() != now
    }

    fn lock_stamps(&self) -> std::sync::MutexGuard<'_, (Option<FileStamp>, Option<FileStamp>)> {
        // Two plain values: valid whatever a panicking holder was doing.
        self.stamps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = pem::certificates(cert_path)?;
    let key = pem::private_key(key_path)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|error| TlsError::Invalid {
        what: "certificate and key",
        path: format!("{} + {}", cert_path.display(), key_path.display()),
        reason: format!("cannot be used together: {error}"),
    })
}

/// Reloads `certificates` on SIGHUP (all of them) and when their files change (each on its
/// own), every `interval`, until `shutdown`. SIGHUP is taken even with no certificate, so
/// `systemctl reload` never terminates a server that has none. The signal handler is installed
/// by this call, before the returned future first runs.
pub fn watch_certificates(
    certificates: Vec<Arc<ReloadingCert>>,
    interval: Duration,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; certificates reload only when their files change");
            None
        }
    };
    watch(certificates, interval, shutdown, hangup)
}

async fn watch(
    certificates: Vec<Arc<ReloadingCert>>,
    interval: Duration,
    shutdown: CancellationToken,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if forced && certificates.is_empty() {
            tracing::info!("SIGHUP: no TLS certificate to reload");
        }
        for certificate in &certificates {
            if forced || certificate.changed() {
                // The outcome is logged and counted inside.
                let _ = certificate.reload();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` with `serial`, written as two PEM files.
    pub(crate) fn write_pair(dir: &Path, serial: u64) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let certificate = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn leaf(certificate: &ReloadingCert) -> Vec<u8> {
        certificate.current().cert[0].to_vec()
    }

    #[test]
    fn a_broken_pair_keeps_the_old_one_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = write_pair(dir.path(), 1);
        let certificate = ReloadingCert::load("test", &cert_path, &key_path).unwrap();
        let first = leaf(&certificate);
        assert!(!certificate.changed());

        // A key that belongs to another certificate.
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = write_pair(other.path(), 2);
        std::fs::copy(&other_key, &key_path).unwrap();
        assert!(certificate.changed());
        let error = certificate.reload().unwrap_err().to_string();
        assert!(error.contains("cannot be used together"), "{error}");
        assert_eq!(leaf(&certificate), first);
        assert!(
            !certificate.changed(),
            "a failed read is not retried until the files change"
        );

        std::fs::write(&cert_path, "garbage").unwrap();
        assert!(certificate.reload().is_err());
        assert_eq!(leaf(&certificate), first);

        write_pair(dir.path(), 3);
        certificate.reload().unwrap();
        assert_ne!(leaf(&certificate), first);
    }

    #[test]
    fn loading_a_mismatched_pair_fails() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cert_path, _) = write_pair(a.path(), 1);
        let (_, key_path) = write_pair(b.path(), 2);
        let error = ReloadingCert::load("test", &cert_path, &key_path)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot be used together"), "{error}");
    }
}
