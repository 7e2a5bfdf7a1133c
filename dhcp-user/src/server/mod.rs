//! The DHCP server's state and decisions, free of I/O.
//!
//! `Server` turns a request (plus where it arrived and the time) into `Effects`: a reply to
//! send now (OFFER, NAK, INFORM), or writes to make durable first and the reply to send once
//! they are. The daemon (`daemon.rs`) performs the effects; tests drive `Server` directly.
//!
//! Addresses leave a client in a fixed order: the fast path's entry is removed first
//! (`Effects::remove_from_fast_path`, done before anything else), then the address may be
//! given to someone else. An address is never reused before `held_until`.

mod failover;
mod freeset;
mod pools;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

/// A hash map with a fast, per-process randomly seeded hasher: a million leases load in a
/// fraction of the time SipHash takes, and clients still cannot choose colliding keys.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use dhcp_common::{digest, wire::opt};
use dhcproto::v4::MessageType;
use tracing::{debug, info, warn};

pub use self::failover::{BindingUpdate, FailoverView, Rejected};
use self::pools::Pools;
use crate::{
    config::{ClientMatch, Config, Reservation, Subnet},
    lease::{ClientKey, Lease, LeaseState},
    store::Write,
    wire::{Destination, ReplySpec, Request, encode_reply, select_options},
};

/// Where a request came from.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// Interface the daemon's socket received it on.
    pub interface: String,
    pub ifindex: u32,
}

/// A reply ready to go out.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub dest: Destination,
    /// Interface to send on (the arrival interface).
    pub ifindex: u32,
    /// Source address (the server identifier).
    pub src: Ipv4Addr,
    /// DHCP message type, for counters and logs.
    pub msg_type: MessageType,
}

/// Done once the writes of a batch are durable.
#[derive(Clone, Debug, Default)]
pub struct AfterCommit {
    pub reply: Option<Outgoing>,
    /// Leases to (re)publish in the fast path, with the version that was written.
    pub publish: Vec<(Ipv4Addr, u64)>,
    /// Failover: binding updates of the partner to acknowledge (xid, address).
    pub failover_acks: Vec<(u32, Ipv4Addr)>,
}

#[derive(Debug, Default)]
pub struct Effects {
    /// Delete these from the fast path's LEASES before doing anything else.
    pub remove_from_fast_path: Vec<Ipv4Addr>,
    /// Send immediately (no state that needs to be durable).
    pub send: Option<Outgoing>,
    /// Make durable, then perform `AfterCommit`.
    pub commit: Option<(Vec<Write>, AfterCommit)>,
    /// Failover: leases whose new state the partner must be told (BNDUPD).
    pub failover_updates: Vec<Ipv4Addr>,
    /// Fast-path entries to rewrite now (their horizon rose; nothing to make durable).
    pub republish: Vec<Ipv4Addr>,
}

impl Effects {
    fn send(out: Outgoing) -> Effects {
        Effects {
            send: Some(out),
            ..Default::default()
        }
    }

    pub fn merge(&mut self, other: Effects) {
        self.remove_from_fast_path
            .extend(other.remove_from_fast_path);
        if other.send.is_some() {
            self.send = other.send;
        }
        self.failover_updates.extend(other.failover_updates);
        self.republish.extend(other.republish);
        match (&mut self.commit, other.commit) {
            (Some((w, a)), Some((w2, a2))) => {
                w.extend(w2);
                a.publish.extend(a2.publish);
                a.failover_acks.extend(a2.failover_acks);
                if a2.reply.is_some() {
                    a.reply = a2.reply;
                }
            }
            (None, Some(c)) => self.commit = Some(c),
            _ => {}
        }
    }
}

/// What the fast path needs to answer renewals of one lease (times in unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastLease {
    pub chaddr: [u8; 6],
    pub client_id_digest: u64,
    pub subnet: u16,
    pub option_set: u16,
    pub lease_time: u32,
    pub renew: u32,
    pub rebind: u32,
    pub ends: u64,
    pub horizon: u64,
}

/// A binding plus what only the daemon tracks about it.
#[derive(Clone, Debug)]
struct Binding {
    lease: Lease,
    /// Bumped on every change; the fast path publishes only the version that was committed.
    version: u64,
    /// `held_until` as last committed: the horizon may not pass it.
    durable_held_until: u64,
    option_set: u16,
}

/// What a reply says: its type, the address and the lease time.
struct Answer {
    msg_type: MessageType,
    yiaddr: Ipv4Addr,
    lease_time: Option<u32>,
}

/// RFC 2131 §4.3.2: what a DHCPREQUEST is, from ciaddr, option 50 and option 54.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    Selecting,
    InitReboot,
    Renewing,
    Rebinding,
}

struct Offer {
    address: Ipv4Addr,
    expires: u64,
}

/// Named counters of the daemon, reported by `xdpdhcp stats`.
#[derive(Debug, Default, Clone)]
pub struct Stats(pub BTreeMap<&'static str, u64>);

impl Stats {
    pub fn inc(&mut self, name: &'static str) {
        *self.0.entry(name).or_default() += 1;
    }

    pub fn add(&mut self, name: &'static str, n: u64) {
        *self.0.entry(name).or_default() += n;
    }
}

/// Pre-encoded option sets, deduplicated, mirrored into the fast path's OPTION_SETS.
struct OptionSets {
    ids: HashMap<Vec<u8>, u16>,
    unpublished: Vec<(u16, Vec<u8>)>,
}

impl OptionSets {
    fn id(&mut self, bytes: &[u8]) -> Option<u16> {
        if let Some(id) = self.ids.get(bytes) {
            return Some(*id);
        }
        if bytes.len() > dhcp_common::OPTION_SET_CAPACITY
            || self.ids.len() >= dhcp_common::MAX_OPTION_SETS as usize
        {
            return None;
        }
        let id = self.ids.len() as u16;
        self.ids.insert(bytes.to_vec(), id);
        self.unpublished.push((id, bytes.to_vec()));
        Some(id)
    }
}

/// Option set id meaning "none": the lease is answered by the daemon only.
pub const NO_OPTION_SET: u16 = u16::MAX;

pub struct Server {
    config: Arc<Config>,
    default_server_id: Ipv4Addr,
    bindings: HashMap<Ipv4Addr, Binding>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    pools: Pools,
    offers: HashMap<ClientKey, Offer>,
    offered: HashMap<Ipv4Addr, ClientKey>,
    reservation_by_client: HashMap<ClientMatch, usize>,
    reservation_by_address: HashMap<Ipv4Addr, usize>,
    /// (time, address): when something may change for an address (expiry, hold ending).
    timers: BTreeSet<(u64, Ipv4Addr)>,
    option_sets: OptionSets,
    next_version: u64,
    /// Failover state as the allocator needs it; `None` without a partner.
    failover: Option<FailoverView>,
    /// PARTNER-DOWN: when the partner's addresses become ours (re-evaluate then).
    ownership_recheck: Option<u64>,
    pub stats: Stats,
}

impl Server {
    /// Builds the state from the configuration and the leases loaded from the store.
    pub fn new(
        config: Arc<Config>,
        default_server_id: Ipv4Addr,
        leases: Vec<Lease>,
        now: u64,
    ) -> Server {
        let n = leases.len();
        Server::load(config, default_server_id, n, leases, now)
    }

    /// As `new`, taking the leases as they stream from the store (`expected`: how many, to
    /// size the tables once).
    pub fn load(
        config: Arc<Config>,
        default_server_id: Ipv4Addr,
        expected: usize,
        leases: impl IntoIterator<Item = Lease>,
        now: u64,
    ) -> Server {
        let pools = Pools::new(&config);
        let reservation_by_client = config
            .reservations
            .iter()
            .enumerate()
            .map(|(i, r)| (r.client.clone(), i))
            .collect();
        let reservation_by_address = config
            .reservations
            .iter()
            .enumerate()
            .map(|(i, r)| (r.address, i))
            .collect();
        let mut server = Server {
            config,
            default_server_id,
            bindings: HashMap::with_capacity_and_hasher(expected, Default::default()),
            by_client: HashMap::with_capacity_and_hasher(expected, Default::default()),
            pools,
            offers: HashMap::default(),
            offered: HashMap::default(),
            reservation_by_client,
            reservation_by_address,
            timers: BTreeSet::new(),
            option_sets: OptionSets {
                ids: HashMap::default(),
                unpublished: vec![],
            },
            next_version: 1,
            failover: None,
            ownership_recheck: None,
            stats: Stats::default(),
        };
        // Reserved addresses are never handed out dynamically.
        for r in &server.config.reservations {
            server.pools.set_free(r.address, false);
        }
        // Most leases share their subnet's option set: encode it once per subnet.
        let mut subnet_sets: HashMap<u16, u16> = HashMap::default();
        let mut timers = Vec::with_capacity(2 * expected);
        for mut lease in leases {
            let Some(subnet) = server.config.subnet_of(lease.address) else {
                // Kept (held) but never handed out again: the subnet is gone from the config.
                warn!(address = %lease.address, "stored lease is in no configured subnet; ignoring it");
                continue;
            };
            lease.subnet = subnet.id;
            let option_set = if server.reservation_of(&lease).is_none()
                && lease.hw.and_then(|h| h.ethernet()).is_some()
            {
                let id = subnet.id;
                match subnet_sets.get(&id) {
                    Some(set) => *set,
                    None => {
                        let set = server.option_set_for(id, &lease, None);
                        subnet_sets.insert(id, set);
                        set
                    }
                }
            } else {
                server.option_set_for(subnet.id, &lease, None)
            };
            timers.extend(server.insert_binding(lease, option_set, now));
        }
        // A sorted bulk build, much faster than a million single inserts.
        timers.sort_unstable();
        server.timers = timers.into_iter().collect();
        server
    }

    /// New option sets since the last call, to be written to the fast path.
    pub fn take_new_option_sets(&mut self) -> Vec<(u16, Vec<u8>)> {
        std::mem::take(&mut self.option_sets.unpublished)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Records a binding; returns the timers it needs (the caller inserts them).
    fn insert_binding(&mut self, lease: Lease, option_set: u16, now: u64) -> [(u64, Ipv4Addr); 2] {
        let address = lease.address;
        if let Some(client) = &lease.client {
            self.by_client.insert(client.clone(), address);
        }
        let held = lease.held_until;
        let timers = [(lease.ends.min(held).max(now), address), (held, address)];
        if lease.state == LeaseState::Backup {
            self.pools.set_backup(address, true);
        }
        let version = self.bump();
        self.bindings.insert(
            address,
            Binding {
                lease,
                version,
                durable_held_until: held,
                option_set,
            },
        );
        self.refresh(address, now);
        timers
    }

    /// Replaces the binding of `lease.address` with a new version. The durable end stays the
    /// previous one until the store confirms this lease; returns the new version.
    fn record_binding(&mut self, lease: Lease, option_set: u16, now: u64) -> u64 {
        let address = lease.address;
        let version = self.bump();
        let durable = self
            .bindings
            .get(&address)
            .map_or(0, |b| b.durable_held_until);
        self.bindings.insert(
            address,
            Binding {
                lease,
                version,
                durable_held_until: durable,
                option_set,
            },
        );
        self.refresh(address, now);
        version
    }

    fn bump(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// Recomputes whether `address` is free for dynamic allocation.
    fn refresh(&mut self, address: Ipv4Addr, now: u64) {
        let free = !self.reservation_by_address.contains_key(&address)
            && !self.offered.contains_key(&address)
            && self.may_allocate(self.bindings.get(&address).map(|b| &b.lease), now);
        self.pools.set_free(address, free);
    }

    fn subnet(&self, id: u16) -> &Subnet {
        &self.config.subnets[usize::from(id)]
    }

    fn server_id(&self, subnet: Option<u16>) -> Ipv4Addr {
        subnet
            .and_then(|s| self.subnet(s).server_id)
            .or(self.config.server_id)
            .unwrap_or(self.default_server_id)
    }

    fn reservation_for(&self, req: &Request) -> Option<&Reservation> {
        let by_id = req.options.get(&opt::CLIENT_ID).and_then(|id| {
            self.reservation_by_client
                .get(&ClientMatch::ClientId(id.clone()))
        });
        let by_hw = req
            .hw
            .ethernet()
            .and_then(|mac| self.reservation_by_client.get(&ClientMatch::HwAddress(mac)));
        by_id.or(by_hw).map(|i| &self.config.reservations[*i])
    }

    /// The link (shared network) a request belongs to: by relay, by ciaddr, or by interface.
    fn link_of(&self, req: &Request, arrival: &Arrival) -> Option<u32> {
        let giaddr = req.giaddr();
        if !giaddr.is_unspecified() {
            return self
                .config
                .subnets
                .iter()
                .find(|s| s.net.contains(&giaddr) || s.relay_addresses.contains(&giaddr))
                .map(|s| s.link);
        }
        let ciaddr = req.ciaddr();
        if !ciaddr.is_unspecified()
            && let Some(s) = self.config.subnet_of(ciaddr)
        {
            return Some(s.link);
        }
        let vlan_name = |s: &Subnet| s.interface.as_ref().map(|i| format!("{i}.{}", s.vlan));
        self.config
            .subnets
            .iter()
            .find(|s| {
                (s.vlan == 0 && s.interface.as_deref() == Some(&arrival.interface))
                    || (s.vlan != 0 && vlan_name(s).as_deref() == Some(&arrival.interface))
            })
            .map(|s| s.link)
    }

    fn subnets_on(&self, link: u32) -> impl Iterator<Item = &Subnet> {
        self.config.subnets.iter().filter(move |s| s.link == link)
    }

    fn on_link(&self, address: Ipv4Addr, link: u32) -> Option<u16> {
        self.config
            .subnet_of(address)
            .filter(|s| s.link == link)
            .map(|s| s.id)
    }

    /// May `client` have `address` now?
    fn available_for(
        &self,
        address: Ipv4Addr,
        client: &ClientKey,
        reservation: Option<&Reservation>,
        now: u64,
    ) -> bool {
        if self.reservation_by_address.contains_key(&address)
            && reservation.is_none_or(|r| r.address != address)
        {
            return false;
        }
        if let Some(holder) = self.offered.get(&address)
            && holder != client
        {
            return false;
        }
        let lease = self.bindings.get(&address).map(|b| &b.lease);
        match lease {
            Some(l) if l.belongs_to(client) && l.state == LeaseState::Active => true,
            Some(l) if l.belongs_to(client) && self.failover.is_none() => {
                l.state != LeaseState::Declined
            }
            _ if reservation.is_some_and(|r| r.address == address) => {
                lease.is_none_or(|l| !occupies(l, now))
            }
            _ => self.pools.subnet_of(address).is_some() && self.may_allocate(lease, now),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Requests.

    /// Handles one request.
    pub fn handle(&mut self, req: &Request, arrival: &Arrival, now: u64) -> Effects {
        self.stats.inc(match req.msg_type {
            MessageType::Discover => "rx_discover",
            MessageType::Request => "rx_request",
            MessageType::Decline => "rx_decline",
            MessageType::Release => "rx_release",
            MessageType::Inform => "rx_inform",
            _ => "rx_other",
        });
        if let Some(fo) = &self.failover {
            if let crate::failover::states::Service::NotResponding(why) = fo.service {
                self.stats.inc("drop_failover_not_responding");
                debug!(client = %req.client, "failover: not responding ({why})");
                return Effects::default();
            }
            if self.belongs_to_partner(req) {
                self.stats.inc("drop_partner_bucket");
                debug!(client = %req.client, "load balance to peer");
                return Effects::default();
            }
        }
        let Some(link) = self.link_of(req, arrival) else {
            self.stats.inc("drop_no_subnet");
            debug!(client = %req.client, giaddr = %req.giaddr(), interface = %arrival.interface, "no subnet serves this request");
            return Effects::default();
        };
        match req.msg_type {
            MessageType::Discover => self.discover(req, arrival, link, now),
            MessageType::Request => self.request(req, arrival, link, now),
            MessageType::Decline => self.decline(req, now),
            MessageType::Release => self.release(req, now),
            MessageType::Inform => self.inform(req, arrival, link),
            _ => {
                self.stats.inc("drop_unexpected_type");
                Effects::default()
            }
        }
    }

    fn discover(&mut self, req: &Request, arrival: &Arrival, link: u32, now: u64) -> Effects {
        let reservation = self.reservation_for(req).cloned();
        if self.config.deny_unknown_clients && reservation.is_none() {
            self.stats.inc("drop_unknown_client");
            return Effects::default();
        }
        let Some(address) = self.choose_address(req, link, reservation.as_ref(), now) else {
            self.stats.inc("pool_exhausted");
            warn!(client = %req.client, link, "no free address to offer: pool exhausted");
            return Effects::default();
        };
        // Hold it for this client while the offer is outstanding.
        if let Some(old) = self.offers.insert(
            req.client.clone(),
            Offer {
                address,
                expires: now + u64::from(self.config.offer_timeout),
            },
        ) && old.address != address
        {
            self.offered.remove(&old.address);
            self.refresh(old.address, now);
        }
        self.offered.insert(address, req.client.clone());
        self.timers
            .insert((now + u64::from(self.config.offer_timeout), address));
        self.refresh(address, now);

        let subnet = self.on_link(address, link).expect("chosen on this link");
        let lease_time = self.subnet(subnet).lease.grant(req.requested_lease_time());
        let options = self.options_for(subnet, reservation.as_ref(), req.parameter_request_list());
        self.stats.inc("tx_offer");
        let answer = Answer {
            msg_type: MessageType::Offer,
            yiaddr: address,
            lease_time: Some(lease_time),
        };
        Effects::send(self.reply(req, arrival, subnet, answer, &options))
    }

    /// RFC 2131 §4.3.1 address choice: reservation, outstanding offer, the client's previous
    /// address, the requested address, then any free one.
    fn choose_address(
        &mut self,
        req: &Request,
        link: u32,
        reservation: Option<&Reservation>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        let client = &req.client;
        if let Some(r) = reservation
            && self.subnet(r.subnet).link == link
        {
            return self
                .available_for(r.address, client, reservation, now)
                .then_some(r.address);
        }
        let candidates = [
            self.offers
                .get(client)
                .filter(|o| o.expires > now)
                .map(|o| o.address),
            self.by_client.get(client).copied(),
            req.requested_address(),
        ];
        for a in candidates.into_iter().flatten() {
            if self.on_link(a, link).is_some()
                && self.pools.subnet_of(a).is_some()
                && self.available_for(a, client, None, now)
            {
                return Some(a);
            }
        }
        let subnets: Vec<u16> = self.subnets_on(link).map(|s| s.id).collect();
        for s in subnets {
            while let Some(a) = self.pools.next_free(s) {
                if self.available_for(a, client, None, now) {
                    return Some(a);
                }
                // The free set disagreed with the bindings: repair and keep looking.
                self.pools.set_free(a, false);
            }
        }
        None
    }

    fn request(&mut self, req: &Request, arrival: &Arrival, link: u32, now: u64) -> Effects {
        let ciaddr = req.ciaddr();
        let (address, state) = match (
            req.server_id(),
            req.requested_address(),
            ciaddr.is_unspecified(),
        ) {
            (Some(sid), requested, _) => {
                let ours = self
                    .subnets_on(link)
                    .any(|s| self.server_id(Some(s.id)) == sid)
                    || sid == self.server_id(None);
                if !ours {
                    // The client chose another server's offer: withdraw ours.
                    self.stats.inc("request_for_other_server");
                    return self.withdraw_offer(&req.client, now);
                }
                match requested.or((!ciaddr.is_unspecified()).then_some(ciaddr)) {
                    Some(a) => (a, ClientState::Selecting),
                    None => {
                        self.stats.inc("drop_malformed_request");
                        return Effects::default();
                    }
                }
            }
            (None, Some(a), true) => (a, ClientState::InitReboot),
            (None, _, false) if req.giaddr().is_unspecified() => (ciaddr, ClientState::Renewing),
            (None, _, false) => (ciaddr, ClientState::Rebinding),
            (None, None, true) => {
                self.stats.inc("drop_malformed_request");
                return Effects::default();
            }
        };
        let reservation = self.reservation_for(req).cloned();
        let Some(subnet) = self.on_link(address, link) else {
            return self.nak(
                req,
                arrival,
                link,
                "requested address is not on this network",
                "nak_wrong_network",
            );
        };
        if self.config.deny_unknown_clients && reservation.is_none() {
            return self.nak(req, arrival, link, "unknown client", "nak_unknown_client");
        }
        if let Some(r) = &reservation
            && self.subnet(r.subnet).link == link
            && r.address != address
        {
            return self.nak(
                req,
                arrival,
                link,
                "client has a reserved address",
                "nak_reserved_elsewhere",
            );
        }
        let known = self.bindings.get(&address).is_some_and(|b| {
            b.lease.belongs_to(&req.client) && b.lease.state != LeaseState::Declined
        });
        let offered_to_client = self
            .offers
            .get(&req.client)
            .is_some_and(|o| o.address == address);
        let acceptable = match state {
            // Selecting may take any address that is available to the client.
            ClientState::Selecting => {
                offered_to_client
                    || self.available_for(address, &req.client, reservation.as_ref(), now)
            }
            // Otherwise the client must already hold it (RFC 2131 §4.3.2).
            _ => known && self.available_for(address, &req.client, reservation.as_ref(), now),
        };
        if !acceptable {
            let unbound = self
                .bindings
                .get(&address)
                .is_none_or(|b| matches!(b.lease.state, LeaseState::Free | LeaseState::Backup));
            if self.failover.is_some() && self.in_pool(address) && unbound {
                // The partner may have just bound it (its update still on the way): a NAK
                // here could take the address from a client that holds it.
                self.stats.inc("drop_lease_owned_by_peer");
                debug!(client = %req.client, %address, "failover: lease owned by peer");
                return Effects::default();
            }
            if !self.config.authoritative && !known && state != ClientState::Selecting {
                self.stats.inc("drop_unknown_lease_not_authoritative");
                return Effects::default();
            }
            let why = if known {
                "address not available"
            } else {
                "no lease for this client"
            };
            return self.nak(req, arrival, link, why, "nak_not_available");
        }
        self.stats.inc(match state {
            ClientState::Selecting => "ack_selecting",
            ClientState::InitReboot => "ack_init_reboot",
            ClientState::Renewing => "ack_renewing",
            ClientState::Rebinding => "ack_rebinding",
        });
        self.bind(req, arrival, subnet, address, reservation.as_ref(), now)
    }

    /// Commits `address` to the client and prepares the ACK.
    fn bind(
        &mut self,
        req: &Request,
        arrival: &Arrival,
        subnet: u16,
        address: Ipv4Addr,
        reservation: Option<&Reservation>,
        now: u64,
    ) -> Effects {
        let s = self.subnet(subnet);
        let lease_time = s.lease.grant(req.requested_lease_time());
        // Failover: at most MCLT beyond what the partner knows (the rest after its ack).
        let known_tsfp = self
            .bindings
            .get(&address)
            .filter(|b| b.lease.belongs_to(&req.client))
            .map_or(0, |b| b.lease.failover.tsfp);
        let (granted, tstp) = self.mclt_grant(lease_time, known_tsfp, now);
        let headroom =
            u64::from(lease_time) * u64::from(self.config.fast_path_headroom_percent) / 100;
        let mut effects = Effects::default();
        // Whatever this client held before on another address is released.
        if let Some(previous) = self.by_client.get(&req.client).copied()
            && previous != address
            && let Some(b) = self.bindings.get(&previous)
            && b.lease.belongs_to(&req.client)
            && b.lease.state == LeaseState::Active
        {
            effects.merge(self.end_binding(previous, LeaseState::Released, now));
        }
        let old = self.bindings.get(&address).map(|b| b.lease.clone());
        let same_client = old.as_ref().is_some_and(|l| l.belongs_to(&req.client));
        let ends = now + u64::from(granted);
        let mut failover = old.as_ref().map(|l| l.failover).unwrap_or_default();
        if self.failover.is_some() && self.in_pool(address) {
            failover.tstp = tstp;
            failover.cltt = now;
            failover.pending = true;
            if !same_client {
                failover.tsfp = 0;
            }
        }
        let lease = Lease {
            address,
            subnet,
            state: LeaseState::Active,
            client: Some(req.client.clone()),
            hw: Some(req.hw),
            hostname: req
                .hostname()
                .or_else(|| reservation.and_then(|r| r.hostname.clone()))
                .or_else(|| {
                    old.as_ref()
                        .filter(|_| same_client)
                        .and_then(|l| l.hostname.clone())
                }),
            starts: if same_client && old.as_ref().is_some_and(|l| l.state == LeaseState::Active) {
                old.as_ref().map_or(now, |l| l.starts)
            } else {
                now
            },
            ends: ends.max(old.as_ref().filter(|_| same_client).map_or(0, |l| l.ends)),
            held_until: (ends + headroom).max(old.as_ref().map_or(0, |l| l.held_until)),
            lease_time,
            failover,
        };
        let options = self.options_for(subnet, reservation, req.parameter_request_list());
        let option_set = self.register_option_set(&lease, &options);
        if let Some(o) = self.offers.remove(&req.client) {
            self.offered.remove(&o.address);
            if o.address != address {
                self.refresh(o.address, now);
            }
        }
        self.by_client.insert(req.client.clone(), address);
        self.timers.insert((lease.ends, address));
        self.timers.insert((lease.held_until, address));
        let version = self.record_binding(lease.clone(), option_set, now);

        let answer = Answer {
            msg_type: MessageType::Ack,
            yiaddr: address,
            lease_time: Some(granted),
        };
        let reply = self.reply(req, arrival, subnet, answer, &options);
        let cidr = self.subnet(subnet).net.to_string();
        let commit = (
            vec![Write::Lease(lease, cidr)],
            AfterCommit {
                reply: Some(reply),
                publish: vec![(address, version)],
                ..Default::default()
            },
        );
        effects.merge(Effects {
            commit: Some(commit),
            ..Default::default()
        });
        self.note_for_partner(address, &mut effects);
        effects
    }

    fn nak(
        &mut self,
        req: &Request,
        arrival: &Arrival,
        link: u32,
        why: &str,
        counter: &'static str,
    ) -> Effects {
        self.stats.inc(counter);
        if !self.config.authoritative {
            self.stats.inc("drop_would_nak_not_authoritative");
            return Effects::default();
        }
        info!(client = %req.client, ciaddr = %req.ciaddr(), requested = ?req.requested_address(), "NAK: {why}");
        let subnet = self.subnets_on(link).next().map(|s| s.id);
        let sid = self.server_id(subnet);
        let bytes = encode_reply(
            req,
            &ReplySpec {
                msg_type: MessageType::Nak,
                yiaddr: Ipv4Addr::UNSPECIFIED,
                server_id: sid,
                lease: None,
                options: &[],
                message: Some(why),
            },
        );
        let mut bytes = bytes;
        if !req.giaddr().is_unspecified() {
            // RFC 2131 §4.3.2: a NAK through a relay asks it to broadcast.
            bytes[dhcp_common::wire::field::FLAGS] |= 0x80;
        }
        self.stats.inc("tx_nak");
        Effects::send(Outgoing {
            bytes,
            dest: Destination::for_reply(req, Ipv4Addr::UNSPECIFIED, true),
            ifindex: arrival.ifindex,
            src: sid,
            msg_type: MessageType::Nak,
        })
    }

    fn withdraw_offer(&mut self, client: &ClientKey, now: u64) -> Effects {
        if let Some(o) = self.offers.remove(client) {
            self.offered.remove(&o.address);
            self.refresh(o.address, now);
        }
        Effects::default()
    }

    fn decline(&mut self, req: &Request, now: u64) -> Effects {
        let Some(address) = req.requested_address() else {
            self.stats.inc("drop_malformed_decline");
            return Effects::default();
        };
        let offered = self
            .offers
            .get(&req.client)
            .is_some_and(|o| o.address == address);
        let held = self
            .bindings
            .get(&address)
            .is_some_and(|b| b.lease.belongs_to(&req.client));
        if !offered && !held {
            self.stats.inc("drop_decline_not_ours");
            return Effects::default();
        }
        warn!(%address, client = %req.client, "DECLINE: the client found the address in use; quarantined for {} s", self.config.decline_probation);
        self.withdraw_offer(&req.client, now);
        self.by_client.remove(&req.client);
        let subnet = self.config.subnet_of(address).map_or(0, |s| s.id);
        let lease = Lease {
            address,
            subnet,
            state: LeaseState::Declined,
            client: None,
            hw: None,
            hostname: None,
            starts: now,
            ends: now,
            held_until: now + u64::from(self.config.decline_probation),
            lease_time: 0,
            failover: Default::default(),
        };
        self.stats.inc("declined");
        self.replace(lease, now)
    }

    fn release(&mut self, req: &Request, now: u64) -> Effects {
        let address = req.ciaddr();
        let ours = self.bindings.get(&address).is_some_and(|b| {
            b.lease.belongs_to(&req.client) && b.lease.state == LeaseState::Active
        });
        if !ours {
            self.stats.inc("drop_release_not_ours");
            return Effects::default();
        }
        self.stats.inc("released");
        self.end_binding(address, LeaseState::Released, now)
    }

    /// Ends the client's binding of `address` now (RELEASE, or a move to another address).
    fn end_binding(&mut self, address: Ipv4Addr, state: LeaseState, now: u64) -> Effects {
        let Some(b) = self.bindings.get(&address) else {
            return Effects::default();
        };
        let mut lease = b.lease.clone();
        lease.state = state;
        lease.ends = lease.ends.min(now);
        // Nothing the fast path could still grant: its entry goes first (below).
        lease.held_until = lease.ends;
        self.replace(lease, now)
    }

    /// Stores a lease that no longer answers renewals; the fast path entry goes first.
    fn replace(&mut self, mut lease: Lease, now: u64) -> Effects {
        let address = lease.address;
        let for_partner = self.failover.is_some() && self.in_pool(address);
        if for_partner {
            lease.failover.tstp = now;
            lease.failover.pending = true;
        }
        self.timers.insert((lease.held_until, address));
        let cidr = self
            .config
            .subnet_of(address)
            .map(|s| s.net.to_string())
            .unwrap_or_default();
        self.record_binding(lease.clone(), NO_OPTION_SET, now);
        Effects {
            remove_from_fast_path: vec![address],
            commit: Some((vec![Write::Lease(lease, cidr)], AfterCommit::default())),
            failover_updates: if for_partner { vec![address] } else { vec![] },
            ..Default::default()
        }
    }

    fn inform(&mut self, req: &Request, arrival: &Arrival, link: u32) -> Effects {
        let subnet = self
            .config
            .subnet_of(req.ciaddr())
            .filter(|s| s.link == link)
            .map(|s| s.id)
            .or_else(|| self.subnets_on(link).next().map(|s| s.id));
        let Some(subnet) = subnet else {
            return Effects::default();
        };
        let reservation = self.reservation_for(req).cloned();
        let options = self.options_for(subnet, reservation.as_ref(), req.parameter_request_list());
        self.stats.inc("tx_inform_ack");
        // RFC 2131 §3.4: an INFORM gets its parameters, no address and no lease time.
        let answer = Answer {
            msg_type: MessageType::Ack,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            lease_time: None,
        };
        Effects::send(self.reply(req, arrival, subnet, answer, &options))
    }

    fn options_for(
        &self,
        subnet: u16,
        reservation: Option<&Reservation>,
        prl: Option<&[u8]>,
    ) -> Vec<u8> {
        let s = self.subnet(subnet);
        match reservation.filter(|r| !r.options.0.is_empty() || r.hostname.is_some()) {
            Some(r) => {
                let mut list = s.options.merged(&r.options);
                if let Some(h) = &r.hostname {
                    list.0.entry(12).or_insert(crate::config::OptionValue {
                        code: 12,
                        value: h.as_bytes().to_vec(),
                        always_send: false,
                    });
                }
                select_options(&list, prl)
            }
            None => select_options(&s.options, prl),
        }
    }

    /// The reservation made for a lease's client, if any.
    fn reservation_of(&self, lease: &Lease) -> Option<&Reservation> {
        if self.reservation_by_client.is_empty() {
            return None;
        }
        let m = match lease.client.as_ref()? {
            ClientKey::Id(id) => ClientMatch::ClientId(id.to_vec()),
            ClientKey::Hw { addr, .. } => {
                ClientMatch::HwAddress(<[u8; 6]>::try_from(&addr[..]).ok()?)
            }
        };
        self.reservation_by_client
            .get(&m)
            .map(|i| &self.config.reservations[*i])
    }

    fn register_option_set(&mut self, lease: &Lease, options: &[u8]) -> u16 {
        if lease.hw.and_then(|h| h.ethernet()).is_none() {
            return NO_OPTION_SET;
        }
        self.option_sets.id(options).unwrap_or_else(|| {
            self.stats.inc("option_sets_full");
            NO_OPTION_SET
        })
    }

    /// The option set a lease loaded from the store gets (its client's request list is
    /// unknown until it talks to us again: everything configured).
    fn option_set_for(&mut self, subnet: u16, lease: &Lease, prl: Option<&[u8]>) -> u16 {
        let reservation = self.reservation_of(lease).cloned();
        let options = self.options_for(subnet, reservation.as_ref(), prl);
        self.register_option_set(lease, &options)
    }

    fn reply(
        &self,
        req: &Request,
        arrival: &Arrival,
        subnet: u16,
        answer: Answer,
        options: &[u8],
    ) -> Outgoing {
        let Answer {
            msg_type,
            yiaddr,
            lease_time,
        } = answer;
        let sid = self.server_id(Some(subnet));
        let lease = lease_time.map(|t| {
            let (t1, t2) = self.subnet(subnet).lease.timers(t);
            (t, t1, t2)
        });
        let bytes = encode_reply(
            req,
            &ReplySpec {
                msg_type,
                yiaddr,
                server_id: sid,
                lease,
                options,
                message: None,
            },
        );
        Outgoing {
            bytes,
            dest: Destination::for_reply(req, yiaddr, false),
            ifindex: arrival.ifindex,
            src: sid,
            msg_type,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Time and the fast path.

    /// Active leases whose end has passed: the daemon makes sure the fast path has not
    /// extended them (and removes their entries) before calling `expire`.
    pub fn expiry_candidates(&self, now: u64) -> Vec<Ipv4Addr> {
        let due: BTreeSet<Ipv4Addr> = self
            .timers
            .range(..=(now, Ipv4Addr::BROADCAST))
            .map(|(_, a)| *a)
            .collect();
        due.into_iter()
            .filter(|a| {
                self.bindings
                    .get(a)
                    .is_some_and(|b| b.lease.state == LeaseState::Active && b.lease.ends <= now)
            })
            .collect()
    }

    /// Expires leases (their fast-path entries are gone), ends offers and quarantines that ran
    /// out, and frees what may be reused.
    pub fn expire(&mut self, addresses: &[Ipv4Addr], now: u64) -> Effects {
        let mut effects = Effects::default();
        self.check_ownership_timer(now);
        for &a in addresses {
            let Some(b) = self.bindings.get(&a) else {
                continue;
            };
            if b.lease.state != LeaseState::Active || b.lease.ends > now {
                continue;
            }
            debug!(address = %a, client = ?b.lease.client, "lease expired");
            self.stats.inc("expired");
            effects.merge(self.end_binding(a, LeaseState::Expired, now));
        }
        // Offers and holds that ran out.
        let due: Vec<(u64, Ipv4Addr)> = self
            .timers
            .range(..=(now, Ipv4Addr::BROADCAST))
            .copied()
            .collect();
        for t in due {
            self.timers.remove(&t);
            let a = t.1;
            if let Some(client) = self.offered.get(&a).cloned()
                && self
                    .offers
                    .get(&client)
                    .is_some_and(|o| o.address == a && o.expires <= now)
            {
                self.offers.remove(&client);
                self.offered.remove(&a);
            }
            // Leases that are still active keep a timer at their end.
            if let Some(b) = self.bindings.get(&a)
                && b.lease.state == LeaseState::Active
                && b.lease.ends <= now
            {
                self.timers.insert((now + 1, a));
            }
            self.refresh(a, now);
        }
        effects
    }

    /// Renewals the fast path granted: the client now holds the lease until `granted_until`.
    /// Returns the writes that raise the horizon where it is getting close.
    pub fn observe_renewals(&mut self, renewals: &[(Ipv4Addr, [u8; 6], u64)], now: u64) -> Effects {
        let mut effects = Effects::default();
        for &(address, chaddr, granted_until) in renewals {
            self.stats.inc("fast_path_renewals");
            let headroom_percent = u64::from(self.config.fast_path_headroom_percent);
            let for_partner = self.failover.is_some() && self.pools.subnet_of(address).is_some();
            let Some(b) = self.bindings.get_mut(&address) else {
                self.stats.inc("fast_path_renewal_unknown");
                continue;
            };
            if b.lease.hw.and_then(|h| h.ethernet()) != Some(chaddr) {
                self.stats.inc("fast_path_renewal_unknown");
                continue;
            }
            b.lease.ends = b.lease.ends.max(granted_until);
            b.lease.failover.cltt = now;
            if for_partner {
                // Every fast-path renewal reaches the partner (BNDUPD), with the potential
                // expiry dhcpd would give it.
                let granted = granted_until.saturating_sub(now);
                b.lease.failover.tstp = now + u64::from(b.lease.lease_time) + granted / 2;
                b.lease.failover.pending = true;
                effects.failover_updates.push(address);
            }
            // Raise the durable hold before renewals run into it (DESIGN.md, the horizon).
            let headroom = u64::from(b.lease.lease_time) * headroom_percent / 100;
            if b.lease.held_until < b.lease.ends + headroom / 2 {
                b.lease.held_until = now + u64::from(b.lease.lease_time) + headroom;
                self.stats.inc("horizon_raises");
            } else {
                continue;
            }
            self.next_version += 1;
            let version = self.next_version;
            let b = self.bindings.get_mut(&address).expect("present");
            b.version = version;
            let lease = b.lease.clone();
            self.timers.insert((lease.ends, address));
            self.timers.insert((lease.held_until, address));
            let cidr = self.subnet(lease.subnet).net.to_string();
            effects.merge(Effects {
                commit: Some((
                    vec![Write::Lease(lease, cidr)],
                    AfterCommit {
                        publish: vec![(address, version)],
                        ..Default::default()
                    },
                )),
                ..Default::default()
            });
        }
        effects
    }

    /// Records that `version` of `address` is durable; returns what the fast path should hold
    /// for it, if it is still that version and the fast path may answer it.
    pub fn committed(&mut self, address: Ipv4Addr, version: u64) -> Option<FastLease> {
        let b = self.bindings.get_mut(&address)?;
        if b.version != version {
            return None;
        }
        b.durable_held_until = b.lease.held_until;
        self.fast_lease(address)
    }

    /// The fast path's view of a lease (for start-up and after commits).
    pub fn fast_lease(&self, address: Ipv4Addr) -> Option<FastLease> {
        let b = self.bindings.get(&address)?;
        let l = &b.lease;
        if l.state != LeaseState::Active || b.option_set == NO_OPTION_SET || !self.config.fast_path
        {
            return None;
        }
        let chaddr = l.hw?.ethernet()?;
        let (renew, rebind) = self.subnet(l.subnet).lease.timers(l.lease_time);
        Some(FastLease {
            chaddr,
            client_id_digest: l
                .client
                .as_ref()
                .and_then(|c| c.client_id())
                .map_or(digest::NO_CLIENT_ID, digest::client_id_digest),
            subnet: l.subnet,
            option_set: b.option_set,
            lease_time: l.lease_time,
            renew,
            rebind,
            ends: l.ends,
            horizon: self
                .failover_horizon(l)
                .map_or(b.durable_held_until, |h| h.min(b.durable_held_until)),
        })
    }

    /// Every lease the fast path should hold (start-up).
    pub fn fast_leases(&self) -> impl Iterator<Item = (Ipv4Addr, FastLease)> + '_ {
        self.bindings
            .keys()
            .filter_map(|a| self.fast_lease(*a).map(|f| (*a, f)))
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.bindings.values().map(|b| &b.lease)
    }

    pub fn lease(&self, a: Ipv4Addr) -> Option<&Lease> {
        self.bindings.get(&a).map(|b| &b.lease)
    }

    /// (subnet, free, total) per subnet.
    pub fn pool_usage(&self) -> Vec<(String, usize, usize)> {
        self.config
            .subnets
            .iter()
            .map(|s| {
                let (free, total) = self.pools.usage(s.id);
                (s.net.to_string(), free, total)
            })
            .collect()
    }
}

/// Does this binding keep the address from being given to someone else?
fn occupies(l: &Lease, now: u64) -> bool {
    match l.state {
        LeaseState::Active => true,
        LeaseState::Declined => l.held_until > now,
        LeaseState::Released | LeaseState::Expired | LeaseState::Reset => l.held_until > now,
        LeaseState::Free | LeaseState::Backup => false,
    }
}

/// Helper for tests and the daemon: an Ethernet client key.
pub fn hw_key(mac: [u8; 6]) -> ClientKey {
    ClientKey::Hw {
        htype: 1,
        addr: mac.into(),
    }
}

#[cfg(test)]
mod tests;
