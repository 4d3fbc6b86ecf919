//! `keygate users …`: create, disable and enable passkey users.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, AdminClient, status_failure};
use crate::args::{ClientArgs, UsersCommand, WaitArgs};
use crate::commands::wait::{report_change, wait_if_asked};
use crate::output::{print_json, user_json};

/// Runs one `users` subcommand.
pub async fn run(client_args: &ClientArgs, command: UsersCommand) -> Result<(), Failure> {
    let mut client = admin_client::connect_as(client_args).await?;
    let json = client_args.json;
    match command {
        UsersCommand::Create { user_id } => {
            let change = client
                .create_user(pb::CreateUserRequest { user_id })
                .await
                .map_err(status_failure)?
                .into_inner();
            let user = change.user.unwrap_or_default();
            if json {
                print_json(&json!({
                    "revision": change.revision,
                    "userId": user.user_id,
                    "user": user_json(&user),
                }));
            } else {
                println!("Created user {}.", user.user_id);
                println!(
                    "Next: keygate enrollments create --user {} (a link to register a passkey).",
                    user.user_id
                );
            }
            Ok(())
        }
        UsersCommand::Disable { user_id, wait } => {
            set_enabled(&mut client, user_id, false, wait, json).await
        }
        UsersCommand::Enable { user_id, wait } => {
            set_enabled(&mut client, user_id, true, wait, json).await
        }
    }
}

async fn set_enabled(
    client: &mut AdminClient,
    user_id: String,
    enabled: bool,
    wait: WaitArgs,
    json: bool,
) -> Result<(), Failure> {
    let change = client
        .set_user_enabled(pb::SetUserEnabledRequest {
            user_id: user_id.clone(),
            enabled,
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    let waited = wait_if_asked(client, change.revision, wait).await?;
    report_change(
        json,
        json!({
            "revision": change.revision,
            "userId": user_id,
            "enabled": enabled,
            "changed": change.changed,
            "user": change.user.as_ref().map(user_json),
        }),
        || match (enabled, change.changed) {
            (false, true) => println!(
                "Disabled user {user_id} (revision {}): every session of theirs is refused.",
                change.revision
            ),
            (true, true) => println!("Enabled user {user_id} (revision {}).", change.revision),
            (false, false) => println!("User {user_id} was disabled already."),
            (true, false) => println!("User {user_id} was enabled already."),
        },
        waited,
    )
}
