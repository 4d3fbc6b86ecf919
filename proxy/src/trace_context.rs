//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) on forwarded requests.
//!
//! The gateway is one hop of a trace. A request that arrives with one valid `traceparent`
//! continues its trace: the upstream gets the same trace id, the caller's flags (only the
//! `sampled` bit, the one flag version 00 defines) and a fresh parent id that stands for the
//! gateway's hop, with `tracestate` passed on unchanged. A request without one, or with an
//! invalid one (or several), starts a new trace and loses any `tracestate`, which belongs to
//! the `traceparent` it came with.
//!
//! Off by default (`ProxyConfig::trace_context`): continuing or starting a trace costs ~1,700
//! instructions of a ~34,500-instruction proxied request (callgrind, see BENCHMARKS.md), more
//! than a feature few deployments use should add to every request. Off, both headers pass
//! through untouched like any other.
//!
//! A new trace's id is the request's `x-request-id` when that is 32 lowercase hex digits, as
//! the ids the gateway generates itself are, so logs found by request id and traces found by
//! trace id are the same requests. Parsing is strict (lowercase hex, non-zero ids, version
//! `ff` refused, version 00 exactly 55 characters, later versions read by version 00's layout
//! as the spec asks) and allocates nothing; the one allocation is the forwarded header value.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The W3C `traceparent` header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C `tracestate` header: vendor data that travels with `traceparent`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version 00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const LEN: usize = 55;
/// The `sampled` flag, the only flag version 00 defines.
pub(crate) const SAMPLED: u8 = 0x01;

/// One parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The whole trace's id; never zero.
    pub trace_id: u128,
    /// The id of the span this request is a child of; never zero.
    pub parent_id: u64,
    /// Trace flags as received.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when the spec says it must be ignored.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let version = hex(value.get(0..2)?)?;
        // Version ff is invalid; version 00 has exactly this length; a later version may be
        // longer, but only with a `-` after the fields this version knows.
        if version == 0xff
            || (version == 0 && value.len() != LEN)
            || value.get(LEN).is_some_and(|&next| next != b'-')
        {
            return None;
        }
        let dashes = [value.get(2)?, value.get(35)?, value.get(52)?];
        if dashes.iter().any(|&&dash| dash != b'-') {
            return None;
        }
        let trace_id = hex(value.get(3..35)?)?;
        let parent_id = u64::try_from(hex(value.get(36..52)?)?).ok()?;
        let flags = u8::try_from(hex(value.get(53..55)?)?).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The `traceparent` for the next hop: the same trace and flags (only those version 00
    /// defines), and a new random parent id standing for this hop.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            parent_id: random_nonzero_u64(),
            flags: self.flags & SAMPLED,
        }
    }

    /// Starts a trace for a request that arrived without a valid `traceparent`: its id is
    /// the request id when that is 32 lowercase hex digits (not all zero), else random. Not
    /// sampled: the gateway records nothing unless told to.
    pub fn start(request_id: &HeaderValue) -> Self {
        let from_request_id = match request_id.as_bytes() {
            id if id.len() == 32 => hex(id).filter(|&id| id != 0),
            _ => None,
        };
        Self {
            trace_id: from_request_id.unwrap_or_else(random_nonzero_u128),
            parent_id: random_nonzero_u64(),
            flags: 0,
        }
    }

    /// The version 00 text, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub fn to_text(&self) -> [u8; LEN] {
        let mut text = [b'-'; LEN];
        text[0] = b'0';
        text[1] = b'0';
        // Each slice is twice its bytes' length, the one way `encode_to_slice` can fail.
        let _ = hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut text[3..35]);
        let _ = hex::encode_to_slice(self.parent_id.to_be_bytes(), &mut text[36..52]);
        let _ = hex::encode_to_slice([self.flags], &mut text[53..55]);
        text
    }

    /// The version 00 text as a header value.
    pub fn to_header(&self) -> HeaderValue {
        // Hex digits and dashes are always a valid header value.
        HeaderValue::from_bytes(&self.to_text())
            .unwrap_or_else(|_| HeaderValue::from_static("00-00000000000000000000000000000000"))
    }
}

/// The request's own `traceparent`, when it has exactly one and that one is valid.
pub(crate) fn incoming(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (Some(only), None) => TraceParent::parse(only.as_bytes()),
        // None at all, or several: the spec gives several no meaning.
        _ => None,
    }
}

/// Sets the `traceparent` the upstream gets (and drops a `tracestate` that has no valid
/// `traceparent` to go with), as the module header describes.
pub(crate) fn propagate(headers: &mut HeaderMap, request_id: &HeaderValue) {
    let next = match incoming(headers) {
        Some(parent) => parent.child(),
        None => {
            headers.remove(&TRACESTATE);
            TraceParent::start(request_id)
        }
    };
    headers.insert(TRACEPARENT.clone(), next.to_header());
}

/// Sets `hop` as the `traceparent` the upstream gets: the gateway's own span when spans are
/// exported (`spans.rs`). `tracestate` goes on only when `hop` continues the request's trace.
pub(crate) fn forward_as(headers: &mut HeaderMap, hop: TraceParent) {
    if incoming(headers).map(|parent| parent.trace_id) != Some(hop.trace_id) {
        headers.remove(&TRACESTATE);
    }
    headers.insert(TRACEPARENT.clone(), hop.to_header());
}

/// Lowercase hex digits (at most 32) as a number; `None` on any other character.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, &digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

fn random_nonzero_u64() -> u64 {
    rand::random::<u64>().max(1)
}

fn random_nonzero_u128() -> u128 {
    rand::random::<u128>().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_spec_example_parses_and_prints_back() {
        let parent = TraceParent::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.to_header(), EXAMPLE);
    }

    #[test]
    fn invalid_values_are_refused() {
        for value in [
            "",
            "00",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero trace id, all-zero parent id.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with anything after it.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Wrong separators, short fields, non-hex flags.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            // A later version longer than 55 characters without a dash after them.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(value.as_bytes()), None, "{value}");
        }
    }

    #[test]
    fn later_versions_are_read_by_version_00_layout() {
        let longer = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-adds";
        let parent = TraceParent::parse(longer.as_bytes()).expect("valid");
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        // Forwarded as version 00 with only the flags version 00 knows.
        let child = parent.child();
        assert_eq!(child.flags, 1);
        assert!(child.to_header().as_bytes().starts_with(b"00-4bf92f35"));
    }

    #[test]
    fn a_continued_trace_keeps_its_id_and_state_with_a_new_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=abc"));
        propagate(&mut headers, &HeaderValue::from_static("my-request"));
        let sent = TraceParent::parse(headers[&TRACEPARENT].as_bytes()).expect("valid");
        assert_eq!(sent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(sent.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(sent.flags, 1);
        assert_eq!(headers[&TRACESTATE], "vendor=abc");
    }

    #[test]
    fn a_new_trace_takes_a_hex_request_id_and_drops_stray_state() {
        let request_id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static("garbage"));
        headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=abc"));
        propagate(&mut headers, &request_id);
        let sent = TraceParent::parse(headers[&TRACEPARENT].as_bytes()).expect("valid");
        assert_eq!(sent.trace_id, 0x0123456789abcdef0123456789abcdef);
        assert_eq!(sent.flags, 0);
        assert!(!headers.contains_key(&TRACESTATE));

        // A request id that is no trace id: a random one.
        let mut headers = HeaderMap::new();
        propagate(&mut headers, &HeaderValue::from_static("my-request"));
        assert!(TraceParent::parse(headers[&TRACEPARENT].as_bytes()).is_some());
    }

    #[test]
    fn several_traceparent_fields_start_a_new_trace() {
        let mut headers = HeaderMap::new();
        headers.append(&TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        headers.append(&TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        propagate(&mut headers, &HeaderValue::from_static("my-request"));
        assert_eq!(headers.get_all(&TRACEPARENT).iter().count(), 1);
        let sent = TraceParent::parse(headers[&TRACEPARENT].as_bytes()).expect("valid");
        assert_ne!(sent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    }
}
