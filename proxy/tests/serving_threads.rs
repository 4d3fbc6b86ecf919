//! The main listener served thread-per-core: `workers` threads, each with its own listener on
//! the one port, sharing `max_connections`, and all stopped with the gateway.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bounds waits for what must happen; never a figure the test asserts.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long the test watches for what must not happen.
const OBSERVED: Duration = Duration::from_millis(500);

async fn gateway(workers: usize, max_connections: usize) -> (RunningGateway, Upstream) {
    let control_plane = ControlPlane::start().await;
    let upstream = Upstream::start().await;
    let mut config = config(&control_plane);
    config.workers = Some(workers);
    config.max_connections = max_connections;
    config.routes = vec![open_route(upstream.url())];
    (start_ready_gateway(config).await, upstream)
}

#[tokio::test]
async fn the_serving_threads_share_one_connection_cap() {
    // One slot for four threads. Had each thread a slot of its own, four clients would be
    // served at once; had an idle thread held the one slot, a client the kernel queued on
    // another thread's listener would never be served.
    let (gateway, upstream) = gateway(4, 1).await;
    // Each client sends a request, reports when its answer begins, and closes its connection
    // when told to.
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut closers = Vec::new();
    for client in 0..4 {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        let request = format!("GET /client-{client} HTTP/1.1\r\nHost: gateway\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        closers.push(Some(close));
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 1 {
                answered.send(client).unwrap();
            }
            let _ = closed.await;
        });
    }
    // Served one at a time, each once the one before has gone; in which order is the
    // kernel's and the threads' business.
    for turn in 0..4 {
        let client = tokio::time::timeout(DEADLINE, answers.recv())
            .await
            .expect("a waiting client is served")
            .unwrap();
        if turn == 0 {
            // A window to see a second client served while the first holds the slot (with
            // a slot per thread, the others' answers arrive within milliseconds).
            let second = tokio::time::timeout(OBSERVED, answers.recv()).await;
            assert!(second.is_err(), "two clients served at once with one slot");
        }
        closers[client].take().unwrap().send(()).unwrap();
    }
    assert_eq!(upstream.requests(), 4);
    gateway.stop().await;
}

#[tokio::test]
async fn every_serving_thread_answers_and_stops_with_the_gateway() {
    // One thread binds without `SO_REUSEPORT` and keeps slots of its own; three share both.
    for workers in [1, 3] {
        serve_many_then_stop(workers).await;
    }
}

async fn serve_many_then_stop(workers: usize) {
    let (gateway, _upstream) = gateway(workers, 10_000).await;
    let addr = gateway.addr;
    // Enough connections that the kernel's hash gives every thread some.
    let mut clients = Vec::new();
    for client in 0..24 {
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for request in 0..3 {
                let path = format!("/client-{client}/{request}");
                assert_eq!(exchange(&mut stream, &path).await, "http/1.1 200 ok");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    gateway.stop().await;
    // Every thread's listener is closed: nothing accepts on the port any more.
    let refused = TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a listener of {workers} is still open after stop"
    );
}
