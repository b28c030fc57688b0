//! `twtrace verify`: the blog's claims measured on this kernel, as a table or one JSON object.

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::Duration;
use twtrace::experiments::verify::{self, ClaimId};

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Measure only this claim (repeatable): duration, fin_timeout, recycle, reuse,
    /// max_tw_buckets, linger0, port_exhaustion.
    #[arg(long = "only", value_name = "CLAIM")]
    pub only: Vec<ClaimId>,
    /// Print one JSON object `{"claims": [...]}` instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Table width when stdout is not a terminal.
const DEFAULT_WIDTH: usize = 160;

pub fn run(args: VerifyArgs) -> Result<()> {
    let cancel = twtrace::pipeline::session::stop_on_signals()?;
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    let total = if args.only.is_empty() {
        ClaimId::ALL.len()
    } else {
        args.only.len()
    };
    bar.set_message(format!("measuring {total} claims in private namespaces"));
    let result = verify::run(&args.only, cancel, |p| {
        let frac = if p.done.len() == p.total {
            1.0
        } else {
            (p.elapsed.as_secs_f64() / p.expected.as_secs_f64().max(1.0)).min(0.99)
        };
        bar.set_position((frac * 100.0) as u64);
        let waiting: Vec<&str> = ClaimId::ALL
            .iter()
            .filter(|c| !p.done.contains(c) && (args.only.is_empty() || args.only.contains(c)))
            .map(|c| c.as_str())
            .collect();
        bar.set_message(format!(
            "{}/{} done{}",
            p.done.len(),
            p.total,
            if waiting.is_empty() {
                String::new()
            } else {
                format!(", waiting for {}", waiting.join(", "))
            }
        ));
    });
    bar.finish_and_clear();
    let report = result?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let width = if std::io::stdout().is_terminal() {
            ratatui::crossterm::terminal::size()
                .map(|(w, _)| usize::from(w))
                .unwrap_or(DEFAULT_WIDTH)
        } else {
            DEFAULT_WIDTH
        };
        out.write_all(verify::render_table(&report, width).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
