//! `twtrace`: the command line. Each subcommand lives in `cmd/`; the work is in the library.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Trace TCP TIME_WAIT sockets being born and dying, live, with eBPF.
///
/// Without a subcommand, on a terminal: a full-screen view (per-peer TIME_WAIT table,
/// port-exhaustion forecast, state census). Piped, or with --plain: one line per event —
/// `enter` (a socket entered TIME_WAIT: substate, armed timeout, the process that closed it),
/// `promote` (FIN_WAIT2 → TIME_WAIT inside a timewait socket), `exit` (it died: expired,
/// reused, syn, rst, purged or unknown, with its lifetime), `overflow`, `abort`,
/// `connect_fail`, `paws_reject`, `netns` (sysctls). --json prints NDJSON. Needs root (or
/// CAP_BPF + CAP_PERFMON) and a kernel with BTF.
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
    /// Record events to a compact binary trace file (mode 0600), for `report` and `export`.
    Record(cmd::record::RecordArgs),
    /// Summaries of trace files (per peer, netns, process; lifetime histogram). No root needed.
    Report(cmd::report::ReportArgs),
    /// Trace files as NDJSON (the live `--json` contract) or CSV. No root needed.
    Export(cmd::export::ExportArgs),
    /// The 2022 blog's TIME_WAIT claims measured on this kernel, in private namespaces
    /// (about 70–90 s): a table of verdicts, or one JSON object with --json.
    Verify(cmd::verify::VerifyArgs),
    /// Self-contained network labs in private namespaces (`lab nat`: TIME_WAIT behind NAT).
    Lab(cmd::lab::LabArgs),
    /// Trace headless and serve Prometheus metrics on /metrics (and /healthz), loopback by
    /// default: the fleet front end of the same aggregation as the live view and `report`.
    Serve(cmd::serve::ServeArgs),
    /// Man pages and shell completions from these definitions (for packaging).
    #[command(hide = true)]
    Generate(cmd::generate::GenerateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => cmd::live::run(cli.live),
        Some(Command::Live(a)) => cmd::live::run(a),
        Some(Command::Record(a)) => cmd::record::run(a),
        Some(Command::Export(a)) => cmd::export::run(a),
        Some(Command::Report(a)) => cmd::report::run(a),
        Some(Command::Verify(a)) => cmd::verify::run(a),
        Some(Command::Lab(a)) => cmd::lab::run(a),
        Some(Command::Serve(a)) => cmd::serve::run(a),
        Some(Command::Generate(a)) => cmd::generate::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twtrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
