//! Which requests the fast path answers. Anything it is not sure about goes to the daemon.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns, maps::lpm_trie::Key, programs::XdpContext,
};
use dhcp_common::{
    CONFIG_FLAG_FAST_PATH, Counter, LEASE_FLAG_SLOW_PATH_ONLY, LeaseEntry, LinkKey,
    SUBNET_FLAG_VALID, SubnetEntry,
    digest::{FNV_OFFSET_BASIS, NO_CLIENT_ID, finish, fnv1a_step},
    renewal_kind,
    wire::msg,
};

use crate::{
    ack::{self, Ack},
    frame::{self, Frame},
    loadbalance,
    maps::{
        self, CONFIG, IFACES, LEASES, LINKS, OPTION_SETS, OPTS_BUF, OPTS_MASK, RELAY_LINKS, SUBNETS,
    },
    options::{self, OptionRef, Request},
};

const NS_PER_SEC: u64 = 1_000_000_000;

#[inline(always)]
pub fn handle(ctx: &XdpContext) -> Counter {
    match try_handle(ctx) {
        Ok(counter) | Err(counter) => counter,
    }
}

#[inline(always)]
fn try_handle(ctx: &XdpContext) -> Result<Counter, Counter> {
    let frame = frame::parse(ctx)?;
    let s = maps::scratch().ok_or(Counter::PuntNoRoom)?;
    let req = options::parse(ctx, &frame, s)?;
    let req = maps::launder_request(s, req);
    let config = CONFIG.get(0).ok_or(Counter::PuntNoRoom)?;

    if !loadbalance::is_ours(config, &frame, &req, &s.opts) {
        return Err(Counter::DropPartnerBucket);
    }
    if req.msg_type != msg::REQUEST {
        return Err(Counter::PuntNotRequest);
    }
    // Hashed here, where the verifier sees one state, not after the branches below.
    let client_id_digest = client_id_digest(&s.opts, &req.client_id);
    if config.flags & CONFIG_FLAG_FAST_PATH == 0 {
        return Err(Counter::PuntFastPathOff);
    }

    // RFC 2131 §4.3.2: the client state follows from ciaddr, option 50 and option 54.
    let (address, kind) = if req.ciaddr != 0 {
        if req.has_requested {
            return Err(Counter::PuntAmbiguousAddress);
        }
        let kind = if loadbalance::reached_both_servers(&frame, &req) {
            renewal_kind::REBINDING
        } else {
            renewal_kind::RENEWING
        };
        (req.ciaddr, kind)
    } else if req.has_server_id {
        return Err(Counter::PuntSelecting);
    } else if !req.has_requested || req.requested == 0 {
        return Err(Counter::PuntNoAddress);
    } else {
        (req.requested, renewal_kind::INIT_REBOOT)
    };

    let lease_ptr = LEASES
        .get_ptr_mut(address)
        .ok_or(Counter::PuntUnknownLease)?;
    let lease: LeaseEntry = unsafe { *lease_ptr };
    if lease.flags & LEASE_FLAG_SLOW_PATH_ONLY != 0 {
        return Err(Counter::PuntLeaseDisabled);
    }
    if lease.chaddr != req.chaddr {
        return Err(Counter::PuntChaddrMismatch);
    }
    if client_id_digest != lease.client_id_digest {
        return Err(Counter::PuntClientIdMismatch);
    }
    let subnet = SUBNETS
        .get(lease.subnet_id as u32)
        .ok_or(Counter::PuntWrongSubnet)?;
    if subnet.flags & SUBNET_FLAG_VALID == 0 {
        return Err(Counter::PuntWrongSubnet);
    }
    if req.has_server_id && req.server_id != subnet.server_id {
        return Err(Counter::PuntOtherServer);
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    let iface = unsafe { IFACES.get(ifindex) }.ok_or(Counter::PuntNoInterface)?;
    let unicast_renewal = req.giaddr == 0 && req.ciaddr != 0 && !frame.is_broadcast();
    if unicast_renewal && frame.ip_dst != subnet.server_id && frame.ip_dst != iface.address {
        // Routed through this host to some other server: not ours to answer.
        return Err(Counter::PuntOtherServer);
    }
    if !unicast_renewal && !arrived_for(&frame, &req, subnet, ifindex) {
        return Err(Counter::PuntWrongSubnet);
    }

    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now >= lease.expires_ns {
        return Err(Counter::PuntExpired);
    }
    let full = now + lease.lease_time_s as u64 * NS_PER_SEC;
    let until = if full < lease.horizon_ns {
        full
    } else {
        lease.horizon_ns
    };
    // DESIGN.md: grant min(now + lease time, horizon), unless that is below T1.
    if until <= now || until - now < lease.renew_s as u64 * NS_PER_SEC {
        return Err(Counter::PuntBeyondHorizon);
    }
    let options = OPTION_SETS
        .get(lease.option_set as u32)
        .ok_or(Counter::PuntNoOptionSet)?;

    Ok(ack::send(
        ctx,
        s,
        Ack {
            frame: &frame,
            req: &req,
            address,
            lease: lease_ptr,
            subnet,
            iface,
            options,
            grant: ack::grant(&lease, now, until),
            kind,
        },
    ))
}

/// "On the subnet it arrived for" (DESIGN.md, Map key), for requests that are not unicast
/// renewals. (A unicast RENEWING request is matched by its ciaddr, the key of LEASES, which is
/// also how ISC dhcpd and Kea select its subnet.)
///
/// Relayed: giaddr lies in the lease's subnet, or is a relay address of its link.
/// Broadcast on a local link: the interface and VLAN tags belong to the lease's link.
#[inline(always)]
fn arrived_for(frame: &Frame, req: &Request, subnet: &SubnetEntry, ifindex: u32) -> bool {
    if req.giaddr != 0 {
        if req.giaddr & subnet.mask == subnet.network & subnet.mask {
            return true;
        }
        let key = Key::new(32, req.giaddr.to_be_bytes());
        return RELAY_LINKS
            .get(&key)
            .is_some_and(|link| *link == subnet.link_id);
    }
    let key = LinkKey {
        ifindex,
        outer_vlan: frame.vlan_id(0),
        inner_vlan: frame.vlan_id(1),
    };
    unsafe { LINKS.get(key) }.is_some_and(|link| *link == subnet.link_id)
}

/// FNV-1a digest of the option 61 value (dhcp-common `digest`), `NO_CLIENT_ID` if absent.
#[inline(always)]
fn client_id_digest(opts: &[u8; OPTS_BUF], client_id: &OptionRef) -> u64 {
    if !client_id.present() {
        return NO_CLIENT_ID;
    }
    let value = client_id.at + 2;
    let len = client_id.loop_bound(opts);
    let mut hash = FNV_OFFSET_BASIS;
    for i in 0..255 {
        if i >= len {
            break;
        }
        hash = fnv1a_step(hash, opts[(value + i) & OPTS_MASK]);
    }
    finish(hash)
}
