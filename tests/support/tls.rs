//! TLS for the end-to-end tests: a throwaway PKI (keygate's own `LocalCa`) with its files in a
//! temp dir, and a Rust HTTPS client (tokio-rustls + hyper, HTTP/1.1 or h2 by ALPN) that also
//! reports the serial number of the certificate the server presented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::local_ca::{LeafOptions, LocalCa, Usage};
use keygate_transport::Trust;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A CA and the certificates it issued, as files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: LocalCa,
    pub ca_path: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::new(name).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        Self { dir, ca, ca_path }
    }

    /// A server certificate for `localhost` and `127.0.0.1`, written as `<file>.pem` and
    /// `<file>-key.pem` (replacing earlier ones atomically).
    pub fn server(&self, file: &str, serial: Option<u64>) -> (PathBuf, PathBuf) {
        self.ca
            .issue(
                &["localhost", "127.0.0.1"],
                Usage::Server,
                &LeafOptions {
                    serial,
                    valid: None,
                },
            )
            .unwrap()
            .write(self.dir.path(), file)
            .unwrap()
    }

    /// A client certificate naming `id`, valid over `valid` (default: now, for a year).
    pub fn client(
        &self,
        file: &str,
        id: &str,
        valid: Option<(SystemTime, SystemTime)>,
    ) -> (PathBuf, PathBuf) {
        self.ca
            .issue(
                &[id],
                Usage::Client,
                &LeafOptions {
                    serial: None,
                    valid,
                },
            )
            .unwrap()
            .write(self.dir.path(), file)
            .unwrap()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// Client settings trusting only `ca`, offering `alpn`. Sessions are never resumed, so every
/// connection sees the certificate the server presents now.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config =
        keygate_transport::client_config(&Trust::Ca(ca.to_path_buf()), None, alpn).unwrap();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A TLS handshake with `addr` presenting `identity`, then a read: Ok when the server goes on
/// talking (it accepted the certificate), Err with the alert or error when it does not. (In
/// TLS 1.3 the server judges the client's certificate after the client's side of the
/// handshake has finished, so the refusal arrives on the first read.)
pub async fn handshake_with_identity(
    addr: SocketAddr,
    ca: &Path,
    identity: &keygate_transport::ClientIdentity,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config =
        keygate_transport::client_config(&Trust::Ca(ca.to_path_buf()), Some(identity), &[b"h2"])
            .unwrap();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // The HTTP/2 preface and an empty SETTINGS frame; a server that accepted us answers.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 64];
    match tls.read(&mut buffer).await {
        Ok(0) => Err("closed without a word".into()),
        Ok(_) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// One HTTPS connection, HTTP/1.1 or h2 as ALPN decided.
pub struct HttpsConnection {
    pub version: http::Version,
    /// The serial number of the server's leaf certificate, in hex.
    pub serial: String,
    sender: Sender,
}

enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

/// A response read whole.
#[derive(Debug)]
pub struct HttpsReply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpsConnection {
    /// Connects to `addr`, verifying the server as `server_name`.
    pub async fn open(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let session = tls.get_ref().1;
        let serial = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| {
                let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
                parsed
                    .raw_serial()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            })
            .unwrap_or_default();
        let h2 = session.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let (version, sender) = if h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(connection);
            (http::Version::HTTP_2, Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| format!("http1 handshake: {e}"))?;
            tokio::spawn(connection);
            (http::Version::HTTP_11, Sender::Http1(sender))
        };
        Ok(Self {
            version,
            serial,
            sender,
        })
    }

    /// GET `path` with `headers`.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpsReply, String> {
        let mut request = http::Request::get(path).header("host", "localhost");
        if self.version == http::Version::HTTP_2 {
            request = http::Request::get(format!("https://localhost{path}"))
                .version(http::Version::HTTP_2);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(HttpsReply {
            status,
            headers,
            body,
        })
    }
}

/// One GET over a new connection.
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(HttpsConnection, HttpsReply), String> {
    let mut connection = HttpsConnection::open(addr, "localhost", config).await?;
    let reply = connection.get(path, headers).await?;
    Ok((connection, reply))
}

/// An HTTPS upstream answering `over tls: <path>` to every request, over keygate's own TLS
/// listener code (so a gateway reaches it as it would a real https service).
pub struct TlsUpstream {
    pub addr: SocketAddr,
    served: Arc<std::sync::atomic::AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
}

impl TlsUpstream {
    pub async fn start(cert: &Path, key: &Path) -> Self {
        use keygate_transport::server::ALPN_HTTP1;
        use keygate_transport::{AcceptSettings, ReloadingCert, ServerTls};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTls::new(
            ReloadingCert::load("upstream", cert, key).unwrap(),
            ALPN_HTTP1,
            None,
        )
        .unwrap();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let counter = Arc::clone(&served);
        let settings = AcceptSettings {
            name: "upstream",
            max_connections: 64,
            handshake_timeout: std::time::Duration::from_secs(5),
        };
        tokio::spawn(keygate_transport::accept_loop(
            listener,
            settings,
            Some(tls),
            stop.clone(),
            move |accepted| {
                let counter = Arc::clone(&counter);
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let body = format!("over tls: {}", request.uri().path());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from(body)),
                            ))
                        }
                    },
                );
                tokio::spawn(async move {
                    let _permit = accepted.permit;
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(accepted.stream), service)
                        .await;
                });
            },
        ));
        Self { addr, served, stop }
    }

    /// Requests answered so far.
    pub fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
