//! One module per subcommand: argument parsing and wiring; the work is in the library.

pub mod live;
