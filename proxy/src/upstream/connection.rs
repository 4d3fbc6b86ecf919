//! One keep-alive HTTP/1.1 connection to an upstream, driven by the task of the request that
//! holds it: no connection task, no channel between the request and the socket, no wake-up of
//! another task per request. A request writes its head (and streams its body), reads the
//! response head, and hands the connection to the response body ([`ResponseBody`]), which
//! returns it to the pool once the body has been read to its end.

use std::future::Future;
use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

use crate::h1::{self, FieldIndex, HeadFields};

use super::wire::{
    self, AddedFields, BodyFraming, ChunkedDecoder, Decoded, RequestFraming, ResponseHead,
    WireError,
};
use super::{RequestBody, UpstreamError, UpstreamPool};

/// Room kept free in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;
/// The byte stream of an upstream connection.
pub(super) type Io = keygate_transport::MaybeTls<TlsStream<TcpStream>>;

/// An open connection, idle or carrying one exchange. Boxed: it moves from the pool into an
/// exchange, a response body and back, and every move of a response or a future that held its
/// ~150 bytes inline was a copy (~1 000 instructions a request in all, BENCHMARKS.md,
/// 2026-12-02, evening); one allocation per connection instead.
pub(super) struct Connection(Box<ConnectionState>);

impl Deref for Connection {
    type Target = ConnectionState;

    fn deref(&self) -> &ConnectionState {
        &self.0
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut ConnectionState {
        &mut self.0
    }
}

/// What a [`Connection`] holds.
pub(super) struct ConnectionState {
    io: Io,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    write: Vec<u8>,
    /// Scratch space for parsing response heads.
    fields: Vec<FieldIndex>,
    /// Whether it has carried an exchange before (a stale keep-alive connection can fail a
    /// request the upstream never saw).
    reused: bool,
    /// The deadline of the exchange in progress. One timer for the connection's life, moved
    /// later for each exchange: moving a registered timer later is one atomic operation, where
    /// a timer per request is registered and removed under the runtime's timer lock. `None`
    /// only while an exchange has it.
    timer: Option<Pin<Box<Sleep>>>,
    /// The serving thread that opened it ([`crate::workers`]), whose runtime its socket and
    /// timer are registered with; it goes back to that thread's idle list.
    pub home: usize,
    /// The pool's count of open connections: released when the connection is dropped.
    _slot: OwnedSemaphorePermit,
}

/// How an exchange failed, and whether the request can safely be sent again elsewhere.
pub(super) struct Failed {
    pub error: UpstreamError,
    /// The connection had been idle in the pool and closed before a single byte of answer:
    /// the upstream most likely closed it before the request arrived.
    pub stale: bool,
}

impl Connection {
    pub fn new(io: Io, slot: OwnedSemaphorePermit) -> Self {
        Self(Box::new(ConnectionState {
            io,
            read: BytesMut::with_capacity(READ_RESERVE),
            write: Vec::with_capacity(1024),
            fields: Vec::new(),
            reused: false,
            timer: None,
            home: crate::workers::current(),
            _slot: slot,
        }))
    }
}

impl ConnectionState {
    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything unasked. Costs no system call when nothing arrived (the runtime already
    /// knows the socket is not readable).
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if !self.read.is_empty() {
            return false;
        }
        // Ready means closed (0 bytes), unasked bytes, or an error.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.read).is_pending()
    }

    /// Sends `request` (origin-form target, `Host` set, no hop-by-hop fields) and reads the
    /// response head. The body of the response is then read through [`ResponseBody`].
    async fn exchange(
        &mut self,
        head: &http::request::Parts,
        body: &mut RequestBody,
        added: &AddedFields<'_>,
        framing: RequestFraming,
    ) -> Result<ResponseHead, Failed> {
        let method = &head.method;
        let stale_if_silent = self.reused;
        self.reused = true;
        let target = head.uri.path_and_query().map_or("/", |path| path.as_str());
        self.write.clear();
        wire::encode_request_head(
            &mut self.write,
            method,
            target,
            &head.headers,
            added,
            framing,
        );
        let sent = self.send(body, framing).await;
        match sent {
            Ok(()) => {}
            Err(Sending::Body(error)) => {
                return Err(Failed {
                    error,
                    stale: false,
                });
            }
            // The upstream may have answered and closed before taking the whole body (a 413,
            // say): that answer is still the answer.
            Err(Sending::Io(error)) => {
                return match self.read_head(method).await {
                    Ok(head) => Ok(head.closing()),
                    Err(_) => Err(Failed {
                        stale: stale_if_silent && is_silent_close(&error),
                        error: UpstreamError::Io(error),
                    }),
                };
            }
        }
        self.read_head(method).await.map_err(|error| Failed {
            stale: stale_if_silent
                && matches!(&error, UpstreamError::Io(error) if is_silent_close(error)),
            error,
        })
    }

    async fn send(
        &mut self,
        body: &mut RequestBody,
        framing: RequestFraming,
    ) -> Result<(), Sending> {
        if framing == RequestFraming::Empty {
            self.io.write_all(&self.write).await.map_err(Sending::Io)?;
            return self.io.flush().await.map_err(Sending::Io);
        }
        let chunked = framing == RequestFraming::Chunked;
        h1::write_body(&mut self.io, &mut self.write, Pin::new(body), chunked)
            .await
            .map_err(|error| match error {
                h1::BodyWriteError::Body(error) => {
                    Sending::Body(UpstreamError::RequestBody(error.into()))
                }
                h1::BodyWriteError::Io(error) => Sending::Io(error),
            })
    }

    /// Reads until a final response head is complete.
    async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, UpstreamError> {
        loop {
            if let Some(head) = wire::parse_response_head(&mut self.read, method, &mut self.fields)?
            {
                return Ok(head);
            }
            let read = std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
            if read == 0 {
                return Err(UpstreamError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before answering",
                )));
            }
        }
    }

    /// Reads once into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_RESERVE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// Why sending failed: the client's body (its fault), or the connection.
enum Sending {
    Body(UpstreamError),
    Io(io::Error),
}

/// The ways a connection the upstream closed while it was idle fails the next exchange.
fn is_silent_close(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

impl ResponseHead {
    /// This response ends the connection.
    fn closing(mut self) -> Self {
        self.keep_alive = false;
        self
    }
}

/// A response body read straight from its connection, which goes back to the pool when the
/// body has been read to its end (and the upstream allows it); a body dropped early closes the
/// connection, as HTTP/1.1 cannot abandon one response and go on with the next.
pub struct ResponseBody {
    /// The response head's fields, until the server side takes them ([`Self::take_fields`]).
    fields: HeadFields,
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<UpstreamPool>,
}

enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("reading the upstream's response body: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the upstream closed the connection in the middle of a response body")]
    Truncated,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("done", &matches!(self.framing, Framing::Done))
            .finish()
    }
}

impl ResponseBody {
    pub(super) fn new(
        connection: Connection,
        framing: BodyFraming,
        keep_alive: bool,
        pool: Arc<UpstreamPool>,
        fields: HeadFields,
    ) -> Self {
        let mut body = Self {
            fields,
            connection: Some(connection),
            framing: match framing {
                BodyFraming::Empty => Framing::Done,
                BodyFraming::Length(length) => Framing::Length(length),
                BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::default()),
                BodyFraming::UntilClose => Framing::UntilClose,
            },
            keep_alive,
            pool,
        };
        if matches!(body.framing, Framing::Done) {
            body.finish();
        }
        body
    }

    /// The response head's fields, which the response's map does not hold; empty after the
    /// first call.
    pub fn take_fields(&mut self) -> HeadFields {
        std::mem::take(&mut self.fields)
    }

    /// The response head's fields, until the server side takes them.
    pub fn fields(&self) -> &HeadFields {
        &self.fields
    }

    /// The response head's fields, for the gateway to set its own (`HeadFields::set`).
    pub fn fields_mut(&mut self) -> &mut HeadFields {
        &mut self.fields
    }

    /// The body is through: the connection goes back to the pool when nothing is left over
    /// and the upstream keeps it open.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(connection) = self.connection.take()
            && self.keep_alive
            && connection.read.is_empty()
        {
            self.pool.checkin(connection);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match &mut this.framing {
                Framing::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !connection.read.is_empty() => {
                    let take = usize::try_from(*left).map_or(connection.read.len(), |left| {
                        left.min(connection.read.len())
                    });
                    *left -= take as u64;
                    let data = connection.read.split_to(take).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    data
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut connection.read) {
                    Ok(Decoded::Data(data)) => data,
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {
                        if let Err(error) = ready!(fill(connection, cx)) {
                            this.connection = None;
                            return Poll::Ready(Some(Err(error)));
                        }
                        continue;
                    }
                    Err(error) => {
                        this.connection = None;
                        return Poll::Ready(Some(Err(error.into())));
                    }
                },
                Framing::UntilClose if !connection.read.is_empty() => {
                    connection.read.split().freeze()
                }
                Framing::UntilClose => match ready!(connection.poll_fill(cx)) {
                    Ok(0) => {
                        this.framing = Framing::Done;
                        this.connection = None;
                        return Poll::Ready(None);
                    }
                    Ok(_) => continue,
                    Err(error) => {
                        this.connection = None;
                        return Poll::Ready(Some(Err(error.into())));
                    }
                },
                Framing::Length(_) => {
                    if let Err(error) = ready!(fill(connection, cx)) {
                        this.connection = None;
                        return Poll::Ready(Some(Err(error)));
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => SizeHint::with_exact(0),
            Framing::Chunked(_) | Framing::UntilClose => SizeHint::default(),
        }
    }
}

/// Reads more of a body whose end is known to be further on: the stream ending first is an
/// error.
fn fill(connection: &mut Connection, cx: &mut Context<'_>) -> Poll<Result<(), ResponseBodyError>> {
    match ready!(connection.poll_fill(cx)) {
        Ok(0) => Poll::Ready(Err(ResponseBodyError::Truncated)),
        Ok(_) => Poll::Ready(Ok(())),
        Err(error) => Poll::Ready(Err(error.into())),
    }
}

/// Sends `request` on `connection` and wraps the answer; the pool decides what a failure
/// means. Fails with [`UpstreamError::Timeout`] when the response head is not in by `deadline`.
pub(super) async fn exchange(
    pool: &Arc<UpstreamPool>,
    mut connection: Connection,
    parts: &http::request::Parts,
    body: &mut RequestBody,
    added: &AddedFields<'_>,
    framing: RequestFraming,
    deadline: Instant,
) -> Result<http::Response<ResponseBody>, Failed> {
    let mut timer = match connection.timer.take() {
        Some(mut timer) => {
            timer.as_mut().reset(deadline);
            timer
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    };
    let exchanged = {
        let mut exchange = std::pin::pin!(connection.exchange(parts, body, added, framing));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    };
    connection.timer = Some(timer);
    let Some(head) = exchanged else {
        return Err(Failed {
            error: UpstreamError::Timeout,
            stale: false,
        });
    };
    let ResponseHead {
        status,
        version,
        fields,
        framing,
        keep_alive,
    } = head?;
    // The head's fields travel with the body, out of the response's map (`h1::HeadFields`).
    let mut response = http::Response::new(ResponseBody::new(
        connection,
        framing,
        keep_alive,
        Arc::clone(pool),
        fields,
    ));
    *response.status_mut() = status;
    *response.version_mut() = version;
    Ok(response)
}
