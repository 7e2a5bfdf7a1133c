//! The protocol logic, without sockets: requests in, effects out.

use std::{net::Ipv4Addr, sync::Arc};

use dhcp_common::wire::{MAGIC_COOKIE, opt};
use dhcproto::v4::MessageType;

use super::*;
use crate::{config, store::Write, wire::Destination};

const CONF: &str = r#"
interfaces = ["eth0"]
server-id = "10.0.0.1"
offer-timeout = 30
decline-probation = 600

[[subnet]]
subnet = "10.0.0.0/24"
interface = "eth0"
pools = [{ start = "10.0.0.10", end = "10.0.0.13" }]
default-lease-time = 600
[subnet.options]
routers = ["10.0.0.1"]

[[subnet]]
subnet = "192.168.50.0/24"
pools = [{ start = "192.168.50.10", end = "192.168.50.200" }]

[[reservation]]
hw-address = "02:00:00:00:00:99"
ip-address = "10.0.0.50"
"#;

const T0: u64 = 1_700_000_000;

fn server_with(text: &str) -> Server {
    let c = Arc::new(config::parse(text, "test").unwrap());
    Server::new(c, Ipv4Addr::new(10, 0, 0, 1), vec![], T0)
}

fn server() -> Server {
    server_with(CONF)
}

fn eth0() -> Arrival {
    Arrival {
        interface: "eth0".into(),
        ifindex: 2,
    }
}

fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, n]
}

struct Msg {
    t: u8,
    secs: u16,
    mac: [u8; 6],
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    options: Vec<(u8, Vec<u8>)>,
}

impl Msg {
    fn new(t: MessageType, mac: [u8; 6]) -> Msg {
        Msg {
            t: u8::from(t),
            secs: 0,
            mac,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            options: vec![],
        }
    }
    fn opt(mut self, code: u8, v: &[u8]) -> Msg {
        self.options.push((code, v.to_vec()));
        self
    }
    fn requested(self, a: Ipv4Addr) -> Msg {
        self.opt(opt::REQUESTED_ADDRESS, &a.octets())
    }
    fn server_id(self, a: Ipv4Addr) -> Msg {
        self.opt(opt::SERVER_ID, &a.octets())
    }
    fn secs(mut self, secs: u16) -> Msg {
        self.secs = secs;
        self
    }
    fn ciaddr(mut self, a: Ipv4Addr) -> Msg {
        self.ciaddr = a;
        self
    }
    fn relayed(mut self, a: Ipv4Addr) -> Msg {
        self.giaddr = a;
        self
    }
    fn build(&self) -> Request {
        let mut b = vec![0u8; 236];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&7u32.to_be_bytes());
        b[8..10].copy_from_slice(&self.secs.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[24..28].copy_from_slice(&self.giaddr.octets());
        b[28..34].copy_from_slice(&self.mac);
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[53, 1, self.t]);
        for (c, v) in &self.options {
            b.push(*c);
            b.push(v.len() as u8);
            b.extend_from_slice(v);
        }
        b.push(255);
        Request::parse(&b).unwrap()
    }
}

fn offer(s: &mut Server, m: Msg, now: u64) -> Option<Ipv4Addr> {
    let e = s.handle(&m.build(), &eth0(), now);
    e.send
        .filter(|o| o.msg_type == MessageType::Offer)
        .map(|o| Request::parse_reply_yiaddr(&o.bytes))
}

/// DISCOVER + REQUEST; returns the committed lease's address after marking it durable.
fn dora(s: &mut Server, m: [u8; 6], now: u64) -> Ipv4Addr {
    let a = offer(s, Msg::new(MessageType::Discover, m), now).expect("an offer");
    let e = s.handle(
        &Msg::new(MessageType::Request, m)
            .requested(a)
            .server_id(Ipv4Addr::new(10, 0, 0, 1))
            .build(),
        &eth0(),
        now,
    );
    let (writes, after) = e.commit.expect("a commit");
    assert!(
        matches!(&writes[0], Write::Lease(l, _) if l.address == a && l.state == LeaseState::Active)
    );
    assert_eq!(after.reply.as_ref().unwrap().msg_type, MessageType::Ack);
    for (addr, v) in after.publish {
        s.committed(addr, v);
    }
    a
}

impl Request {
    fn parse_reply_yiaddr(bytes: &[u8]) -> Ipv4Addr {
        Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19])
    }
}

#[test]
fn dora_binds_and_publishes_to_the_fast_path() {
    let mut s = server();
    let a = dora(&mut s, mac(1), T0);
    assert!(Pool::contains_addr(a));
    let f = s.fast_lease(a).expect("published");
    assert_eq!(f.chaddr, mac(1));
    assert_eq!(f.lease_time, 600);
    assert_eq!((f.renew, f.rebind), (300, 525));
    assert_eq!(f.ends, T0 + 600);
    assert_eq!(f.horizon, T0 + 1200, "stored with 100 % headroom");
    assert_eq!(s.stats.0["ack_selecting"], 1);
}

struct Pool;
impl Pool {
    fn contains_addr(a: Ipv4Addr) -> bool {
        (10..=13).contains(&a.octets()[3]) && a.octets()[..3] == [10, 0, 0]
    }
}

#[test]
fn same_client_gets_same_offer_also_via_two_relays() {
    let mut s = server();
    let relay1 = Ipv4Addr::new(192, 168, 50, 1);
    let relay2 = Ipv4Addr::new(192, 168, 50, 2);
    let d1 = s.handle(
        &Msg::new(MessageType::Discover, mac(1))
            .relayed(relay1)
            .build(),
        &eth0(),
        T0,
    );
    let d2 = s.handle(
        &Msg::new(MessageType::Discover, mac(1))
            .relayed(relay2)
            .build(),
        &eth0(),
        T0,
    );
    let (o1, o2) = (d1.send.unwrap(), d2.send.unwrap());
    assert_eq!(
        Request::parse_reply_yiaddr(&o1.bytes),
        Request::parse_reply_yiaddr(&o2.bytes)
    );
    assert_eq!(o1.dest, Destination::Relay(relay1));
    assert_eq!(o2.dest, Destination::Relay(relay2));
    // A different client gets a different address.
    let d3 = s.handle(
        &Msg::new(MessageType::Discover, mac(2))
            .relayed(relay1)
            .build(),
        &eth0(),
        T0,
    );
    assert_ne!(
        Request::parse_reply_yiaddr(&d3.send.unwrap().bytes),
        Request::parse_reply_yiaddr(&o1.bytes)
    );
}

#[test]
fn reservations_go_only_to_their_client() {
    let mut s = server();
    assert_eq!(
        offer(&mut s, Msg::new(MessageType::Discover, mac(0x99)), T0),
        Some(Ipv4Addr::new(10, 0, 0, 50))
    );
    // Nobody else gets it, even asking for it.
    let other = offer(
        &mut s,
        Msg::new(MessageType::Discover, mac(1)).requested(Ipv4Addr::new(10, 0, 0, 50)),
        T0,
    )
    .unwrap();
    assert_ne!(other, Ipv4Addr::new(10, 0, 0, 50));
    let e = s.handle(
        &Msg::new(MessageType::Request, mac(1))
            .requested(Ipv4Addr::new(10, 0, 0, 50))
            .build(),
        &eth0(),
        T0,
    );
    assert_eq!(e.send.unwrap().msg_type, MessageType::Nak);
}

#[test]
fn requested_address_is_honoured_when_free() {
    let mut s = server();
    let want = Ipv4Addr::new(10, 0, 0, 12);
    assert_eq!(
        offer(
            &mut s,
            Msg::new(MessageType::Discover, mac(1)).requested(want),
            T0
        ),
        Some(want)
    );
}

#[test]
fn previous_address_comes_back() {
    let mut s = server();
    let a = dora(&mut s, mac(1), T0);
    let b = dora(&mut s, mac(2), T0);
    assert_ne!(a, b);
    // Client 1 releases, client 1 comes back: same address.
    s.handle(
        &Msg::new(MessageType::Release, mac(1)).ciaddr(a).build(),
        &eth0(),
        T0 + 1,
    );
    assert_eq!(
        offer(&mut s, Msg::new(MessageType::Discover, mac(1)), T0 + 2),
        Some(a)
    );
}

#[test]
fn init_reboot_and_renew_rules() {
    let mut s = server();
    let a = dora(&mut s, mac(1), T0);
    // Known lease: ACK.
    let e = s.handle(
        &Msg::new(MessageType::Request, mac(1)).requested(a).build(),
        &eth0(),
        T0 + 10,
    );
    assert_eq!(
        e.commit.unwrap().1.reply.unwrap().msg_type,
        MessageType::Ack
    );
    // Someone else's address: NAK.
    let e = s.handle(
        &Msg::new(MessageType::Request, mac(2)).requested(a).build(),
        &eth0(),
        T0 + 10,
    );
    assert_eq!(e.send.unwrap().msg_type, MessageType::Nak);
    // Address of another network: NAK, broadcast.
    let e = s.handle(
        &Msg::new(MessageType::Request, mac(1))
            .requested(Ipv4Addr::new(192, 168, 50, 10))
            .build(),
        &eth0(),
        T0 + 10,
    );
    let nak = e.send.unwrap();
    assert_eq!(
        (nak.msg_type, nak.dest),
        (MessageType::Nak, Destination::Broadcast)
    );
    // Unknown client asking for a free address: NAK (authoritative).
    let e = s.handle(
        &Msg::new(MessageType::Request, mac(3))
            .requested(Ipv4Addr::new(10, 0, 0, 13))
            .build(),
        &eth0(),
        T0 + 10,
    );
    assert_eq!(e.send.unwrap().msg_type, MessageType::Nak);
    // Renewing: unicast ACK to ciaddr, lease extended.
    let e = s.handle(
        &Msg::new(MessageType::Request, mac(1)).ciaddr(a).build(),
        &eth0(),
        T0 + 300,
    );
    let (writes, after) = e.commit.unwrap();
    assert_eq!(after.reply.unwrap().dest, Destination::Unicast(a));
    assert!(matches!(&writes[0], Write::Lease(l, _) if l.ends == T0 + 900));
}

#[test]
fn non_authoritative_stays_silent() {
    let mut s = server_with(&CONF.replace("server-id", "authoritative = false\nserver-id"));
    let e = s.handle(
        &Msg::new(MessageType::Request, mac(3))
            .ciaddr(Ipv4Addr::new(10, 0, 0, 13))
            .build(),
        &eth0(),
        T0,
    );
    assert!(e.send.is_none() && e.commit.is_none());
}

#[test]
fn request_for_another_server_withdraws_the_offer() {
    let mut s = server();
    let a = offer(&mut s, Msg::new(MessageType::Discover, mac(1)), T0).unwrap();
    let e = s.handle(
        &Msg::new(MessageType::Request, mac(1))
            .requested(a)
            .server_id(Ipv4Addr::new(10, 0, 0, 2))
            .build(),
        &eth0(),
        T0,
    );
    assert!(e.send.is_none() && e.commit.is_none());
    // Free again: another client can have it.
    assert_eq!(
        offer(
            &mut s,
            Msg::new(MessageType::Discover, mac(2)).requested(a),
            T0
        ),
        Some(a)
    );
}

#[test]
fn release_removes_from_fast_path_first_and_frees() {
    let mut s = server();
    let a = dora(&mut s, mac(1), T0);
    let e = s.handle(
        &Msg::new(MessageType::Release, mac(1)).ciaddr(a).build(),
        &eth0(),
        T0 + 5,
    );
    assert_eq!(e.remove_from_fast_path, vec![a]);
    let (writes, _) = e.commit.unwrap();
    assert!(
        matches!(&writes[0], Write::Lease(l, _) if l.state == LeaseState::Released && l.held_until == T0 + 5)
    );
    assert!(s.fast_lease(a).is_none());
    assert_eq!(
        offer(
            &mut s,
            Msg::new(MessageType::Discover, mac(2)).requested(a),
            T0 + 6
        ),
        Some(a)
    );
    // A release from someone else is ignored.
    let e = s.handle(
        &Msg::new(MessageType::Release, mac(3)).ciaddr(a).build(),
        &eth0(),
        T0 + 7,
    );
    assert!(e.commit.is_none() && e.remove_from_fast_path.is_empty());
}

#[test]
fn decline_quarantines_the_address() {
    let mut s = server();
    let a = dora(&mut s, mac(1), T0);
    let e = s.handle(
        &Msg::new(MessageType::Decline, mac(1)).requested(a).build(),
        &eth0(),
        T0 + 1,
    );
    assert_eq!(e.remove_from_fast_path, vec![a]);
    for n in 2..=4 {
        assert_ne!(
            offer(
                &mut s,
                Msg::new(MessageType::Discover, mac(n)).requested(a),
                T0 + 2
            ),
            Some(a)
        );
    }
    // After probation (600 s) it is back.
    s.expire(&[], T0 + 700);
    assert_eq!(
        offer(
            &mut s,
            Msg::new(MessageType::Discover, mac(9)).requested(a),
            T0 + 700
        ),
        Some(a)
    );
}

#[test]
fn pool_exhaustion_is_counted() {
    let mut s = server();
    for n in 1..=4 {
        dora(&mut s, mac(n), T0);
    }
    assert_eq!(
        offer(&mut s, Msg::new(MessageType::Discover, mac(5)), T0),
        None
    );
    assert_eq!(s.stats.0["pool_exhausted"], 1);
}

#[test]
fn offers_time_out() {
    let mut s = server();
    for n in 1..=4 {
        offer(&mut s, Msg::new(MessageType::Discover, mac(n)), T0).unwrap();
    }
    assert_eq!(
        offer(&mut s, Msg::new(MessageType::Discover, mac(5)), T0),
        None,
        "all four are offered"
    );
    s.expire(&[], T0 + 31);
    assert!(offer(&mut s, Msg::new(MessageType::Discover, mac(5)), T0 + 31).is_some());
}

#[test]
fn expiry_frees_after_the_fast_path_entry_is_gone() {
    let mut s = server();
    let a = dora(&mut s, mac(1), T0);
    assert!(s.expiry_candidates(T0 + 599).is_empty());
    assert_eq!(s.expiry_candidates(T0 + 600), vec![a]);
    let e = s.expire(&[a], T0 + 600);
    assert_eq!(e.remove_from_fast_path, vec![a]);
    assert!(
        matches!(&e.commit.unwrap().0[0], Write::Lease(l, _) if l.state == LeaseState::Expired)
    );
    assert_eq!(
        offer(
            &mut s,
            Msg::new(MessageType::Discover, mac(2)).requested(a),
            T0 + 601
        ),
        Some(a)
    );
}

#[test]
fn fast_path_renewals_extend_and_raise_the_horizon() {
    let mut s = server();
    let a = dora(&mut s, mac(1), T0);
    // Granted up to T0+900 at T0+300: within headroom/2 of held_until (T0+1200)? 1200 - 900 = 300 = 600/2 → no raise yet.
    let e = s.observe_renewals(&[(a, mac(1), T0 + 900)], T0 + 300);
    assert!(e.commit.is_none());
    assert_eq!(s.lease(a).unwrap().ends, T0 + 900);
    // Later renewal: the hold is raised and republished once durable.
    let e = s.observe_renewals(&[(a, mac(1), T0 + 1000)], T0 + 400);
    let (writes, after) = e.commit.unwrap();
    assert!(matches!(&writes[0], Write::Lease(l, _) if l.held_until == T0 + 400 + 1200));
    assert_eq!(
        s.fast_lease(a).unwrap().horizon,
        T0 + 1200,
        "horizon moves only when durable"
    );
    let (addr, v) = after.publish[0];
    assert_eq!(s.committed(addr, v).unwrap().horizon, T0 + 1600);
    // Expiry follows the renewed end, not the original one.
    assert!(s.expiry_candidates(T0 + 700).is_empty());
    // A renewal for a different hardware address is ignored.
    s.observe_renewals(&[(a, mac(2), T0 + 5000)], T0 + 401);
    assert_eq!(s.lease(a).unwrap().ends, T0 + 1000);
}

#[test]
fn stale_commits_do_not_publish() {
    let mut s = server();
    let a = offer(&mut s, Msg::new(MessageType::Discover, mac(1)), T0).unwrap();
    let e1 = s.handle(
        &Msg::new(MessageType::Request, mac(1))
            .requested(a)
            .server_id(Ipv4Addr::new(10, 0, 0, 1))
            .build(),
        &eth0(),
        T0,
    );
    let (_, after1) = e1.commit.unwrap();
    // The client releases before the first commit completes.
    s.handle(
        &Msg::new(MessageType::Release, mac(1)).ciaddr(a).build(),
        &eth0(),
        T0,
    );
    let (addr, v) = after1.publish[0];
    assert!(
        s.committed(addr, v).is_none(),
        "an outdated version must not reach the fast path"
    );
}

#[test]
fn deny_unknown_clients() {
    let mut s = server_with(&CONF.replace(
        "offer-timeout",
        "deny-unknown-clients = true\noffer-timeout",
    ));
    assert_eq!(
        offer(&mut s, Msg::new(MessageType::Discover, mac(1)), T0),
        None
    );
    assert_eq!(
        offer(&mut s, Msg::new(MessageType::Discover, mac(0x99)), T0),
        Some(Ipv4Addr::new(10, 0, 0, 50))
    );
}

#[test]
fn unknown_relay_is_dropped_with_a_counter() {
    let mut s = server();
    let e = s.handle(
        &Msg::new(MessageType::Discover, mac(1))
            .relayed(Ipv4Addr::new(172, 31, 0, 1))
            .build(),
        &eth0(),
        T0,
    );
    assert!(e.send.is_none());
    assert_eq!(s.stats.0["drop_no_subnet"], 1);
}

#[test]
fn leases_loaded_from_the_store_are_respected() {
    let c = Arc::new(config::parse(CONF, "test").unwrap());
    let held = Lease {
        address: Ipv4Addr::new(10, 0, 0, 10),
        subnet: 0,
        state: LeaseState::Active,
        client: Some(hw_key(mac(7))),
        hw: Some(crate::lease::HwAddr::new(1, &mac(7))),
        hostname: None,
        starts: T0 - 100,
        ends: T0 + 100,
        held_until: T0 + 700,
        lease_time: 600,
        failover: Default::default(),
    };
    let mut s = Server::new(c, Ipv4Addr::new(10, 0, 0, 1), vec![held], T0);
    for n in 1..=3 {
        assert_ne!(
            offer(&mut s, Msg::new(MessageType::Discover, mac(n)), T0),
            Some(Ipv4Addr::new(10, 0, 0, 10))
        );
    }
    assert_eq!(
        s.fast_lease(Ipv4Addr::new(10, 0, 0, 10)).unwrap().horizon,
        T0 + 700
    );
}

#[test]
fn a_million_address_pool_allocates_and_recycles() {
    let text = r#"
interfaces = ["eth0"]
server-id = "10.0.0.1"
[[subnet]]
subnet = "10.0.0.0/11"
interface = "eth0"
pools = [{ start = "10.0.0.10", end = "10.15.66.73" }]
"#;
    let mut s = server_with(text);
    assert_eq!(s.pool_usage()[0].2, 1_000_000);
    let mut seen = std::collections::HashSet::new();
    for n in 0..20_000u32 {
        let b = n.to_be_bytes();
        let a = offer(
            &mut s,
            Msg::new(MessageType::Discover, [2, 9, b[0], b[1], b[2], b[3]]),
            T0,
        )
        .unwrap();
        assert!(seen.insert(a), "{a} offered twice");
    }
    assert_eq!(s.pool_usage()[0].1, 1_000_000 - 20_000);
    // Offers expire and the addresses come back.
    s.expire(&[], T0 + 61);
    assert_eq!(s.pool_usage()[0].1, 1_000_000);
}

// ---------------------------------------------------------------------------------------------
// Failover: ownership, MCLT, load balancing, binding updates.

mod failover {
    use super::*;
    use crate::failover::{config::Role, states::Service};

    /// A 20-address pool, MCLT 60 s, leases of 600 s (longer than MCLT).
    fn fo_conf(role: &str) -> String {
        format!(
            r#"
interfaces = ["eth0"]
server-id = "10.0.0.{}"

[failover]
role = "{role}"
address = "10.9.0.{}"
peer-address = "10.9.0.{}"
mclt = 60

[[subnet]]
subnet = "10.0.0.0/24"
interface = "eth0"
pools = [{{ start = "10.0.0.100", end = "10.0.0.119" }}]
default-lease-time = 600
"#,
            if role == "primary" { 1 } else { 2 },
            if role == "primary" { 1 } else { 2 },
            if role == "primary" { 2 } else { 1 },
        )
    }

    fn view(role: Role, service: Service, stos: u64) -> FailoverView {
        let hba = crate::failover::split_hba(128);
        FailoverView {
            role,
            service,
            stos,
            mclt: 60,
            our_buckets: if role == Role::Primary {
                hba
            } else {
                hba.map(|b| !b)
            },
            lb_max_secs: 3,
        }
    }

    fn pair() -> (Server, Server) {
        let mut p = server_with(&fo_conf("primary"));
        let mut s = server_with(&fo_conf("secondary"));
        p.set_failover(Some(view(Role::Primary, Service::Cooperating, T0)), T0);
        s.set_failover(Some(view(Role::Secondary, Service::Cooperating, T0)), T0);
        (p, s)
    }

    /// A MAC whose RFC 3074 bucket belongs to the primary (`primary`) or the secondary.
    fn mac_of(primary: bool, n: u8) -> [u8; 6] {
        (0..=255u8)
            .map(|i| [2, 0, 0, n, 0, i])
            .find(|m| (dhcp_common::loadbalance::bucket(m) < 128) == primary)
            .unwrap()
    }

    /// Sends every update of `from` the engine would send to `to`, acks them back.
    fn sync(from: &mut Server, to: &mut Server, addresses: &[Ipv4Addr], now: u64) {
        for &a in addresses {
            let u = from.update_for(a).unwrap();
            let (state, tstp) = (u.state, u.tstp);
            to.apply_update(u, true, false, now).expect("accepted");
            from.update_acked(a, state, tstp, now);
        }
    }

    fn dora_on(s: &mut Server, m: [u8; 6], now: u64) -> Option<(Ipv4Addr, u32, Vec<Ipv4Addr>)> {
        let a = offer(s, Msg::new(MessageType::Discover, m), now)?;
        let e = s.handle(
            &Msg::new(MessageType::Request, m)
                .requested(a)
                .server_id(s.server_id(None))
                .build(),
            &eth0(),
            now,
        );
        let updates = e.failover_updates.clone();
        let (_, after) = e.commit.expect("a commit");
        let ack = after.reply.unwrap();
        let lease_time = u32::from_be_bytes(
            raw_option(&ack.bytes, opt::LEASE_TIME)
                .unwrap()
                .try_into()
                .unwrap(),
        );
        for (addr, v) in after.publish {
            s.committed(addr, v);
        }
        Some((a, lease_time, updates))
    }

    fn raw_option(bytes: &[u8], code: u8) -> Option<Vec<u8>> {
        let mut i = 240;
        while i + 1 < bytes.len() {
            let (c, l) = (bytes[i], bytes[i + 1] as usize);
            if c == 255 {
                break;
            }
            if c == code {
                return Some(bytes[i + 2..i + 2 + l].to_vec());
            }
            i += 2 + l;
        }
        None
    }

    #[test]
    fn the_secondary_allocates_only_what_the_primary_gave_it() {
        let (mut p, mut s) = pair();
        // Before balancing, every free address is the primary's.
        assert!(dora_on(&mut s, mac_of(false, 1), T0).is_none());
        assert_eq!(s.stats.0["pool_exhausted"], 1);
        let e = p.rebalance(T0);
        assert_eq!(e.failover_updates.len(), 10, "half of 20");
        sync(&mut p, &mut s, &e.failover_updates, T0);
        assert_eq!(p.pool_split(), (10, 10));
        assert_eq!(s.pool_split(), (10, 10));
        let backup: std::collections::HashSet<Ipv4Addr> =
            e.failover_updates.iter().copied().collect();
        let mut given = std::collections::HashSet::new();
        for n in 0..10 {
            let (a, _, _) =
                dora_on(&mut s, mac_of(false, n), T0).expect("secondary serves its half");
            assert!(backup.contains(&a), "{a} is one of the secondary's");
            assert!(given.insert(a));
            let (b, _, _) = dora_on(&mut p, mac_of(true, n), T0).expect("primary serves its half");
            assert!(!backup.contains(&b), "{b} is one of the primary's");
            assert!(given.insert(b));
        }
        assert!(
            dora_on(&mut s, mac_of(false, 99), T0).is_none(),
            "the secondary's half is used up"
        );
    }

    #[test]
    fn load_balancing_leaves_the_partners_clients_alone() {
        let (mut p, _) = pair();
        let theirs = mac_of(false, 1);
        assert!(offer(&mut p, Msg::new(MessageType::Discover, theirs), T0).is_none());
        assert_eq!(p.stats.0["drop_partner_bucket"], 1);
        assert!(offer(&mut p, Msg::new(MessageType::Discover, mac_of(true, 1)), T0).is_some());
        // A client that has waited (secs > load-balance-max-seconds) is answered by anyone.
        let m = Msg::new(MessageType::Discover, theirs).secs(10).build();
        assert!(p.handle(&m, &eth0(), T0).send.is_some());
    }

    #[test]
    fn mclt_bounds_a_lease_until_the_partner_acknowledges() {
        let (mut p, mut s) = pair();
        let m = mac_of(true, 1);
        let (a, granted, updates) = dora_on(&mut p, m, T0).unwrap();
        assert_eq!(granted, 60, "MCLT, not the 600 s configured");
        assert_eq!(updates, vec![a]);
        let l = p.lease(a).unwrap().clone();
        assert_eq!(l.ends, T0 + 60);
        assert_eq!(l.failover.tstp, T0 + 600 + 30, "desired + half the grant");
        assert!(l.failover.pending);
        // The fast path may not go beyond what the partner knows + MCLT.
        assert_eq!(p.fast_lease(a).unwrap().horizon, T0 + 60);
        sync(&mut p, &mut s, &[a], T0);
        assert!(!p.lease(a).unwrap().failover.pending);
        // Now the durable hold (grant + 100 % headroom of the lease time) is the lower bound,
        // below what the partner knows + MCLT (T0 + 630 + 60).
        assert_eq!(p.fast_lease(a).unwrap().horizon, T0 + 60 + 600);
        // The partner has the binding too, and could renew it.
        let theirs = s.lease(a).unwrap();
        assert_eq!(theirs.state, LeaseState::Active);
        assert_eq!(theirs.hw.unwrap().ethernet(), Some(m));
        // Renewing now: the full lease fits under tsfp + MCLT.
        let e = p.handle(
            &Msg::new(MessageType::Request, m).ciaddr(a).build(),
            &eth0(),
            T0 + 30,
        );
        let ack = e.commit.unwrap().1.reply.unwrap();
        assert_eq!(
            raw_option(&ack.bytes, opt::LEASE_TIME).unwrap(),
            600u32.to_be_bytes()
        );
    }

    #[test]
    fn an_ended_lease_is_free_again_only_once_the_partner_agrees() {
        let (mut p, mut s) = pair();
        let m = mac_of(true, 1);
        let (a, _, _) = dora_on(&mut p, m, T0).unwrap();
        sync(&mut p, &mut s, &[a], T0);
        let e = p.handle(
            &Msg::new(MessageType::Release, m).ciaddr(a).build(),
            &eth0(),
            T0 + 5,
        );
        assert_eq!(e.failover_updates, vec![a]);
        assert_eq!(p.lease(a).unwrap().state, LeaseState::Released);
        assert!(!p.pools.is_free(a), "not reusable before the partner knows");
        sync(&mut p, &mut s, &[a], T0 + 5);
        assert_eq!(p.lease(a).unwrap().state, LeaseState::Free);
        assert!(p.pools.is_free(a));
        assert_eq!(
            s.lease(a).unwrap().state,
            LeaseState::Free,
            "the partner freed it too"
        );
    }

    #[test]
    fn partner_down_takes_the_partners_addresses_only_after_mclt() {
        let (mut p, mut s) = pair();
        let e = p.rebalance(T0);
        sync(&mut p, &mut s, &e.failover_updates, T0);
        // The secondary is alone now: it may give its own addresses at once, the primary's
        // only after MCLT (the primary may have promised some just before it went silent).
        let t = T0 + 1000;
        s.set_failover(Some(view(Role::Secondary, Service::PartnerDown, t)), t);
        let mut got = vec![];
        for n in 0..10 {
            got.push(
                dora_on(&mut s, mac_of(n % 2 == 0, n), t)
                    .expect("own addresses")
                    .0,
            );
        }
        assert!(
            dora_on(&mut s, mac_of(true, 50), t + 30).is_none(),
            "MCLT has not passed"
        );
        s.expire(&[], t + 61);
        let (a, _, _) =
            dora_on(&mut s, mac_of(true, 51), t + 62).expect("the partner's, after MCLT");
        assert!(!got.contains(&a));
    }

    #[test]
    fn binding_updates_follow_dhcpds_transition_rules() {
        let (mut p, mut s) = pair();
        let m = mac_of(true, 1);
        let (a, _, _) = dora_on(&mut p, m, T0).unwrap();
        sync(&mut p, &mut s, &[a], T0);
        // The secondary may not expire an active lease on the primary.
        let mut u = s.update_for(a).unwrap();
        u.state = LeaseState::Expired;
        let r = p.apply_update(u.clone(), true, false, T0 + 1).unwrap_err();
        assert_eq!(r.reason, crate::failover::wire::reject::FATAL_CONFLICT);
        // ... but a release it saw counts.
        u.state = LeaseState::Released;
        p.apply_update(u, true, false, T0 + 1).unwrap();
        assert_eq!(p.lease(a).unwrap().state, LeaseState::Free);
        // Active without a hardware address is refused.
        let mut u = p.update_for(a).unwrap();
        u.state = LeaseState::Active;
        u.hw = None;
        let r = s.apply_update(u, true, false, T0 + 2).unwrap_err();
        assert_eq!(r.reason, crate::failover::wire::reject::MISSING_BINDINFO);
        // Outside the pools: illegal address.
        let mut u = p.update_for(a).unwrap();
        u.address = Ipv4Addr::new(10, 0, 0, 5);
        let r = s.apply_update(u, true, false, T0 + 2).unwrap_err();
        assert_eq!(r.reason, crate::failover::wire::reject::ILLEGAL_IP_ADDR);
    }

    #[test]
    fn nothing_is_answered_while_not_responding() {
        let mut p = server_with(&fo_conf("primary"));
        p.set_failover(
            Some(view(
                Role::Primary,
                Service::NotResponding("recovering"),
                T0,
            )),
            T0,
        );
        assert!(offer(&mut p, Msg::new(MessageType::Discover, mac_of(true, 1)), T0).is_none());
        assert_eq!(p.stats.0["drop_failover_not_responding"], 1);
    }

    #[test]
    fn fast_path_renewals_are_sent_to_the_partner() {
        let (mut p, mut s) = pair();
        let m = mac_of(true, 1);
        let (a, _, _) = dora_on(&mut p, m, T0).unwrap();
        sync(&mut p, &mut s, &[a], T0);
        let e = p.observe_renewals(&[(a, m, T0 + 400)], T0 + 300);
        assert_eq!(e.failover_updates, vec![a]);
        let l = p.lease(a).unwrap();
        assert_eq!(l.failover.tstp, T0 + 300 + 600 + 50);
        assert!(l.failover.pending);
    }
}
