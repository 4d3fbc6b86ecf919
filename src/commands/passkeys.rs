//! `keygate passkeys list|rename|revoke --user U …`, and `keygate passkeys list
//! --policy-violations`.

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
        PasskeysCommand::List {
            user,
            policy_violations: false,
        } => {
            let user = user.unwrap_or_default();
            let listed = client
                .list_passkeys(pb::ListPasskeysRequest {
                    user_id: user.clone(),
                    ..Default::default()
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
        PasskeysCommand::List {
            user,
            policy_violations: true,
        } => {
            let violators = policy_violations(&mut client, user.as_deref()).await?;
            if json {
                let passkeys: Vec<_> = violators
                    .iter()
                    .map(|passkey| {
                        let mut listed = passkey_json(passkey);
                        listed["policyViolation"] = passkey.policy_violation.clone().into();
                        listed
                    })
                    .collect();
                print_json(&json!({
                    "userId": user,
                    "policyViolations": true,
                    "passkeys": passkeys,
                }));
            } else if violators.is_empty() {
                println!("No stored passkey breaks the passkey policy.");
            } else {
                for passkey in &violators {
                    println!("{}  user {}", passkey_line(passkey), passkey.user_id);
                    println!("    refused: {}", passkey.policy_violation);
                }
            }
            Ok(())
        }
        PasskeysCommand::Rename {
            user,
            passkey_id,
            name,
        } => {
            let renamed = client
                .rename_passkey(pb::RenamePasskeyRequest {
                    user_id: user.clone(),
                    passkey_id,
                    name,
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                print_json(&json!({
                    "userId": user,
                    "passkeyId": renamed.passkey_id,
                    "name": renamed.name,
                    "passkey": passkey_json(&renamed),
                }));
            } else {
                println!(
                    "Renamed passkey {} of {user} to {:?}.",
                    renamed.passkey_id, renamed.name
                );
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

/// Every stored passkey (of `user`, or of everyone) that the control plane's passkey policy
/// refuses, following the scan's cursor to its end.
async fn policy_violations(
    client: &mut admin_client::AdminClient,
    user: Option<&str>,
) -> Result<Vec<pb::Passkey>, Failure> {
    let mut violators = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_passkeys(pb::ListPasskeysRequest {
                user_id: user.unwrap_or_default().to_owned(),
                policy_violations: true,
                cursor,
            })
            .await
            .map_err(status_failure)?
            .into_inner();
        violators.extend(page.passkeys);
        if page.cursor.is_empty() {
            return Ok(violators);
        }
        cursor = page.cursor;
    }
}
