//! `keygate`: one binary for the gateway, the control plane, local development and operators.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = keygate::args::Cli::parse();
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
    // The span exporter's channel lives on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        keygate::telemetry::init(
            cli.command.is_server(),
            cli.log_format,
            cli.otlp_endpoint.as_deref(),
        )
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(error) => {
            let failure = keygate::Failure::Config(error);
            eprintln!("error: {failure}");
            std::process::exit(failure.exit_code());
        }
    };
    let result = runtime.block_on(keygate::run(cli, telemetry.exports_spans()));
    telemetry.shutdown();
    if let Err(failure) = result {
        eprintln!("error: {failure}");
        std::process::exit(failure.exit_code());
    }
}
