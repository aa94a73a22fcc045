//! The `voxroute` binary: parse the command line and hand over to the library.
//!
//! Exit status: 0 on success, 1 when a command fails (the reason on stderr, one line), 2 for a
//! command line that does not parse (clap's usage message).

use std::process::ExitCode;

use clap::Parser;
use voxroute::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // The router runs in the actor system's own runtime.
        Command::Serve(args) => voxroute::server::run(args),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}`: the context (what voxroute was doing) and then its causes, on one line,
            // e.g. "cannot set up TLS (--tls-cert/--tls-key): cannot read ... from FILE: ...".
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every command but `serve`, inside a tokio runtime.
async fn run(command: Command) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Serve(_) => unreachable!("serve runs in its own runtime, see main"),
        Command::Keys(command) => cli::run_keys(command, &mut stdout).await?,
        Command::Sessions(command) => cli::run_sessions(command, &mut stdout).await?,
        Command::Retention(command) => cli::run_retention(command, &mut stdout).await?,
    }
    Ok(())
}
