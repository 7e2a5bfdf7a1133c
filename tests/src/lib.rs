//! Shared helpers for xdpdhcp's privileged tests and benchmarks.
//!
//! - `frames`: craft request frames, parse and check reply frames.
//! - `xdp`: the real XDP program under BPF_PROG_TEST_RUN with a fixed map topology.

pub mod frames;
pub mod xdp;
