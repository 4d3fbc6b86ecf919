//! What a passkey API request says about its caller, as axum extractors that run before the
//! handler, in the order the handler names them:
//!
//! - [`Admitted`]: the client address (the TCP peer the listener puts on every request,
//!   [`ClientAddr`], or the client a trusted proxy names, `forwarded.rs`) had a token in its
//!   rate bucket (IPv6 per /64), and a state change (anything but GET) came from the relying
//!   party's own origin: a browser sends `Origin` with every cross-origin POST or DELETE, so no
//!   other site can act with the user's cookie;
//! - [`Caller`]: the signed-in user, from `Authorization: Bearer` or the session cookie (either
//!   name; two that differ are refused);
//! - [`UserAgent`]: the `User-Agent` header, kept with new passkeys and sessions.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, ORIGIN, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};

use super::api_error::ApiError;
use super::cookies::{ConflictingSessionCookies, session_cookie};
use super::passkey_api::PasskeyApi;
use crate::passkeys::refusal::Refusal;
use crate::sessions::SignedIn;

/// The address the connection came from (the TCP peer); the listener inserts it into every
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The request may go on: within its client's rate, and from the page's origin. Holds the
/// client's address (behind a trusted proxy, the one it forwarded), which ceremonies are
/// counted against.
#[derive(Debug)]
pub struct Admitted(pub IpAddr);

impl FromRequestParts<Arc<PasskeyApi>> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<PasskeyApi>,
    ) -> Result<Self, ApiError> {
        let Some(ClientAddr(peer)) = parts.extensions.get::<ClientAddr>().copied() else {
            tracing::error!("a passkey request arrived without its client address");
            return Err(ApiError::internal());
        };
        let client = api.trusted_proxies().client(peer, &parts.headers);
        api.rules().admit(client)?;
        if parts.method != Method::GET {
            check_origin(&parts.headers, api.origin())?;
        }
        Ok(Self(client))
    }
}

/// Anything but our own origin is refused; no `Origin` at all is not a browser's cross-site
/// request.
fn check_origin(headers: &HeaderMap, origin: &str) -> Result<(), ApiError> {
    match headers.get(ORIGIN) {
        None => Ok(()),
        Some(sent) if sent.as_bytes() == origin.as_bytes() => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ORIGIN_MISMATCH",
            "requests must come from the passkey page's own origin",
        )),
    }
}

/// The signed-in caller: the session checked, and a token taken from the user's bucket.
#[derive(Debug)]
pub struct Caller(pub SignedIn);

impl FromRequestParts<Arc<PasskeyApi>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<PasskeyApi>,
    ) -> Result<Self, ApiError> {
        let token = session_token(&parts.headers)
            .map_err(|ConflictingSessionCookies| Refusal::ConflictingSessionCookies)?;
        Ok(Self(api.rules().authenticate(token).await?))
    }
}

/// The session token from `Authorization: Bearer`, else from the session cookie (which is then
/// refused if two differ).
fn session_token(headers: &HeaderMap) -> Result<Option<&str>, ConflictingSessionCookies> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    match bearer {
        Some(token) => Ok(Some(token)),
        None => session_cookie(headers),
    }
}

/// The `User-Agent` header as text (empty when absent or not text).
#[derive(Debug)]
pub struct UserAgent(pub String);

impl<S: Send + Sync> FromRequestParts<S> for UserAgent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        Ok(Self(user_agent.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header::{COOKIE, HeaderValue};

    use super::*;

    #[test]
    fn tokens_come_from_bearer_or_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_token(&headers), Ok(None));
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=b; keygate_session=v4.public.x; c=d"),
        );
        assert_eq!(session_token(&headers), Ok(Some("v4.public.x")));
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer v4.public.y"),
        );
        assert_eq!(session_token(&headers), Ok(Some("v4.public.y")));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(session_token(&headers), Ok(Some("v4.public.x")));
        headers.insert(
            COOKIE,
            HeaderValue::from_static(
                "keygate_session=v4.public.x; __Host-keygate_session=v4.public.z",
            ),
        );
        assert_eq!(session_token(&headers), Err(ConflictingSessionCookies));
    }

    #[test]
    fn only_the_pages_own_origin_may_change_state() {
        let origin = "http://localhost:7080";
        let mut headers = HeaderMap::new();
        assert!(
            check_origin(&headers, origin).is_ok(),
            "no Origin: not a browser"
        );
        headers.insert(ORIGIN, HeaderValue::from_static("http://localhost:7080"));
        assert!(check_origin(&headers, origin).is_ok());
        for other in ["https://evil.example", "http://localhost:7081", "null"] {
            headers.insert(ORIGIN, HeaderValue::from_static(other));
            assert!(check_origin(&headers, origin).is_err(), "{other}");
        }
    }
}
