//! The `[failover]` section: one relationship covering every dynamic pool.
//!
//! The names follow ISC dhcpd's `failover peer` statement so that a dhcpd configuration
//! translates line by line (`split`/`hba`, `mclt`, `max-response-delay`,
//! `max-unacked-updates`, `load-balance-max-seconds`, `auto-partner-down`).

use std::{net::Ipv4Addr, time::Duration};

/// Which side of the relationship this server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

pub const DEFAULT_PORT: u16 = 647;
pub const DEFAULT_MCLT: u32 = 3600;
pub const DEFAULT_MAX_RESPONSE_DELAY: u32 = 60;
pub const DEFAULT_MAX_UNACKED: u32 = 100;
pub const DEFAULT_SPLIT: u32 = 128;
pub const DEFAULT_LOAD_BALANCE_MAX_SECONDS: u16 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverConfig {
    /// Relationship name: must equal the partner's (dhcpd: `failover peer "NAME"`).
    pub name: String,
    pub role: Role,
    /// Where we listen, and the source address of our connection to the partner (dhcpd matches
    /// incoming connections by it).
    pub address: Ipv4Addr,
    pub port: u16,
    pub peer_address: Ipv4Addr,
    pub peer_port: u16,
    /// Maximum client lead time (seconds); the primary's value is the relationship's.
    pub mclt: u32,
    /// Seconds without a message from the partner before we consider the link dead.
    pub max_response_delay: u32,
    /// Binding updates the partner may send us before waiting for acknowledgements.
    pub max_unacked_updates: u32,
    /// Hash bucket assignment (RFC 3074): bit n set ⇒ bucket n is the primary's.
    pub hba: [u8; 32],
    pub load_balance_max_seconds: u16,
    /// Seconds in COMMUNICATIONS-INTERRUPTED before entering PARTNER-DOWN on our own (0: never,
    /// the default: an operator decides, as the draft recommends).
    pub auto_partner_down: u32,
}

impl FailoverConfig {
    pub fn max_response_delay(&self) -> Duration {
        Duration::from_secs(u64::from(self.max_response_delay))
    }
}

/// The bucket map of `split`: buckets 0..split belong to the primary (as dhcpd builds it).
pub fn split_hba(split: u32) -> [u8; 32] {
    let mut hba = [0u8; 32];
    for i in 0..split.min(256) as usize {
        hba[i / 8] |= 1 << (i % 8);
    }
    hba
}
