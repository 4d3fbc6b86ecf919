//! The gateway and the control plane under hostile traffic (DESIGN.md, "Hostile traffic"),
//! over real sockets on loopback: connections that say nothing or too little, HTTP/2 floods,
//! upstreams that stall, and more concurrent requests than an upstream may have connections.
//! Every case ends with a normal request still served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_proxy::ProxyConfig;
use support::{Cluster, DEADLINE, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Short deadlines, so the cases finish quickly; the defaults are the contract's.
fn hardened(mut config: ProxyConfig) -> ProxyConfig {
    config.header_read_timeout = Duration::from_secs(1);
    config.idle_timeout = Duration::from_secs(1);
    config.upstream_timeout = Duration::from_secs(2);
    config.upstream_body_timeout = Duration::from_secs(1);
    config.max_connections = 3000;
    config
}

/// Reads until the peer closes (or resets) the connection; false if it is still open at the
/// deadline.
async fn closed_by_peer(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

async fn a_normal_request_is_served(cluster: &Cluster, addr: SocketAddr) {
    let key = cluster.create_key("after-the-attack").await;
    cluster.wait_applied(key.revision).await;
    support::expect_verdict(&format!("http://{addr}/ok"), &key.key, 200, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_connections_are_closed_by_their_deadlines() {
    let mut cluster = Cluster::start(0).await;
    let config = hardened(cluster.gateway_config(0));
    let addr = cluster.add_gateway_with(config).await.addr;

    // 2,000 connections that send nothing; one that sends `PRI` and stops in protocol
    // detection; one with the HTTP/2 preface and then silence; one slowloris HTTP/1 head; one
    // that sends a request, reads the answer and then idles.
    let mut connections = Vec::new();
    for _ in 0..2000 {
        connections.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut pri = TcpStream::connect(addr).await.unwrap();
    pri.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut preface = TcpStream::connect(addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut slowloris = TcpStream::connect(addr).await.unwrap();
    slowloris
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /public/x HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    connections.extend([pri, preface, slowloris, idle]);

    let deadline = Instant::now() + DEADLINE;
    for (index, connection) in connections.iter_mut().enumerate() {
        assert!(
            closed_by_peer(connection, deadline).await,
            "connection {index} is still open"
        );
    }
    a_normal_request_is_served(&cluster, addr).await;
}

/// Sends `head_and_partial_body` (a request announcing more body than it sends) to a gateway
/// with a 1 s `request_body_timeout`, then waits for the answer and the close; returns the
/// answer, after checking that a normal request is still served.
async fn answer_to_a_body_that_stops(head_and_partial_body: &[u8]) -> String {
    let mut cluster = Cluster::start(0).await;
    let mut config = hardened(cluster.gateway_config(0));
    config.request_body_timeout = Duration::from_secs(1);
    let addr = cluster.add_gateway_with(config).await.addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head_and_partial_body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    a_normal_request_is_served(&cluster, addr).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_request_whose_body_never_comes_is_answered() {
    let answer = answer_to_a_body_that_stops(
        b"POST /_keygate/v1/verify HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n{\"key\":",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("BODY_TIMEOUT"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_body_that_stops_coming_is_abandoned() {
    let answer = answer_to_a_body_that_stops(
        b"POST /public/upload HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\nten bytes.",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// An upstream that accepts connections and, per `behaviour`, never answers or stalls after
/// part of a body.
async fn misbehaving_upstream(stall_mid_body: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                if stall_mid_body {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                        .await;
                }
                // Then nothing, until the gateway gives up and closes.
                let _ = stream.read(&mut buffer).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_is_a_504_and_one_that_stalls_is_cut_off() {
    let mut cluster = Cluster::start(0).await;
    let silent = misbehaving_upstream(false).await;
    let stalling = misbehaving_upstream(true).await;
    let mut config = hardened(cluster.gateway_config(0));
    config.routes.push(keygate_proxy::RouteConfig {
        path_prefix: "/silent/".into(),
        upstream: format!("http://{silent}"),
        auth: keygate_proxy::AuthMode::None,
        ..Default::default()
    });
    config.routes.push(keygate_proxy::RouteConfig {
        path_prefix: "/stalling/".into(),
        upstream: format!("http://{stalling}"),
        auth: keygate_proxy::AuthMode::None,
        ..Default::default()
    });
    let addr = cluster.add_gateway_with(config).await.addr;

    let started = Instant::now();
    let reply = support::send("GET", &format!("http://{addr}/silent/x"), &[], b"").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.code(), "UPSTREAM_TIMEOUT");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before upstream_timeout"
    );

    // The head arrives, the body stalls: the client's connection is closed once the body has
    // been idle for upstream_body_timeout, instead of hanging.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /stalling/x HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the stalled response was never cut off");
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(
        received.ends_with("partial"),
        "the body stops where the upstream stalled: {received}"
    );
    a_normal_request_is_served(&cluster, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_connection_cap_holds_under_5000_concurrent_requests() {
    // An upstream that takes a few milliseconds per answer and counts its open connections.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (open, most) = (Arc::clone(&open), Arc::clone(&most));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let open = Arc::clone(&open);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |_: http::Request<hyper::body::Incoming>| async {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from("ok")),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    let mut cluster = Cluster::start(0).await;
    let mut config = hardened(cluster.gateway_config(0));
    config.routes[0].upstream = format!("http://{upstream}");
    config.routes[0].auth = keygate_proxy::AuthMode::None;
    config.max_upstream_connections = 16;
    config.upstream_queue_timeout = Duration::from_secs(60);
    config.upstream_timeout = Duration::from_secs(120);
    config.idle_timeout = Duration::from_secs(60);
    let addr = cluster.add_gateway_with(config).await.addr;

    // 5,000 requests at once over 20 HTTP/2 connections of 250 streams each.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        for _ in 0..250 {
            let mut sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                let request = http::Request::get(format!("http://{addr}/x"))
                    .body(Empty::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                status
            }));
        }
    }
    let mut ok = 0;
    for task in tasks {
        if tokio::time::timeout(DEADLINE * 4, task)
            .await
            .unwrap()
            .unwrap()
            == 200
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 5000);
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= 16,
        "{most} upstream connections were open at once; the cap is 16"
    );
    assert!(most >= 2, "the requests did run concurrently ({most})");
    a_normal_request_is_served_on_the_public_route(addr).await;
}

async fn a_normal_request_is_served_on_the_public_route(addr: SocketAddr) {
    let reply = support::send("GET", &format!("http://{addr}/public/x"), &[], b"").await;
    assert_eq!(reply.status, 200);
}

/// An HTTP/2 frame: 9-byte header, then `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap();
    let mut bytes = length.to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// One HPACK literal header field (without indexing, new name).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut bytes = vec![0u8, u8::try_from(name.len()).unwrap()];
    bytes.extend(name.as_bytes());
    bytes.push(u8::try_from(value.len()).unwrap());
    bytes.extend(value.as_bytes());
    bytes
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sends `frames` after the preface and an empty SETTINGS, while reading; true when the server
/// closes the connection (GOAWAY, then EOF or reset) before `frames` runs out.
async fn server_hangs_up(
    addr: SocketAddr,
    frames: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> bool {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(PREFACE).await;
        let _ = writer.write_all(&frame(0x4, 0, 0, &[])).await;
        for frame in frames {
            if writer.write_all(&frame).await.is_err() {
                return false;
            }
        }
        true
    });
    let mut buffer = vec![0u8; 65536];
    let closed = loop {
        match tokio::time::timeout(DEADLINE, reader.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
    };
    let wrote_everything = writing.await.unwrap();
    closed && !wrote_everything
}

/// Requests opened and reset at once, many times: the rapid-reset attack.
fn rapid_reset(count: u32) -> impl Iterator<Item = Vec<u8>> + Send {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/keygate.v1.Sync/LookupKey"),
        (":authority", "x"),
    ] {
        block.extend(literal(name, value));
    }
    (0..count).flat_map(move |i| {
        let stream = 2 * i + 1;
        // HEADERS (END_HEADERS), then RST_STREAM(CANCEL).
        [
            frame(0x1, 0x4, stream, &block),
            frame(0x3, 0, stream, &8u32.to_be_bytes()),
        ]
    })
}

/// One header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames.
fn continuation_flood(frames: u32) -> impl Iterator<Item = Vec<u8>> + Send {
    let chunk = literal("x-flood", &"a".repeat(200));
    std::iter::once(frame(0x1, 0, 1, &literal(":method", "GET")))
        .chain((0..frames).map(move |_| frame(0x9, 0, 1, &chunk)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_are_cut_off_at_the_gateway_and_the_control_plane() {
    let mut cluster = Cluster::start(0).await;
    let config = hardened(cluster.gateway_config(0));
    let addr = cluster.add_gateway_with(config).await.addr;
    for (name, target) in [("gateway", addr), ("control plane gRPC", cluster.grpc_addr)] {
        // 100,000 frames would take seconds to send; the server hangs up long before.
        assert!(
            server_hangs_up(target, rapid_reset(50_000)).await,
            "{name}: a rapid-reset flood is not cut off"
        );
        assert!(
            server_hangs_up(target, continuation_flood(50_000)).await,
            "{name}: a CONTINUATION flood is not cut off"
        );
    }
    a_normal_request_is_served(&cluster, addr).await;
    eventually("the control plane still serves its gateway", || {
        let status = cluster.gateways[0].status.clone();
        async move { status.connected() && status.is_ready() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_to_the_control_plane_are_closed() {
    let cluster = Cluster::start(1).await;
    let mut connections = Vec::new();
    for _ in 0..200 {
        connections.push(TcpStream::connect(cluster.http_addr).await.unwrap());
    }
    let mut slowloris = TcpStream::connect(cluster.http_addr).await.unwrap();
    slowloris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: cp\r\nX-Slow: ")
        .await
        .unwrap();
    connections.push(slowloris);
    // The control plane's HTTP header deadline is 10 s.
    let deadline = Instant::now() + DEADLINE;
    for (index, connection) in connections.iter_mut().enumerate() {
        assert!(
            closed_by_peer(connection, deadline).await,
            "control-plane connection {index} is still open"
        );
    }
    let reply = support::send(
        "GET",
        &format!("http://{}/healthz", cluster.http_addr),
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
}

/// An HTTP/1.1 upstream that records the path of every request it parses.
async fn recording_upstream() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        record.lock().unwrap().push(request.uri().path().to_owned());
                        async move {
                            let _ = request.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from("ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Sends `bytes` on a new connection and returns what came back until the gateway closed the
/// connection or went quiet.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    // Reading stops at close, or once nothing more comes for a while (keep-alive).
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await
    {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_header_floods_are_refused() {
    let (upstream, seen) = recording_upstream().await;
    let mut cluster = Cluster::start(0).await;
    let mut config = hardened(cluster.gateway_config(0));
    config.idle_timeout = Duration::from_secs(30);
    for route in &mut config.routes {
        route.upstream = format!("http://{upstream}");
    }
    let addr = cluster.add_gateway_with(config).await.addr;
    // `/public/` needs no credential; `/` (and so `/secret`) needs a key. A smuggled
    // `GET /secret` that reached the upstream unverified would be recorded there.
    let smuggled = "GET /secret HTTP/1.1\r\nHost: x\r\n\r\n";
    let malformed: [(&str, String); 4] = [
        (
            "two different Content-Lengths",
            format!(
                "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "Transfer-Encoding with obs-fold",
            format!(
                "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "chunk-size overflow",
            format!(
                "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF1\r\n{smuggled}\r\n0\r\n\r\n"
            ),
        ),
        (
            "a bare LF inside a header value",
            format!("GET /public/a HTTP/1.1\r\nHost: x\r\nX-Note: a\nb\r\n\r\n{smuggled}"),
        ),
    ];
    for (case, request) in &malformed {
        let answer = exchange(addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{case}: {answer}");
    }
    // Both framings at once: Transfer-Encoding wins and the connection closes after the
    // response (RFC 9112 §6.1), so the bytes after the empty chunked body are never a request.
    let answer = exchange(
        addr,
        format!(
            "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one answer only: {answer}"
    );
    // A bare-LF request line is parsed as one request (never split into two).
    let answer = exchange(addr, b"GET /public/lf HTTP/1.1\nHost: x\n\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // A header flood: larger than max_header_bytes (64 KiB) → 431.
    let flood = format!(
        "GET /public/a HTTP/1.1\r\nHost: x\r\nX-Flood: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let answer = exchange(addr, flood.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    let paths = seen.lock().unwrap().clone();
    assert!(
        !paths.iter().any(|path| path == "/secret"),
        "smuggled through: {paths:?}"
    );
    a_normal_request_is_served(&cluster, addr).await;
    assert!(seen.lock().unwrap().iter().any(|path| path == "/ok"));
}
