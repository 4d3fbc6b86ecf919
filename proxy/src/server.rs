//! Accepting connections and serving HTTP/1.1 and h2c on them, for the main and the admin
//! listener alike: a semaphore caps open connections, HTTP/1 header reads are bounded in time
//! and size (an oversized head gets 431 from hyper), and shutdown stops accepting, lets
//! in-flight requests finish for up to the grace period, then closes what is left.

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::response::ProxyBody;

/// The client end of one connection. Its address is formatted for `X-Forwarded-For` once per
/// connection, not once per request.
#[derive(Debug)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The client's IP as a header value.
    pub forwarded_for: Option<HeaderValue>,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            forwarded_for: HeaderValue::from_str(&addr.ip().to_string()).ok(),
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

/// Serves `listener` until `shutdown` is cancelled, then drains.
pub(crate) async fn serve<S: Service>(
    name: &'static str,
    listener: TcpListener,
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
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Cancelled when the grace period ends: connections still open are then dropped.
    let force_close = CancellationToken::new();

    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off briefly instead of spinning.
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = Arc::clone(&service);
        let peer = Arc::new(Peer::new(remote));
        let hyper_service = service_fn(move |request| {
            let (service, peer) = (Arc::clone(&service), Arc::clone(&peer));
            async move { Ok::<_, Infallible>(service.call(request, peer).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let connection = graceful.watch(connection);
        let force_close = force_close.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(error) = result {
                    tracing::debug!(%remote, %error, "connection ended with an error");
                },
                () = force_close.cancelled() => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!(listener = name, "drained"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(listener = name, grace = ?limits.shutdown_grace, "shutdown grace elapsed; closing remaining connections");
        }
    }
    force_close.cancel();
}
