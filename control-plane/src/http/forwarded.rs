//! Which address a passkey API request comes from, when the control plane sits behind a TLS
//! proxy (WebAuthn needs HTTPS) that makes every request arrive from the proxy's address.
//!
//! Only when the TCP peer is inside `trusted_proxies` are the forwarding headers read;
//! from anyone else they are ignored, since any client can write them.
//!
//! - `X-Forwarded-For: client, proxy1, proxy2` (every line, in order): each proxy appends the
//!   address it received the request from, so only the entries on the right were written by
//!   proxies we trust. The client is the **rightmost address that is not itself a trusted
//!   proxy**; anything left of it was written by the client (or by proxies we do not know) and
//!   may be forged. If every entry is a trusted proxy, the leftmost one is the client.
//! - `Forwarded: for=…` (RFC 7239): the same rule over the `for` parameter of each element;
//!   values may be quoted, IPv6 ones bracketed, with a port (`for="[2001:db8::1]:4711"`).
//!
//! Anything off falls back to the peer's own address (and is logged at debug, never louder: a
//! client can cause it at will): an entry that is not an address (`unknown`, an obfuscated
//! `_node`, garbage) reached before an untrusted address is found, or both headers present
//! and naming different clients. The second rule is what makes a header the proxy does not
//! manage harmless: a proxy that appends `X-Forwarded-For` passes a client's own `Forwarded`
//! through untouched, and believing that would let the client pick its bucket. Falling back
//! puts such a client in the proxy's bucket, never in a fresh one of its choosing.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use axum::http::header::FORWARDED;

use crate::cidr::Cidr;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
}

/// A forwarding header that cannot be followed to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    /// Not text, an empty entry, or not an address (`unknown`, `_hidden`, garbage).
    NotAnAddress,
    /// A `Forwarded` element without a `for` parameter.
    NoFor,
}

impl TrustedProxies {
    pub fn new(ranges: Vec<Cidr>) -> Self {
        Self { ranges }
    }

    /// Whether `addr` is one of the trusted proxies.
    pub fn trusts(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(addr))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy and its
    /// forwarding headers name a client (module docs).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded_for = self.header_client(headers, X_FORWARDED_FOR, x_forwarded_for_hops);
        let forwarded = self.header_client(headers, FORWARDED.as_str(), forwarded_hops);
        match (forwarded_for, forwarded) {
            (None, None) => peer,
            (Some(Ok(client)), None) | (None, Some(Ok(client))) => client,
            (Some(Ok(one)), Some(Ok(other))) if one == other => one,
            (Some(Ok(one)), Some(Ok(other))) => {
                tracing::debug!(%peer, x_forwarded_for = %one, forwarded = %other, "X-Forwarded-For and Forwarded name different clients; using the proxy's address");
                peer
            }
            (Some(Err(malformed)), _) | (_, Some(Err(malformed))) => {
                tracing::debug!(%peer, ?malformed, "unusable forwarding header from a trusted proxy; using its address");
                peer
            }
        }
    }

    /// The client that header `name` names, walking its hops from the right; `None` when the
    /// request has no such header.
    fn header_client(
        &self,
        headers: &HeaderMap,
        name: &str,
        hops: fn(&str) -> Vec<Result<IpAddr, Malformed>>,
    ) -> Option<Result<IpAddr, Malformed>> {
        let mut values = headers.get_all(name).iter().peekable();
        values.peek()?;
        let mut all = Vec::new();
        for value in values {
            match value.to_str() {
                Ok(text) => all.extend(hops(text)),
                Err(_) => all.push(Err(Malformed::NotAnAddress)),
            }
        }
        Some(self.rightmost_untrusted(&all))
    }

    /// The rightmost hop that is not a trusted proxy; the leftmost when all are. A malformed
    /// hop met before that is an error; one left of it was the client's to write and is
    /// ignored.
    fn rightmost_untrusted(&self, hops: &[Result<IpAddr, Malformed>]) -> Result<IpAddr, Malformed> {
        let mut leftmost = Err(Malformed::NotAnAddress);
        for hop in hops.iter().rev() {
            let addr = (*hop)?;
            if !self.trusts(addr) {
                return Ok(addr);
            }
            leftmost = Ok(addr);
        }
        leftmost
    }
}

/// The hops of one `X-Forwarded-For` value: comma-separated addresses.
fn x_forwarded_for_hops(value: &str) -> Vec<Result<IpAddr, Malformed>> {
    value.split(',').map(node).collect()
}

/// The `for` of each element of one `Forwarded` value (RFC 7239 section 4:
/// `element *( "," element )`, `element = pair *( ";" pair )`, values tokens or quoted
/// strings, which may hold `,` and `;`).
fn forwarded_hops(value: &str) -> Vec<Result<IpAddr, Malformed>> {
    split_outside_quotes(value, ',')
        .into_iter()
        .map(|element| {
            let node_value = split_outside_quotes(element, ';')
                .into_iter()
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .map(|(_, value)| unquote(value.trim()))
                .ok_or(Malformed::NoFor)?;
            node(&node_value)
        })
        .collect()
}

/// `text` split at each `separator` that is not inside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A token as it is, a quoted string without its quotes and escapes.
fn unquote(value: &str) -> String {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return value.to_owned();
    };
    let mut unquoted = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if c == '\\' && !escaped {
            escaped = true;
        } else {
            unquoted.push(c);
            escaped = false;
        }
    }
    unquoted
}

/// One node: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:8080` (the port is dropped). IPv4-mapped IPv6 becomes IPv4.
fn node(text: &str) -> Result<IpAddr, Malformed> {
    let text = text.trim();
    let addr = if let Ok(addr) = text.parse::<IpAddr>() {
        addr
    } else if let Ok(socket) = text.parse::<SocketAddr>() {
        socket.ip()
    } else if let Some(inner) = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        inner.parse().map_err(|_| Malformed::NotAnAddress)?
    } else {
        return Err(Malformed::NotAnAddress);
    };
    Ok(addr.to_canonical())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const PROXY: &str = "10.0.0.5";

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let forged = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        assert_eq!(
            trusted.client(ip("203.0.113.9"), &forged),
            ip("203.0.113.9")
        );
        // No trusted proxies at all: nobody's headers count.
        assert_eq!(proxies(&[]).client(ip(PROXY), &forged), ip(PROXY));
    }

    #[test]
    fn the_rightmost_untrusted_x_forwarded_for_entry_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let client = |value: &'static str| {
            trusted.client(ip(PROXY), &headers(&[("x-forwarded-for", value)]))
        };
        assert_eq!(client("203.0.113.9"), ip("203.0.113.9"));
        // The client wrote the left part; the proxy appended what it saw.
        assert_eq!(client("1.2.3.4, 203.0.113.9"), ip("203.0.113.9"));
        // A chain of trusted proxies is skipped.
        assert_eq!(client("1.2.3.4, 203.0.113.9, 10.1.1.1"), ip("203.0.113.9"));
        // Garbage left of the client is the client's own business.
        assert_eq!(client("garbage, , 203.0.113.9"), ip("203.0.113.9"));
        // Ports, brackets and IPv4-mapped IPv6.
        assert_eq!(client("203.0.113.9:5555"), ip("203.0.113.9"));
        assert_eq!(client("[2001:db8::7]:443"), ip("2001:db8::7"));
        assert_eq!(client("2001:db8::7"), ip("2001:db8::7"));
        assert_eq!(client("::ffff:203.0.113.9"), ip("203.0.113.9"));
        // Every hop trusted: the leftmost is where the request began.
        assert_eq!(client("10.9.9.9, 10.1.1.1"), ip("10.9.9.9"));
        // Malformed before any untrusted address: the proxy's own address.
        assert_eq!(client("203.0.113.9, unknown"), ip(PROXY));
        assert_eq!(client("203.0.113.9,"), ip(PROXY));
        assert_eq!(client(""), ip(PROXY));
    }

    #[test]
    fn every_x_forwarded_for_line_counts_in_order() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let lines = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
        ]);
        assert_eq!(trusted.client(ip(PROXY), &lines), ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_follows_the_same_rule() {
        let trusted = proxies(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let client =
            |value: &'static str| trusted.client(ip(PROXY), &headers(&[("forwarded", value)]));
        assert_eq!(client("for=203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(
            client("for=1.2.3.4, for=203.0.113.9;proto=https;by=10.0.0.5"),
            ip("203.0.113.9")
        );
        assert_eq!(
            client(r#"for="[2001:db8:cafe::17]:4711", For="[2001:db8:ffff::1]""#),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            client(r#"for="203.0.113.9:80";host="a,b;c""#),
            ip("203.0.113.9")
        );
        assert_eq!(client("FOR=203.0.113.9"), ip("203.0.113.9"));
        // Unknown, obfuscated, or no `for`: the proxy's own address.
        assert_eq!(client("for=unknown"), ip(PROXY));
        assert_eq!(client("for=_hidden"), ip(PROXY));
        assert_eq!(client("for=203.0.113.9, proto=https"), ip(PROXY));
        assert_eq!(client("for=\"[2001:db8::1\""), ip(PROXY));
    }

    #[test]
    fn both_headers_must_agree() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let agreeing = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        assert_eq!(trusted.client(ip(PROXY), &agreeing), ip("203.0.113.9"));
        // The proxy appends to X-Forwarded-For and passes the client's Forwarded through.
        let smuggled = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.77"),
        ]);
        assert_eq!(trusted.client(ip(PROXY), &smuggled), ip(PROXY));
        let broken = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=unknown"),
        ]);
        assert_eq!(trusted.client(ip(PROXY), &broken), ip(PROXY));
    }

    #[test]
    fn a_trusted_ipv4_mapped_peer_is_recognised() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            trusted.client(ip("::ffff:10.0.0.5"), &forwarded),
            ip("203.0.113.9")
        );
        assert_eq!(
            trusted.client(ip("::ffff:203.0.113.1"), &HeaderMap::new()),
            ip("203.0.113.1")
        );
    }

    #[test]
    fn a_header_that_is_not_text_is_malformed() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let mut map = HeaderMap::new();
        map.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        assert_eq!(trusted.client(ip(PROXY), &map), ip(PROXY));
    }
}
