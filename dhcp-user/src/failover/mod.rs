//! Failover with a partner server, as ISC dhcpd 4.4 does it (draft-ietf-dhc-failover-12 over
//! TCP), so that an xdpdhcp can be paired with another xdpdhcp or with an ISC dhcpd.
//!
//! - `wire`: the messages, byte for byte.
//! - `states`: the state machine (NORMAL, COMMUNICATIONS-INTERRUPTED, PARTNER-DOWN, RECOVER…).
//! - `engine`: handshake, keepalives, binding updates in both directions (pure logic).
//! - `link`: the TCP connections.
//! - The allocator's rules (who may give which address, MCLT) live in `server::failover`.

pub mod config;
pub mod engine;
pub mod link;
pub mod states;
pub mod wire;

pub use config::{
    DEFAULT_LOAD_BALANCE_MAX_SECONDS, DEFAULT_MAX_RESPONSE_DELAY, DEFAULT_MAX_UNACKED,
    DEFAULT_MCLT, DEFAULT_PORT, DEFAULT_SPLIT, split_hba,
};
