//! The session cookie: `keygate_session`, set by a finish that signs in (HttpOnly,
//! SameSite=Lax, Secure unless the page is plain-HTTP localhost), cleared by sign-out and by any
//! refused session, and read back from `Cookie` headers. The gateway reads the same name.

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HeaderValue};

use crate::webauthn::RelyingParty;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "keygate_session";

/// Marks a response whose session cookie must be cleared: set by an error that refused the
/// session, turned into a `Set-Cookie` by the passkey API (which knows the cookie's attributes).
#[derive(Debug, Clone, Copy)]
pub struct ClearSessionCookie;

/// How this control plane sets the session cookie.
#[derive(Debug, Clone, Copy)]
pub struct SessionCookie {
    secure: bool,
}

impl SessionCookie {
    /// A Secure cookie is never sent over plain HTTP, and browsers treat only localhost as a
    /// secure context without TLS: so Secure unless the page is plain-HTTP localhost.
    pub fn for_relying_party(relying_party: &RelyingParty) -> Self {
        Self {
            secure: !relying_party.is_plain_http_localhost(),
        }
    }

    /// `Set-Cookie` for `token`, living `max_age_secs`.
    pub fn set(&self, token: &str, max_age_secs: i64) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{}",
            self.secure_attribute()
        ))
        .ok()
    }

    /// `Set-Cookie` that makes the browser forget the session.
    pub fn clear(&self) -> HeaderValue {
        if self.secure {
            HeaderValue::from_static(
                "keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
            )
        } else {
            HeaderValue::from_static("keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
        }
    }

    fn secure_attribute(&self) -> &'static str {
        if self.secure { "; Secure" } else { "" }
    }
}

/// The session cookie's value among the request's `Cookie` headers (empty counts as absent).
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_cookie(&headers), None);
        headers.append(COOKIE, HeaderValue::from_static("a=b"));
        headers.append(
            COOKIE,
            HeaderValue::from_static("c=d; keygate_session=v4.public.x ; e=f"),
        );
        assert_eq!(session_cookie(&headers), Some("v4.public.x"));
        let mut empty = HeaderMap::new();
        empty.insert(COOKIE, HeaderValue::from_static("keygate_session="));
        assert_eq!(session_cookie(&empty), None);
    }

    #[test]
    fn set_and_clear_carry_the_same_attributes() {
        let local = RelyingParty::new("localhost", "http://localhost:7080").unwrap();
        let public = RelyingParty::new("example.com", "https://id.example.com").unwrap();
        let local = SessionCookie::for_relying_party(&local);
        let public = SessionCookie::for_relying_party(&public);
        assert_eq!(
            local.set("t", 60).unwrap(),
            "keygate_session=t; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            local.clear(),
            "keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            public.set("t", 60).unwrap(),
            "keygate_session=t; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            public.clear(),
            "keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure"
        );
    }
}
