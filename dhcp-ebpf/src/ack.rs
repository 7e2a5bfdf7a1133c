//! Builds the DHCPACK in per-CPU scratch and turns the request frame into it.
//!
//! Addressing follows RFC 2131 §4.1: giaddr → the relay on port 67; else ciaddr → unicast;
//! else broadcast bit → 255.255.255.255; else unicast to yiaddr at chaddr. Options: 53, 54, 51,
//! 58, 59, the lease's pre-encoded option set, 61 echoed (RFC 6842), 82 echoed verbatim and
//! last (RFC 3046), END, padding to 300 bytes and a multiple of 4.
//!
//! Verifier note: every size and position below is derived from values `launder`ed through map
//! memory. Otherwise each combination of "option 61 present?", "82 present?", "padding
//! needed?" … would be a separately verified copy of this whole function.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use dhcp_common::{
    Counter, IfaceEntry, LeaseEntry, OPTION_SET_CAPACITY, OptionSet, RenewalEvent, SubnetEntry,
    renewal_kind,
    wire::{
        BOOTP_MIN_LEN, BOOTREPLY, CLIENT_PORT, DEFAULT_MAX_DATAGRAM, FLAG_BROADCAST, MAGIC_COOKIE,
        OPTIONS_OFFSET, SERVER_PORT, field, msg, opt,
    },
};

use crate::{
    checksum,
    frame::{
        BROADCAST_IP, ETH_ALEN, ETH_HLEN, ETH_P_IP, Frame, IPPROTO_UDP, IPV4_MIN_HLEN, UDP_HLEN,
        VLAN_HLEN,
    },
    maps::{RENEWALS, REPLY_BUF, Scratch, launder, layout},
    options::{OptionRef, Request},
};

/// The fast path never sends an IP datagram above a standard Ethernet MTU.
const MAX_IP_LEN: usize = 1500;
const _: () = assert!(MAX_IP_LEN - IPV4_MIN_HLEN + layout::PSEUDO_LEN <= checksum::MAX_LEN);
/// 53, 54, 51, 58 and 59 as written by `write_fixed_options`.
const FIXED_OPTIONS_LEN: usize = 3 + 4 * 6;
const REPLY_MASK: usize = REPLY_BUF - 1;
/// Longest Ethernet header we rebuild (two VLAN tags).
const MAX_L2_LEN: usize = ETH_HLEN + 2 * VLAN_HLEN;
const _: () = assert!(layout::UDP >= MAX_L2_LEN + IPV4_MIN_HLEN);
const IP_TTL: u8 = 64;
const IP_DONT_FRAGMENT: u16 = 0x4000;
const NS_PER_SEC: u64 = 1_000_000_000;
/// Wake the daemon's ring-buffer reader only once this much is pending. A wakeup is an IPI
/// (microseconds in a VM); the daemon also polls, so stragglers wait at most its poll period.
const RING_WAKEUP_BYTES: u64 = 64 * 1024;
/// Words of zero padding after END: the minimum BOOTP size needs at most 300 - 268 bytes
/// after the smallest possible options, plus 3 to reach a multiple of 4.
const PAD_WORDS: usize = 5;
const _: () =
    assert!(PAD_WORDS * 8 >= BOOTP_MIN_LEN - (OPTIONS_OFFSET + FIXED_OPTIONS_LEN + 1) + 3);

/// What the fast path grants: the lease end and the times written into options 51, 58, 59.
pub struct Grant {
    pub until_ns: u64,
    pub lease_s: u32,
    pub renew_s: u32,
    pub rebind_s: u32,
}

/// Everything the ACK is built from.
pub struct Ack<'a> {
    pub frame: &'a Frame,
    pub req: &'a Request,
    pub address: u32,
    pub lease: *mut LeaseEntry,
    pub subnet: &'a SubnetEntry,
    pub iface: &'a IfaceEntry,
    pub options: &'a OptionSet,
    pub grant: Grant,
    pub kind: u8,
}

/// L3/L4 addressing of the reply.
struct Route {
    dst_mac: [u8; ETH_ALEN],
    src_ip: u32,
    dst_ip: u32,
    dst_port: u16,
}

#[inline(always)]
fn route(a: &Ack) -> Route {
    let (frame, req) = (a.frame, a.req);
    let (dst_ip, dst_mac, dst_port) = if req.giaddr != 0 {
        (req.giaddr, frame.src_mac, SERVER_PORT)
    } else if req.ciaddr != 0 {
        (req.ciaddr, frame.src_mac, CLIENT_PORT)
    } else if req.flags & FLAG_BROADCAST != 0 {
        (BROADCAST_IP, [0xff; ETH_ALEN], CLIENT_PORT)
    } else {
        (a.address, req.chaddr, CLIENT_PORT)
    };
    // Answer from the address the request was sent to; a broadcast came to the server id.
    let src_ip = if frame.ip_dst == BROADCAST_IP {
        a.subnet.server_id
    } else {
        frame.ip_dst
    };
    Route {
        dst_mac,
        src_ip,
        dst_ip,
        dst_port,
    }
}

/// Big-endian stores at constant offsets (one instruction each: unaligned access is enabled).
#[inline(always)]
fn put_u16(buf: &mut [u8; REPLY_BUF], at: usize, v: u16) {
    unsafe { (buf.as_mut_ptr().add(at) as *mut u16).write_unaligned(v.to_be()) };
}

#[inline(always)]
fn put_u32(buf: &mut [u8; REPLY_BUF], at: usize, v: u32) {
    unsafe { (buf.as_mut_ptr().add(at) as *mut u32).write_unaligned(v.to_be()) };
}

/// A MAC address at a variable offset, as a 4- and a 2-byte store (a 6-byte array copy at a
/// variable address would become a call to a byte-copy subprogram).
#[inline(always)]
fn put_mac(buf: &mut [u8; REPLY_BUF], at: usize, mac: &[u8; ETH_ALEN]) {
    let [a, b, c, d, e, f] = *mac;
    unsafe {
        (buf.as_mut_ptr().add(at) as *mut u32).write_unaligned(u32::from_ne_bytes([a, b, c, d]));
        (buf.as_mut_ptr().add(at + 4) as *mut u16).write_unaligned(u16::from_ne_bytes([e, f]));
    }
}

#[inline(always)]
fn put_option_u32(buf: &mut [u8; REPLY_BUF], at: usize, code: u8, v: u32) {
    put_u16(buf, at, u16::from_be_bytes([code, 4]));
    put_u32(buf, at + 2, v);
}

/// Length of the UDP datagram carrying the ACK, or `None` if it exceeds what the client
/// accepts (option 57, at least 576) or one Ethernet frame.
#[inline(always)]
fn reply_udp_len(set_len: usize, req: &Request) -> Option<usize> {
    let options_len =
        FIXED_OPTIONS_LEN + set_len + req.client_id.wire_len() + req.relay_info.wire_len() + 1;
    let mut bootp_len = OPTIONS_OFFSET + options_len;
    if bootp_len < BOOTP_MIN_LEN {
        bootp_len = BOOTP_MIN_LEN;
    }
    let udp_len = UDP_HLEN + ((bootp_len + 3) & !3);
    let ip_len = IPV4_MIN_HLEN + udp_len;
    let client_max = if req.max_message_size > DEFAULT_MAX_DATAGRAM {
        req.max_message_size
    } else {
        DEFAULT_MAX_DATAGRAM
    } as usize;
    if ip_len > client_max || ip_len > MAX_IP_LEN {
        None
    } else {
        Some(udp_len)
    }
}

/// Copies an option of the request (code, length, value) from the frame into the reply at
/// `at`; returns the position after it.
#[inline(always)]
fn echo_option(
    ctx: &XdpContext,
    frame: &Frame,
    s: &mut Scratch,
    at: usize,
    option: &OptionRef,
) -> usize {
    if !option.present() {
        return at;
    }
    let n = (option.len & 0xff) + 2;
    let from = frame.bootp_off + dhcp_common::wire::BOOTP_FIXED_LEN + option.at;
    let dst = unsafe { s.reply.as_mut_ptr().add(at & REPLY_MASK) };
    unsafe { bpf_xdp_load_bytes(ctx.ctx, from as u32, dst.cast(), n as u32) };
    at + n
}

/// Builds the ACK and sends it back out of the interface it came in on.
#[inline(always)]
pub fn send(ctx: &XdpContext, s: &mut Scratch, a: Ack) -> Counter {
    let set_len = a.options.len as usize;
    if set_len > OPTION_SET_CAPACITY {
        return Counter::PuntNoOptionSet;
    }
    let Some(udp_len) = reply_udp_len(set_len, a.req) else {
        return Counter::PuntTooBig;
    };
    let route = route(&a);
    let udp_len = launder(s, udp_len as u64) as usize & 0x7ff;
    let kind = launder(s, a.kind as u64) as u8;

    // BOOTP header: the request's, turned into a reply (RFC 2131 table 3).
    let r = &mut s.reply;
    let b = layout::BOOTP;
    r[b + field::OP] = BOOTREPLY;
    r[b + field::HOPS] = 0;
    put_u16(r, b + field::SECS, 0);
    put_u32(r, b + field::YIADDR, a.address);
    put_u32(r, b + field::SIADDR, 0);
    zero_sname_and_file(r);
    put_u32(
        r,
        b + OPTIONS_OFFSET - MAGIC_COOKIE.len(),
        u32::from_be_bytes(MAGIC_COOKIE),
    );

    // Options: the fixed five, the option set, the echoes, END, zero padding.
    let o = layout::OPTIONS;
    r[o] = opt::MESSAGE_TYPE;
    r[o + 1] = 1;
    r[o + 2] = msg::ACK;
    put_option_u32(r, o + 3, opt::SERVER_ID, a.subnet.server_id);
    put_option_u32(r, o + 9, opt::LEASE_TIME, a.grant.lease_s);
    put_option_u32(r, o + 15, opt::RENEWAL_TIME, a.grant.renew_s);
    put_option_u32(r, o + 21, opt::REBINDING_TIME, a.grant.rebind_s);
    let at = o + FIXED_OPTIONS_LEN;
    let copy_len = launder(s, set_len as u64) as usize;
    copy_option_set(&mut s.reply, at, a.options, copy_len);
    let at = launder(s, (at + set_len) as u64) as usize;
    let after = echo_option(ctx, a.frame, s, at, &a.req.client_id);
    let at = launder(s, after as u64) as usize;
    let after = echo_option(ctx, a.frame, s, at, &a.req.relay_info);
    let at = launder(s, after as u64) as usize;
    let r = &mut s.reply;
    r[at & REPLY_MASK] = opt::END;
    // Zero padding: whatever lies past the datagram's end is neither sent nor summed, so
    // writing a fixed run of zeros is cheaper than computing the exact amount.
    for i in 0..PAD_WORDS {
        let word = unsafe { r.as_mut_ptr().add((at + 1 + 8 * i) & REPLY_MASK) } as *mut u64;
        unsafe { word.write_unaligned(0) };
    }

    // UDP header, with the pseudo header in front of it for the checksum.
    let u = layout::UDP;
    put_u16(r, u, SERVER_PORT);
    put_u16(r, u + 2, route.dst_port);
    put_u16(r, u + 4, udp_len as u16);
    put_u16(r, u + 6, 0);
    let p = layout::PSEUDO;
    put_u32(r, p, route.src_ip);
    put_u32(r, p + 4, route.dst_ip);
    put_u16(r, p + 8, IPPROTO_UDP as u16);
    put_u16(r, p + 10, udp_len as u16);
    let Some(udp_sum) = checksum::udp(r[p..].as_ptr(), layout::PSEUDO_LEN + udp_len) else {
        return Counter::PuntNoRoom;
    };
    unsafe { (r.as_mut_ptr().add(u + 6) as *mut [u8; 2]).write_unaligned(udp_sum) };

    // IPv4 and Ethernet headers go right before the UDP header (over the pseudo header), so
    // the whole reply leaves scratch in one copy.
    let ip_at = u - IPV4_MIN_HLEN;
    write_ipv4_header(r, ip_at, &route, IPV4_MIN_HLEN + udp_len);
    let l2_at = write_l2_header(r, ip_at, a.frame, &route, &a.iface.mac);
    let out_len = ip_at - l2_at + IPV4_MIN_HLEN + udp_len;

    // Report the renewal before touching the frame: if the ring is full, the daemon answers.
    let Some(mut event) = RENEWALS.reserve::<RenewalEvent>(0) else {
        return Counter::PuntRingFull;
    };

    // Resize the frame: drop request IP options at the front, fit the tail to the reply.
    // (The verifier forbids arithmetic on data_end, so ask the kernel for the length.)
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i64;
    let ip_options = (a.frame.ip_hlen - IPV4_MIN_HLEN) as i64;
    let tail_delta = out_len as i64 - (frame_len - ip_options);
    if tail_delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, tail_delta as i32) } != 0 {
        event.discard(0);
        return Counter::PuntNoRoom;
    }
    if ip_options != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, ip_options as i32) } != 0 {
        event.discard(0);
        return Counter::DropInternal;
    }
    // Laundered so that the zero check below is on the very register passed to the helper.
    let out_len = launder(s, out_len as u64) as usize & 0x7ff;
    if out_len == 0 {
        event.discard(0);
        return Counter::DropInternal;
    }
    let r = &mut s.reply;
    let src = unsafe { r.as_mut_ptr().add(l2_at & 0x3f) };
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, src.cast(), out_len as u32) } != 0 {
        event.discard(0);
        return Counter::DropInternal;
    }

    // The client now holds the lease until `until_ns`; expiry scans must see that.
    unsafe { (*a.lease).expires_ns = a.grant.until_ns };
    event.write(RenewalEvent {
        granted_until_ns: a.grant.until_ns,
        address: a.address,
        xid: a.req.xid,
        granted_s: a.grant.lease_s,
        chaddr: a.req.chaddr,
        kind,
        _reserved: 0,
        subnet_id: unsafe { (*a.lease).subnet_id },
        _reserved2: 0,
    });
    let pending = RENEWALS.query(BPF_RB_AVAIL_DATA as u64);
    event.submit(if pending >= RING_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    } as u64);
    match kind {
        renewal_kind::RENEWING => Counter::AckRenewing,
        renewal_kind::REBINDING => Counter::AckRebinding,
        _ => Counter::AckInitReboot,
    }
}

/// Copies the option set in 8-byte words (the bytes past its end are overwritten later or lie
/// past the datagram). A loop bounded by the set's size: typically a handful of iterations.
#[inline(always)]
fn copy_option_set(r: &mut [u8; REPLY_BUF], at: usize, set: &OptionSet, len: usize) {
    const WORDS: usize = OPTION_SET_CAPACITY / 8;
    let words = len.div_ceil(8);
    let src = set.bytes.as_ptr() as *const u64;
    for i in 0..WORDS {
        if i >= words {
            break;
        }
        let dst = unsafe { r.as_mut_ptr().add(at + 8 * i) } as *mut u64;
        unsafe { dst.write_unaligned(src.add(i).read_unaligned()) };
    }
}

/// sname and file are 192 bytes at an 8-aligned offset: 24 word stores. Volatile, because LLVM
/// would otherwise turn the loop into a `memset` call, a byte loop the verifier walks per path.
#[inline(always)]
fn zero_sname_and_file(r: &mut [u8; REPLY_BUF]) {
    const START: usize = layout::BOOTP + field::SNAME;
    const WORDS: usize = (OPTIONS_OFFSET - MAGIC_COOKIE.len() - field::SNAME) / 8;
    const _: () = assert!(START.is_multiple_of(8));
    let words = unsafe { r.as_mut_ptr().add(START) } as *mut u64;
    for i in 0..WORDS {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

#[inline(always)]
fn write_ipv4_header(r: &mut [u8; REPLY_BUF], at: usize, route: &Route, ip_len: usize) {
    let len = (ip_len as u16).to_be_bytes();
    let frag = IP_DONT_FRAGMENT.to_be_bytes();
    let src = route.src_ip.to_be_bytes();
    let dst = route.dst_ip.to_be_bytes();
    let mut h = [
        0x45,
        0,
        len[0],
        len[1],
        0,
        0,
        frag[0],
        frag[1],
        IP_TTL,
        IPPROTO_UDP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let sum = checksum::ipv4_header(&h);
    h[10] = sum[0];
    h[11] = sum[1];
    unsafe { (r.as_mut_ptr().add(at) as *mut [u8; 20]).write_unaligned(h) };
}

/// Ethernet header of the reply, ending at `end`: our MAC as source, the request's VLAN tags
/// kept. Returns where it starts.
#[inline(always)]
fn write_l2_header(
    r: &mut [u8; REPLY_BUF],
    end: usize,
    frame: &Frame,
    route: &Route,
    our_mac: &[u8; ETH_ALEN],
) -> usize {
    put_u16(r, end - 2, ETH_P_IP);
    let mut tags_at = end - 2;
    // Innermost tag last; constant offsets per tag count.
    if frame.tag_count == 2 {
        put_u16(r, end - 6, frame.tags[1].0);
        put_u16(r, end - 4, frame.tags[1].1);
        put_u16(r, end - 10, frame.tags[0].0);
        put_u16(r, end - 8, frame.tags[0].1);
        tags_at = end - 10;
    } else if frame.tag_count == 1 {
        put_u16(r, end - 6, frame.tags[0].0);
        put_u16(r, end - 4, frame.tags[0].1);
        tags_at = end - 6;
    }
    let start = tags_at - 2 * ETH_ALEN;
    put_mac(r, start & 0x3f, &route.dst_mac);
    put_mac(r, (start + ETH_ALEN) & 0x3f, our_mac);
    start
}

/// Lease time, T1 and T2 for a grant that ends at `until_ns` (maybe cut short by the horizon).
#[inline(always)]
pub fn grant(lease: &LeaseEntry, now_ns: u64, until_ns: u64) -> Grant {
    let granted_s = ((until_ns - now_ns) / NS_PER_SEC) as u32;
    if granted_s >= lease.lease_time_s {
        Grant {
            until_ns,
            lease_s: lease.lease_time_s,
            renew_s: lease.renew_s,
            rebind_s: lease.rebind_s,
        }
    } else {
        // Shortened grant: RFC 2131 §4.4.5 defaults (0.5 and 0.875 of the lease).
        Grant {
            until_ns: now_ns + granted_s as u64 * NS_PER_SEC,
            lease_s: granted_s,
            renew_s: granted_s / 2,
            rebind_s: granted_s - granted_s / 8,
        }
    }
}
