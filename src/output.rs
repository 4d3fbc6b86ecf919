//! What operator commands print: the admin API's messages as JSON objects (camelCase, RFC 3339
//! times) or as short human-readable lines. This is the CLI's one module that reads prost types.

use keygate_proto::pb;
use serde_json::{Value, json};

pub use keygate_proto::time::rfc3339;

/// A key record as JSON; never contains the plaintext.
pub fn key_json(key: &pb::Key) -> Value {
    json!({
        "keyId": key.key_id,
        "owner": key.owner,
        "name": key.name,
        "start": key.start,
        "enabled": key.enabled,
        "created": rfc3339(key.created_unix_ms),
        "expires": key.expires_unix_ms.map(rfc3339),
        "meta": key.meta,
        "revision": key.revision,
    })
}

/// One line describing a key.
pub fn key_line(key: &pb::Key) -> String {
    let state = if key.enabled { "enabled" } else { "disabled" };
    let expires = key
        .expires_unix_ms
        .map(|ms| format!(" expires {}", rfc3339(ms)))
        .unwrap_or_default();
    let name = if key.name.is_empty() {
        String::new()
    } else {
        format!(" {:?}", key.name)
    };
    format!(
        "{}  {}…  owner {}{}  {}{}  revision {}",
        key.key_id, key.start, key.owner, name, state, expires, key.revision
    )
}

/// A gateway registry entry as JSON.
pub fn gateway_json(gateway: &pb::Gateway) -> Value {
    json!({
        "gatewayId": gateway.gateway_id,
        "region": gateway.region,
        "address": gateway.address,
        "version": gateway.version,
        "connected": gateway.connected,
        "appliedRevision": gateway.applied_revision,
        "lagRevisions": gateway.lag_revisions,
        "lagMs": gateway.lag_ms,
        "stalenessMs": gateway.staleness_ms,
        "propagationBoundMs": gateway.propagation_bound_ms,
        "stalePolicy": gateway.stale_policy,
        "lastSeen": rfc3339(gateway.last_seen_unix_ms),
        "connectedSince": rfc3339(gateway.connected_unix_ms),
        "credential": gateway.credential,
    })
}

/// A duration in milliseconds for people: "850 ms", "12.3 s", "4m 10s".
pub fn millis_text(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string(),
    }
}

/// An audit entry as JSON; `detail` is the stored JSON object, parsed back.
pub fn audit_json(entry: &pb::AuditEntry) -> Value {
    json!({
        "id": entry.id,
        "at": rfc3339(entry.at_unix_ms),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "revision": entry.revision,
        "detail": serde_json::from_str::<Value>(&entry.detail_json).unwrap_or(Value::Null),
    })
}

/// A passkey user as JSON.
pub fn user_json(user: &pb::User) -> Value {
    json!({
        "userId": user.user_id,
        "created": rfc3339(user.created_unix_ms),
        "disabled": user.disabled,
        "sessionsRevokedBefore": (user.sessions_revoked_before_unix_ms > 0)
            .then(|| rfc3339(user.sessions_revoked_before_unix_ms)),
    })
}

/// A passkey as JSON (never the credential).
pub fn passkey_json(passkey: &pb::Passkey) -> Value {
    json!({
        "passkeyId": passkey.passkey_id,
        "userId": passkey.user_id,
        "name": passkey.name,
        "created": rfc3339(passkey.created_unix_ms),
        "lastUsed": passkey.last_used_unix_ms.map(rfc3339),
        "userAgent": passkey.user_agent,
        "backedUp": passkey.backed_up,
        "deviceType": passkey.device_type,
        "provider": passkey.provider,
        "providerIcon": passkey.provider_icon,
        "aaguid": (!passkey.aaguid.is_empty()).then_some(&passkey.aaguid),
    })
}

/// One line describing a passkey.
pub fn passkey_line(passkey: &pb::Passkey) -> String {
    let name = if passkey.name.is_empty() {
        "(unnamed)".to_owned()
    } else {
        format!("{:?}", passkey.name)
    };
    let last_used = passkey
        .last_used_unix_ms
        .map_or_else(|| "never".to_owned(), rfc3339);
    let backed_up = if passkey.backed_up {
        "backed up"
    } else {
        "not backed up"
    };
    format!(
        "{}  {name}  {}  created {}  last used {last_used}  {}, {backed_up}  {}",
        passkey.passkey_id,
        passkey.provider,
        rfc3339(passkey.created_unix_ms),
        passkey.device_type,
        passkey.user_agent
    )
}

/// An enrollment link as JSON (never its token): state `open`, `used`, `expired`, `revoked`
/// or `voided`.
pub fn enrollment_json(link: &pb::EnrollmentLink) -> Value {
    json!({
        "enrollmentId": link.enrollment_id,
        "userId": link.user_id,
        "created": rfc3339(link.created_unix_ms),
        "expires": rfc3339(link.expires_unix_ms),
        "state": link.state,
        "used": link.used_unix_ms.map(rfc3339),
        "voided": link.voided_unix_ms.map(rfc3339),
        "createdBy": link.created_by,
    })
}

/// One line describing an enrollment link.
pub fn enrollment_line(link: &pb::EnrollmentLink) -> String {
    let when = match (link.used_unix_ms, link.voided_unix_ms) {
        (Some(used), _) => format!("used {}", rfc3339(used)),
        (None, Some(voided)) => format!("{} {}", link.state, rfc3339(voided)),
        (None, None) => format!("expires {}", rfc3339(link.expires_unix_ms)),
    };
    let created_by = if link.created_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", link.created_by)
    };
    format!(
        "{}  {}  {}  created {}{created_by}  {when}",
        link.enrollment_id,
        link.user_id,
        link.state,
        rfc3339(link.created_unix_ms)
    )
}

/// A named token as JSON (never the token itself): `gatewayId` is null for an operator token.
pub fn token_json(token: &pb::OperatorToken) -> Value {
    json!({
        "name": token.name,
        "scopes": token.scopes,
        "gatewayId": (!token.gateway_id.is_empty()).then_some(&token.gateway_id),
        "created": rfc3339(token.created_unix_ms),
        "createdBy": token.created_by,
    })
}

/// One line describing a named token.
pub fn token_line(token: &pb::OperatorToken) -> String {
    let grants = if token.gateway_id.is_empty() {
        format!("scopes {}", token.scopes.join(" "))
    } else {
        format!("gateway {}", token.gateway_id)
    };
    format!(
        "{}  {}  created {} by {}",
        token.name,
        grants,
        rfc3339(token.created_unix_ms),
        token.created_by
    )
}

/// A session signing key as JSON (never its secret): `verifyUntil` set once retired or
/// revoked, `revoked` once revoked.
pub fn signing_key_json(key: &pb::SigningKeyInfo) -> Value {
    json!({
        "keyId": key.key_id,
        "created": rfc3339(key.created_unix_ms),
        "verifyUntil": key.verify_until_unix_ms.map(rfc3339),
        "revoked": key.revoked_unix_ms.map(rfc3339),
        "current": key.current,
        "maxSessionLifetimeMs": key.max_session_lifetime_ms,
    })
}

/// One line describing a session signing key.
pub fn signing_key_line(key: &pb::SigningKeyInfo) -> String {
    let state = match (key.current, key.revoked_unix_ms, key.verify_until_unix_ms) {
        (true, _, _) => "current".to_owned(),
        (false, Some(revoked), until) => format!(
            "revoked {}, its sessions refused; kept until {}",
            rfc3339(revoked),
            until.map_or_else(|| "-".to_owned(), rfc3339)
        ),
        (false, None, Some(until)) => format!("retired, verifies until {}", rfc3339(until)),
        (false, None, None) => "retired".to_owned(),
    };
    let lifetime = key
        .max_session_lifetime_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| format!("  sessions up to {}", millis_text(ms)))
        .unwrap_or_default();
    format!(
        "{}  created {}  {state}{lifetime}",
        key.key_id,
        rfc3339(key.created_unix_ms)
    )
}

/// Prints `value` as the command's single JSON object.
pub fn print_json(value: &Value) {
    println!("{value}");
}
