//! Deciding on a request's credential: the verdict, then the key's limits. The request
//! pipeline (`handler.rs`) and the gateway's own check endpoints (`verify_endpoint.rs`,
//! `authz_endpoint.rs`, `authz_grpc.rs`) share this, and the endpoints take it rather than the
//! whole handler, so no module that the handler calls calls back into it.

use crate::credential::CredentialHeaders;
use crate::limits::{Admission, Attempt};
use crate::route::Route;
use crate::verify::{Code, Grant, Verifier};

/// What deciding on a credential needs.
pub(crate) struct Checks {
    pub verifier: Verifier,
    pub credentials: CredentialHeaders,
}

impl Checks {
    /// The limits decision on a valid credential for `route`: a key's permissions, credits
    /// and rate limits ([`crate::limits::Limiter::admit`]); a session on a route that requires
    /// permissions is refused (sessions carry none).
    ///
    /// `now_unix_ms` is the instant the verdict was made at. For a key the replica had to
    /// look up it is a lookup's wait old (at most the miss timeout), which only moves the
    /// request into the window it arrived in.
    pub(crate) async fn admit(&self, grant: &Grant, route: &Route, now_unix_ms: i64) -> Admission {
        self.admit_with(grant, &route.permissions, route.cost, now_unix_ms)
            .await
    }

    /// [`Checks::admit`] with the permissions and cost given (the verify endpoint's).
    pub(crate) async fn admit_with(
        &self,
        grant: &Grant,
        required: &[String],
        cost: u64,
        now_unix_ms: i64,
    ) -> Admission {
        let limiter = self.verifier.replica().limiter();
        match grant {
            Grant::Key(key) => match limiter.admit_now(key.policy(), required, cost, now_unix_ms) {
                Attempt::Done(admission) => admission,
                waiting => {
                    limiter
                        .settle(waiting, key.policy(), required, cost, now_unix_ms)
                        .await
                }
            },
            Grant::Session(_) if required.is_empty() => Admission::Allowed(None),
            Grant::Session(_) => limiter.refuse(Code::InsufficientPermissions),
        }
    }
}

/// Whether a valid credential must go through the limits: a key with a policy, or a route
/// that requires permissions.
#[inline]
pub(crate) fn needs_limits(grant: &Grant, route: &Route) -> bool {
    !route.permissions.is_empty()
        || match grant {
            Grant::Key(key) => key.policy().is_some(),
            Grant::Session(_) => false,
        }
}
