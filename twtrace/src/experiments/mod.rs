//! Experiments that drive real workloads in private namespaces and watch the same event
//! stream: `verify` (the 2022 blog's claims) and `lab nat`.

pub mod lab;
pub mod verify;
pub mod workload;
