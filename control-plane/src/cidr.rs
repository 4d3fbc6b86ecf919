//! Address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), as `trusted_proxies` names
//! them in the configuration. A bare address is a range of one (`/32` or `/128`).
//!
//! A range with bits set past its prefix (`10.0.0.1/8`) is refused rather than silently
//! widened: in a list that decides whose headers are believed, a typo should be an error.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// A range of addresses: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a text is not a CIDR range. Each message quotes the text and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error(
        "{0:?} is not a CIDR range (expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32)"
    )]
    Syntax(String),
    #[error("{text:?}: the prefix length must be at most {max} for an IPv{version} address")]
    PrefixTooLong { text: String, max: u8, version: u8 },
    #[error("{text:?} has bits set past its prefix; did you mean {suggestion}?")]
    HostBits { text: String, suggestion: String },
}

impl Cidr {
    /// The range `network/prefix`; `network` must have no bits set past the prefix.
    pub fn new(network: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let text = format!("{network}/{prefix}");
        let (max, version) = match network {
            IpAddr::V4(_) => (32, 4),
            IpAddr::V6(_) => (128, 6),
        };
        if prefix > max {
            return Err(CidrError::PrefixTooLong { text, max, version });
        }
        let cidr = Self { network, prefix };
        let masked = cidr.masked(network);
        if masked != network {
            return Err(CidrError::HostBits {
                text,
                suggestion: format!("{masked}/{prefix}"),
            });
        }
        Ok(cidr)
    }

    /// Whether `addr` is in this range. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) counts
    /// as the IPv4 address it maps; otherwise IPv4 ranges hold only IPv4 addresses and IPv6
    /// ranges only IPv6 ones.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        addr.is_ipv4() == self.network.is_ipv4() && self.masked(addr) == self.network
    }

    /// `addr` with the bits past this range's prefix cleared (same family as the range).
    fn masked(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| syntax())?;
        let prefix = match prefix {
            // Digits only: `u8::from_str` would take a sign.
            Some(prefix) if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) => {
                prefix.parse().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
            None if network.is_ipv4() => 32,
            None => 128,
        };
        Self::new(network, prefix).map_err(|error| match error {
            // Quote what was written, not the normalised form.
            CidrError::PrefixTooLong { max, version, .. } => CidrError::PrefixTooLong {
                text: text.to_owned(),
                max,
                version,
            },
            CidrError::HostBits { suggestion, .. } => CidrError::HostBits {
                text: text.to_owned(),
                suggestion,
            },
            error => error,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let private: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(private.contains(ip("10.255.0.1")));
        assert!(private.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(!private.contains(ip("11.0.0.1")));
        assert!(
            !private.contains(ip("::a00:1")),
            "an IPv6 address is not in an IPv4 range"
        );
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let everything: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains(ip("203.0.113.9")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        let error = |text: &str| text.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(
            error("10.0.0.0/33"),
            "\"10.0.0.0/33\": the prefix length must be at most 32 for an IPv4 address"
        );
        assert_eq!(
            error("10.0.0.1/8"),
            "\"10.0.0.1/8\" has bits set past its prefix; did you mean 10.0.0.0/8?"
        );
        for bad in [
            "",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "example.com/8",
            "10.0.0.0/8/8",
        ] {
            assert!(
                error(bad).contains("is not a CIDR range"),
                "{bad}: {}",
                error(bad)
            );
        }
        assert!(error("2001:db8::/129").contains("at most 128 for an IPv6"));
    }
}
