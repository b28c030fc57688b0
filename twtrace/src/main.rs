//! `twtrace`: the command line. Each subcommand lives in `cmd/`; the work is in the library.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Trace TCP TIME_WAIT sockets being born and dying, live, with eBPF.
///
/// Without a subcommand: one line per event — `enter` (a socket entered TIME_WAIT, with its
/// substate, armed timeout and the process that closed it), `promote` (FIN_WAIT2 → TIME_WAIT
/// inside a timewait socket) or `exit` (it died, with the reason and its lifetime). Needs root
/// (or CAP_BPF + CAP_PERFMON) and a kernel with BTF.
#[derive(Parser, Debug)]
#[command(
    name = "twtrace",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    live: cmd::live::LiveArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trace live (the default when no subcommand is given).
    Live(cmd::live::LiveArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => cmd::live::run(cli.live),
        Some(Command::Live(a)) => cmd::live::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twtrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
