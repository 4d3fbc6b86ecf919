//! `keygate gateways`: the control plane's registry of gateways.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, status_failure};
use crate::args::ClientArgs;
use crate::output::{gateway_json, millis_text, print_json, rfc3339};

/// Lists every gateway the control plane knows.
pub async fn run(client_args: &ClientArgs) -> Result<(), Failure> {
    let mut client = admin_client::connect_as(client_args).await?;
    let list = client
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .map_err(status_failure)?
        .into_inner();
    if client_args.json {
        let gateways: Vec<_> = list.gateways.iter().map(gateway_json).collect();
        print_json(&json!({
            "headRevision": list.head_revision,
            "oldestRetainedRevision": list.oldest_retained_revision,
            "gateways": gateways,
        }));
        return Ok(());
    }
    println!(
        "head revision {} (events kept from revision {})",
        list.head_revision, list.oldest_retained_revision
    );
    if list.gateways.is_empty() {
        println!("No gateways.");
    }
    for gateway in &list.gateways {
        println!("{}", gateway_line(gateway));
    }
    Ok(())
}

/// One gateway on one line: where it is, what it has applied, how far behind and how stale.
pub fn gateway_line(gateway: &pb::Gateway) -> String {
    let state = if gateway.connected {
        "connected"
    } else {
        "disconnected"
    };
    let lag = match gateway.lag_ms {
        Some(ms) => format!("{} rev, {}", gateway.lag_revisions, millis_text(ms)),
        None => format!("{} rev", gateway.lag_revisions),
    };
    let staleness = gateway
        .staleness_ms
        .map_or_else(|| "never proven".to_owned(), millis_text);
    let credential = if gateway.credential.is_empty() {
        "credential unknown"
    } else {
        gateway.credential.as_str()
    };
    format!(
        "{}  region {:?}  {}  {}  applied {} (lag {})  stale {} (bound {}, {})  last seen {}",
        gateway.gateway_id,
        gateway.region,
        state,
        credential,
        gateway.applied_revision,
        lag,
        staleness,
        millis_text(gateway.propagation_bound_ms),
        gateway.stale_policy,
        rfc3339(gateway.last_seen_unix_ms)
    )
}
