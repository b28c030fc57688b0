//! Helpers for the benchmarks and the integration tests, behind the `testkit` feature (as aya
//! does with `test-helpers`): not part of what the `twtrace` binary links.

pub mod loadgen;
