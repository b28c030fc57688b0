//! `twtrace`: the command line. Each subcommand lives in `cmd/`; the work is in the library.

mod cmd;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
#[command(name = "twtrace", version, about, long_about)]
struct Cli {
    /// More log output on stderr: -v info, -vv debug (default: warnings only; RUST_LOG, if
    /// set, refines it per module).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
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
    /// The socket state table per network namespace, exactly (the kernel's own tables, one
    /// walk each): TIME_WAIT split into its two substates, and the destinations TIME_WAIT
    /// sockets hold ports toward with their port pressure. --watch SECS repeats it.
    Census(cmd::census::CensusArgs),
    /// Trace headless and serve Prometheus metrics on /metrics (and /healthz), loopback by
    /// default: the fleet front end of the same aggregation as the live view and `report`.
    Serve(cmd::serve::ServeArgs),
    /// Man pages and shell completions from these definitions (for packaging).
    #[command(hide = true)]
    Generate(cmd::generate::GenerateArgs),
}

/// Userspace logging (`log::…` calls) on stderr: warnings by default, more with each `-v`.
/// RUST_LOG is read after, so its per-module directives still apply; `-v` then sets the
/// default level again, so that asking for more on the command line is never overridden.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Warn).parse_default_env();
    if verbose > 0 {
        b.filter_level(level);
    }
    b.init();
}

/// Parses the command line. The live options belong to the bare `twtrace` only; clap's
/// `args_conflicts_with_subcommands` would say so, but it also refuses a global option such as
/// `-v` before the subcommand, so the check is made here, for every option but the global ones.
fn parse() -> Cli {
    let matches = Cli::command().get_matches();
    if let Some((name, _)) = matches.subcommand() {
        let cmd = Cli::command();
        // Argument groups (one per flattened struct) are ids too: only arguments count.
        let given: Vec<String> = cmd
            .get_arguments()
            .filter(|a| !a.is_global_set())
            .filter(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        if !given.is_empty() {
            cmd.clone()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "the subcommand '{name}' cannot be used with {} (give it after '{name}')",
                        given.join(", ")
                    ),
                )
                .exit();
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        None => cmd::live::run(cli.live),
        Some(Command::Live(a)) => cmd::live::run(a),
        Some(Command::Record(a)) => cmd::record::run(a),
        Some(Command::Export(a)) => cmd::export::run(a),
        Some(Command::Report(a)) => cmd::report::run(a),
        Some(Command::Verify(a)) => cmd::verify::run(a),
        Some(Command::Lab(a)) => cmd::lab::run(a),
        Some(Command::Serve(a)) => cmd::serve::run(a),
        Some(Command::Census(a)) => cmd::census::run(a),
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
