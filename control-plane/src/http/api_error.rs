//! Refusals as HTTP: `{"error":{"code","message"}}` with a 4xx (or 5xx) status, `Retry-After`
//! when waiting helps, and a cleared session cookie when the session was refused. Every error
//! the listener answers goes through [`ApiError`], so the shape is the same everywhere.

use std::time::Duration;

use axum::http::header::{CONNECTION, HeaderValue, RETRY_AFTER};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::cookies::ClearSessionCookie;
use crate::passkeys::refusal::Refusal;

/// Longest part of a request path repeated in a message.
const MAX_ECHOED_PATH_CHARS: usize = 200;
/// How long to wait before beginning again when the ceremony map is full.
const CEREMONIES_FULL_RETRY: Duration = Duration::from_secs(60);

/// A refusal: status, code, message (and when to retry, whether to forget the session).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
    clear_cookie: bool,
    close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            clear_cookie: false,
            close: false,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see the control plane's log",
        )
    }

    /// 404 for a path (or a method on it) that nothing answers.
    pub fn no_such_endpoint(method: &Method, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!(
                "no such endpoint: {method} {}",
                path.chars().take(MAX_ECHOED_PATH_CHARS).collect::<String>()
            ),
        )
    }

    /// Asks the client to close the connection after this response (a body that did not
    /// arrive leaves the connection in an unknown state).
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let status = match &refusal {
            Refusal::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::NotSignedIn
            | Refusal::Session(_)
            | Refusal::ConflictingSessionCookies
            | Refusal::AuthenticationFailed(_) => StatusCode::UNAUTHORIZED,
            Refusal::InvalidName(_)
            | Refusal::PolicyRefused(_)
            | Refusal::CeremonyUnknown
            | Refusal::CeremonyExpired
            | Refusal::MalformedCredential(_) => StatusCode::BAD_REQUEST,
            Refusal::EnrollmentNotFound | Refusal::PasskeyNotFound(_) => StatusCode::NOT_FOUND,
            Refusal::EnrollmentUsed | Refusal::EnrollmentExpired | Refusal::EnrollmentRevoked => {
                StatusCode::GONE
            }
            Refusal::UserDisabled | Refusal::EnrollmentVoided => StatusCode::FORBIDDEN,
            Refusal::TooManyCeremonies(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooManyCeremoniesFromClient(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::CredentialExists | Refusal::LastPasskey => StatusCode::CONFLICT,
            Refusal::Ceremony(error) => match error.code {
                "INTERNAL" => StatusCode::INTERNAL_SERVER_ERROR,
                "AUTHENTICATION_FAILED" => StatusCode::UNAUTHORIZED,
                _ => StatusCode::BAD_REQUEST,
            },
            Refusal::Store(error) => {
                tracing::error!(%error, "passkey endpoint failed in the store");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Refusal::Internal(what) => {
                tracing::error!(what, "passkey endpoint failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut error = Self::new(status, refusal.code(), refusal.to_string());
        error.retry_after = match refusal {
            Refusal::RateLimited(wait) => Some(wait),
            Refusal::TooManyCeremonies(_) => Some(CEREMONIES_FULL_RETRY),
            Refusal::TooManyCeremoniesFromClient(full) => Some(full.retry_after),
            _ => None,
        };
        // A refused session is of no use to the browser any more; nor are two that disagree.
        error.clear_cookie = matches!(
            refusal,
            Refusal::Session(_) | Refusal::ConflictingSessionCookies
        );
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = super::json_response(
            self.status,
            &json!({ "error": { "code": self.code, "message": self.message } }),
        );
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up, at least one.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, seconds.max(1).into());
        }
        if self.close {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if self.clear_cookie {
            response.extensions_mut().insert(ClearSessionCookie);
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sessions::SessionRefusal;

    fn answered(refusal: Refusal) -> Response {
        ApiError::from(refusal).into_response()
    }

    #[test]
    fn refusals_keep_their_statuses() {
        let cases = [
            (Refusal::RateLimited(Duration::from_millis(1)), 429),
            (Refusal::NotSignedIn, 401),
            (Refusal::Session(SessionRefusal::Expired), 401),
            (Refusal::InvalidName(String::new()), 400),
            (Refusal::PolicyRefused(String::new()), 400),
            (Refusal::EnrollmentNotFound, 404),
            (Refusal::EnrollmentUsed, 410),
            (Refusal::EnrollmentExpired, 410),
            (Refusal::UserDisabled, 403),
            (Refusal::TooManyCeremonies(crate::ceremonies::Full), 503),
            (
                Refusal::TooManyCeremoniesFromClient(crate::ceremonies::ClientFull {
                    limit: 20,
                    retry_after: Duration::from_secs(90),
                }),
                429,
            ),
            (Refusal::ConflictingSessionCookies, 401),
            (Refusal::CeremonyUnknown, 400),
            (Refusal::CeremonyExpired, 400),
            (Refusal::MalformedCredential(String::new()), 400),
            (Refusal::AuthenticationFailed("no"), 401),
            (Refusal::CredentialExists, 409),
            (Refusal::PasskeyNotFound("pk_x".into()), 404),
            (Refusal::LastPasskey, 409),
            (Refusal::Internal("test"), 500),
        ];
        for (refusal, status) in cases {
            let code = refusal.code();
            assert_eq!(answered(refusal).status().as_u16(), status, "{code}");
        }
    }

    #[test]
    fn waits_round_up_to_whole_seconds_and_refused_sessions_clear_the_cookie() {
        let limited = answered(Refusal::RateLimited(Duration::from_millis(1500)));
        assert_eq!(limited.headers()[RETRY_AFTER], "2");
        assert!(limited.extensions().get::<ClearSessionCookie>().is_none());
        let full = answered(Refusal::TooManyCeremonies(crate::ceremonies::Full));
        assert_eq!(full.headers()[RETRY_AFTER], "60");
        let revoked = answered(Refusal::Session(SessionRefusal::Revoked));
        assert!(revoked.extensions().get::<ClearSessionCookie>().is_some());
        let conflicting = answered(Refusal::ConflictingSessionCookies);
        assert!(
            conflicting
                .extensions()
                .get::<ClearSessionCookie>()
                .is_some()
        );
        let client_full = answered(Refusal::TooManyCeremoniesFromClient(
            crate::ceremonies::ClientFull {
                limit: 20,
                retry_after: Duration::from_millis(89_001),
            },
        ));
        assert_eq!(client_full.headers()[RETRY_AFTER], "90");
    }
}
