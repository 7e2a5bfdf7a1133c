//! Leases as the daemon keeps them in memory and in the store.

use std::{fmt, net::Ipv4Addr};

/// How a client is identified (RFC 2131 §4.2): its client identifier (option 61) if it sends
/// one, else its hardware type and address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientKey {
    Id(Box<[u8]>),
    Hw { htype: u8, addr: Box<[u8]> },
}

impl ClientKey {
    pub fn client_id(&self) -> Option<&[u8]> {
        match self {
            ClientKey::Id(id) => Some(id),
            ClientKey::Hw { .. } => None,
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Id(id) => write!(f, "id {}", hex(id)),
            ClientKey::Hw { addr, .. } => write!(f, "hw {}", hex(addr)),
        }
    }
}

/// A hardware address: type and up to 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HwAddr {
    pub htype: u8,
    pub len: u8,
    pub bytes: [u8; 16],
}

impl HwAddr {
    pub fn new(htype: u8, addr: &[u8]) -> Self {
        let len = addr.len().min(16);
        let mut bytes = [0; 16];
        bytes[..len].copy_from_slice(&addr[..len]);
        HwAddr {
            htype,
            len: len as u8,
            bytes,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The 6-byte Ethernet address, if this is one (the fast path handles only those).
    pub fn ethernet(&self) -> Option<[u8; 6]> {
        (self.htype == 1 && self.len == 6).then(|| self.bytes[..6].try_into().expect("6 bytes"))
    }
}

impl fmt::Display for HwAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(self.as_slice()))
    }
}

/// Colon-separated lowercase hex, the way operators write MAC addresses.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Bound to a client until `ends`.
    Active,
    /// Given back by the client (DHCPRELEASE).
    Released,
    /// Ran out without renewal.
    Expired,
    /// Reported in use by someone else (DHCPDECLINE); quarantined until `held_until`.
    Declined,
    /// Failover: free, allocatable by the primary.
    Free,
    /// Failover: free, reserved for the secondary (RFC draft "backup").
    Backup,
    /// Failover: reset by an operator on the partner; behaves like released.
    Reset,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
            LeaseState::Declined => "declined",
            LeaseState::Free => "free",
            LeaseState::Backup => "backup",
            LeaseState::Reset => "reset",
        }
    }

    /// The binding status on the failover wire (a declined address is "abandoned").
    pub fn to_wire(self) -> u8 {
        use crate::failover::wire::binding;
        match self {
            LeaseState::Active => binding::ACTIVE,
            LeaseState::Released => binding::RELEASED,
            LeaseState::Expired => binding::EXPIRED,
            LeaseState::Declined => binding::ABANDONED,
            LeaseState::Free => binding::FREE,
            LeaseState::Backup => binding::BACKUP,
            LeaseState::Reset => binding::RESET,
        }
    }

    pub fn from_wire(status: u8) -> Option<Self> {
        use crate::failover::wire::binding;
        Some(match status {
            binding::ACTIVE => LeaseState::Active,
            binding::RELEASED => LeaseState::Released,
            binding::EXPIRED => LeaseState::Expired,
            binding::ABANDONED => LeaseState::Declined,
            binding::FREE => LeaseState::Free,
            binding::BACKUP => LeaseState::Backup,
            binding::RESET => LeaseState::Reset,
            _ => return None,
        })
    }

    /// Ended but not yet free again (the partner must acknowledge first).
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            LeaseState::Expired | LeaseState::Released | LeaseState::Reset
        )
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => LeaseState::Active,
            "released" => LeaseState::Released,
            "expired" => LeaseState::Expired,
            "declined" => LeaseState::Declined,
            "free" => LeaseState::Free,
            "backup" => LeaseState::Backup,
            "reset" => LeaseState::Reset,
            _ => return None,
        })
    }
}

/// Failover bookkeeping of one lease (draft-ietf-dhc-failover-12 §5.3), all unix seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailoverTimes {
    /// Potential expiration time: what the partner has been told the lease may last.
    pub tstp: u64,
    /// Expiration time the partner has acknowledged.
    pub tsfp: u64,
    /// Client last transaction time.
    pub cltt: u64,
    /// Not yet acknowledged by the partner.
    pub pending: bool,
}

/// One address's binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub subnet: u16,
    pub state: LeaseState,
    pub client: Option<ClientKey>,
    pub hw: Option<HwAddr>,
    pub hostname: Option<String>,
    /// Unix seconds: when the binding started.
    pub starts: u64,
    /// Unix seconds: end of the lease the client holds (the latest any ACK granted).
    pub ends: u64,
    /// Unix seconds: the address is not given to anyone else before this. Always at least
    /// `ends`; in the store it is the durable promise the fast path's horizon derives from.
    pub held_until: u64,
    /// Lease time (seconds) the fast path grants on renewal.
    pub lease_time: u32,
    pub failover: FailoverTimes,
}

impl Lease {
    pub fn is_active(&self, now: u64) -> bool {
        self.state == LeaseState::Active && self.ends > now
    }

    pub fn belongs_to(&self, client: &ClientKey) -> bool {
        self.client.as_ref() == Some(client)
    }
}
