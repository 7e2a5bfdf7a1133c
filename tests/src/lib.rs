//! Shared helpers for xdpdhcp's privileged tests and benchmarks.
//!
//! - `frames`: craft request frames, parse and check reply frames.
//! - `xdp`: the real XDP program under BPF_PROG_TEST_RUN with a fixed map topology.
//! - `netlab`: network-namespace labs running the real daemon and real clients.
//! - `relay_client`: a scriptable relay agent for crafted end-to-end exchanges.

pub mod frames;
pub mod netlab;
pub mod relay_client;
pub mod xdp;
