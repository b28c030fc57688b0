//! The one aggregator behind every front end (per peer, namespace, process; census; the
//! port-exhaustion forecast), its histograms, and its text (report, summary).

pub mod aggregate;
pub mod census;
pub mod forecast;
pub mod hist;
pub mod html;
pub mod report;
pub mod rows;
