//! Map names, keys and values shared by the XDP program and the daemon.
//!
//! Addresses are `u32` in host order (`u32::from(Ipv4Addr)`); the XDP program converts with
//! `u32::from_be_bytes`. Times are CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`).

/// Lease table, keyed by leased address (`u32`), value [`LeaseEntry`].
pub const LEASES: &str = "LEASES";
/// Subnets by index, value [`SubnetEntry`].
pub const SUBNETS: &str = "SUBNETS";
/// Pre-encoded reply options by index, value [`OptionSet`].
pub const OPTION_SETS: &str = "OPTION_SETS";
/// Interfaces the program is attached to: ifindex (`u32`) → [`IfaceEntry`].
pub const IFACES: &str = "IFACES";
/// Directly attached links: [`LinkKey`] → link id (`u32`).
pub const LINKS: &str = "LINKS";
/// Relay addresses: LPM trie over giaddr → link id (`u32`).
pub const RELAY_LINKS: &str = "RELAY_LINKS";
/// Global settings, one [`FastPathConfig`] at index 0.
pub const CONFIG: &str = "CONFIG";
/// Per-CPU counters indexed by [`crate::Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// Ring buffer of [`RenewalEvent`]s.
pub const RENEWALS: &str = "RENEWALS";

pub const MAX_SUBNETS: u32 = 4096;
pub const MAX_OPTION_SETS: u32 = 4096;
pub const MAX_IFACES: u32 = 256;
pub const MAX_LINKS: u32 = 4096;
pub const MAX_RELAY_PREFIXES: u32 = 16384;
/// Default LEASES capacity; the daemon sizes the map from its pools at load time.
pub const DEFAULT_MAX_LEASES: u32 = 65536;
pub const RENEWALS_RING_BYTES: u32 = 1 << 23;

/// Longest pre-encoded option set the fast path copies into a reply.
pub const OPTION_SET_CAPACITY: usize = 1024;

/// The lease is answered only by the daemon (e.g. failover conflict, pending change).
pub const LEASE_FLAG_SLOW_PATH_ONLY: u16 = 1 << 0;

/// One leased address, as the fast path needs it.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseEntry {
    /// Digest of option 61 (see [`crate::digest`]), or `NO_CLIENT_ID`.
    pub client_id_digest: u64,
    /// End of the lease the client holds now; the fast path moves it forward.
    pub expires_ns: u64,
    /// Latest end the fast path may grant (DESIGN.md, "the horizon").
    pub horizon_ns: u64,
    /// Lease time to grant (seconds) and its T1/T2 when granted in full.
    pub lease_time_s: u32,
    pub renew_s: u32,
    pub rebind_s: u32,
    pub chaddr: [u8; 6],
    /// Index into SUBNETS.
    pub subnet_id: u16,
    /// Index into OPTION_SETS: the options this client gets in an ACK.
    pub option_set: u16,
    pub flags: u16,
}

/// A subnet, as the fast path needs it.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubnetEntry {
    pub network: u32,
    pub mask: u32,
    /// Option 54 and source address of broadcast-triggered replies.
    pub server_id: u32,
    /// Link (shared network) this subnet lives on.
    pub link_id: u32,
    pub flags: u32,
    pub _reserved: u32,
}

/// The entry is in use (SUBNETS is an array, so unused slots read as zero).
pub const SUBNET_FLAG_VALID: u32 = 1 << 0;

/// Pre-encoded DHCP options (code, length, value …), no END, no PAD.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSet {
    pub len: u16,
    pub _reserved: [u8; 6],
    pub bytes: [u8; OPTION_SET_CAPACITY],
}

impl Default for OptionSet {
    fn default() -> Self {
        Self {
            len: 0,
            _reserved: [0; 6],
            bytes: [0; OPTION_SET_CAPACITY],
        }
    }
}

/// An interface the XDP program is attached to.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceEntry {
    pub mac: [u8; 6],
    pub _reserved: [u8; 2],
    /// Primary IPv4 address (host order), 0 if none.
    pub address: u32,
}

/// Where a non-relayed broadcast arrived: interface and VLAN tags (0 = untagged).
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub ifindex: u32,
    /// VLAN ids (low 12 bits of the TCI) of the outer and inner tag.
    pub outer_vlan: u16,
    pub inner_vlan: u16,
}

/// Global fast-path switches and failover load balancing.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathConfig {
    pub flags: u32,
    /// RFC 3074 `secs` threshold above which a client is served whatever its bucket.
    pub lb_max_secs: u16,
    pub _reserved: u16,
    /// Bit n set ⇒ hash bucket n (RFC 3074) is ours.
    pub lb_buckets: [u8; 32],
}

/// Answer renewals in XDP (off: punt everything, count the punts).
pub const CONFIG_FLAG_FAST_PATH: u32 = 1 << 0;
/// Drop broadcast DISCOVER/REQUEST of the partner's buckets (failover normal state).
pub const CONFIG_FLAG_LOAD_BALANCE: u32 = 1 << 1;

/// How a fast-path renewal was requested.
pub mod renewal_kind {
    pub const RENEWING: u8 = 1;
    pub const REBINDING: u8 = 2;
    pub const INIT_REBOOT: u8 = 3;
}

/// Pushed to RENEWALS for every fast-path ACK.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenewalEvent {
    /// End of the lease the client was just given.
    pub granted_until_ns: u64,
    pub address: u32,
    pub xid: u32,
    /// Lease time written in option 51.
    pub granted_s: u32,
    pub chaddr: [u8; 6],
    pub kind: u8,
    pub _reserved: u8,
    pub subnet_id: u16,
    pub _reserved2: u16,
}

/// aya reads and writes map values as raw bytes. Sound because the bytemuck derive above
/// rejects padding and every bit pattern is valid for these integer-and-array structs.
#[cfg(feature = "user")]
macro_rules! aya_pod {
    ($($t:ty),*) => { $(unsafe impl aya::Pod for $t {})* };
}
#[cfg(feature = "user")]
aya_pod!(
    LeaseEntry,
    SubnetEntry,
    OptionSet,
    IfaceEntry,
    LinkKey,
    FastPathConfig,
    RenewalEvent
);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        // Pod requires it, and the kernel copies these byte for byte.
        assert_eq!(size_of::<LeaseEntry>(), 48);
        assert_eq!(size_of::<SubnetEntry>(), 24);
        assert_eq!(size_of::<OptionSet>(), 8 + OPTION_SET_CAPACITY);
        assert_eq!(size_of::<IfaceEntry>(), 12);
        assert_eq!(size_of::<LinkKey>(), 8);
        assert_eq!(size_of::<FastPathConfig>(), 40);
        assert_eq!(size_of::<RenewalEvent>(), 32);
    }
}
