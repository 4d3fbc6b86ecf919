//! A userspace WAN relay for the link between gateways and the control plane: a TCP relay that
//! makes loopback behave like an internet path, for the tests (`tests/wan.rs`) and the region
//! simulator (`keygate-bench wan`). The kernel's `netem` qdisc is not available everywhere these
//! run, and a relay needs no privileges.
//!
//! Per direction ([`Direction::Up`]: client → target, i.e. gateway → control plane;
//! [`Direction::Down`]: back) a [`Link`] sets a one-way delay with jitter, a bandwidth cap and a
//! blackhole; [`WanRelay::stall`] holds a direction's bytes for a while (a loss burst: TCP
//! delivers what was lost once the retransmission gets through, late and in order); and
//! [`WanRelay::cut`] closes every connection and refuses new ones.
//!
//! What makes it a WAN and not a slow proxy:
//! - every byte is delayed from the moment it was read, whatever else is in flight, so bytes
//!   read 1 ms apart arrive 1 ms apart (a relay that sleeps before each write would add the
//!   delays of everything queued before a byte to its own);
//! - order is kept: jitter never lets a later byte overtake an earlier one, as on one TCP
//!   connection;
//! - both directions are delayed alike, so HTTP/2 WINDOW_UPDATEs, pings and acks pay the path
//!   like data, and flow control shows its real cost over a long round trip;
//! - a blackhole stops reading as well as writing, sending neither RST nor FIN, like a dead
//!   route; what was in flight is delivered when the link heals, as TCP would retransmit it.
//!
//! Memory is bounded: at most [`QUEUE_READS`] reads of at most [`READ_BYTES`] wait per direction
//! of a connection; beyond that the relay stops reading and the sender's TCP window fills.
//!
//! ```no_run
//! # async fn example(control_plane: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use keygate_wan::{Link, WanRelay};
//!
//! let relay = WanRelay::start(control_plane, Link::delayed(Duration::from_millis(50))).await?;
//! // Gateways use relay.url() as their --control-plane.
//! relay.blackhole(); // partition
//! relay.heal();
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest single read from a socket.
pub const READ_BYTES: usize = 64 * 1024;
/// Reads waiting for delivery per direction of one connection, at most.
pub const QUEUE_READS: usize = 1024;

/// One direction of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → target (gateway → control plane).
    Up,
    /// Target → client (control plane → gateway).
    Down,
}

/// What one direction of the path does to bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// One-way delay added to every byte.
    pub delay: Duration,
    /// Each read is delayed by `delay` ± up to this much (uniformly), never below zero and
    /// never ahead of the bytes before it.
    pub jitter: Duration,
    /// Bytes per second at most; `None`: as fast as loopback.
    pub bandwidth: Option<u64>,
    /// Nothing is read or delivered in this direction while set.
    pub blackhole: bool,
}

impl Link {
    /// A link with one-way `delay` and nothing else.
    pub fn delayed(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

/// The whole path right now.
#[derive(Debug, Clone, Copy, Default)]
struct Conditions {
    up: Link,
    down: Link,
    /// Bytes of a direction are held until then (a loss burst).
    up_stalled_until: Option<Instant>,
    down_stalled_until: Option<Instant>,
    /// Every connection is closed and new ones are closed at once.
    cut: bool,
}

impl Conditions {
    fn link(&self, direction: Direction) -> Link {
        match direction {
            Direction::Up => self.up,
            Direction::Down => self.down,
        }
    }

    fn link_mut(&mut self, direction: Direction) -> &mut Link {
        match direction {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }

    fn stalled_until(&self, direction: Direction) -> Option<Instant> {
        match direction {
            Direction::Up => self.up_stalled_until,
            Direction::Down => self.down_stalled_until,
        }
    }
}

/// A relay listening on one address and forwarding every connection to a target.
#[derive(Debug)]
pub struct WanRelay {
    addr: SocketAddr,
    conditions: watch::Sender<Conditions>,
    connections: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl WanRelay {
    /// Relays 127.0.0.1:(any free port) → `target`, with `link` in both directions.
    pub async fn start(target: SocketAddr, link: Link) -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target, link, link).await
    }

    /// Relays `listen` → `target`, with `up` and `down` as the two directions.
    pub async fn start_on(
        listen: SocketAddr,
        target: SocketAddr,
        up: Link,
        down: Link,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (conditions, _) = watch::channel(Conditions {
            up,
            down,
            ..Conditions::default()
        });
        let connections = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            conditions.clone(),
            Arc::clone(&connections),
        ));
        Ok(Self {
            addr,
            conditions,
            connections,
            accept,
        })
    }

    /// The address clients should use instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and [`WanRelay::addr`]: what a gateway takes as `--control-plane`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A handle to change the conditions from elsewhere.
    pub fn control(&self) -> Control {
        Control {
            conditions: self.conditions.clone(),
        }
    }

    /// What `direction` does now.
    pub fn link(&self, direction: Direction) -> Link {
        self.control().link(direction)
    }

    /// Sets what `direction` does from now on (bytes already read keep the delay they got).
    pub fn set(&self, direction: Direction, link: Link) {
        self.control().set(direction, link);
    }

    /// Holds every byte of `direction`, in flight or still to come, for `duration` from now.
    pub fn stall(&self, direction: Direction, duration: Duration) {
        self.control().stall(direction, duration);
    }

    /// Partitions the path: both directions blackholed.
    pub fn blackhole(&self) {
        self.control().blackhole();
    }

    /// Closes every connection now (the client sees them end) and every new one at once.
    pub fn cut(&self) {
        self.control().cut();
    }

    /// Ends a partition, a cut and any stall; delays, jitter and bandwidth stay.
    pub fn heal(&self) {
        self.control().heal();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A handle that changes a relay's conditions, for a task that outlives a borrow of the
/// relay (e.g. one that makes loss bursts).
#[derive(Debug, Clone)]
pub struct Control {
    conditions: watch::Sender<Conditions>,
}

impl Control {
    /// What `direction` does now.
    pub fn link(&self, direction: Direction) -> Link {
        self.conditions.borrow().link(direction)
    }

    /// Sets what `direction` does from now on (bytes already read keep the delay they got).
    pub fn set(&self, direction: Direction, link: Link) {
        self.conditions
            .send_modify(|conditions| *conditions.link_mut(direction) = link);
    }

    /// Holds every byte of `direction`, in flight or still to come, for `duration` from now.
    pub fn stall(&self, direction: Direction, duration: Duration) {
        let until = Instant::now() + duration;
        self.conditions.send_modify(|conditions| {
            let stalled = match direction {
                Direction::Up => &mut conditions.up_stalled_until,
                Direction::Down => &mut conditions.down_stalled_until,
            };
            *stalled = Some(stalled.map_or(until, |before| before.max(until)));
        });
    }

    /// Partitions the path: both directions blackholed.
    pub fn blackhole(&self) {
        self.conditions.send_modify(|conditions| {
            conditions.up.blackhole = true;
            conditions.down.blackhole = true;
        });
    }

    /// Closes every connection now (the client sees them end) and every new one at once.
    pub fn cut(&self) {
        self.conditions
            .send_modify(|conditions| conditions.cut = true);
    }

    /// Ends a partition, a cut and any stall; delays, jitter and bandwidth stay.
    pub fn heal(&self) {
        self.conditions.send_modify(|conditions| {
            conditions.up.blackhole = false;
            conditions.down.blackhole = false;
            conditions.up_stalled_until = None;
            conditions.down_stalled_until = None;
            conditions.cut = false;
        });
    }
}

impl Drop for WanRelay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    conditions: watch::Sender<Conditions>,
    connections: Arc<AtomicU64>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors, most likely: let some close before accepting again.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        connections.fetch_add(1, Ordering::SeqCst);
        if conditions.borrow().cut {
            drop(client);
            continue;
        }
        tokio::spawn(relay(client, target, conditions.subscribe()));
    }
}

/// One connection, until both directions have ended, either fails, or the path is cut.
async fn relay(client: TcpStream, target: SocketAddr, mut conditions: watch::Receiver<Conditions>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    // The relay adds the path's delay and nothing else: no coalescing of small writes.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, Direction::Up, conditions.clone());
    let down = pump(
        server_read,
        client_write,
        Direction::Down,
        conditions.clone(),
    );
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            clean = &mut up, if !up_done => {
                if !clean {
                    return;
                }
                up_done = true;
            }
            clean = &mut down, if !down_done => {
                if !clean {
                    return;
                }
                down_done = true;
            }
            _ = conditions.wait_for(|conditions| conditions.cut) => return,
        }
    }
}

/// Bytes read at one instant, due for delivery at `due`; `None`: the sender's EOF.
struct Chunk {
    due: Instant,
    bytes: Option<Vec<u8>>,
}

/// Copies one direction through the path; returns whether it ended cleanly (EOF delivered).
async fn pump(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    direction: Direction,
    conditions: watch::Receiver<Conditions>,
) -> bool {
    let (queue, delivery) = mpsc::channel(QUEUE_READS);
    let read = read_side(from, queue, direction, conditions.clone());
    let write = write_side(delivery, to, direction, conditions);
    let ((), clean) = tokio::join!(read, write);
    clean
}

/// Reads whatever arrives, stamps it with its delivery time and queues it.
async fn read_side(
    mut from: OwnedReadHalf,
    queue: mpsc::Sender<Chunk>,
    direction: Direction,
    mut conditions: watch::Receiver<Conditions>,
) {
    let mut buffer = vec![0u8; READ_BYTES];
    let mut last_due = Instant::now();
    loop {
        // A blackholed direction reads nothing: the sender's window fills, as on a dead route.
        if conditions
            .wait_for(|conditions| !conditions.link(direction).blackhole || conditions.cut)
            .await
            .is_err()
        {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = conditions.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let link = conditions.borrow().link(direction);
        let due = (Instant::now() + one_way(link)).max(last_due);
        last_due = due;
        let bytes = match read {
            // An error drops the queue without an EOF: the writer ends the connection.
            Err(_) => return,
            Ok(0) => None,
            Ok(n) => Some(buffer[..n].to_vec()),
        };
        let eof = bytes.is_none();
        if queue.send(Chunk { due, bytes }).await.is_err() || eof {
            return;
        }
    }
}

/// `link`'s delay for one read: `delay` ± a uniform share of `jitter`, at least zero.
fn one_way(link: Link) -> Duration {
    if link.jitter.is_zero() {
        return link.delay;
    }
    let jitter = link.jitter.as_secs_f64();
    let offset = rand::rng().random_range(-jitter..=jitter);
    Duration::from_secs_f64((link.delay.as_secs_f64() + offset).max(0.0))
}

/// Waits until `at`, to well under a millisecond: tokio's timer rounds a deadline up to the
/// next millisecond, which would add 0.5 ms on average to every delay; the last millisecond is
/// spent yielding instead.
async fn until(at: Instant) {
    let early = at.checked_sub(Duration::from_millis(1));
    if let Some(early) = early.filter(|early| *early > Instant::now()) {
        tokio::time::sleep_until(early).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// Delivers queued chunks when they are due, the direction is open and not stalled, and the
/// bandwidth allows; returns whether the sender's EOF was delivered.
async fn write_side(
    mut delivery: mpsc::Receiver<Chunk>,
    mut to: OwnedWriteHalf,
    direction: Direction,
    mut conditions: watch::Receiver<Conditions>,
) -> bool {
    // With a bandwidth cap: when the path has finished sending the previous chunk.
    let mut free_at = Instant::now();
    while let Some(chunk) = delivery.recv().await {
        let link = loop {
            let now = *conditions.borrow_and_update();
            let link = now.link(direction);
            if now.cut {
                return false;
            }
            let mut at = chunk.due;
            if let Some(until) = now.stalled_until(direction) {
                at = at.max(until);
            }
            if link.bandwidth.is_some() {
                at = at.max(free_at);
            }
            if !link.blackhole && at <= Instant::now() {
                break link;
            }
            let changed = if link.blackhole {
                conditions.changed().await
            } else {
                tokio::select! {
                    () = until(at) => Ok(()),
                    changed = conditions.changed() => changed,
                }
            };
            if changed.is_err() {
                return false;
            }
        };
        let Some(bytes) = chunk.bytes else {
            let _ = to.shutdown().await;
            return true;
        };
        if to.write_all(&bytes).await.is_err() {
            return false;
        }
        if let Some(bandwidth) = link.bandwidth.filter(|b| *b > 0) {
            let busy = Duration::from_secs_f64(bytes.len() as f64 / bandwidth as f64);
            free_at = free_at.max(Instant::now()) + busy;
        }
    }
    // The reader failed: no EOF came.
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A target that echoes every connection back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    const LONG: Duration = Duration::from_secs(15);

    async fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buffer = vec![0u8; n];
        tokio::time::timeout(LONG, stream.read_exact(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        buffer
    }

    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order_through_delay_and_jitter() {
        let link = Link {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(5),
            ..Link::default()
        };
        let relay = WanRelay::start(echo().await, link).await.unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = stream.split();
        let writer = async {
            // Many small writes, so jitter has many chances to reorder.
            for piece in sent.chunks(997) {
                write.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        };
        let mut received = vec![0u8; sent.len()];
        let reader = tokio::time::timeout(LONG, read.read_exact(&mut received));
        let ((), read) = tokio::join!(writer, reader);
        read.unwrap().unwrap();
        assert!(received == sent, "bytes changed or reordered on the way");
        drop(stream);
        assert_eq!(relay.connections(), 1);
    }

    #[tokio::test]
    async fn every_direction_pays_its_delay() {
        let (up, down) = (Duration::from_millis(30), Duration::from_millis(70));
        let relay = WanRelay::start_on(
            "127.0.0.1:0".parse().unwrap(),
            echo().await,
            Link::delayed(up),
            Link::delayed(down),
        )
        .await
        .unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        for _ in 0..3 {
            let sent = Instant::now();
            stream.write_all(b"ping").await.unwrap();
            assert_eq!(read_exact(&mut stream, 4).await, b"ping");
            assert!(sent.elapsed() >= up + down, "{:?}", sent.elapsed());
        }
    }

    #[tokio::test]
    async fn delays_do_not_add_up_behind_each_other() {
        // Two writes 20 ms apart over a 100 ms path: the second is delayed 100 ms from when it
        // was sent, not from when the first was delivered. Lower bounds only are asserted; the
        // upper one is what the region simulator measures.
        let delay = Duration::from_millis(100);
        let relay = WanRelay::start(echo().await, Link::delayed(delay))
            .await
            .unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let first = Instant::now();
        stream.write_all(b"a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = Instant::now();
        stream.write_all(b"b").await.unwrap();
        assert_eq!(read_exact(&mut stream, 1).await, b"a");
        assert!(first.elapsed() >= delay * 2);
        assert_eq!(read_exact(&mut stream, 1).await, b"b");
        assert!(second.elapsed() >= delay * 2);
    }

    #[tokio::test]
    async fn a_bandwidth_cap_paces_the_bytes() {
        let link = Link {
            bandwidth: Some(1_000_000),
            ..Link::default()
        };
        let relay = WanRelay::start(echo().await, link).await.unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let started = Instant::now();
        let payload = vec![7u8; 400_000];
        let (mut read, mut write) = stream.split();
        let writer = write.write_all(&payload);
        let mut received = vec![0u8; payload.len()];
        let reader = tokio::time::timeout(LONG, read.read_exact(&mut received));
        let (written, read) = tokio::join!(writer, reader);
        written.unwrap();
        read.unwrap().unwrap();
        assert_eq!(received, payload);
        // 400 kB each way at 1 MB/s, all but the last chunk paced in each direction.
        let floor = Duration::from_millis(400 - 2 * 65);
        assert!(started.elapsed() >= floor, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_stall_holds_bytes_then_delivers_them_in_order() {
        let relay = WanRelay::start(echo().await, Link::default())
            .await
            .unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        stream.write_all(b"before").await.unwrap();
        assert_eq!(read_exact(&mut stream, 6).await, b"before");
        let stall = Duration::from_millis(300);
        let stalled = Instant::now();
        relay.stall(Direction::Down, stall);
        stream.write_all(b"during").await.unwrap();
        assert_eq!(read_exact(&mut stream, 6).await, b"during");
        assert!(stalled.elapsed() >= stall);
    }

    #[tokio::test]
    async fn a_blackhole_carries_nothing_until_it_heals() {
        let relay = WanRelay::start(echo().await, Link::default())
            .await
            .unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        relay.blackhole();
        stream.write_all(b"lost?").await.unwrap();
        let mut buffer = [0u8; 5];
        let silent =
            tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buffer)).await;
        assert!(silent.is_err(), "a blackholed path delivered bytes");
        // New connections are accepted and held, too: no RST, no FIN.
        let mut other = TcpStream::connect(relay.addr()).await.unwrap();
        other.write_all(b"held").await.unwrap();
        relay.heal();
        assert_eq!(read_exact(&mut stream, 5).await, b"lost?");
        assert_eq!(read_exact(&mut other, 4).await, b"held");
    }

    #[tokio::test]
    async fn a_cut_closes_connections_and_refuses_new_ones_until_healed() {
        let relay = WanRelay::start(echo().await, Link::default())
            .await
            .unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        relay.cut();
        let mut buffer = [0u8; 1];
        let ended = tokio::time::timeout(LONG, stream.read(&mut buffer))
            .await
            .unwrap();
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
        let mut refused = TcpStream::connect(relay.addr()).await.unwrap();
        let ended = tokio::time::timeout(LONG, refused.read(&mut buffer))
            .await
            .unwrap();
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
        relay.heal();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        assert_eq!(read_exact(&mut stream, 1).await, b"x");
    }

    #[tokio::test]
    async fn an_eof_is_relayed_after_the_bytes_before_it() {
        let relay = WanRelay::start(echo().await, Link::delayed(Duration::from_millis(20)))
            .await
            .unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        stream.write_all(b"last words").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(LONG, stream.read_to_end(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, b"last words");
    }
}
