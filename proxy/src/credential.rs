//! Finding the credential in a request (DESIGN.md, "Verification at the gateway", step 1) and
//! removing it before the request is forwarded.
//!
//! Looked for in this order: `Authorization: Bearer <token>`, then `X-API-Key: <key>`, then the
//! `keygate_session` cookie; which of them count depends on the route's [`AuthMode`]. An
//! `Authorization` header with another scheme (e.g. `Basic`) is not ours and is left alone. A
//! Bearer token is a session on `session` routes, an API key on `key` routes, and on
//! `key_or_session` routes a session when it starts with `v4.public.` (keys never do).

use http::header::{COOKIE, HeaderMap, HeaderName, HeaderValue};

use crate::config::{AuthMode, ProxyConfig, parse_header_name};
use crate::error::ConfigError;

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
    session_cookie: String,
}

impl Default for CredentialHeaders {
    fn default() -> Self {
        Self {
            authorization: http::header::AUTHORIZATION,
            api_key: HeaderName::from_static("x-api-key"),
            session_cookie: "keygate_session".to_owned(),
        }
    }
}

impl CredentialHeaders {
    /// Reads the configured names.
    pub fn from_config(config: &ProxyConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            authorization: parse_header_name("authorization_header", &config.authorization_header)?,
            api_key: parse_header_name("api_key_header", &config.api_key_header)?,
            session_cookie: config.session_cookie.clone(),
        })
    }

    /// The credential for a route with `mode`.
    pub fn extract<'a>(&self, headers: &'a HeaderMap, mode: AuthMode) -> Credential<'a> {
        let (keys, sessions) = match mode {
            AuthMode::None => return Credential::Missing,
            AuthMode::Key => (true, false),
            AuthMode::Session => (false, true),
            AuthMode::KeyOrSession => (true, true),
        };
        if let Some(value) = headers.get(&self.authorization) {
            match bearer_token(value) {
                Bearer::Token(token) if keys && sessions => {
                    return Credential::key_or_session(token);
                }
                Bearer::Token(token) if keys => return Credential::ApiKey(token),
                Bearer::Token(token) => return Credential::Session(token),
                Bearer::Unreadable => return Credential::Unreadable,
                Bearer::OtherScheme => {}
            }
        }
        if keys && let Some(value) = headers.get(&self.api_key) {
            return match value.to_str() {
                Ok(key) => Credential::ApiKey(key.trim()),
                Err(_) => Credential::Unreadable,
            };
        }
        if sessions {
            for value in headers.get_all(COOKIE) {
                if let Some(cookie) = cookie_value(value.as_bytes(), self.session_cookie.as_bytes())
                {
                    return match std::str::from_utf8(cookie) {
                        Ok(token) => Credential::Session(token),
                        Err(_) => Credential::Unreadable,
                    };
                }
            }
        }
        Credential::Missing
    }

    /// Removes every credential the gateway consumes: a Bearer `Authorization`, the API-key
    /// header and the session cookie (other cookies stay).
    pub fn strip(&self, headers: &mut HeaderMap) {
        if headers
            .get(&self.authorization)
            .is_some_and(|value| !matches!(bearer_token(value), Bearer::OtherScheme))
        {
            headers.remove(&self.authorization);
        }
        headers.remove(&self.api_key);
        let name = self.session_cookie.as_bytes();
        if !headers
            .get_all(COOKIE)
            .iter()
            .any(|value| cookie_value(value.as_bytes(), name).is_some())
        {
            return;
        }
        let kept: Vec<Vec<u8>> = headers
            .get_all(COOKIE)
            .iter()
            .map(|value| without_cookie(value.as_bytes(), name))
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
    if bytes.len() < 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        return Bearer::OtherScheme;
    }
    match std::str::from_utf8(&bytes[7..]) {
        Ok(token) => Bearer::Token(token.trim()),
        Err(_) => Bearer::Unreadable,
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`).
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let rest = pair.strip_prefix(name)?;
        rest.strip_prefix(b"=")
    })
}

/// One `Cookie` header without cookie `name`.
fn without_cookie(header: &[u8], name: &[u8]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(header.len());
    for pair in header.split(|&b| b == b';').map(<[u8]>::trim_ascii) {
        let is_session = pair
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(b"="));
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
            ("x-api-key", b"kg_two"),
            ("cookie", b"theme=dark; keygate_session=sess"),
        ]);
        assert_eq!(
            names.extract(&all, AuthMode::KeyOrSession),
            Credential::ApiKey("kg_one")
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
            names.extract(&cookie_only, AuthMode::KeyOrSession),
            Credential::Session("sess")
        );
        assert_eq!(
            names.extract(&cookie_only, AuthMode::Key),
            Credential::Missing
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
        let lower = headers(&[("authorization", b"bearer   kg_x  ")]);
        assert_eq!(
            names.extract(&lower, AuthMode::Key),
            Credential::ApiKey("kg_x")
        );
        let similar_cookie = headers(&[("cookie", b"keygate_session_old=1")]);
        assert_eq!(
            names.extract(&similar_cookie, AuthMode::Session),
            Credential::Missing
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
