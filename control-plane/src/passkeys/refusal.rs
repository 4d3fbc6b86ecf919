//! Why a self-service step was refused: the one error vocabulary of the passkey page's rules.
//!
//! Each refusal has a stable code (the `code` of the API's `{"error":{"code","message"}}`) and
//! a message a person can act on; which HTTP status it becomes is the HTTP layer's business
//! (`http/api_error.rs`).

use std::time::Duration;

use crate::ceremonies::{ClientFull, Full, NoRoom};
use crate::sessions::SessionRefusal;
use crate::store::{EnrollmentState, StoreError};
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
    /// Two session cookies (under either name) with different values.
    #[error(
        "the request carries two different session cookies; sign in again (or clear this \
         site's cookies)"
    )]
    ConflictingSessionCookies,
    /// The device name breaks the rules (`users::clean_passkey_name`).
    #[error("{0}")]
    InvalidName(String),
    #[error("this enrollment link is not valid; ask for a new one")]
    EnrollmentNotFound,
    #[error("this enrollment link has been used already; ask for a new one")]
    EnrollmentUsed,
    #[error("this enrollment link has expired; ask for a new one")]
    EnrollmentExpired,
    /// An operator revoked the link.
    #[error("this enrollment link was revoked; ask for a new one")]
    EnrollmentRevoked,
    /// The link was voided when its user was disabled; enabling the user does not revive it.
    /// Its code is `USER_DISABLED`, as for a disabled user.
    #[error("this enrollment link was voided when the account was disabled; ask for a new one")]
    EnrollmentVoided,
    #[error("this account is disabled")]
    UserDisabled,
    /// The ceremonies in progress are at their cap.
    #[error("{0}")]
    TooManyCeremonies(Full),
    /// The client (address, or IPv6 /64) has as many ceremonies in progress as it may.
    #[error("{0}")]
    TooManyCeremoniesFromClient(ClientFull),
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
    /// The passkey breaks `[passkey_policy]` (the message names the rule and the
    /// authenticator); nothing was stored.
    #[error("this passkey is not accepted here: {0}; use another passkey provider or device")]
    PolicyRefused(String),
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
            Self::ConflictingSessionCookies => "MALFORMED",
            Self::InvalidName(_) => "INVALID_NAME",
            Self::EnrollmentNotFound => "ENROLLMENT_NOT_FOUND",
            Self::EnrollmentUsed => "ENROLLMENT_USED",
            Self::EnrollmentExpired => "ENROLLMENT_EXPIRED",
            Self::EnrollmentRevoked => "ENROLLMENT_REVOKED",
            Self::EnrollmentVoided | Self::UserDisabled => "USER_DISABLED",
            Self::TooManyCeremonies(_) => "TOO_MANY_CEREMONIES",
            Self::TooManyCeremoniesFromClient(_) => "TOO_MANY_CEREMONIES_FROM_ADDRESS",
            Self::CeremonyUnknown => "CEREMONY_UNKNOWN",
            Self::CeremonyExpired => "CEREMONY_EXPIRED",
            Self::Ceremony(error) => error.code,
            Self::MalformedCredential(_) => "MALFORMED_CREDENTIAL",
            Self::AuthenticationFailed(_) => "AUTHENTICATION_FAILED",
            Self::CredentialExists => "CREDENTIAL_EXISTS",
            Self::PolicyRefused(_) => "POLICY_REFUSED",
            Self::PasskeyNotFound(_) => "NOT_FOUND",
            Self::LastPasskey => "LAST_PASSKEY",
            Self::Store(_) | Self::Internal(_) => "INTERNAL",
        }
    }
}

impl Refusal {
    /// Why an enrollment link in `state` cannot begin or finish an enrollment, if it cannot:
    /// only an open link can.
    pub fn for_link(state: EnrollmentState) -> Option<Self> {
        match state {
            EnrollmentState::Open => None,
            EnrollmentState::Used => Some(Self::EnrollmentUsed),
            EnrollmentState::Expired => Some(Self::EnrollmentExpired),
            EnrollmentState::Revoked => Some(Self::EnrollmentRevoked),
            EnrollmentState::Voided => Some(Self::EnrollmentVoided),
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

impl From<NoRoom> for Refusal {
    fn from(no_room: NoRoom) -> Self {
        match no_room {
            NoRoom::Full(full) => Self::TooManyCeremonies(full),
            NoRoom::Client(client) => Self::TooManyCeremoniesFromClient(client),
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
    fn every_closed_link_has_its_own_refusal_and_an_open_one_none() {
        let refused = |state| Refusal::for_link(state).map(|refusal| refusal.code());
        assert_eq!(refused(EnrollmentState::Open), None);
        assert_eq!(refused(EnrollmentState::Used), Some("ENROLLMENT_USED"));
        assert_eq!(
            refused(EnrollmentState::Expired),
            Some("ENROLLMENT_EXPIRED")
        );
        assert_eq!(
            refused(EnrollmentState::Revoked),
            Some("ENROLLMENT_REVOKED")
        );
        assert_eq!(refused(EnrollmentState::Voided), Some("USER_DISABLED"));
        let revoked = Refusal::EnrollmentRevoked.to_string();
        assert_eq!(
            revoked,
            "this enrollment link was revoked; ask for a new one"
        );
    }

    #[test]
    fn an_echoed_passkey_id_is_shortened() {
        let message = Refusal::PasskeyNotFound("x".repeat(1000)).to_string();
        assert_eq!(message, format!("you have no passkey {:?}", "x".repeat(64)));
    }
}
