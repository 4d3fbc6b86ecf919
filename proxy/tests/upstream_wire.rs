//! The gateway's own HTTP/1.1 client against upstreams that answer with raw bytes: every way
//! a response body can be framed, interim responses, framing an upstream gets wrong, bodies cut
//! short, and keep-alive connections the upstream closes as a request arrives.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream does with one request.
enum Answer {
    /// Writes these bytes and keeps the connection.
    Bytes(&'static [u8]),
    /// Writes these bytes and closes the connection.
    ThenClose(&'static [u8]),
    /// Closes the connection without answering.
    Close,
}

/// An upstream whose answer to the `n`th request on its `c`th connection (both from 0) is
/// `script(c, n, path)`. Counts the connections it accepted.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: fn(usize, usize, &str) -> Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, connection, script));
            }
        });
        Self { addr, connections }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, connection: usize, script: fn(usize, usize, &str) -> Answer) {
    let mut buffer = Vec::new();
    for request in 0.. {
        // A head, then as many body bytes as it announces.
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffer.len() < end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        buffer.drain(..end + length);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        match script(connection, request, &path) {
            Answer::Bytes(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Answer::ThenClose(bytes) => {
                let _ = stream.write_all(bytes).await;
                return;
            }
            Answer::Close => return,
        }
    }
}

/// A gateway with one open route to `upstream`.
async fn gateway_to(upstream: &Scripted) -> RunningGateway {
    let control_plane = ControlPlane::start().await;
    let mut config = config(&control_plane);
    config.upstream_timeout = Duration::from_secs(30);
    // One serving thread: the tests count upstream connections, idle ones are kept per serving
    // thread, and the test's client may open a second connection to the gateway (hyper's pool
    // takes a connection back a moment after its response) that another thread would serve.
    config.workers = Some(1);
    config.routes = vec![open_route(upstream.url())];
    start_ready_gateway(config).await
}

/// The answer to `GET path`, body read whole; `Err` when the body broke off.
async fn fetch(
    client: &TestClient,
    gateway: &RunningGateway,
    path: &str,
) -> (u16, Result<Bytes, String>) {
    let request = Request::get(gateway.url(path))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|error| error.to_string());
    (status, body)
}

fn framings(_: usize, _: usize, path: &str) -> Answer {
    match path {
        "/length" => Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        "/chunked" => Answer::Bytes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
        ),
        "/interim" => Answer::Bytes(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ),
        "/empty" => Answer::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n"),
        "/until-close" => Answer::ThenClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        "/both" => Answer::ThenClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\n",
        ),
        "/two-lengths" => Answer::ThenClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        ),
        "/garbage" => Answer::ThenClose(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        "/upgrade" => Answer::ThenClose(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
        "/truncated" => Answer::ThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"),
        "/bad-chunk" => Answer::ThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        ),
        _ => Answer::Close,
    }
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_whole_and_keep_alive_is_kept_where_it_can_be() {
    let upstream = Scripted::start(framings).await;
    let gateway = gateway_to(&upstream).await;
    let client = client();

    for _ in 0..3 {
        assert_eq!(
            fetch(&client, &gateway, "/length").await,
            (200, Ok(Bytes::from("hello")))
        );
        assert_eq!(
            fetch(&client, &gateway, "/chunked").await,
            (200, Ok(Bytes::from("hello, world")))
        );
        assert_eq!(
            fetch(&client, &gateway, "/interim").await,
            (201, Ok(Bytes::from("ok")))
        );
        assert_eq!(
            fetch(&client, &gateway, "/empty").await,
            (204, Ok(Bytes::new()))
        );
    }
    assert_eq!(
        upstream.connections(),
        1,
        "length, chunked, interim and empty answers all keep the connection"
    );

    // A body that ends when the upstream closes: whole, and the next request takes a new
    // connection.
    assert_eq!(
        fetch(&client, &gateway, "/until-close").await,
        (200, Ok(Bytes::from("until the end")))
    );
    assert_eq!(
        fetch(&client, &gateway, "/length").await,
        (200, Ok(Bytes::from("hello")))
    );
    assert_eq!(upstream.connections(), 2);

    // Chunked wins over a length, and the connection is not reused after it.
    assert_eq!(
        fetch(&client, &gateway, "/both").await,
        (200, Ok(Bytes::from("abc")))
    );
    assert_eq!(
        fetch(&client, &gateway, "/length").await,
        (200, Ok(Bytes::from("hello")))
    );
    assert_eq!(upstream.connections(), 3);
    gateway.stop().await;
}

#[tokio::test]
async fn framing_an_upstream_gets_wrong_is_a_502_or_a_cut_off_body_never_a_guess() {
    let upstream = Scripted::start(framings).await;
    let gateway = gateway_to(&upstream).await;
    let client = client();

    for path in ["/two-lengths", "/garbage", "/upgrade"] {
        let reply = get_with(&client, &gateway.url(path), &[]).await;
        assert_eq!(reply.status, 502, "{path}");
        assert_eq!(
            reply.json()["error"]["code"],
            "UPSTREAM_UNAVAILABLE",
            "{path}"
        );
    }
    // Once the head is on its way, a body that breaks off can only be cut off: the client must
    // see that it did not get the whole body (the head may or may not have reached it).
    for path in ["/truncated", "/bad-chunk"] {
        let request = Request::get(gateway.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let cut_off = match client.request(request).await {
            Err(_) => true,
            Ok(response) => response.into_body().collect().await.is_err(),
        };
        assert!(cut_off, "{path}");
    }
    // And the gateway goes on serving.
    assert_eq!(
        fetch(&client, &gateway, "/length").await,
        (200, Ok(Bytes::from("hello")))
    );
    gateway.stop().await;
}

/// The first connection answers its first request, then closes as the next one arrives (an
/// upstream's keep-alive timeout firing just then); later connections answer everything.
fn closes_when_reused(connection: usize, request: usize, _: &str) -> Answer {
    match (connection, request) {
        (0, 0) | (1.., _) => Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        (0, _) => Answer::Close,
    }
}

#[tokio::test]
async fn a_reused_connection_closed_under_a_request_is_retried_only_when_that_is_safe() {
    // A GET (idempotent, no body) is sent again on a new connection: the client never knows.
    let upstream = Scripted::start(closes_when_reused).await;
    let gateway = gateway_to(&upstream).await;
    let client = client();
    assert_eq!(
        fetch(&client, &gateway, "/first").await,
        (200, Ok(Bytes::from("ok")))
    );
    assert_eq!(
        fetch(&client, &gateway, "/second").await,
        (200, Ok(Bytes::from("ok")))
    );
    assert_eq!(upstream.connections(), 2);
    gateway.stop().await;

    // A POST with a body may have been acted on: it is not sent twice.
    let upstream = Scripted::start(closes_when_reused).await;
    let gateway = gateway_to(&upstream).await;
    assert_eq!(
        fetch(&client, &gateway, "/first").await,
        (200, Ok(Bytes::from("ok")))
    );
    let post = Request::post(gateway.url("/pay"))
        .body(Full::new(Bytes::from("amount=1")))
        .unwrap();
    let reply = send(&client, post).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "UPSTREAM_UNAVAILABLE");
    assert_eq!(upstream.connections(), 1, "not sent again");
    gateway.stop().await;
}
