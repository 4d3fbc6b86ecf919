//! Keep-alive HTTP/1.1 connections to one upstream, and the gateway's own HTTP/1.1 client that
//! speaks on them.
//!
//! One pool per distinct upstream authority, shared by the routes that name it. A request takes
//! the most recently returned idle connection that is still open (LIFO keeps the warm ones
//! warm and lets the others reach the upstream's idle timeout), or opens a new one. Idle
//! connections are kept per serving thread (`crate::workers`): a connection is registered with
//! the runtime of the thread that opened it, and a request takes one from its own thread's
//! list, so that its reads are woken by its own thread. Only when every slot is taken and its
//! thread has none idle does a request borrow another thread's idle connection (its wake-ups
//! then cross threads); it goes back to its own thread's list. Closing the other thread's
//! connection to open one here instead would churn connections under a saturated pool, and
//! the upstream, which sees a close late, would count more than `max_connections` open. The
//! connection goes back to the pool when the response body has been read to its end; a
//! response dropped early (the client went away) closes it instead, as HTTP/1.1 has no way to
//! abandon one response and keep the connection.
//!
//! The client is the gateway's own (`connection.rs`, framing in `wire.rs`), not hyper's: a
//! connection is driven by the task of the request that holds it, so a request costs no
//! connection task, channel or cross-task wake-up, and the response head is parsed once into
//! the map the server side sends on. Measured in BENCHMARKS.md ("A client of its own").
//!
//! A request on a reused connection that fails before a single byte of answer (the upstream
//! had closed the idle connection as the request left) is sent again on another connection
//! when that is safe: it had no body and its method is idempotent. Anything else is not
//! retried: a body may have been consumed, and the method may not be idempotent.

mod connection;
mod wire;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Response;
use http::uri::Authority;
use http_body::Body;
use keygate_transport::Trust;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::client_body::ClientBody;
use crate::error::ConfigError;
use crate::idle_body::IdleBody;
use crate::workers;
pub use connection::ResponseBody;
use connection::{Connection, Failed, Io};
use wire::RequestFraming;
pub(crate) use wire::{AddedFields, WireError};

/// What the gateway sends upstream: the client's body, failing when the client stops sending it
/// for `request_body_timeout`.
pub(crate) type RequestBody = IdleBody<ClientBody>;

/// An upstream response body that fails when the upstream sends nothing for
/// `body_idle_timeout` (the client's response is then cut off, and the connection closed). The
/// timer exists only once the body has had to wait: a response that arrives whole costs none.
pub type PooledBody = IdleBody<ResponseBody>;

/// Idle connections kept per upstream and serving thread; more are closed when they come back.
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
    /// No response head by the deadline the forwarder set (`upstream_timeout`).
    #[error("no response head in time")]
    Timeout,
    #[error("the upstream connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream's answer is not HTTP/1.1 the gateway can pass on: {0}")]
    Wire(#[from] WireError),
    /// The client's body broke off or was malformed while it streamed up: the client's fault.
    #[error("the request body could not be read: {0}")]
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
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
    /// Serving threads that send through the pool; each keeps its own idle connections.
    pub threads: usize,
}

/// The keep-alive connections to one upstream.
pub(crate) struct UpstreamPool {
    authority: Authority,
    /// What to connect to: `host:port`, port 80 (443 for https) when the authority names none.
    target: String,
    /// `Some` for an `https://` upstream.
    tls: Option<UpstreamTls>,
    limits: UpstreamLimits,
    /// One permit per open connection, held by the connection.
    slots: Arc<Semaphore>,
    /// Signalled when a connection comes back idle, for requests waiting on a full pool.
    returned: Notify,
    /// Idle connections by serving thread: index 0 for any thread that is not one
    /// ([`workers::current`]).
    idle: Box<[Mutex<Vec<Connection>>]>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("authority", &self.authority)
            .field("idle", &self.idle_count())
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
            idle: (0..=limits.threads).map(|_| Mutex::default()).collect(),
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

    /// Idle connections right now, of every thread.
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|idle| lock(idle).len()).sum()
    }

    /// Sends the request `parts` and `body` (no hop-by-hop fields; `added` written after its
    /// own fields, replacing theirs of the same names) on an idle
    /// connection when one is open, else on a new one while fewer than `max_connections` are
    /// open, else waits up to `queue_timeout` for either. The response head must be in by
    /// `deadline`, whatever the waiting and connecting took. The response body returns the
    /// connection to the pool when it is done.
    pub async fn send(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        mut body: RequestBody,
        added: &AddedFields<'_>,
        deadline: Instant,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let framing = RequestFraming::of(&parts.headers, body.is_end_stream());
        let may_resend = framing == RequestFraming::Empty && wire::is_idempotent(&parts.method);
        loop {
            let connection = self.acquire(deadline).await?;
            let exchanged =
                connection::exchange(self, connection, parts, &mut body, added, framing, deadline);
            match exchanged.await {
                Ok(response) => {
                    return Ok(
                        response.map(|body| IdleBody::new(body, self.limits.body_idle_timeout))
                    );
                }
                Err(Failed { stale: true, .. }) if may_resend => {
                    tracing::debug!(upstream = %self.target, "a reused connection had closed; sending again");
                }
                Err(Failed { error, .. }) => return Err(error),
            }
        }
    }

    /// An open idle connection, or a new one, waiting up to `queue_timeout` when every slot is
    /// taken; never past `deadline`.
    async fn acquire(&self, deadline: Instant) -> Result<Connection, UpstreamError> {
        let mut queue_deadline = None;
        loop {
            if let Some(connection) = self.checkout() {
                return Ok(connection);
            }
            let slot = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    // Every slot is taken, but another thread may have one idle.
                    if let Some(connection) = self.borrow() {
                        return Ok(connection);
                    }
                    // Every connection is busy: wait for one to come back or to close.
                    let queue_deadline = *queue_deadline
                        .get_or_insert_with(|| Instant::now() + self.limits.queue_timeout);
                    tokio::select! {
                        slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => return Err(self.busy()),
                        },
                        () = self.returned.notified() => continue,
                        () = tokio::time::sleep_until(queue_deadline.min(deadline)) => {
                            return Err(if deadline <= queue_deadline {
                                UpstreamError::Timeout
                            } else {
                                self.busy()
                            });
                        }
                    }
                }
            };
            return self.connect(slot, deadline).await;
        }
    }

    fn busy(&self) -> UpstreamError {
        UpstreamError::Busy {
            target: self.target.clone(),
            max: self.limits.max_connections,
            waited: self.limits.queue_timeout,
        }
    }

    /// The idle connections of serving thread `thread`.
    fn idle_of(&self, thread: usize) -> &Mutex<Vec<Connection>> {
        // `threads` counts every serving thread, so the index is in range; were it not, that
        // thread's connections would share the list of threads that are not serving ones.
        self.idle.get(thread).unwrap_or(&self.idle[0])
    }

    /// The most recently returned idle connection of this thread that is still open.
    fn checkout(&self) -> Option<Connection> {
        open_idle(self.idle_of(workers::current()))
    }

    /// An open idle connection of another thread, for when this one has none and no slot is
    /// free.
    fn borrow(&self) -> Option<Connection> {
        let here = workers::current();
        self.idle
            .iter()
            .enumerate()
            .filter(|(thread, _)| *thread != here)
            .find_map(|(_, idle)| open_idle(idle))
    }

    /// Back to the idle list of the thread that opened it.
    fn checkin(&self, connection: Connection) {
        let mut idle = lock(self.idle_of(connection.home));
        if idle.len() < MAX_IDLE {
            idle.push(connection);
            drop(idle);
            self.returned.notify_one();
        }
    }

    /// A new connection: TCP, then TLS for an https upstream, both within `connect_timeout`
    /// and by `response_deadline`.
    async fn connect(
        &self,
        slot: OwnedSemaphorePermit,
        response_deadline: Instant,
    ) -> Result<Connection, UpstreamError> {
        let connect_deadline = Instant::now() + self.limits.connect_timeout;
        let deadline = connect_deadline.min(response_deadline);
        let timed_out = || {
            if response_deadline < connect_deadline {
                UpstreamError::Timeout
            } else {
                UpstreamError::ConnectTimeout {
                    target: self.target.clone(),
                    timeout: self.limits.connect_timeout,
                }
            }
        };
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(&self.target)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    target: self.target.clone(),
                    source,
                });
            }
            Err(_) => return Err(timed_out()),
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an upstream connection");
        }
        let Some(tls) = &self.tls else {
            return Ok(Connection::new(Io::Plain(stream), slot));
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), stream);
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(stream)) => Ok(Connection::new(Io::Tls(Box::new(stream)), slot)),
            Ok(Err(source)) => Err(UpstreamError::Tls {
                target: self.target.clone(),
                source,
            }),
            Err(_) => Err(timed_out()),
        }
    }
}

/// The most recently returned connection in `idle` that is still open; closed ones are dropped
/// (the check happens outside the lock).
fn open_idle(idle: &Mutex<Vec<Connection>>) -> Option<Connection> {
    loop {
        let mut connection = lock(idle).pop()?;
        if connection.is_open() {
            return Some(connection);
        }
    }
}

fn lock(idle: &Mutex<Vec<Connection>>) -> std::sync::MutexGuard<'_, Vec<Connection>> {
    // The vector is valid whatever a panicking holder was doing.
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::Request;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::client::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    const TEST_LIMITS: UpstreamLimits = UpstreamLimits {
        connect_timeout: Duration::from_secs(5),
        max_connections: 64,
        queue_timeout: Duration::from_secs(5),
        body_idle_timeout: Duration::from_secs(60),
        threads: 1,
    };

    /// Sends `request` through `pool` as the forwarder does, with a deadline no test reaches.
    async fn send(
        pool: &Arc<UpstreamPool>,
        request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let (parts, body) = request.into_parts();
        let host = http::HeaderValue::from_static("test");
        let deadline = Instant::now() + Duration::from_secs(30);
        pool.send(&parts, body, &AddedFields::new(&host), deadline)
            .await
    }

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
            requests.push(request.map(|body| IdleBody::new(body.into(), Duration::from_secs(30))));
        }
        requests
    }

    #[tokio::test]
    async fn a_finished_response_gives_its_connection_back_and_it_is_reused() {
        let (authority, accepted) = upstream().await;
        let pool = Arc::new(UpstreamPool::new(authority, None, TEST_LIMITS));
        for request in incoming_requests(&["/a", "/b", "/c"]).await {
            let path = request.uri().path().to_owned();
            let response = send(&pool, request).await.expect("answered");
            let body = response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes(), Bytes::from(path));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    /// A serving thread as the gateway runs them: a thread with its own runtime, marked as
    /// serving thread `index`, sending the requests it is given through one pool.
    struct ServingThread {
        requests:
            tokio::sync::mpsc::UnboundedSender<(&'static str, tokio::sync::oneshot::Sender<()>)>,
    }

    impl ServingThread {
        fn start(pool: &Arc<UpstreamPool>, index: usize) -> Self {
            let pool = Arc::clone(pool);
            let (requests, mut received) = tokio::sync::mpsc::unbounded_channel::<(
                &'static str,
                tokio::sync::oneshot::Sender<()>,
            )>();
            std::thread::spawn(move || {
                crate::workers::enter(index);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    while let Some((path, answered)) = received.recv().await {
                        let request = incoming_requests(&[path]).await.pop().expect("request");
                        let response = send(&pool, request).await.expect("answered");
                        let body = response.into_body().collect().await.expect("body");
                        assert_eq!(body.to_bytes(), Bytes::from(path));
                        let _ = answered.send(());
                    }
                });
            });
            Self { requests }
        }

        /// Sends a request for `path` from this thread; panics unless it is answered with its
        /// path (the upstream's echo).
        async fn send(&self, path: &'static str) {
            let (answered, done) = tokio::sync::oneshot::channel();
            self.requests
                .send((path, answered))
                .expect("thread running");
            done.await
                .expect("the request failed on its serving thread");
        }
    }

    /// A pool for two serving threads, and the two threads.
    fn pool_of_two_threads(
        authority: Authority,
        limits: UpstreamLimits,
    ) -> (Arc<UpstreamPool>, ServingThread, ServingThread) {
        let pool = Arc::new(UpstreamPool::new(authority, None, limits));
        let (one, two) = (
            ServingThread::start(&pool, 1),
            ServingThread::start(&pool, 2),
        );
        (pool, one, two)
    }

    #[tokio::test]
    async fn each_serving_thread_reuses_only_its_own_connections() {
        let (authority, accepted) = upstream().await;
        let limits = UpstreamLimits {
            threads: 2,
            ..TEST_LIMITS
        };
        let (pool, one, two) = pool_of_two_threads(authority, limits);
        one.send("/a").await;
        one.send("/b").await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Thread 2 does not take thread 1's idle connection: it belongs to another runtime.
        two.send("/c").await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 2);
        two.send("/d").await;
        one.send("/e").await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_full_pool_lends_another_threads_idle_connection_and_takes_it_back() {
        let (authority, accepted) = upstream().await;
        let limits = UpstreamLimits {
            threads: 2,
            max_connections: 1,
            queue_timeout: Duration::from_millis(200),
            ..TEST_LIMITS
        };
        let (pool, one, two) = pool_of_two_threads(authority, limits);
        one.send("/a").await;
        // The one slot is thread 1's idle connection. Waiting for a slot would end in
        // UPSTREAM_BUSY, and the send would fail; closing it would open a second one.
        two.send("/b").await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            lock(&pool.idle[1]).len(),
            1,
            "back with the thread that opened it"
        );
        assert_eq!(lock(&pool.idle[2]).len(), 0);
        one.send("/c").await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_unread_closes_its_connection() {
        let (authority, accepted) = upstream().await;
        let pool = Arc::new(UpstreamPool::new(authority, None, TEST_LIMITS));
        let mut requests = incoming_requests(&["/a", "/b"]).await.into_iter();
        let first = send(&pool, requests.next().expect("first"))
            .await
            .expect("answered");
        drop(first);
        assert_eq!(pool.idle_count(), 0);
        let second = send(&pool, requests.next().expect("second"))
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
            send(&pool, request).await,
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
        let response = send(&pool(&cert), requests.next().expect("a"))
            .await
            .expect("answered");
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), Bytes::from("secret"));

        // Trusting someone else: refused, and the error (what the gateway logs) says why.
        let error = send(&pool(&stranger), requests.next().expect("b"))
            .await
            .expect_err("an unverifiable upstream is refused");
        assert!(matches!(error, UpstreamError::Tls { .. }), "{error:?}");
        let logged = crate::error::error_chain(&error);
        assert!(logged.contains("TLS handshake with localhost:"), "{logged}");
        assert!(logged.contains("invalid peer certificate"), "{logged}");
        stop.cancel();
    }
}
