//! Which bucket a client address counts in.

use std::net::{IpAddr, Ipv6Addr};

/// The bucket an address counts in: IPv4 as is; IPv6 masked to its /64; IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4 client) as IPv4.
///
/// A /64 is what one customer of an ISP or one cloud instance is handed: every address in it
/// is one client, who could otherwise take a fresh bucket for each of its 2^64 addresses.
pub fn client_bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a test address")
    }

    #[test]
    fn ipv4_is_its_own_bucket() {
        assert_eq!(client_bucket(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(
            client_bucket(ip("192.0.2.7")),
            client_bucket(ip("192.0.2.8"))
        );
    }

    #[test]
    fn ipv6_counts_per_64() {
        assert_eq!(
            client_bucket(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_bucket(ip("2001:db8:1:2::1")),
            client_bucket(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            client_bucket(ip("2001:db8:1:2::1")),
            client_bucket(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_bucket(ip("::1")), ip("::"));
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(client_bucket(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
