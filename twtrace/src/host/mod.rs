//! Network namespaces (finding them, making private ones) and their sysctls, as `/proc` shows
//! them.

pub mod members;
pub mod netns;
pub mod sysctls;
