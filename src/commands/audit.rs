//! `keygate audit list`.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, status_failure};
use crate::args::{AuditCommand, ClientArgs};
use crate::output::{audit_json, print_json, rfc3339};

/// Prints the newest audit entries.
pub async fn run(client_args: &ClientArgs, command: AuditCommand) -> Result<(), Failure> {
    let AuditCommand::List { limit } = command;
    let mut client = admin_client::connect_as(client_args).await?;
    let list = client
        .list_audit(pb::ListAuditRequest { limit })
        .await
        .map_err(status_failure)?
        .into_inner();
    if client_args.json {
        let entries: Vec<_> = list.entries.iter().map(audit_json).collect();
        print_json(&json!({"entries": entries}));
        return Ok(());
    }
    for entry in &list.entries {
        println!(
            "{}  {}  {}  {}  revision {}  {}",
            rfc3339(entry.at_unix_ms),
            entry.actor,
            entry.action,
            entry.target,
            entry.revision,
            entry.detail_json
        );
    }
    Ok(())
}
