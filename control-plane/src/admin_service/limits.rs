//! The Admin service's limit methods (DESIGN.md, "Limits and permissions per key"): UpdateKey
//! and the identity methods, wire messages to the operations of `crate::keys` and back, and
//! the wire form of the limits a key or an identity carries (with the usage the aggregator
//! last summed). Changes need `keys:write`, reads `keys:read`.

use keygate_proto::limits::{Holder, RateLimit, RefillSpec};
use keygate_proto::time::now_unix_ms;
use keygate_proto::{convert, pb};
use tonic::{Request, Response, Status};

use super::{key_message, status};
use crate::auth::{Scope, require};
use crate::keys::{CreateIdentity, Keys, UpdateIdentity, UpdateKey};
use crate::limits::Limits;
use crate::store::{CreditState, CreditsChange, IdentityRecord, RefillChange};

/// A holder's credits on the wire.
pub(super) fn credits_message(credits: &CreditState) -> pb::Credits {
    pb::Credits {
        remaining: credits.remaining,
        leased: credits.leased,
        refill: credits.refill.map(|refill| pb::Refill {
            amount: refill.amount,
            interval_ms: refill.interval_ms,
            next_unix_ms: credits.next_refill_unix_ms.unwrap_or(0),
        }),
    }
}

/// What every gateway reported in the current window of each of a holder's rate limits.
pub(super) fn usage_messages(
    limits: &Limits,
    holder: &Holder,
    ratelimits: &[RateLimit],
) -> Vec<pb::LimitUsage> {
    limits
        .usage
        .current(holder, ratelimits, now_unix_ms())
        .into_iter()
        .zip(ratelimits)
        .map(|((window_start_unix_ms, used), limit)| pb::LimitUsage {
            limit: limit.name.clone(),
            window_start_unix_ms,
            used,
        })
        .collect()
}

fn identity_message(identity: &IdentityRecord, limits: &Limits) -> pb::IdentityRecord {
    pb::IdentityRecord {
        identity_id: identity.id.clone(),
        ratelimits: identity.ratelimits.iter().map(Into::into).collect(),
        credits: identity.credits.as_ref().map(credits_message),
        created_unix_ms: identity.created_unix_ms,
        revision: identity.revision.0,
        usage: usage_messages(
            limits,
            &Holder::Identity(identity.id.clone()),
            &identity.ratelimits,
        ),
    }
}

/// Rate limits from the wire, checked.
pub(super) fn ratelimits(wire: Vec<pb::RateLimit>) -> Result<Vec<RateLimit>, Status> {
    convert::ratelimits(wire).map_err(|error| Status::invalid_argument(error.0))
}

pub(super) fn refill(wire: Option<pb::Refill>) -> Option<RefillSpec> {
    wire.map(|refill| RefillSpec {
        amount: refill.amount,
        interval_ms: refill.interval_ms,
    })
}

/// Credits and refill of an update request: set and clear together are refused.
fn changes(
    credits: Option<u64>,
    clear_credits: bool,
    wire_refill: Option<pb::Refill>,
    clear_refill: bool,
) -> Result<(CreditsChange, RefillChange), Status> {
    let credits = match (credits, clear_credits) {
        (Some(_), true) => {
            return Err(Status::invalid_argument(
                "credits and clear_credits contradict each other: give one",
            ));
        }
        (Some(credits), false) => CreditsChange::Set(credits),
        (None, true) => CreditsChange::Clear,
        (None, false) => CreditsChange::Keep,
    };
    let refill = match (refill(wire_refill), clear_refill) {
        (Some(_), true) => {
            return Err(Status::invalid_argument(
                "refill and clear_refill contradict each other: give one",
            ));
        }
        (Some(refill), false) => RefillChange::Set(refill),
        (None, true) => RefillChange::Clear,
        (None, false) => RefillChange::Keep,
    };
    Ok((credits, refill))
}

pub(super) async fn update_key(
    keys: &Keys,
    limits: &Limits,
    request: Request<pb::UpdateKeyRequest>,
) -> Result<Response<pb::KeyChange>, Status> {
    let actor = require(&request, Scope::KeysWrite)?.name;
    let request = request.into_inner();
    let (credits, refill) = changes(
        request.credits,
        request.clear_credits,
        request.refill,
        request.clear_refill,
    )?;
    let update = UpdateKey {
        key_id: request.key_id,
        ratelimits: request
            .set_ratelimits
            .then(|| ratelimits(request.ratelimits))
            .transpose()?,
        credits,
        refill,
        permissions: request.set_permissions.then_some(request.permissions),
        identity: request
            .identity
            .map(|identity| (!identity.is_empty()).then_some(identity)),
    };
    let changed = keys.update_limits(update, &actor).await.map_err(status)?;
    tracing::info!(key_id = %changed.key.id, revision = %changed.revision, %actor, "key limits changed");
    Ok(Response::new(pb::KeyChange {
        revision: changed.revision.0,
        key_id: changed.key.id.to_string(),
        key: Some(key_message(&changed.key, limits)),
    }))
}

pub(super) async fn create_identity(
    keys: &Keys,
    limits: &Limits,
    request: Request<pb::CreateIdentityRequest>,
) -> Result<Response<pb::IdentityChange>, Status> {
    let actor = require(&request, Scope::KeysWrite)?.name;
    let request = request.into_inner();
    let create = CreateIdentity {
        id: request.identity_id,
        ratelimits: ratelimits(request.ratelimits)?,
        credits: request.credits,
        refill: refill(request.refill),
    };
    let identity = keys.create_identity(create, &actor).await.map_err(status)?;
    tracing::info!(identity_id = %identity.id, revision = %identity.revision, %actor, "identity created");
    Ok(Response::new(pb::IdentityChange {
        revision: identity.revision.0,
        identity: Some(identity_message(&identity, limits)),
    }))
}

pub(super) async fn update_identity(
    keys: &Keys,
    limits: &Limits,
    request: Request<pb::UpdateIdentityRequest>,
) -> Result<Response<pb::IdentityChange>, Status> {
    let actor = require(&request, Scope::KeysWrite)?.name;
    let request = request.into_inner();
    let (credits, refill) = changes(
        request.credits,
        request.clear_credits,
        request.refill,
        request.clear_refill,
    )?;
    let update = UpdateIdentity {
        id: request.identity_id,
        ratelimits: request
            .set_ratelimits
            .then(|| ratelimits(request.ratelimits))
            .transpose()?,
        credits,
        refill,
    };
    let (identity, revision) = keys.update_identity(update, &actor).await.map_err(status)?;
    tracing::info!(identity_id = %identity.id, %revision, %actor, "identity changed");
    Ok(Response::new(pb::IdentityChange {
        revision: revision.0,
        identity: Some(identity_message(&identity, limits)),
    }))
}

pub(super) async fn get_identity(
    keys: &Keys,
    limits: &Limits,
    request: Request<pb::GetIdentityRequest>,
) -> Result<Response<pb::IdentityRecord>, Status> {
    require(&request, Scope::KeysRead)?;
    let identity = keys
        .get_identity(&request.into_inner().identity_id)
        .await
        .map_err(status)?;
    Ok(Response::new(identity_message(&identity, limits)))
}

pub(super) async fn list_identities(
    keys: &Keys,
    limits: &Limits,
    request: Request<pb::ListIdentitiesRequest>,
) -> Result<Response<pb::ListIdentitiesResponse>, Status> {
    require(&request, Scope::KeysRead)?;
    let request = request.into_inner();
    let page = keys
        .list_identities(request.limit, &request.cursor)
        .await
        .map_err(status)?;
    Ok(Response::new(pb::ListIdentitiesResponse {
        identities: page
            .identities
            .iter()
            .map(|identity| identity_message(identity, limits))
            .collect(),
        next_cursor: page.next_cursor.unwrap_or_default(),
    }))
}

pub(super) async fn delete_identity(
    keys: &Keys,
    request: Request<pb::DeleteIdentityRequest>,
) -> Result<Response<pb::IdentityChange>, Status> {
    let actor = require(&request, Scope::KeysWrite)?.name;
    let id = request.into_inner().identity_id;
    let revision = keys.delete_identity(&id, &actor).await.map_err(status)?;
    tracing::info!(identity_id = %id, %revision, %actor, "identity deleted");
    Ok(Response::new(pb::IdentityChange {
        revision: revision.0,
        identity: None,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::KeyError;

    #[test]
    fn set_and_clear_together_are_refused() {
        let refill = || {
            Some(pb::Refill {
                amount: 10,
                interval_ms: 60_000,
                next_unix_ms: 0,
            })
        };
        assert!(changes(Some(5), true, None, false).is_err());
        assert!(changes(None, false, refill(), true).is_err());
        assert_eq!(
            changes(Some(5), false, refill(), false).unwrap(),
            (
                CreditsChange::Set(5),
                RefillChange::Set(RefillSpec {
                    amount: 10,
                    interval_ms: 60_000
                })
            )
        );
        assert_eq!(
            changes(None, true, None, true).unwrap(),
            (CreditsChange::Clear, RefillChange::Clear)
        );
        assert_eq!(
            changes(None, false, None, false).unwrap(),
            (CreditsChange::Keep, RefillChange::Keep)
        );
    }

    #[test]
    fn bad_rate_limits_are_invalid_arguments() {
        let zero = pb::RateLimit {
            name: "requests".into(),
            limit: 0,
            window_ms: 1_000,
        };
        let error = ratelimits(vec![zero]).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("at least 1"), "{error}");
    }

    #[test]
    fn identity_in_use_is_a_failed_precondition_naming_the_count() {
        let error = KeyError::from(crate::store::StoreError::IdentityInUse {
            id: "acme".into(),
            keys: 3,
        });
        let status = status(error);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("3 key(s)"), "{status}");
    }
}
