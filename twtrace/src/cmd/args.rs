//! The arguments every tracing subcommand shares, and the value parsers of every numeric
//! option: a bad number is refused by clap, with the option's name and the allowed range,
//! before anything is loaded (no later `Duration::from_secs_f64` can panic on it).

use clap::Args;
use std::net::IpAddr;
use std::time::Duration;
use twtrace::pipeline::filter::Filter;
use twtrace::pipeline::session::SessionOptions;
use twtrace::pipeline::tracer::TracerOptions;

/// The event filters of the tracing subcommands and of `report`.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only sockets with this local or remote port (repeatable).
    #[arg(short = 'p', long = "port", value_name = "PORT", allow_negative_numbers = true,
          value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// Only sockets in this network namespace, by inode (`stat -L -c %i /proc/PID/ns/net`).
    #[arg(long = "netns", value_name = "INODE", allow_negative_numbers = true,
          value_parser = parse_inode)]
    pub netns: Vec<u64>,
    /// Only sockets whose remote address is ADDR (repeatable).
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<IpAddr>,
    /// Only events of workloads in this cgroup (v2 path, e.g. /kubepods.slice) or below it
    /// (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// Only events of this container (an id or its prefix, as `docker ps` shows it), or of
    /// this pod (UID or name) (repeatable).
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,
}

impl FilterArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            ports: self.ports.clone(),
            netns: self.netns.clone(),
            peers: self.peers.clone(),
            cgroups: self.cgroups.clone(),
            containers: self.containers.clone(),
        }
    }
}

/// What every tracing subcommand (`live`, `record`, `serve`) takes: filters and tracer
/// settings.
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub only: FilterArgs,
    /// Do not list TIME_WAIT sockets that existed before start-up.
    #[arg(long)]
    pub no_snapshot: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Kernel ring buffer size in MiB (a power of two).
    #[arg(long, default_value = "8", value_name = "MIB", allow_negative_numbers = true,
          value_parser = parse_ring_mib)]
    pub ring_mib: u32,
    /// Do not print the hook report and summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// How the function tier attaches: fexit, kprobe (+ kretprobe), auto (fexit, else
    /// kprobes) or off. Default: auto, or $TWTRACE_FN_HOOKS.
    #[arg(long, value_enum, value_name = "HOW")]
    pub fn_hooks: Option<twtrace::kernel::fn_tier::FnHooks>,
}

impl TraceArgs {
    pub fn filter(&self) -> Filter {
        self.only.filter()
    }

    pub fn tracer_options(&self) -> TracerOptions {
        let defaults = TracerOptions::default();
        TracerOptions {
            ring_bytes: self.ring_mib << 20,
            snapshot: !self.no_snapshot,
            fn_hooks: self.fn_hooks.unwrap_or(defaults.fn_hooks),
            ..defaults
        }
    }

    /// A session with these filters and settings; the front end adjusts the rest.
    pub fn session(&self) -> SessionOptions {
        SessionOptions {
            tracer: self.tracer_options(),
            filter: self.filter(),
            duration: self.duration,
            report: !self.quiet,
            print_notices: true,
            ..SessionOptions::default()
        }
    }
}

/// The longest time option accepted: ten years, far inside what `Instant` arithmetic holds.
const MAX_SECS: f64 = 10.0 * 365.0 * 86400.0;

/// A number of seconds above 0 and at most `max`, as a [`Duration`].
fn secs_in(s: &str, max: f64) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    // NaN fails both comparisons, so it is refused here too.
    if !(v > 0.0 && v <= max) {
        return Err(format!(
            "'{s}' is out of range: seconds must be above 0 and at most {max}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Seconds: above 0, at most ten years.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    secs_in(s, MAX_SECS)
}

/// `--flush-interval`: above 0, at most an hour (the bound on what a kill may lose).
pub fn parse_flush_interval(s: &str) -> Result<Duration, String> {
    secs_in(s, 3600.0)
}

/// An integer in `lo..=hi`, with a message that says the range.
fn int_in<T>(s: &str, lo: T, hi: T, what: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match s.trim().parse::<T>() {
        Ok(v) if v >= lo && v <= hi => Ok(v),
        _ => Err(format!("'{s}' is not {what} ({lo} to {hi})")),
    }
}

/// A port filter: 1 to 65535 (no socket has port 0).
pub fn parse_port(s: &str) -> Result<u16, String> {
    int_in(s, 1, u16::MAX, "a port number")
}

/// A namespace inode: never 0.
pub fn parse_inode(s: &str) -> Result<u64, String> {
    int_in(s, 1, u64::MAX, "a namespace inode number")
}

/// The ring buffer in MiB: a power of two from 1 to 1024.
pub fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let v: u32 = int_in(s, 1, 1024, "a ring size in MiB")?;
    if !v.is_power_of_two() {
        return Err(format!("'{s}' is not a power of two (1, 2, 4, … 1024)"));
    }
    Ok(v)
}

/// A count in `lo..=hi` (report width, lab connections, label bounds).
pub fn parse_count(
    lo: usize,
    hi: usize,
    what: &'static str,
) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s| int_in(s, lo, hi, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_checked() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs(" 600 "), Ok(Duration::from_secs(600)));
        for bad in ["0", "-1", "inf", "-inf", "nan", "1e300", "abc", ""] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
        assert!(parse_flush_interval("3600").is_ok());
        assert!(parse_flush_interval("3600.5").is_err());
    }

    #[test]
    fn integers_are_checked() {
        assert_eq!(parse_port("80"), Ok(80));
        for bad in ["0", "-1", "65536", "1e3", "x"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        assert!(parse_inode("0").is_err());
        assert_eq!(parse_inode("4026531840"), Ok(4026531840));
        assert_eq!(parse_ring_mib("8"), Ok(8));
        for bad in ["0", "3", "2048", "-8"] {
            assert!(parse_ring_mib(bad).is_err(), "{bad}");
        }
        let width = parse_count(20, 1000, "a width");
        assert_eq!(width("80"), Ok(80));
        assert!(width("19").is_err() && width("1001").is_err());
    }
}
