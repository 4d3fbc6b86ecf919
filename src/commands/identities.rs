//! `keygate identities …`: groups of keys that share rate limits and credits. A key joins one
//! with `keys create|update --identity ID`; an identity is deleted only once no key names it.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, AdminClient, status_failure};
use crate::args::{ClientArgs, IdentitiesCommand};
use crate::commands::limit_flags::{self, refused};
use crate::commands::wait::{report_change, wait_if_asked};
use crate::output::{identity_json, identity_line, identity_text, print_json, print_page};

/// Runs one `identities` subcommand.
pub async fn run(client_args: &ClientArgs, command: IdentitiesCommand) -> Result<(), Failure> {
    let json = client_args.json;
    match command {
        IdentitiesCommand::Create {
            identity_id,
            limits,
        } => {
            // Local input is checked before a connection is opened: bad input sends nothing.
            let identity_id = limit_flags::identity(&identity_id)?;
            let limits = limit_flags::new_limits(&limits)?;
            let mut client = admin_client::connect_as(client_args).await?;
            let change = client
                .create_identity(pb::CreateIdentityRequest {
                    identity_id,
                    ratelimits: limits.ratelimits,
                    credits: limits.credits,
                    refill: limits.refill,
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            print_change(&change, json, "Created");
        }
        IdentitiesCommand::Update {
            identity_id,
            limits,
            wait,
        } => {
            let identity_id = limit_flags::identity(&identity_id)?;
            let changes = limit_flags::limit_changes(&limits)?;
            if changes.is_empty() {
                return Err(refused(
                    "nothing to change: give --ratelimit, --credits or --refill, or one of \
                     their --clear-… flags",
                ));
            }
            let mut client = admin_client::connect_as(client_args).await?;
            let change = client
                .update_identity(pb::UpdateIdentityRequest {
                    identity_id,
                    set_ratelimits: changes.set_ratelimits,
                    ratelimits: changes.ratelimits,
                    credits: changes.credits,
                    clear_credits: changes.clear_credits,
                    refill: changes.refill,
                    clear_refill: changes.clear_refill,
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            let waited = wait_if_asked(&mut client, change.revision, wait).await?;
            return report_change(
                json,
                change_json(&change),
                || print_change(&change, false, "Updated"),
                waited,
            );
        }
        IdentitiesCommand::Get { identity_id } => {
            let mut client = admin_client::connect_as(client_args).await?;
            let identity = client
                .get_identity(pb::GetIdentityRequest { identity_id })
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                print_json(&identity_json(&identity));
            } else {
                println!("{}", identity_text(&identity));
            }
        }
        IdentitiesCommand::List { limit, cursor } => {
            let mut client = admin_client::connect_as(client_args).await?;
            list(&mut client, limit, cursor, json).await?;
        }
        IdentitiesCommand::Delete { identity_id } => {
            let mut client = admin_client::connect_as(client_args).await?;
            let change = client
                .delete_identity(pb::DeleteIdentityRequest {
                    identity_id: identity_id.clone(),
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                print_json(&json!({
                    "revision": change.revision,
                    "identityId": identity_id,
                    "deleted": true,
                }));
            } else {
                println!(
                    "Deleted identity {identity_id} (revision {}).",
                    change.revision
                );
            }
        }
    }
    Ok(())
}

fn change_json(change: &pb::IdentityChange) -> serde_json::Value {
    json!({
        "revision": change.revision,
        "identity": change.identity.as_ref().map(identity_json),
    })
}

/// Prints a created or updated identity as it is after the change.
fn print_change(change: &pb::IdentityChange, json: bool, verb: &str) {
    if json {
        print_json(&change_json(change));
        return;
    }
    let id = change
        .identity
        .as_ref()
        .map_or("", |identity| identity.identity_id.as_str());
    println!("{verb} identity {id} (revision {}).", change.revision);
    if let Some(identity) = &change.identity {
        println!("{}", identity_text(identity));
    }
}

async fn list(
    client: &mut AdminClient,
    limit: u32,
    cursor: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let page = client
        .list_identities(pb::ListIdentitiesRequest {
            limit,
            cursor: cursor.unwrap_or_default(),
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    print_page(
        &page.identities,
        page.next_cursor,
        json,
        ("identities", "No identities."),
        identity_json,
        identity_line,
    );
    Ok(())
}
