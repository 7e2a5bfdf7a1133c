//! The failover engine: the connection handshake, keepalives, the state machine, and the flow
//! of binding updates in both directions. Pure logic: the daemon feeds it link events,
//! messages and clock ticks, and performs what it returns (messages to send, links to close,
//! lease store writes, fast-path changes).
//!
//! Updates we send: every lease change the partner must know is queued once (re-queuing an
//! address already queued is free, so a lease renewed ten times while waiting goes out once,
//! with its latest state); at most the partner's `max-unacked-updates` are in flight. The
//! partner acknowledges each (BNDACK, same xid); only then does the fast path's horizon rise
//! (DESIGN.md).
//!
//! Updates we receive are applied to the allocator at once, and acknowledged once the lease
//! store has made them durable.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::Ipv4Addr,
};

use serde_json::{Value, json};
use tracing::{debug, error, info, warn};

use super::{
    config::{FailoverConfig, Role},
    states::{Action, Machine, Service, State},
    wire::{Message, PROTOCOL_VERSION, SERVER_FLAG_STARTUP, msg, reject},
};
use crate::{
    lease::{HwAddr, LeaseState},
    server::{BindingUpdate, Effects, FailoverView, Server},
    store::Write,
};

pub type LinkId = u64;

/// How long a new connection may take to finish CONNECT/CONNECTACK, and how long STARTUP waits
/// for the partner (both as in dhcpd).
const HANDSHAKE_SECS: u64 = 15;
const STARTUP_SECS: u64 = 15;
/// Largest allowed clock difference between the partners (dhcpd: 60 s).
const MAX_SKEW: u64 = 60;
/// The primary re-checks the pool split this often in the normal state.
const BALANCE_EVERY: u64 = 60;

/// Meta keys of the persisted state.
pub const META_KEYS: [&str; 5] = [
    "failover.my_state",
    "failover.my_stos",
    "failover.partner_state",
    "failover.partner_stos",
    "failover.mclt",
];

/// The established connection to the partner.
#[derive(Debug)]
struct Peer {
    id: LinkId,
    max_unacked: u32,
    max_response_delay: u32,
    last_rx: u64,
    last_tx: u64,
    vendor: String,
}

/// An update we sent and the partner has not acknowledged.
#[derive(Clone, Copy, Debug)]
struct Flight {
    address: Ipv4Addr,
    state: LeaseState,
    tstp: u64,
}

/// Counters for `xdpdhcp failover status` and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub bndupd_sent: u64,
    pub bndack_received: u64,
    pub bndupd_rejected_by_partner: u64,
    pub bndupd_received: u64,
    pub bndupd_rejected: u64,
    pub bndack_sent: u64,
    pub connections: u64,
    pub connects_rejected: u64,
}

/// What the daemon must do after an engine call.
#[derive(Debug, Default)]
pub struct Output {
    pub send: Vec<(LinkId, Message)>,
    pub close: Vec<LinkId>,
    /// Lease changes to perform (writes, fast path, further updates).
    pub effects: Effects,
    /// The failover state changed: write it (`Engine::meta`).
    pub persist: bool,
}

pub struct Engine {
    pub cfg: FailoverConfig,
    pub machine: Machine,
    /// The primary's hash bucket assignment: configured on the primary, learned by the
    /// secondary from CONNECT.
    hba: [u8; 32],
    /// Connections whose handshake has not finished, and since when.
    opening: HashMap<LinkId, u64>,
    peer: Option<Peer>,
    next_xid: u32,
    queue: VecDeque<Ipv4Addr>,
    queued: HashSet<Ipv4Addr>,
    in_flight: HashMap<u32, Flight>,
    flight_of: HashMap<Ipv4Addr, u32>,
    /// Answering the partner's UPDREQ/UPDREQALL (its xid): UPDDONE once these are acked.
    answering: Option<(u32, HashSet<Ipv4Addr>)>,
    /// Our own UPDREQ/UPDREQALL waiting for UPDDONE.
    asked: Option<u8>,
    startup_until: u64,
    next_balance: u64,
    pub counters: Counters,
}

impl Engine {
    /// `persisted`: the meta rows of the lease store. A server that never had a partner
    /// starts in RECOVER.
    pub fn new(cfg: FailoverConfig, persisted: &[(String, String)], now: u64) -> Engine {
        let get = |k: &str| {
            persisted
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let mut machine = Machine::new(cfg.role, cfg.mclt, now);
        if let Some(me) = get(META_KEYS[0]).and_then(State::parse) {
            machine.me = me;
            machine.saved = me;
            machine.my_stos = get(META_KEYS[1])
                .and_then(|v| v.parse().ok())
                .unwrap_or(now);
            machine.partner = get(META_KEYS[2])
                .and_then(State::parse)
                .unwrap_or(State::Unknown);
            machine.partner_stos = get(META_KEYS[3]).and_then(|v| v.parse().ok()).unwrap_or(0);
        } else {
            info!("failover: no failover state stored: starting in recover (as a new server)");
        }
        // The secondary uses the MCLT the primary last told it.
        if cfg.role == Role::Secondary
            && let Some(m) = get(META_KEYS[4]).and_then(|v| v.parse().ok())
        {
            machine.mclt = m;
        }
        Engine {
            hba: cfg.hba,
            cfg,
            machine,
            opening: HashMap::new(),
            peer: None,
            next_xid: 1,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: HashMap::new(),
            flight_of: HashMap::new(),
            answering: None,
            asked: None,
            startup_until: now + STARTUP_SECS,
            next_balance: 0,
            counters: Counters::default(),
        }
    }

    /// Enters STARTUP (the daemon calls this once, before serving).
    pub fn start(&mut self, server: &mut Server, now: u64) -> Output {
        let actions = self.machine.startup(now);
        self.startup_until = now + STARTUP_SECS;
        let mut out = Output::default();
        self.perform(actions, server, now, &mut out);
        out
    }

    /// The state the allocator and the fast path follow.
    pub fn view(&self) -> FailoverView {
        let primary_buckets = self.hba;
        let our_buckets = match self.cfg.role {
            Role::Primary => primary_buckets,
            Role::Secondary => primary_buckets.map(|b| !b),
        };
        FailoverView {
            role: self.cfg.role,
            service: self.machine.service(),
            stos: self.machine.my_stos,
            mclt: self.machine.mclt,
            our_buckets,
            lb_max_secs: self.cfg.load_balance_max_seconds,
        }
    }

    pub fn connected(&self) -> bool {
        self.peer.is_some()
    }

    /// Should the daemon try to open a connection to the partner?
    pub fn wants_connection(&self) -> bool {
        self.peer.is_none() && self.opening.is_empty()
    }

    /// The persisted form of the state.
    pub fn meta(&self) -> Vec<Write> {
        let m = &self.machine;
        let values = [
            m.effective().name().to_string(),
            m.my_stos.to_string(),
            m.partner.name().to_string(),
            m.partner_stos.to_string(),
            m.mclt.to_string(),
        ];
        META_KEYS
            .iter()
            .zip(values)
            .map(|(k, v)| Write::Meta(k.to_string(), v))
            .collect()
    }

    fn xid(&mut self) -> u32 {
        let x = self.next_xid;
        // dhcpd treats xid 0 as "no update outstanding".
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        x
    }

    fn message(&mut self, kind: u8, now: u64) -> Message {
        let xid = self.xid();
        Message::new(kind, xid, now as u32)
    }

    /// Queues `m` for the partner.
    fn send_to_peer(&mut self, m: Message, now: u64, out: &mut Output) {
        if let Some(p) = &mut self.peer {
            p.last_tx = now;
            out.send.push((p.id, m));
        }
    }

    fn vendor_class() -> Vec<u8> {
        format!("xdpdhcp-{}", env!("CARGO_PKG_VERSION")).into_bytes()
    }

    // -----------------------------------------------------------------------------------------
    // Links.

    /// A TCP connection to the partner is up (either direction). The primary speaks first.
    pub fn link_up(&mut self, id: LinkId, now: u64) -> Output {
        let mut out = Output::default();
        self.opening.insert(id, now);
        if self.cfg.role == Role::Primary {
            let mut m = self.message(msg::CONNECT, now);
            m.relationship_name = Some(self.cfg.name.clone().into_bytes());
            m.max_unacked = Some(self.cfg.max_unacked_updates);
            m.receive_timer = Some(self.cfg.max_response_delay);
            m.vendor_class = Some(Self::vendor_class());
            m.protocol_version = Some(PROTOCOL_VERSION);
            m.tls_request = Some(0);
            m.mclt = Some(self.machine.mclt);
            m.hba = Some(self.hba.to_vec());
            out.send.push((id, m));
        }
        out
    }

    /// The connection `id` closed.
    pub fn link_down(&mut self, id: LinkId, server: &mut Server, now: u64) -> Output {
        let mut out = Output::default();
        self.opening.remove(&id);
        if self.peer.as_ref().is_some_and(|p| p.id == id) {
            self.lose_peer(server, now, &mut out);
        }
        out
    }

    fn lose_peer(&mut self, server: &mut Server, now: u64, out: &mut Output) {
        let Some(p) = self.peer.take() else {
            return;
        };
        info!("failover: disconnected from the partner");
        out.close.push(p.id);
        // Unacknowledged updates go out again on the next connection.
        let mut lost: Vec<Ipv4Addr> = self.in_flight.drain().map(|(_, f)| f.address).collect();
        lost.sort();
        self.flight_of.clear();
        for a in lost.into_iter().rev() {
            if self.queued.insert(a) {
                self.queue.push_front(a);
            }
        }
        self.answering = None;
        self.asked = None;
        let actions = self.machine.disconnected(now);
        self.perform(actions, server, now, out);
    }

    // -----------------------------------------------------------------------------------------
    // Messages.

    pub fn receive(&mut self, id: LinkId, m: Message, server: &mut Server, now: u64) -> Output {
        let mut out = Output::default();
        let from_peer = self.peer.as_ref().is_some_and(|p| p.id == id);
        if from_peer && let Some(p) = &mut self.peer {
            p.last_rx = now;
        }
        match m.kind {
            msg::CONNECT => self.on_connect(id, m, server, now, &mut out),
            msg::CONNECTACK => self.on_connectack(id, m, now, &mut out),
            msg::DISCONNECT => {
                error!(
                    "failover: partner disconnects: {} {}",
                    m.reject_reason.map_or("", reject::describe),
                    m.text()
                );
                out.close.push(id);
                if from_peer {
                    self.lose_peer(server, now, &mut out);
                }
            }
            _ if !from_peer => {
                debug!(
                    kind = m.name(),
                    "failover: message before the handshake; ignored"
                );
            }
            msg::STATE => self.on_state(m, server, now, &mut out),
            msg::CONTACT => {}
            msg::BNDUPD => self.on_bndupd(m, server, now, &mut out),
            msg::BNDACK => self.on_bndack(m, server, now, &mut out),
            msg::UPDREQ | msg::UPDREQALL => {
                let all = m.kind == msg::UPDREQALL;
                if self.answering.is_some() {
                    info!(
                        "failover: update request while the previous one is still being answered; starting over"
                    );
                }
                let addresses = if all {
                    server.all_updates()
                } else {
                    server.unacked_updates()
                };
                info!(
                    updates = addresses.len(),
                    "failover: update request{} from the partner",
                    if all { " all" } else { "" }
                );
                let set: HashSet<Ipv4Addr> = addresses.iter().copied().collect();
                self.enqueue(&addresses);
                self.answering = Some((m.xid, set));
            }
            msg::UPDDONE => {
                info!("failover: peer update completed");
                self.asked = None;
                let actions = self.machine.update_done(now);
                self.perform(actions, server, now, &mut out);
            }
            msg::POOLREQ => {
                let moved = if self.cfg.role == Role::Primary {
                    self.rebalance(server, now, &mut out)
                } else {
                    0
                };
                info!(moved, "failover: pool request from the partner");
                let mut r = Message::new(msg::POOLRESP, m.xid, now as u32);
                r.addresses_transferred = Some(moved as u32);
                self.send_to_peer(r, now, &mut out);
            }
            msg::POOLRESP => info!(
                addresses = m.addresses_transferred.unwrap_or(0),
                "failover: pool response"
            ),
            other => debug!(kind = other, "failover: unknown message type; ignored"),
        }
        self.pump(server, now, &mut out);
        out
    }

    fn reject_connect(
        &mut self,
        id: LinkId,
        m: &Message,
        reason: u8,
        why: &str,
        now: u64,
        out: &mut Output,
    ) {
        error!(
            "failover: CONNECT from {}: {why}",
            String::from_utf8_lossy(m.relationship_name.as_deref().unwrap_or(b"unknown"))
        );
        self.counters.connects_rejected += 1;
        let mut r = Message::new(msg::CONNECTACK, m.xid, now as u32);
        r.relationship_name = m.relationship_name.clone();
        r.vendor_class = Some(Self::vendor_class());
        r.protocol_version = Some(PROTOCOL_VERSION);
        r.tls_reply = m.tls_request.map(|_| 0);
        r.reject_reason = Some(reason);
        r.message = Some(why.as_bytes().to_vec());
        out.send.push((id, r));
        out.close.push(id);
        self.opening.remove(&id);
    }

    fn skewed(&self, m: &Message, now: u64) -> bool {
        u64::from(m.time).abs_diff(now) > MAX_SKEW
    }

    /// CONNECT (we are the secondary).
    fn on_connect(
        &mut self,
        id: LinkId,
        m: Message,
        server: &mut Server,
        now: u64,
        out: &mut Output,
    ) {
        let why = if self.cfg.role == Role::Primary {
            Some((
                reject::INVALID_PARTNER,
                "both servers are configured as primary",
            ))
        } else if m.relationship_name.as_deref() != Some(self.cfg.name.as_bytes()) {
            Some((
                reject::INVALID_PARTNER,
                "unknown failover relationship name",
            ))
        } else if self.skewed(&m, now) {
            Some((reject::TIMEMISMATCH, "time offset too large"))
        } else if m.hba.as_ref().is_none_or(|h| h.len() != 32) {
            Some((reject::HBA_CONFLICT, "invalid HBA"))
        } else if m.mclt.is_none_or(|v| v == 0) {
            Some((reject::INVALID_MCLT, "no MCLT provided"))
        } else if self.peer.is_some() {
            Some((reject::DUP_CONNECTION, "already connected"))
        } else {
            None
        };
        if let Some((reason, why)) = why {
            self.reject_connect(id, &m, reason, why, now, out);
            return;
        }
        self.hba.copy_from_slice(m.hba.as_deref().expect("checked"));
        let mclt = m.mclt.expect("checked");
        if mclt != self.machine.mclt {
            info!(mclt, "failover: using the primary's MCLT");
            self.machine.mclt = mclt;
            out.persist = true;
        }
        self.establish(id, &m, now);
        let mut ack = Message::new(msg::CONNECTACK, m.xid, now as u32);
        ack.relationship_name = Some(self.cfg.name.clone().into_bytes());
        ack.max_unacked = Some(self.cfg.max_unacked_updates);
        ack.receive_timer = Some(self.cfg.max_response_delay);
        ack.vendor_class = Some(Self::vendor_class());
        ack.protocol_version = Some(PROTOCOL_VERSION);
        ack.tls_reply = m.tls_request.map(|_| 0);
        self.send_to_peer(ack, now, out);
        self.send_state(now, out);
        server.set_failover(Some(self.view()), now);
    }

    /// CONNECTACK (we are the primary).
    fn on_connectack(&mut self, id: LinkId, m: Message, now: u64, out: &mut Output) {
        if let Some(reason) = m.reject_reason {
            if reason == reject::DUP_CONNECTION {
                // Both servers dialled at once; the other connection carries on.
                info!("failover: duplicate connection closed");
            } else {
                error!(
                    "failover: CONNECT to the partner rejected: {} ({})",
                    reject::describe(reason),
                    m.text()
                );
            }
            self.counters.connects_rejected += 1;
            self.opening.remove(&id);
            out.close.push(id);
            return;
        }
        let why = if m.relationship_name.as_deref() != Some(self.cfg.name.as_bytes()) {
            Some((
                reject::INVALID_PARTNER,
                "remote failover relationship name does not match",
            ))
        } else if self.peer.is_some() {
            Some((reject::DUP_CONNECTION, "already connected"))
        } else if self.skewed(&m, now) {
            Some((reject::TIMEMISMATCH, "time offset too large"))
        } else {
            None
        };
        if let Some((reason, why)) = why {
            error!("failover: CONNECTACK from the partner: {why}");
            let mut d = Message::new(msg::DISCONNECT, self.xid(), now as u32);
            d.reject_reason = Some(reason);
            d.message = Some(why.as_bytes().to_vec());
            out.send.push((id, d));
            out.close.push(id);
            self.opening.remove(&id);
            return;
        }
        self.establish(id, &m, now);
        self.send_state(now, out);
    }

    fn establish(&mut self, id: LinkId, m: &Message, now: u64) {
        self.opening.remove(&id);
        let vendor =
            String::from_utf8_lossy(m.vendor_class.as_deref().unwrap_or_default()).into_owned();
        info!(partner = %vendor, "failover: connected to the partner");
        self.counters.connections += 1;
        self.peer = Some(Peer {
            id,
            max_unacked: m.max_unacked.unwrap_or(super::DEFAULT_MAX_UNACKED).max(1),
            max_response_delay: m
                .receive_timer
                .unwrap_or(super::DEFAULT_MAX_RESPONSE_DELAY)
                .max(3),
            last_rx: now,
            last_tx: now,
            vendor,
        });
    }

    fn send_state(&mut self, now: u64, out: &mut Output) {
        let mut m = self.message(msg::STATE, now);
        m.server_state = Some(self.machine.effective().code());
        m.server_flags = Some(if self.machine.me == State::Startup {
            SERVER_FLAG_STARTUP
        } else {
            0
        });
        m.stos = Some(self.machine.my_stos as u32);
        self.send_to_peer(m, now, out);
    }

    fn on_state(&mut self, m: Message, server: &mut Server, now: u64, out: &mut Output) {
        let Some(state) = m.server_state.and_then(State::from_code) else {
            error!(code = ?m.server_state, "failover: partner sent an invalid state");
            let actions = self.machine.set(State::Shutdown, true, now);
            self.perform(actions, server, now, out);
            return;
        };
        let starting = m.server_flags.unwrap_or(0) & SERVER_FLAG_STARTUP != 0;
        let actions = self
            .machine
            .peer_state(state, u64::from(m.stos.unwrap_or(0)), starting, now);
        self.perform(actions, server, now, out);
    }

    fn on_bndupd(&mut self, m: Message, server: &mut Server, now: u64, out: &mut Output) {
        self.counters.bndupd_received += 1;
        let address = m.assigned_address;
        let update = (|| -> Result<BindingUpdate, (u8, &'static str)> {
            let (Some(address), Some(status)) = (m.assigned_address, m.binding_status) else {
                return Err((
                    reject::MISSING_BINDINFO,
                    "binding update lacks required options",
                ));
            };
            let state = LeaseState::from_wire(status)
                .ok_or((reject::MISC_REJECT, "unknown binding status"))?;
            let hw = match m.chaddr.as_deref() {
                Some([]) | None => None,
                Some(c) if c.len() > 17 => return Err((reject::MISC_REJECT, "chaddr too long")),
                Some(c) => Some(HwAddr::new(c[0], &c[1..])),
            };
            Ok(BindingUpdate {
                address,
                state,
                client_id: m.client_id.clone(),
                hw,
                starts: u64::from(m.stos.unwrap_or(0)),
                ends: u64::from(m.lease_expiry.unwrap_or(0)),
                tstp: u64::from(m.potential_expiry.unwrap_or(0)),
                cltt: u64::from(m.cltt.unwrap_or(0)),
            })
        })();
        let result = update.map_err(|(reason, why)| crate::server::Rejected {
            reason,
            message: why.into(),
        });
        let result = result.and_then(|u| {
            let ours = self.flight_of.contains_key(&u.address);
            let normal = self.machine.me == State::Normal;
            let r = server.apply_update(u.clone(), normal, ours, now);
            if r.is_ok() && ours {
                // The partner's update wins: forget ours (its ack, if any, is ignored), which
                // also answers an update request for this address.
                if let Some(xid) = self.flight_of.remove(&u.address) {
                    self.in_flight.remove(&xid);
                }
                if let Some((_, waiting)) = &mut self.answering {
                    waiting.remove(&u.address);
                }
            }
            r
        });
        match result {
            Ok(mut effects) => {
                let address = address.expect("validated");
                match &mut effects.commit {
                    Some((_, after)) => after.failover_acks.push((m.xid, address)),
                    None => {
                        effects.commit = Some((
                            vec![],
                            crate::server::AfterCommit {
                                failover_acks: vec![(m.xid, address)],
                                ..Default::default()
                            },
                        ))
                    }
                }
                out.effects.merge(effects);
            }
            Err(r) => {
                self.counters.bndupd_rejected += 1;
                warn!(
                    address = ?address,
                    "failover: rejecting the partner's binding update: {}",
                    r.message
                );
                let mut ack = Message::new(msg::BNDACK, m.xid, now as u32);
                ack.assigned_address = address.or(Some(Ipv4Addr::UNSPECIFIED));
                ack.reject_reason = Some(r.reason);
                ack.message = Some(r.message.into_bytes());
                self.send_to_peer(ack, now, out);
            }
        }
    }

    /// The BNDACK for a partner's update, once our copy is durable.
    pub fn ack_committed(&mut self, xid: u32, address: Ipv4Addr, now: u64) -> Output {
        let mut out = Output::default();
        self.counters.bndack_sent += 1;
        let mut ack = Message::new(msg::BNDACK, xid, now as u32);
        ack.assigned_address = Some(address);
        self.send_to_peer(ack, now, &mut out);
        out
    }

    fn on_bndack(&mut self, m: Message, server: &mut Server, now: u64, out: &mut Output) {
        let Some(f) = self.in_flight.remove(&m.xid) else {
            debug!(
                xid = m.xid,
                "failover: acknowledgement of an update we no longer track"
            );
            if let (Some((_, waiting)), Some(a)) = (&mut self.answering, m.assigned_address) {
                waiting.remove(&a);
            }
            return;
        };
        self.counters.bndack_received += 1;
        if self.flight_of.get(&f.address) == Some(&m.xid) {
            self.flight_of.remove(&f.address);
        }
        if let Some((_, waiting)) = &mut self.answering {
            waiting.remove(&f.address);
        }
        if let Some(reason) = m.reject_reason {
            self.counters.bndupd_rejected_by_partner += 1;
            // After a partition the partner may know better (a lease it renewed that we saw
            // expire): it tells us with its own update.
            warn!(
                address = %f.address,
                "failover: bind update rejected by the partner: {} ({})",
                reject::describe(reason),
                m.text()
            );
            return;
        }
        out.effects
            .merge(server.update_acked(f.address, f.state, f.tstp, now));
    }

    // -----------------------------------------------------------------------------------------
    // Outgoing updates.

    fn enqueue(&mut self, addresses: &[Ipv4Addr]) {
        for &a in addresses {
            if self.queued.insert(a) {
                self.queue.push_back(a);
            }
        }
    }

    /// Leases changed (the allocator's `failover_updates`): tell the partner.
    pub fn updates(&mut self, addresses: &[Ipv4Addr], server: &mut Server, now: u64) -> Output {
        let mut out = Output::default();
        self.enqueue(addresses);
        self.pump(server, now, &mut out);
        out
    }

    /// Sends queued updates while the partner's window allows, and UPDDONE when an update
    /// request has been answered.
    fn pump(&mut self, server: &mut Server, now: u64, out: &mut Output) {
        let Some(window) = self.peer.as_ref().map(|p| p.max_unacked as usize) else {
            return;
        };
        // Updates flow only in states where the partner takes them (dhcpd sends in every
        // connected state; so do we, once the handshake is done).
        while self.in_flight.len() < window {
            let Some(address) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&address);
            let Some(u) = server.update_for(address) else {
                if let Some((_, waiting)) = &mut self.answering {
                    waiting.remove(&address);
                }
                continue;
            };
            let mut m = self.message(msg::BNDUPD, now);
            m.assigned_address = Some(address);
            m.binding_status = Some(u.state.to_wire());
            m.client_id = u.client_id;
            m.chaddr = u.hw.map(|h| {
                let mut c = vec![h.htype];
                c.extend_from_slice(h.as_slice());
                c
            });
            m.lease_expiry = Some(u.ends as u32);
            m.potential_expiry = Some(u.tstp as u32);
            m.stos = Some(u.starts as u32);
            m.cltt = (u.cltt != 0).then_some(u.cltt as u32);
            self.in_flight.insert(
                m.xid,
                Flight {
                    address,
                    state: u.state,
                    tstp: u.tstp,
                },
            );
            self.flight_of.insert(address, m.xid);
            self.counters.bndupd_sent += 1;
            self.send_to_peer(m, now, out);
        }
        if let Some((xid, waiting)) = &self.answering
            && waiting.is_empty()
        {
            let xid = *xid;
            self.answering = None;
            info!("failover: update request answered: sending UPDDONE");
            let done = Message::new(msg::UPDDONE, xid, now as u32);
            self.send_to_peer(done, now, out);
        }
    }

    // -----------------------------------------------------------------------------------------
    // State changes and time.

    fn perform(&mut self, actions: Vec<Action>, server: &mut Server, now: u64, out: &mut Output) {
        server.set_failover(Some(self.view()), now);
        for action in actions {
            match action {
                Action::Persist => out.persist = true,
                Action::SendState => self.send_state(now, out),
                Action::EnterNormal => {
                    self.next_balance = now + BALANCE_EVERY;
                    if self.cfg.role == Role::Primary {
                        self.rebalance(server, now, out);
                    }
                    let pending = server.unacked_updates();
                    if !pending.is_empty() {
                        info!(
                            updates = pending.len(),
                            "failover: sending updates to the partner"
                        );
                    }
                    self.enqueue(&pending);
                }
                Action::RequestUpdates => {
                    if self.peer.is_some() && self.asked.is_none() {
                        info!("failover: sending update request");
                        let m = self.message(msg::UPDREQ, now);
                        self.send_to_peer(m, now, out);
                        self.asked = Some(msg::UPDREQ);
                    }
                }
                Action::RequestAllUpdates => {
                    if self.peer.is_some() && self.asked != Some(msg::UPDREQALL) {
                        info!("failover: sending update request all");
                        let m = self.message(msg::UPDREQALL, now);
                        self.send_to_peer(m, now, out);
                        self.asked = Some(msg::UPDREQALL);
                    }
                }
                Action::OwnershipChanged => {}
            }
        }
    }

    /// Pool balancing (primary): the moves are stored through `out` and queued for the
    /// partner. Returns how many addresses moved.
    fn rebalance(&mut self, server: &mut Server, now: u64, out: &mut Output) -> usize {
        let mut effects = server.rebalance(now);
        let moved = std::mem::take(&mut effects.failover_updates);
        out.effects.merge(effects);
        self.enqueue(&moved);
        moved.len()
    }

    /// Keepalives, timeouts, timed transitions, pool balancing. Call about once a second.
    pub fn tick(&mut self, server: &mut Server, now: u64) -> Output {
        let mut out = Output::default();
        if self.machine.me == State::Startup && now >= self.startup_until {
            info!("failover: no word from the partner during start-up");
            let actions = self.machine.disconnected(now);
            self.perform(actions, server, now, &mut out);
        }
        let stale: Vec<LinkId> = self
            .opening
            .iter()
            .filter(|(_, since)| now >= **since + HANDSHAKE_SECS)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            info!("failover: link startup timeout");
            self.opening.remove(&id);
            out.close.push(id);
        }
        if let Some(p) = &self.peer {
            if now > p.last_rx + u64::from(self.cfg.max_response_delay) {
                error!("failover: timeout waiting for the partner");
                self.lose_peer(server, now, &mut out);
            } else if now >= p.last_tx + u64::from((p.max_response_delay / 3).max(1)) {
                let m = self.message(msg::CONTACT, now);
                self.send_to_peer(m, now, &mut out);
            }
        }
        let actions = self
            .machine
            .tick(self.peer.is_some(), self.cfg.auto_partner_down, now);
        if !actions.is_empty() {
            self.perform(actions, server, now, &mut out);
        }
        if self.machine.me == State::Normal && self.peer.is_some() && now >= self.next_balance {
            self.next_balance = now + BALANCE_EVERY;
            if self.cfg.role == Role::Primary {
                self.rebalance(server, now, &mut out);
            } else if server.pool_split().0 == 0 {
                // Nothing left of our own to give: ask the primary for a share (dhcpd does
                // the same when its side of a pool runs dry).
                info!("failover: no free addresses of our own: sending a pool request");
                let m = self.message(msg::POOLREQ, now);
                self.send_to_peer(m, now, &mut out);
            }
        }
        self.pump(server, now, &mut out);
        out
    }

    /// `xdpdhcp failover partner-down`: the operator vouches that the partner is down.
    pub fn partner_down(&mut self, server: &mut Server, now: u64) -> Result<Output, String> {
        if self.peer.is_some() {
            return Err(
                "the partner is connected: partner-down is for a partner that is down".into(),
            );
        }
        match self.machine.effective() {
            State::PartnerDown => return Err("already in partner-down".into()),
            State::CommunicationsInterrupted | State::ResolutionInterrupted | State::Normal => {}
            other => {
                return Err(format!(
                    "cannot enter partner-down from {other}: only from communications-interrupted or resolution-interrupted"
                ));
            }
        }
        warn!("failover: operator says the partner is down: entering partner-down");
        let mut out = Output::default();
        let actions = self.machine.set(State::PartnerDown, false, now);
        self.perform(actions, server, now, &mut out);
        Ok(out)
    }

    /// `xdpdhcp failover status`.
    pub fn status(&self, server: &Server, now: u64) -> Value {
        let m = &self.machine;
        let (free, backup) = server.pool_split();
        let view = self.view();
        json!({
            "name": self.cfg.name,
            "role": self.cfg.role.name(),
            "my_state": m.effective().name(),
            "starting_up": m.me == State::Startup,
            "my_state_since": m.my_stos,
            "partner_state": m.partner.name(),
            "partner_state_since": m.partner_stos,
            "service": view.service.describe(),
            "connected": self.peer.is_some(),
            "partner": self.peer.as_ref().map(|p| json!({
                "vendor": p.vendor,
                "max_unacked_updates": p.max_unacked,
                "max_response_delay": p.max_response_delay,
                "last_heard_s_ago": now.saturating_sub(p.last_rx),
            })),
            "mclt": m.mclt,
            "unacked_updates": self.in_flight.len(),
            "queued_updates": self.queue.len(),
            "pool": {
                "free_for_primary": if self.cfg.role == Role::Primary { free } else { 0 },
                "free_for_secondary": if self.cfg.role == Role::Secondary { free } else { backup },
                "ours_now": free,
            },
            "load_balance": {
                "our_buckets": view.our_buckets.iter().map(|b| b.count_ones()).sum::<u32>(),
                "max_seconds": view.lb_max_secs,
                "active": view.service == Service::Cooperating,
            },
            "counters": {
                "bndupd_sent": self.counters.bndupd_sent,
                "bndack_received": self.counters.bndack_received,
                "bndupd_rejected_by_partner": self.counters.bndupd_rejected_by_partner,
                "bndupd_received": self.counters.bndupd_received,
                "bndupd_rejected": self.counters.bndupd_rejected,
                "bndack_sent": self.counters.bndack_sent,
                "connections": self.counters.connections,
                "connects_rejected": self.counters.connects_rejected,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Arc};

    use super::*;
    use crate::{config, failover::wire::Message};

    const T0: u64 = 1_700_000_000;

    fn config(role: &str, name: &str) -> crate::config::Config {
        let (me, peer) = if role == "primary" { (1, 2) } else { (2, 1) };
        config::parse(
            &format!(
                r#"
interfaces = ["eth0"]
server-id = "10.0.0.{me}"
[failover]
name = "{name}"
role = "{role}"
address = "10.9.0.{me}"
peer-address = "10.9.0.{peer}"
mclt = 60
max-unacked-updates = 4
[[subnet]]
subnet = "10.0.0.0/24"
interface = "eth0"
pools = [{{ start = "10.0.0.100", end = "10.0.0.119" }}]
default-lease-time = 600
"#
            ),
            "test",
        )
        .unwrap()
    }

    struct Side {
        engine: Engine,
        server: Server,
        link: Option<LinkId>,
    }

    /// Two engines and their allocators joined by an in-memory connection; commits are
    /// durable at once.
    struct Net {
        sides: [Side; 2],
        wire: VecDeque<(usize, Message)>,
        now: u64,
    }

    impl Net {
        fn new(primary_name: &str, secondary_name: &str) -> Net {
            let side = |role: &str, name: &str| {
                let c = Arc::new(config(role, name));
                let mut server = Server::new(c.clone(), c.server_id.unwrap(), vec![], T0);
                let mut engine = Engine::new(c.failover.clone().unwrap(), &[], T0);
                engine.start(&mut server, T0);
                Side {
                    engine,
                    server,
                    link: None,
                }
            };
            Net {
                sides: [
                    side("primary", primary_name),
                    side("secondary", secondary_name),
                ],
                wire: VecDeque::new(),
                now: T0,
            }
        }

        fn absorb(&mut self, who: usize, out: Output) {
            for (link, m) in out.send {
                if self.sides[who].link == Some(link) {
                    self.wire.push_back((1 - who, m));
                }
            }
            for link in out.close {
                if self.sides[who].link == Some(link) {
                    self.disconnect();
                    return;
                }
            }
            let now = self.now;
            let mut effects = out.effects;
            let updates = std::mem::take(&mut effects.failover_updates);
            if let Some((_, after)) = effects.commit {
                for (a, v) in after.publish {
                    self.sides[who].server.committed(a, v);
                }
                for (xid, a) in after.failover_acks {
                    let o = self.sides[who].engine.ack_committed(xid, a, now);
                    self.absorb(who, o);
                }
            }
            if !updates.is_empty() {
                let side = &mut self.sides[who];
                let o = side.engine.updates(&updates, &mut side.server, now);
                self.absorb(who, o);
            }
        }

        fn connect(&mut self) {
            for who in 0..2 {
                self.sides[who].link = Some(7);
                let o = self.sides[who].engine.link_up(7, self.now);
                self.absorb(who, o);
            }
            self.run();
        }

        fn disconnect(&mut self) {
            self.wire.clear();
            for who in 0..2 {
                if let Some(link) = self.sides[who].link.take() {
                    let side = &mut self.sides[who];
                    let o = side.engine.link_down(link, &mut side.server, self.now);
                    self.absorb(who, o);
                }
            }
        }

        fn run(&mut self) {
            while let Some((to, m)) = self.wire.pop_front() {
                let Some(link) = self.sides[to].link else {
                    continue;
                };
                let side = &mut self.sides[to];
                let o = side.engine.receive(link, m, &mut side.server, self.now);
                self.absorb(to, o);
            }
        }

        fn tick(&mut self, secs: u64) {
            for _ in 0..secs {
                self.now += 1;
                for who in 0..2 {
                    let side = &mut self.sides[who];
                    let o = side.engine.tick(&mut side.server, self.now);
                    self.absorb(who, o);
                }
                self.run();
            }
        }

        fn state(&self, who: usize) -> State {
            self.sides[who].engine.machine.me
        }
    }

    #[test]
    fn a_new_pair_reaches_normal_and_splits_the_pool() {
        let mut n = Net::new("pair", "pair");
        n.connect();
        assert_eq!((n.state(0), n.state(1)), (State::Normal, State::Normal));
        assert_eq!(n.sides[0].server.pool_split(), (10, 10));
        assert_eq!(
            n.sides[1].server.pool_split().0,
            10,
            "the secondary's own half"
        );
        // Windows of 4 unacknowledged updates were respected and everything was acked.
        for s in &n.sides {
            assert_eq!(s.engine.in_flight.len(), 0);
            assert_eq!(s.engine.queue.len(), 0);
        }
        assert!(n.sides[0].engine.counters.bndack_received >= 10);
    }

    #[test]
    fn handshake_rejections() {
        // Different relationship names.
        let mut n = Net::new("one", "two");
        n.connect();
        assert!(!n.sides[0].engine.connected());
        assert_eq!(n.sides[1].engine.counters.connects_rejected, 1);
        // A CONNECT from a clock two minutes off is refused.
        let mut n = Net::new("x", "x");
        n.sides[1].link = Some(7);
        n.sides[1].engine.link_up(7, T0);
        let mut m = Message::new(msg::CONNECT, 1, (T0 + 120) as u32);
        m.relationship_name = Some(b"x".to_vec());
        m.hba = Some(vec![0xff; 32]);
        m.mclt = Some(60);
        let side = &mut n.sides[1];
        let out = side.engine.receive(7, m.clone(), &mut side.server, T0);
        assert_eq!(out.send[0].1.reject_reason, Some(reject::TIMEMISMATCH));
        assert_eq!(out.close, vec![7]);
        // Without a hash bucket assignment.
        m.time = T0 as u32;
        m.hba = None;
        let out = side.engine.receive(7, m, &mut side.server, T0);
        assert_eq!(out.send[0].1.reject_reason, Some(reject::HBA_CONFLICT));
    }

    #[test]
    fn losing_the_link_interrupts_and_updates_are_resent() {
        let mut n = Net::new("p", "p");
        n.connect();
        n.disconnect();
        assert_eq!(n.state(0), State::CommunicationsInterrupted);
        assert_eq!(n.state(1), State::CommunicationsInterrupted);
        // A lease changes while apart: it goes to the partner once connected again.
        let a = Ipv4Addr::new(10, 0, 0, 105);
        let e = {
            let s = &mut n.sides[0].server;
            s.rebalance(n.now)
        };
        assert!(e.failover_updates.is_empty(), "no balancing outside normal");
        let p = &mut n.sides[0];
        let o = p.engine.updates(&[a], &mut p.server, n.now);
        assert!(o.send.is_empty(), "nothing sent without a link");
        assert_eq!(p.engine.queue.len(), 1);
        n.connect();
        assert_eq!((n.state(0), n.state(1)), (State::Normal, State::Normal));
        assert!(n.sides[0].engine.queue.is_empty());
    }

    #[test]
    fn silence_longer_than_max_response_delay_drops_the_link_and_contact_keeps_it() {
        let mut n = Net::new("k", "k");
        n.connect();
        // Keepalives flow: 2 minutes pass without any other message.
        n.tick(120);
        assert!(n.sides[0].engine.connected() && n.sides[1].engine.connected());
        // The partner goes silent (its messages are lost).
        let link = n.sides[1].link.take();
        n.tick(61);
        assert!(!n.sides[0].engine.connected());
        assert_eq!(n.state(0), State::CommunicationsInterrupted);
        let _ = link;
    }

    #[test]
    fn both_in_partner_down_resolve_the_conflict_and_return_to_normal() {
        let mut n = Net::new("c", "c");
        n.connect();
        n.disconnect();
        for who in 0..2 {
            let side = &mut n.sides[who];
            side.engine.partner_down(&mut side.server, n.now).unwrap();
        }
        // Each allocated while alone; now they meet again.
        n.connect();
        assert_eq!((n.state(0), n.state(1)), (State::Normal, State::Normal));
        for s in &n.sides {
            assert!(s.engine.asked.is_none() && s.engine.answering.is_none());
        }
    }

    #[test]
    fn partner_down_is_refused_while_connected() {
        let mut n = Net::new("d", "d");
        n.connect();
        let side = &mut n.sides[0];
        assert!(side.engine.partner_down(&mut side.server, T0).is_err());
        n.disconnect();
        let side = &mut n.sides[0];
        assert!(side.engine.partner_down(&mut side.server, T0).is_ok());
        assert_eq!(side.engine.machine.me, State::PartnerDown);
    }

    #[test]
    fn state_survives_a_restart() {
        let mut n = Net::new("r", "r");
        n.connect();
        let meta: Vec<(String, String)> = n.sides[0]
            .engine
            .meta()
            .into_iter()
            .map(|w| match w {
                Write::Meta(k, v) => (k, v),
                _ => unreachable!(),
            })
            .collect();
        let e = Engine::new(n.sides[0].engine.cfg.clone(), &meta, T0 + 5);
        assert_eq!(e.machine.me, State::Normal);
        assert_eq!(e.machine.partner, State::Normal);
    }
}
