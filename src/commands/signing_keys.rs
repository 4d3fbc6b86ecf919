//! `keygate signing-keys rotate`: a new key signs new sessions; the old one keeps verifying
//! the tokens it signed until they expire.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, status_failure};
use crate::args::{ClientArgs, SigningKeysCommand};
use crate::output::{print_json, rfc3339};

/// Runs one `signing-keys` subcommand.
pub async fn run(client_args: &ClientArgs, command: SigningKeysCommand) -> Result<(), Failure> {
    let SigningKeysCommand::Rotate = command;
    let mut client = admin_client::connect_as(client_args).await?;
    let rotated = client
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .map_err(status_failure)?
        .into_inner();
    let retired = (!rotated.retired_key_id.is_empty()).then_some(&rotated.retired_key_id);
    let verify_until = retired.map(|_| rfc3339(rotated.retired_verify_until_unix_ms));
    if client_args.json {
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
