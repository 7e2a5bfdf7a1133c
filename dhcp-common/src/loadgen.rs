//! Layouts shared by the benchmark load generator (`bench-ebpf`) and its driver
//! (`tests/src/bin/bench.rs`). Not used by the server.
//!
//! The generator sends frames built from a template whose layout is fixed: Ethernet, a
//! 20-byte IPv4 header, UDP, a 300-byte BOOTP message. Client `i` has hardware address
//! `02:bb:i₃:i₂:i₁:i₀` and, where it has one, the address `base_ip + i`.

pub const GEN_CONFIG: &str = "GEN_CONFIG";
pub const GEN_TEMPLATE: &str = "GEN_TEMPLATE";
pub const GEN_TODO: &str = "GEN_TODO";
pub const GEN_SEQ: &str = "GEN_SEQ";
pub const GEN_ACKED: &str = "GEN_ACKED";
pub const GEN_COUNTS: &str = "GEN_COUNTS";

/// Largest client index the generator tracks.
pub const GEN_MAX_CLIENTS: u32 = 1 << 21;

/// Relayed REQUEST with ciaddr (what perfdhcp sends to renew).
pub const MODE_RENEW: u32 = 1;
/// Broadcast REQUEST with option 50 and no ciaddr (INIT-REBOOT), from the client's own MAC.
pub const MODE_REBOOT: u32 = 2;
/// Relayed DISCOVER; the receiver turns each OFFER into a REQUEST (in-kernel DORA).
pub const MODE_DISCOVER: u32 = 3;

/// Offsets in generated frames.
pub mod frame {
    pub const ETH_SRC: usize = 6;
    pub const IP: usize = 14;
    pub const UDP: usize = 34;
    pub const BOOTP: usize = 42;
    pub const BOOTP_LEN: usize = 300;
    pub const LEN: usize = BOOTP + BOOTP_LEN;
    pub const XID: usize = BOOTP + 4;
    pub const CIADDR: usize = BOOTP + 12;
    pub const YIADDR: usize = BOOTP + 16;
    pub const CHADDR: usize = BOOTP + 28;
    pub const OPTIONS: usize = BOOTP + 240;
    /// Value of option 50 in INIT-REBOOT frames ([53,1,3][50,4,…]).
    pub const REQUESTED: usize = OPTIONS + 5;
}

/// The frame the transmitter starts from (one entry in GEN_TEMPLATE). Live-frames mode
/// recycles pages, and a server answering in XDP turns the very page into its reply, so every
/// transmission rewrites the whole frame from here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenTemplate {
    pub bytes: [u8; frame::LEN],
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for GenTemplate {}

/// Generator settings (one entry in GEN_CONFIG).
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    pub mode: u32,
    /// Clients `first .. first + clients` are used round robin (when `todo_len` is 0).
    pub first: u32,
    pub clients: u32,
    /// If non-zero, send to the clients listed in GEN_TODO[0..todo_len] instead.
    pub todo_len: u32,
    /// Client `i`'s address is `base_ip + i` (host order).
    pub base_ip: u32,
    /// giaddr and source of relayed frames.
    pub relay_ip: u32,
    /// Server identifier put in REQUESTs built from OFFERs.
    pub server_ip: u32,
    /// Replies to requests with a smaller xid (an earlier step's backlog) count as stale.
    pub min_xid: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for GenConfig {}

/// Indices into GEN_COUNTS (per CPU).
pub mod count {
    pub const SENT: u32 = 0;
    pub const ACK: u32 = 1;
    pub const NAK: u32 = 2;
    pub const OFFER: u32 = 3;
    pub const REQUEST_SENT: u32 = 4;
    pub const OTHER_REPLY: u32 = 5;
    /// Replies to requests of an earlier step (`min_xid`).
    pub const STALE: u32 = 6;
    /// CLOCK_MONOTONIC nanoseconds of the latest ACK (per CPU: take the maximum).
    pub const LAST_ACK_NS: u32 = 7;
    pub const SLOTS: u32 = 8;
}

/// Hardware address of client `i`.
pub const fn client_mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0xbb, b[0], b[1], b[2], b[3]]
}
