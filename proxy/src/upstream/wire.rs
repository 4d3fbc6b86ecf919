//! HTTP/1.1 towards an upstream, as bytes (RFC 9112): the request head the gateway writes, the
//! response head it parses (with httparse, hyper's parser), and the response body's framing.
//!
//! Pure functions over buffers, no I/O: `connection.rs` reads and writes, this decides. What is
//! accepted from an upstream is strict, because a proxy that guesses where one response ends
//! and the next begins can be made to answer one client with another's response:
//! - a `Content-Length` must be digits, and every value of it the same;
//! - `Transfer-Encoding` wins over `Content-Length` (§6.3), and such a response closes the
//!   connection after it; a coding list that does not end in `chunked` is read until close;
//! - chunk sizes are hex without overflow, lines end in CRLF (a bare LF is an error), and chunk
//!   extensions and trailers are bounded and dropped;
//! - interim (1xx) responses are skipped; `101 Switching Protocols` is an error, since the
//!   gateway never asks for an upgrade;
//! - bytes after a response the upstream was not asked for mean the connection is not reused.

use std::mem::MaybeUninit;

use crate::h1::{self, FieldIndex, HeadFields, field};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};

/// Longest response head accepted: hyper's default buffer limit, which the client before this
/// one applied.
pub(super) const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Most fields in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Chunk extensions and trailers, which are dropped, may take this many bytes per response.
const MAX_DROPPED_BYTES: usize = 16 * 1024;

/// Why an upstream's bytes are not an HTTP/1.1 response the gateway can pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("the upstream switched protocols, which the gateway never asks for")]
    Upgrade,
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    /// No body.
    Empty,
    /// The `Content-Length` the request carries: the body is sent as it comes.
    Length,
    /// Length unknown (an HTTP/2 body without one, a chunked HTTP/1.1 body): chunked.
    Chunked,
}

impl RequestFraming {
    /// `headers` have no `Transfer-Encoding` (the forwarder removed hop-by-hop headers), and
    /// a `Content-Length` they carry was checked against the body by the server side.
    pub fn of(headers: &HeaderMap, body_is_empty: bool) -> Self {
        if headers.contains_key(header::CONTENT_LENGTH) {
            Self::Length
        } else if body_is_empty {
            Self::Empty
        } else {
            Self::Chunked
        }
    }
}

/// Most fields the gateway adds to a forwarded request (`X-Forwarded-*`, `Forwarded`,
/// `X-Request-Id`, the identity pair, with room to spare).
const MAX_ADDED: usize = 10;

/// The fields the gateway adds to a forwarded request, written straight into the head rather
/// than inserted into the request's map (each insert hashes, may grow the map, and the value
/// often has to be allocated). Each replaces every field of its name the request has: the
/// request's own are skipped when the head is written. `Host` is written first, as RFC 9112
/// §3.2 asks of a client.
pub(crate) struct AddedFields<'a> {
    host: &'a HeaderValue,
    fields: [(&'a HeaderName, &'a [u8]); MAX_ADDED],
    len: usize,
}

impl<'a> AddedFields<'a> {
    pub fn new(host: &'a HeaderValue) -> Self {
        Self {
            host,
            fields: [(&PLACEHOLDER, &[]); MAX_ADDED],
            len: 0,
        }
    }

    pub fn push(&mut self, name: &'a HeaderName, value: &'a HeaderValue) {
        self.push_bytes(name, value.as_bytes());
    }

    /// `value` must be valid header text; the callers' are built from header values or are
    /// base62.
    pub fn push_bytes(&mut self, name: &'a HeaderName, value: &'a [u8]) {
        debug_assert!(HeaderValue::from_bytes(value).is_ok());
        if let Some(slot) = self.fields.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    fn fields(&self) -> &[(&'a HeaderName, &'a [u8])] {
        &self.fields[..self.len]
    }

    /// Whether a request field of this name is replaced.
    fn replaces(&self, name: &HeaderName) -> bool {
        *name == header::HOST || self.fields().iter().any(|(added, _)| *added == name)
    }
}

static PLACEHOLDER: HeaderName = header::HOST;

/// Writes the request head: request line (origin form), `Host`, `headers` except those
/// `added` replaces, the added fields, the framing field the body needs, and the empty line.
pub(super) fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: &AddedFields<'_>,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(added.host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if !added.replaces(name) {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    for (name, value) in added.fields() {
        field(out, name.as_str().as_bytes(), value);
    }
    match framing {
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // As hyper's client did: a method whose body means something says it has none.
        RequestFraming::Empty if expects_body(method) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty | RequestFraming::Length => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn expects_body(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::CONNECT
            | Method::TRACE
    )
}

/// Whether a request may be sent again after a reused connection failed before answering:
/// the idempotent methods (RFC 9110 §9.2.2).
pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    /// No body: a response to HEAD, 204, 304, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body ends when the upstream closes.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// Every field but the hop-by-hop ones (and `Content-Length` when chunked wins over it),
    /// as they came.
    pub fields: HeadFields,
    pub framing: BodyFraming,
    /// Whether the connection may carry another request after this response's body.
    pub keep_alive: bool,
}

/// Takes the next final response head from the front of `buf`, skipping interim (1xx) ones;
/// `Ok(None)` while it is incomplete. `method` is the request's: a response to HEAD has no
/// body whatever its fields say. `fields` is scratch space, kept by the connection so that a
/// response costs no allocation for it.
pub(super) fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
    fields: &mut Vec<FieldIndex>,
) -> Result<Option<ResponseHead>, WireError> {
    loop {
        // Uninitialised: zeroing 100 fields for every response cost more than parsing them.
        let mut parsed = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut parsed,
        ) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(WireError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(WireError::Head(error)),
        };
        if length > MAX_HEAD_BYTES {
            return Err(WireError::HeadTooLarge);
        }
        let code = response.code.unwrap_or_default();
        if code == 101 {
            return Err(WireError::Upgrade);
        }
        if (100..200).contains(&code) {
            buf.advance(length);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| WireError::Head(httparse::Error::Status))?;
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Offsets, so that the values can be slices of the frozen head rather than copies.
        let base = buf.as_ptr() as usize;
        fields.clear();
        fields.extend(
            response
                .headers
                .iter()
                .map(|field| FieldIndex::at(base, field.name.as_bytes(), field.value)),
        );
        let head = buf.split_to(length).freeze();
        return build_head(head, fields, status, version, method).map(Some);
    }
}

fn build_head(
    head: Bytes,
    fields: &[FieldIndex],
    status: StatusCode,
    version: Version,
    method: &Method,
) -> Result<ResponseHead, WireError> {
    let mut kept = Vec::with_capacity(fields.len());
    let mut length: Option<u64> = None;
    // The last coding of the last `Transfer-Encoding` field, when there is one.
    let mut chunked: Option<bool> = None;
    let (mut close, mut keep_alive_token) = (false, false);
    // Whether `Connection` names a field besides its own options (which go with it).
    let mut names_fields = false;
    for field in fields {
        let name = &head[field.name.0..field.name.1];
        let value = &head[field.value.0..field.value.1];
        if name.len() > MAX_NAME_LEN {
            return Err(WireError::Head(httparse::Error::HeaderName));
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if let Some(last) = value.rsplit(|&b| b == b',').map(<[u8]>::trim_ascii).next()
                && !last.is_empty()
            {
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let parsed = parse_length(item).ok_or(WireError::ContentLength)?;
                if length.is_some_and(|seen| seen != parsed) {
                    return Err(WireError::ContentLength);
                }
                length = Some(parsed);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h1::list_items(value) {
                let is_close = token.eq_ignore_ascii_case(b"close");
                let is_keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                close |= is_close;
                keep_alive_token |= is_keep_alive;
                names_fields |= !(is_close || is_keep_alive);
            }
        }
        if !h1::is_hop_by_hop(name) {
            kept.push(*field);
        }
    }
    let mut keep_alive = match version {
        Version::HTTP_10 => keep_alive_token && !close,
        _ => !close,
    };
    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut contested = false;
    let framing = if no_body {
        BodyFraming::Empty
    } else if let Some(chunked) = chunked {
        if length.is_some() {
            // Both: chunked wins, and a connection whose framing was contested is not reused.
            contested = true;
            keep_alive = false;
        }
        if chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else {
        match length {
            Some(0) => BodyFraming::Empty,
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::UntilClose,
        }
    };
    if framing == BodyFraming::UntilClose {
        keep_alive = false;
    }
    if contested || names_fields {
        let named = connection_named(&head, fields);
        kept.retain(|field| {
            let name = &head[field.name.0..field.name.1];
            let dropped_length = contested && name.eq_ignore_ascii_case(b"content-length");
            let named_hop = named.iter().any(|named| named.eq_ignore_ascii_case(name));
            !(dropped_length || named_hop)
        });
    }
    Ok(ResponseHead {
        status,
        version,
        fields: HeadFields::new(head, kept),
        framing,
        keep_alive,
    })
}

/// Longest field name a `HeaderName` holds: a longer one is refused as it was when the head
/// became a map, not passed on.
const MAX_NAME_LEN: usize = (1 << 16) - 1;

/// The field names every `Connection` field lists (RFC 9110 §7.6.1: hop-by-hop too).
fn connection_named<'a>(head: &'a [u8], fields: &[FieldIndex]) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|field| head[field.name.0..field.name.1].eq_ignore_ascii_case(b"connection"))
        .flat_map(|field| h1::list_items(&head[field.value.0..field.value.1]))
        .collect()
}

/// A `Content-Length` value: ASCII digits only, no sign, no overflow.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |length, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        length.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Data(Bytes),
    /// The buffer ends inside framing: read more.
    NeedMore,
    /// The last chunk and the trailer section are through.
    End,
}

/// Decodes a chunked body (RFC 9112 §7.1) from the front of a buffer, consuming what it
/// decodes and passing data on without copying it.
#[derive(Debug, Default)]
pub(super) struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of chunk extensions and trailers so far: dropped, and bounded.
    dropped: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the size's hex digits.
    #[default]
    SizeStart,
    Size {
        size: u64,
    },
    /// After the size: whitespace, then an extension or the line's end.
    SizeTail {
        size: u64,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the empty line that ends the body).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl ChunkedDecoder {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            if let ChunkState::Data { left } = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
                let left = left - take as u64;
                self.state = if left == 0 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data { left }
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == ChunkState::Done {
                return Ok(Decoded::End);
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
        }
    }

    /// One framing byte.
    fn step(&mut self, byte: u8) -> Result<ChunkState, WireError> {
        use ChunkState::*;
        let hex = |byte: u8| (byte as char).to_digit(16).map(u64::from);
        Ok(match (self.state, byte) {
            (SizeStart, _) => Size {
                size: hex(byte)
                    .ok_or(WireError::Chunk("a chunk size must start with a hex digit"))?,
            },
            (Size { size }, _) if hex(byte).is_some() => Size {
                size: size
                    .checked_mul(16)
                    .and_then(|size| size.checked_add(hex(byte).unwrap_or_default()))
                    .ok_or(WireError::Chunk("chunk size overflows"))?,
            },
            (Size { size } | SizeTail { size }, b' ' | b'\t') => SizeTail { size },
            (Size { size } | SizeTail { size }, b';') => self.extension(size)?,
            (Size { size } | SizeTail { size }, b'\r') => SizeLf { size },
            (Extension { size }, b'\r') => SizeLf { size },
            (Extension { size }, b'\t' | b' '..=b'~' | 0x80..=0xff) => self.extension(size)?,
            (SizeLf { size: 0 }, b'\n') => TrailerStart,
            (SizeLf { size }, b'\n') => Data { left: size },
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => SizeStart,
            (TrailerStart, b'\r') => EndLf,
            (EndLf, b'\n') => Done,
            (Trailer, b'\r') => TrailerLf,
            (TrailerStart | Trailer, b'\t' | b' '..=b'~' | 0x80..=0xff) => {
                self.dropped += 1;
                if self.dropped > MAX_DROPPED_BYTES {
                    return Err(WireError::Chunk("trailers too large"));
                }
                Trailer
            }
            (TrailerLf, b'\n') => TrailerStart,
            (DataCr | DataLf, _) => return Err(WireError::Chunk("chunk data must end in CRLF")),
            (SizeLf { .. } | TrailerLf | EndLf, _) => {
                return Err(WireError::Chunk("a line must end in CRLF"));
            }
            _ => return Err(WireError::Chunk("invalid byte in chunk framing")),
        })
    }

    fn extension(&mut self, size: u64) -> Result<ChunkState, WireError> {
        self.dropped += 1;
        if self.dropped > MAX_DROPPED_BYTES {
            return Err(WireError::Chunk("chunk extensions too large"));
        }
        Ok(ChunkState::Extension { size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], method: &Method) -> Result<Option<ResponseHead>, WireError> {
        parse_response_head(&mut BytesMut::from(bytes), method, &mut Vec::new())
    }

    fn head(bytes: &[u8]) -> ResponseHead {
        parse(bytes, &Method::GET)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn the_request_head_is_the_request_line_the_fields_and_the_framing() {
        static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("client.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-request-id", HeaderValue::from_static("spoofed"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let upstream = HeaderValue::from_static("api.internal");
        let id = HeaderValue::from_static("r1");
        let mut added = AddedFields::new(&upstream);
        added.push(&REQUEST_ID, &id);
        added.push_bytes(&header::FORWARDED, b"for=192.0.2.1;proto=http");
        let mut out = Vec::new();
        let get = Method::GET;
        encode_request_head(
            &mut out,
            &get,
            "/v1/x?y=1",
            &headers,
            &added,
            RequestFraming::Empty,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /v1/x?y=1 HTTP/1.1\r\nhost: api.internal\r\nx-a: 1\r\nx-a: 2\r\n\
             x-request-id: r1\r\nforwarded: for=192.0.2.1;proto=http\r\n\r\n",
            "the client's Host and X-Request-Id are replaced, not repeated"
        );
        let (plain, none) = (AddedFields::new(&upstream), HeaderMap::new());
        out.clear();
        encode_request_head(
            &mut out,
            &Method::POST,
            "/",
            &none,
            &plain,
            RequestFraming::Empty,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST / HTTP/1.1\r\nhost: api.internal\r\ncontent-length: 0\r\n\r\n"
        );
        out.clear();
        encode_request_head(
            &mut out,
            &Method::PUT,
            "/",
            &none,
            &plain,
            RequestFraming::Chunked,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "PUT / HTTP/1.1\r\nhost: api.internal\r\ntransfer-encoding: chunked\r\n\r\n"
        );

        let mut with_length = HeaderMap::new();
        with_length.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert_eq!(
            RequestFraming::of(&with_length, false),
            RequestFraming::Length
        );
        assert_eq!(
            RequestFraming::of(&HeaderMap::new(), true),
            RequestFraming::Empty
        );
        assert_eq!(
            RequestFraming::of(&HeaderMap::new(), false),
            RequestFraming::Chunked
        );
    }

    #[test]
    fn a_response_head_is_parsed_and_its_framing_decided() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: a\r\n\r\nhello"[..]);
        let mut parsed = parse_response_head(&mut buf, &Method::GET, &mut Vec::new())
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!(parsed.framing, BodyFraming::Length(5));
        assert!(parsed.keep_alive);
        let fields = headers(&mut parsed);
        assert_eq!(fields["x-up"], "a");
        assert_eq!(fields[header::CONTENT_LENGTH], "5");
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");

        let mut chunked = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.framing, BodyFraming::Chunked);
        assert!(chunked.keep_alive);
        assert!(!headers(&mut chunked).contains_key(header::TRANSFER_ENCODING));

        let close = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(close.framing, BodyFraming::UntilClose);
        assert!(!close.keep_alive);

        let old = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(old.version, Version::HTTP_10);
        assert!(!old.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        let old_kept =
            head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n");
        assert!(old_kept.keep_alive);
        let closing = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!closing.keep_alive);

        for (bytes, method) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"[..],
                Method::HEAD,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET),
        ] {
            let parsed = parse(bytes, &method).expect("valid").expect("complete");
            assert_eq!(
                parsed.framing,
                BodyFraming::Empty,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            assert!(parsed.keep_alive);
        }
        // HEAD keeps the length the upstream gave.
        let mut to_head = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            &Method::HEAD,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(headers(&mut to_head)[header::CONTENT_LENGTH], "9");
    }

    /// The head's fields in a map, as a connection hyper serves gets them.
    fn headers(head: &mut ResponseHead) -> HeaderMap {
        let mut map = HeaderMap::new();
        std::mem::take(&mut head.fields).into_map(&mut map);
        map
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_left_out() {
        let mut parsed = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret-Hop\r\nKeep-Alive: timeout=5\r\n\
              X-Secret-Hop: 1\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\n\
              Trailer: x-sum\r\nContent-Type: text/plain\r\nx-secret-hop: 2\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(parsed.keep_alive);
        let names: Vec<&[u8]> = parsed.fields.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [&b"Content-Type"[..], b"Content-Length"],
            "as they came"
        );
        let fields = headers(&mut parsed);
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[header::CONTENT_TYPE], "text/plain");
        // Nothing to leave out: every field, in order.
        let plain = head(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\na: 3\r\nContent-Length: 0\r\n\r\n");
        let fields: Vec<(&[u8], &[u8])> = plain.fields.iter().collect();
        assert_eq!(
            fields,
            [
                (&b"A"[..], &b"1"[..]),
                (b"B", b"2"),
                (b"a", b"3"),
                (b"Content-Length", b"0")
            ]
        );
    }

    #[test]
    fn contested_framing_is_resolved_strictly() {
        // Chunked wins over a length, and the connection is not reused after it.
        let mut both =
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(both.framing, BodyFraming::Chunked);
        assert!(!both.keep_alive);
        assert!(!headers(&mut both).contains_key(header::CONTENT_LENGTH));
        // A coding list not ending in chunked is read until close.
        let gzip = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(gzip.framing, BodyFraming::UntilClose);
        assert!(!gzip.keep_alive);
        // The same length twice is one length; two lengths are an error, as is anything else.
        let twice = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(twice.framing, BodyFraming::Length(2));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad, &Method::GET).expect_err("refused"),
                WireError::ContentLength,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn interim_responses_are_skipped_and_an_upgrade_is_refused() {
        let mut parsed = head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(parsed.status, StatusCode::CREATED);
        assert!(!headers(&mut parsed).contains_key(header::LINK));
        assert_eq!(
            parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET).expect_err("refused"),
            WireError::Upgrade
        );
    }

    #[test]
    fn incomplete_heads_wait_and_broken_or_oversized_ones_fail() {
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::GET)
                .expect("valid")
                .is_none()
        );
        assert!(parse(b"", &Method::GET).expect("valid").is_none());
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", &Method::GET),
            Err(WireError::Head(_))
        ));
        assert!(matches!(
            parse(b"NOT HTTP\r\n\r\n", &Method::GET),
            Err(WireError::Head(_))
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(
            parse(&huge, &Method::GET).expect_err("too large"),
            WireError::HeadTooLarge
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for index in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{index}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse(&many, &Method::GET),
            Err(WireError::Head(httparse::Error::TooManyHeaders))
        ));
    }

    /// Decodes `bytes` fed in pieces of `step` bytes.
    fn decode_in_steps(bytes: &[u8], step: usize) -> Result<(Vec<u8>, BytesMut), WireError> {
        let mut decoder = ChunkedDecoder::default();
        let (mut body, mut buf) = (Vec::new(), BytesMut::new());
        let mut input = bytes.chunks(step);
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok((body, buf)),
                Decoded::NeedMore => match input.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Err(WireError::Chunk("test input ended")),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire = b"5;ext=1\r\nhello\r\nA \r\n, world!!!\r\n0\r\nx-checksum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, rest) = decode_in_steps(wire, step).expect("valid");
            assert_eq!(body, b"hello, world!!!", "step {step}");
            // What follows the body is left for whoever reads next.
            assert!(b"NEXT".starts_with(&rest), "step {step}");
        }
        let (body, _) = decode_in_steps(b"0\r\n\r\n", 1).expect("empty body");
        assert!(body.is_empty());
    }

    #[test]
    fn malformed_chunked_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXY0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"11111111111111111\r\n",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
        ] {
            assert!(
                matches!(decode_in_steps(bad, 1), Err(WireError::Chunk(reason)) if reason != "test input ended"),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long_extension = b"1;".to_vec();
        long_extension.resize(MAX_DROPPED_BYTES + 10, b'a');
        assert!(decode_in_steps(&long_extension, 4096).is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// `data` as a chunked body, one chunk per piece, with an extension on odd chunks and a
        /// trailer.
        fn chunked(pieces: &[Vec<u8>]) -> Vec<u8> {
            let mut wire = Vec::new();
            for (index, piece) in pieces.iter().filter(|piece| !piece.is_empty()).enumerate() {
                wire.extend_from_slice(format!("{:x}", piece.len()).as_bytes());
                if index % 2 == 1 {
                    wire.extend_from_slice(b";ext=v");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(piece);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
            wire
        }

        proptest! {
            #[test]
            fn any_bytes_as_a_response_head_are_an_answer_or_an_error_never_a_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                let mut buf = BytesMut::from(&bytes[..]);
                if let Ok(Some(mut head)) = parse_response_head(&mut buf, &Method::GET, &mut Vec::new()) {
                    prop_assert!(buf.len() < bytes.len(), "a parsed head is taken from the buffer");
                    prop_assert!(!head.status.is_informational());
                    // What httparse accepts, `HeaderName` and `HeaderValue` do: moving the
                    // fields into a map (a connection hyper serves) loses none.
                    let count = head.fields.iter().count();
                    prop_assert_eq!(headers(&mut head).len(), count);
                }
            }

            #[test]
            fn any_bytes_as_a_chunked_body_never_panic_nor_loop(
                bytes in proptest::collection::vec(any::<u8>(), 0..600),
                step in 1usize..64,
            ) {
                let mut decoder = ChunkedDecoder::default();
                let mut buf = BytesMut::new();
                for piece in bytes.chunks(step) {
                    buf.extend_from_slice(piece);
                    // Data is never empty, so every turn consumes bytes: no loop without end.
                    while let Ok(Decoded::Data(data)) = decoder.decode(&mut buf) {
                        prop_assert!(!data.is_empty());
                    }
                }
            }

            #[test]
            fn a_chunked_body_decodes_to_its_data_however_it_is_split(
                pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..70), 0..8),
                step in 1usize..50,
            ) {
                let wire = chunked(&pieces);
                let (body, rest) = decode_in_steps(&wire, step).expect("a valid chunked body");
                prop_assert_eq!(body, pieces.concat());
                prop_assert!(rest.is_empty());
            }
        }
    }
}
