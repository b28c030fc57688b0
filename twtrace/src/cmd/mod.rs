//! One module per subcommand: argument parsing and wiring; the work is in the library. What
//! they share is in `args` (the tracing arguments, the numeric value parsers); the loop every
//! tracing front end runs is [`twtrace::pipeline::session`].

pub mod args;
pub mod census;
pub mod export;
pub mod generate;
pub mod lab;
pub mod live;
pub mod record;
pub mod report;
pub mod serve;
pub mod verify;
mod view;
