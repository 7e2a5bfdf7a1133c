//! Ethernet (0–2 VLAN tags), IPv4 and UDP headers, read with direct packet access.
//!
//! Only what is needed to tell "UDP to port 67" from everything else, and to address the reply.

use aya_ebpf::programs::XdpContext;
use dhcp_common::{Counter, wire::SERVER_PORT};

pub const ETH_ALEN: usize = 6;
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const MAX_VLAN_TAGS: usize = 2;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPPROTO_UDP: u8 = 17;
pub const UDP_HLEN: usize = 8;
pub const BROADCAST_IP: u32 = 0xffff_ffff;
const IP_FRAGMENT_MASK: u16 = 0x3fff; // MF flag and fragment offset
const VLAN_ID_MASK: u16 = 0x0fff;

/// What the reply needs to know about the frame a request came in.
#[derive(Clone, Copy)]
pub struct Frame {
    pub src_mac: [u8; ETH_ALEN],
    pub dst_is_broadcast: bool,
    /// TPID and TCI of each VLAN tag, outermost first.
    pub tags: [(u16, u16); MAX_VLAN_TAGS],
    pub tag_count: usize,
    /// Offset of the IPv4 header (14, 18 or 22).
    pub ip_off: usize,
    /// IPv4 header length including options.
    pub ip_hlen: usize,
    pub ip_src: u32,
    pub ip_dst: u32,
    /// Offset and length of the UDP payload (the BOOTP message).
    pub bootp_off: usize,
    pub bootp_len: usize,
}

impl Frame {
    /// Sent to everyone on the link (L2 or limited IP broadcast).
    pub fn is_broadcast(&self) -> bool {
        self.dst_is_broadcast || self.ip_dst == BROADCAST_IP
    }

    pub fn vlan_id(&self, tag: usize) -> u16 {
        if tag < self.tag_count {
            self.tags[tag].1 & VLAN_ID_MASK
        } else {
            0
        }
    }
}

/// Bounds-checked pointer into the packet.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn be16(bytes: &[u8; 2]) -> u16 {
    u16::from_be_bytes(*bytes)
}

#[inline(always)]
fn be32(bytes: &[u8; 4]) -> u32 {
    u32::from_be_bytes(*bytes)
}

#[repr(C)]
struct EthHdr {
    dst: [u8; ETH_ALEN],
    src: [u8; ETH_ALEN],
    ethertype: [u8; 2],
}

#[repr(C)]
struct VlanTag {
    tci: [u8; 2],
    ethertype: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct UdpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

/// Parses down to the UDP payload. `Err` carries the counter that ends the frame's journey:
/// non-DHCP traffic is passed untouched, lengths that contradict the frame are dropped.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, Counter> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Counter::PassNotDhcp)?;
    let eth = unsafe { &*eth };
    let mut frame = Frame {
        src_mac: eth.src,
        dst_is_broadcast: eth.dst == [0xff; ETH_ALEN],
        tags: [(0, 0); MAX_VLAN_TAGS],
        tag_count: 0,
        ip_off: ETH_HLEN,
        ip_hlen: 0,
        ip_src: 0,
        ip_dst: 0,
        bootp_off: 0,
        bootp_len: 0,
    };

    let mut ethertype = be16(&eth.ethertype);
    // Unrolled: at most two tags (802.1ad outer + 802.1Q inner, or 802.1Q twice).
    for tag in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let vlan =
            ptr_at::<VlanTag>(ctx, ETH_HLEN + tag * VLAN_HLEN).ok_or(Counter::PassNotDhcp)?;
        let vlan = unsafe { &*vlan };
        frame.tags[tag] = (ethertype, be16(&vlan.tci));
        frame.tag_count = tag + 1;
        frame.ip_off = ETH_HLEN + (tag + 1) * VLAN_HLEN;
        ethertype = be16(&vlan.ethertype);
    }
    if ethertype != ETH_P_IP {
        return Err(Counter::PassNotDhcp);
    }

    let ip = ptr_at::<Ipv4Hdr>(ctx, frame.ip_off).ok_or(Counter::PassNotDhcp)?;
    let ip = unsafe { &*ip };
    let ihl = (ip.version_ihl & 0x0f) as usize * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || ip.proto != IPPROTO_UDP {
        return Err(Counter::PassNotDhcp);
    }
    if be16(&ip.frag) & IP_FRAGMENT_MASK != 0 {
        return Err(Counter::PassIpFragment);
    }
    frame.ip_hlen = ihl;
    frame.ip_src = be32(&ip.src);
    frame.ip_dst = be32(&ip.dst);
    let ip_tot_len = be16(&ip.tot_len) as usize;

    let udp_off = frame.ip_off + ihl;
    let udp = ptr_at::<UdpHdr>(ctx, udp_off).ok_or(Counter::PassNotDhcp)?;
    let udp = unsafe { &*udp };
    if be16(&udp.dst_port) != SERVER_PORT {
        return Err(Counter::PassNotDhcp);
    }

    // From here on the frame is addressed to a DHCP server: lengths that contradict the frame
    // are garbage (the kernel would drop them too).
    let frame_len = ctx.data_end() - ctx.data();
    let udp_len = be16(&udp.len) as usize;
    if ip_tot_len < ihl + UDP_HLEN
        || frame.ip_off + ip_tot_len > frame_len
        || udp_len < UDP_HLEN
        || udp_len > ip_tot_len - ihl
    {
        return Err(Counter::DropTruncated);
    }
    frame.bootp_off = udp_off + UDP_HLEN;
    frame.bootp_len = udp_len - UDP_HLEN;
    Ok(frame)
}
