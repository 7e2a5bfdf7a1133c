//! Load generator for `cargo xtask bench`.
//!
//! - `loadgen_tx` runs through BPF_PROG_TEST_RUN in live-frames mode on the generator's veth:
//!   each run turns the template frame into a request for the next client and transmits it.
//! - `loadgen_rx` is attached to that veth: it counts the server's replies (recording which
//!   clients got an ACK), turns OFFERs into REQUESTs in DISCOVER mode, and drops them.
//! - `xdp_pass` goes on a peer server's veth: frames a generator sends with XDP reach a veth
//!   only if it has an XDP program.
//!
//! Frame layout: dhcp-common `loadgen::frame`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use dhcp_common::loadgen::{
    GEN_MAX_CLIENTS, GenConfig, GenTemplate, MODE_DISCOVER, MODE_REBOOT, MODE_RENEW, client_mac,
    count, frame,
};

#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map(name = "GEN_TEMPLATE")]
static GEN_TEMPLATE: Array<GenTemplate> = Array::with_max_entries(1, 0);

#[map(name = "GEN_TODO")]
static GEN_TODO: Array<u32> = Array::with_max_entries(GEN_MAX_CLIENTS, 0);

/// Sequence number of the last frame sent (also its xid). Global, not per CPU: the driver
/// sends from one thread, and xids must be comparable across steps.
#[map(name = "GEN_SEQ")]
static GEN_SEQ: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU bitmaps of clients that got an ACK (the driver ORs the CPUs together).
#[map(name = "GEN_ACKED")]
static GEN_ACKED: PerCpuArray<u64> = PerCpuArray::with_max_entries(GEN_MAX_CLIENTS / 64, 0);

#[map(name = "GEN_COUNTS")]
static GEN_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(count::SLOTS, 0);

const MSG_OFFER: u8 = 2;
const MSG_ACK: u8 = 5;
const MSG_NAK: u8 = 6;
const OPT_MESSAGE_TYPE: u8 = 53;
const BOOTREPLY: u8 = 2;

#[inline(always)]
fn bump(slot: u32) {
    if let Some(p) = GEN_COUNTS.get_ptr_mut(slot) {
        unsafe { *p += 1 };
    }
}

/// The frame as a mutable byte slice of exactly `frame::LEN` bytes, if it is at least that long.
#[inline(always)]
fn frame_bytes(ctx: &XdpContext) -> Option<&'static mut [u8; frame::LEN]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + frame::LEN > end {
        return None;
    }
    Some(unsafe { &mut *(start as *mut [u8; frame::LEN]) })
}

/// Bytes of a reply the receiver reads: headers, BOOTP header and the first option (servers
/// do not all pad replies to 300 bytes: Kea sends 262).
const REPLY_PREFIX: usize = frame::OPTIONS + 3;

#[inline(always)]
fn reply_bytes(ctx: &XdpContext) -> Option<&'static [u8; REPLY_PREFIX]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + REPLY_PREFIX > end {
        return None;
    }
    Some(unsafe { &*(start as *const [u8; REPLY_PREFIX]) })
}

#[inline(always)]
fn put32(f: &mut [u8; frame::LEN], at: usize, v: u32) {
    f[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[xdp]
pub fn loadgen_tx(ctx: XdpContext) -> u32 {
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return XDP_DROP;
    };
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return XDP_DROP;
    };
    let n = unsafe {
        *seq += 1;
        *seq
    };
    let index = if cfg.todo_len > 0 {
        match GEN_TODO.get((n % u64::from(cfg.todo_len)) as u32) {
            Some(i) => *i,
            None => return XDP_DROP,
        }
    } else if cfg.clients > 0 {
        cfg.first.wrapping_add((n % u64::from(cfg.clients)) as u32)
    } else {
        return XDP_DROP;
    };
    // The page may hold anything a previous round left (a reply built in place): start over.
    let len = (ctx.data_end() - ctx.data()) as i32;
    if len != frame::LEN as i32
        && unsafe { bpf_xdp_adjust_tail(ctx.ctx, frame::LEN as i32 - len) } != 0
    {
        return XDP_DROP;
    }
    let Some(template) = GEN_TEMPLATE.get_ptr_mut(0) else {
        return XDP_DROP;
    };
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, template.cast(), frame::LEN as u32) } != 0 {
        return XDP_DROP;
    }
    let Some(f) = frame_bytes(&ctx) else {
        return XDP_DROP;
    };
    let mac = client_mac(index);
    let address = cfg.base_ip.wrapping_add(index);
    put32(f, frame::XID, n as u32);
    f[frame::CHADDR..frame::CHADDR + 6].copy_from_slice(&mac);
    match cfg.mode {
        MODE_RENEW => put32(f, frame::CIADDR, address),
        MODE_REBOOT => {
            put32(f, frame::REQUESTED, address);
            f[frame::ETH_SRC..frame::ETH_SRC + 6].copy_from_slice(&mac);
        }
        MODE_DISCOVER => {}
        _ => return XDP_DROP,
    }
    bump(count::SENT);
    XDP_TX
}

#[xdp]
pub fn loadgen_rx(ctx: XdpContext) -> u32 {
    // Idle: replies go to the stack (perfdhcp, probes).
    match GEN_CONFIG.get(0) {
        Some(cfg) if cfg.mode != 0 => {}
        _ => return XDP_PASS,
    }
    let Some(f) = reply_bytes(&ctx) else {
        return XDP_PASS;
    };
    // IPv4, no options, UDP to port 67 (relay) or 68 (client), a BOOTREPLY.
    let dst_port = u16::from_be_bytes([f[frame::UDP + 2], f[frame::UDP + 3]]);
    if f[12] != 0x08
        || f[13] != 0
        || f[frame::IP] != 0x45
        || f[frame::IP + 9] != 17
        || (dst_port != 67 && dst_port != 68)
        || f[frame::BOOTP] != BOOTREPLY
    {
        return XDP_PASS;
    }
    // Every server measured puts option 53 first.
    if f[frame::OPTIONS] != OPT_MESSAGE_TYPE {
        bump(count::OTHER_REPLY);
        return XDP_DROP;
    }
    let index = u32::from_be_bytes([
        f[frame::CHADDR + 2],
        f[frame::CHADDR + 3],
        f[frame::CHADDR + 4],
        f[frame::CHADDR + 5],
    ]);
    let xid = u32::from_be_bytes([
        f[frame::XID],
        f[frame::XID + 1],
        f[frame::XID + 2],
        f[frame::XID + 3],
    ]);
    if GEN_CONFIG.get(0).is_some_and(|cfg| xid < cfg.min_xid) {
        bump(count::STALE);
        return XDP_DROP;
    }
    match f[frame::OPTIONS + 2] {
        MSG_ACK => {
            bump(count::ACK);
            if let Some(p) = GEN_COUNTS.get_ptr_mut(count::LAST_ACK_NS) {
                unsafe { *p = bpf_ktime_get_ns() };
            }
            if index < GEN_MAX_CLIENTS
                && let Some(word) = GEN_ACKED.get_ptr_mut(index / 64)
            {
                unsafe { *word |= 1 << (index % 64) };
            }
            XDP_DROP
        }
        MSG_NAK => {
            bump(count::NAK);
            XDP_DROP
        }
        MSG_OFFER => {
            bump(count::OFFER);
            match GEN_CONFIG.get(0) {
                Some(cfg) if cfg.mode == MODE_DISCOVER => request_from_offer(&ctx, cfg),
                _ => XDP_DROP,
            }
        }
        _ => {
            bump(count::OTHER_REPLY);
            XDP_DROP
        }
    }
}

/// Length of the REQUEST built from an OFFER: BOOTP header, cookie and 16 bytes of options.
/// Shorter than the 300 bytes clients usually send, so that it fits in any OFFER: growing a
/// frame that came from a socket can fail for lack of tailroom.
const REQUEST_LEN: usize = frame::OPTIONS + 16;

/// Turns an OFFER (to the relay) into the client's REQUEST (from the relay) and sends it back.
#[inline(always)]
fn request_from_offer(ctx: &XdpContext, cfg: &GenConfig) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as i32;
    if len < REQUEST_LEN as i32
        || (len != REQUEST_LEN as i32
            && unsafe { bpf_xdp_adjust_tail(ctx.ctx, REQUEST_LEN as i32 - len) } != 0)
    {
        return XDP_DROP;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + REQUEST_LEN > end {
        return XDP_DROP;
    }
    let f = unsafe { &mut *(start as *mut [u8; REQUEST_LEN]) };
    let offered = u32::from_be_bytes([
        f[frame::YIADDR],
        f[frame::YIADDR + 1],
        f[frame::YIADDR + 2],
        f[frame::YIADDR + 3],
    ]);
    // Ethernet: back to where the OFFER came from. (Byte by byte: `slice::swap` brings in
    // bounds-check panics the verifier would have to see through.)
    #[allow(clippy::manual_swap)]
    for i in 0..6 {
        let t = f[i];
        f[i] = f[6 + i];
        f[6 + i] = t;
    }
    // IPv4 and UDP: relay → server, port 67 → 67, no UDP checksum (optional in IPv4).
    let ip = frame::IP;
    let tot = ((REQUEST_LEN - frame::IP) as u16).to_be_bytes();
    let header = [0x45, 0, tot[0], tot[1], 0, 0, 0x40, 0, 64, 17, 0, 0];
    f[ip..ip + 12].copy_from_slice(&header);
    f[ip + 12..ip + 16].copy_from_slice(&cfg.relay_ip.to_be_bytes());
    f[ip + 16..ip + 20].copy_from_slice(&cfg.server_ip.to_be_bytes());
    let mut sum = 0u32;
    for i in 0..10 {
        sum += u32::from(u16::from_be_bytes([f[ip + 2 * i], f[ip + 2 * i + 1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    f[ip + 10..ip + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp_len = ((REQUEST_LEN - frame::UDP) as u16).to_be_bytes();
    f[frame::UDP..frame::UDP + 8].copy_from_slice(&[0, 67, 0, 67, udp_len[0], udp_len[1], 0, 0]);
    // BOOTP: a relayed REQUEST in SELECTING state.
    let b = frame::BOOTP;
    f[b] = 1;
    f[b + 3] = 1;
    for i in 8..24 {
        f[b + i] = 0; // secs, flags, ciaddr, yiaddr, siaddr
    }
    f[b + 24..b + 28].copy_from_slice(&cfg.relay_ip.to_be_bytes());
    for i in 44..236 {
        f[b + i] = 0; // sname, file
    }
    let o = frame::OPTIONS;
    f[o..o + 5].copy_from_slice(&[53, 1, 3, 50, 4]);
    f[o + 5..o + 9].copy_from_slice(&offered.to_be_bytes());
    f[o + 9..o + 11].copy_from_slice(&[54, 4]);
    f[o + 11..o + 15].copy_from_slice(&cfg.server_ip.to_be_bytes());
    f[o + 15] = 255;
    bump(count::REQUEST_SENT);
    XDP_TX
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Host builds exist only so that workspace-wide `cargo check`/`clippy` cover this crate.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
