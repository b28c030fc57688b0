//! The line / NDJSON printer sink.

use crate::kernel::sysinfo::Clock;
use crate::pipeline::event::Event;
use crate::pipeline::session::{Flow, Sink};
use crate::sink::json::write_json;
use crate::sink::line::{write_line, LINE_HEADER};
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Lines,
    Json,
}

pub struct Printer<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    buf: String,
    header_done: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, format: Format, clock: Clock) -> Self {
        Printer {
            out,
            format,
            clock,
            buf: String::with_capacity(64 * 1024),
            header_done: false,
        }
    }

    /// Writes a batch and flushes once. An error (e.g. EPIPE from `| head`) is returned so the
    /// caller can stop.
    pub fn write_batch<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> std::io::Result<()> {
        self.buf.clear();
        if self.format == Format::Lines && !self.header_done {
            self.buf.push_str(LINE_HEADER);
            self.buf.push('\n');
            self.header_done = true;
        }
        for e in events {
            match self.format {
                Format::Lines => write_line(e, &self.clock, &mut self.buf),
                Format::Json => write_json(e, &self.clock, &mut self.buf),
            }
            self.buf.push('\n');
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.write_all(self.buf.as_bytes())?;
        self.out.flush()
    }
}

/// A session's printer: a failed write (the reader closed the pipe) ends the session quietly.
impl<W: Write> Sink for Printer<W> {
    fn on_events(&mut self, events: &[Event]) -> anyhow::Result<Flow> {
        Ok(match self.write_batch(events) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        })
    }
}
