//! xdpdhcp user space: the daemon, its CLI, and the typed interface to the XDP program.

pub mod clock;
pub mod config;
pub mod daemon;
pub mod failover;
pub mod fastpath;
pub mod lease;
pub mod net;
pub mod server;
pub mod store;
pub mod wire;
