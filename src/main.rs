//! `keygate`: one binary for the gateway, the control plane, local development and operators.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = keygate::args::Cli::parse();
    keygate::telemetry::init_logging(cli.command.is_server(), cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(failure) = runtime.block_on(keygate::run(cli)) {
        eprintln!("error: {failure}");
        std::process::exit(failure.exit_code());
    }
}
