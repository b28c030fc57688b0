//! `twtrace lab …`: small, self-contained network labs in private namespaces.

use anyhow::Result;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::time::Duration;
use twtrace::experiments::lab::{self, NatOptions};

#[derive(Args, Debug, Clone)]
pub struct LabArgs {
    #[command(subcommand)]
    pub lab: LabCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum LabCommand {
    /// Two clients behind a masquerading router and one server (all private namespaces,
    /// 198.18.0.0/15): where TIME_WAIT lives, whether tw_reuse fires behind NAT, and what
    /// happens to SYNs that meet the server's TIME_WAIT on a reused translated 4-tuple.
    Nat(NatArgs),
}

#[derive(Args, Debug, Clone)]
pub struct NatArgs {
    /// Connections per client in each phase (1 to 50).
    #[arg(long, default_value = "6", value_name = "N", allow_negative_numbers = true,
          value_parser = super::args::parse_count(1, 50, "a number of connections"))]
    pub connections: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: LabArgs) -> Result<()> {
    match args.lab {
        LabCommand::Nat(a) => nat(a),
    }
}

fn nat(args: NatArgs) -> Result<()> {
    let cancel = twtrace::pipeline::session::stop_on_signals()?;
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    spinner.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(150));
    let result = lab::run_nat(
        &NatOptions {
            per_client: args.connections,
        },
        cancel,
        |phase| spinner.set_message(phase.to_string()),
    );
    spinner.finish_and_clear();
    let report = result?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(lab::render_nat(&report).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
