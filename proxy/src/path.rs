//! Request paths made canonical before a route is chosen (DESIGN.md, "Hostile traffic"), as
//! Envoy's `normalize_path` + `merge_slashes` do, so that the path the gateway authorises is
//! the path the upstream serves.
//!
//! Without it, `/%61dmin/x`, `//admin/x` and `/public/../admin/x` match the route `/` while an
//! upstream that decodes or normalises its paths (most frameworks do) serves `/admin/x`. In this
//! order:
//!
//! 1. Percent-encoded unreserved characters (RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" /
//!    "~"`) are decoded; every other percent-encoding is kept, with uppercase hex digits. A `%`
//!    not followed by two hex digits is not a URI and is refused.
//! 2. `%2F`, `%5C` (any case) and a literal `\` are refused under
//!    [`EscapedSlashes::Reject`] (the default): an upstream may decode them into separators
//!    after the route was chosen. Under [`EscapedSlashes::Keep`] they stay encoded (`\` becomes
//!    `%5C`) and are never separators here.
//! 3. Dot segments are resolved (RFC 3986 §5.2.4), never above the root, so `/a/../../b` is
//!    `/b`.
//! 4. Runs of `/` are merged into one. As in Envoy, this comes after the dot segments:
//!    `/a//../b` is `/a/b` (the `..` removes the empty segment). Whatever an upstream's own
//!    order, the result has nothing left for it to resolve: no dot segment, no empty segment,
//!    and no escape whose decoding makes one or a separator (with the default `reject`), so it
//!    serves the path the gateway authorised.
//!
//! The query is not part of the path and is never touched. Case is significant (`/ADMIN` is
//! another path), and so are path parameters: `;` is data here, so an upstream that strips
//! `;…` from segments (Tomcat's `/..;/`) can still resolve a path differently.
//!
//! Most paths need none of this: [`normalize`] returns its input, borrowed, after one pass over
//! its bytes when there is no `\`, no `//`, no dot segment and no `%` other than an escape that
//! stays (uppercase, of a reserved or non-ASCII byte). Only the rest is copied.

use std::borrow::Cow;

use crate::config::EscapedSlashes;

/// Why a path is refused (400 `INVALID_PATH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`, `%5C` or `\` under [`EscapedSlashes::Reject`].
    EscapedSlash,
    /// A `%` not followed by two hexadecimal digits.
    BadEscape,
    /// The normalised path is not a valid request target (longer than a URI may be).
    Unforwardable,
}

impl PathError {
    /// The message of the 400 response.
    pub fn message(self) -> &'static str {
        match self {
            PathError::EscapedSlash => {
                "the path contains an encoded slash or backslash (%2F, %5C) or a backslash"
            }
            PathError::BadEscape => {
                "the path contains a '%' that is not followed by two hex digits"
            }
            PathError::Unforwardable => "the normalised path is too long",
        }
    }
}

/// The canonical form of `path` (see the module documentation); borrowed when it already is.
/// A path that does not start with `/` (the `*` of `OPTIONS *`) is returned unchanged: no
/// route can match it.
#[inline]
pub fn normalize(path: &str, escaped_slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_normal(path.as_bytes(), escaped_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    normalize_copy(path, escaped_slashes)
}

/// The rare case, out of line: decode into a copy, then resolve.
#[cold]
#[inline(never)]
fn normalize_copy(path: &str, escaped_slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    let decoded = decode(path, escaped_slashes)?;
    let normal = resolve(&decoded);
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// The bytes [`is_normal`] stops at: the others (letters, digits, most punctuation) need one
/// table lookup each.
const STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    stops[b'/' as usize] = true;
    stops[b'%' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// True when `path` (starting with `/`) has nothing to normalise: no `\`, no `%` but a kept
/// escape in canonical form, no empty segment and no `.` or `..` segment. One pass, no
/// allocation: this is every request's cost.
#[inline]
fn is_normal(path: &[u8], escaped_slashes: EscapedSlashes) -> bool {
    let mut index = 0;
    while index < path.len() {
        let byte = path[index];
        if !STOPS[usize::from(byte)] {
            index += 1;
            continue;
        }
        if byte == b'/' {
            match path.get(index + 1) {
                Some(b'/') => return false,
                Some(b'.') => match path.get(index + 2) {
                    None | Some(b'/') => return false,
                    Some(b'.') if matches!(path.get(index + 3), None | Some(b'/')) => {
                        return false;
                    }
                    _ => {}
                },
                _ => {}
            }
            index += 1;
        } else if byte == b'%' && is_kept_escape(path, index, escaped_slashes) {
            index += 3;
        } else {
            return false;
        }
    }
    true
}

/// Whether the `%` at `index` starts an escape that normalisation keeps as it is: two
/// uppercase hex digits, not an unreserved character, and not a slash unless those are kept.
fn is_kept_escape(path: &[u8], index: usize, escaped_slashes: EscapedSlashes) -> bool {
    let (Some(&high @ (b'0'..=b'9' | b'A'..=b'F')), Some(&low @ (b'0'..=b'9' | b'A'..=b'F'))) =
        (path.get(index + 1), path.get(index + 2))
    else {
        return false;
    };
    let value = (hex_value(high).unwrap_or(0) << 4) | hex_value(low).unwrap_or(0);
    let slash = matches!(value, b'/' | b'\\');
    !is_unreserved(value) && (!slash || escaped_slashes == EscapedSlashes::Keep)
}

/// Steps 1 and 2: unreserved escapes decoded, the others uppercased, escaped slashes refused or
/// kept.
fn decode(path: &str, escaped_slashes: EscapedSlashes) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    // Decoding only shortens; `\` → `%5C` (keep) is the one thing that grows.
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len() + 8);
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.get(index + 1).and_then(|&digit| hex_value(digit)),
                    bytes.get(index + 2).and_then(|&digit| hex_value(digit)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = (high << 4) | low;
                if is_unreserved(value) {
                    out.push(value);
                } else {
                    if matches!(value, b'/' | b'\\') && escaped_slashes == EscapedSlashes::Reject {
                        return Err(PathError::EscapedSlash);
                    }
                    out.extend_from_slice(&[b'%', HEX[usize::from(high)], HEX[usize::from(low)]]);
                }
                index += 3;
            }
            b'\\' => {
                if escaped_slashes == EscapedSlashes::Reject {
                    return Err(PathError::EscapedSlash);
                }
                out.extend_from_slice(b"%5C");
                index += 1;
            }
            _ => {
                out.push(byte);
                index += 1;
            }
        }
    }
    // Only ASCII bytes were added or replaced, and a `%XX` that decodes to a byte is decoded
    // only when that byte is ASCII, so the text is as valid UTF-8 as `path` was.
    Ok(String::from_utf8(out)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()))
}

/// Steps 3 and 4 on a decoded path that starts with `/`: dot segments, then repeated slashes.
fn resolve(decoded: &str) -> String {
    // Empty segments are kept until the dot segments are resolved, so that `..` after `//`
    // removes the empty segment, as RFC 3986's algorithm does before any merging.
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_in_dot_segment = false;
    for segment in decoded[1..].split('/') {
        ends_in_dot_segment = matches!(segment, "." | "..");
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    out.push('/');
    for segment in kept.iter().filter(|segment| !segment.is_empty()) {
        if !out.ends_with('/') {
            out.push('/');
        }
        out.push_str(segment);
    }
    // `/a/` and `/a/b/..` name a directory: the trailing slash stays (merged into one).
    let trailing_slash = ends_in_dot_segment || kept.last().is_some_and(|last| last.is_empty());
    if trailing_slash && !out.ends_with('/') {
        out.push('/');
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{AuthMode, ResolvedRoute};
    use crate::route::{self, RouteTable};

    fn reject(path: &str) -> Result<Cow<'_, str>, PathError> {
        normalize(path, EscapedSlashes::Reject)
    }

    fn keep(path: &str) -> Result<Cow<'_, str>, PathError> {
        normalize(path, EscapedSlashes::Keep)
    }

    #[test]
    fn normal_paths_are_returned_borrowed() {
        for path in [
            "/",
            "/api/items",
            "/a/b/",
            "/.well-known/x",
            "/a/.b/..c/...",
            "/a.b/c..",
            "/ADMIN",
            "/a;b=c",
            "/a%20b/%E2%82%AC/%3F",
            "*",
        ] {
            assert!(
                matches!(reject(path), Ok(Cow::Borrowed(same)) if same == path),
                "{path}"
            );
        }
        assert!(matches!(keep("/a%2Fb%5C"), Ok(Cow::Borrowed("/a%2Fb%5C"))));
        // Copied only when something changes.
        assert!(matches!(reject("/a%3f"), Ok(Cow::Owned(_))));
        assert!(matches!(reject("/a%2e"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn the_issue_13_paths_are_canonical() {
        let cases = [
            ("/%61dmin/x", "/admin/x"),
            ("//admin/x", "/admin/x"),
            ("/public/../admin/x", "/admin/x"),
            ("/public/%2e%2E/admin/x", "/admin/x"),
            ("/./admin/./x", "/admin/x"),
            ("/a//../b", "/a/b"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/../", "/a/"),
            ("/..", "/"),
            ("///", "/"),
            ("/a///b//", "/a/b/"),
            ("/%7euser/%41%5a", "/~user/AZ"),
            ("/a%20b/%3f/%e2%82%ac", "/a%20b/%3F/%E2%82%AC"),
            ("/%25%32%46", "/%252F"),
            ("/ä/../b", "/b"),
        ];
        for (path, expected) in cases {
            assert_eq!(reject(path).as_deref(), Ok(expected), "{path}");
        }
    }

    #[test]
    fn escaped_slashes_are_refused_or_kept_as_data() {
        for path in [
            "/public/..%2forders",
            "/admin%2Fx",
            "/a%5cb",
            "/a%5Cb",
            "/a\\b",
        ] {
            assert_eq!(reject(path), Err(PathError::EscapedSlash), "{path}");
        }
        assert_eq!(
            keep("/public/..%2forders").as_deref(),
            Ok("/public/..%2Forders")
        );
        assert_eq!(keep("/admin%2fx/./y").as_deref(), Ok("/admin%2Fx/y"));
        assert_eq!(keep("/a\\..\\b").as_deref(), Ok("/a%5C..%5Cb"));
        assert_eq!(keep("/a%5c/../b").as_deref(), Ok("/b"));
    }

    #[test]
    fn broken_escapes_are_refused() {
        for path in ["/a%", "/a%2", "/a%zz", "/%%36%31dmin", "/a%2/b"] {
            assert_eq!(reject(path), Err(PathError::BadEscape), "{path}");
            assert_eq!(keep(path), Err(PathError::BadEscape), "{path}");
        }
    }

    // ---- Properties --------------------------------------------------------------------------
    //
    // The model is an upstream that normalises what it receives, written independently of the
    // code above: RFC 3986 §5.2.4's input/output-buffer algorithm, a textual merge of slashes.

    /// Decodes unreserved escapes and uppercases the rest; `%2F`/`%5C` stay escapes (data) and
    /// a literal `\` becomes `%5C`, as under `keep`. `None` for a broken escape.
    fn model_decode(path: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = path;
        while let Some(c) = rest.chars().next() {
            if c == '%' {
                let value = u8::from_str_radix(rest.get(1..3)?, 16).ok()?;
                if rest[1..3].starts_with('+') {
                    return None;
                }
                let ch = char::from(value);
                if ch.is_ascii_alphanumeric() || "-._~".contains(ch) {
                    out.push(ch);
                } else {
                    out.push_str(&format!("%{value:02X}"));
                }
                rest = &rest[3..];
            } else {
                if c == '\\' {
                    out.push_str("%5C");
                } else {
                    out.push(c);
                }
                rest = &rest[c.len_utf8()..];
            }
        }
        Some(out)
    }

    /// RFC 3986 §5.2.4, rule by rule.
    fn model_remove_dot_segments(path: &str) -> String {
        let mut input = path.to_owned();
        let mut output = String::new();
        let remove_last = |output: &mut String| {
            let cut = output.rfind('/').unwrap_or(0);
            output.truncate(cut);
        };
        while !input.is_empty() {
            if input.starts_with("../") {
                input.drain(..3);
            } else if input.starts_with("./") {
                input.drain(..2);
            } else if input.starts_with("/./") {
                input.replace_range(..3, "/");
            } else if input == "/." {
                input = "/".to_owned();
            } else if input.starts_with("/../") {
                input.replace_range(..4, "/");
                remove_last(&mut output);
            } else if input == "/.." {
                input = "/".to_owned();
                remove_last(&mut output);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..]
                    .find('/')
                    .map_or(input.len(), |at| at + start);
                output.push_str(&input[..end]);
                input.drain(..end);
            }
        }
        output
    }

    fn model_merge_slashes(path: &str) -> String {
        let mut merged = path.to_owned();
        while merged.contains("//") {
            merged = merged.replace("//", "/");
        }
        merged
    }

    /// What a decoding, normalising upstream makes of `path`.
    fn model_upstream(path: &str) -> Option<String> {
        let decoded = model_decode(path)?;
        Some(model_merge_slashes(&model_remove_dot_segments(&decoded)))
    }

    fn has_escaped_slash(path: &str) -> bool {
        let upper = path.to_ascii_uppercase();
        upper.contains("%2F") || upper.contains("%5C") || path.contains('\\')
    }

    const PREFIXES: [&str; 6] = ["/", "/admin/", "/admin/public", "/public/", "/api", "/~x/"];

    fn table() -> RouteTable {
        let routes: Vec<ResolvedRoute> = PREFIXES
            .iter()
            .enumerate()
            .map(|(index, prefix)| ResolvedRoute {
                path_prefix: (*prefix).to_owned(),
                upstream: format!("upstream-{index}:80").parse().expect("authority"),
                upstream_tls: None,
                auth: AuthMode::Key,
                forward_credential: false,
                session_origins: Vec::new(),
                permissions: Vec::new(),
                cost: 1,
            })
            .collect();
        route::tests::table_of(routes, EscapedSlashes::Keep)
    }

    /// The prefix of the route the gateway's table chooses for `path`.
    fn route_of<'t>(table: &'t RouteTable, path: &str) -> Option<&'t str> {
        table.find(path).map(|route| route.path_prefix.as_str())
    }

    /// The longest prefix of `path` among [`PREFIXES`], as the model's route table.
    fn model_route(path: &str) -> Option<&'static str> {
        PREFIXES
            .iter()
            .filter(|prefix| path.starts_with(*prefix))
            .max_by_key(|prefix| prefix.len())
            .copied()
    }

    /// Paths built from the pieces that matter: separators, dots, escapes of all kinds.
    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/"),
            Just("//"),
            Just("."),
            Just(".."),
            Just("%2e"),
            Just("%2E%2e"),
            Just("%2f"),
            Just("%2F"),
            Just("%5c"),
            Just("\\"),
            Just("admin"),
            Just("%61dmin"),
            Just("ADMIN"),
            Just("public"),
            Just("api"),
            Just("~x"),
            Just("%7Ex"),
            Just("%7e"),
            Just("%3f"),
            Just("%25"),
            Just("%20"),
            Just("%"),
            Just("%4"),
            Just("%zz"),
            Just(";"),
            Just("é"),
            Just("a"),
            Just("-_"),
        ];
        prop::collection::vec(piece, 0..14).prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![path(), "/[a-zA-Z0-9./%\\\\~_-]{0,40}"]
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent_and_the_result_takes_the_fast_path(path in any_path()) {
            for mode in [EscapedSlashes::Reject, EscapedSlashes::Keep] {
                if let Ok(normal) = normalize(&path, mode) {
                    prop_assert!(is_normal(normal.as_bytes(), mode), "{path} → {normal}");
                    let again = normalize(&normal, mode);
                    prop_assert!(
                        matches!(&again, Ok(Cow::Borrowed(same)) if *same == normal.as_ref()),
                        "{path} → {normal} → {again:?}"
                    );
                }
            }
        }

        #[test]
        fn normalisation_never_leaves_the_root(path in any_path()) {
            for mode in [EscapedSlashes::Reject, EscapedSlashes::Keep] {
                if let Ok(normal) = normalize(&path, mode) {
                    prop_assert!(normal.starts_with('/'), "{path} → {normal}");
                    prop_assert!(
                        normal.split('/').all(|segment| segment != ".." && segment != "."),
                        "{path} → {normal}"
                    );
                    prop_assert!(!normal.contains("//"), "{path} → {normal}");
                }
            }
        }

        #[test]
        fn the_route_is_the_one_a_normalising_upstream_resolves(path in any_path()) {
            let table = table();
            let route = |path: &str| route_of(&table, path);
            let model = model_upstream(&path);
            match normalize(&path, EscapedSlashes::Keep) {
                Ok(normal) => {
                    let model = model.clone().expect("the model decodes what the gateway decodes");
                    // The same text, so the same route, wherever the route table's prefixes lie.
                    prop_assert_eq!(normal.as_ref(), model.as_str(), "{}", path);
                    prop_assert_eq!(route(&normal), model_route(&model), "{}", path);
                    // And the upstream, normalising what it receives, stays on that route.
                    let upstream = model_upstream(&normal).expect("normal paths decode");
                    prop_assert_eq!(route(&normal), model_route(&upstream), "{}", path);
                }
                Err(error) => {
                    prop_assert_eq!(error, PathError::BadEscape);
                    prop_assert!(model.is_none(), "{} is refused but the model reads it", path);
                }
            }
            match normalize(&path, EscapedSlashes::Reject) {
                Ok(normal) => {
                    prop_assert!(!has_escaped_slash(&path), "{}", path);
                    prop_assert_eq!(normal, normalize(&path, EscapedSlashes::Keep).expect("keep"));
                }
                Err(PathError::EscapedSlash) => prop_assert!(has_escaped_slash(&path), "{}", path),
                Err(PathError::BadEscape) => prop_assert!(model.is_none(), "{}", path),
                Err(PathError::Unforwardable) => prop_assert!(false, "not from normalize"),
            }
        }
    }
}
