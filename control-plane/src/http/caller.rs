//! What a passkey API request says about its caller, as axum extractors that run before the
//! handler, in the order the handler names them:
//!
//! - [`Admitted`]: the client address (put on every request by the listener, [`ClientAddr`])
//!   had a token in its rate bucket, and a state change (anything but GET) came from the
//!   relying party's own origin: a browser sends `Origin` with every cross-origin POST or
//!   DELETE, so no other site can act with the user's cookie;
//! - [`Caller`]: the signed-in user, from `Authorization: Bearer` or the session cookie;
//! - [`UserAgent`]: the `User-Agent` header, kept with new passkeys and sessions.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, ORIGIN, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};

use super::api_error::ApiError;
use super::cookies::session_cookie;
use super::passkey_api::PasskeyApi;
use crate::sessions::SignedIn;

/// The address the connection came from; the listener inserts it into every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The request may go on: within its address's rate, and from the page's origin.
#[derive(Debug)]
pub struct Admitted;

impl FromRequestParts<Arc<PasskeyApi>> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<PasskeyApi>,
    ) -> Result<Self, ApiError> {
        let Some(ClientAddr(client)) = parts.extensions.get::<ClientAddr>().copied() else {
            tracing::error!("a passkey request arrived without its client address");
            return Err(ApiError::internal());
        };
        api.rules().admit(client)?;
        if parts.method != Method::GET {
            check_origin(&parts.headers, api.origin())?;
        }
        Ok(Self)
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
        let token = session_token(&parts.headers);
        Ok(Self(api.rules().authenticate(token).await?))
    }
}

/// The session token from `Authorization: Bearer`, else from the session cookie.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    bearer.or_else(|| session_cookie(headers))
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
        assert_eq!(session_token(&headers), None);
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=b; keygate_session=v4.public.x; c=d"),
        );
        assert_eq!(session_token(&headers), Some("v4.public.x"));
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer v4.public.y"),
        );
        assert_eq!(session_token(&headers), Some("v4.public.y"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(session_token(&headers), Some("v4.public.x"));
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
