//! The deadlines of a client's HTTP/1 connection after its first request: a kept-alive
//! connection may stay quiet for `idle_timeout`, longer than `header_read_timeout`; a head that
//! has started must end within `header_read_timeout` of its first byte.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Bounds waits for what must happen; never a figure the test asserts.
const DEADLINE: Duration = Duration::from_secs(20);

async fn gateway() -> (RunningGateway, Upstream) {
    let control_plane = ControlPlane::start().await;
    let upstream = Upstream::start().await;
    let mut config = config(&control_plane);
    config.header_read_timeout = HEAD_TIMEOUT;
    config.idle_timeout = Duration::from_secs(60);
    config.routes = vec![open_route(upstream.url())];
    (start_ready_gateway(config).await, upstream)
}

#[tokio::test]
async fn a_kept_alive_connection_may_stay_quiet_longer_than_the_head_deadline() {
    let (gateway, _upstream) = gateway().await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    assert_eq!(exchange(&mut stream, "/first").await, "http/1.1 200 ok");
    // Quiet for three head deadlines: the keep-alive bound is `idle_timeout`, not the head's.
    tokio::time::sleep(HEAD_TIMEOUT * 3).await;
    assert_eq!(exchange(&mut stream, "/second").await, "http/1.1 200 ok");
    gateway.stop().await;
}

#[tokio::test]
async fn a_head_that_stalls_on_a_kept_alive_connection_is_dropped() {
    let (gateway, _upstream) = gateway().await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    assert_eq!(exchange(&mut stream, "/first").await, "http/1.1 200 ok");
    // Half a head, then nothing: dropped, long before the 60 s keep-alive bound.
    stream
        .write_all(b"GET /second HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after {:?}", started.elapsed());
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // A new connection is served.
    let mut fresh = TcpStream::connect(gateway.addr).await.unwrap();
    assert_eq!(exchange(&mut fresh, "/third").await, "http/1.1 200 ok");
    gateway.stop().await;
}
