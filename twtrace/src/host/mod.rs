//! Network namespaces (finding them, making private ones) and their sysctls, the `/proc/net`
//! counters, and the processes that own each namespace, as `/proc` shows them.

pub mod netns;
pub mod procnet;
pub mod procs;
pub mod sysctls;
