//! Serving HTTP/1.1 and h2 (h2c in plain text) on accepted connections, for the main and the
//! admin listener alike. Accepting, the connection cap and TLS termination are
//! `keygate_transport::accept_loop`'s; here HTTP/1 header reads are bounded in time and size
//! (an oversized head gets 431 from hyper), and shutdown stops accepting, lets in-flight
//! requests finish for up to the grace period, then closes what is left.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use keygate_transport::{
    AcceptSettings, Accepted, Connections, ServerStream, ServerTls, accept_loop,
};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::response::ProxyBody;

/// The client end of one connection. Its address is formatted for `X-Forwarded-For` once per
/// connection, not once per request.
#[derive(Debug)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The client's IP as a header value.
    pub forwarded_for: Option<HeaderValue>,
    /// `X-Forwarded-Proto`: `https` when the client connected over TLS.
    pub forwarded_proto: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        Self {
            addr,
            forwarded_for: HeaderValue::from_str(&addr.ip().to_string()).ok(),
            forwarded_proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

/// Something that answers requests.
pub(crate) trait Service: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn call(
        &self,
        request: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;
}

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let connections = Connections::new();
    let listener_state = Listener {
        builder,
        service,
        connections: connections.clone(),
    };
    let settings = AcceptSettings {
        name,
        max_connections: limits.max_connections,
        handshake_timeout: limits.header_read_timeout,
    };
    accept_loop(listener, settings, tls, shutdown, move |accepted| {
        listener_state.serve(accepted);
    })
    .await;
    if connections.drain(name, limits.shutdown_grace).await {
        tracing::debug!(listener = name, "drained");
    }
}

/// What every connection of one listener shares.
struct Listener<S> {
    builder: auto::Builder<TokioExecutor>,
    service: Arc<S>,
    connections: Connections,
}

impl<S: Service> Listener<S> {
    fn serve(&self, accepted: Accepted) {
        let Accepted {
            stream,
            remote,
            permit,
        } = accepted;
        let peer = Arc::new(Peer::new(remote, stream.is_tls()));
        // One monomorphic connection per transport: the plain path has no TLS branch in it.
        match stream {
            ServerStream::Plain(tcp) => self.serve_on(TokioIo::new(tcp), peer, permit),
            ServerStream::Tls(tls) => self.serve_on(TokioIo::new(tls), peer, permit),
        }
    }

    fn serve_on<I>(&self, io: I, peer: Arc<Peer>, permit: OwnedSemaphorePermit)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = Arc::clone(&self.service);
        let remote = peer.addr;
        let hyper_service = service_fn(move |request| {
            let (service, peer) = (Arc::clone(&service), Arc::clone(&peer));
            async move { Ok::<_, Infallible>(service.call(request, peer).await) }
        });
        let connection = self
            .builder
            .serve_connection(io, hyper_service)
            .into_owned();
        self.connections.spawn(connection, remote, permit);
    }
}
