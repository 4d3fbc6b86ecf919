//! The gateway's own HTTP/1.1 server loop for the main listener: what almost every request to
//! an API gateway is, served without hyper's server in between.
//!
//! Per request, the loop parses the head once with httparse into a map whose values are slices
//! of the read buffer, calls the service, and writes the response head and body itself: one
//! async loop per connection, with no dispatcher, no per-request channel or task, and the head
//! and a small body in one write. See BENCHMARKS.md (2026-12-02, "the lean HTTP/1.1 loop").
//!
//! Only plain requests are served here: HTTP/1.1, origin-form target, no body
//! (no `Transfer-Encoding`, `Content-Length` absent or 0), no `Expect`, no `Upgrade`, a head
//! httparse accepts within `max_header_bytes`. The first request that is anything else (h2's
//! preface, HTTP/1.0, a body, a malformed or oversized head, `CONNECT`) hands the connection
//! to hyper for the rest of its life, with the bytes read so far replayed ([`Rewind`]). So
//! every refusal of hostile input (400, 431, request smuggling) is still hyper's, byte for
//! byte, and the lean loop decides only "plain, or not mine".
//!
//! Framing of responses (RFC 9112 §6): none for HEAD, 1xx, 204 and 304; the response's own
//! `Content-Length` when it has one (the upstream client has checked the body against it);
//! else the body's exact length when it is known; else chunked. A client's
//! `Connection: close` is honoured after the response, and said in it.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use keygate_transport::Graceful;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::client_body::ClientBody;
use crate::h1::{self, FieldIndex, HeadFields};
use crate::server::{BoxError, Peer, Service};

/// Most fields in a request head (hyper's default, which the fallback applies).
const MAX_HEADERS: usize = 100;
/// What a read asks room for (hyper's initial read buffer).
const READ_RESERVE: usize = 8 * 1024;

/// One HTTP/1.1 (or, after fallback, any) connection of the main listener.
pub(crate) struct Http1Connection {
    serving: Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>,
    state: Arc<State>,
}

/// What the connection's loop and its owner share.
#[derive(Default)]
struct State {
    /// Shutdown or the idle deadline asked the connection to finish.
    finish: AtomicBool,
    /// The loop waits for the first byte of a head: finishing now loses nothing. Never set
    /// once hyper serves the connection, which then finishes it itself.
    between_requests: AtomicBool,
}

impl Future for Http1Connection {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &self.state;
        if state.finish.load(Ordering::Relaxed) && state.between_requests.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        self.serving.as_mut().poll(cx)
    }
}

impl Graceful for Http1Connection {
    type Error = BoxError;

    /// Takes effect when the connection is next polled, which `Connections` does right after
    /// asking: between requests the connection ends then; in a request, after its response.
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.state.finish.store(true, Ordering::Relaxed);
    }
}

/// Serves `io` with the lean loop, and with `fallback` (hyper's connection over what the loop
/// read and the rest of `io`) from the first request the loop does not take.
pub(crate) fn connection<T, S, F, C>(
    io: T,
    service: Arc<S>,
    peer: Arc<Peer>,
    max_header_bytes: usize,
    fallback: F,
) -> Http1Connection
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service,
    F: FnOnce(Rewind<T>) -> C + Send + 'static,
    C: Graceful<Error = BoxError> + Send,
{
    let state = Arc::new(State::default());
    let shared = Arc::clone(&state);
    let serving = Box::pin(async move {
        let Some((io, read)) = serve(io, &*service, &peer, max_header_bytes, &shared).await? else {
            return Ok(());
        };
        shared.between_requests.store(false, Ordering::Relaxed);
        let mut hyper = std::pin::pin!(fallback(Rewind::new(read.freeze(), io)));
        let mut asked = false;
        std::future::poll_fn(|cx| {
            if !asked && shared.finish.load(Ordering::Relaxed) {
                asked = true;
                hyper.as_mut().graceful_shutdown();
            }
            hyper.as_mut().poll(cx)
        })
        .await
    });
    Http1Connection { serving, state }
}

/// The lean loop: answers plain requests until the client closes, asks to close, or the
/// connection is asked to finish (`Ok(None)`), or until a request that is not plain arrives
/// (`Ok(Some)`: the stream and what was read of it, for hyper).
async fn serve<T, S>(
    mut io: T,
    service: &S,
    peer: &Peer,
    max_header_bytes: usize,
    state: &State,
) -> Result<Option<(T, BytesMut)>, BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    let mut read = BytesMut::with_capacity(READ_RESERVE);
    let mut write = Vec::with_capacity(1024);
    let mut fields = Vec::new();
    loop {
        let head = loop {
            if !read.is_empty() {
                match parse_head(&mut read, max_header_bytes, &mut fields) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(NotPlain) => return Ok(Some((io, read))),
                }
            }
            let between = read.is_empty();
            state.between_requests.store(between, Ordering::Relaxed);
            if between && state.finish.load(Ordering::Relaxed) {
                return Ok(None);
            }
            read.reserve(READ_RESERVE);
            let n = std::future::poll_fn(|cx| {
                tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut read)
            })
            .await?;
            if n == 0 {
                // The client closed, between requests or in a head (hyper drops the latter
                // without an answer too).
                return Ok(None);
            }
        };
        state.between_requests.store(false, Ordering::Relaxed);
        let Head {
            request,
            close,
            bodiless_response,
        } = head;
        peer.activity.started();
        peer.activity.http1();
        let mut response = service.call(request, peer).await;
        peer.activity.finished();
        let close = close || state.finish.load(Ordering::Relaxed);
        let fields = S::head_fields(response.body_mut());
        let answer = Answer {
            response,
            fields,
            bodiless_response,
            close,
        };
        respond(&mut io, &mut write, answer).await?;
        if close {
            // Best effort: the response is written; a client gone already changes nothing. A
            // client that reads nothing more may hold the TLS close_notify: the connection
            // counts as between requests, so that drain and the idle deadline end it.
            state.between_requests.store(true, Ordering::Relaxed);
            let _ = io.shutdown().await;
            return Ok(None);
        }
    }
}

/// A plain request, ready for the service.
struct Head {
    request: Request<ClientBody>,
    /// The client asked to close after this response.
    close: bool,
    /// A HEAD request: the response has fields but no body.
    bodiless_response: bool,
}

/// A request the lean loop does not serve (the head is left in the buffer): hyper takes the
/// connection from here.
#[derive(Debug)]
struct NotPlain;

/// A complete plain head, `None` while the head is incomplete, or [`NotPlain`].
type Parsed = Result<Option<Head>, NotPlain>;

/// Takes a complete plain request head from the front of `buf`. `fields` is scratch space, kept
/// by the connection: an array of 100 indexes zeroed per request cost more than the parse.
fn parse_head(buf: &mut BytesMut, max_header_bytes: usize, fields: &mut Vec<FieldIndex>) -> Parsed {
    // Uninitialised, as for upstream responses: zeroing 100 fields cost more than parsing.
    let mut parsed = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut parsed,
    ) {
        Ok(httparse::Status::Complete(length)) if length <= max_header_bytes => length,
        Ok(httparse::Status::Partial) if buf.len() < max_header_bytes => return Ok(None),
        // Too large (hyper answers 431) or malformed (hyper answers 400).
        _ => return Err(NotPlain),
    };
    if request.version != Some(1) {
        return Err(NotPlain);
    }
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Err(NotPlain);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(NotPlain);
    };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Err(NotPlain);
    }
    let base = buf.as_ptr() as usize;
    let target = h1::span(base, path.as_bytes());
    fields.clear();
    let mut close = false;
    for field in request.headers.iter() {
        let (name, value) = (field.name.as_bytes(), field.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            if value != b"0" {
                return Err(NotPlain);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Err(NotPlain);
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= h1::list_items(value).any(|token| token.eq_ignore_ascii_case(b"close"));
        }
        fields.push(FieldIndex::at(base, name, value));
    }
    let head = buf.split_to(length).freeze();
    match build_request(&head, method, target, fields) {
        Some(request) => Ok(Some(Head {
            bodiless_response: request.method() == Method::HEAD,
            request,
            close,
        })),
        None => {
            // Not plain after all (a field hyper would judge): give the bytes back. `head` is
            // the only handle on them, so this copies, once per connection at most.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            Err(NotPlain)
        }
    }
}

fn build_request(
    head: &Bytes,
    method: Method,
    target: (usize, usize),
    fields: &[FieldIndex],
) -> Option<Request<ClientBody>> {
    let uri = http::Uri::from_maybe_shared(head.slice(target.0..target.1)).ok()?;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(&head[field.name.0..field.name.1]).ok()?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(field.value.0..field.value.1)).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(ClientBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Some(request)
}

/// How the response's body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    /// As it comes: its length is in the head.
    Length,
    Chunked,
}

/// A response and how to write it.
struct Answer<B> {
    response: Response<B>,
    /// Its fields outside its map (an upstream's, `h1::HeadFields`), written before the map's.
    fields: HeadFields,
    /// An answer to HEAD: fields, no body.
    bodiless_response: bool,
    /// The connection closes after it.
    close: bool,
}

/// Writes `answer` to the client; an error means the connection cannot go on.
async fn respond<T, B>(io: &mut T, write: &mut Vec<u8>, answer: Answer<B>) -> Result<(), BoxError>
where
    T: AsyncWrite + Unpin,
    B: Body<Data = Bytes, Error: Into<BoxError> + Send>,
{
    let Answer {
        response,
        fields,
        bodiless_response,
        close,
    } = answer;
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let no_body = bodiless_response
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    write.clear();
    write.extend_from_slice(b"HTTP/1.1 ");
    write.extend_from_slice(status.as_str().as_bytes());
    write.push(b' ');
    write.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    write.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let mut has_length = false;
    fields.each_not_in(&parts.headers, |name, value| {
        has_date |= name.eq_ignore_ascii_case(b"date");
        has_length |= name.eq_ignore_ascii_case(b"content-length");
        h1::field(write, name, value);
    });
    for (name, value) in &parts.headers {
        has_date |= *name == header::DATE;
        has_length |= *name == header::CONTENT_LENGTH;
        h1::field(write, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_date {
        crate::http_date::with_now(|date| h1::field(write, b"date", date));
    }
    let framing = if no_body {
        Framing::None
    } else if has_length {
        Framing::Length
    } else if let Some(length) = body.size_hint().exact() {
        let mut digits = itoa::Buffer::new();
        h1::field(write, b"content-length", digits.format(length).as_bytes());
        Framing::Length
    } else {
        write.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if close {
        write.extend_from_slice(b"connection: close\r\n");
    }
    write.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        io.write_all(write).await?;
        return Ok(io.flush().await?);
    }
    let body = std::pin::pin!(body);
    h1::write_body(io, write, body, framing == Framing::Chunked)
        .await
        .map_err(|error| match error {
            h1::BodyWriteError::Body(error) => error.into(),
            h1::BodyWriteError::Io(error) => error.into(),
        })
}

/// A stream whose first bytes are ones already read from it: how the lean loop hands a
/// connection to hyper without losing what it read.
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::response::REQUEST_ID;

    const MAX: usize = 16 * 1024;

    fn parse(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse_head(&mut buf, MAX, &mut Vec::new()), buf)
    }

    #[test]
    fn a_plain_head_becomes_a_request_and_leaves_what_follows() {
        let (parsed, rest) = parse(
            b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\nContent-Length: 0\r\n\r\nGET /next",
        );
        let Ok(Some(head)) = parsed else {
            panic!("not plain");
        };
        assert_eq!(&rest[..], b"GET /next");
        let request = head.request;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.headers()["host"], "x");
        let twos: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert!(!head.close && !head.bodiless_response);
        assert!(request.body().is_end_stream());
    }

    #[test]
    fn close_and_head_are_noted() {
        let (Ok(Some(head)), _) =
            parse(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n")
        else {
            panic!("not plain");
        };
        assert!(head.close && head.bodiless_response);
    }

    #[test]
    fn an_incomplete_head_waits_until_it_is_too_large() {
        let (parsed, rest) = parse(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert!(matches!(parsed, Ok(None)));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\nHost: x\r\n");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX + 1, b'a');
        let (parsed, rest) = parse(&big);
        assert!(matches!(parsed, Err(NotPlain)));
        assert_eq!(&rest[..], &big[..]);
    }

    #[test]
    fn anything_else_is_handed_over_with_every_byte() {
        for bytes in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nFolded: a\r\n b\r\n\r\n",
        ] {
            let (parsed, rest) = parse(bytes);
            assert!(
                matches!(parsed, Err(NotPlain)),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(&rest[..], bytes, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn a_head_httparse_takes_and_the_uri_parser_does_not_comes_back_whole() {
        // A target longer than `http::Uri` holds (hyper answers 414), a request behind it.
        let mut bytes = b"GET /".to_vec();
        bytes.resize(70_000, b'a');
        bytes.extend_from_slice(b" HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(
            parse_head(&mut buf, 128 * 1024, &mut Vec::new()),
            Err(NotPlain)
        ));
        assert_eq!(&buf[..], &bytes[..]);
    }

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on() {
        let (mut near, far) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut near, b" world")
            .await
            .unwrap();
        drop(near);
        let mut rewound = Rewind::new(Bytes::from_static(b"hello"), far);
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    async fn written<B>(response: Response<B>, head_only: bool, close: bool) -> String
    where
        B: Body<Data = Bytes, Error: Into<BoxError> + Send>,
    {
        written_with(response, HeadFields::default(), head_only, close).await
    }

    async fn written_with<B>(
        response: Response<B>,
        fields: HeadFields,
        head_only: bool,
        close: bool,
    ) -> String
    where
        B: Body<Data = Bytes, Error: Into<BoxError> + Send>,
    {
        let mut out = Vec::new();
        let answer = Answer {
            response,
            fields,
            bodiless_response: head_only,
            close,
        };
        respond(&mut out, &mut Vec::new(), answer).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn responses_are_framed_by_length_or_chunks() {
        // A known length: `Content-Length` added, the body in the same write.
        let text = written(Response::new(Full::new(Bytes::from("hi"))), false, false).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 2\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\n\r\nhi"), "{text}");
        // An unknown length: chunked, each frame a chunk, then the last chunk.
        let frames = tokio_stream::iter(
            ["hello", "", " world"]
                .map(|data| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(data)))),
        );
        let text = written(Response::new(StreamBody::new(frames)), false, true).await;
        assert!(
            text.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "{text}"
        );
        // HEAD, 204 and 304: the fields, no body.
        let mut response = Response::new(Full::new(Bytes::from("body")));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        let text = written(response, true, false).await;
        assert!(text.contains("\r\ncontent-length: 4\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = status;
            let text = written(response, false, false).await;
            assert!(
                text.ends_with("\r\n\r\n") && !text.contains("length"),
                "{text}"
            );
        }
        // The response's own date and length are kept, not doubled.
        let mut response = Response::new(Full::new(Bytes::from("abc")).map_err(|e| match e {}));
        response
            .headers_mut()
            .insert(header::DATE, HeaderValue::from_static("then"));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let text = written(response, false, false).await;
        assert_eq!(text.matches("date").count(), 1, "{text}");
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
    }

    /// An upstream's head fields over `head`, every field of it.
    fn upstream_fields(head: &'static [u8]) -> HeadFields {
        let head = Bytes::from_static(head);
        let mut fields = Vec::new();
        let mut start = 0;
        for line in head.split(|&b| b == b'\n') {
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let base = head.as_ptr() as usize;
                let name = &head[start..start + colon];
                let value = line[colon + 1..].trim_ascii();
                fields.push(FieldIndex::at(base, name, value));
            }
            start += line.len() + 1;
        }
        HeadFields::new(head, fields)
    }

    #[tokio::test]
    async fn an_upstreams_fields_are_written_as_they_came_unless_the_gateway_set_them() {
        let fields = upstream_fields(
            b"Content-Type: text/plain\nX-Request-Id: theirs\nContent-Length: 3\nDate: then\n",
        );
        let mut response = Response::new(Full::new(Bytes::from("abc")));
        response
            .headers_mut()
            .insert(REQUEST_ID.clone(), HeaderValue::from_static("ours"));
        let text = written_with(response, fields, false, false).await;
        assert!(
            text.starts_with(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
                 Date: then\r\nx-request-id: ours\r\n\r\nabc"
            ),
            "{text}"
        );
        // The request id set with the fields (a forwarded response's) replaces theirs too,
        // and a limit field in the map replaces the upstream's.
        let mut fields = upstream_fields(
            b"x-request-id: theirs\nRateLimit-Policy: theirs\nContent-Length: 1\nDate: then\n",
        );
        fields.set(&REQUEST_ID, HeaderValue::from_static("ours"));
        let mut response = Response::new(Full::new(Bytes::from("a")));
        response
            .headers_mut()
            .insert("ratelimit-policy", HeaderValue::from_static("mine"));
        let text = written_with(response, fields, false, false).await;
        assert!(
            text.starts_with(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nDate: then\r\n\
                 x-request-id: ours\r\nratelimit-policy: mine\r\n\r\na"
            ),
            "{text}"
        );
        // Without a length of its own, the body's is written.
        let fields = upstream_fields(b"X-Up: 1\n");
        let text = written_with(
            Response::new(Full::new(Bytes::from("ab"))),
            fields,
            false,
            false,
        )
        .await;
        assert!(text.contains("\r\nX-Up: 1\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 2\r\n"), "{text}");
        assert_eq!(text.matches("date: ").count(), 1, "{text}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Field names the loop treats specially are left out; the rest are plain.
        fn plain_name() -> impl Strategy<Value = String> {
            "[a-z][a-z0-9-]{0,11}".prop_filter("a name the loop judges", |name| {
                ![
                    "content-length",
                    "transfer-encoding",
                    "expect",
                    "upgrade",
                    "connection",
                ]
                .contains(&name.as_str())
            })
        }

        proptest! {
            #[test]
            fn any_bytes_are_a_head_taken_whole_or_left_untouched(
                bytes in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                let mut buf = BytesMut::from(&bytes[..]);
                match parse_head(&mut buf, MAX, &mut Vec::new()) {
                    Ok(Some(_)) => {
                        prop_assert!(bytes.ends_with(&buf));
                        prop_assert!(buf.len() < bytes.len());
                    }
                    Ok(None) | Err(NotPlain) => prop_assert_eq!(&buf[..], &bytes[..]),
                }
            }

            #[test]
            fn a_plain_request_arriving_in_pieces_is_read_whole_and_exactly(
                method in prop::sample::select(vec!["GET", "HEAD", "DELETE", "OPTIONS"]),
                path in "/[a-z0-9/._~-]{0,30}(\\?[a-z0-9=&]{0,20})?",
                fields in proptest::collection::vec((plain_name(), "[!-~]([ -~]{0,30}[!-~])?"), 0..12),
                step in 1usize..40,
            ) {
                let mut wire = format!("{method} {path} HTTP/1.1\r\n");
                for (name, value) in &fields {
                    wire.push_str(&format!("{name}: {value}\r\n"));
                }
                wire.push_str("\r\nNEXT");
                let wire = wire.into_bytes();
                let mut buf = BytesMut::new();
                let mut scratch = Vec::new();
                let mut parsed = None;
                for piece in wire.chunks(step) {
                    buf.extend_from_slice(piece);
                    match parse_head(&mut buf, MAX, &mut scratch) {
                        Ok(Some(head)) => {
                            parsed = Some(head);
                            break;
                        }
                        Ok(None) => {}
                        Err(NotPlain) => prop_assert!(false, "plain request refused: {wire:?}"),
                    }
                }
                let head = parsed.expect("the whole head read");
                // Whatever arrived after the head stays for the next request.
                prop_assert!(b"NEXT".starts_with(&buf));
                prop_assert_eq!(head.request.method().as_str(), method);
                prop_assert_eq!(head.request.uri().to_string(), path);
                let got: Vec<(String, String)> = head
                    .request
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                    .collect();
                // A map groups a name's values; their order within a name is kept.
                let mut expected = fields.clone();
                expected.sort_by(|a, b| a.0.cmp(&b.0));
                let mut got_sorted = got;
                got_sorted.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(got_sorted, expected);
                prop_assert_eq!(head.bodiless_response, method == "HEAD");
                prop_assert!(!head.close);
            }
        }
    }
}
