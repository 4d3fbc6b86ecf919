//! `keygate signing-keys list|rotate|revoke`: the keys passkey sessions are signed with. A
//! rotation makes a new key sign new sessions while the old one keeps verifying the tokens it
//! signed until they expire; a revocation refuses every token a key signed, at once.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, AdminClient, status_failure};
use crate::args::{ClientArgs, SigningKeysCommand, WaitArgs};
use crate::commands::wait::{report_change, wait_if_asked};
use crate::output::{print_json, rfc3339, signing_key_json, signing_key_line};

/// Runs one `signing-keys` subcommand.
pub async fn run(client_args: &ClientArgs, command: SigningKeysCommand) -> Result<(), Failure> {
    let mut client = admin_client::connect_as(client_args).await?;
    match command {
        SigningKeysCommand::List => list(&mut client, client_args.json).await,
        SigningKeysCommand::Rotate => rotate(&mut client, client_args.json).await,
        SigningKeysCommand::Revoke { key_id, wait } => {
            revoke(&mut client, client_args.json, key_id, wait).await
        }
    }
}

async fn list(client: &mut AdminClient, json: bool) -> Result<(), Failure> {
    let listed = client
        .list_signing_keys(pb::ListSigningKeysRequest {})
        .await
        .map_err(status_failure)?
        .into_inner();
    if json {
        let keys: Vec<_> = listed.keys.iter().map(signing_key_json).collect();
        print_json(&json!({ "keys": keys }));
    } else if listed.keys.is_empty() {
        println!("No signing key yet: the first is made with the first user.");
    } else {
        for key in &listed.keys {
            println!("{}", signing_key_line(key));
        }
    }
    Ok(())
}

async fn rotate(client: &mut AdminClient, json: bool) -> Result<(), Failure> {
    let rotated = client
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .map_err(status_failure)?
        .into_inner();
    let retired = (!rotated.retired_key_id.is_empty()).then_some(&rotated.retired_key_id);
    let verify_until = retired.map(|_| rfc3339(rotated.retired_verify_until_unix_ms));
    if json {
        print_json(&json!({
            "revision": rotated.revision,
            "keyId": rotated.key_id,
            "retiredKeyId": retired,
            "retiredVerifyUntil": verify_until,
        }));
    } else {
        println!(
            "New sessions are signed with {} (revision {}).",
            rotated.key_id, rotated.revision
        );
        if let (Some(retired), Some(until)) = (retired, verify_until) {
            println!("The previous key {retired} verifies its sessions until {until}.");
        }
    }
    Ok(())
}

async fn revoke(
    client: &mut AdminClient,
    json: bool,
    key_id: String,
    wait: WaitArgs,
) -> Result<(), Failure> {
    let revoked = client
        .revoke_signing_key(pb::RevokeSigningKeyRequest { key_id })
        .await
        .map_err(status_failure)?
        .into_inner();
    let waited = wait_if_asked(client, revoked.revision, wait).await?;
    let current = (!revoked.current_key_id.is_empty()).then_some(&revoked.current_key_id);
    report_change(
        json,
        json!({
            "revision": revoked.revision,
            "keyId": revoked.key_id,
            "revoked": true,
            "alreadyRevoked": revoked.already_revoked,
            "currentKeyId": current,
            "keptUntil": rfc3339(revoked.kept_until_unix_ms),
        }),
        || {
            if revoked.already_revoked {
                println!(
                    "Signing key {} was already revoked; nothing changed.",
                    revoked.key_id
                );
            } else {
                println!(
                    "Revoked signing key {} (revision {}): every session it signed is refused.",
                    revoked.key_id, revoked.revision
                );
            }
            if let Some(current) = current {
                println!("New sessions are signed with {current}.");
            }
        },
        waited,
    )
}
