//! One file per hook group. Each program filters first, then writes at most one record through
//! `record::emit`.

mod function;
mod iter;
mod kprobe;
mod segment;
mod state;
mod timer;
