//! Shared helpers for xdpdhcp's privileged tests and benchmarks.
//!
//! - `frames`: craft request frames, parse and check reply frames.
//! - `xdp`: the real XDP program under BPF_PROG_TEST_RUN with a fixed map topology.
//! - `netlab`: network-namespace labs running the real daemon and real clients.
//! - `folab`: two servers in failover (xdpdhcp or ISC dhcpd) with real clients.
//! - `relay_client`: a scriptable relay agent for crafted end-to-end exchanges.

pub mod folab;
pub mod frames;
pub mod loadgen;
pub mod netlab;
pub mod relay_client;
pub mod servers;
pub mod xdp;
