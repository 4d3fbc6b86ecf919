//! Keep-alive HTTP/1.1 connections to one upstream.
//!
//! One pool per distinct upstream authority, shared by the routes that name it. A request takes
//! the most recently returned idle connection that is ready (LIFO keeps the warm ones warm and
//! lets the others reach the upstream's idle timeout), or opens a new one. The connection goes
//! back to the pool when the response body has been read to its end and dropped; a response
//! dropped early (the client went away) closes it instead, as HTTP/1.1 has no way to abandon
//! one response and keep the connection.
//!
//! This replaces hyper-util's general-purpose pooled client on the hot path: no pool key to
//! hash, no per-request task to wait for readiness, one mutex held for a few instructions.
//!
//! A request an idle connection could not take (the upstream had closed it; hyper hands the
//! unsent request back) is retried on the next connection. A request that was written and then
//! lost is not retried: its body may have been consumed, and the method may not be idempotent.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use keygate_transport::Trust;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;

use crate::error::ConfigError;
use crate::idle_body::{IdleBody, IdleBodyError};

/// What the gateway sends upstream: the client's body, failing when the client stops sending it
/// for `request_body_timeout`.
pub(crate) type RequestBody = IdleBody<Incoming>;

/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 512;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("connecting to {target} timed out after {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("TLS handshake with {target} failed: {source}")]
    Tls {
        target: String,
        source: std::io::Error,
    },
    #[error("all {max} connections to {target} stayed busy for {waited:?}")]
    Busy {
        target: String,
        max: usize,
        waited: Duration,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// How to speak TLS to an `https://` upstream: whom to trust, and the name its certificate
/// must carry (SNI and verification both use the URL's host).
pub(crate) struct UpstreamTls {
    trust: Trust,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl UpstreamTls {
    pub fn new(
        trust: Trust,
        config: Arc<rustls::ClientConfig>,
        authority: &Authority,
    ) -> Result<Self, ConfigError> {
        let host = authority.host();
        // An IPv6 literal comes bracketed in an authority.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|error| ConfigError::BadUpstream {
                url: format!("https://{authority}"),
                reason: format!("{host:?} cannot be verified as a TLS server name: {error}"),
            })?;
        Ok(Self {
            trust,
            connector: TlsConnector::from(config),
            server_name,
        })
    }
}

/// Bounds on the connections to one upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamLimits {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Connections open at once (busy and idle).
    pub max_connections: usize,
    /// How long a request waits for a connection when all are busy; then 503.
    pub queue_timeout: Duration,
    /// How long a response body may deliver nothing before it is abandoned.
    pub body_idle_timeout: Duration,
}

/// The keep-alive connections to one upstream.
pub(crate) struct UpstreamPool {
    authority: Authority,
    /// What to connect to: `host:port`, port 80 (443 for https) when the authority names none.
    target: String,
    /// `Some` for an `https://` upstream.
    tls: Option<UpstreamTls>,
    limits: UpstreamLimits,
    /// One permit per open connection, held by the connection's task.
    slots: Arc<Semaphore>,
    /// Signalled when a connection comes back idle, for requests waiting on a full pool.
    returned: Notify,
    idle: Mutex<Vec<SendRequest<RequestBody>>>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("authority", &self.authority)
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl UpstreamPool {
    pub fn new(authority: Authority, tls: Option<UpstreamTls>, limits: UpstreamLimits) -> Self {
        let default_port = if tls.is_some() { 443 } else { 80 };
        let target = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(default_port)
        );
        Self {
            authority,
            target,
            tls,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            returned: Notify::new(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The upstream this pool connects to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Whom this pool trusts, for an https upstream.
    pub fn trust(&self) -> Option<&Trust> {
        self.tls.as_ref().map(|tls| &tls.trust)
    }

    /// Idle connections right now.
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection when one is ready,
    /// else on a new one while fewer than `max_connections` are open, else waits up to
    /// `queue_timeout` for either. The response body returns the connection to the pool when it
    /// is done.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut deadline = None;
        loop {
            while let Some(mut sender) = self.checkout() {
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok(self.wrap(response, sender)),
                    Err(mut error) => match error.take_message() {
                        // Never written: the connection had closed. Try the next one.
                        Some(unsent) => request = unsent,
                        None => return Err(error.into_error().into()),
                    },
                }
            }
            let slot = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    // Every connection is busy: wait for one to come back or to close.
                    let deadline = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.limits.queue_timeout
                    });
                    tokio::select! {
                        slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => return Err(self.busy()),
                        },
                        () = self.returned.notified() => continue,
                        () = tokio::time::sleep_until(deadline) => return Err(self.busy()),
                    }
                }
            };
            let mut sender = self.connect(slot).await?;
            return match sender.try_send_request(request).await {
                Ok(response) => Ok(self.wrap(response, sender)),
                Err(error) => Err(error.into_error().into()),
            };
        }
    }

    fn busy(&self) -> UpstreamError {
        UpstreamError::Busy {
            target: self.target.clone(),
            max: self.limits.max_connections,
            waited: self.limits.queue_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<RequestBody>>> {
        // The vector is valid whatever a panicking holder was doing.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned connection that can take a request now. Closed ones are
    /// dropped; one still finishing its previous exchange stays for the next request.
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.lock();
        let mut index = idle.len();
        while index > 0 {
            index -= 1;
            // `remove`, not `swap_remove`: the rest stays in most-recent-last order. The common
            // case is the last entry, where both are a pop.
            if idle[index].is_closed() {
                idle.remove(index);
            } else if idle[index].is_ready() {
                return Some(idle.remove(index));
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(sender);
            drop(idle);
            self.returned.notify_one();
        }
    }

    /// A new connection: TCP, then TLS for an https upstream (both within `connect_timeout`),
    /// then the HTTP/1.1 handshake.
    async fn connect(
        &self,
        slot: OwnedSemaphorePermit,
    ) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.limits.connect_timeout;
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(&self.target)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    target: self.target.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    target: self.target.clone(),
                    timeout: self.limits.connect_timeout,
                });
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an upstream connection");
        }
        let Some(tls) = &self.tls else {
            return self.handshake(TokioIo::new(stream), slot).await;
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), stream);
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(stream)) => self.handshake(TokioIo::new(stream), slot).await,
            Ok(Err(source)) => Err(UpstreamError::Tls {
                target: self.target.clone(),
                source,
            }),
            Err(_) => Err(UpstreamError::ConnectTimeout {
                target: self.target.clone(),
                timeout: self.limits.connect_timeout,
            }),
        }
    }

    /// The HTTP/1.1 client handshake on a connected stream; the connection runs in its own task,
    /// which holds the connection's slot until it ends.
    async fn handshake<I>(
        &self,
        io: I,
        slot: OwnedSemaphorePermit,
    ) -> Result<SendRequest<RequestBody>, UpstreamError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(io).await?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(upstream = %target, %error, "upstream connection ended with an error");
            }
            drop(slot);
        });
        Ok(sender)
    }

    fn wrap(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: SendRequest<RequestBody>,
    ) -> Response<PooledBody> {
        response.map(|body| PooledBody {
            body: IdleBody::new(body, self.limits.body_idle_timeout),
            finished: false,
            connection: Some((sender, Arc::clone(self))),
        })
    }
}

/// An upstream response body that gives its connection back to the pool once it has been
/// read to the end, and fails when the upstream sends nothing for `idle_timeout` (the client's
/// response is then cut off, and the connection closed). The timer exists only once the body
/// has had to wait: a response that arrives whole costs none.
pub struct PooledBody {
    body: IdleBody<Incoming>,
    finished: bool,
    connection: Option<(SendRequest<RequestBody>, Arc<UpstreamPool>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("finished", &self.finished)
            .finish()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = IdleBodyError<hyper::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished = true,
            Poll::Ready(Some(Err(IdleBodyError::Idle(idle)))) => {
                tracing::warn!(idle = ?idle, "upstream response body stalled; abandoning it");
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some((sender, pool)) = self.connection.take()
            && (self.finished || self.body.is_end_stream())
        {
            pool.checkin(sender);
        }
        // Otherwise the sender drops here and hyper closes the half-read connection.
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    const TEST_LIMITS: UpstreamLimits = UpstreamLimits {
        connect_timeout: Duration::from_secs(5),
        max_connections: 64,
        queue_timeout: Duration::from_secs(5),
        body_idle_timeout: Duration::from_secs(60),
    };

    /// An upstream that answers `count` connections, each with keep-alive, and reports the
    /// number of connections it accepted.
    async fn upstream() -> (Authority, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|request: Request<Incoming>| async move {
                        let path = request.uri().path().to_owned();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(path))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr.to_string().parse().expect("authority"), accepted)
    }

    /// A request with an `Incoming` body, as the gateway forwards them: taken from a real
    /// server connection on loopback.
    async fn incoming_requests(paths: &[&str]) -> Vec<Request<RequestBody>> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (sent, mut received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let service = service_fn(move |request: Request<Incoming>| {
                let sent = sent.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let mut request = Request::from_parts(parts, body);
                    *request.uri_mut() = request.uri().path().parse().expect("origin form");
                    let _ = sent.send(request);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut client, connection) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut requests = Vec::new();
        for path in paths {
            let request = Request::get(*path)
                .header("host", "test")
                .body(Full::new(Bytes::new()))
                .expect("request");
            client.send_request(request).await.expect("sent");
            let request: Request<Incoming> = received.recv().await.expect("received");
            requests.push(request.map(|body| IdleBody::new(body, Duration::from_secs(30))));
        }
        requests
    }

    #[tokio::test]
    async fn a_finished_response_gives_its_connection_back_and_it_is_reused() {
        let (authority, accepted) = upstream().await;
        let pool = Arc::new(UpstreamPool::new(authority, None, TEST_LIMITS));
        for request in incoming_requests(&["/a", "/b", "/c"]).await {
            let path = request.uri().path().to_owned();
            let response = pool.send(request).await.expect("answered");
            let body = response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes(), Bytes::from(path));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_unread_closes_its_connection() {
        let (authority, accepted) = upstream().await;
        let pool = Arc::new(UpstreamPool::new(authority, None, TEST_LIMITS));
        let mut requests = incoming_requests(&["/a", "/b"]).await.into_iter();
        let first = pool
            .send(requests.next().expect("first"))
            .await
            .expect("answered");
        drop(first);
        assert_eq!(pool.idle_count(), 0);
        let second = pool
            .send(requests.next().expect("second"))
            .await
            .expect("answered");
        let body = second.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), Bytes::from("/b"));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority: Authority = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority");
        drop(listener);
        let pool = Arc::new(UpstreamPool::new(authority, None, TEST_LIMITS));
        let request = incoming_requests(&["/a"]).await.pop().expect("request");
        assert!(matches!(
            pool.send(request).await,
            Err(UpstreamError::Connect { .. })
        ));
    }

    /// A self-signed certificate for `localhost`, as PEM files in `dir`.
    fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        (cert_path, key_path)
    }

    #[tokio::test]
    async fn an_https_upstream_that_does_not_verify_is_a_tls_error_that_says_why() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = self_signed(dir.path(), "upstream");
        let (stranger, _) = self_signed(dir.path(), "stranger");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let tls = keygate_transport::ServerTls::new(
            keygate_transport::ReloadingCert::load("upstream", &cert, &key).expect("cert"),
            keygate_transport::server::ALPN_HTTP1,
            None,
        )
        .expect("tls");
        let stop = tokio_util::sync::CancellationToken::new();
        let settings = keygate_transport::AcceptSettings {
            name: "upstream",
            max_connections: 8,
            handshake_timeout: Duration::from_secs(5),
        };
        tokio::spawn(keygate_transport::accept_loop(
            listener,
            settings,
            Some(tls),
            stop.clone(),
            |accepted| {
                tokio::spawn(async move {
                    let service = service_fn(|_: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("secret"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(accepted.stream), service)
                        .await;
                });
            },
        ));
        let authority: Authority = format!("localhost:{port}").parse().expect("authority");
        let pool = |trusted: &std::path::Path| {
            let trust = Trust::Ca(trusted.to_path_buf());
            let config =
                keygate_transport::client_config(&trust, None, &[b"http/1.1"]).expect("config");
            let tls = UpstreamTls::new(trust, Arc::new(config), &authority).expect("tls");
            Arc::new(UpstreamPool::new(authority.clone(), Some(tls), TEST_LIMITS))
        };

        // Trusting the upstream's own certificate: answered over TLS.
        let mut requests = incoming_requests(&["/a", "/b"]).await.into_iter();
        let response = pool(&cert)
            .send(requests.next().expect("a"))
            .await
            .expect("answered");
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), Bytes::from("secret"));

        // Trusting someone else: refused, and the error (what the gateway logs) says why.
        let error = pool(&stranger)
            .send(requests.next().expect("b"))
            .await
            .expect_err("an unverifiable upstream is refused");
        assert!(matches!(error, UpstreamError::Tls { .. }), "{error:?}");
        let logged = crate::error::error_chain(&error);
        assert!(logged.contains("TLS handshake with localhost:"), "{logged}");
        assert!(logged.contains("invalid peer certificate"), "{logged}");
        stop.cancel();
    }
}
