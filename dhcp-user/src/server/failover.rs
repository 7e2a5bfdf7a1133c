//! The allocator's side of failover: which addresses this server may hand out, how long a lease
//! it may grant (MCLT), and binding updates to and from the partner.
//!
//! Ownership follows draft-ietf-dhc-failover-12 as ISC dhcpd implements it: a free address is
//! FREE (the primary's to allocate) or BACKUP (the secondary's); an address without a row in
//! the store is FREE. An ended lease (expired, released) stays unusable until the partner has
//! acknowledged the change, then becomes FREE. In PARTNER-DOWN the survivor may take the
//! partner's addresses, but only once MCLT has passed since anything the partner could have
//! promised.

use std::net::Ipv4Addr;

use tracing::{info, warn};

use super::{Effects, NO_OPTION_SET, Server};
use crate::{
    failover::{config::Role, states::Service, wire::reject},
    lease::{ClientKey, HwAddr, Lease, LeaseState},
    store::Write,
    wire::Request,
};

/// What the allocator needs to know of the failover state (set by the daemon on every change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverView {
    pub role: Role,
    pub service: Service,
    /// Start of our current state (unix seconds).
    pub stos: u64,
    pub mclt: u32,
    /// RFC 3074 buckets this server answers in the normal state (bit n of byte n/8).
    pub our_buckets: [u8; 32],
    pub lb_max_secs: u16,
}

impl FailoverView {
    fn partner_down(&self) -> bool {
        self.service == Service::PartnerDown
    }
}

/// One binding as a BNDUPD carries it (times in unix seconds, 0 = absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingUpdate {
    pub address: Ipv4Addr,
    pub state: LeaseState,
    pub client_id: Option<Vec<u8>>,
    /// Hardware type and address.
    pub hw: Option<HwAddr>,
    pub starts: u64,
    pub ends: u64,
    /// Potential expiry: how long the sender may extend the lease without asking again.
    pub tstp: u64,
    pub cltt: u64,
}

/// A binding update the partner sent that we refuse (BNDACK with a reject reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub reason: u8,
    pub message: String,
}

fn rejected(reason: u8, message: impl Into<String>) -> Rejected {
    Rejected {
        reason,
        message: message.into(),
    }
}

impl Server {
    /// Installs the failover view; re-evaluates every address if ownership rules changed.
    pub fn set_failover(&mut self, view: Option<FailoverView>, now: u64) {
        if self.failover == view {
            return;
        }
        let ownership_changed = match (&self.failover, &view) {
            (Some(a), Some(b)) => {
                a.role != b.role || a.partner_down() != b.partner_down() || a.stos != b.stos
            }
            _ => true,
        };
        self.failover = view;
        if ownership_changed {
            self.refresh_all(now);
        }
        // In PARTNER-DOWN the partner's addresses become ours MCLT after we entered it.
        self.ownership_recheck = self
            .failover
            .as_ref()
            .filter(|f| f.partner_down())
            .map(|f| f.stos + u64::from(f.mclt) + 1);
    }

    pub fn failover(&self) -> Option<&FailoverView> {
        self.failover.as_ref()
    }

    /// Recomputes every pool address (ownership changed).
    pub(super) fn refresh_all(&mut self, now: u64) {
        let addresses: Vec<Ipv4Addr> = self.pools.addresses().collect();
        for a in addresses {
            self.refresh(a, now);
        }
    }

    /// May this server give `address` (in a pool, not reserved, not offered) to a new client
    /// now?
    pub(super) fn may_allocate(&self, lease: Option<&Lease>, now: u64) -> bool {
        let Some(fo) = &self.failover else {
            return lease.is_none_or(|l| !super::occupies(l, now));
        };
        let state = lease.map_or(LeaseState::Free, |l| l.state);
        let tsfp = lease.map_or(0, |l| l.failover.tsfp);
        // The partner cannot have promised anything beyond MCLT past the later of what it told
        // us and when we stopped hearing from it.
        let partner_done = |until: u64| {
            fo.partner_down() && now > until.max(fo.stos.max(tsfp) + u64::from(fo.mclt))
        };
        match state {
            LeaseState::Active => false,
            LeaseState::Free => fo.role == Role::Primary || partner_done(0),
            LeaseState::Backup => fo.role == Role::Secondary || partner_done(0),
            LeaseState::Expired | LeaseState::Released | LeaseState::Reset => {
                partner_done(lease.map_or(0, |l| l.held_until))
            }
            LeaseState::Declined => {
                let held = lease.map_or(0, |l| l.held_until);
                held <= now && (fo.role == Role::Primary || partner_done(held))
            }
        }
    }

    /// Load balancing (RFC 3074, NORMAL state): is this a broadcast or relayed DISCOVER or
    /// REQUEST of a client the partner answers? (The XDP program drops most of these first.)
    pub(super) fn belongs_to_partner(&self, req: &Request) -> bool {
        let Some(fo) = &self.failover else {
            return false;
        };
        let broadcast_like = !req.giaddr().is_unspecified() || req.ciaddr().is_unspecified();
        if fo.service != Service::Cooperating
            || !matches!(
                req.msg_type,
                dhcproto::v4::MessageType::Discover | dhcproto::v4::MessageType::Request
            )
            || !broadcast_like
            || req.secs() > fo.lb_max_secs
        {
            return false;
        }
        let key: &[u8] = match req.options.get(&dhcp_common::wire::opt::CLIENT_ID) {
            Some(id) => id,
            None => req.hw.as_slice(),
        };
        let bucket = dhcp_common::loadbalance::bucket(key);
        !dhcp_common::loadbalance::is_set(&fo.our_buckets, bucket)
    }

    /// MCLT (draft §5.2.1, dhcpd `ack_lease`): a lease may run at most MCLT beyond what the
    /// partner has acknowledged (`tsfp`), and never less than MCLT. Returns the lease time to
    /// grant for `desired` seconds, and the potential expiry to tell the partner.
    pub(super) fn mclt_grant(&self, desired: u32, tsfp: u64, now: u64) -> (u32, u64) {
        let Some(fo) = &self.failover else {
            return (desired, 0);
        };
        let mut granted = desired;
        if desired > fo.mclt {
            if tsfp <= now {
                granted = fo.mclt;
            } else if now + u64::from(desired) > tsfp + u64::from(fo.mclt) {
                granted = (tsfp + u64::from(fo.mclt) - now).min(u64::from(desired)) as u32;
            }
        }
        // The partner may let the client keep it until it would next renew plus a lease.
        let tstp = now + u64::from(desired) + u64::from(granted / 2);
        (granted, tstp)
    }

    /// The fast path's horizon for a lease under failover: MCLT past what the partner knows,
    /// unless leases are shorter than MCLT (then any renewal is allowed).
    pub(super) fn failover_horizon(&self, lease: &Lease) -> Option<u64> {
        let fo = self.failover.as_ref()?;
        if lease.lease_time <= fo.mclt || !self.in_pool(lease.address) {
            return None;
        }
        Some((lease.failover.tsfp + u64::from(fo.mclt)).max(lease.ends))
    }

    /// Is `address` covered by the failover relationship (a dynamic pool)?
    pub fn in_pool(&self, address: Ipv4Addr) -> bool {
        self.pools.subnet_of(address).is_some()
    }

    /// Marks a changed lease for the partner: `effects` will queue its BNDUPD.
    pub(super) fn note_for_partner(&mut self, address: Ipv4Addr, effects: &mut Effects) {
        if self.failover.is_some() && self.in_pool(address) {
            if let Some(b) = self.bindings.get_mut(&address) {
                b.lease.failover.pending = true;
            }
            effects.failover_updates.push(address);
        }
    }

    /// The BNDUPD for `address` (an address with no binding is FREE).
    pub fn update_for(&self, address: Ipv4Addr) -> Option<BindingUpdate> {
        if !self.in_pool(address) {
            return None;
        }
        Some(match self.bindings.get(&address) {
            None => BindingUpdate {
                address,
                state: LeaseState::Free,
                client_id: None,
                hw: None,
                starts: 0,
                ends: 0,
                tstp: 0,
                cltt: 0,
            },
            Some(b) => {
                let l = &b.lease;
                // An abandoned address goes without client identity (dhcpd rejects it otherwise).
                let identified = l.state != LeaseState::Declined;
                BindingUpdate {
                    address,
                    state: l.state,
                    client_id: l
                        .client
                        .as_ref()
                        .and_then(|c| c.client_id())
                        .filter(|_| identified)
                        .map(<[u8]>::to_vec),
                    hw: l.hw.filter(|_| identified),
                    starts: l.starts,
                    ends: l.ends,
                    tstp: l.failover.tstp,
                    cltt: l.failover.cltt,
                }
            }
        })
    }

    /// Bindings the partner has not acknowledged (UPDREQ, entering NORMAL).
    pub fn unacked_updates(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .bindings
            .iter()
            .filter(|(a, b)| {
                self.in_pool(**a) && (b.lease.failover.pending || b.lease.state.is_transitional())
            })
            .map(|(a, _)| *a)
            .collect();
        v.sort();
        v
    }

    /// Every pool address (UPDREQALL: the partner lost its database).
    pub fn all_updates(&self) -> Vec<Ipv4Addr> {
        self.pools.addresses().collect()
    }

    /// The partner acknowledged our update of `address` that said `sent_state` with potential
    /// expiry `tstp`.
    pub fn update_acked(
        &mut self,
        address: Ipv4Addr,
        sent_state: LeaseState,
        tstp: u64,
        now: u64,
    ) -> Effects {
        let mut effects = Effects::default();
        let primary = self
            .failover
            .as_ref()
            .is_some_and(|f| f.role == Role::Primary);
        let Some(b) = self.bindings.get_mut(&address) else {
            return effects;
        };
        let l = &mut b.lease;
        l.failover.tsfp = l.failover.tsfp.max(tstp);
        let current = tstp >= l.failover.tstp && l.state == sent_state;
        if current {
            l.failover.pending = false;
        }
        if current && l.state.is_transitional() {
            // The partner agrees it has ended: free again (the primary's, dhcpd's rule).
            l.state = if primary || l.state != LeaseState::Reset {
                LeaseState::Free
            } else {
                LeaseState::Backup
            };
            l.held_until = l.held_until.min(now);
            let lease = l.clone();
            effects.merge(self.store_failover_lease(lease, now));
            return effects;
        }
        if l.state == LeaseState::Active {
            // A higher horizon for the fast path (no write needed: only the durable part of
            // the horizon has to be on disk).
            effects.republish.push(address);
        }
        effects
    }

    /// A BNDUPD from the partner. `ours_in_flight`: we sent an update of this address that the
    /// partner has not acknowledged. `normal`: we are in the NORMAL state (stricter transition
    /// rules). On success the returned effects commit the binding; the engine acknowledges
    /// once that is durable.
    pub fn apply_update(
        &mut self,
        u: BindingUpdate,
        normal: bool,
        ours_in_flight: bool,
        now: u64,
    ) -> Result<Effects, Rejected> {
        let Some(fo) = self.failover.clone() else {
            return Err(rejected(reject::MISC_REJECT, "failover is not configured"));
        };
        let Some(subnet) = self.config.subnet_of(u.address).map(|s| s.id) else {
            return Err(rejected(reject::ILLEGAL_IP_ADDR, "unknown IP address"));
        };
        if !self.in_pool(u.address) {
            return Err(rejected(
                reject::ILLEGAL_IP_ADDR,
                "address is not in a failover pool",
            ));
        }
        if u.state == LeaseState::Declined && (u.hw.is_some() || u.client_id.is_some()) {
            return Err(rejected(
                reject::MISC_REJECT,
                "abandoned address with client identity",
            ));
        }
        if u.hw.is_none()
            && matches!(
                u.state,
                LeaseState::Active | LeaseState::Expired | LeaseState::Released
            )
        {
            return Err(rejected(reject::MISSING_BINDINFO, "BNDUPD without CHADDR"));
        }
        let local = self.bindings.get(&u.address).map(|b| b.lease.clone());
        let local_state = local.as_ref().map_or(LeaseState::Free, |l| l.state);
        if ours_in_flight && local_is_better(fo.role, local.as_ref(), &u) {
            return Err(rejected(
                reject::LESS_CRIT_BIND_INFO,
                "incoming update is less critical than outgoing update",
            ));
        }
        let allowed = if normal {
            normal_transition(fo.role, local.as_ref(), u.state, u.tstp, now)
        } else {
            conflict_transition(local.as_ref(), u.state, now)
        };
        if allowed != u.state {
            return Err(rejected(
                reject::FATAL_CONFLICT,
                format!(
                    "{}: invalid state transition: {} to {}",
                    u.address,
                    local_state.as_str(),
                    u.state.as_str()
                ),
            ));
        }
        // Ended on the partner's side: free again right away (dhcpd does the same).
        let state = if u.state.is_transitional() {
            LeaseState::Free
        } else {
            u.state
        };
        let client = match (&u.client_id, &u.hw) {
            (Some(id), _) => Some(ClientKey::Id(id.clone().into_boxed_slice())),
            (None, Some(hw)) => Some(ClientKey::Hw {
                htype: hw.htype,
                addr: hw.as_slice().into(),
            }),
            (None, None) => None,
        };
        let same_client = local.as_ref().is_some_and(|l| l.client == client);
        let lease_time = local
            .as_ref()
            .filter(|_| same_client)
            .map(|l| l.lease_time)
            .filter(|t| *t > 0)
            .unwrap_or_else(|| {
                u.ends
                    .saturating_sub(u.starts)
                    .clamp(1, u64::from(u32::MAX)) as u32
            });
        let held_until = match state {
            LeaseState::Active => u.ends,
            LeaseState::Declined => now + u64::from(self.config.decline_probation),
            _ => now,
        };
        let lease = Lease {
            address: u.address,
            subnet,
            state,
            client,
            hw: u.hw,
            hostname: local
                .as_ref()
                .filter(|_| same_client)
                .and_then(|l| l.hostname.clone()),
            starts: u.starts,
            ends: u.ends,
            held_until,
            lease_time,
            failover: crate::lease::FailoverTimes {
                tstp: local.as_ref().map_or(0, |l| l.failover.tstp),
                tsfp: u.tstp,
                cltt: u.cltt,
                // The partner told us; nothing of ours is outstanding for this address.
                pending: false,
            },
        };
        if state == LeaseState::Active && !same_client {
            info!(address = %u.address, client = ?lease.client, "failover: partner bound the address");
        }
        Ok(self.store_failover_lease(lease, now))
    }

    /// Stores a lease that changed through failover (partner update, acknowledgement, pool
    /// balance), keeping the indexes and the fast path in step.
    fn store_failover_lease(&mut self, lease: Lease, now: u64) -> Effects {
        let address = lease.address;
        let old = self.bindings.get(&address).map(|b| b.lease.clone());
        if let Some(old_client) = old.as_ref().and_then(|l| l.client.clone())
            && Some(&old_client) != lease.client.as_ref()
            && self.by_client.get(&old_client) == Some(&address)
        {
            self.by_client.remove(&old_client);
        }
        if let Some(c) = &lease.client {
            self.by_client.insert(c.clone(), address);
        }
        self.pools
            .set_backup(address, lease.state == LeaseState::Backup);
        let option_set = if lease.state == LeaseState::Active {
            self.option_set_for(lease.subnet, &lease, None)
        } else {
            NO_OPTION_SET
        };
        self.timers.insert((lease.ends.max(now), address));
        self.timers.insert((lease.held_until, address));
        let version = self.record_binding(lease.clone(), option_set, now);
        let cidr = self.subnet(lease.subnet).net.to_string();
        let active = lease.state == LeaseState::Active;
        Effects {
            // Anything but an active lease leaves the fast path before it is stored.
            remove_from_fast_path: if active { vec![] } else { vec![address] },
            commit: Some((
                vec![Write::Lease(lease, cidr)],
                super::AfterCommit {
                    publish: if active {
                        vec![(address, version)]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    /// Pool balancing (primary, NORMAL): moves FREE addresses to BACKUP until each pool is
    /// split evenly, as dhcpd does on entering NORMAL. Returns the moves to send.
    pub fn rebalance(&mut self, now: u64) -> Effects {
        let mut effects = Effects::default();
        if !self
            .failover
            .as_ref()
            .is_some_and(|f| f.role == Role::Primary && f.service == Service::Cooperating)
        {
            return effects;
        }
        let balance = self.pools.balance();
        for (i, (free, backup, _total)) in balance.into_iter().enumerate() {
            let lts = free.saturating_sub(backup) / 2;
            if lts == 0 {
                continue;
            }
            let moved = self.pools.take_free(i, lts);
            info!(
                pool = i,
                free,
                backup,
                moving = moved.len(),
                "failover: balancing pool"
            );
            for address in moved {
                let Some(subnet) = self.config.subnet_of(address).map(|s| s.id) else {
                    continue;
                };
                let mut lease = self
                    .bindings
                    .get(&address)
                    .map(|b| b.lease.clone())
                    .unwrap_or(Lease {
                        address,
                        subnet,
                        state: LeaseState::Free,
                        client: None,
                        hw: None,
                        hostname: None,
                        starts: now,
                        ends: 0,
                        held_until: 0,
                        lease_time: 0,
                        failover: Default::default(),
                    });
                if lease.state != LeaseState::Free {
                    warn!(%address, state = lease.state.as_str(), "failover: not moving a non-free address to backup");
                    self.refresh(address, now);
                    continue;
                }
                lease.state = LeaseState::Backup;
                lease.starts = now;
                lease.failover.tstp = now;
                lease.failover.pending = true;
                effects.merge(self.store_failover_lease(lease, now));
                effects.failover_updates.push(address);
            }
        }
        effects
    }

    /// How many addresses each side holds for new clients: (free, backup) over all pools.
    pub fn pool_split(&self) -> (usize, usize) {
        self.pools
            .balance()
            .into_iter()
            .fold((0, 0), |(f, b), (free, backup, _)| (f + free, b + backup))
    }

    /// Re-evaluates ownership when MCLT has passed in PARTNER-DOWN (called from the tick).
    pub(super) fn check_ownership_timer(&mut self, now: u64) {
        if let Some(at) = self.ownership_recheck
            && now >= at
        {
            self.ownership_recheck = None;
            info!(
                "failover: MCLT has passed in partner-down: the partner's addresses are ours to give"
            );
            self.refresh_all(now);
        }
    }
}

/// dhcpd `failover_lease_is_better`: when both sides updated a lease at once, does ours win?
fn local_is_better(role: Role, local: Option<&Lease>, u: &BindingUpdate) -> bool {
    let Some(local) = local else {
        return false;
    };
    match local.state {
        LeaseState::Active if u.state == LeaseState::Active => {
            if u.cltt < local.failover.cltt {
                true
            } else if u.cltt > local.failover.cltt {
                false
            } else {
                role == Role::Primary
            }
        }
        LeaseState::Active if u.state == LeaseState::Expired => false,
        _ => u.state != LeaseState::Active && role == Role::Primary,
    }
}

/// dhcpd `normal_binding_state_transition_check`: the state we accept when the partner asks
/// for `to` in the NORMAL state.
fn normal_transition(
    role: Role,
    local: Option<&Lease>,
    to: LeaseState,
    tsfp: u64,
    now: u64,
) -> LeaseState {
    use LeaseState::*;
    let from = local.map_or(Free, |l| l.state);
    if from == to {
        return to;
    }
    match from {
        // A free address: the primary may do anything with it; if the secondary did, the
        // mistake is already made, so take it (dhcpd logs and accepts too).
        Free | Declined => to,
        Active => {
            if role == Role::Primary {
                // The secondary cannot end an active lease, except that the client may have
                // released it there.
                if to == Released { to } else { from }
            } else {
                match to {
                    Free | Backup if tsfp > now => from,
                    // dhcpd allows 65 s of clock skew here; we never end a lease we know a
                    // client still holds (we may have renewed it while the partner could not
                    // hear about it).
                    Expired if local.is_some_and(|l| l.ends > now) => from,
                    _ => to,
                }
            }
        }
        Expired | Reset => match to {
            Free | Backup if tsfp > now => from,
            _ => to,
        },
        Released => to,
        Backup => match to {
            Backup => from,
            _ => to,
        },
    }
}

/// dhcpd `conflict_binding_state_transition_check`: outside NORMAL, the partner wins unless we
/// think the lease is active and it thinks it is free.
fn conflict_transition(local: Option<&Lease>, to: LeaseState, now: u64) -> LeaseState {
    let Some(l) = local else {
        return to;
    };
    if l.state != LeaseState::Active || l.state == to {
        return to;
    }
    match to {
        LeaseState::Free | LeaseState::Backup => l.state,
        LeaseState::Expired if l.ends > now => l.state,
        _ => to,
    }
}
