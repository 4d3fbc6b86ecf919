//! Finding the credential in a request (DESIGN.md, "Verification at the gateway", step 1) and
//! removing it before the request is forwarded.
//!
//! Looked for in this order: `Authorization: Bearer <token>`, then `X-API-Key: <key>`, then the
//! session cookie (`keygate_session` or `__Host-keygate_session`: the control plane sets the
//! `__Host-` name whenever the cookie is Secure, so both are read); which of them count depends
//! on the route's [`AuthMode`]. A lone
//! `Authorization` header with another scheme (e.g. `Basic`) is not ours and is left alone. A
//! Bearer token is a session on `session` routes, an API key on `key` routes, and on
//! `key_or_session` routes a session when it starts with `v4.public.` (keys never do).
//!
//! One credential per request (DESIGN.md, "Hostile traffic"): more than one `Authorization`
//! value, whatever the schemes, or header values that name different tokens (Bearer and
//! `X-API-Key`, or two `X-API-Key`s), are [`Credential::Ambiguous`], which is MALFORMED.
//! Otherwise the gateway would verify one value and forward another that it never checked.
//! So are two session cookies with different values (either name, or one name twice): which
//! one a browser lists first is up to whoever managed to set one (a sibling subdomain can
//! plant a plain cookie, though not a `__Host-` one). The same value twice is one credential.
//! The cookie is read only when no header carries a credential, and [`Carrier`] says so, for
//! the CSRF check.

use http::header::{COOKIE, HeaderMap, HeaderName, HeaderValue};

use crate::config::{AuthMode, ProxyConfig, parse_header_name};
use crate::error::ConfigError;
use crate::fields;

/// The cookie-name prefix that makes a browser keep a cookie only if it is Secure, has
/// `Path=/` and no `Domain`.
const HOST_PREFIX: &str = "__Host-";

/// The credential a request carries for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// Nothing the route accepts.
    Missing,
    /// A token in a place where an API key is accepted; not yet checked for shape.
    ApiKey(&'a str),
    /// A session token; not yet checked for shape.
    Session(&'a str),
    /// A credential header whose value is not readable text (e.g. not UTF-8): MALFORMED.
    Unreadable,
    /// More than one `Authorization` value, or header values naming different tokens:
    /// MALFORMED.
    Ambiguous,
}

/// Where a request's credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Nowhere: the credential is [`Credential::Missing`].
    Nothing,
    /// `Authorization` or the API-key header, which a browser sends only when the page's own
    /// code adds them.
    Header,
    /// The session cookie, which a browser attaches to requests from any site.
    Cookie,
}

impl<'a> Credential<'a> {
    /// A token that may be either kind: a session when it has the session tokens' header
    /// (`v4.public.`, which no key prefix can produce), else an API key.
    pub fn key_or_session(token: &'a str) -> Self {
        if token.starts_with(keygate_proto::session::HEADER) {
            Credential::Session(token)
        } else {
            Credential::ApiKey(token)
        }
    }
}

/// Where credentials are looked for, from the configuration.
#[derive(Debug, Clone)]
pub struct CredentialHeaders {
    authorization: HeaderName,
    api_key: HeaderName,
    /// The session cookie's two names: the configured one and its `__Host-` twin.
    session_cookies: [String; 2],
}

impl Default for CredentialHeaders {
    fn default() -> Self {
        Self {
            authorization: http::header::AUTHORIZATION,
            api_key: HeaderName::from_static("x-api-key"),
            session_cookies: session_cookie_names("keygate_session"),
        }
    }
}

/// `name` and its `__Host-` twin: `keygate_session` and `__Host-keygate_session`, whichever of
/// the two is configured.
fn session_cookie_names(name: &str) -> [String; 2] {
    match name.strip_prefix(HOST_PREFIX) {
        Some(bare) if !bare.is_empty() => [name.to_owned(), bare.to_owned()],
        _ => [format!("{HOST_PREFIX}{name}"), name.to_owned()],
    }
}

impl CredentialHeaders {
    /// Reads the configured names.
    pub fn from_config(config: &ProxyConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            authorization: parse_header_name("authorization_header", &config.authorization_header)?,
            api_key: parse_header_name("api_key_header", &config.api_key_header)?,
            session_cookies: session_cookie_names(&config.session_cookie),
        })
    }

    /// The credential for a route with `mode`.
    pub fn extract<'a>(&self, headers: &'a HeaderMap, mode: AuthMode) -> Credential<'a> {
        self.find(headers, mode).0
    }

    /// The credential for a route with `mode`, and where it was found.
    pub fn find<'a>(&self, headers: &'a HeaderMap, mode: AuthMode) -> (Credential<'a>, Carrier) {
        let (keys, sessions) = match mode {
            AuthMode::None => return (Credential::Missing, Carrier::Nothing),
            AuthMode::Key => (true, false),
            AuthMode::Session => (false, true),
            AuthMode::KeyOrSession => (true, true),
        };
        let header = |credential| (credential, Carrier::Header);
        let [authorization, api_key, cookie] = self.carriers(headers);
        let mut authorization = fields::values(headers, &self.authorization, authorization);
        let bearer = match (authorization.next(), authorization.next()) {
            (None, _) => None,
            // `Basic x` + `Bearer y`: whichever one is checked, the other would be forwarded.
            (Some(_), Some(_)) => return header(Credential::Ambiguous),
            (Some(value), None) => match bearer_token(value) {
                Bearer::Token(token) => Some(token),
                Bearer::Unreadable => return header(Credential::Unreadable),
                Bearer::OtherScheme => None,
            },
        };
        // Session routes take no API key, so they do not read its header.
        let api_key_values = fields::values(headers, &self.api_key, api_key);
        let mut api_key = None;
        if keys {
            for value in api_key_values {
                let Ok(key) = value.to_str() else {
                    return header(Credential::Unreadable);
                };
                let key = key.trim();
                if bearer.is_some_and(|token| token != key) || api_key.is_some_and(|k| k != key) {
                    return header(Credential::Ambiguous);
                }
                api_key = Some(key);
            }
        }
        match (bearer, api_key) {
            (Some(token), _) if keys && sessions => {
                return header(Credential::key_or_session(token));
            }
            (Some(token), _) if keys => return header(Credential::ApiKey(token)),
            (Some(token), _) => return header(Credential::Session(token)),
            (None, Some(key)) => return header(Credential::ApiKey(key)),
            (None, None) => {}
        }
        if sessions
            && cookie.is_some()
            && let Some(credential) = self.session_cookie(headers)
        {
            return (credential, Carrier::Cookie);
        }
        (Credential::Missing, Carrier::Nothing)
    }

    /// The session cookie under either name, in every `Cookie` header: one value however
    /// often it appears, else [`Credential::Ambiguous`]; `None` when there is none.
    fn session_cookie<'a>(&self, headers: &'a HeaderMap) -> Option<Credential<'a>> {
        let mut found: Option<&'a [u8]> = None;
        for value in headers.get_all(COOKIE) {
            for cookie in self.session_cookie_values(value.as_bytes()) {
                match found {
                    Some(seen) if seen != cookie => return Some(Credential::Ambiguous),
                    _ => found = Some(cookie),
                }
            }
        }
        Some(match std::str::from_utf8(found?) {
            Ok(token) => Credential::Session(token),
            Err(_) => Credential::Unreadable,
        })
    }

    /// The values of the session cookie, under either name, in one `Cookie` header.
    fn session_cookie_values<'a>(&self, header: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        let [one, other] = &self.session_cookies;
        header.split(|&b| b == b';').filter_map(move |pair| {
            let pair = pair.trim_ascii();
            cookie_pair_value(pair, one.as_bytes())
                .or_else(|| cookie_pair_value(pair, other.as_bytes()))
        })
    }

    /// Removes every credential the gateway consumes: every Bearer `Authorization` value (other
    /// schemes stay), every API-key header and every session cookie pair (other cookies stay).
    pub fn strip(&self, headers: &mut HeaderMap) {
        let [authorization, api_key, cookie] = self.carriers(headers);
        let (api_key, cookie) = (api_key.is_some(), cookie.is_some());
        let mut authorization = fields::values(headers, &self.authorization, authorization);
        match (authorization.next(), authorization.next()) {
            (None, _) => {}
            (Some(value), None) => {
                if is_bearer(value.as_bytes()) {
                    headers.remove(&self.authorization);
                }
            }
            (Some(_), Some(_)) => {
                let kept: Vec<HeaderValue> = headers
                    .get_all(&self.authorization)
                    .iter()
                    .filter(|value| !is_bearer(value.as_bytes()))
                    .cloned()
                    .collect();
                headers.remove(&self.authorization);
                for value in kept {
                    headers.append(&self.authorization, value);
                }
            }
        }
        if api_key {
            headers.remove(&self.api_key);
        }
        if cookie {
            self.strip_session_cookies(headers);
        }
    }

    /// The first value of each place a credential can be (`Authorization`, the API-key header,
    /// `Cookie`), found in one walk over the request's fields.
    fn carriers<'a>(&self, headers: &'a HeaderMap) -> [Option<&'a HeaderValue>; 3] {
        fields::first(headers, [&self.authorization, &self.api_key, &COOKIE])
    }

    /// Removes the session cookies from every `Cookie` field, keeping the others.
    fn strip_session_cookies(&self, headers: &mut HeaderMap) {
        if !headers.get_all(COOKIE).iter().any(|value| {
            self.session_cookie_values(value.as_bytes())
                .next()
                .is_some()
        }) {
            return;
        }
        let kept: Vec<Vec<u8>> = headers
            .get_all(COOKIE)
            .iter()
            .map(|value| without_cookies(value.as_bytes(), &self.session_cookies))
            .filter(|value| !value.is_empty())
            .collect();
        headers.remove(COOKIE);
        for value in kept {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append(COOKIE, value);
            }
        }
    }
}

enum Bearer<'a> {
    Token(&'a str),
    Unreadable,
    OtherScheme,
}

fn bearer_token(value: &HeaderValue) -> Bearer<'_> {
    let bytes = value.as_bytes();
    if !is_bearer(bytes) {
        return Bearer::OtherScheme;
    }
    match std::str::from_utf8(&bytes[BEARER.len()..]) {
        Ok(token) => Bearer::Token(token.trim()),
        Err(_) => Bearer::Unreadable,
    }
}

const BEARER: &[u8] = b"bearer";

/// Whether an `Authorization` value has the Bearer scheme: its first word, compared without
/// case. `Bearer x`, `bearer\tx` and a bare `Bearer` (an empty token: MALFORMED) all are, so no
/// spelling of Bearer passes for another scheme and reaches the upstream unverified. Reads only
/// the scheme, so stripping costs nothing per byte of the token.
fn is_bearer(value: &[u8]) -> bool {
    value.len() >= BEARER.len()
        && value[..BEARER.len()].eq_ignore_ascii_case(BEARER)
        && matches!(value.get(BEARER.len()), None | Some(b' ' | b'\t'))
}

/// The value of one `name=value` pair (trimmed) if it is cookie `name`.
fn cookie_pair_value<'a>(pair: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    pair.strip_prefix(name)?.strip_prefix(b"=")
}

/// One `Cookie` header without the cookies named `names`.
fn without_cookies(header: &[u8], names: &[String; 2]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(header.len());
    for pair in header.split(|&b| b == b';').map(<[u8]>::trim_ascii) {
        let is_session = names
            .iter()
            .any(|name| cookie_pair_value(pair, name.as_bytes()).is_some());
        if pair.is_empty() || is_session {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn bearer_then_api_key_then_cookie() {
        let names = CredentialHeaders::default();
        let all = headers(&[
            ("authorization", b"Bearer kg_one"),
            ("x-api-key", b"kg_one"),
            ("cookie", b"theme=dark; keygate_session=sess"),
        ]);
        assert_eq!(
            names.find(&all, AuthMode::KeyOrSession),
            (Credential::ApiKey("kg_one"), Carrier::Header)
        );
        assert_eq!(
            names.extract(&all, AuthMode::Session),
            Credential::Session("kg_one")
        );
        let no_bearer = headers(&[
            ("x-api-key", b" kg_two "),
            ("cookie", b"keygate_session=sess"),
        ]);
        assert_eq!(
            names.extract(&no_bearer, AuthMode::Key),
            Credential::ApiKey("kg_two")
        );
        assert_eq!(
            names.extract(&no_bearer, AuthMode::Session),
            Credential::Session("sess")
        );
        let cookie_only = headers(&[("cookie", b"a=b"), ("cookie", b"keygate_session=sess")]);
        assert_eq!(
            names.find(&cookie_only, AuthMode::KeyOrSession),
            (Credential::Session("sess"), Carrier::Cookie)
        );
        assert_eq!(
            names.find(&cookie_only, AuthMode::Key),
            (Credential::Missing, Carrier::Nothing)
        );
        assert_eq!(names.extract(&all, AuthMode::None), Credential::Missing);
        assert_eq!(
            names.extract(&HeaderMap::new(), AuthMode::Key),
            Credential::Missing
        );
    }

    #[test]
    fn a_session_shaped_bearer_is_a_session_where_sessions_count() {
        let names = CredentialHeaders::default();
        let bearer = headers(&[
            ("authorization", b"Bearer v4.public.abc.def"),
            ("cookie", b"keygate_session=from_cookie"),
        ]);
        let token = Credential::Session("v4.public.abc.def");
        assert_eq!(names.extract(&bearer, AuthMode::KeyOrSession), token);
        assert_eq!(names.extract(&bearer, AuthMode::Session), token);
        assert_eq!(
            names.extract(&bearer, AuthMode::Key),
            Credential::ApiKey("v4.public.abc.def"),
            "a key route takes no sessions: the token is then a malformed key"
        );
        assert_eq!(
            Credential::key_or_session("kg_abc"),
            Credential::ApiKey("kg_abc")
        );
    }

    #[test]
    fn other_schemes_are_not_ours_and_bearer_is_case_insensitive() {
        let names = CredentialHeaders::default();
        let basic = headers(&[("authorization", b"Basic dXNlcjpwYXNz")]);
        assert_eq!(names.extract(&basic, AuthMode::Key), Credential::Missing);
        let basic_and_key = headers(&[("authorization", b"Basic abc"), ("x-api-key", b"kg_k")]);
        assert_eq!(
            names.extract(&basic_and_key, AuthMode::Key),
            Credential::ApiKey("kg_k")
        );
        let lower = headers(&[("authorization", b"bearer   kg_x  ")]);
        assert_eq!(
            names.extract(&lower, AuthMode::Key),
            Credential::ApiKey("kg_x")
        );
        // No spelling of Bearer passes for another scheme.
        let tab = headers(&[("authorization", b"BEARER\tkg_t")]);
        assert_eq!(
            names.extract(&tab, AuthMode::Key),
            Credential::ApiKey("kg_t")
        );
        let bare = headers(&[("authorization", b"Bearer")]);
        assert_eq!(names.extract(&bare, AuthMode::Key), Credential::ApiKey(""));
        let bearers = headers(&[("authorization", b"Bearers kg_x")]);
        assert_eq!(names.extract(&bearers, AuthMode::Key), Credential::Missing);
        let similar_cookie = headers(&[("cookie", b"keygate_session_old=1")]);
        assert_eq!(
            names.extract(&similar_cookie, AuthMode::Session),
            Credential::Missing
        );
    }

    #[test]
    fn one_credential_per_request() {
        let names = CredentialHeaders::default();
        let ambiguous: [&[(&str, &[u8])]; 6] = [
            &[
                ("authorization", b"Basic x"),
                ("authorization", b"Bearer kg_a"),
            ],
            &[
                ("authorization", b"Bearer kg_a"),
                ("authorization", b"Bearer kg_a"),
            ],
            &[("authorization", b"Basic x"), ("authorization", b"Basic y")],
            &[("authorization", b"Bearer kg_a"), ("x-api-key", b"kg_b")],
            &[("x-api-key", b"kg_a"), ("x-api-key", b"kg_b")],
            &[
                ("authorization", b"Bearer v4.public.s"),
                ("x-api-key", b"kg_a"),
            ],
        ];
        for pairs in ambiguous {
            let map = headers(pairs);
            for mode in [AuthMode::Key, AuthMode::KeyOrSession] {
                assert_eq!(
                    names.find(&map, mode),
                    (Credential::Ambiguous, Carrier::Header),
                    "{pairs:?} {mode:?}"
                );
            }
        }
        // The same key twice is one credential.
        let same = headers(&[
            ("authorization", b"Bearer kg_a"),
            ("x-api-key", b" kg_a"),
            ("x-api-key", b"kg_a"),
        ]);
        assert_eq!(
            names.extract(&same, AuthMode::Key),
            Credential::ApiKey("kg_a")
        );
        // Two Authorization values are ambiguous on session routes too; the API-key header is
        // not read there.
        let two = headers(&[
            ("authorization", b"Basic x"),
            ("authorization", b"Bearer s"),
        ]);
        assert_eq!(
            names.extract(&two, AuthMode::Session),
            Credential::Ambiguous
        );
        let session_and_key = headers(&[("authorization", b"Bearer s"), ("x-api-key", b"kg_a")]);
        assert_eq!(
            names.extract(&session_and_key, AuthMode::Session),
            Credential::Session("s")
        );
        // No credential at all on `none` routes: nothing is verified there.
        assert_eq!(
            names.find(&two, AuthMode::None),
            (Credential::Missing, Carrier::Nothing)
        );
    }

    #[test]
    fn non_utf8_values_are_unreadable_not_a_panic() {
        let names = CredentialHeaders::default();
        let bearer = headers(&[("authorization", b"Bearer kg_\xff\xfe")]);
        assert_eq!(
            names.extract(&bearer, AuthMode::Key),
            Credential::Unreadable
        );
        let api_key = headers(&[("x-api-key", b"\xc3\x28")]);
        assert_eq!(
            names.extract(&api_key, AuthMode::Key),
            Credential::Unreadable
        );
        let cookie = headers(&[("cookie", b"keygate_session=\xff")]);
        assert_eq!(
            names.extract(&cookie, AuthMode::Session),
            Credential::Unreadable
        );
    }

    #[test]
    fn strip_removes_only_what_the_gateway_consumes() {
        let names = CredentialHeaders::default();
        let mut map = headers(&[
            ("authorization", b"Bearer kg_one"),
            ("x-api-key", b"kg_two"),
            ("cookie", b"theme=dark; keygate_session=sess; lang=en"),
            ("cookie", b"keygate_session=only"),
            ("accept", b"*/*"),
        ]);
        names.strip(&mut map);
        assert!(map.get("authorization").is_none());
        assert!(map.get("x-api-key").is_none());
        let cookies: Vec<&[u8]> = map
            .get_all(COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(cookies, vec![&b"theme=dark; lang=en"[..]]);
        assert!(map.get("accept").is_some());

        let mut basic = headers(&[("authorization", b"Basic abc")]);
        names.strip(&mut basic);
        assert!(basic.get("authorization").is_some(), "not our credential");

        // Every value is looked at, not only the first.
        let mut several = headers(&[
            ("authorization", b"Basic abc"),
            ("authorization", b"Bearer unverified"),
            ("authorization", b"bearer\tother"),
            ("authorization", b"Digest d"),
            ("x-api-key", b"kg_1"),
            ("x-api-key", b"kg_2"),
        ]);
        names.strip(&mut several);
        let left: Vec<&[u8]> = several
            .get_all("authorization")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(left, vec![&b"Basic abc"[..], &b"Digest d"[..]]);
        assert!(several.get("x-api-key").is_none());
    }

    #[test]
    fn both_cookie_names_are_read_and_conflicting_duplicates_are_ambiguous() {
        let names = CredentialHeaders::default();
        let secure = headers(&[("cookie", b"a=b; __Host-keygate_session=sess")]);
        assert_eq!(
            names.find(&secure, AuthMode::Session),
            (Credential::Session("sess"), Carrier::Cookie)
        );
        let same: [&[(&str, &[u8])]; 3] = [
            &[("cookie", b"__Host-keygate_session=s; keygate_session=s")],
            &[
                ("cookie", b"keygate_session=s"),
                ("cookie", b"keygate_session=s"),
            ],
            &[
                ("cookie", b"keygate_session=s"),
                ("cookie", b"__Host-keygate_session=s"),
            ],
        ];
        for pairs in same {
            assert_eq!(
                names.extract(&headers(pairs), AuthMode::Session),
                Credential::Session("s"),
                "{pairs:?}"
            );
        }
        let conflicting: [&[(&str, &[u8])]; 4] = [
            &[("cookie", b"__Host-keygate_session=s; keygate_session=t")],
            &[("cookie", b"keygate_session=s; keygate_session=t")],
            &[
                ("cookie", b"keygate_session=s"),
                ("cookie", b"keygate_session=t"),
            ],
            &[
                ("cookie", b"__Host-keygate_session=s"),
                ("cookie", b"__Host-keygate_session=t"),
            ],
        ];
        for pairs in conflicting {
            assert_eq!(
                names.find(&headers(pairs), AuthMode::KeyOrSession),
                (Credential::Ambiguous, Carrier::Cookie),
                "{pairs:?}"
            );
        }
        // A header credential still comes first; the cookies are then not looked at.
        let bearer = headers(&[
            ("authorization", b"Bearer v4.public.x"),
            ("cookie", b"keygate_session=s; keygate_session=t"),
        ]);
        assert_eq!(
            names.extract(&bearer, AuthMode::Session),
            Credential::Session("v4.public.x")
        );
        let lookalike = headers(&[("cookie", b"__Host-keygate_session_old=1")]);
        assert_eq!(
            names.extract(&lookalike, AuthMode::Session),
            Credential::Missing
        );
        // Both names are stripped before forwarding.
        let mut map = headers(&[(
            "cookie",
            b"__Host-keygate_session=s; theme=dark; keygate_session=s",
        )]);
        names.strip(&mut map);
        assert_eq!(
            map.get(COOKIE).map(HeaderValue::as_bytes),
            Some(&b"theme=dark"[..])
        );
    }

    #[test]
    fn a_configured_host_name_has_its_bare_twin() {
        assert_eq!(
            session_cookie_names("__Host-sid"),
            ["__Host-sid".to_owned(), "sid".to_owned()]
        );
        assert_eq!(
            session_cookie_names("sid"),
            ["__Host-sid".to_owned(), "sid".to_owned()]
        );
    }

    #[test]
    fn configured_names_are_used() {
        let config = ProxyConfig {
            authorization_header: "X-Auth".into(),
            api_key_header: "X-Key".into(),
            session_cookie: "sid".into(),
            ..ProxyConfig::default()
        };
        let names = CredentialHeaders::from_config(&config).expect("valid names");
        let map = headers(&[("x-key", b"kg_k"), ("x-api-key", b"ignored")]);
        assert_eq!(
            names.extract(&map, AuthMode::Key),
            Credential::ApiKey("kg_k")
        );
        let map = headers(&[("x-auth", b"Bearer kg_b")]);
        assert_eq!(
            names.extract(&map, AuthMode::Key),
            Credential::ApiKey("kg_b")
        );
        let map = headers(&[("cookie", b"sid=s")]);
        assert_eq!(
            names.extract(&map, AuthMode::Session),
            Credential::Session("s")
        );
    }
}
