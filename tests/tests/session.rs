//! The session every front end runs: its filter, census re-sync, ticks, final drain and the
//! ways it ends, with the real kernel programs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use twtrace::experiments::workload::{connect_many, serve, FirstCloser, Server};
use twtrace::host::netns::NetNs;
use twtrace::kernel::snapshot::NetnsCensus;
use twtrace::pipeline::event::{Body, Event};
use twtrace::pipeline::filter::Filter;
use twtrace::pipeline::session::{End, Flow, Session, SessionOptions, Sink};

/// Everything a sink is told, and whether it asks to stop at its first tick.
#[derive(Default)]
struct Probe {
    events: Vec<Event>,
    calls: usize,
    census: Vec<Vec<NetnsCensus>>,
    ticks: usize,
    finished: usize,
    stop_at_tick: bool,
}

impl Sink for Probe {
    fn on_events(&mut self, events: &[Event]) -> anyhow::Result<Flow> {
        self.calls += 1;
        self.events.extend_from_slice(events);
        Ok(Flow::Continue)
    }

    fn on_census(&mut self, _at_ns: u64, census: &[NetnsCensus]) {
        self.census.push(census.to_vec());
    }

    fn tick(&mut self, _session: &Session) -> anyhow::Result<Flow> {
        self.ticks += 1;
        Ok(if self.stop_at_tick {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    fn finish(&mut self, _session: &Session) -> anyhow::Result<()> {
        self.finished += 1;
        Ok(())
    }
}

/// A namespace holding `n` client-side TIME_WAIT sockets.
fn namespace_with_timewait(n: usize) -> (NetNs, Server) {
    let ns = NetNs::new().unwrap();
    let server = serve(
        &ns,
        "127.0.0.1:0".parse().unwrap(),
        FirstCloser::Client,
        Duration::ZERO,
    )
    .unwrap();
    connect_many(&ns, server.addr, n, FirstCloser::Client).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    (ns, server)
}

#[test]
fn a_session_filters_resyncs_and_drains_to_every_sink() {
    const TW: usize = 3;
    let (ns, _server) = namespace_with_timewait(TW);
    let ino = ns.inode();
    let opts = SessionOptions {
        filter: Filter {
            netns: vec![ino],
            ..Filter::default()
        },
        duration: Some(Duration::from_millis(600)),
        poll_every: Duration::from_millis(20),
        census_every: Some(Duration::from_millis(200)),
        ..SessionOptions::default()
    };
    // Made TW, alive as many as the kernel says (one reset at birth is in neither).
    let alive = twtrace_tests::timewait_in(&ns) as usize;
    assert!((1..=TW).contains(&alive), "{alive} of {TW} alive");
    let mut session = Session::start(opts, Arc::new(AtomicBool::new(false))).unwrap();
    let (mut a, mut b) = (Probe::default(), Probe::default());
    assert_eq!(session.run(&mut [&mut a, &mut b]).unwrap(), End::Stopped);

    // Both sinks saw the same events, all of them from our namespace (or lost reports).
    assert_eq!(a.events, b.events);
    assert!(a.events.iter().all(|e| match &e.body {
        Body::Netns { netns, .. } => u64::from(*netns) == ino,
        Body::Lost { .. } => true,
        _ => e.sock().is_some_and(|s| u64::from(s.netns) == ino),
    }));
    // The snapshot's sockets, and the namespace's sysctls exactly once: one model.
    let enters = a
        .events
        .iter()
        .filter(|e| matches!(e.body, Body::Enter { .. }))
        .count();
    assert_eq!(enters, alive, "{:#?}", a.events);
    let netns_events = a
        .events
        .iter()
        .filter(|e| matches!(e.body, Body::Netns { .. }))
        .count();
    assert_eq!(netns_events, 1, "{:#?}", a.events);
    assert_eq!(session.shown(), a.events.len() as u64);
    // Census re-syncs at 0, 200, 400 ms (and maybe 600), filtered to our namespace.
    // (a loaded machine may fit one fewer in: each census walks every namespace)
    assert!((2..=4).contains(&a.census.len()), "{}", a.census.len());
    assert!(a.census.iter().all(|c| c.len() == 1 && c[0].netns == ino));
    // Polls and ticks go on without events; the final drain reaches the sinks; one finish.
    assert!(a.calls > 5 && a.ticks > 5, "{} {}", a.calls, a.ticks);
    assert_eq!((a.finished, b.finished), (1, 1));
    // The tracer's counts are of every namespace; "shown" is what passed the filter.
    let line = session.summary_line();
    assert!(
        line.starts_with(&format!("twtrace: {} events shown; ", a.events.len())),
        "{line}"
    );
}

#[test]
fn a_sink_can_end_the_session_and_the_stop_flag_ends_it_too() {
    let (ns, _server) = namespace_with_timewait(1);
    let filter = Filter {
        netns: vec![ns.inode()],
        ..Filter::default()
    };
    let opts = SessionOptions {
        filter,
        poll_every: Duration::from_millis(20),
        ..SessionOptions::default()
    };
    // A sink's Stop: no final drain, no finish, whatever the others say.
    let stop = Arc::new(AtomicBool::new(false));
    let mut session = Session::start(opts.clone(), stop.clone()).unwrap();
    let mut quitter = Probe {
        stop_at_tick: true,
        ..Probe::default()
    };
    let mut other = Probe::default();
    let end = session.run(&mut [&mut other, &mut quitter]).unwrap();
    assert_eq!(end, End::BySink);
    assert_eq!((quitter.ticks, quitter.finished, other.finished), (1, 0, 0));
    assert_eq!(other.calls, 1, "one poll, no drain");
    drop(session);

    // The stop flag, raised before the run: one poll and tick, then the drain and finish.
    stop.store(true, Ordering::Relaxed);
    let mut session = Session::start(opts, stop).unwrap();
    let mut p = Probe::default();
    assert_eq!(session.run(&mut [&mut p]).unwrap(), End::Stopped);
    assert_eq!((p.ticks, p.calls, p.finished), (1, 2, 1));
}
