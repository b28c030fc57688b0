//! `twtrace` / `twtrace live`: the full-screen view on a terminal; elsewhere (or with `--plain`)
//! events as lines, or NDJSON with `--json`, until Ctrl-C.

use super::args::{parse_secs, TraceArgs};
use anyhow::Result;
use clap::Args;
use std::io::IsTerminal;
use std::io::Write as _;
use std::time::{Duration, Instant};
use twtrace::analysis::aggregate::{self, Aggregator};
use twtrace::kernel::sysinfo;
use twtrace::pipeline::event::Event;
use twtrace::pipeline::session::{self, Flow, Session, Sink};
use twtrace::sink::printer::{Format, Printer};

#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// Print NDJSON, one object per event (the stable `--json` contract).
    #[arg(long)]
    pub json: bool,
    /// One line per event even on a terminal (where the default is the full-screen view).
    #[arg(long, conflicts_with = "json")]
    pub plain: bool,
    /// With line output, every SECS seconds a compact summary of the busiest peers (lines
    /// starting with `#`). Implies line output.
    #[arg(long, value_name = "SECS", conflicts_with = "json", allow_negative_numbers = true,
          value_parser = parse_secs)]
    pub summary_every: Option<Duration>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub fn run(args: LiveArgs) -> Result<()> {
    if !args.json && !args.plain && args.summary_every.is_none() && std::io::stdout().is_terminal()
    {
        return super::view::run(&args.trace);
    }
    let stdout = std::io::stdout();
    let interactive = stdout.is_terminal();
    let mut opts = args.trace.session();
    opts.poll_every = Duration::from_millis(if interactive { 50 } else { 100 });
    let mut session = Session::start(opts, session::stop_on_signals()?)?;
    let format = if args.json {
        Format::Json
    } else {
        Format::Lines
    };
    let mut printer = Printer::new(stdout.lock(), format, session.tracer().clock);
    // Only with --summary-every: the plain path stays as cheap as it was without. After the
    // printer, so that a block lands after the batch it counts.
    let mut summary = args.summary_every.map(SummaryEvery::new);
    match summary.as_mut() {
        Some(s) => session.run(&mut [&mut printer, s])?,
        None => session.run(&mut [&mut printer])?,
    };
    if !args.trace.quiet {
        eprintln!("{}", session.summary_line());
    }
    Ok(())
}

/// Peer rows in a periodic summary.
const SUMMARY_PEERS: usize = 5;

/// `--summary-every`: an aggregator of the printed events, and its block every period and at
/// the end.
struct SummaryEvery {
    agg: Aggregator,
    every: Duration,
    next: Instant,
}

impl SummaryEvery {
    fn new(every: Duration) -> SummaryEvery {
        SummaryEvery {
            agg: Aggregator::default(),
            every,
            next: Instant::now() + every,
        }
    }

    /// Writes the block; false when stdout is gone.
    fn print(&mut self) -> bool {
        self.agg.advance(sysinfo::monotonic_ns());
        let width = ratatui::crossterm::terminal::size()
            .ok()
            .filter(|_| std::io::stdout().is_terminal())
            .map_or(120, |(w, _)| usize::from(w));
        let text = aggregate::summary_text(&self.agg, SUMMARY_PEERS, width);
        // The printer holds the stdout lock; it is re-entrant on this thread and the printer
        // flushes after every batch, so this lands between two batches.
        let mut out = std::io::stdout();
        out.write_all(text.as_bytes()).is_ok() && out.flush().is_ok()
    }
}

impl Sink for SummaryEvery {
    fn on_events(&mut self, events: &[Event]) -> Result<Flow> {
        events.iter().for_each(|e| self.agg.observe(e));
        Ok(Flow::Continue)
    }

    fn tick(&mut self, _session: &Session) -> Result<Flow> {
        let now = Instant::now();
        if now < self.next {
            return Ok(Flow::Continue);
        }
        // A late tick does not bunch the next blocks together.
        let floor = now.checked_sub(self.every).unwrap_or(self.next);
        self.next = self.next.max(floor) + self.every;
        Ok(if self.print() {
            Flow::Continue
        } else {
            Flow::Stop
        })
    }

    fn finish(&mut self, _session: &Session) -> Result<()> {
        self.print();
        Ok(())
    }
}
