//! HTTP/1.1 wire pieces both of the gateway's own codecs use: the server loop towards clients
//! (`lean.rs`) and the client towards upstreams (`upstream/`). Pure byte handling, no policy.

use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A first body frame up to this size goes in the same write as the head.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Where a field's name and value lie in a parsed head, so that values can become slices of
/// the frozen head rather than copies.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FieldIndex {
    pub name: (usize, usize),
    pub value: (usize, usize),
}

impl FieldIndex {
    /// The field `name: value`, both slices of the buffer that starts at address `base`.
    pub fn at(base: usize, name: &[u8], value: &[u8]) -> Self {
        Self {
            name: span(base, name),
            value: span(base, value),
        }
    }
}

/// The hop-by-hop fields of RFC 9110 §7.6.1 (plus the legacy `Proxy-Connection`): they
/// describe one connection, and a proxy passes none of them on (nor the fields `Connection`
/// names).
pub(crate) const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

/// Whether `name`, in any case, is one of [`HOP_BY_HOP`].
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| hop.as_bytes().eq_ignore_ascii_case(name))
}

/// The items of a comma-separated field value (RFC 9110 §5.6.1), trimmed, empty ones skipped:
/// `Connection`'s options and the field names it lists.
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// The fields of a response head as they came on the wire: slices of the head's bytes, kept
/// out of a `HeaderMap`. An upstream's response reaches the client's connection this way (the
/// body carries them, `upstream/connection.rs`): the lean loop writes them as they are, and
/// only a connection served by hyper has them moved into the response's map
/// ([`HeadFields::into_map`]). Building and dropping a map of them cost ~650 instructions a
/// response more (BENCHMARKS.md, 2026-12-02).
///
/// The gateway's own field on every forwarded response, its `x-request-id`, travels here too
/// ([`HeadFields::set`]), out of the map: a map holding that one field cost ~700 instructions
/// a response (two allocations, a hashed insert, the drop; BENCHMARKS.md, 2026-12-02,
/// evening). A field of a name the gateway set, here or in the response's map (the limit
/// fields), is left out: what the gateway set replaces what the upstream sent. Names and
/// values are what httparse accepts, which is what `HeaderName` and `HeaderValue` accept (a
/// property test in `upstream/wire.rs` holds the two to it).
#[derive(Debug, Default)]
pub(crate) struct HeadFields {
    head: Bytes,
    fields: Vec<FieldIndex>,
    /// The one field the gateway sets on every forwarded response (its request id).
    own: Option<(&'static HeaderName, HeaderValue)>,
}

impl HeadFields {
    /// The fields at `fields` in `head`.
    pub fn new(head: Bytes, fields: Vec<FieldIndex>) -> Self {
        Self {
            head,
            fields,
            own: None,
        }
    }

    /// Sets the gateway's one field of this response (its request id), replacing the
    /// upstream's of that name and any earlier call's.
    pub fn set(&mut self, name: &'static HeaderName, value: HeaderValue) {
        self.own = Some((name, value));
    }

    /// The value [`Self::set`] gave `name`, if it did.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.own
            .as_ref()
            .filter(|(own, _)| *own == name)
            .map(|(_, value)| value)
    }

    /// The upstream's fields: each one's name (as the peer spelled it) and value.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|field| (self.name(field), &self.head[field.value.0..field.value.1]))
    }

    /// Calls `f` with each field to write besides `map`'s: the upstream's that neither `map`
    /// nor [`Self::set`] replaces, then the one set, unless `map` holds its name too. A loop,
    /// not an iterator: a chained iterator's `next` cost ~180 instructions a response more.
    pub fn each_not_in(&self, map: &HeaderMap, mut f: impl FnMut(&[u8], &[u8])) {
        let own = self
            .own
            .as_ref()
            .filter(|(name, _)| !replaced(map, name.as_str().as_bytes()));
        let own_name = own.map(|(name, _)| name.as_str().as_bytes());
        for field in &self.fields {
            let name = self.name(field);
            if !superseded(map, own_name, name) {
                f(name, &self.head[field.value.0..field.value.1]);
            }
        }
        if let Some((name, value)) = own {
            f(name.as_str().as_bytes(), value.as_bytes());
        }
    }

    /// Appends the fields to `map`, but those it replaces (see [`Self::each_not_in`]). A field
    /// that is not a valid `HeaderName` and `HeaderValue` is left out (none is: see the type's
    /// documentation).
    pub fn into_map(self, map: &mut HeaderMap) {
        let Self { head, fields, own } = self;
        let own = own.filter(|(name, _)| !replaced(map, name.as_str().as_bytes()));
        let own_name = own.as_ref().map(|(name, _)| name.as_str().as_bytes());
        let kept: Vec<(HeaderName, HeaderValue)> = fields
            .iter()
            .map(|field| (field, &head[field.name.0..field.name.1]))
            .filter(|(_, name)| !superseded(map, own_name, name))
            .filter_map(|(field, name)| {
                let name = HeaderName::from_bytes(name).ok()?;
                let value =
                    HeaderValue::from_maybe_shared(head.slice(field.value.0..field.value.1));
                Some((name, value.ok()?))
            })
            .collect();
        map.reserve(kept.len() + usize::from(own.is_some()));
        for (name, value) in kept {
            map.append(name, value);
        }
        if let Some((name, value)) = own {
            map.insert(name.clone(), value);
        }
    }

    fn name(&self, field: &FieldIndex) -> &[u8] {
        &self.head[field.name.0..field.name.1]
    }
}

/// Whether the gateway replaces an upstream's field named `name`: `map` holds that name, or it
/// is `own`'s, the field set with the upstream's ([`HeadFields::set`]).
fn superseded(map: &HeaderMap, own: Option<&[u8]>, name: &[u8]) -> bool {
    replaced(map, name) || own.is_some_and(|own| own.eq_ignore_ascii_case(name))
}

/// Whether `map` holds a field named `name` (in any case). The map is the gateway's own few
/// fields, so a walk costs less than a hashed lookup.
fn replaced(map: &HeaderMap, name: &[u8]) -> bool {
    map.keys()
        .any(|held| held.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// Where `part`, a slice of the buffer that starts at address `base`, lies in it.
pub(crate) fn span(base: usize, part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base;
    (start, start + part.len())
}

/// Writes the field line `name: value`.
pub(crate) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line (`<hex>\r\n`), written in place: no string is allocated per chunk.
pub(crate) fn chunk_size_line(out: &mut Vec<u8>, len: usize) {
    use std::io::Write as _;
    // Writing to a `Vec` cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// Why a body could not be written: its source failed, or the connection did.
#[derive(Debug)]
pub(crate) enum BodyWriteError<E> {
    Body(E),
    Io(io::Error),
}

impl<E> From<io::Error> for BodyWriteError<E> {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// Writes `head` (already in `write`) and `body` after it, framed as chunks when `chunked`
/// (else as they come: the head gave the length), and flushes. A first frame up to
/// [`COALESCE_LIMIT`] that is ready at once goes in the head's write; trailers are dropped (the
/// peer was not told to expect them).
pub(crate) async fn write_body<T, B>(
    io: &mut T,
    write: &mut Vec<u8>,
    mut body: Pin<&mut B>,
    chunked: bool,
) -> Result<(), BodyWriteError<B::Error>>
where
    T: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
{
    let mut pending = None;
    let first = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
    match first {
        Poll::Ready(Some(frame)) => match frame.map_err(BodyWriteError::Body)?.into_data() {
            Ok(data) if data.len() <= COALESCE_LIMIT => encode_data(write, &data, chunked),
            Ok(data) => pending = Some(data),
            Err(_trailers) => {}
        },
        Poll::Ready(None) => {
            if chunked {
                write.extend_from_slice(b"0\r\n\r\n");
            }
            io.write_all(write).await?;
            return Ok(io.flush().await?);
        }
        Poll::Pending => {}
    }
    io.write_all(write).await?;
    if let Some(data) = pending {
        write_data(io, write, &data, chunked).await?;
    }
    loop {
        io.flush().await?;
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            Some(frame) => {
                if let Ok(data) = frame.map_err(BodyWriteError::Body)?.into_data() {
                    write_data(io, write, &data, chunked).await?;
                }
            }
            None => break,
        }
    }
    if chunked {
        io.write_all(b"0\r\n\r\n").await?;
    }
    Ok(io.flush().await?)
}

/// Appends one data frame of a body to `out`, as a chunk when `chunked`.
fn encode_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        chunk_size_line(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Writes one data frame of a body, as a chunk when `chunked`: the size line (in `scratch`),
/// data and CRLF in one vectored write.
async fn write_data<T: AsyncWrite + Unpin>(
    io: &mut T,
    scratch: &mut Vec<u8>,
    data: &Bytes,
    chunked: bool,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if chunked {
        scratch.clear();
        chunk_size_line(scratch, data.len());
        let mut chunk = scratch[..].chain(&data[..]).chain(&b"\r\n"[..]);
        return io.write_all_buf(&mut chunk).await;
    }
    io.write_all(data).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

    /// The fields `fields` writes besides `map`'s, as `name: value` lines.
    fn written(fields: &HeadFields, map: &HeaderMap) -> Vec<String> {
        let mut lines = Vec::new();
        fields.each_not_in(map, |name, value| {
            lines.push(format!(
                "{}: {}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            ))
        });
        lines
    }

    #[test]
    fn list_items_are_trimmed_and_empty_ones_skipped() {
        let items: Vec<&[u8]> = list_items(b" keep-alive, ,X-Hop\t,, close ").collect();
        assert_eq!(items, [&b"keep-alive"[..], b"X-Hop", b"close"]);
        assert_eq!(list_items(b" , ").count(), 0);
    }

    #[test]
    fn head_fields_go_into_a_map_but_those_it_replaces() {
        let head = Bytes::from_static(b"X-Up: 1X-Request-Id: theirsx-up: 2");
        let base = head.as_ptr() as usize;
        let at = |name: (usize, usize), value: (usize, usize)| {
            FieldIndex::at(base, &head[name.0..name.1], &head[value.0..value.1])
        };
        let fields = HeadFields::new(
            head.clone(),
            vec![
                at((0, 4), (6, 7)),
                at((7, 19), (21, 27)),
                at((27, 31), (33, 34)),
            ],
        );
        let mut map = HeaderMap::new();
        map.insert("x-request-id", HeaderValue::from_static("ours"));
        assert_eq!(written(&fields, &map), ["X-Up: 1", "x-up: 2"]);
        fields.into_map(&mut map);
        assert_eq!(map["x-request-id"], "ours");
        let ups: Vec<_> = map.get_all("x-up").iter().collect();
        assert_eq!(ups, ["1", "2"]);
        assert_eq!(map.len(), 3);

        // The field the gateway set with them replaces theirs, as the map's does.
        let mut fields = HeadFields::new(
            head.clone(),
            vec![at((0, 4), (6, 7)), at((7, 19), (21, 27))],
        );
        fields.set(&REQUEST_ID, HeaderValue::from_static("set"));
        assert_eq!(
            written(&fields, &HeaderMap::new()),
            ["X-Up: 1", "x-request-id: set"]
        );
        let mut map = HeaderMap::new();
        fields.into_map(&mut map);
        assert_eq!(map["x-request-id"], "set");
        assert_eq!(map.len(), 2);
        // The map's still wins over both.
        let mut fields = HeadFields::new(head.clone(), vec![at((7, 19), (21, 27))]);
        fields.set(&REQUEST_ID, HeaderValue::from_static("set"));
        let mut map = HeaderMap::new();
        map.insert("x-request-id", HeaderValue::from_static("ours"));
        assert!(written(&fields, &map).is_empty());
        fields.into_map(&mut map);
        let ids: Vec<_> = map.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["ours"]);
    }

    #[test]
    fn chunks_carry_their_size_in_hex_and_empty_frames_write_nothing() {
        let mut out = Vec::new();
        encode_data(&mut out, &[b'x'; 26], true);
        encode_data(&mut out, b"", true);
        encode_data(&mut out, b"raw", false);
        let mut expected = b"1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\nraw");
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn a_written_chunk_matches_an_encoded_one() {
        let data = Bytes::from(vec![b'y'; 300]);
        let (mut written, mut encoded) = (Vec::new(), Vec::new());
        write_data(&mut written, &mut Vec::new(), &data, true)
            .await
            .unwrap();
        encode_data(&mut encoded, &data, true);
        assert_eq!(written, encoded);
        assert!(written.starts_with(b"12c\r\n"));
    }
}
