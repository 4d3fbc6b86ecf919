//! `keygate keys …`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, AdminClient, status_failure};
use crate::args::{ClientArgs, CreateKeyArgs, KeysCommand, ListKeysArgs, WaitArgs};
use crate::commands::wait::{report_change, wait_if_asked};
use crate::output::{key_json, key_line, print_json};

/// Runs one `keys` subcommand.
pub async fn run(client_args: &ClientArgs, command: KeysCommand) -> Result<(), Failure> {
    // Validate local input before opening a connection.
    let create_request = match &command {
        KeysCommand::Create(args) => Some(create_request(args)?),
        _ => None,
    };
    let mut client = admin_client::connect_as(client_args).await?;
    let json = client_args.json;
    match command {
        KeysCommand::Create(_) => {
            let request =
                create_request.ok_or_else(|| Failure::Runtime("internal: no request".into()))?;
            let issued = client
                .create_key(request)
                .await
                .map_err(status_failure)?
                .into_inner();
            print_issued(&issued, json, "Created");
        }
        KeysCommand::Get { key_id } => {
            let key = client
                .get_key(pb::GetKeyRequest { key_id })
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                print_json(&key_json(&key));
            } else {
                println!("{}", key_line(&key));
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
    Ok(pb::CreateKeyRequest {
        owner: args.owner.clone(),
        prefix: args.prefix.clone().unwrap_or_default(),
        name: args.name.clone().unwrap_or_default(),
        expires_unix_ms,
        meta: args.meta.iter().cloned().collect(),
        disabled: args.disabled,
    })
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
    let cursor = (!page.next_cursor.is_empty()).then_some(page.next_cursor);
    if json {
        let keys: Vec<_> = page.keys.iter().map(key_json).collect();
        print_json(&json!({"keys": keys, "cursor": cursor}));
        return Ok(());
    }
    for key in &page.keys {
        println!("{}", key_line(key));
    }
    match cursor {
        Some(cursor) => println!("More: --cursor {cursor}"),
        None if page.keys.is_empty() => println!("No keys."),
        None => {}
    }
    Ok(())
}
