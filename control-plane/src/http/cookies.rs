//! The session cookie, set by a finish that signs in (HttpOnly, SameSite=Lax, Path=/, Secure
//! unless the page is plain-HTTP localhost), cleared by sign-out and by any refused session,
//! and read back from `Cookie` headers.
//!
//! Its name is `__Host-keygate_session` whenever it is Secure: browsers keep a `__Host-` cookie
//! only if it is Secure, has `Path=/` and no `Domain`, so a sibling subdomain (or a plain-HTTP
//! page of the same host) cannot plant one that shadows ours. Plain-HTTP localhost cannot set a
//! `__Host-` cookie, so there it is `keygate_session`.
//!
//! Both names are read (a browser may still hold the other one, from before a move to HTTPS
//! or from another setup), and clearing clears both. Two session cookies with different values
//! (either name, or one name twice) are refused rather than one picked: which one a browser
//! lists first is not something to trust. The gateway applies the same rules.

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, HeaderValue, SET_COOKIE};

use crate::webauthn::RelyingParty;

/// The session cookie's name when it is Secure.
pub const SECURE_SESSION_COOKIE: &str = "__Host-keygate_session";
/// The session cookie's name on plain-HTTP localhost.
pub const SESSION_COOKIE: &str = "keygate_session";
/// Every name a session cookie may have.
const SESSION_COOKIE_NAMES: [&str; 2] = [SECURE_SESSION_COOKIE, SESSION_COOKIE];

/// The request carries session cookies with different values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictingSessionCookies;

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

    /// The name this control plane sets.
    pub fn name(&self) -> &'static str {
        if self.secure {
            SECURE_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        }
    }

    /// `Set-Cookie` for `token`, living `max_age_secs`.
    pub fn set(&self, token: &str, max_age_secs: i64) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{}",
            self.name(),
            self.secure_attribute()
        ))
        .ok()
    }

    /// `Set-Cookie`s that make the browser forget the session, under either name: whichever
    /// it holds. (A `__Host-` cookie can only be cleared with `Secure`; the browser ignores
    /// what it cannot apply.)
    pub fn clear(&self) -> [HeaderValue; 2] {
        let secure = HeaderValue::from_static(
            "__Host-keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
        );
        let plain = if self.secure {
            HeaderValue::from_static(
                "keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
            )
        } else {
            HeaderValue::from_static("keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
        };
        [secure, plain]
    }

    /// Adds the `Set-Cookie`s of [`Self::clear`] to `headers`.
    pub fn clear_in(&self, headers: &mut HeaderMap) {
        for value in self.clear() {
            headers.append(SET_COOKIE, value);
        }
    }

    fn secure_attribute(&self) -> &'static str {
        if self.secure { "; Secure" } else { "" }
    }
}

/// The session cookie's value among the request's `Cookie` headers, under either name (empty
/// counts as absent); refused when two of them differ.
pub fn session_cookie(headers: &HeaderMap) -> Result<Option<&str>, ConflictingSessionCookies> {
    let mut found = None;
    let values = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| SESSION_COOKIE_NAMES.contains(name))
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty());
    for value in values {
        match found {
            Some(seen) if seen != value => return Err(ConflictingSessionCookies),
            _ => found = Some(value),
        }
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cookies(lines: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(COOKIE, HeaderValue::from_static(line));
        }
        headers
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(session_cookie(&HeaderMap::new()), Ok(None));
        let headers = cookies(&["a=b", "c=d; keygate_session=v4.public.x ; e=f"]);
        assert_eq!(session_cookie(&headers), Ok(Some("v4.public.x")));
        assert_eq!(session_cookie(&cookies(&["keygate_session="])), Ok(None));
        assert_eq!(
            session_cookie(&cookies(&["keygate_session_old=x"])),
            Ok(None)
        );
    }

    #[test]
    fn both_names_are_read_and_conflicting_duplicates_refused() {
        let secure = cookies(&["__Host-keygate_session=v4.public.x"]);
        assert_eq!(session_cookie(&secure), Ok(Some("v4.public.x")));
        // The same value twice, under one name or both, is one session.
        for same in [
            cookies(&["__Host-keygate_session=v4.public.x; keygate_session=v4.public.x"]),
            cookies(&["keygate_session=v4.public.x", "keygate_session=v4.public.x"]),
        ] {
            assert_eq!(session_cookie(&same), Ok(Some("v4.public.x")));
        }
        for conflicting in [
            cookies(&["__Host-keygate_session=v4.public.x; keygate_session=v4.public.y"]),
            cookies(&["keygate_session=v4.public.x", "keygate_session=v4.public.y"]),
            cookies(&["__Host-keygate_session=v4.public.x; __Host-keygate_session=v4.public.y"]),
        ] {
            assert_eq!(session_cookie(&conflicting), Err(ConflictingSessionCookies));
        }
        // An emptied cookie beside a real one is no conflict: empty counts as absent.
        let emptied = cookies(&["keygate_session=; __Host-keygate_session=v4.public.x"]);
        assert_eq!(session_cookie(&emptied), Ok(Some("v4.public.x")));
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
            [
                "__Host-keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
                "keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
            ]
        );
        // Secure: the `__Host-` name, with Path=/ and no Domain.
        let set = public.set("t", 60).unwrap();
        assert_eq!(
            set,
            "__Host-keygate_session=t; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(
            !set.to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("domain")
        );
        assert_eq!(
            public.clear(),
            [
                "__Host-keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
                "keygate_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure"
            ]
        );
    }
}
