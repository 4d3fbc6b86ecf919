//! What operator commands print: the admin API's messages as JSON objects (camelCase, RFC 3339
//! times) or as short human-readable lines. This is the CLI's one module that reads prost types.

use std::time::{Duration, UNIX_EPOCH};

use keygate_proto::pb;
use serde_json::{Value, json};

/// RFC 3339 (UTC, milliseconds) for a Unix-millisecond timestamp.
pub fn rfc3339(unix_ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

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
        "{}  {name}  created {}  last used {last_used}  {}, {backed_up}  {}",
        passkey.passkey_id,
        rfc3339(passkey.created_unix_ms),
        passkey.device_type,
        passkey.user_agent
    )
}

/// Prints `value` as the command's single JSON object.
pub fn print_json(value: &Value) {
    println!("{value}");
}
