//! The Admin gRPC service: the one module that converts admin wire messages to domain types and
//! back. The token check runs before any method, as an interceptor (see `auth`); the rules live
//! in `keys`.

use std::sync::Arc;

use keygate_proto::pb;
use tonic::{Request, Response, Status};

use crate::auth::admin_actor;
use crate::event_log::EventLog;
use crate::keys::{CreateKey, IssuedKey, KeyError, Keys, ListKeys};
use crate::registry::{GatewayStatus, Registry};
use crate::store::{AuditEntry, KeyRecord};

/// The Admin service over the key operations and the gateway registry.
pub struct AdminService {
    keys: Keys,
    registry: Arc<Registry>,
    event_log: Arc<EventLog>,
}

impl AdminService {
    /// A service over `keys`, reporting gateways from `registry`.
    pub fn new(keys: Keys, registry: Arc<Registry>, event_log: Arc<EventLog>) -> Self {
        Self {
            keys,
            registry,
            event_log,
        }
    }
}

/// Maps refusals to statuses. Store failures are logged here and reported without detail, so
/// no SQL or file path reaches the caller.
fn status(error: KeyError) -> Status {
    match error {
        KeyError::InvalidArgument(message) => Status::invalid_argument(message),
        KeyError::NotFound(message) => Status::not_found(message),
        KeyError::Store(error) => {
            tracing::error!(%error, "admin operation failed in the store");
            Status::internal("internal store error; see the control plane's log")
        }
    }
}

fn key_message(key: &KeyRecord) -> pb::Key {
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
    }
}

fn issued_message(issued: IssuedKey) -> pb::IssuedKey {
    pb::IssuedKey {
        key_id: issued.record.id.to_string(),
        record: Some(key_message(&issued.record)),
        key: issued.plaintext,
        revision: issued.revision.0,
    }
}

fn gateway_message(gateway: GatewayStatus, head: u64) -> pb::Gateway {
    pb::Gateway {
        lag_revisions: head.saturating_sub(gateway.applied.0),
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
        let actor = admin_actor(request.metadata());
        let request = request.into_inner();
        let create = CreateKey {
            owner: request.owner,
            prefix: request.prefix,
            name: request.name,
            expires_unix_ms: request.expires_unix_ms,
            meta: request.meta.into_iter().collect(),
            disabled: request.disabled,
        };
        let issued = self.keys.create(create, &actor).await.map_err(status)?;
        tracing::info!(key_id = %issued.record.id, owner = %issued.record.owner, revision = %issued.revision, %actor, "key created");
        Ok(Response::new(issued_message(issued)))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let key = self
            .keys
            .get(&request.into_inner().key_id)
            .await
            .map_err(status)?;
        Ok(Response::new(key_message(&key)))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
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
            keys: page.keys.iter().map(key_message).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn set_key_enabled(
        &self,
        request: Request<pb::SetKeyEnabledRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let actor = admin_actor(request.metadata());
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
            key: Some(key_message(&changed.key)),
        }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::KeyChange>, Status> {
        let actor = admin_actor(request.metadata());
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
        let actor = admin_actor(request.metadata());
        let request = request.into_inner();
        let issued = self
            .keys
            .reroll(&request.key_id, request.grace_ms, &actor)
            .await
            .map_err(status)?;
        tracing::info!(old_key_id = %request.key_id, new_key_id = %issued.record.id, grace_ms = request.grace_ms, revision = %issued.revision, %actor, "key rerolled");
        Ok(Response::new(issued_message(issued)))
    }

    async fn revoke_owner(
        &self,
        request: Request<pb::RevokeOwnerRequest>,
    ) -> Result<Response<pb::RevokeOwnerResponse>, Status> {
        let actor = admin_actor(request.metadata());
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

    async fn list_gateways(
        &self,
        _request: Request<pb::ListGatewaysRequest>,
    ) -> Result<Response<pb::ListGatewaysResponse>, Status> {
        let head = self.event_log.head().0;
        let gateways = self
            .registry
            .list()
            .into_iter()
            .map(|gateway| gateway_message(gateway, head))
            .collect();
        Ok(Response::new(pb::ListGatewaysResponse {
            gateways,
            head_revision: head,
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let entries = self
            .keys
            .audit(request.into_inner().limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries.into_iter().map(audit_message).collect(),
        }))
    }
}
