//! The namespace table stays bounded when namespaces come and go (kept apart from the main
//! tests so that the bound is easy to find and change).

use super::tests::{enter, exit, sock};
use super::*;

/// Namespace `i`'s one socket: enters at `i` × 10 ms, leaves 5 ms later. (Everything within
/// 40 s: the busy socket's deadline must not pass, or the sweep would clear it.)
fn visit(a: &mut Aggregator, i: u32, leave: bool) {
    let s = sock(
        u64::from(i) + 1,
        1_000 + i,
        [10, 0, 0, 1],
        40_000,
        [10, 0, 0, 2],
        80,
    );
    let t = f64::from(i) * 0.01;
    a.observe(&enter(t, s.clone(), Substate::TimeWait));
    if leave {
        a.observe(&exit(
            t + 0.005,
            s,
            Substate::TimeWait,
            ExitReason::Purged,
            5,
        ));
    }
}

#[test]
fn idle_namespaces_are_evicted_and_counted_busy_ones_kept() {
    let mut a = Aggregator::default();
    // One namespace that keeps a socket in TIME_WAIT throughout, then three times the bound
    // of namespaces that each lived and emptied.
    visit(&mut a, 0, false);
    let n = 3 * MAX_NETNS as u32;
    for i in 1..=n {
        visit(&mut a, i, true);
    }
    let rows = a.netns().count();
    assert!(rows <= MAX_NETNS, "{rows} namespace rows kept");
    assert_eq!(a.totals().netns_evicted as usize, n as usize + 1 - rows);
    assert!(
        a.netns_stats(1_000).is_some(),
        "the busy namespace was evicted"
    );
    assert_eq!(a.netns_stats(1_000).unwrap().timewait, [1, 0]);
    // The latest ones are kept (least recently entered go first), and the totals still hold
    // every event.
    assert!(a.netns_stats(1_000 + n).is_some());
    assert!(a.netns_stats(1_001).is_none());
    assert_eq!(a.totals().events, 2 * u64::from(n) + 1);
    assert!(Report::render(&a, 100).contains("namespace rows dropped"));
}

#[test]
fn gone_namespaces_go_before_idle_live_ones() {
    let mut a = Aggregator::default();
    // A census marks namespace 1 000 (empty) as present, then as gone.
    visit(&mut a, 0, true);
    a.set_census(
        1,
        &[NetnsCensus {
            netns: 1_000,
            counts: [0; CENSUS_SLOTS],
        }],
    );
    a.set_census(2, &[]);
    assert!(a.netns_stats(1_000).unwrap().gone);
    // Namespaces entered long before it was marked gone but never gone themselves.
    for i in 1..MAX_NETNS as u32 {
        visit(&mut a, i, true);
    }
    assert_eq!(a.totals().netns_evicted, 0);
    visit(&mut a, MAX_NETNS as u32, true);
    assert!(a.totals().netns_evicted >= 1);
    assert!(
        a.netns_stats(1_000).is_none(),
        "the gone namespace went first"
    );
}
