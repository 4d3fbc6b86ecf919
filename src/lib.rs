//! The `keygate` binary's library: command-line arguments, the operator commands (gRPC clients
//! of the control plane's Admin service), the server commands that wire up
//! [`keygate_control_plane`] and [`keygate_proxy`], `keygate dev`, and the built-in echo
//! upstream. `main.rs` only parses arguments and calls [`run`].

#![forbid(unsafe_code)]

pub mod admin_client;
pub mod args;
pub mod commands;
pub mod config_file;
pub mod dev;
pub mod echo;
pub mod local_ca;
pub mod output;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

use args::{Cli, Command};

/// How a command failed, and so with which exit code the process ends.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A configuration file, flag or environment value is invalid (exit 78, `EX_CONFIG`).
    #[error("{0}")]
    Config(String),
    /// The command ran and failed: the control plane refused it, a listener could not bind …
    #[error("{0}")]
    Runtime(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 78,
            Self::Runtime(_) => 1,
        }
    }
}

/// Runs one parsed command to completion.
pub async fn run(cli: Cli, export_spans: bool) -> Result<(), Failure> {
    match cli.command {
        Command::Dev(dev) => dev::run(dev).await,
        Command::ControlPlane(flags) => serve::control_plane(flags).await,
        Command::Proxy(flags) => serve::proxy(flags, export_spans).await,
        Command::Keys(keys) => commands::keys::run(&cli.client, keys).await,
        Command::Identities(identities) => commands::identities::run(&cli.client, identities).await,
        Command::Gateways => commands::gateways::run(&cli.client).await,
        Command::Audit(audit) => commands::audit::run(&cli.client, audit).await,
        Command::Users(users) => commands::users::run(&cli.client, users).await,
        Command::Enrollments(enrollments) => {
            commands::enrollments::run(&cli.client, enrollments).await
        }
        Command::Passkeys(passkeys) => commands::passkeys::run(&cli.client, passkeys).await,
        Command::Sessions(sessions) => commands::sessions::run(&cli.client, sessions).await,
        Command::SigningKeys(keys) => commands::signing_keys::run(&cli.client, keys).await,
        Command::Tokens(tokens) => commands::tokens::run(&cli.client, tokens).await,
        Command::Store(store) => commands::store::run(&cli.client, store).await,
        Command::EchoUpstream { listen, fixed } => {
            let mut upstream = echo::EchoUpstream::bind(listen)
                .await
                .map_err(|error| Failure::Runtime(format!("cannot bind {listen}: {error}")))?;
            if fixed {
                upstream = upstream.fixed_response();
            }
            let addr = upstream
                .addr()
                .map_err(|error| Failure::Runtime(error.to_string()))?;
            println!("echo upstream listening on {addr}");
            upstream.serve(shutdown::on_signal()).await;
            Ok(())
        }
    }
}
