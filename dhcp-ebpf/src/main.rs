//! The xdpdhcp XDP program.
//!
//! ```text
//! frame ─► eth(+802.1Q/QinQ) → IPv4 → UDP:67 → BOOTP → options      (frame.rs, options.rs)
//!   ├─ REQUEST for a lease the fast path may extend ─► ACK in place, XDP_TX  (decide.rs, ack.rs)
//!   ├─ provably garbage, or the failover partner's client ─► XDP_DROP
//!   └─ everything else ─► XDP_PASS (the daemon answers)
//! ```
//!
//! Every frame ends in exactly one counter (dhcp-common `Counter`), which also decides the XDP
//! action. No allocation logic lives here: the daemon owns every decision that needs state
//! beyond LEASES.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod ack;
mod checksum;
mod decide;
mod frame;
mod loadbalance;
mod maps;
mod options;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use dhcp_common::counters::Verdict;

#[xdp]
pub fn xdp_dhcp(ctx: XdpContext) -> u32 {
    let counter = decide::handle(&ctx);
    maps::count(counter);
    match counter.verdict() {
        Verdict::Ack => XDP_TX,
        Verdict::Drop => XDP_DROP,
        Verdict::Punt | Verdict::Pass => XDP_PASS,
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

/// Host builds exist only so that workspace-wide `cargo check`/`clippy` cover this crate; the
/// real object is built for `bpfel-unknown-none` by dhcp-user's build script.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
