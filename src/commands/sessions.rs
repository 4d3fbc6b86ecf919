//! `keygate sessions revoke --user U`: sign a user out everywhere.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, status_failure};
use crate::args::{ClientArgs, SessionsCommand};
use crate::commands::wait::{report_change, wait_if_asked};
use crate::output::rfc3339;

/// Runs one `sessions` subcommand.
pub async fn run(client_args: &ClientArgs, command: SessionsCommand) -> Result<(), Failure> {
    let SessionsCommand::Revoke { user, wait } = command;
    let mut client = admin_client::connect_as(client_args).await?;
    let revoked = client
        .revoke_sessions(pb::RevokeSessionsRequest {
            user_id: user.clone(),
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    let waited = wait_if_asked(&mut client, revoked.revision, wait).await?;
    report_change(
        client_args.json,
        json!({
            "revision": revoked.revision,
            "userId": user,
            "revokedBefore": rfc3339(revoked.revoked_before_unix_ms),
        }),
        || {
            println!(
                "Revoked every session of {user} issued before {} (revision {}).",
                rfc3339(revoked.revoked_before_unix_ms),
                revoked.revision
            );
        },
        waited,
    )
}
