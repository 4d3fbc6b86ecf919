//! `keygate passkeys list|revoke --user U …`.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, status_failure};
use crate::args::{ClientArgs, PasskeysCommand};
use crate::commands::wait::{report_change, wait_if_asked};
use crate::output::{passkey_json, passkey_line, print_json};

/// Runs one `passkeys` subcommand.
pub async fn run(client_args: &ClientArgs, command: PasskeysCommand) -> Result<(), Failure> {
    let mut client = admin_client::connect_as(client_args).await?;
    let json = client_args.json;
    match command {
        PasskeysCommand::List { user } => {
            let listed = client
                .list_passkeys(pb::ListPasskeysRequest {
                    user_id: user.clone(),
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                let passkeys: Vec<_> = listed.passkeys.iter().map(passkey_json).collect();
                print_json(&json!({ "userId": user, "passkeys": passkeys }));
            } else if listed.passkeys.is_empty() {
                println!("User {user} has no passkeys.");
            } else {
                for passkey in &listed.passkeys {
                    println!("{}", passkey_line(passkey));
                }
            }
            Ok(())
        }
        PasskeysCommand::Revoke {
            user,
            passkey_id,
            wait,
        } => {
            let revoked = client
                .revoke_passkey(pb::RevokePasskeyRequest {
                    user_id: user.clone(),
                    passkey_id,
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            let waited = wait_if_asked(&mut client, revoked.revision, wait).await?;
            report_change(
                json,
                json!({
                    "revision": revoked.revision,
                    "userId": user,
                    "passkeyId": revoked.passkey_id,
                    "revoked": true,
                }),
                || {
                    println!(
                        "Revoked passkey {} of {user} (revision {}): every session it minted is refused.",
                        revoked.passkey_id, revoked.revision
                    );
                },
                waited,
            )
        }
    }
}
