//! The `sluice` binary: parses the command line, sets up logging and the
//! async runtime, and runs the command. Errors print as one line on stderr
//! with exit status 1; usage errors exit with 2 (clap's convention).

use std::process::ExitCode;

use clap::Parser;
use sluice::cli::Cli;

fn main() -> ExitCode {
    let args = Cli::parse();
    if !args.is_daemon() {
        // `sluice deny list | head` should end quietly, like any Unix tool.
        // SAFETY: restoring the default disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(sluice::cli::dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: error: {}", sluice::model::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
