//! Where events go: the line / NDJSON printer and the trace-file writer (and its reader).

pub mod printer;
pub mod tracefile;
