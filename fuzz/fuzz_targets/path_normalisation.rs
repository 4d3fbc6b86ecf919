//! `keygate_proxy::path::normalize` on arbitrary paths, under both `escaped_slashes` settings,
//! and on the paths of arbitrary request targets that `http::Uri` accepts (what the server
//! actually hands the router).
//!
//! Properties (issue 13, "Paths"): never a panic; a normalised path starts with `/`, has no
//! `.` or `..` segment and no empty segment (`//`); it is a fixed point (normalising it again
//! returns it unchanged, borrowed: the fast path agrees with the slow one); under `reject` it
//! holds no `\`, `%2F` or `%5C`; under `keep` no literal `\`; every `%` in it starts a
//! two-digit uppercase escape of a byte that is not unreserved; and the normalised path,
//! with the original query, still forms a request target.

#![no_main]

use std::borrow::Cow;

use http::uri::PathAndQuery;
use keygate_proxy::EscapedSlashes;
use keygate_proxy::path::{PathError, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for mode in [EscapedSlashes::Reject, EscapedSlashes::Keep] {
        check(&text, mode, None);
    }
    // The request target as the HTTP server parses it.
    if let Ok(target) = PathAndQuery::try_from(data) {
        for mode in [EscapedSlashes::Reject, EscapedSlashes::Keep] {
            check(target.path(), mode, Some(target.query()));
        }
    }
});

fn check(path: &str, mode: EscapedSlashes, query: Option<Option<&str>>) {
    let normal = match normalize(path, mode) {
        Ok(normal) => normal,
        Err(PathError::EscapedSlash) => {
            assert_eq!(mode, EscapedSlashes::Reject, "{path:?} refused under keep");
            return;
        }
        Err(_) => return,
    };
    if !path.starts_with('/') {
        assert_eq!(
            normal, path,
            "a path without a leading / is returned as it is"
        );
        return;
    }
    assert!(normal.starts_with('/'), "{path:?} → {normal:?}");
    for segment in normal[1..].split('/') {
        assert!(
            !matches!(segment, "." | ".."),
            "{path:?} → {normal:?} has a dot segment"
        );
    }
    let inner = normal.trim_end_matches('/');
    assert!(
        !normal.contains("//"),
        "{path:?} → {normal:?} has an empty segment ({inner:?})"
    );
    assert!(
        !normal.contains('\\'),
        "{path:?} → {normal:?} has a backslash"
    );
    check_escapes(path, &normal, mode);

    // A fixed point, found by the fast path.
    match normalize(&normal, mode) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, &*normal),
        other => panic!("{path:?} → {normal:?} → {other:?}: not a fixed point"),
    }
    // The borrowed result is only returned for a path that needed nothing.
    if let Cow::Borrowed(same) = normal {
        assert_eq!(same, path);
    }

    // What the router forwards: the normalised path and the query as it came.
    if let Some(query) = query {
        let target = match query {
            Some(query) => format!("{normal}?{query}"),
            None => normal.to_string(),
        };
        if target.len() < usize::from(u16::MAX) - 1 {
            assert!(
                PathAndQuery::try_from(target.as_str()).is_ok(),
                "{path:?} → {target:?} is not a request target"
            );
        }
    }
}

fn check_escapes(path: &str, normal: &str, mode: EscapedSlashes) {
    let bytes = normal.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3).unwrap_or_default();
            assert!(
                hex.len() == 2 && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
                "{path:?} → {normal:?}: bad escape at {index}"
            );
            let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("00"), 16)
                .expect("two hex digits");
            assert!(
                !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
                "{path:?} → {normal:?}: escaped unreserved byte"
            );
            if mode == EscapedSlashes::Reject {
                assert!(
                    !matches!(value, b'/' | b'\\'),
                    "{path:?} → {normal:?}: escaped slash under reject"
                );
            }
            index += 3;
        } else {
            index += 1;
        }
    }
}
