//! Trace-file throughput and size: writes a synthetic trace of a realistic event mix and reads
//! it back, printing events/s written, events/s read and bytes/event, then the same as one JSON
//! line. A benchmark, not a test: run it in release mode.
//!
//! `cargo run --release --example tracefile_bench [-- EVENTS [PATH]]` (default 10 000 000
//! events in a temporary file, removed afterwards).

use std::time::Instant;
use twtrace::pipeline::event::Event;
use twtrace::sink::tracefile::{self, synthetic, Header, Reader, Summary, Writer, WriterOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = match args.next() {
        Some(a) => a.parse()?,
        None => 10_000_000,
    };
    let keep = args.next();
    let path = match &keep {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::temp_dir().join(format!("twtrace-bench-{}.twt", std::process::id())),
    };

    // A pool of distinct events replayed with advancing timestamps: generating 10 M events up
    // front would measure the generator and need gigabytes.
    let mut pool: Vec<Event> = synthetic::events(200_000, 42);
    let span = pool.last().map(|e| e.ts_ns).unwrap_or(0) - pool[0].ts_ns + 1;
    let header = Header::capture(twtrace::kernel::sysinfo::Clock::now(), 250, &[]);

    let t0 = Instant::now();
    let mut w = Writer::create(&path, &header, WriterOptions::default())?;
    let mut written = 0u64;
    'outer: loop {
        for e in pool.iter() {
            if written == n {
                break 'outer;
            }
            w.write(e)?;
            written += 1;
        }
        for e in pool.iter_mut() {
            e.ts_ns += span;
        }
    }
    w.finish(&Summary::default())?;
    let write_s = t0.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path)?.len();

    let t1 = Instant::now();
    let mut r = Reader::open(&path)?;
    let (mut read, mut damage, mut check) = (0u64, 0u64, 0u64);
    for item in r.events() {
        match item {
            Ok(e) => {
                read += 1;
                check = check.wrapping_add(e.ts_ns);
            }
            Err(_) => damage += 1,
        }
    }
    let read_s = t1.elapsed().as_secs_f64();
    if keep.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    anyhow::ensure!(
        read == written && damage == 0,
        "read back {read} of {written} events with {damage} damaged regions"
    );

    let w_rate = written as f64 / write_s;
    let r_rate = read as f64 / read_s;
    let per = bytes as f64 / written as f64;
    println!(
        "events: {written}  file: {bytes} bytes ({:.1} MiB)  format {}.{}",
        bytes as f64 / (1 << 20) as f64,
        tracefile::VERSION_MAJOR,
        tracefile::VERSION_MINOR
    );
    println!(
        "write: {write_s:.2} s  {:.2} M events/s   (target >= 2)",
        w_rate / 1e6
    );
    println!(
        "read:  {read_s:.2} s  {:.2} M events/s   (target >= 5)",
        r_rate / 1e6
    );
    println!("size:  {per:.2} bytes/event          (target <= 40)");
    println!(
        "{{\"events\":{written},\"bytes\":{bytes},\"bytes_per_event\":{per:.3},\"write_events_per_s\":{w_rate:.0},\"read_events_per_s\":{r_rate:.0},\"write_s\":{write_s:.3},\"read_s\":{read_s:.3},\"checksum\":{check}}}"
    );
    Ok(())
}
