//! xdpdhcp user space: the daemon, its CLI, and the typed interface to the XDP program.

pub mod clock;
pub mod fastpath;
