//! The Admin service's user, passkey and session methods: wire messages to the operations of
//! `users` and back. Each logs what it did (never a token or a link).

use std::time::Duration;

use keygate_proto::pb;
use keygate_proto::time::now_unix_ms;
use tonic::{Request, Response, Status};

use crate::auth::{Scope, require};
use crate::http::device_type;
use crate::passkeys::providers::{Providers, aaguid_text};
use crate::store::{EnrollmentRecord, PasskeyRecord, SigningKeyRevoked, UserChanged, UserRecord};
use crate::users::{UserError, Users};

/// Maps refusals to statuses; store failures are logged and reported without detail.
fn status(error: UserError) -> Status {
    match error {
        UserError::InvalidArgument(message) => Status::invalid_argument(message),
        UserError::NotFound(message) => Status::not_found(message),
        UserError::AlreadyExists(message) => Status::already_exists(message),
        UserError::FailedPrecondition(message) => Status::failed_precondition(message),
        UserError::EmailNotSent(message) => Status::aborted(message),
        UserError::Store(error) => {
            tracing::error!(%error, "admin operation failed in the store");
            Status::internal("internal store error; see the control plane's log")
        }
    }
}

fn user_message(user: &UserRecord) -> pb::User {
    pb::User {
        user_id: user.user_id.clone(),
        created_unix_ms: user.created_unix_ms,
        disabled: user.disabled,
        sessions_revoked_before_unix_ms: user.sessions_revoked_before_unix_ms,
    }
}

fn change_message(change: &UserChanged) -> pb::UserChange {
    pb::UserChange {
        revision: change.revision.0,
        user: Some(user_message(&change.user)),
        changed: change.changed,
    }
}

/// A passkey as operators see it, its provider named from `providers`.
fn passkey_message(passkey: &PasskeyRecord, providers: &Providers) -> pb::Passkey {
    pb::Passkey {
        passkey_id: passkey.passkey_id.clone(),
        user_id: passkey.user_id.clone(),
        name: passkey.name.clone(),
        created_unix_ms: passkey.created_unix_ms,
        last_used_unix_ms: passkey.last_used_unix_ms,
        user_agent: passkey.user_agent.clone(),
        backed_up: passkey.backed_up,
        device_type: device_type(passkey.backup_eligible).to_owned(),
        provider: providers.name(passkey.aaguid).to_owned(),
        provider_icon: providers.icon(passkey.aaguid).map(str::to_owned),
        aaguid: passkey.aaguid.map(aaguid_text).unwrap_or_default(),
        policy_violation: String::new(),
    }
}

pub(super) async fn create_user(
    users: &Users,
    request: Request<pb::CreateUserRequest>,
) -> Result<Response<pb::UserChange>, Status> {
    let actor = require(&request, Scope::UsersWrite)?.name;
    let user_id = request.into_inner().user_id;
    let user = users.create(&user_id, &actor).await.map_err(status)?;
    tracing::info!(%user_id, %actor, "user created");
    Ok(Response::new(pb::UserChange {
        // A new user changes nothing gateways hold.
        revision: 0,
        user: Some(user_message(&user)),
        changed: true,
    }))
}

pub(super) async fn set_user_enabled(
    users: &Users,
    request: Request<pb::SetUserEnabledRequest>,
) -> Result<Response<pb::UserChange>, Status> {
    let actor = require(&request, Scope::UsersWrite)?.name;
    let request = request.into_inner();
    let change = users
        .set_enabled(&request.user_id, request.enabled, &actor)
        .await
        .map_err(status)?;
    tracing::info!(user_id = %request.user_id, enabled = request.enabled, changed = change.changed, revision = %change.revision, %actor, "user enabled state set");
    Ok(Response::new(change_message(&change)))
}

pub(super) async fn create_enrollment(
    users: &Users,
    request: Request<pb::CreateEnrollmentRequest>,
) -> Result<Response<pb::Enrollment>, Status> {
    let actor = require(&request, Scope::PasskeysWrite)?.name;
    let request = request.into_inner();
    let lifetime =
        (request.expires_in_ms > 0).then(|| Duration::from_millis(request.expires_in_ms));
    if !request.email.is_empty() {
        let emailed = users
            .email_enrollment(&request.user_id, lifetime, &request.email, &actor)
            .await
            .map_err(status)?;
        tracing::info!(user_id = %emailed.user_id, enrollment_id = %emailed.enrollment_id, expires_unix_ms = emailed.expires_unix_ms, %actor, "enrollment link created and emailed");
        return Ok(Response::new(pb::Enrollment {
            enrollment_id: emailed.enrollment_id,
            user_id: emailed.user_id,
            link: String::new(),
            expires_unix_ms: emailed.expires_unix_ms,
            emailed_to: emailed.emailed_to,
        }));
    }
    let issued = users
        .create_enrollment(&request.user_id, lifetime, &actor)
        .await
        .map_err(status)?;
    tracing::info!(user_id = %issued.user_id, enrollment_id = %issued.enrollment_id, expires_unix_ms = issued.expires_unix_ms, %actor, "enrollment link created");
    Ok(Response::new(pb::Enrollment {
        enrollment_id: issued.enrollment_id,
        user_id: issued.user_id,
        link: issued.link,
        expires_unix_ms: issued.expires_unix_ms,
        emailed_to: String::new(),
    }))
}

pub(super) async fn list_passkeys(
    users: &Users,
    request: Request<pb::ListPasskeysRequest>,
) -> Result<Response<pb::ListPasskeysResponse>, Status> {
    require(&request, Scope::PasskeysRead)?;
    let request = request.into_inner();
    let providers = users.providers();
    if !request.policy_violations {
        let passkeys = users
            .list_passkeys(&request.user_id)
            .await
            .map_err(status)?;
        return Ok(Response::new(pb::ListPasskeysResponse {
            passkeys: passkeys
                .iter()
                .map(|passkey| passkey_message(passkey, providers))
                .collect(),
            cursor: String::new(),
        }));
    }
    let user_id = (!request.user_id.is_empty()).then_some(request.user_id.as_str());
    let after = (!request.cursor.is_empty()).then_some(request.cursor.as_str());
    let page = users
        .policy_violations(user_id, after)
        .await
        .map_err(status)?;
    let passkeys = page
        .violators
        .iter()
        .map(|violator| {
            let passkey = &violator.passkey;
            let explained = violator
                .violation
                .explain(providers.name(passkey.aaguid), passkey.aaguid);
            pb::Passkey {
                policy_violation: explained.to_string(),
                ..passkey_message(passkey, providers)
            }
        })
        .collect();
    Ok(Response::new(pb::ListPasskeysResponse {
        passkeys,
        cursor: page.next.unwrap_or_default(),
    }))
}

pub(super) async fn rename_passkey(
    users: &Users,
    request: Request<pb::RenamePasskeyRequest>,
) -> Result<Response<pb::Passkey>, Status> {
    let actor = require(&request, Scope::PasskeysWrite)?.name;
    let request = request.into_inner();
    let passkey = users
        .rename_passkey(&request.user_id, &request.passkey_id, &request.name, &actor)
        .await
        .map_err(status)?;
    tracing::info!(user_id = %passkey.user_id, passkey_id = %passkey.passkey_id, %actor, "passkey renamed");
    Ok(Response::new(passkey_message(&passkey, users.providers())))
}

pub(super) async fn revoke_passkey(
    users: &Users,
    request: Request<pb::RevokePasskeyRequest>,
) -> Result<Response<pb::RevokePasskeyResponse>, Status> {
    let actor = require(&request, Scope::PasskeysWrite)?.name;
    let request = request.into_inner();
    let revision = users
        .revoke_passkey(&request.user_id, &request.passkey_id, &actor)
        .await
        .map_err(status)?;
    tracing::info!(user_id = %request.user_id, passkey_id = %request.passkey_id, %revision, %actor, "passkey revoked");
    Ok(Response::new(pb::RevokePasskeyResponse {
        revision: revision.0,
        passkey_id: request.passkey_id,
    }))
}

pub(super) async fn revoke_sessions(
    users: &Users,
    request: Request<pb::RevokeSessionsRequest>,
) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
    let actor = require(&request, Scope::PasskeysWrite)?.name;
    let user_id = request.into_inner().user_id;
    let change = users
        .revoke_sessions(&user_id, &actor)
        .await
        .map_err(status)?;
    tracing::info!(%user_id, revision = %change.revision, %actor, "sessions revoked");
    Ok(Response::new(pb::RevokeSessionsResponse {
        revision: change.revision.0,
        revoked_before_unix_ms: change.user.sessions_revoked_before_unix_ms,
    }))
}

pub(super) async fn rotate_signing_key(
    users: &Users,
    request: Request<pb::RotateSigningKeyRequest>,
) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
    let actor = require(&request, Scope::Admin)?.name;
    let rotated = users.rotate_signing_key(&actor).await.map_err(status)?;
    tracing::info!(key_id = %rotated.current.key_id, retired = ?rotated.retired.as_ref().map(|key| &key.key_id), revision = %rotated.revision, %actor, "session signing key rotated");
    Ok(Response::new(pb::RotateSigningKeyResponse {
        revision: rotated.revision.0,
        key_id: rotated.current.key_id,
        retired_key_id: rotated
            .retired
            .as_ref()
            .map(|key| key.key_id.clone())
            .unwrap_or_default(),
        retired_verify_until_unix_ms: rotated
            .retired
            .and_then(|key| key.verify_until_unix_ms)
            .unwrap_or_default(),
    }))
}

pub(super) async fn list_signing_keys(
    users: &Users,
    request: Request<pb::ListSigningKeysRequest>,
) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
    require(&request, Scope::Admin)?;
    let keys = users.list_signing_keys().await.map_err(status)?;
    Ok(Response::new(pb::ListSigningKeysResponse {
        keys: keys
            .iter()
            .map(|key| pb::SigningKeyInfo {
                key_id: key.key_id.clone(),
                created_unix_ms: key.created_unix_ms,
                verify_until_unix_ms: key.verify_until_unix_ms,
                revoked_unix_ms: key.revoked_unix_ms,
                current: key.is_current(),
                max_session_lifetime_ms: key.max_session_lifetime_ms,
            })
            .collect(),
    }))
}

pub(super) async fn revoke_signing_key(
    users: &Users,
    request: Request<pb::RevokeSigningKeyRequest>,
) -> Result<Response<pb::RevokeSigningKeyResponse>, Status> {
    let actor = require(&request, Scope::Admin)?.name;
    let key_id = request.into_inner().key_id;
    let response = match users
        .revoke_signing_key(&key_id, &actor)
        .await
        .map_err(status)?
    {
        SigningKeyRevoked::Revoked {
            key,
            current,
            replaced,
            revision,
        } => {
            tracing::info!(%key_id, current_key_id = %current.key_id, new_current_key = replaced, %revision, %actor, "session signing key revoked");
            pb::RevokeSigningKeyResponse {
                revision: revision.0,
                key_id,
                current_key_id: current.key_id,
                already_revoked: false,
                kept_until_unix_ms: key.verify_until_unix_ms.unwrap_or_default(),
            }
        }
        SigningKeyRevoked::AlreadyRevoked { key, current, head } => {
            tracing::info!(%key_id, %head, %actor, "session signing key was already revoked");
            pb::RevokeSigningKeyResponse {
                revision: head.0,
                key_id,
                current_key_id: current.map(|key| key.key_id).unwrap_or_default(),
                already_revoked: true,
                kept_until_unix_ms: key.verify_until_unix_ms.unwrap_or_default(),
            }
        }
        SigningKeyRevoked::NotFound => {
            return Err(Status::not_found(format!(
                "signing key {key_id:?} not found"
            )));
        }
    };
    Ok(Response::new(response))
}

/// An enrollment link as operators see it, in its state at `now_unix_ms`; never its token.
fn enrollment_link_message(link: &EnrollmentRecord, now_unix_ms: i64) -> pb::EnrollmentLink {
    pb::EnrollmentLink {
        enrollment_id: link.enrollment_id.clone(),
        user_id: link.user_id.clone(),
        created_unix_ms: link.created_unix_ms,
        expires_unix_ms: link.expires_unix_ms,
        state: link.state(now_unix_ms).name().to_owned(),
        used_unix_ms: link.used_unix_ms,
        voided_unix_ms: link.voided.map(|voided| voided.at_unix_ms),
        created_by: link.created_by.clone(),
    }
}

pub(super) async fn list_enrollments(
    users: &Users,
    request: Request<pb::ListEnrollmentsRequest>,
) -> Result<Response<pb::ListEnrollmentsResponse>, Status> {
    require(&request, Scope::PasskeysRead)?;
    let links = users
        .list_enrollments(&request.into_inner().user_id)
        .await
        .map_err(status)?;
    let now = now_unix_ms();
    Ok(Response::new(pb::ListEnrollmentsResponse {
        enrollments: links
            .iter()
            .map(|link| enrollment_link_message(link, now))
            .collect(),
    }))
}

pub(super) async fn revoke_enrollment(
    users: &Users,
    request: Request<pb::RevokeEnrollmentRequest>,
) -> Result<Response<pb::RevokeEnrollmentResponse>, Status> {
    let actor = require(&request, Scope::PasskeysWrite)?.name;
    let enrollment_id = request.into_inner().enrollment_id;
    let revoked = users
        .revoke_enrollment(&enrollment_id, &actor)
        .await
        .map_err(status)?;
    let link = enrollment_link_message(&revoked.link, now_unix_ms());
    tracing::info!(user_id = %link.user_id, %enrollment_id, changed = revoked.changed, state = %link.state, %actor, "enrollment link revoked");
    Ok(Response::new(pb::RevokeEnrollmentResponse {
        enrollment: Some(link),
        changed: revoked.changed,
    }))
}
