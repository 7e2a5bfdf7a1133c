//! Maps shared with the daemon (names and layouts in dhcp-common) and per-CPU scratch space.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use dhcp_common::{
    Counter, FastPathConfig, IfaceEntry, LeaseEntry, LinkKey, OptionSet, SubnetEntry, maps as m,
};

#[map(name = "LEASES")]
pub static LEASES: HashMap<u32, LeaseEntry> = HashMap::with_max_entries(m::DEFAULT_MAX_LEASES, 0);

#[map(name = "SUBNETS")]
pub static SUBNETS: Array<SubnetEntry> = Array::with_max_entries(m::MAX_SUBNETS, 0);

#[map(name = "OPTION_SETS")]
pub static OPTION_SETS: Array<OptionSet> = Array::with_max_entries(m::MAX_OPTION_SETS, 0);

#[map(name = "IFACES")]
pub static IFACES: HashMap<u32, IfaceEntry> = HashMap::with_max_entries(m::MAX_IFACES, 0);

#[map(name = "LINKS")]
pub static LINKS: HashMap<LinkKey, u32> = HashMap::with_max_entries(m::MAX_LINKS, 0);

/// giaddr in network byte order (LPM tries match from the most significant byte).
#[map(name = "RELAY_LINKS")]
pub static RELAY_LINKS: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(m::MAX_RELAY_PREFIXES, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<FastPathConfig> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map(name = "RENEWALS")]
pub static RENEWALS: RingBuf = RingBuf::with_byte_size(m::RENEWALS_RING_BYTES, 0);

/// Size of the copy of the request's cookie and options (a power of two: indices are masked).
pub const OPTS_BUF: usize = 2048;
pub const OPTS_MASK: usize = OPTS_BUF - 1;
/// Size of the reply under construction (see `ack::layout`).
pub const REPLY_BUF: usize = 2048;

/// Offsets in `Scratch::reply`. The UDP pseudo header sits right before the UDP header so one
/// checksum pass covers both; only `UDP..` is written to the wire.
pub mod layout {
    use dhcp_common::wire::OPTIONS_OFFSET;

    /// Room for the longest Ethernet (22) and the IPv4 (20) header in front of UDP.
    pub const UDP: usize = 44;
    pub const PSEUDO_LEN: usize = 12;
    pub const PSEUDO: usize = UDP - PSEUDO_LEN;
    pub const BOOTP: usize = UDP + 8;
    pub const OPTIONS: usize = BOOTP + OPTIONS_OFFSET;
}

/// Per-CPU working memory: too large for the 512-byte BPF stack.
#[repr(C)]
pub struct Scratch {
    /// Headers, BOOTP message and options of the reply (see `layout`).
    pub reply: [u8; REPLY_BUF],
    /// The request's magic cookie followed by its options.
    pub opts: [u8; OPTS_BUF],
    /// Option walk results, one slot per option of interest: count << 32 | offset.
    /// In map memory rather than on the stack so the verifier does not track the values
    /// (which would multiply the states it explores after the walk).
    pub found: [u64; 8],
    /// See `launder`.
    pub laundry: u64,
    /// See `launder_request`.
    pub request: core::mem::MaybeUninit<crate::options::Request>,
}

/// `launder` for a whole parsed request: which options were present would otherwise split the
/// verification of everything after parsing into one copy per combination.
#[inline(always)]
pub fn launder_request(s: &mut Scratch, req: crate::options::Request) -> crate::options::Request {
    unsafe {
        core::ptr::write_volatile(s.request.as_mut_ptr(), req);
        core::ptr::read_volatile(s.request.as_ptr())
    }
}

/// Returns `value` after a round trip through map memory. The verifier does not track map
/// contents, so the result is a fresh unknown it has no reason to keep precise; the branches
/// that produced `value` then stop splitting the verification of everything downstream.
#[inline(always)]
pub fn launder(s: &mut Scratch, value: u64) -> u64 {
    unsafe {
        core::ptr::write_volatile(&mut s.laundry, value);
        core::ptr::read_volatile(&s.laundry)
    }
}

#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
