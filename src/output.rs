//! What operator commands print: the admin API's messages as JSON objects (camelCase, RFC 3339
//! times) or as short human-readable lines. This is the CLI's one module that reads prost types.

use keygate_proto::pb;
use serde_json::{Value, json};

pub use keygate_proto::time::rfc3339;

/// A key record as JSON; never contains the plaintext. `credits` and `identity` are null when
/// the key has none.
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
        "ratelimits": key.ratelimits.iter().map(ratelimit_json).collect::<Vec<_>>(),
        "credits": key.credits.as_ref().map(credits_json),
        "permissions": key.permissions,
        "identity": (!key.identity.is_empty()).then_some(&key.identity),
        "usage": key.usage.iter().map(usage_json).collect::<Vec<_>>(),
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
        "{}  {}…  owner {}{}  {}{}  revision {}{}",
        key.key_id,
        key.start,
        key.owner,
        name,
        state,
        expires,
        key.revision,
        limits_marker(key)
    )
}

/// A key for a person: its line, then one line per rate limit (with its current use), its
/// credits, permissions and identity.
pub fn key_text(key: &pb::Key) -> String {
    let mut lines = vec![key_line(key)];
    lines.extend(limit_lines(
        &key.ratelimits,
        &key.usage,
        key.credits.as_ref(),
    ));
    if !key.permissions.is_empty() {
        lines.push(format!("  permissions {}", key.permissions.join(" ")));
    }
    if !key.identity.is_empty() {
        lines.push(format!(
            "  identity {} (its limits: keygate identities get {})",
            key.identity, key.identity
        ));
    }
    lines.join("\n")
}

/// `  [2 rate limits, credits 950, 1 permission, identity acme]` for a key with limits, so a
/// listing shows which keys have any; empty for a plain key.
fn limits_marker(key: &pb::Key) -> String {
    let mut parts = Vec::new();
    if !key.ratelimits.is_empty() {
        parts.push(counted(key.ratelimits.len(), "rate limit"));
    }
    if let Some(credits) = &key.credits {
        parts.push(format!("credits {}", credits.remaining));
    }
    if !key.permissions.is_empty() {
        parts.push(counted(key.permissions.len(), "permission"));
    }
    if !key.identity.is_empty() {
        parts.push(format!("identity {}", key.identity));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("  [{}]", parts.join(", "))
    }
}

fn counted(count: usize, thing: &str) -> String {
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {thing}{plural}")
}

/// An identity as JSON; `credits` is null when it has none.
pub fn identity_json(identity: &pb::IdentityRecord) -> Value {
    json!({
        "identityId": identity.identity_id,
        "ratelimits": identity.ratelimits.iter().map(ratelimit_json).collect::<Vec<_>>(),
        "credits": identity.credits.as_ref().map(credits_json),
        "created": rfc3339(identity.created_unix_ms),
        "revision": identity.revision,
        "usage": identity.usage.iter().map(usage_json).collect::<Vec<_>>(),
    })
}

/// One line describing an identity.
pub fn identity_line(identity: &pb::IdentityRecord) -> String {
    let ratelimits = if identity.ratelimits.is_empty() {
        "no rate limits".to_owned()
    } else {
        identity
            .ratelimits
            .iter()
            .map(ratelimit_spec)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let credits = identity.credits.as_ref().map_or_else(
        || "unlimited credits".to_owned(),
        |credits| format!("credits {}", credits.remaining),
    );
    format!(
        "{}  {ratelimits}  {credits}  created {}  revision {}",
        identity.identity_id,
        rfc3339(identity.created_unix_ms),
        identity.revision
    )
}

/// An identity for a person: its line, then its rate limits (with their current use) and
/// credits.
pub fn identity_text(identity: &pb::IdentityRecord) -> String {
    let mut lines = vec![identity_line(identity)];
    lines.extend(limit_lines(
        &identity.ratelimits,
        &identity.usage,
        identity.credits.as_ref(),
    ));
    lines.join("\n")
}

/// A rate limit in the operator's spelling, `requests=100/1s`.
fn ratelimit_spec(limit: &pb::RateLimit) -> String {
    keygate_proto::RateLimit {
        name: limit.name.clone(),
        limit: limit.limit,
        window_ms: limit.window_ms,
    }
    .to_string()
}

fn ratelimit_json(limit: &pb::RateLimit) -> Value {
    json!({
        "name": limit.name,
        "limit": limit.limit,
        "windowMs": limit.window_ms,
        "spec": ratelimit_spec(limit),
    })
}

fn credits_json(credits: &pb::Credits) -> Value {
    json!({
        "remaining": credits.remaining,
        "leased": credits.leased,
        "refill": credits.refill.as_ref().map(|refill| json!({
            "amount": refill.amount,
            "intervalMs": refill.interval_ms,
            "spec": refill_spec(refill),
            "next": (refill.next_unix_ms > 0).then(|| rfc3339(refill.next_unix_ms)),
        })),
    })
}

fn refill_spec(refill: &pb::Refill) -> String {
    keygate_proto::RefillSpec {
        amount: refill.amount,
        interval_ms: refill.interval_ms,
    }
    .to_string()
}

fn usage_json(usage: &pb::LimitUsage) -> Value {
    json!({
        "limit": usage.limit,
        "windowStart": rfc3339(usage.window_start_unix_ms),
        "used": usage.used,
    })
}

/// `  rate limit requests=100/1s: 12 used in the window from …` per limit, then
/// `  credits 950 left, 50 leased to gateways; refill 1000/1day, next …`.
fn limit_lines(
    ratelimits: &[pb::RateLimit],
    usage: &[pb::LimitUsage],
    credits: Option<&pb::Credits>,
) -> Vec<String> {
    let mut lines: Vec<String> = ratelimits
        .iter()
        .map(|limit| {
            let used = usage
                .iter()
                .find(|usage| usage.limit == limit.name)
                .map_or_else(
                    || "none used in this window".to_owned(),
                    |usage| {
                        format!(
                            "{} used in the window from {}",
                            usage.used,
                            rfc3339(usage.window_start_unix_ms)
                        )
                    },
                );
            format!("  rate limit {}: {used}", ratelimit_spec(limit))
        })
        .collect();
    if let Some(credits) = credits {
        let refill = credits.refill.as_ref().map_or_else(
            || "no refill".to_owned(),
            |refill| {
                let next = if refill.next_unix_ms > 0 {
                    format!(", next {}", rfc3339(refill.next_unix_ms))
                } else {
                    String::new()
                };
                format!("refill {}{next}", refill_spec(refill))
            },
        );
        lines.push(format!(
            "  credits {} left, {} leased to gateways; {refill}",
            credits.remaining, credits.leased
        ));
    }
    lines
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

/// One page of a list command: `{"<field>":[…],"cursor":…}` with `--json`, else one line per
/// item, then how to get the next page (or `empty` when there is nothing at all).
pub fn print_page<T>(
    page: &[T],
    next_cursor: String,
    json: bool,
    (field, empty): (&str, &str),
    as_json: impl Fn(&T) -> Value,
    as_line: impl Fn(&T) -> String,
) {
    let cursor = (!next_cursor.is_empty()).then_some(next_cursor);
    if json {
        let items: Vec<Value> = page.iter().map(as_json).collect();
        print_json(&json!({ field: items, "cursor": cursor }));
        return;
    }
    for item in page {
        println!("{}", as_line(item));
    }
    match cursor {
        Some(cursor) => println!("More: --cursor {cursor}"),
        None if page.is_empty() => println!("{empty}"),
        None => {}
    }
}
