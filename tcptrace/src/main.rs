//! The `tcptrace` binary: parses the command line, runs the command, and maps
//! errors to one line on stderr and an exit code (1; clap's own errors exit 2).

use std::process::ExitCode;

use clap::Parser;
use tcptrace::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Daemon(_) => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    // The logger passes everything; the global max level filters, so that
    // the daemon's config file can still change it.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .format_target(false)
        .init();
    log::set_max_level(cli.log_level.unwrap_or(default_level));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcptrace: error: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Events(args) => tcptrace::events::run(args).await,
            Command::Record(args) => tcptrace::recorder::record(args).await,
            Command::Report(args) => tcptrace::recorder::report(&args),
            Command::Sockets(args) => tcptrace::sockets::run(args).await,
            Command::Watch(args) => tcptrace::watch::run(args).await,
            Command::Daemon(args) => tcptrace::daemon::run(args, cli.log_level).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcptrace: error: {e:#}");
            // A bad configuration is a usage error, like a bad flag.
            if e.downcast_ref::<tcptrace::config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
