//! Why a self-service step was refused: the one error vocabulary of the passkey page's rules.
//!
//! Each refusal has a stable code (the `code` of the API's `{"error":{"code","message"}}`) and
//! a message a person can act on; which HTTP status it becomes is the HTTP layer's business
//! (`http/api_error.rs`).

use std::time::Duration;

use crate::ceremonies::Full;
use crate::sessions::SessionRefusal;
use crate::store::StoreError;
use crate::webauthn::CeremonyError;

/// Longest part of a caller-supplied passkey id repeated in a message.
const MAX_ECHOED_ID_CHARS: usize = 64;

/// A refused self-service step.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Over the per-address or per-user rate; the next request is allowed after the wait.
    #[error("too many requests; slow down")]
    RateLimited(Duration),
    /// No session token was presented.
    #[error("sign in first")]
    NotSignedIn,
    /// The presented session is not (or no longer) valid.
    #[error("{0}")]
    Session(SessionRefusal),
    /// The device name breaks the rules (`users::clean_passkey_name`).
    #[error("{0}")]
    InvalidName(String),
    #[error("this enrollment link is not valid; ask for a new one")]
    EnrollmentNotFound,
    #[error("this enrollment link has been used already; ask for a new one")]
    EnrollmentUsed,
    #[error("this enrollment link has expired; ask for a new one")]
    EnrollmentExpired,
    #[error("this account is disabled")]
    UserDisabled,
    /// The ceremonies in progress are at their cap.
    #[error("{0}")]
    TooManyCeremonies(Full),
    /// No such ceremony (finished already, never begun, another kind, or another session's).
    #[error("no such ceremony in progress (finished already, or never begun); start again")]
    CeremonyUnknown,
    #[error("this ceremony took too long; start again")]
    CeremonyExpired,
    /// The relying party refused the credential (its code says how).
    #[error("{0}")]
    Ceremony(CeremonyError),
    /// The credential is not a WebAuthn response of the expected shape.
    #[error("{0}")]
    MalformedCredential(String),
    /// The answering passkey is unknown, another user's, or does not match its user.
    #[error("{0}")]
    AuthenticationFailed(&'static str),
    #[error("this passkey is registered already")]
    CredentialExists,
    /// The signed-in user has no passkey with this id (as given, shortened).
    #[error("you have no passkey {:?}", .0.chars().take(MAX_ECHOED_ID_CHARS).collect::<String>())]
    PasskeyNotFound(String),
    #[error(
        "This is your only passkey. Removing it would lock you out of your account: add another \
         passkey first, then remove this one."
    )]
    LastPasskey,
    /// The store failed; the detail goes to the log, never to the caller.
    #[error("internal error; see the control plane's log")]
    Store(#[source] StoreError),
    /// Something that cannot happen did (the detail is for the log).
    #[error("internal error; see the control plane's log")]
    Internal(&'static str),
}

impl Refusal {
    /// The stable code in the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited(_) => "RATE_LIMITED",
            Self::NotSignedIn => "MISSING",
            Self::Session(refusal) => refusal.code(),
            Self::InvalidName(_) => "INVALID_NAME",
            Self::EnrollmentNotFound => "ENROLLMENT_NOT_FOUND",
            Self::EnrollmentUsed => "ENROLLMENT_USED",
            Self::EnrollmentExpired => "ENROLLMENT_EXPIRED",
            Self::UserDisabled => "USER_DISABLED",
            Self::TooManyCeremonies(_) => "TOO_MANY_CEREMONIES",
            Self::CeremonyUnknown => "CEREMONY_UNKNOWN",
            Self::CeremonyExpired => "CEREMONY_EXPIRED",
            Self::Ceremony(error) => error.code,
            Self::MalformedCredential(_) => "MALFORMED_CREDENTIAL",
            Self::AuthenticationFailed(_) => "AUTHENTICATION_FAILED",
            Self::CredentialExists => "CREDENTIAL_EXISTS",
            Self::PasskeyNotFound(_) => "NOT_FOUND",
            Self::LastPasskey => "LAST_PASSKEY",
            Self::Store(_) | Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<SessionRefusal> for Refusal {
    fn from(refusal: SessionRefusal) -> Self {
        match refusal {
            SessionRefusal::Store(error) => Self::Store(error),
            refusal => Self::Session(refusal),
        }
    }
}

impl From<CeremonyError> for Refusal {
    fn from(error: CeremonyError) -> Self {
        Self::Ceremony(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_inside_a_session_check_is_internal() {
        let refusal = Refusal::from(SessionRefusal::Store(StoreError::Conflict(
            "disk on fire".into(),
        )));
        assert!(matches!(refusal, Refusal::Store(_)));
        assert_eq!(refusal.code(), "INTERNAL");
        assert!(!refusal.to_string().contains("disk"), "no detail leaks");
    }

    #[test]
    fn an_echoed_passkey_id_is_shortened() {
        let message = Refusal::PasskeyNotFound("x".repeat(1000)).to_string();
        assert_eq!(message, format!("you have no passkey {:?}", "x".repeat(64)));
    }
}
