//! Network namespaces (finding them, making private ones) and their sysctls, the `/proc/net`
//! counters, the processes that own each namespace, as `/proc` shows them, and the workload
//! (cgroup, container, pod) a cgroup id names.

pub mod cpustat;
pub mod netns;
pub mod procnet;
pub mod procs;
pub mod sysctls;
pub mod workload;
