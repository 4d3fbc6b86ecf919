//! A TCP fault proxy for the link between gateways and the control plane: it forwards bytes
//! both ways until a test tells it to cut the link (close every connection and refuse new
//! ones), blackhole it (accept and hold connections but forward nothing, sending neither RST
//! nor FIN, like a dead route), delay it, or pass only so many bytes towards the gateway on each
//! new connection before cutting it (to break a snapshot in the middle).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the link does right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow both ways.
    Pass,
    /// Every connection is closed and new ones are closed at once.
    Cut,
    /// Connections stay open but carry nothing, in either direction.
    Blackhole,
    /// Bytes flow, each read chunk held back this long.
    Delay(Duration),
}

/// A proxy in front of one address.
pub struct FaultProxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    /// Bytes forwarded towards the client on each new connection before it is cut; 0: no limit.
    downstream_limit: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding 127.0.0.1:0 → `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (link, _) = watch::channel(Link::Pass);
        let downstream_limit = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            link.clone(),
            Arc::clone(&downstream_limit),
            Arc::clone(&connections),
        ));
        Self {
            addr,
            link,
            downstream_limit,
            connections,
            accept,
        }
    }

    /// The address gateways should use instead of the target's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// From now on, each new connection carries at most `bytes` towards the client and is then
    /// cut; 0 lifts the limit.
    pub fn limit_downstream(&self, bytes: u64) {
        self.downstream_limit.store(bytes, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.set(Link::Cut);
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    link: watch::Sender<Link>,
    downstream_limit: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let mode = link.subscribe();
        let limit = downstream_limit.load(Ordering::SeqCst);
        tokio::spawn(async move {
            let now = *mode.borrow();
            match now {
                // Closing at once: the client sees its connection refused or reset.
                Link::Cut => drop(client),
                // Accept and hold: the client hears nothing and sends into the void.
                Link::Blackhole => hold(client, mode).await,
                Link::Pass | Link::Delay(_) => {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(client_read, server_write, mode.clone(), 0);
                    let down = pump(server_read, client_write, mode, limit);
                    // Either direction ending (EOF, cut, limit) ends the connection.
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                }
            }
        });
    }
}

/// Keeps a connection open without reading it until the link is cut.
async fn hold(client: TcpStream, mut mode: watch::Receiver<Link>) {
    let _ = mode.wait_for(|link| *link == Link::Cut).await;
    drop(client);
}

/// Copies one direction while the link passes. `limit` > 0: cut after that many bytes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Link>,
    limit: u64,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut forwarded = 0u64;
    loop {
        let link = *mode.borrow_and_update();
        match link {
            Link::Cut => return,
            Link::Blackhole => {
                // Stop reading and writing, keep both sockets open, until cut.
                let _ = mode.wait_for(|link| *link == Link::Cut).await;
                return;
            }
            Link::Pass | Link::Delay(_) => {}
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let mut n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Link::Delay(delay) = link {
            tokio::time::sleep(delay).await;
        }
        if limit > 0 {
            let room = limit.saturating_sub(forwarded);
            n = n.min(usize::try_from(room).unwrap_or(usize::MAX));
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
        forwarded += n as u64;
        if limit > 0 && forwarded >= limit {
            return;
        }
    }
}
