//! The Admin gRPC service: the one module that converts admin wire messages to domain types and
//! back. Authentication runs before any method (the layer in `auth::layer`), and each method
//! begins by requiring its scope (`auth::require`), whose operator's name is the audit actor;
//! the rules live in `keys`. The user, passkey and session methods are in the `passkeys`
//! submodule (rules in `users`), the operator-token methods in `tokens` (rules in
//! `crate::tokens`), UpdateKey and the identity methods in `limits` (rules in `keys`, usage
//! from `crate::limits`).

mod limits;
mod passkeys;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use keygate_proto::limits::Holder;
use keygate_proto::{Revision, pb};
use tonic::{Request, Response, Status};

use crate::auth::{Scope, require, require_any};
use crate::event_log::EventLog;
use crate::keys::{CreateKey, IssuedKey, KeyError, Keys, ListKeys};
use crate::limits::Limits;
use crate::registry::{GatewayStatus, Registry};
use crate::store::{AuditEntry, KeyRecord};
use crate::tokens::Tokens;
use crate::users::Users;

/// The Admin service over the key operations and the gateway registry.
pub struct AdminService {
    keys: Keys,
    users: Users,
    tokens: Tokens,
    registry: Arc<Registry>,
    event_log: Arc<EventLog>,
    /// Usage of rate limits, shown with keys and identities.
    limits: Arc<Limits>,
}

impl AdminService {
    /// A service over `keys`, `users` and `tokens`, reporting gateways from `registry` (and
    /// ending the streams of revoked gateway tokens there) and usage from `limits`.
    pub fn new(
        keys: Keys,
        users: Users,
        tokens: Tokens,
        registry: Arc<Registry>,
        event_log: Arc<EventLog>,
        limits: Arc<Limits>,
    ) -> Self {
        Self {
            keys,
            users,
            tokens,
            registry,
            event_log,
            limits,
        }
    }
}

/// Maps refusals to statuses. Store failures are logged here and reported without detail, so
/// no SQL or file path reaches the caller.
fn status(error: KeyError) -> Status {
    match error {
        KeyError::InvalidArgument(message) => Status::invalid_argument(message),
        KeyError::NotFound(message) => Status::not_found(message),
        KeyError::AlreadyExists(message) => Status::already_exists(message),
        KeyError::FailedPrecondition(message) => Status::failed_precondition(message),
        KeyError::Store(error) => {
            tracing::error!(%error, "admin operation failed in the store");
            Status::internal("internal store error; see the control plane's log")
        }
    }
}

fn key_message(key: &KeyRecord, limits: &Limits) -> pb::Key {
    pb::Key {
        key_id: key.id.to_string(),
        owner: key.owner.clone(),
        name: key.name.clone(),
        start: key.start.clone(),
        enabled: key.enabled,
        created_unix_ms: key.created_unix_ms,
        expires_unix_ms: key.expires_unix_ms,
        meta: key
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        revision: key.revision.0,
        ratelimits: key.limits.ratelimits.iter().map(Into::into).collect(),
        credits: key.credits.as_ref().map(limits::credits_message),
        permissions: key.limits.permissions.clone(),
        identity: key.limits.identity.clone().unwrap_or_default(),
        usage: limits::usage_messages(limits, &Holder::Key(key.id), &key.limits.ratelimits),
    }
}

fn issued_message(issued: IssuedKey, limits: &Limits) -> pb::IssuedKey {
    pb::IssuedKey {
        key_id: issued.record.id.to_string(),
        record: Some(key_message(&issued.record, limits)),
        key: issued.plaintext,
        revision: issued.revision.0,
    }
}

/// Longest `--wait` a caller may ask for.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// `--wait` without `--timeout`: the contract's default propagation bound.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn gateway_message(gateway: GatewayStatus, event_log: &EventLog) -> pb::Gateway {
    let head = event_log.head();
    // Lag in time: how long ago the oldest change the gateway is missing was committed.
    let lag_ms = if gateway.applied >= head {
        Some(0)
    } else {
        event_log
            .committed_at(gateway.applied.next())
            .map(|committed| millis(committed.elapsed()))
    };
    pb::Gateway {
        lag_revisions: head.0.saturating_sub(gateway.applied.0),
        lag_ms,
        staleness_ms: gateway.staleness_ms,
        propagation_bound_ms: millis(gateway.propagation_bound),
        stale_policy: gateway.stale_policy,
        credential: gateway.credential,
        gateway_id: gateway.id,
        region: gateway.region,
        address: gateway.address,
        version: gateway.version,
        applied_revision: gateway.applied.0,
        last_seen_unix_ms: gateway.last_seen_unix_ms,
        connected_unix_ms: gateway.connected_unix_ms,
        connected: gateway.connected,
    }
}

fn audit_message(entry: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        id: entry.id,
        at_unix_ms: entry.at_unix_ms,
        actor: entry.actor,
        action: entry.action,
        target: entry.target,
        revision: entry.revision.0,
        detail_json: entry.detail_json,
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::IssuedKey>, Status> {
        let actor = require_any(&request, &[Scope::KeysWrite, Scope::KeysCreate])?.name;
        let request = request.into_inner();
        let create = CreateKey {
            owner: request.owner,
            prefix: request.prefix,
            name: request.name,
            expires_unix_ms: request.expires_unix_ms,
            meta: request.meta.into_iter().collect(),
            disabled: request.disabled,
            ratelimits: limits::ratelimits(request.ratelimits)?,
            credits: request.credits,
            refill: limits::refill(request.refill),
            permissions: request.permissions,
            identity: (!request.identity.is_empty()).then_some(request.identity),
        };
        let issued = self.keys.create(create, &actor).await.map_err(status)?;
        tracing::info!(key_id = %issued.record.id, owner = %issued.record.owner, revision = %issued.revision, %actor, "key created");
        Ok(Response::new(issued_message(issued, &self.limits)))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        require(&request, Scope::KeysRead)?;
        let key = self
            .keys
            .get(&request.into_inner().key_id)
            .await
            .map_err(status)?;
        Ok(Response::new(key_message(&key, &self.limits)))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        require(&request, Scope::KeysRead)?;
        let request = request.into_inner();
        let page = self
            .keys
            .list(ListKeys {
                owner: request.owner,
                limit: request.limit,
                cursor: request.cursor,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: page
                .keys
                .iter()
                .map(|key| key_message(key, &self.limits))
                .collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn set_key_enabled(
        &self,
        request: Request<pb::SetKeyEnabledRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        // Disabling is the on-call scope's one power; enabling needs keys:write.
        let actor = if request.get_ref().enabled {
            require(&request, Scope::KeysWrite)?
        } else {
            require_any(&request, &[Scope::KeysWrite, Scope::KeysDisable])?
        }
        .name;
        let request = request.into_inner();
        let changed = self
            .keys
            .set_enabled(&request.key_id, request.enabled, &actor)
            .await
            .map_err(status)?;
        tracing::info!(key_id = %changed.key.id, enabled = changed.key.enabled, revision = %changed.revision, %actor, "key enabled state set");
        Ok(Response::new(pb::KeyChange {
            revision: changed.revision.0,
            key_id: changed.key.id.to_string(),
            key: Some(key_message(&changed.key, &self.limits)),
        }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let actor = require(&request, Scope::KeysWrite)?.name;
        let key_id = request.into_inner().key_id;
        let revision = self.keys.delete(&key_id, &actor).await.map_err(status)?;
        tracing::info!(%key_id, %revision, %actor, "key deleted");
        Ok(Response::new(pb::KeyChange {
            revision: revision.0,
            key_id,
            key: None,
        }))
    }

    async fn reroll_key(
        &self,
        request: Request<pb::RerollKeyRequest>,
    ) -> Result<Response<pb::IssuedKey>, Status> {
        let actor = require(&request, Scope::KeysWrite)?.name;
        let request = request.into_inner();
        let issued = self
            .keys
            .reroll(&request.key_id, request.grace_ms, &actor)
            .await
            .map_err(status)?;
        tracing::info!(old_key_id = %request.key_id, new_key_id = %issued.record.id, grace_ms = request.grace_ms, revision = %issued.revision, %actor, "key rerolled");
        Ok(Response::new(issued_message(issued, &self.limits)))
    }

    async fn revoke_owner(
        &self,
        request: Request<pb::RevokeOwnerRequest>,
    ) -> Result<Response<pb::RevokeOwnerResponse>, Status> {
        let actor = require(&request, Scope::KeysWrite)?.name;
        let owner = request.into_inner().owner;
        let revoked = self
            .keys
            .revoke_owner(&owner, &actor)
            .await
            .map_err(status)?;
        tracing::info!(%owner, deleted = revoked.deleted.len(), revision = %revoked.revision, %actor, "owner revoked");
        Ok(Response::new(pb::RevokeOwnerResponse {
            revision: revoked.revision.0,
            deleted_key_ids: revoked.deleted.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        limits::update_key(&self.keys, &self.limits, request).await
    }

    async fn create_identity(
        &self,
        request: Request<pb::CreateIdentityRequest>,
    ) -> Result<Response<pb::IdentityChange>, Status> {
        limits::create_identity(&self.keys, &self.limits, request).await
    }

    async fn update_identity(
        &self,
        request: Request<pb::UpdateIdentityRequest>,
    ) -> Result<Response<pb::IdentityChange>, Status> {
        limits::update_identity(&self.keys, &self.limits, request).await
    }

    async fn get_identity(
        &self,
        request: Request<pb::GetIdentityRequest>,
    ) -> Result<Response<pb::IdentityRecord>, Status> {
        limits::get_identity(&self.keys, &self.limits, request).await
    }

    async fn list_identities(
        &self,
        request: Request<pb::ListIdentitiesRequest>,
    ) -> Result<Response<pb::ListIdentitiesResponse>, Status> {
        limits::list_identities(&self.keys, &self.limits, request).await
    }

    async fn delete_identity(
        &self,
        request: Request<pb::DeleteIdentityRequest>,
    ) -> Result<Response<pb::IdentityChange>, Status> {
        limits::delete_identity(&self.keys, request).await
    }

    async fn list_gateways(
        &self,
        request: Request<pb::ListGatewaysRequest>,
    ) -> Result<Response<pb::ListGatewaysResponse>, Status> {
        require(&request, Scope::GatewaysRead)?;
        let bounds = self.keys.log_bounds().await.map_err(status)?;
        let head = self.event_log.head().0;
        let gateways = self
            .registry
            .list()
            .into_iter()
            .map(|gateway| gateway_message(gateway, &self.event_log))
            .collect();
        Ok(Response::new(pb::ListGatewaysResponse {
            gateways,
            head_revision: head,
            oldest_retained_revision: bounds.oldest_retained.0,
        }))
    }

    async fn wait_for_revision(
        &self,
        request: Request<pb::WaitForRevisionRequest>,
    ) -> Result<Response<pb::WaitForRevisionResponse>, Status> {
        // Whoever may make a change may wait for it to reach the gateways.
        require_any(
            &request,
            &[
                Scope::GatewaysRead,
                Scope::KeysWrite,
                Scope::KeysCreate,
                Scope::KeysDisable,
                Scope::PasskeysWrite,
                Scope::UsersWrite,
            ],
        )?;
        let request = request.into_inner();
        let revision = Revision(request.revision);
        if revision > self.event_log.head() {
            return Err(Status::invalid_argument(format!(
                "revision {revision} has not been committed (head is {})",
                self.event_log.head()
            )));
        }
        let timeout = match request.timeout_ms {
            0 => DEFAULT_WAIT,
            ms => Duration::from_millis(ms),
        };
        if timeout > MAX_WAIT {
            return Err(Status::invalid_argument(format!(
                "timeout must be at most {}s",
                MAX_WAIT.as_secs()
            )));
        }
        let outcome = self.registry.wait_for(revision, timeout).await;
        Ok(Response::new(pb::WaitForRevisionResponse {
            complete: outcome.complete,
            elapsed_ms: millis(outcome.elapsed),
            acked: outcome.acked,
            pending: outcome
                .pending
                .into_iter()
                .map(|gateway| gateway_message(gateway, &self.event_log))
                .collect(),
            past_bound: outcome.past_bound,
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        require(&request, Scope::AuditRead)?;
        let entries = self
            .keys
            .audit(request.into_inner().limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries.into_iter().map(audit_message).collect(),
        }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::UserChange>, Status> {
        passkeys::create_user(&self.users, request).await
    }

    async fn set_user_enabled(
        &self,
        request: Request<pb::SetUserEnabledRequest>,
    ) -> Result<Response<pb::UserChange>, Status> {
        passkeys::set_user_enabled(&self.users, request).await
    }

    async fn create_enrollment(
        &self,
        request: Request<pb::CreateEnrollmentRequest>,
    ) -> Result<Response<pb::Enrollment>, Status> {
        passkeys::create_enrollment(&self.users, request).await
    }

    async fn list_passkeys(
        &self,
        request: Request<pb::ListPasskeysRequest>,
    ) -> Result<Response<pb::ListPasskeysResponse>, Status> {
        passkeys::list_passkeys(&self.users, request).await
    }

    async fn rename_passkey(
        &self,
        request: Request<pb::RenamePasskeyRequest>,
    ) -> Result<Response<pb::Passkey>, Status> {
        passkeys::rename_passkey(&self.users, request).await
    }

    async fn revoke_passkey(
        &self,
        request: Request<pb::RevokePasskeyRequest>,
    ) -> Result<Response<pb::RevokePasskeyResponse>, Status> {
        passkeys::revoke_passkey(&self.users, request).await
    }

    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        passkeys::revoke_sessions(&self.users, request).await
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        passkeys::rotate_signing_key(&self.users, request).await
    }

    async fn list_signing_keys(
        &self,
        request: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        passkeys::list_signing_keys(&self.users, request).await
    }

    async fn revoke_signing_key(
        &self,
        request: Request<pb::RevokeSigningKeyRequest>,
    ) -> Result<Response<pb::RevokeSigningKeyResponse>, Status> {
        passkeys::revoke_signing_key(&self.users, request).await
    }

    async fn list_enrollments(
        &self,
        request: Request<pb::ListEnrollmentsRequest>,
    ) -> Result<Response<pb::ListEnrollmentsResponse>, Status> {
        passkeys::list_enrollments(&self.users, request).await
    }

    async fn revoke_enrollment(
        &self,
        request: Request<pb::RevokeEnrollmentRequest>,
    ) -> Result<Response<pb::RevokeEnrollmentResponse>, Status> {
        passkeys::revoke_enrollment(&self.users, request).await
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        tokens::create_token(&self.tokens, request).await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        tokens::list_tokens(&self.tokens, request).await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        tokens::revoke_token(&self.tokens, &self.registry, request).await
    }
}
