//! `qemu-machine`: run a VM on your terminal, and talk QMP, qom and the guest agent.
//!
//! This file only starts the process (signals, panics, the async runtime) and hands the
//! parsed command line ([`args`]) to its subcommand; a failure ([`failure`]) becomes one
//! line on stderr and the exit status.

mod args;
mod cache;
mod config;
mod devices;
mod failure;
mod output;
mod progress;
mod qom;
mod run;
mod shell;
mod signals;
mod term;
mod tools;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command};
use crate::failure::Outcome;

fn main() -> ExitCode {
    // Like other Unix tools: a closed pipe (`| head`) ends us quietly, not with an error.
    // SAFETY: setting a signal's disposition to the default, before any thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    // Never a backtrace in a user's face: one line, and where to report it; and never a
    // terminal left raw.
    std::panic::set_hook(Box::new(|info| {
        term::restore_terminal();
        let _ = writeln!(
            std::io::stderr(),
            "qemu-machine: internal error: {info} (please report this)"
        );
    }));
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("qemu-machine: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command));
    // Background tasks (readers, drains) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(status) => ExitCode::from(status),
        Err(failure) => failure.report(),
    }
}

/// Runs one subcommand.
async fn dispatch(command: Command) -> Outcome {
    match command {
        Command::Run(args) => run::run(*args).await,
        Command::Shell(args) => shell::shell(args).await,
        Command::Exec(args) => tools::exec(args).await,
        Command::Migrate(args) => progress::migrate(args).await,
        Command::Job(args) => progress::job(args).await,
        Command::Events(args) => tools::events(args).await,
        Command::Qom(args) => qom::qom(args).await,
        Command::Ga(args) => tools::ga(args).await,
        Command::Accel(args) => tools::accel(args).await,
        Command::Version(args) => tools::version(args).await,
        Command::Cache(args) => cache::cache(args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "qemu-machine",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
    }
}
