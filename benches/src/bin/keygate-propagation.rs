//! `keygate-propagation`: revocation → refused at every gateway, and the `--wait` time, over
//! many revocations, idle or under a steady background load. What is revoked is an API key
//! (`--revoke key`) or a passkey, whose session is probed (`--revoke passkey`).
//! `benches/propagation.sh` and `benches/passkey-propagation.sh` start the control plane and 8
//! gateways and run it.

#![forbid(unsafe_code)]

use clap::{Parser, ValueEnum};
use keygate_benches::propagation::{self, PropagationArgs, Revoke};

#[derive(Clone, Copy, ValueEnum)]
enum Subject {
    /// API keys, alternately disabled and deleted.
    Key,
    /// Passkeys (enrolled by a software authenticator), probed with their sessions.
    Passkey,
}

#[derive(Parser)]
#[command(name = "keygate-propagation")]
struct Cli {
    /// Gateway URLs on a route that accepts the credential, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    gateways: Vec<String>,
    #[arg(
        long,
        env = "KEYGATE_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,
    #[arg(long, env = "KEYGATE_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long, default_value_t = 1000)]
    revocations: usize,
    /// What each revocation revokes.
    #[arg(long, value_enum, default_value_t = Subject::Key)]
    revoke: Subject,
    /// The control plane's HTTP listener, where passkeys are enrolled (`--revoke passkey`;
    /// its passkey rate limits must be off).
    #[arg(long, default_value = "http://127.0.0.1:7080")]
    passkey_api: String,
    /// Background requests per second over all gateways (0: idle).
    #[arg(long, default_value_t = 0)]
    load_rps: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let args = PropagationArgs {
        gateways: cli.gateways,
        endpoint: cli.endpoint,
        token: cli.token,
        revocations: cli.revocations,
        load_rps: cli.load_rps,
        revoke: match cli.revoke {
            Subject::Key => Revoke::Keys,
            Subject::Passkey => Revoke::Passkeys {
                api: cli.passkey_api,
            },
        },
    };
    match propagation::run(&args).await {
        Ok(report) => {
            println!("{}", report.text());
            if let Some(path) = cli.json
                && let Err(error) = std::fs::write(&path, report.json().to_string())
            {
                eprintln!("error: cannot write {}: {error}", path.display());
                std::process::exit(1);
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
}
