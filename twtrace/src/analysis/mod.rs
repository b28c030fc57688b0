//! The one aggregator behind every front end (per peer, namespace, process; census; the
//! port-exhaustion forecast).

pub mod aggregate;
pub mod census;
pub mod forecast;
