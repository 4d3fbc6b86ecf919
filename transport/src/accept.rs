//! The one accept loop behind every keygate listener (the gateway's main and admin listeners,
//! the control plane's gRPC and HTTP listeners).
//!
//! - A connection slot (a semaphore permit) is taken *before* `accept`, so at most
//!   `max_connections` are open; further clients wait in the kernel's backlog. The permit
//!   travels with the connection and is released when whoever serves it drops it.
//! - Listeners that share one port (`SO_REUSEPORT`, one per serving thread) share their slots
//!   ([`accept_loop_sharing`]). There a slot is taken *after* `accept`: taken before, an idle
//!   loop would sit on a slot while the connection the kernel queued for another loop waited
//!   for it. So each such loop holds at most one accepted connection that is not yet served,
//!   waiting for a slot as it would have waited in the backlog.
//! - When `accept` fails because the process or system is out of file descriptors or memory,
//!   the loop backs off (10 ms doubling to 1 s) instead of spinning; errors that concern one
//!   connection only (reset before accept) are skipped at once.
//! - With TLS, the handshake runs in the new connection's own task under `handshake_timeout`,
//!   so a client that connects and says nothing costs one slot until the deadline, never the
//!   loop's attention.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::server::{ServerStream, ServerTls};

/// Shortest and longest pause after an `accept` that failed for lack of resources.
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Bounds of one listener.
#[derive(Debug, Clone)]
pub struct AcceptSettings {
    /// Name in logs and metric labels (`main`, `admin`, `grpc`, `http`).
    pub name: &'static str,
    /// Connections open at once, handshakes included.
    pub max_connections: usize,
    /// Longest TLS handshake; a client slower than this is disconnected.
    pub handshake_timeout: Duration,
}

/// A connection ready for the protocol: accepted, and through its TLS handshake if any.
#[derive(Debug)]
pub struct Accepted {
    pub stream: ServerStream,
    pub remote: SocketAddr,
    /// When the connection was accepted (deadlines run from here, handshake included).
    pub at: tokio::time::Instant,
    /// The connection's slot; drop it when the connection ends.
    pub permit: OwnedSemaphorePermit,
}

/// Accepts connections on `listener` until `shutdown`, handing each ready one to `serve`
/// (called in the accept loop for plain connections, in the handshake's task for TLS ones).
/// Returns when `shutdown` is cancelled; the listener is closed then.
pub async fn accept_loop<F>(
    listener: TcpListener,
    settings: AcceptSettings,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(Accepted) + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    run(listener, settings, Slots::Own(slots), tls, shutdown, serve).await;
}

/// Like [`accept_loop`], for one of several listeners on the same port that together serve at
/// most as many connections as `slots` has permits (`settings.max_connections` is not used).
/// A slot is taken after `accept` (see the module's notes).
pub async fn accept_loop_sharing<F>(
    listener: TcpListener,
    settings: AcceptSettings,
    slots: Arc<Semaphore>,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(Accepted) + Send + Sync + 'static,
{
    run(
        listener,
        settings,
        Slots::Shared(slots),
        tls,
        shutdown,
        serve,
    )
    .await;
}

/// Where a listener's connection slots come from.
enum Slots {
    /// Its own: a slot is taken before `accept`.
    Own(Arc<Semaphore>),
    /// Shared with the other listeners on its port: a slot is taken after `accept`.
    Shared(Arc<Semaphore>),
}

impl Slots {
    /// A slot, or `None` when `shutdown` comes first.
    async fn take(&self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        let (Self::Own(slots) | Self::Shared(slots)) = self;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            // The semaphore is never closed, so this fails only if it were.
            permit = Arc::clone(slots).acquire_owned() => permit.ok(),
        }
    }
}

async fn run<F>(
    listener: TcpListener,
    settings: AcceptSettings,
    slots: Slots,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(Accepted) + Send + Sync + 'static,
{
    let serve = Arc::new(serve);
    let mut backoff = BACKOFF_START;
    metrics::counter!("keygate_tls_handshake_failures_total", "listener" => settings.name)
        .increment(0);
    loop {
        // Own slots are taken before `accept`, shared ones after (see the module's notes).
        let mut taken = None;
        if let Slots::Own(_) = slots {
            match slots.take(&shutdown).await {
                Some(permit) => taken = Some(permit),
                None => break,
            }
        }
        let (stream, remote) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = BACKOFF_START;
                    accepted
                }
                Err(error) if lacks_resources(&error) => {
                    tracing::warn!(listener = settings.name, %error, pause = ?backoff, "accept failed; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
                Err(error) => {
                    tracing::debug!(listener = settings.name, %error, "accept failed for one connection");
                    continue;
                }
            },
        };
        let permit = match taken {
            Some(permit) => permit,
            None => match slots.take(&shutdown).await {
                Some(permit) => permit,
                None => break,
            },
        };
        // Deadlines run from here: a connection that waited for a slot has not been served.
        let at = tokio::time::Instant::now();
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        match &tls {
            None => serve(Accepted {
                stream: ServerStream::Plain(stream),
                remote,
                at,
                permit,
            }),
            Some(tls) => {
                let handshake = tls.acceptor().accept(stream);
                tokio::spawn(handshake_then_serve(
                    handshake,
                    settings.clone(),
                    remote,
                    at,
                    permit,
                    Arc::clone(&serve),
                ));
            }
        }
    }
}

/// An `Accepted` is itself the connection, so a server that takes ownership of the stream
/// (tonic) holds the connection's slot for exactly as long as it keeps the stream.
impl tokio::io::AsyncRead for Accepted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Accepted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = crate::server::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        crate::server::ConnectInfo {
            remote: Some(self.remote),
            peer_certificates: self.stream.peer_certificates(),
        }
    }
}

async fn handshake_then_serve<F>(
    handshake: impl Future<
        Output = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    >,
    settings: AcceptSettings,
    remote: SocketAddr,
    at: tokio::time::Instant,
    permit: OwnedSemaphorePermit,
    serve: Arc<F>,
) where
    F: Fn(Accepted) + Send + Sync + 'static,
{
    let failure = match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => {
            serve(Accepted {
                stream: ServerStream::Tls(Box::new(stream)),
                remote,
                at,
                permit,
            });
            return;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no handshake within {:?}", settings.handshake_timeout),
    };
    metrics::counter!("keygate_tls_handshake_failures_total", "listener" => settings.name)
        .increment(1);
    tracing::debug!(listener = settings.name, %remote, reason = %failure, "TLS handshake failed");
}

/// Whether an accept error means the process or system is short of descriptors or memory,
/// which retrying at once cannot fix.
fn lacks_resources(error: &std::io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Shows that `accepted` is `client`'s connection, being served: a byte the client sends
    /// arrives. Later clients were accepted (or not) by the time it does.
    async fn served(client: &mut tokio::net::TcpStream, accepted: &mut Accepted) {
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        let ServerStream::Plain(stream) = &mut accepted.stream else {
            panic!("plain listener")
        };
        stream.read_exact(&mut byte).await.unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_until_a_slot_frees() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let settings = AcceptSettings {
            name: "test",
            max_connections: 1,
            handshake_timeout: Duration::from_secs(5),
        };
        let server = tokio::spawn(accept_loop(
            listener,
            settings,
            None,
            shutdown.clone(),
            move |accepted| {
                let _ = tx.send(accepted);
            },
        ));
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut accepted = rx.recv().await.unwrap();
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The second waits in the backlog while the first holds the only slot.
        served(&mut first, &mut accepted).await;
        assert!(rx.try_recv().is_err());
        drop(accepted);
        assert!(
            rx.recv().await.is_some(),
            "the freed slot goes to the waiting client"
        );
        shutdown.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn listeners_sharing_slots_serve_whichever_gets_a_connection() {
        let shutdown = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(1));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut addrs = Vec::new();
        let mut loops = Vec::new();
        for name in ["a", "b"] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let settings = AcceptSettings {
                name,
                max_connections: 1,
                handshake_timeout: Duration::from_secs(5),
            };
            let tx = tx.clone();
            loops.push(tokio::spawn(accept_loop_sharing(
                listener,
                settings,
                Arc::clone(&slots),
                None,
                shutdown.clone(),
                move |accepted| {
                    let _ = tx.send((name, accepted));
                },
            )));
        }
        // Both loops are idle; neither holds the one slot, so B serves its client.
        let mut first = tokio::net::TcpStream::connect(addrs[1]).await.unwrap();
        let (name, mut accepted) = rx.recv().await.unwrap();
        assert_eq!(name, "b");
        // A client of A now waits: the slot is B's connection's.
        let _second = tokio::net::TcpStream::connect(addrs[0]).await.unwrap();
        served(&mut first, &mut accepted).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(slots.available_permits(), 0);
        drop(accepted);
        let (name, _accepted) = rx.recv().await.unwrap();
        assert_eq!(name, "a", "the freed slot goes to the client waiting on A");
        shutdown.cancel();
        for task in loops {
            task.await.unwrap();
        }
    }

    #[test]
    fn only_resource_errors_back_off() {
        for code in [24, 23, 105, 12] {
            assert!(lacks_resources(&std::io::Error::from_raw_os_error(code)));
        }
        // ECONNABORTED concerns one connection.
        assert!(!lacks_resources(&std::io::Error::from_raw_os_error(103)));
    }
}
