//! One module per subcommand: argument parsing and wiring; the work is in the library.

pub mod export;
pub mod lab;
pub mod live;
pub mod record;
pub mod report;
pub mod serve;
pub mod verify;
