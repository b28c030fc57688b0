//! Where events go, and how they read as text: the line and NDJSON formats, the printer that
//! writes them, the trace-file writer (and its reader), and the text forms of values and tables
//! that every front end shares.

pub mod format;
pub mod json;
pub mod line;
pub mod printer;
pub mod table;
pub mod tracefile;

#[cfg(test)]
mod tests;
