//! Failover end to end: two real servers in network namespaces, real dhclient clients, the
//! failover protocol over its own link. Pairs of xdpdhcp, and xdpdhcp with ISC dhcpd in both
//! roles.
//!
//! Timing (folab::FAST): leases of 60 s, MCLT 10 s, max-response-delay 4 s, so that losing the
//! partner shows within seconds and MCLT passes within a test.

use std::{collections::BTreeMap, net::Ipv4Addr, thread, time::Duration};

use xdpdhcp_tests::{
    folab::{
        self, FAST, FoLab, Timing, mac_for, mac_text, partner_down, server_ip, status, wait_state,
        xdpdhcp_bindings,
    },
    netlab::wait_for,
};

const LONG: Duration = Duration::from_secs(45);

/// Asserts that no address is (or was) bound to two clients.
fn assert_unique(lab: &FoLab, clients: &[usize]) {
    let mut owner: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for &i in clients {
        for a in lab.client_history(i) {
            if let Some(other) = owner.insert(a, i)
                && other != i
            {
                panic!("{a} was bound by client {other} and client {i}");
            }
        }
    }
}

/// Both xdpdhcp up and in NORMAL.
fn xdpdhcp_pair(
    lab: &FoLab,
    t: Timing,
) -> (xdpdhcp_tests::netlab::Daemon, xdpdhcp_tests::netlab::Daemon) {
    let p = lab.start_xdpdhcp(0, t, "").unwrap();
    let s = lab.start_xdpdhcp(1, t, "").unwrap();
    wait_state(&p, "normal", LONG).unwrap();
    wait_state(&s, "normal", LONG).unwrap();
    // The primary gave the secondary its half of the pool.
    let half = u64::from(lab.pool_size() / 2);
    assert!(
        wait_for(Duration::from_secs(10), || status(&s)["pool"]["ours_now"]
            .as_u64()
            == Some(half)),
        "secondary pool: {}",
        status(&s)
    );
    (p, s)
}

#[test]
fn e2e_failover_pair_load_balances_and_both_know_every_lease() {
    let mut lab = FoLab::new(6).unwrap();
    let (p, s) = xdpdhcp_pair(&lab, FAST);
    // Three clients hash to each server.
    for i in 0..6 {
        lab.start_client(i, mac_for(i % 2 == 0, i as u8)).unwrap();
    }
    let mut leases = vec![];
    for i in 0..6 {
        let (address, from) = lab.wait_client(i, LONG).unwrap();
        let expected = server_ip(i % 2);
        assert_eq!(
            from,
            expected,
            "client {i} is in the {} half",
            if i % 2 == 0 {
                "primary's"
            } else {
                "secondary's"
            }
        );
        leases.push((address, mac_text(mac_for(i % 2 == 0, i as u8))));
    }
    assert_unique(&lab, &[0, 1, 2, 3, 4, 5]);
    // Every lease is on both servers (binding updates), with its client.
    for d in [&p, &s] {
        assert!(
            wait_for(Duration::from_secs(10), || {
                let b = xdpdhcp_bindings(d);
                leases.iter().all(|(a, mac)| {
                    b.get(a)
                        .is_some_and(|(state, hw)| state == "active" && hw == mac)
                })
            }),
            "missing leases: {:?}\n{:?}",
            leases,
            xdpdhcp_bindings(d)
        );
    }
    // The partner acknowledged everything; the XDP program dropped the other half's
    // broadcasts (the daemon never saw them).
    assert!(wait_for(
        Duration::from_secs(10),
        || status(&p)["unacked_updates"] == 0 && status(&s)["unacked_updates"] == 0
    ));
    assert!(p.fast("drop_partner_bucket") > 0, "{}", p.stats());
    assert!(s.fast("drop_partner_bucket") > 0, "{}", s.stats());
    assert_eq!(
        p.counter("drop_partner_bucket") + s.counter("drop_partner_bucket"),
        0
    );
    // Renewals go through each server's fast path, and every one reaches the partner.
    assert!(wait_for(LONG, || (0..6).all(|i| lab
        .client_events(i)
        .iter()
        .any(|e| e.starts_with("RENEW")))));
    assert!(p.fast("ack_renewing") > 0 && s.fast("ack_renewing") > 0);
    let ends = |d: &xdpdhcp_tests::netlab::Daemon| -> BTreeMap<String, u64> {
        d.leases()
            .into_iter()
            .filter(|l| l["state"] == "active")
            .map(|l| {
                (
                    l["address"].as_str().unwrap().to_string(),
                    l["ends"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(10), || ends(&p) == ends(&s)),
        "both servers know each renewal: {:?} vs {:?}",
        ends(&p),
        ends(&s)
    );
}

#[test]
fn e2e_failover_partner_down_serves_everyone_without_reusing_the_dead_servers_addresses() {
    let mut lab = FoLab::new(8).unwrap();
    // Eight addresses: four for each server.
    lab.pool_end = Ipv4Addr::new(10, 0, 0, 107);
    let (p, mut s) = xdpdhcp_pair(&lab, FAST);
    // The secondary serves two clients, then dies (once they have renewed: the first lease
    // is only MCLT long, the renewal is the full lease).
    let mut given = vec![];
    for i in [1, 3] {
        lab.start_client(i, mac_for(false, i as u8)).unwrap();
        let (a, from) = lab.wait_client(i, LONG).unwrap();
        assert_eq!(from, server_ip(1));
        given.push(a);
    }
    assert!(wait_for(LONG, || [1, 3].iter().all(|i| lab
        .client_events(*i)
        .iter()
        .any(|e| e.starts_with("RENEW")))));
    assert!(wait_for(
        Duration::from_secs(10),
        || status(&s)["unacked_updates"] == 0
    ));
    s.kill9();
    wait_state(&p, "communications-interrupted", Duration::from_secs(15)).unwrap();
    // Communications-interrupted: the survivor answers everyone, from its own four addresses.
    for i in [0, 2, 4, 5] {
        lab.start_client(i, mac_for(i % 2 == 0, i as u8)).unwrap();
    }
    for i in [0, 2, 4, 5] {
        let (a, from) = lab.wait_client(i, LONG).unwrap();
        assert_eq!(from, server_ip(0));
        assert!(!given.contains(&a));
    }
    // Its own addresses are used up; the partner's are not its to give.
    lab.start_client(6, mac_for(true, 6)).unwrap();
    lab.start_client(7, mac_for(false, 7)).unwrap();
    assert!(wait_for(Duration::from_secs(6), || p
        .counter("pool_exhausted")
        > 0));
    assert!(lab.client_lease(6).is_none() && lab.client_lease(7).is_none());
    // The operator says the partner is down. After MCLT, the partner's two unused addresses
    // are ours; the two it gave are not.
    let said = partner_down(&p).unwrap();
    assert!(said.contains("partner-down"), "{said}");
    let since = std::time::Instant::now();
    wait_state(&p, "partner-down", Duration::from_secs(5)).unwrap();
    for i in [6, 7] {
        let (a, from) = lab
            .wait_client(i, LONG)
            .map_err(|e| anyhow::anyhow!("{e}\nprimary: {:?}", xdpdhcp_bindings(&p)))
            .unwrap();
        assert_eq!(from, server_ip(0));
        assert!(!given.contains(&a), "{a} was given by the dead server");
    }
    assert!(
        since.elapsed() >= Duration::from_secs(u64::from(FAST.mclt)),
        "the partner's addresses were used before MCLT had passed"
    );
    // The dead server's clients still hold their leases, which nobody took.
    for i in [1, 3] {
        assert!(given.contains(&lab.client_lease(i).unwrap().0));
    }
    assert_unique(&lab, &[0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn e2e_failover_partition_longer_than_mclt_heals_without_duplicates() {
    let t = Timing {
        lease_time: 20,
        mclt: 6,
        max_response_delay: 3,
    };
    let mut lab = FoLab::new(6).unwrap();
    let (p, s) = xdpdhcp_pair(&lab, t);
    for i in 0..4 {
        lab.start_client(i, mac_for(i % 2 == 0, i as u8)).unwrap();
    }
    for i in 0..4 {
        lab.wait_client(i, LONG).unwrap();
    }
    let fast_before = p.fast("ack_renewing") + s.fast("ack_renewing");
    lab.partition(true).unwrap();
    wait_state(&p, "communications-interrupted", Duration::from_secs(10)).unwrap();
    wait_state(&s, "communications-interrupted", Duration::from_secs(10)).unwrap();
    // Both serve everyone from their own addresses meanwhile; new clients arrive on both sides.
    lab.start_client(4, mac_for(true, 4)).unwrap();
    lab.start_client(5, mac_for(false, 5)).unwrap();
    lab.wait_client(4, LONG).unwrap();
    lab.wait_client(5, LONG).unwrap();
    // Longer than MCLT, with clients renewing (every 10 s).
    thread::sleep(Duration::from_secs(u64::from(t.mclt) * 3));
    for i in 0..6 {
        assert!(
            lab.client_lease(i).is_some(),
            "client {i} lost its lease during the partition"
        );
    }
    lab.partition(false).unwrap();
    wait_state(&p, "normal", LONG).unwrap();
    wait_state(&s, "normal", LONG).unwrap();
    assert!(wait_for(
        Duration::from_secs(15),
        || status(&p)["unacked_updates"] == 0 && status(&s)["unacked_updates"] == 0
    ));
    // Renewals went through the fast path, before and after.
    thread::sleep(Duration::from_secs(12));
    assert!(p.fast("ack_renewing") + s.fast("ack_renewing") > fast_before);
    assert_unique(&lab, &[0, 1, 2, 3, 4, 5]);
    // Nobody lost a lease: neither server ended one it had not itself seen end.
    for i in 0..6 {
        let events = lab.client_events(i);
        assert!(
            !events
                .iter()
                .any(|e| e.starts_with("EXPIRE") || e.starts_with("FAIL")),
            "client {i}: {events:?}"
        );
        assert_eq!(
            lab.client_history(i).len(),
            1,
            "client {i} changed address: {events:?}"
        );
    }
    // Both servers agree on every client's lease.
    let (bp, bs) = (xdpdhcp_bindings(&p), xdpdhcp_bindings(&s));
    for i in 0..6 {
        let (a, _) = lab.client_lease(i).unwrap();
        assert_eq!(
            bp.get(&a).map(|b| b.0.as_str()),
            Some("active"),
            "{a} on the primary"
        );
        assert_eq!(
            bs.get(&a).map(|b| b.0.as_str()),
            Some("active"),
            "{a} on the secondary"
        );
        assert_eq!(bp[&a].1, bs[&a].1, "{a}: same client on both");
    }
}

#[test]
fn e2e_failover_restart_with_an_empty_store_recovers_from_the_partner() {
    let mut lab = FoLab::new(4).unwrap();
    let (p, mut s) = xdpdhcp_pair(&lab, FAST);
    for i in 0..4 {
        lab.start_client(i, mac_for(i % 2 == 0, i as u8)).unwrap();
    }
    let mut leases = vec![];
    for i in 0..4 {
        leases.push(lab.wait_client(i, LONG).unwrap().0);
    }
    // The first lease is MCLT long; after a renewal the clients hold full leases, which
    // outlast the secondary's recovery.
    assert!(wait_for(LONG, || (0..4).all(|i| lab
        .client_events(i)
        .iter()
        .any(|e| e.starts_with("RENEW")))));
    assert!(wait_for(
        Duration::from_secs(10),
        || status(&p)["unacked_updates"] == 0 && status(&s)["unacked_updates"] == 0
    ));
    // A plain restart (store kept) returns to normal without recovering anything.
    s.restart().unwrap();
    wait_state(&s, "normal", LONG).unwrap();
    wait_state(&p, "normal", LONG).unwrap();
    assert!(
        !s.log_text().contains("I move from startup to recover"),
        "{}",
        s.log_text()
    );
    // The secondary loses its disk.
    s.stop().unwrap();
    let db = s.db.clone();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    s = lab.start_xdpdhcp(1, FAST, "").unwrap();
    // RECOVER: it asks for everything, waits MCLT, and both return to normal.
    assert!(wait_for(Duration::from_secs(10), || status(&s)["my_state"]
        != "startup"));
    wait_state(&s, "normal", LONG).unwrap();
    wait_state(&p, "normal", LONG).unwrap();
    // Every client's lease is on the recovered server (the clients renewed meanwhile with the
    // primary, in partner-down: those updates follow once both are normal).
    assert!(
        wait_for(Duration::from_secs(15), || {
            let b = xdpdhcp_bindings(&s);
            leases
                .iter()
                .all(|a| b.get(a).is_some_and(|x| x.0 == "active"))
        }),
        "recovered: {:?}",
        xdpdhcp_bindings(&s)
    );
    assert!(s.log_text().contains("recover"), "{}", s.log_text());
}

// ---------------------------------------------------------------------------------------------
// With ISC dhcpd as the partner.

fn dhcpd_knows(d: &folab::Dhcpd, leases: &[(Ipv4Addr, String)]) -> bool {
    let b = d.bindings();
    leases.iter().all(|(a, mac)| {
        b.get(a)
            .is_some_and(|(state, hw)| state == "active" && hw == mac)
    })
}

/// `dhcpd_role`: 0 = dhcpd is the primary, 1 = the secondary.
fn with_dhcpd(dhcpd_role: usize) {
    let mut lab = FoLab::new(6).unwrap();
    let ours = 1 - dhcpd_role;
    let d = lab.start_dhcpd(dhcpd_role, FAST, 0).unwrap();
    let x = lab.start_xdpdhcp(ours, FAST, "").unwrap();
    d.wait_log("Both servers normal", LONG).unwrap();
    wait_state(&x, "normal", LONG).unwrap();
    // Clients of both halves.
    for i in 0..4 {
        lab.start_client(i, mac_for(i % 2 == 0, i as u8)).unwrap();
    }
    let mut leases = vec![];
    for i in 0..4 {
        let (a, from) = lab.wait_client(i, LONG).unwrap();
        assert_eq!(from, server_ip(i % 2), "client {i}\n{}", d.log_text());
        leases.push((a, mac_text(mac_for(i % 2 == 0, i as u8))));
    }
    assert_unique(&lab, &[0, 1, 2, 3]);
    // Both databases hold every lease.
    assert!(
        wait_for(Duration::from_secs(15), || dhcpd_knows(&d, &leases)),
        "dhcpd's leases: {:?}\n{}",
        d.bindings(),
        d.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(15), || {
            let b = xdpdhcp_bindings(&x);
            leases
                .iter()
                .all(|(a, mac)| b.get(a).is_some_and(|(st, hw)| st == "active" && hw == mac))
        }),
        "xdpdhcp's leases: {:?}",
        xdpdhcp_bindings(&x)
    );
    assert!(
        !d.log_text().contains("rejected"),
        "dhcpd rejected something:\n{}",
        d.log_text()
    );
}

#[test]
fn e2e_failover_with_dhcpd_as_primary() {
    with_dhcpd(0);
}

#[test]
fn e2e_failover_with_dhcpd_as_secondary() {
    with_dhcpd(1);
}

/// A four-address pool (two for each server), a client of the server that is about to die
/// with a full lease, and the survivor's own two addresses given out: the last client can only
/// be served from the dead server's addresses, after partner-down and MCLT.
struct TakeOver {
    lab: FoLab,
    given: Ipv4Addr,
}

fn take_over_setup(
    dhcpd_role: usize,
    auto_partner_down: u32,
) -> (TakeOver, folab::Dhcpd, xdpdhcp_tests::netlab::Daemon) {
    let mut lab = FoLab::new(4).unwrap();
    lab.pool_end = Ipv4Addr::new(10, 0, 0, 103);
    let ours = 1 - dhcpd_role;
    let d = lab
        .start_dhcpd(dhcpd_role, FAST, auto_partner_down)
        .unwrap();
    let x = lab.start_xdpdhcp(ours, FAST, "").unwrap();
    d.wait_log("Both servers normal", LONG).unwrap();
    wait_state(&x, "normal", LONG).unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || status(&x)["pool"]["ours_now"]
            .as_u64()
            == Some(2)),
        "pool split: {}",
        status(&x)
    );
    (
        TakeOver {
            lab,
            given: Ipv4Addr::UNSPECIFIED,
        },
        d,
        x,
    )
}

/// Client 0 gets a lease from server `victim` and renews it once (full lease time).
fn victims_client(t: &mut TakeOver, victim: usize) {
    t.lab.start_client(0, mac_for(victim == 0, 0)).unwrap();
    let (given, from) = t.lab.wait_client(0, LONG).unwrap();
    assert_eq!(from, server_ip(victim));
    assert!(wait_for(LONG, || t
        .lab
        .client_events(0)
        .iter()
        .any(|e| e.starts_with("RENEW"))));
    t.given = given;
}

/// The survivor serves clients 1 and 2 from its own addresses, and client 3 only once it may
/// take the dead server's: not the one client 0 holds.
fn survivor_serves(
    t: &mut TakeOver,
    survivor: usize,
    exhausted: &dyn Fn() -> bool,
    partner_down: &dyn Fn(),
) {
    for i in [1, 2] {
        t.lab.start_client(i, mac_for(i == 1, i as u8)).unwrap();
    }
    for i in [1, 2] {
        let (a, from) = t.lab.wait_client(i, LONG).unwrap();
        assert_eq!(from, server_ip(survivor));
        assert_ne!(a, t.given);
    }
    t.lab.start_client(3, mac_for(survivor != 0, 3)).unwrap();
    assert!(
        wait_for(Duration::from_secs(8), exhausted),
        "the survivor's own addresses are used up"
    );
    assert!(t.lab.client_lease(3).is_none());
    partner_down();
    let since = std::time::Instant::now();
    let (a, from) = t.lab.wait_client(3, Duration::from_secs(90)).unwrap();
    assert_eq!(from, server_ip(survivor));
    assert_ne!(
        a, t.given,
        "the dead server's client's address was given again"
    );
    assert!(since.elapsed() >= Duration::from_secs(u64::from(FAST.mclt)) - Duration::from_secs(1));
    assert_eq!(
        t.lab.client_lease(0).unwrap().0,
        t.given,
        "client 0 kept its lease"
    );
    assert_unique(&t.lab, &[0, 1, 2, 3]);
}

/// dhcpd dies; xdpdhcp, told by the operator that its partner is down, takes over.
fn dhcpd_dies(dhcpd_role: usize) {
    let ours = 1 - dhcpd_role;
    let (mut t, mut d, x) = take_over_setup(dhcpd_role, 0);
    victims_client(&mut t, dhcpd_role);
    assert!(wait_for(Duration::from_secs(15), || xdpdhcp_bindings(&x)
        .get(&t.given)
        .is_some_and(|b| b.0 == "active")));
    d.kill9();
    wait_state(&x, "communications-interrupted", Duration::from_secs(15)).unwrap();
    survivor_serves(&mut t, ours, &|| x.counter("pool_exhausted") > 0, &|| {
        partner_down(&x).unwrap();
        wait_state(&x, "partner-down", Duration::from_secs(5)).unwrap();
    });
}

/// xdpdhcp dies; dhcpd (automatic partner-down after 5 s) takes over.
fn xdpdhcp_dies(dhcpd_role: usize) {
    let ours = 1 - dhcpd_role;
    let (mut t, d, mut x) = take_over_setup(dhcpd_role, 5);
    victims_client(&mut t, ours);
    assert!(wait_for(Duration::from_secs(15), || d
        .bindings()
        .get(&t.given)
        .is_some_and(|b| b.0 == "active")));
    x.kill9();
    d.wait_log("I move from normal to communications-interrupted", LONG)
        .unwrap();
    survivor_serves(
        &mut t,
        dhcpd_role,
        &|| {
            let log = d.log_text();
            log.contains("peer holds all free leases") || log.contains("no free leases")
        },
        &|| {
            d.wait_log(
                "I move from communications-interrupted to partner-down",
                LONG,
            )
            .unwrap()
        },
    );
}

#[test]
fn e2e_failover_dhcpd_primary_dies_xdpdhcp_takes_over() {
    dhcpd_dies(0);
}

#[test]
fn e2e_failover_dhcpd_secondary_dies_xdpdhcp_takes_over() {
    dhcpd_dies(1);
}

#[test]
fn e2e_failover_xdpdhcp_primary_dies_dhcpd_takes_over() {
    xdpdhcp_dies(1);
}

#[test]
fn e2e_failover_xdpdhcp_secondary_dies_dhcpd_takes_over() {
    xdpdhcp_dies(0);
}
