//! The first value of each of a few names in a request's header map, found in one walk over
//! its fields rather than one hashed lookup per name.
//!
//! A `HeaderMap` lookup hashes the name and probes, and costs as much for a name the map lacks
//! as for one it has; the gateway asks after about a dozen names per request (credentials,
//! `Host`, `X-Forwarded-For`, `Forwarded`, the cookie), most of them absent. A request
//! carries a handful of fields, and comparing a name against another is an enum comparison for
//! the standard ones and a short byte comparison otherwise, so a walk answers several questions
//! for less than one lookup. Past [`WALK_AT_MOST`] fields a walk would cost more, and the map
//! is asked instead.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, ValueIter};

/// Fields past which [`first`] looks each name up instead of walking.
const WALK_AT_MOST: usize = 12;

/// For each of `names`, the first value `headers` holds under it, if any (as
/// `HeaderMap::get`).
#[inline]
pub(crate) fn first<'a, const N: usize>(
    headers: &'a HeaderMap,
    names: [&HeaderName; N],
) -> [Option<&'a HeaderValue>; N] {
    let mut found = [None; N];
    if headers.len() > WALK_AT_MOST {
        for (found, name) in found.iter_mut().zip(names) {
            *found = headers.get(name);
        }
        return found;
    }
    for (held, value) in headers {
        for (found, name) in found.iter_mut().zip(names) {
            if found.is_none() && held == name {
                *found = Some(value);
            }
        }
    }
    found
}

/// Every value of `name`, given its first value from [`first`]: with no further lookup when no
/// name in the map has a second value (the usual case, told by two counters).
pub(crate) fn values<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    first: Option<&'a HeaderValue>,
) -> Values<'a> {
    match first {
        Some(_) if headers.len() != headers.keys_len() => Values::All(headers.get_all(name).iter()),
        first => Values::One(first),
    }
}

/// The values [`values`] gives.
pub(crate) enum Values<'a> {
    /// The name's only value, or none.
    One(Option<&'a HeaderValue>),
    /// Some name has several values: looked up.
    All(ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a HeaderValue;

    #[inline]
    fn next(&mut self) -> Option<&'a HeaderValue> {
        match self {
            Values::One(value) => value.take(),
            Values::All(values) => values.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{AUTHORIZATION, COOKIE, FORWARDED, HOST};

    fn map(fields: &[(&str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
            headers.append(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn each_name_gets_its_first_value_as_get_gives_it() {
        let api_key = HeaderName::from_static("x-api-key");
        let names = [&AUTHORIZATION, &api_key, &COOKIE, &FORWARDED, &HOST];
        let headers = map(&[
            ("host", "example.com"),
            ("authorization", "Bearer one"),
            ("X-API-Key", "first"),
            ("x-api-key", "second"),
            ("accept", "*/*"),
        ]);
        assert_eq!(first(&headers, names), names.map(|name| headers.get(name)));
        assert_eq!(
            first(&headers, names).map(|value| value.map(HeaderValue::as_bytes)),
            [
                Some(&b"Bearer one"[..]),
                Some(&b"first"[..]),
                None,
                None,
                Some(&b"example.com"[..])
            ]
        );
        assert_eq!(first(&HeaderMap::new(), [&AUTHORIZATION]), [None]);
    }

    #[test]
    fn a_large_map_gives_the_same_answers_as_a_small_one() {
        let api_key = HeaderName::from_static("x-api-key");
        let many: Vec<String> = (0..40).map(|n| format!("x-filler-{n}")).collect();
        let mut fields: Vec<(&str, &'static str)> =
            many.iter().map(|name| (name.as_str(), "v")).collect();
        fields.push(("x-api-key", "k1"));
        fields.push(("x-api-key", "k2"));
        let headers = map(&fields);
        assert!(headers.len() > WALK_AT_MOST);
        let names = [&api_key, &AUTHORIZATION];
        assert_eq!(first(&headers, names), names.map(|name| headers.get(name)));
        assert_eq!(
            first(&headers, names)[0].map(HeaderValue::as_bytes),
            Some(&b"k1"[..])
        );
    }

    #[test]
    fn values_gives_every_value_whether_or_not_any_name_repeats() {
        let api_key = HeaderName::from_static("x-api-key");
        for fields in [
            &[("x-api-key", "k1"), ("accept", "*/*")][..],
            &[("x-api-key", "k1"), ("accept", "a"), ("accept", "b")][..],
            &[("x-api-key", "k1"), ("accept", "*/*"), ("x-api-key", "k2")][..],
            &[("accept", "a"), ("accept", "b")][..],
            &[][..],
        ] {
            let headers = map(fields);
            let [found] = first(&headers, [&api_key]);
            let got: Vec<&HeaderValue> = values(&headers, &api_key, found).collect();
            let expected: Vec<&HeaderValue> = headers.get_all(&api_key).iter().collect();
            assert_eq!(got, expected, "{fields:?}");
        }
    }
}
