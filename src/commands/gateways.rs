//! `keygate gateways`: the control plane's registry of gateways.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, status_failure};
use crate::args::ClientArgs;
use crate::output::{gateway_json, print_json, rfc3339};

/// Lists every gateway the control plane knows.
pub async fn run(client_args: &ClientArgs) -> Result<(), Failure> {
    let mut client =
        admin_client::connect(&client_args.endpoint, client_args.token.as_deref()).await?;
    let list = client
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .map_err(status_failure)?
        .into_inner();
    if client_args.json {
        let gateways: Vec<_> = list.gateways.iter().map(gateway_json).collect();
        print_json(&json!({"headRevision": list.head_revision, "gateways": gateways}));
        return Ok(());
    }
    println!("head revision {}", list.head_revision);
    if list.gateways.is_empty() {
        println!("No gateways.");
    }
    for gateway in &list.gateways {
        let state = if gateway.connected {
            "connected"
        } else {
            "disconnected"
        };
        println!(
            "{}  region {:?}  {}  applied {} (lag {})  last seen {}",
            gateway.gateway_id,
            gateway.region,
            state,
            gateway.applied_revision,
            gateway.lag_revisions,
            rfc3339(gateway.last_seen_unix_ms)
        );
    }
    Ok(())
}
