//! Network namespaces (finding them, making private ones) and their sysctls, as `/proc` shows
//! them.

pub mod netns;
pub mod sysctls;
