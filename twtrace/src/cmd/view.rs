//! The full-screen view ([`twtrace::frontend::tui`]) as a session sink: the default of
//! `twtrace` / `twtrace live` on a terminal.

use super::args::TraceArgs;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use twtrace::analysis::aggregate::Aggregator;
use twtrace::frontend::tui::{HostInfo, Model, Screen, ViewState};
use twtrace::kernel::snapshot::NetnsCensus;
use twtrace::kernel::sysinfo;
use twtrace::pipeline::event::Event;
use twtrace::pipeline::session::{self, Flow, Session, Sink};
use twtrace::pipeline::tracer::Tracer;

/// How often the view takes the kernel's census again (it is kept current from events in
/// between; the re-sync undoes any drift from lost events).
const CENSUS_EVERY: Duration = Duration::from_secs(5);
/// How often the view redraws when no key is pressed.
const REDRAW_EVERY: Duration = Duration::from_secs(1);

pub fn run(trace: &TraceArgs) -> Result<()> {
    let mut opts = trace.session();
    // No hook report on stderr: the view's header shows the hooks, and the alternate screen
    // would hide it anyway; nor notices, which would tear the screen. Warnings are printed
    // when the view closes.
    opts.report = false;
    opts.print_notices = false;
    opts.poll_every = Duration::from_millis(50);
    opts.census_every = Some(CENSUS_EVERY);
    let mut session = Session::start(opts, session::stop_on_signals()?)?;
    let host = host_info(session.tracer());
    let screen = Screen::start().context("starting the full-screen view (try --plain)")?;
    let mut view = View {
        model: Model::build(&Aggregator::default(), &host),
        agg: Aggregator::default(),
        host,
        state: ViewState::default(),
        screen: Some(screen),
        census_note: None,
        next_draw: Instant::now(),
    };
    let result = session.run(&mut [&mut view]);
    // Leave the alternate screen before anything is printed.
    view.screen = None;
    if !trace.quiet {
        for w in &session.tracer().warnings {
            eprintln!("warning: {w}");
        }
        if let Some(n) = view.census_note {
            eprintln!("warning: no state census ({n}); TIME_WAIT counts came from events only");
        }
        eprintln!("{}", session.summary_line());
    }
    result.map(|_| ())
}

fn host_info(tracer: &Tracer) -> HostInfo {
    HostInfo {
        host: sysinfo::hostname(),
        kernel: sysinfo::kernel_release().unwrap_or_default(),
        // The function tier is optional: counted when attached, not listed as missing.
        hooks: tracer
            .features()
            .hooks
            .iter()
            .filter(|h| !h.is_fn_tier() || h.result.is_ok())
            .map(|h| (h.label(), h.result.is_ok()))
            .collect(),
        start_ns: sysinfo::monotonic_ns(),
    }
}

struct View {
    agg: Aggregator,
    host: HostInfo,
    state: ViewState,
    model: Model,
    /// `None` once closed.
    screen: Option<Screen>,
    census_note: Option<String>,
    next_draw: Instant,
}

impl Sink for View {
    fn on_events(&mut self, events: &[Event]) -> Result<Flow> {
        events.iter().for_each(|e| self.agg.observe(e));
        Ok(Flow::Continue)
    }

    fn on_census(&mut self, at_ns: u64, census: &[NetnsCensus]) {
        self.agg.set_census(at_ns, census);
    }

    fn on_census_unavailable(&mut self, why: &str) {
        self.census_note = Some(why.to_string());
    }

    /// Keys, and a redraw on a key or every [`REDRAW_EVERY`]; `q` ends the session.
    fn tick(&mut self, session: &Session) -> Result<Flow> {
        let Some(screen) = self.screen.as_mut() else {
            return Ok(Flow::Stop);
        };
        let ids = self.model.netns_ids();
        let mut redraw = false;
        for k in screen.keys()? {
            redraw |= self.state.on_key(k, &ids);
        }
        if redraw || Instant::now() >= self.next_draw {
            if !self.state.paused {
                self.agg.advance(sysinfo::monotonic_ns());
                self.model = Model::build(&self.agg, &self.host);
                self.model.read_errors = session.tracer().read_errors();
                self.model.map_errors = session.tracer().map_errors();
                self.model.skipped_runs = session.tracer().skipped_runs().unwrap_or(0);
            }
            screen.draw(&self.model, &self.state)?;
            self.next_draw = Instant::now() + REDRAW_EVERY;
        }
        if self.state.quit {
            // Closed before the session says (and logs) that it ended.
            self.screen = None;
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, _session: &Session) -> Result<()> {
        self.screen = None;
        Ok(())
    }
}
