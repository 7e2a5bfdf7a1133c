//! RFC 3074 load balancing between failover partners (normal state only).
//!
//! Broadcast and relayed DISCOVER/REQUEST messages reach both servers; each answers only the
//! clients whose hash bucket it owns. Unicast renewals reach only the server they are sent to,
//! so they are always answered. A client whose `secs` exceeds `lb_max_secs` has waited for the
//! partner long enough and is answered regardless (ISC dhcpd's load-balance-max-seconds).

use dhcp_common::{
    CONFIG_FLAG_LOAD_BALANCE, FastPathConfig, loadbalance,
    wire::{ETHERNET_HLEN, msg},
};

use crate::{
    frame::Frame,
    maps::{OPTS_BUF, OPTS_MASK},
    options::Request,
};

/// Did the client send this to every server (broadcast, or through a relay)?
#[inline(always)]
pub fn reached_both_servers(frame: &Frame, req: &Request) -> bool {
    req.giaddr != 0 || frame.is_broadcast()
}

/// `false` if the partner answers this client.
#[inline(always)]
pub fn is_ours(
    config: &FastPathConfig,
    frame: &Frame,
    req: &Request,
    opts: &[u8; OPTS_BUF],
) -> bool {
    if config.flags & CONFIG_FLAG_LOAD_BALANCE == 0
        || (req.msg_type != msg::DISCOVER && req.msg_type != msg::REQUEST)
        || !reached_both_servers(frame, req)
        || req.secs > config.lb_max_secs
    {
        return true;
    }
    loadbalance::is_set(&config.lb_buckets, bucket(req, opts))
}

/// Pearson hash of the client identifier, else of chaddr (the key is read back to front).
#[inline(always)]
fn bucket(req: &Request, opts: &[u8; OPTS_BUF]) -> u8 {
    if req.client_id.present() {
        let len = req.client_id.loop_bound(opts);
        let value = req.client_id.at + 2;
        let mut hash = len as u8;
        for i in 0..255 {
            if i >= len {
                break;
            }
            hash = loadbalance::step(hash, opts[(value + len - 1 - i) & OPTS_MASK]);
        }
        hash
    } else {
        let mut hash = ETHERNET_HLEN;
        for i in (0..ETHERNET_HLEN as usize).rev() {
            hash = loadbalance::step(hash, req.chaddr[i]);
        }
        hash
    }
}
