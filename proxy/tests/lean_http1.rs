//! The main listener's own HTTP/1.1 loop (`lean.rs`), seen on the wire by a raw client:
//! pipelined requests answered in order, HEAD, `Connection: close`, the gateway's own refusals,
//! and the hand-over to hyper mid-connection (a request with a body, HTTP/1.0, a malformed
//! head) that loses no byte and keeps serving the connection.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use keygate_proxy::{AuthMode, RouteConfig};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bounds waits for what must happen; never a figure the test asserts.
const DEADLINE: Duration = Duration::from_secs(20);

/// One response as it came over the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Field names lowercased, in order.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Reads responses from one connection, keeping what arrives past each.
struct Reader {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Reader {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .expect("bytes or the end of the stream in time")
            .unwrap_or(0);
        self.buffer.extend_from_slice(&chunk[..read]);
        read > 0
    }

    /// The next response; `head_only` for the answer to HEAD. Framing is checked strictly: a
    /// body must be exactly as long as its `Content-Length`, or well-formed chunks.
    async fn answer(&mut self, head_only: bool) -> Answer {
        let end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            assert!(self.fill().await, "closed before a response head");
        };
        let head = String::from_utf8(self.buffer[..end - 4].to_vec()).unwrap();
        self.buffer.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        // hyper answers an HTTP/1.0 request in kind.
        assert!(
            status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "),
            "{status_line}"
        );
        let status = status_line[9..12].parse().unwrap();
        let fields: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let mut answer = Answer {
            status,
            fields,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return answer;
        }
        if answer.field("transfer-encoding") == Some("chunked") {
            assert!(answer.field("content-length").is_none(), "{answer:?}");
            loop {
                let line_end = loop {
                    if let Some(at) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(self.fill().await, "closed in a chunk size");
                };
                let size = std::str::from_utf8(&self.buffer[..line_end]).unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                while self.buffer.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "closed in a chunk");
                }
                let data = &self.buffer[line_end + 2..line_end + 2 + size];
                answer.body.extend_from_slice(data);
                assert_eq!(&self.buffer[line_end + 2 + size..][..2], b"\r\n");
                self.buffer.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    return answer;
                }
            }
        }
        let length: usize = answer
            .field("content-length")
            .expect("a length or chunks")
            .parse()
            .unwrap();
        while self.buffer.len() < length {
            assert!(self.fill().await, "closed in a body");
        }
        answer.body = self.buffer.drain(..length).collect();
        answer
    }

    /// Whether the server closes the connection with nothing more to say.
    async fn closed(&mut self) -> bool {
        !self.fill().await && self.buffer.is_empty()
    }
}

async fn setup() -> (RunningGateway, Upstream, String) {
    let control_plane = ControlPlane::start().await;
    let (key, record) = new_key("alice");
    control_plane.upsert(&record);
    let upstream = Upstream::start().await;
    let mut config = config(&control_plane);
    config.routes = vec![
        open_route(upstream.url()),
        RouteConfig {
            path_prefix: "/private/".into(),
            upstream: upstream.url(),
            auth: AuthMode::Key,
            ..RouteConfig::default()
        },
    ];
    let gateway = start_ready_gateway(config).await;
    let status = gateway.status.clone();
    eventually("the key", DEADLINE, || status.replica_len() == 1).await;
    (gateway, upstream, key)
}

async fn connect(gateway: &RunningGateway) -> Reader {
    Reader::new(TcpStream::connect(gateway.addr).await.unwrap())
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_their_own_fields() {
    let (gateway, _upstream, key) = setup().await;
    let mut client = connect(&gateway).await;
    // Three requests in one write: an open route, a verified one, one refused.
    let requests = format!(
        "GET /one?x=1 HTTP/1.1\r\nHost: a\r\nX-Custom: first\r\n\r\n\
         GET /private/two HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {key}\r\n\r\n\
         GET /private/three HTTP/1.1\r\nHost: a\r\n\r\n"
    );
    client.send(requests.as_bytes()).await;
    let one = client.answer(false).await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.json()["uri"], "/one?x=1");
    assert_eq!(one.json()["headers"]["x-custom"][0], "first");
    assert!(one.field("date").is_some(), "{one:?}");
    let two = client.answer(false).await;
    assert_eq!(two.status, 200, "{two:?}");
    assert_eq!(two.json()["uri"], "/private/two");
    assert_eq!(two.json()["headers"]["x-keygate-owner"][0], "alice");
    // The credential went no further, and the first request's field is not carried over.
    assert!(
        two.json()["headers"].get("authorization").is_none(),
        "{two:?}"
    );
    assert!(two.json()["headers"].get("x-custom").is_none(), "{two:?}");
    let three = client.answer(false).await;
    assert_eq!(three.status, 401, "{three:?}");
    assert_eq!(three.json()["error"]["code"], "MISSING");
    // The gateway's own refusal: a length, a date, the request id.
    assert_eq!(
        three.field("content-length").unwrap(),
        three.body.len().to_string()
    );
    assert!(three.field("date").is_some() && three.field("x-request-id").is_some());
    // The connection goes on.
    client.send(b"GET /four HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(client.answer(false).await.json()["uri"], "/four");
    gateway.stop().await;
}

#[tokio::test]
async fn head_answers_have_fields_and_no_body() {
    let (gateway, _upstream, _key) = setup().await;
    let mut client = connect(&gateway).await;
    client
        .send(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /after-head HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let head = client.answer(true).await;
    assert_eq!(head.status, 200, "{head:?}");
    // The next answer starts right after the head: no body bytes came between.
    let after = client.answer(false).await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.json()["uri"], "/after-head");
    gateway.stop().await;
}

#[tokio::test]
async fn connection_close_is_answered_and_then_the_connection_closes() {
    let (gateway, upstream, _key) = setup().await;
    let mut client = connect(&gateway).await;
    // The second request, after the client asked to close, is never served.
    client
        .send(
            b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n\
              GET /never HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
    let last = client.answer(false).await;
    assert_eq!(last.status, 200, "{last:?}");
    assert_eq!(last.field("connection"), Some("close"), "{last:?}");
    // `Connection` is hop-by-hop: the upstream was not told.
    assert!(
        last.json()["headers"].get("connection").is_none(),
        "{last:?}"
    );
    assert!(client.closed().await, "the gateway closes after the answer");
    assert_eq!(upstream.requests(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_request_with_a_body_hands_the_connection_to_hyper_without_losing_a_byte() {
    let (gateway, _upstream, key) = setup().await;
    let mut client = connect(&gateway).await;
    client
        .send(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    assert_eq!(client.answer(false).await.json()["uri"], "/before");
    // A body, sent in two writes with the next request right behind it: hyper serves it and
    // everything after it on this connection.
    client
        .send(b"POST /private/post HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n")
        .await;
    let rest = format!(
        "X-Api-Key: {key}\r\n\r\nhello worldGET /after HTTP/1.1\r\nHost: a\r\n\r\n\
         GET /private/after HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    client.send(rest.as_bytes()).await;
    let post = client.answer(false).await;
    assert_eq!(post.status, 200, "{post:?}");
    assert_eq!(post.json()["method"], "POST");
    assert_eq!(post.json()["body"], "hello world");
    assert_eq!(post.json()["headers"]["x-keygate-owner"][0], "alice");
    let after = client.answer(false).await;
    assert_eq!(after.json()["uri"], "/after");
    let private = client.answer(false).await;
    assert_eq!(private.json()["uri"], "/private/after");
    gateway.stop().await;
}

#[tokio::test]
async fn what_the_loop_does_not_serve_gets_hypers_answer() {
    let (gateway, _upstream, _key) = setup().await;
    // HTTP/1.0, after a plain request: served by hyper, as HTTP/1.0 wants.
    let mut client = connect(&gateway).await;
    client
        .send(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\nGET /old HTTP/1.0\r\nHost: a\r\n\r\n")
        .await;
    assert_eq!(client.answer(false).await.json()["uri"], "/plain");
    let old = client.answer(false).await;
    assert_eq!(old.json()["uri"], "/old");
    assert!(client.closed().await, "HTTP/1.0 without keep-alive closes");
    // A malformed head after a plain request: hyper's 400, then the connection closes.
    let mut client = connect(&gateway).await;
    client
        .send(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\r\nBad Field: x\r\n\r\n")
        .await;
    assert_eq!(client.answer(false).await.json()["uri"], "/plain");
    assert_eq!(client.answer(false).await.status, 400);
    assert!(
        client.closed().await,
        "a malformed head closes the connection"
    );
    // A head too large, after a plain request: hyper's 431.
    let mut client = connect(&gateway).await;
    let huge = format!(
        "GET /plain HTTP/1.1\r\nHost: a\r\n\r\nGET /huge HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(128 * 1024)
    );
    client.send(huge.as_bytes()).await;
    assert_eq!(client.answer(false).await.json()["uri"], "/plain");
    assert_eq!(client.answer(false).await.status, 431);
    gateway.stop().await;
}

#[tokio::test]
async fn drain_closes_idle_connections_and_lets_a_request_in_flight_finish() {
    let (mut gateway, upstream, _key) = setup().await;
    // One connection idle between requests, one waiting for its answer.
    let mut idle = connect(&gateway).await;
    idle.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);
    let mut busy = connect(&gateway).await;
    busy.send(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n").await;
    upstream.arrived.notified().await;
    gateway.signal_stop();
    assert!(
        idle.closed().await,
        "an idle connection is closed when draining starts"
    );
    upstream.release.notify_one();
    let answer = busy.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.field("connection"), Some("close"), "{answer:?}");
    assert!(busy.closed().await, "then the connection closes");
    gateway.wait_stopped().await;
}
