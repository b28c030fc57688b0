//! One file per hook group. Each program filters first, then writes at most one record through
//! `record::reserve` and `record::submit`.

mod bind;
mod function;
mod iter;
mod kprobe;
mod segment;
mod state;
mod timer;
