//! The contract between the XDP program (`dhcp-ebpf`) and the daemon (`dhcp-user`).
//!
//! Everything here is `#![no_std]` and `#[repr(C)]` so that both sides agree on the bytes. With
//! the `user` feature the map values also implement `bytemuck::Pod`, which is what aya needs to
//! read and write them.
#![no_std]

pub mod counters;
pub mod digest;
pub mod loadbalance;
pub mod loadgen;
pub mod maps;
pub mod wire;

pub use counters::Counter;
pub use maps::*;
