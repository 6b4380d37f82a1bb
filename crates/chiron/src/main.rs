//! The `chiron` command: parses the command line, loads the configuration, installs logging
//! and hands over to the command's module.

mod cli;
mod commands;
mod logging;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Version = cli.command {
        println!("chiron {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Command::RunnerAgent { spec } = &cli.command {
        // Inside a fresh sandbox: no configuration, no logging setup, no async runtime.
        return chiron_runner::agent::run_json("chiron runner-agent", spec);
    }
    // The configuration is validated before anything touches the data directory.
    let config = match chiron_server::config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("chiron: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    logging::init(&config.log, cli.log_format.map(Into::into));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chiron: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command, config)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("chiron: {err:#}");
            ExitCode::FAILURE
        }
    }
}
