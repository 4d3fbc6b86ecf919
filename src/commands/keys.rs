//! `keygate keys …`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, AdminClient, status_failure};
use crate::args::{ClientArgs, CreateKeyArgs, KeysCommand, ListKeysArgs, UpdateKeyArgs, WaitArgs};
use crate::commands::limit_flags::{self, exclusive, refused};
use crate::commands::wait::{report_change, wait_if_asked};
use crate::output::{key_json, key_line, key_text, print_json, print_page};

/// Runs one `keys` subcommand.
pub async fn run(client_args: &ClientArgs, command: KeysCommand) -> Result<(), Failure> {
    let json = client_args.json;
    // Local input is checked before a connection is opened: bad input sends nothing.
    let command = match command {
        KeysCommand::Create(args) => {
            let request = create_request(&args)?;
            let mut client = admin_client::connect_as(client_args).await?;
            let issued = client
                .create_key(request)
                .await
                .map_err(status_failure)?
                .into_inner();
            print_issued(&issued, json, "Created");
            return Ok(());
        }
        KeysCommand::Update(args) => {
            let request = update_request(&args)?;
            let mut client = admin_client::connect_as(client_args).await?;
            return update(&mut client, request, args.wait, json).await;
        }
        other => other,
    };
    let mut client = admin_client::connect_as(client_args).await?;
    match command {
        // Sent above, once their input was checked.
        KeysCommand::Create(_) | KeysCommand::Update(_) => {}
        KeysCommand::Get { key_id } => {
            let key = client
                .get_key(pb::GetKeyRequest { key_id })
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                print_json(&key_json(&key));
            } else {
                println!("{}", key_text(&key));
            }
        }
        KeysCommand::List(args) => list(&mut client, args, json).await?,
        KeysCommand::Disable { key_id, wait } => {
            set_enabled(&mut client, key_id, false, wait, json).await?;
        }
        KeysCommand::Enable { key_id, wait } => {
            set_enabled(&mut client, key_id, true, wait, json).await?;
        }
        KeysCommand::Delete { key_id, wait } => {
            let change = client
                .delete_key(pb::DeleteKeyRequest { key_id })
                .await
                .map_err(status_failure)?
                .into_inner();
            let waited = wait_if_asked(&mut client, change.revision, wait).await?;
            return report_change(
                json,
                json!({"revision": change.revision, "keyId": change.key_id, "deleted": true}),
                || {
                    println!("Deleted {} (revision {}).", change.key_id, change.revision);
                },
                waited,
            );
        }
        KeysCommand::Reroll { key_id, grace } => {
            let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
            let issued = client
                .reroll_key(pb::RerollKeyRequest {
                    key_id: key_id.clone(),
                    grace_ms,
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            print_issued(&issued, json, "Rerolled");
            if !json {
                println!(
                    "The old key {key_id} keeps working for {}.",
                    humantime::format_duration(grace)
                );
            }
        }
        KeysCommand::RevokeOwner { owner, wait } => {
            let revoked = client
                .revoke_owner(pb::RevokeOwnerRequest {
                    owner: owner.clone(),
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            let waited = wait_if_asked(&mut client, revoked.revision, wait).await?;
            return report_change(
                json,
                json!({
                    "revision": revoked.revision,
                    "owner": owner,
                    "deletedKeyIds": revoked.deleted_key_ids,
                }),
                || {
                    println!(
                        "Deleted {} key(s) of owner {owner} (revision {}).",
                        revoked.deleted_key_ids.len(),
                        revoked.revision
                    );
                },
                waited,
            );
        }
    }
    Ok(())
}

fn create_request(args: &CreateKeyArgs) -> Result<pb::CreateKeyRequest, Failure> {
    let expires_unix_ms = args.expires.as_deref().map(parse_expiry).transpose()?;
    let limits = limit_flags::new_limits(&args.limits)?;
    let identity = args
        .identity
        .as_deref()
        .map(limit_flags::identity)
        .transpose()?;
    Ok(pb::CreateKeyRequest {
        owner: args.owner.clone(),
        prefix: args.prefix.clone().unwrap_or_default(),
        name: args.name.clone().unwrap_or_default(),
        expires_unix_ms,
        meta: args.meta.iter().cloned().collect(),
        disabled: args.disabled,
        ratelimits: limits.ratelimits,
        credits: limits.credits,
        refill: limits.refill,
        permissions: limit_flags::permissions(&args.permissions)?,
        identity: identity.unwrap_or_default(),
    })
}

/// The request of `keys update`: refuses contradicting flags and an update that names nothing
/// to change.
fn update_request(args: &UpdateKeyArgs) -> Result<pb::UpdateKeyRequest, Failure> {
    let limits = limit_flags::limit_changes(&args.limits)?;
    exclusive(
        ("--permission", !args.permissions.is_empty()),
        ("--clear-permissions", args.clear_permissions),
    )?;
    exclusive(
        ("--identity", args.identity.is_some()),
        ("--clear-identity", args.clear_identity),
    )?;
    let identity = match (&args.identity, args.clear_identity) {
        (Some(id), _) => Some(limit_flags::identity(id)?),
        // The API removes the identity when it is set to "".
        (None, true) => Some(String::new()),
        (None, false) => None,
    };
    let set_permissions = !args.permissions.is_empty() || args.clear_permissions;
    if limits.is_empty() && !set_permissions && identity.is_none() {
        return Err(refused(
            "nothing to change: give --ratelimit, --credits, --refill, --permission or \
             --identity, or one of their --clear-… flags",
        ));
    }
    Ok(pb::UpdateKeyRequest {
        key_id: args.key_id.clone(),
        set_ratelimits: limits.set_ratelimits,
        ratelimits: limits.ratelimits,
        credits: limits.credits,
        clear_credits: limits.clear_credits,
        refill: limits.refill,
        clear_refill: limits.clear_refill,
        set_permissions,
        permissions: limit_flags::permissions(&args.permissions)?,
        identity,
    })
}

/// Sends a checked update and prints the key as it is after the change.
async fn update(
    client: &mut AdminClient,
    request: pb::UpdateKeyRequest,
    wait: WaitArgs,
    json: bool,
) -> Result<(), Failure> {
    let change = client
        .update_key(request)
        .await
        .map_err(status_failure)?
        .into_inner();
    let waited = wait_if_asked(client, change.revision, wait).await?;
    report_change(
        json,
        json!({
            "revision": change.revision,
            "keyId": change.key_id,
            "key": change.key.as_ref().map(key_json),
        }),
        || {
            println!("Updated {} (revision {}).", change.key_id, change.revision);
            if let Some(key) = &change.key {
                println!("{}", key_text(key));
            }
        },
        waited,
    )
}

/// An expiry is an RFC 3339 time or a duration from now.
fn parse_expiry(text: &str) -> Result<i64, Failure> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(time) => time,
        Err(_) => {
            let duration = humantime::parse_duration(text).map_err(|_| {
                Failure::Config(format!(
                    "invalid --expires {text:?}: expected an RFC 3339 time (2027-01-01T00:00:00Z) or a duration (30d)"
                ))
            })?;
            SystemTime::now() + duration
        }
    };
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis())
        .map_err(|_| Failure::Config(format!("--expires {text:?} is too far in the future")))
}

fn print_issued(issued: &pb::IssuedKey, json: bool, verb: &str) {
    if json {
        print_json(
            &json!({"keyId": issued.key_id, "key": issued.key, "revision": issued.revision}),
        );
        return;
    }
    println!("{verb} {} (revision {}).", issued.key_id, issued.revision);
    println!("Key (shown only this once): {}", issued.key);
}

async fn set_enabled(
    client: &mut AdminClient,
    key_id: String,
    enabled: bool,
    wait: WaitArgs,
    json: bool,
) -> Result<(), Failure> {
    let change = client
        .set_key_enabled(pb::SetKeyEnabledRequest { key_id, enabled })
        .await
        .map_err(status_failure)?
        .into_inner();
    let waited = wait_if_asked(client, change.revision, wait).await?;
    report_change(
        json,
        json!({
            "revision": change.revision,
            "keyId": change.key_id,
            "enabled": enabled,
            "key": change.key.as_ref().map(key_json),
        }),
        || {
            let verb = if enabled { "Enabled" } else { "Disabled" };
            println!("{verb} {} (revision {}).", change.key_id, change.revision);
        },
        waited,
    )
}

async fn list(client: &mut AdminClient, args: ListKeysArgs, json: bool) -> Result<(), Failure> {
    let page = client
        .list_keys(pb::ListKeysRequest {
            owner: args.owner.unwrap_or_default(),
            limit: args.limit,
            cursor: args.cursor.unwrap_or_default(),
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    print_page(
        &page.keys,
        page.next_cursor,
        json,
        ("keys", "No keys."),
        key_json,
        key_line,
    );
    Ok(())
}
