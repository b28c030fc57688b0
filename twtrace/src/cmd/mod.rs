//! One module per subcommand: argument parsing and wiring; the work is in the library.

pub mod export;
pub mod generate;
pub mod lab;
pub mod live;
pub mod record;
pub mod report;
pub mod serve;
pub mod verify;

use twtrace::analysis::aggregate::Aggregator;
use twtrace::host::sysctls::SysctlWatch;
use twtrace::pipeline::filter::Filter;
use twtrace::pipeline::tracer::Tracer;

/// Re-syncs the aggregator's state census from the kernel (live view and serve): namespaces
/// outside the filter are dropped, and namespaces without traffic get their sysctls here (the
/// tracer reports the others' with `netns` events). An error means this kernel has no
/// iterator: the census then comes from events only.
pub fn resync_census(
    tracer: &mut Tracer,
    agg: &mut Aggregator,
    filter: &Filter,
    sysctls: &mut SysctlWatch,
) -> anyhow::Result<()> {
    // Events polled so far are older than this; later ones update the census.
    let at = twtrace::kernel::sysinfo::monotonic_ns();
    let mut census = tracer.census()?;
    census.retain(|c| filter.netns.is_empty() || filter.netns.contains(&c.netns));
    agg.set_census(at, &census);
    for c in &census {
        let ns = c.netns as u32;
        if agg.context(ns).is_none_or(|s| s.port_range.is_none()) {
            if let Some(s) = sysctls.observe(ns) {
                agg.set_context(ns, s);
            }
        }
    }
    Ok(())
}
