//! Forwarding a request to its route's upstream and streaming the answer back.
//!
//! Header hygiene, in both directions: hop-by-hop headers go (RFC 9110 §7.6.1: `Connection`
//! and every header it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`,
//! `Upgrade`, `Trailer`; a response's are left out as its head is parsed, `upstream/wire.rs`,
//! and its fields reach the client as they came, `h1::HeadFields`). Towards the upstream,
//! additionally: every inbound `x-keygate-*` header
//! is removed (no spoofing) before the gateway adds its own, the credential is removed unless
//! the route forwards it, the `Cookie` fields of an HTTP/2 request are joined into the one
//! line HTTP/1.1 allows (RFC 9113 §8.2.3), `X-Forwarded-*` are set, `Forwarded` (RFC 7239)
//! gets this hop appended like `X-Forwarded-For`, `traceparent` is continued or started when
//! `trace_context` is on (`trace_context.rs`), and `Host` becomes the upstream's authority.
//! The path is the one the handler normalised and routed by; it is not changed here.
//! Bodies stream both ways and are never buffered whole. Upgrades (e.g. WebSocket) are not
//! proxied: the `Upgrade` header is hop-by-hop and removed.

use std::borrow::Cow;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Either;

use crate::client_body::ClientBody;
use crate::credential::CredentialHeaders;
use crate::error::error_chain;
use crate::fields;
use crate::h1;
use crate::idle_body::IdleBody;
use crate::metrics::{Metrics, UpstreamFailure};
use crate::replica::KEY_ID_TEXT_LEN;
use crate::response::{self, ProxyBody, REQUEST_ID, codes};
use crate::route::Route;
use crate::server::Peer;
use crate::trace_context;
use crate::upstream::{AddedFields, UpstreamError};
use crate::verify::Grant;

/// Header carrying the verified key's id to the upstream.
pub static KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
/// Header carrying the verified key's owner to the upstream.
pub static OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
/// Header carrying a verified session's user to the upstream.
pub static USER_ID: HeaderName = HeaderName::from_static("x-keygate-user-id");
/// Header carrying a verified session's id to the upstream.
pub static SESSION_ID: HeaderName = HeaderName::from_static("x-keygate-session-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = header::FORWARDED;
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the gateway knows about a request besides the request itself.
pub(crate) struct Forwarding<'a> {
    pub route: &'a Route,
    pub peer: &'a Peer,
    /// Moved into the forwarded response at the end, not cloned.
    pub request_id: HeaderValue,
    /// The verified key or session, on routes that verify.
    pub grant: Option<&'a Grant>,
}

/// Sends requests to their route's upstream over its pool of keep-alive connections.
pub(crate) struct Forwarder {
    response_timeout: Duration,
    request_body_timeout: Duration,
    credentials: CredentialHeaders,
    metrics: Metrics,
    /// Whether `traceparent` is continued or started (`ProxyConfig::trace_context`).
    trace_context: bool,
}

impl Forwarder {
    /// `response_timeout` bounds each call from sending the request to the response head;
    /// `request_body_timeout` how long the client's body may send nothing while it streams up.
    pub fn new(
        response_timeout: Duration,
        request_body_timeout: Duration,
        credentials: CredentialHeaders,
        metrics: Metrics,
    ) -> Self {
        Self {
            response_timeout,
            request_body_timeout,
            credentials,
            metrics,
            trace_context: false,
        }
    }

    /// With `enabled`, every forwarded request gets a `traceparent` (`trace_context.rs`).
    pub fn propagating_trace_context(mut self, enabled: bool) -> Self {
        self.trace_context = enabled;
        self
    }

    /// Sends `request` upstream; answers 502/504 (JSON) when the upstream cannot be reached or
    /// does not answer in time.
    pub async fn forward(
        &self,
        request: Request<ClientBody>,
        forwarding: Forwarding<'_>,
    ) -> Response<ProxyBody> {
        let route = forwarding.route;
        // The request line the upstream gets is in origin form (`/path?query`, from the URI
        // whatever form the client used): the client writes it (`upstream/wire.rs`), so the URI
        // is not rebuilt here.
        let (mut parts, body) = request.into_parts();
        let headers = &mut parts.headers;
        remove_hop_by_hop(headers);
        remove_keygate_headers(headers);
        if !route.forward_credential {
            self.credentials.strip(headers);
        }
        join_cookie_fragments(headers);
        if self.trace_context {
            trace_context::propagate(headers, &forwarding.request_id);
        }
        // The fields the gateway adds are written into the head by the client, each replacing
        // the request's own of that name (`AddedFields`); the request's map is only read now.
        let headers = &parts.headers;
        let [host, had_forwarded_for, had_forwarded] = fields::first(
            headers,
            [&header::HOST, &X_FORWARDED_FOR, &header::FORWARDED],
        );
        let authority;
        let original_host = match host {
            Some(host) => Some(host),
            None => {
                authority = parts
                    .uri
                    .authority()
                    .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
                authority.as_ref()
            }
        };
        let forwarded_for = forwarded_for(headers, had_forwarded_for.is_some(), forwarding.peer);
        let forwarded = forwarded(headers, had_forwarded.is_some(), forwarding.peer);
        let mut added = AddedFields::new(&route.upstream_host);
        if let Some(forwarded_for) = &forwarded_for {
            added.push(&X_FORWARDED_FOR, forwarded_for);
        }
        added.push(&FORWARDED, &forwarded);
        added.push(&X_FORWARDED_PROTO, &forwarding.peer.forwarded_proto);
        if let Some(host) = original_host {
            added.push(&X_FORWARDED_HOST, host);
        }
        added.push(&REQUEST_ID, &forwarding.request_id);
        let mut key_id = [0u8; KEY_ID_TEXT_LEN];
        if let Some(grant) = forwarding.grant {
            let Some(identity) = identity_fields(grant, &mut key_id) else {
                // Forwarding without the owner could let the upstream take the request for
                // someone else's; refuse instead.
                return response::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    codes::INTERNAL,
                    "the key's owner cannot be sent as a header",
                    &forwarding.request_id,
                );
            };
            for (name, value) in identity {
                added.push_bytes(name, value);
            }
        }

        let started = tokio::time::Instant::now();
        let body = IdleBody::new(body, self.request_body_timeout);
        let outcome = route
            .pool
            .send(&parts, body, &added, started + self.response_timeout)
            .await;
        self.metrics.upstream_duration.record(started.elapsed());
        match outcome {
            // The upstream's fields are in the body, hop-by-hop ones left out when the head
            // was parsed (`upstream/wire.rs`). The request id goes with them, not into the
            // map, and replaces any of the upstream's (`h1::HeadFields`).
            Ok(mut upstream) => {
                upstream
                    .body_mut()
                    .get_mut()
                    .fields_mut()
                    .set(&REQUEST_ID, forwarding.request_id);
                upstream.map(Either::Left)
            }
            Err(error @ UpstreamError::Busy { .. }) => {
                tracing::warn!(upstream = %route.upstream, error = %error, "upstream busy");
                self.metrics.upstream_failed(UpstreamFailure::Busy);
                let mut response = response::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::UPSTREAM_BUSY,
                    "every connection to the upstream is busy",
                    &forwarding.request_id,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            // The client's own body broke off or was malformed (say, a chunk size that
            // overflows) while it streamed to the upstream: the client's fault, not the
            // upstream's.
            Err(error @ UpstreamError::RequestBody(_)) => {
                tracing::debug!(upstream = %route.upstream, error = %error_chain(&error), "request body failed while forwarding");
                response::error(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "the request body could not be read",
                    &forwarding.request_id,
                )
            }
            Err(UpstreamError::Timeout) => {
                tracing::warn!(upstream = %route.upstream, timeout = ?self.response_timeout, "upstream timed out");
                self.metrics.upstream_failed(UpstreamFailure::Timeout);
                response::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    codes::UPSTREAM_TIMEOUT,
                    "the upstream did not answer in time",
                    &forwarding.request_id,
                )
            }
            Err(error) => {
                tracing::warn!(upstream = %route.upstream, error = %error_chain(&error), "upstream unavailable");
                self.metrics.upstream_failed(UpstreamFailure::Unavailable);
                response::error(
                    StatusCode::BAD_GATEWAY,
                    codes::UPSTREAM_UNAVAILABLE,
                    "the upstream could not be reached or closed the connection",
                    &forwarding.request_id,
                )
            }
        }
    }
}

/// The verified identity as header fields: a key's id (written into `key_id`) and owner, or a
/// session's user and id. `None` when a key's owner is not a valid header value. A session's
/// values were built when its signature was verified; an owner's once per owner (`owners.rs`).
pub(crate) fn identity_fields<'a>(
    grant: &'a Grant,
    key_id: &'a mut [u8; KEY_ID_TEXT_LEN],
) -> Option<[(&'static HeaderName, &'a [u8]); 2]> {
    match grant {
        Grant::Key(grant) => {
            let owner = grant.owner_header()?;
            *key_id = grant.key_id_text();
            Some([(&KEY_ID, &key_id[..]), (&OWNER, owner.as_bytes())])
        }
        Grant::Session(session) => Some([
            (&USER_ID, session.user_id_header().as_bytes()),
            (&SESSION_ID, session.session_id_header().as_bytes()),
        ]),
    }
}

/// Adds the verified identity to `headers` (an authz answer's); false when a key's owner is not
/// a valid header value.
pub(crate) fn add_grant_headers(headers: &mut HeaderMap, grant: &Grant) -> bool {
    let mut key_id = [0u8; KEY_ID_TEXT_LEN];
    let Some(identity) = identity_fields(grant, &mut key_id) else {
        return false;
    };
    for (name, value) in identity {
        match HeaderValue::from_bytes(value) {
            Ok(value) => {
                headers.insert(name.clone(), value);
            }
            Err(_) => return false,
        }
    }
    true
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those `Connection` names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none of them: one pass over the few names present is cheaper than
    // seven hashed removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| h1::list_items(value.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// [`h1::HOP_BY_HOP`] as names (a test holds the two lists equal). References to `http`'s
/// constants where the name is standard, so that a comparison folds to an enum comparison: a
/// `static` array of the same names cost ~170 instructions a request more (BENCHMARKS.md,
/// 2026-12-02).
const HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::TRAILER,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Removes every `x-keygate-*` header: only the gateway may set them.
fn remove_keygate_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-keygate-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// `X-Forwarded-For` with the client's address after any the request carried (`had`: whether
/// it carried one).
fn forwarded_for<'a>(
    headers: &HeaderMap,
    had: bool,
    peer: &'a Peer,
) -> Option<Cow<'a, HeaderValue>> {
    if !had && let Some(client) = &peer.forwarded_for {
        // The common case: the connection's preformatted address, shared, no formatting.
        return Some(Cow::Borrowed(client));
    }
    let previous: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let client = peer.addr.ip();
    let joined = if previous.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", previous.join(", "))
    };
    HeaderValue::from_str(&joined).ok().map(Cow::Owned)
}

/// Joins several `Cookie` fields into one with `"; "`: HTTP/2 clients may split the cookies
/// into one field each (RFC 9113 §8.2.3), and an HTTP/1.1 upstream expects one line (RFC 6265
/// §5.4). Empty fields are dropped.
fn join_cookie_fragments(headers: &mut HeaderMap) {
    // Two counters: when no name has a second value, there is nothing to join (the usual case,
    // and then no lookup is needed).
    if headers.len() == headers.keys_len() {
        return;
    }
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for field in headers.get_all(header::COOKIE) {
        let field = field.as_bytes().trim_ascii();
        if field.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(field);
    }
    // The bytes all came from valid header values, so this cannot fail; if it somehow did,
    // the fields are dropped rather than forwarded unjoined.
    match HeaderValue::from_bytes(&joined) {
        Ok(cookie) if !joined.is_empty() => {
            headers.insert(header::COOKIE, cookie);
        }
        _ => {
            headers.remove(header::COOKIE);
        }
    }
}

/// `Forwarded` (RFC 7239) with this hop appended: `for=<client>;proto=<http|https>`, the address
/// quoted and bracketed when it is IPv6 (`for="[2001:db8::1]"`). Earlier elements are kept, as
/// with `X-Forwarded-For`: only the last one is the gateway's, and the upstream must not trust
/// the ones before it more than it trusts the client. `had`: whether the request carried one.
fn forwarded<'a>(headers: &HeaderMap, had: bool, peer: &'a Peer) -> Cow<'a, HeaderValue> {
    if !had {
        return Cow::Borrowed(&peer.forwarded);
    }
    let mut joined = BytesMut::new();
    for value in headers.get_all(header::FORWARDED) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.forwarded.as_bytes());
    // Earlier values are valid header values, so this does not fail; if it did, the client's
    // elements would be dropped rather than forwarded without the gateway's own after them.
    HeaderValue::from_maybe_shared(joined.freeze())
        .map_or(Cow::Borrowed(&peer.forwarded), Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_names_are_the_wire_lists() {
        let names: Vec<&str> = HOP_BY_HOP.iter().map(|name| name.as_str()).collect();
        assert_eq!(names, h1::HOP_BY_HOP);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x-checksum"),
            ("content-type", "text/plain"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["content-type"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        let peer = Peer::new("192.0.2.7:5000".parse().expect("addr"), false);
        let value = forwarded_for(&headers, true, &peer).expect("a value");
        assert_eq!(*value, "10.0.0.1, 10.0.0.2, 192.0.2.7");
        // Without earlier hops, the connection's preformatted address.
        let value = forwarded_for(&HeaderMap::new(), false, &peer).expect("a value");
        assert!(matches!(value, Cow::Borrowed(_)));
        assert_eq!(*value, "192.0.2.7");
        let v6 = Peer::new("[2001:db8::1]:443".parse().expect("addr"), true);
        let value = forwarded_for(&HeaderMap::new(), false, &v6).expect("a value");
        assert_eq!(*value, "2001:db8::1");
    }

    #[test]
    fn forwarded_gets_this_hop_appended() {
        let v4 = Peer::new("192.0.2.7:5000".parse().expect("addr"), false);
        assert_eq!(
            *forwarded(&HeaderMap::new(), false, &v4),
            "for=192.0.2.7;proto=http"
        );

        let mut headers = HeaderMap::new();
        headers.append(
            header::FORWARDED,
            HeaderValue::from_static("for=198.51.100.1;proto=https"),
        );
        headers.append(header::FORWARDED, HeaderValue::from_static("for=unknown"));
        let v6 = Peer::new("[2001:db8::1]:443".parse().expect("addr"), true);
        assert_eq!(
            *forwarded(&headers, true, &v6),
            "for=198.51.100.1;proto=https, for=unknown, for=\"[2001:db8::1]\";proto=https"
        );

        let v4_tls = Peer::new("192.0.2.7:5001".parse().expect("addr"), true);
        assert_eq!(
            *forwarded(&HeaderMap::new(), false, &v4_tls),
            "for=192.0.2.7;proto=https"
        );
    }

    #[test]
    fn http2_cookie_fields_become_one_line() {
        let mut headers = HeaderMap::new();
        for cookie in ["a=1", "b=2", " ", "c=3; d=4"] {
            headers.append(header::COOKIE, HeaderValue::from_static(cookie));
        }
        join_cookie_fragments(&mut headers);
        let cookies: Vec<&HeaderValue> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, vec!["a=1; b=2; c=3; d=4"]);

        // One field, or none, is left as it is.
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1;b=2"));
        join_cookie_fragments(&mut one);
        assert_eq!(one[header::COOKIE], "a=1;b=2");
        // Also when another header has several values.
        one.append(header::ACCEPT, HeaderValue::from_static("text/plain"));
        one.append(header::ACCEPT, HeaderValue::from_static("text/html"));
        join_cookie_fragments(&mut one);
        assert_eq!(one.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(one[header::COOKIE], "a=1;b=2");
        let mut none = HeaderMap::new();
        join_cookie_fragments(&mut none);
        assert!(none.is_empty());
    }
}
