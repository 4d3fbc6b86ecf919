//! Serving HTTP/1.1 and h2 (h2c in plain text) on accepted connections, for the main and the
//! admin listener alike. Accepting, the connection cap and TLS termination are
//! `keygate_transport::accept_loop`'s; here HTTP/1 header reads are bounded in time and size
//! (an oversized head gets 431 from hyper), and shutdown stops accepting, lets in-flight
//! requests finish for up to the grace period, then closes what is left. A service that says
//! [`Service::LEAN_HTTP1`] (the main listener's) has its plain HTTP/1.1 requests served by the
//! gateway's own loop (`lean.rs`), and everything else by hyper.
//!
//! The main listener is served thread-per-core ([`serve_on_threads`]): one current-thread
//! runtime per serving thread, each accepting on its own listener of the shared port and
//! keeping its connections, their timers and their upstream connections to itself. A request
//! then never wakes another thread, and no scheduler moves work between threads. The kernel
//! spreads new connections over the listeners (`SO_REUSEPORT` hashes the 4-tuple); the
//! threads share one connection cap.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use keygate_transport::{
    AcceptSettings, Accepted, Activity, Connections, Graceful, IdleLimits, Reading, ServerStream,
    ServerTls, accept_loop, accept_loop_sharing,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client_body::ClientBody;
use crate::h1::HeadFields;
use crate::lean;

/// The client end of one connection. Its address is formatted for `X-Forwarded-For` once per
/// connection, not once per request.
#[derive(Debug)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The client's IP as a header value.
    pub forwarded_for: Option<HeaderValue>,
    /// `X-Forwarded-Proto`: `https` when the client connected over TLS.
    pub forwarded_proto: HeaderValue,
    /// This hop's `Forwarded` element (RFC 7239): `for=<client>;proto=<http|https>`, the
    /// address quoted and bracketed when it is IPv6.
    pub forwarded: HeaderValue,
    /// Requests started and answered, for the idle deadlines.
    pub activity: Activity,
}

impl AsRef<Activity> for Peer {
    fn as_ref(&self) -> &Activity {
        &self.activity
    }
}

impl Peer {
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        let (ip, proto) = (addr.ip(), if tls { "https" } else { "http" });
        let element = match ip {
            std::net::IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
        };
        Self {
            addr,
            forwarded_for: HeaderValue::from_str(&ip.to_string()).ok(),
            forwarded_proto: HeaderValue::from_static(proto),
            // An IP address and `http`/`https` are always valid header text.
            forwarded: HeaderValue::from_str(&element)
                .unwrap_or_else(|_| HeaderValue::from_static("for=unknown")),
            activity: Activity::default(),
        }
    }
}

/// Something that answers requests.
pub(crate) trait Service: Send + Sync + 'static {
    /// What responses carry: the gateway's own bodies, or gRPC's (with trailers).
    type Body: hyper::body::Body<Data = Bytes, Error: Into<BoxError> + Send> + Send + 'static;
    /// Speaks only HTTP/2 (a gRPC service); otherwise HTTP/1.1 and h2 are both served.
    const HTTP2_ONLY: bool = false;
    /// Plain HTTP/1.1 requests are served by the gateway's own loop (`lean.rs`), the rest by
    /// hyper.
    const LEAN_HTTP1: bool = false;

    /// Answers one request from `peer`.
    fn call(
        &self,
        request: Request<ClientBody>,
        peer: &Peer,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// The fields of a response that its map does not hold, taken out of its body: an
    /// upstream's head as it came ([`HeadFields`]). The lean loop writes them as they are;
    /// hyper's connections have them moved into the map first.
    fn head_fields(_body: &mut Self::Body) -> HeadFields {
        HeadFields::default()
    }
}

/// The error a response body may end with, as hyper takes it.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLimits {
    /// TLS handshake, and from accept to the first request's head; each later HTTP/1 head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight this long is closed (keep-alive idle).
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keepalive: a PING after this much silence, and the connection closed when it is
    /// not answered within the same time.
    pub http2_keepalive_interval: Duration,
    pub shutdown_grace: Duration,
}

/// Streams a client may reset before the server has accepted them (the HTTP/2 rapid-reset
/// attack, CVE-2023-44487), and streams the server may have to reset for a client's protocol
/// errors, before the connection is closed with GOAWAY. The values are the h2 crate's defaults,
/// set here so that no upgrade can quietly change them.
const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Serves `listener` until `shutdown` is cancelled, then drains. With `tls`, connections are
/// HTTPS (the handshake runs in the connection's task, under `header_read_timeout`); the
/// HTTP code that follows is the same for both.
pub(crate) async fn serve<S: Service>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<ServerTls>,
    service: Arc<S>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    serve_drawing_on(name, listener, tls, service, limits, None, shutdown).await;
}

/// Serves each of `listeners` (bound to one port) on a thread of its own, in a current-thread
/// runtime, until `shutdown`; returns when every thread has drained. The threads share
/// `max_connections`. Errors only when a thread cannot be started; the threads already started
/// are then stopped and drained first.
pub(crate) async fn serve_on_threads<S: Service>(
    name: &'static str,
    listeners: Vec<TcpListener>,
    tls: Option<ServerTls>,
    service: Arc<S>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // One listener keeps its own slots, taken before `accept` (clients beyond the cap wait in
    // the backlog); several share theirs (`keygate_transport::accept`).
    let slots =
        (listeners.len() > 1).then(|| Arc::new(Semaphore::new(limits.max_connections.max(1))));
    let stop = shutdown.child_token();
    let threads = listeners.len();
    let draining = Arc::new(Draining::new(threads));
    let mut finished = Vec::with_capacity(threads);
    let mut failure = None;
    for (index, listener) in listeners.into_iter().enumerate() {
        let thread = index + 1;
        let started = start_thread(
            thread,
            name,
            listener,
            (tls.clone(), Arc::clone(&service), limits),
            slots.clone(),
            (stop.clone(), Arc::clone(&draining)),
        );
        match started {
            Ok(done) => finished.push((thread, done)),
            Err(error) => {
                failure = Some(error);
                stop.cancel();
                // This thread and those after it never started: they count as drained.
                draining.done(threads - index);
                break;
            }
        }
    }
    for (thread, done) in finished {
        if done.await.is_err() {
            tracing::error!(
                listener = name,
                thread,
                "a serving thread stopped before draining"
            );
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Starts serving thread `thread` (from 1) on `listener`; the receiver resolves when it has
/// drained, and fails if the thread ended any other way.
fn start_thread<S: Service>(
    thread: usize,
    name: &'static str,
    listener: TcpListener,
    (tls, service, limits): (Option<ServerTls>, Arc<S>, ServerLimits),
    slots: Option<Arc<Semaphore>>,
    (stop, draining): (CancellationToken, Arc<Draining>),
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The listener moves to the thread's runtime: its readiness is that runtime's to watch.
    let listener = listener.into_std()?;
    let listener = {
        let _runtime = runtime.enter();
        TcpListener::from_std(listener)?
    };
    let (drained, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("keygate-{name}-{thread}"))
        .spawn(move || {
            crate::workers::enter(thread);
            runtime.block_on(async {
                let everyone = draining.all.clone();
                {
                    let _drained = Drained(draining);
                    serve_drawing_on(name, listener, tls, service, limits, slots, stop).await;
                }
                // A request still draining on another thread may be using an upstream
                // connection this runtime watches (a borrowed one, `upstream`): keep it
                // running until every thread has drained.
                everyone.cancelled().await;
            });
            // Whatever the connections left running (a close, a timer) is dropped with the
            // runtime here.
            drop(runtime);
            let _ = drained.send(());
        })?;
    Ok(done)
}

/// The serving threads of one listener that have not drained yet.
struct Draining {
    left: AtomicUsize,
    /// Cancelled when the last has drained.
    all: CancellationToken,
}

impl Draining {
    fn new(threads: usize) -> Self {
        Self {
            left: AtomicUsize::new(threads),
            all: CancellationToken::new(),
        }
    }

    /// Counts `threads` more as drained.
    fn done(&self, threads: usize) {
        if self.left.fetch_sub(threads, Ordering::AcqRel) <= threads {
            self.all.cancel();
        }
    }
}

/// Counts its thread as drained when dropped, unwinding from a panic included, so that the
/// other threads never wait for a thread that is gone.
struct Drained(Arc<Draining>);

impl Drop for Drained {
    fn drop(&mut self) {
        self.0.done(1);
    }
}

/// [`serve`], drawing connection slots from `shared` when the listener shares its port.
async fn serve_drawing_on<S: Service>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<ServerTls>,
    service: Arc<S>,
    limits: ServerLimits,
    shared: Option<Arc<Semaphore>>,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper head deadline: it allocated and registered a timer per request, and started it
    // when hyper began waiting for the next head, which closed idle keep-alive connections
    // after `header_read_timeout`. The connection's watchdog times heads from their first
    // byte instead (`keygate_transport::activity`).
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_interval);
    if S::HTTP2_ONLY {
        builder = builder.http2_only();
    }
    let connections = Connections::new();
    let listener_state = Listener {
        builder: Arc::new(builder),
        service,
        connections: connections.clone(),
        idle: IdleLimits {
            first_request: limits.header_read_timeout,
            head: limits.header_read_timeout,
            idle: limits.idle_timeout,
        },
        max_header_bytes: limits.max_header_bytes,
    };
    let settings = AcceptSettings {
        name,
        max_connections: limits.max_connections,
        handshake_timeout: limits.header_read_timeout,
    };
    let serve = move |accepted| listener_state.serve(accepted);
    match shared {
        None => accept_loop(listener, settings, tls, shutdown, serve).await,
        Some(slots) => accept_loop_sharing(listener, settings, slots, tls, shutdown, serve).await,
    }
    if connections.drain(name, limits.shutdown_grace).await {
        tracing::debug!(listener = name, "drained");
    }
}

/// What every connection of one listener shares.
struct Listener<S> {
    /// Shared: a lean connection keeps it for a hand-over that most never make.
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: Arc<S>,
    connections: Connections,
    idle: IdleLimits,
    max_header_bytes: usize,
}

impl<S: Service> Listener<S> {
    fn serve(&self, accepted: Accepted) {
        let Accepted {
            stream,
            remote,
            at,
            permit,
        } = accepted;
        let peer = Arc::new(Peer::new(remote, stream.is_tls()));
        // One monomorphic connection per transport: the plain path has no TLS branch in it.
        match stream {
            ServerStream::Plain(tcp) => {
                let io = Reading::new(tcp, Arc::clone(&peer));
                self.serve_on(io, peer, at, permit);
            }
            ServerStream::Tls(tls) => {
                let io = Reading::new(tls, Arc::clone(&peer));
                self.serve_on(io, peer, at, permit);
            }
        }
    }

    fn serve_on<T>(&self, io: T, peer: Arc<Peer>, at: Instant, permit: OwnedSemaphorePermit)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let remote = peer.addr;
        let watch = Some((Arc::clone(&peer), self.idle, at));
        if S::LEAN_HTTP1 {
            let (builder, service) = (Arc::clone(&self.builder), Arc::clone(&self.service));
            let hyper_peer = Arc::clone(&peer);
            let connection = lean::connection(
                io,
                Arc::clone(&self.service),
                peer,
                self.max_header_bytes,
                move |rest| hyper_connection(&builder, TokioIo::new(rest), service, hyper_peer),
            );
            self.connections
                .spawn_watched(connection, remote, permit, watch);
        } else {
            let connection = hyper_connection(
                &self.builder,
                TokioIo::new(io),
                Arc::clone(&self.service),
                peer,
            );
            self.connections
                .spawn_watched(connection, remote, permit, watch);
        }
    }
}

/// hyper serving `io` (HTTP/1.1, or h2 after its preface) with `service`.
fn hyper_connection<S, I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: Arc<S>,
    peer: Arc<Peer>,
) -> impl Graceful<Error = BoxError> + Send + use<S, I>
where
    S: Service,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let hyper_service = service_fn(move |request: Request<Incoming>| {
        let (service, peer) = (Arc::clone(&service), Arc::clone(&peer));
        peer.activity.started();
        if request.version() < http::Version::HTTP_2 {
            peer.activity.http1();
        }
        async move {
            let mut response = service.call(request.map(ClientBody::from), &peer).await;
            S::head_fields(response.body_mut()).into_map(response.headers_mut());
            peer.activity.finished();
            Ok::<_, Infallible>(response)
        }
    });
    builder.serve_connection(io, hyper_service).into_owned()
}
