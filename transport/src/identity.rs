//! Who a client certificate names. A gateway's id under mutual TLS is its certificate's first
//! DNS or URI subject alternative name (the common name is not used: it is deprecated for
//! identities and easy to get wrong).

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The first DNS or URI SAN of `certificate`, or `None` when it has neither (or does not parse).
pub fn first_san(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let names = parsed.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::DNSName(name) | GeneralName::URI(name) => Some((*name).to_owned()),
            _ => None,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn certificate(names: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = names;
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_first_dns_or_uri_name_is_the_identity() {
        let ip = rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let dns = rcgen::SanType::DnsName("gw-a".try_into().unwrap());
        let uri = rcgen::SanType::URI("spiffe://keygate/gw-b".try_into().unwrap());
        assert_eq!(
            first_san(&certificate(vec![ip.clone(), dns.clone(), uri.clone()])).as_deref(),
            Some("gw-a")
        );
        assert_eq!(
            first_san(&certificate(vec![uri, dns])).as_deref(),
            Some("spiffe://keygate/gw-b")
        );
        assert_eq!(first_san(&certificate(vec![ip])), None);
        assert_eq!(first_san(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
