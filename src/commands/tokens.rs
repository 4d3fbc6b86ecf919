//! `keygate tokens create|list|revoke`: named operator tokens (scoped) and gateway tokens (one
//! gateway id each). The token itself is printed once, by `create`; the control plane keeps
//! only its hash.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, status_failure};
use crate::args::{ClientArgs, TokensCommand};
use crate::output::{print_json, token_json, token_line};

/// Runs one `tokens` subcommand.
pub async fn run(client_args: &ClientArgs, command: TokensCommand) -> Result<(), Failure> {
    let mut client = admin_client::connect_as(client_args).await?;
    let json = client_args.json;
    match command {
        TokensCommand::Create {
            name,
            scopes,
            gateway_id,
        } => {
            let issued = client
                .create_token(pb::CreateTokenRequest {
                    name,
                    scopes,
                    gateway_id: gateway_id.unwrap_or_default(),
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            let record = issued.record.unwrap_or_default();
            if json {
                let mut value = token_json(&record);
                value["token"] = json!(issued.token);
                print_json(&value);
            } else {
                println!("{}", issued.token);
                println!("Created {}.", token_line(&record));
                println!("This is the only time the token is shown: store it now.");
            }
        }
        TokensCommand::List => {
            let listed = client
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                let tokens: Vec<_> = listed.tokens.iter().map(token_json).collect();
                print_json(&json!({ "tokens": tokens }));
            } else if listed.tokens.is_empty() {
                println!("No named tokens (the bootstrap --admin-token is not listed).");
            } else {
                for token in &listed.tokens {
                    println!("{}", token_line(token));
                }
            }
        }
        TokensCommand::Revoke { name } => {
            let revoked = client
                .revoke_token(pb::RevokeTokenRequest { name })
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                print_json(&json!({
                    "name": revoked.name,
                    "disconnectedGateways": revoked.disconnected_gateways,
                }));
            } else {
                println!("Revoked token {}: every call with it fails.", revoked.name);
                if !revoked.disconnected_gateways.is_empty() {
                    println!(
                        "Closed the sync streams of: {}.",
                        revoked.disconnected_gateways.join(", ")
                    );
                }
            }
        }
    }
    Ok(())
}
