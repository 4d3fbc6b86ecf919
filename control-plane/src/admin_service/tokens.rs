//! The Admin service's operator-token methods (scope `admin`): wire messages to the operations
//! of `crate::tokens` and back. A token itself appears only in the CreateToken response; logs
//! name tokens, never show them.

use keygate_proto::pb;
use tonic::{Request, Response, Status};

use crate::auth::{Scope, require};
use crate::metrics;
use crate::registry::Registry;
use crate::store::OperatorTokenRecord;
use crate::tokens::{CreateToken, TokenError, Tokens};

/// Maps refusals to statuses; store failures are logged and reported without detail.
fn status(error: TokenError) -> Status {
    match error {
        TokenError::InvalidArgument(message) => Status::invalid_argument(message),
        TokenError::AlreadyExists(message) => Status::already_exists(message),
        TokenError::NotFound(message) => Status::not_found(message),
        TokenError::Store(error) => {
            tracing::error!(%error, "admin operation failed in the store");
            Status::internal("internal store error; see the control plane's log")
        }
    }
}

fn token_message(record: &OperatorTokenRecord) -> pb::OperatorToken {
    pb::OperatorToken {
        name: record.name.clone(),
        scopes: record.scopes.clone(),
        gateway_id: record.gateway_id.clone().unwrap_or_default(),
        created_unix_ms: record.created_unix_ms,
        created_by: record.created_by.clone(),
    }
}

pub(super) async fn create_token(
    tokens: &Tokens,
    request: Request<pb::CreateTokenRequest>,
) -> Result<Response<pb::IssuedToken>, Status> {
    let actor = require(&request, Scope::Admin)?.name;
    let request = request.into_inner();
    let create = CreateToken {
        name: request.name,
        scopes: request.scopes,
        gateway_id: request.gateway_id,
    };
    let issued = tokens.create(create, &actor).await.map_err(status)?;
    let record = &issued.record;
    tracing::info!(name = %record.name, scopes = ?record.scopes, gateway_id = ?record.gateway_id, %actor, "token created");
    Ok(Response::new(pb::IssuedToken {
        record: Some(token_message(record)),
        token: issued.token,
    }))
}

pub(super) async fn list_tokens(
    tokens: &Tokens,
    request: Request<pb::ListTokensRequest>,
) -> Result<Response<pb::ListTokensResponse>, Status> {
    require(&request, Scope::Admin)?;
    let listed = tokens.list().await.map_err(status)?;
    Ok(Response::new(pb::ListTokensResponse {
        tokens: listed.iter().map(token_message).collect(),
    }))
}

/// Deletes the token, then ends this replica's open sync streams that used it (the other
/// replicas end theirs when they next check, `sync_service::recheck_tokens`).
pub(super) async fn revoke_token(
    tokens: &Tokens,
    registry: &Registry,
    request: Request<pb::RevokeTokenRequest>,
) -> Result<Response<pb::RevokeTokenResponse>, Status> {
    let actor = require(&request, Scope::Admin)?.name;
    let name = request.into_inner().name;
    let revoked = tokens.revoke(&name, &actor).await.map_err(status)?;
    let disconnected = registry.end_token_streams(|hash| *hash == revoked.token_hash);
    metrics::token_streams_ended(disconnected.len());
    tracing::info!(%name, disconnected = ?disconnected, %actor, "token revoked");
    Ok(Response::new(pb::RevokeTokenResponse {
        name: revoked.name,
        disconnected_gateways: disconnected,
    }))
}
