//! The XDP program on crafted frames (BPF_PROG_TEST_RUN): every branch, exact output bytes,
//! ring buffer events and counters. Needs root (CAP_BPF, CAP_NET_ADMIN).

use std::net::Ipv4Addr;

use dhcp_common::{
    CONFIG_FLAG_FAST_PATH, CONFIG_FLAG_LOAD_BALANCE, Counter, FastPathConfig,
    LEASE_FLAG_SLOW_PATH_ONLY, loadbalance, renewal_kind,
    wire::{FLAG_BROADCAST, msg, opt},
};
use dhcp_user::{clock, fastpath::LoadOptions};
use dhcproto::v4::{DhcpOption, MessageType, Opcode};
use xdpdhcp_tests::{
    frames::{BROADCAST_MAC, Bootp, Reply, TPID_8021AD, TPID_8021Q, Wire},
    xdp::*,
};

const CLIENT_MAC: [u8; 6] = [0xaa, 0xbb, 0xcc, 0x00, 0x00, 0x01];
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
const RELAYED_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const VLAN_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 7);
const QINQ_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 7);
const OTHER_MAC: [u8; 6] = [0xaa, 0xbb, 0xcc, 0x00, 0x00, 0x02];

fn lab_with(leases: &[Lease]) -> XdpLab {
    let mut lab = XdpLab::new().expect("loading the XDP program (run as root)");
    for lease in leases {
        lab.add(lease).unwrap();
    }
    lab
}

fn direct_lease() -> Lease {
    Lease::new(CLIENT_IP, CLIENT_MAC, SUBNET_DIRECT)
}

fn renew_frame(bootp: &Bootp) -> Vec<u8> {
    Wire::unicast(CLIENT_MAC, CLIENT_IP, SERVER_MAC, SERVER_IP).frame(&bootp.encode())
}

/// Runs `frame` and asserts that exactly `counter` moved, by one.
fn run_expect(lab: &XdpLab, frame: &[u8], counter: Counter) -> Run {
    let before = lab.counters();
    let run = lab.run(frame).unwrap();
    let delta = lab.counters().since(&before);
    for (c, n) in delta.iter() {
        let want = u64::from(c == counter);
        assert_eq!(
            n,
            want,
            "counter {} moved by {n}, expected {want} (expected outcome {})",
            c.name(),
            counter.name()
        );
    }
    let want_action = match counter.verdict() {
        dhcp_common::counters::Verdict::Ack => XDP_TX,
        dhcp_common::counters::Verdict::Drop => XDP_DROP,
        _ => XDP_PASS,
    };
    assert_eq!(run.action, want_action, "XDP action for {}", counter.name());
    if want_action != XDP_TX {
        assert_eq!(
            run.output, frame,
            "a frame that is not answered must leave unmodified"
        );
    }
    run
}

fn expect_ack(lab: &XdpLab, frame: &[u8], counter: Counter) -> Reply {
    let run = run_expect(lab, frame, counter);
    Reply::parse(&run.output).unwrap_or_else(|e| panic!("malformed ACK: {e}"))
}

/// Fields every fast-path ACK has, whatever the addressing.
fn check_ack_body(
    reply: &Reply,
    request: &Bootp,
    yiaddr: Ipv4Addr,
    lease_s: u32,
    t1: u32,
    t2: u32,
) {
    let m = &reply.message;
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.xid(), request.xid);
    assert_eq!(m.hops(), 0);
    assert_eq!(m.secs(), 0);
    assert_eq!(u16::from(m.flags()), request.flags);
    assert_eq!(m.ciaddr(), request.ciaddr);
    assert_eq!(m.yiaddr(), yiaddr);
    assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.giaddr(), request.giaddr);
    assert_eq!(m.chaddr(), &request.chaddr[..6]);
    assert!(
        reply.bootp[44..236].iter().all(|b| *b == 0),
        "sname and file are zeroed"
    );
    assert!(
        reply.bootp.len() >= 300,
        "BOOTP replies are at least 300 bytes"
    );
    assert_eq!(reply.bootp.len() % 4, 0);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(reply.option_u32(opt::SERVER_ID), Some(u32::from(SERVER_IP)));
    assert_eq!(reply.option_u32(opt::LEASE_TIME), Some(lease_s));
    assert_eq!(reply.option_u32(opt::RENEWAL_TIME), Some(t1));
    assert_eq!(reply.option_u32(opt::REBINDING_TIME), Some(t2));
    // dhcproto agrees on the options it knows.
    assert_eq!(
        m.opts().get(dhcproto::v4::OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(lease_s))
    );
    assert_eq!(
        m.opts().get(dhcproto::v4::OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        m.opts().get(dhcproto::v4::OptionCode::DomainName),
        Some(&DhcpOption::DomainName("example.net".into()))
    );
}

fn standard_codes() -> Vec<u8> {
    vec![
        opt::MESSAGE_TYPE,
        opt::SERVER_ID,
        opt::LEASE_TIME,
        opt::RENEWAL_TIME,
        opt::REBINDING_TIME,
        1,
        3,
        6,
        15,
    ]
}

#[test]
fn fastpath_renewing_unicast_ack() {
    let mut lab = lab_with(&[direct_lease()]);
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    let before_ns = clock::boottime_ns();
    let reply = expect_ack(&lab, &renew_frame(&request), Counter::AckRenewing);
    let after_ns = clock::boottime_ns();

    assert_eq!(reply.dst_mac, CLIENT_MAC);
    assert_eq!(reply.src_mac, SERVER_MAC);
    assert!(reply.vlans.is_empty());
    assert_eq!(reply.ip.source, SERVER_IP.octets());
    assert_eq!(reply.ip.destination, CLIENT_IP.octets());
    assert_eq!(reply.ip.ihl(), 5);
    assert_eq!(reply.ip.time_to_live, 64);
    assert_eq!(
        (reply.udp.source_port, reply.udp.destination_port),
        (67, 68)
    );
    check_ack_body(&reply, &request, CLIENT_IP, LEASE_TIME, T1, T2);
    assert_eq!(
        reply.codes(),
        standard_codes(),
        "option order: fixed, then the option set"
    );
    assert_eq!(reply.option(3), Some(&[10, 0, 0, 1][..]));
    assert_eq!(reply.option(6), Some(&[10, 0, 0, 53, 10, 0, 0, 54][..]));

    let events = lab.events();
    assert_eq!(events.len(), 1);
    let e = events[0];
    assert_eq!(Ipv4Addr::from(e.address), CLIENT_IP);
    assert_eq!(e.chaddr, CLIENT_MAC);
    assert_eq!(e.kind, renewal_kind::RENEWING);
    assert_eq!(e.xid, request.xid);
    assert_eq!(e.granted_s, LEASE_TIME);
    assert_eq!(e.subnet_id, SUBNET_DIRECT);
    let lease_ns = u64::from(LEASE_TIME) * NS;
    assert!(
        e.granted_until_ns >= before_ns + lease_ns && e.granted_until_ns <= after_ns + lease_ns
    );
    // The map now knows the client holds the lease until then.
    assert_eq!(
        lab.fp.get_lease(CLIENT_IP).unwrap().expires_ns,
        e.granted_until_ns
    );
}

#[test]
fn fastpath_rebinding_broadcast_ack_goes_to_ciaddr() {
    let mut lab = lab_with(&[direct_lease()]);
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    let wire = Wire {
        src_ip: CLIENT_IP,
        ..Wire::broadcast_from(CLIENT_MAC)
    };
    let reply = expect_ack(&lab, &wire.frame(&request.encode()), Counter::AckRebinding);
    assert_eq!(reply.dst_mac, CLIENT_MAC);
    assert_eq!(
        reply.ip.source,
        SERVER_IP.octets(),
        "a broadcast is answered from the server id"
    );
    assert_eq!(reply.ip.destination, CLIENT_IP.octets());
    assert_eq!(reply.udp.destination_port, 68);
    check_ack_body(&reply, &request, CLIENT_IP, LEASE_TIME, T1, T2);
    assert_eq!(lab.events()[0].kind, renewal_kind::REBINDING);
}

#[test]
fn fastpath_relayed_renewal_answers_the_relay() {
    // perfdhcp's renewals: relayed REQUEST with ciaddr, hops 1, from port 67.
    let mut lab = lab_with(&[Lease::new(RELAYED_IP, CLIENT_MAC, SUBNET_RELAYED)]);
    let request = Bootp::renew(RELAYED_IP, CLIENT_MAC).relayed_by(RELAY_IN_SUBNET);
    let frame =
        Wire::relay(RELAY_MAC, RELAY_IN_SUBNET, SERVER_MAC, SERVER_IP).frame(&request.encode());
    let reply = expect_ack(&lab, &frame, Counter::AckRebinding);
    assert_eq!(reply.dst_mac, RELAY_MAC);
    assert_eq!(reply.ip.source, SERVER_IP.octets());
    assert_eq!(reply.ip.destination, RELAY_IN_SUBNET.octets());
    assert_eq!(
        (reply.udp.source_port, reply.udp.destination_port),
        (67, 67)
    );
    check_ack_body(&reply, &request, RELAYED_IP, LEASE_TIME, T1, T2);
    assert_eq!(lab.events().len(), 1);
}

#[test]
fn fastpath_relay_address_outside_subnet_is_matched_by_prefix() {
    let lab = lab_with(&[Lease::new(RELAYED_IP, CLIENT_MAC, SUBNET_RELAYED)]);
    let request = Bootp::renew(RELAYED_IP, CLIENT_MAC).relayed_by(RELAY_OUTSIDE_SUBNET);
    let frame = Wire::relay(RELAY_MAC, RELAY_OUTSIDE_SUBNET, SERVER_MAC, SERVER_IP)
        .frame(&request.encode());
    let reply = expect_ack(&lab, &frame, Counter::AckRebinding);
    assert_eq!(reply.ip.destination, RELAY_OUTSIDE_SUBNET.octets());
}

#[test]
fn fastpath_unknown_relay_is_wrong_subnet() {
    let lab = lab_with(&[Lease::new(RELAYED_IP, CLIENT_MAC, SUBNET_RELAYED)]);
    let stranger = Ipv4Addr::new(172, 16, 9, 2);
    let request = Bootp::renew(RELAYED_IP, CLIENT_MAC).relayed_by(stranger);
    let frame = Wire::relay(RELAY_MAC, stranger, SERVER_MAC, SERVER_IP).frame(&request.encode());
    run_expect(&lab, &frame, Counter::PuntWrongSubnet);
}

#[test]
fn fastpath_init_reboot_unicasts_to_chaddr() {
    let mut lab = lab_with(&[direct_lease()]);
    let request = Bootp::init_reboot(CLIENT_IP, CLIENT_MAC);
    let reply = expect_ack(
        &lab,
        &Wire::broadcast_from(CLIENT_MAC).frame(&request.encode()),
        Counter::AckInitReboot,
    );
    assert_eq!(
        reply.dst_mac, CLIENT_MAC,
        "RFC 2131 §4.1: unicast to chaddr and yiaddr"
    );
    assert_eq!(reply.ip.destination, CLIENT_IP.octets());
    assert_eq!(reply.ip.source, SERVER_IP.octets());
    check_ack_body(&reply, &request, CLIENT_IP, LEASE_TIME, T1, T2);
    assert_eq!(lab.events()[0].kind, renewal_kind::INIT_REBOOT);
}

#[test]
fn fastpath_init_reboot_with_broadcast_flag_is_broadcast() {
    let lab = lab_with(&[direct_lease()]);
    let request = Bootp {
        flags: FLAG_BROADCAST,
        ..Bootp::init_reboot(CLIENT_IP, CLIENT_MAC)
    };
    let reply = expect_ack(
        &lab,
        &Wire::broadcast_from(CLIENT_MAC).frame(&request.encode()),
        Counter::AckInitReboot,
    );
    assert_eq!(reply.dst_mac, BROADCAST_MAC);
    assert_eq!(reply.ip.destination, [255; 4]);
    check_ack_body(&reply, &request, CLIENT_IP, LEASE_TIME, T1, T2);
}

#[test]
fn fastpath_init_reboot_relayed() {
    let lab = lab_with(&[Lease::new(RELAYED_IP, CLIENT_MAC, SUBNET_RELAYED)]);
    let request = Bootp {
        flags: FLAG_BROADCAST,
        ..Bootp::init_reboot(RELAYED_IP, CLIENT_MAC)
    }
    .relayed_by(RELAY_IN_SUBNET);
    let frame =
        Wire::relay(RELAY_MAC, RELAY_IN_SUBNET, SERVER_MAC, SERVER_IP).frame(&request.encode());
    let reply = expect_ack(&lab, &frame, Counter::AckInitReboot);
    assert_eq!(
        reply.ip.destination,
        RELAY_IN_SUBNET.octets(),
        "giaddr wins over the broadcast bit"
    );
    assert_eq!(reply.udp.destination_port, 67);
    assert_eq!(reply.dst_mac, RELAY_MAC);
}

#[test]
fn fastpath_init_reboot_on_another_link_is_wrong_subnet() {
    let lab = lab_with(&[direct_lease()]);
    let request = Bootp::init_reboot(CLIENT_IP, CLIENT_MAC);
    let wire = Wire {
        vlans: vec![(TPID_8021Q, 100)],
        ..Wire::broadcast_from(CLIENT_MAC)
    };
    run_expect(
        &lab,
        &wire.frame(&request.encode()),
        Counter::PuntWrongSubnet,
    );
}

#[test]
fn fastpath_vlan_tag_is_kept() {
    let lab = lab_with(&[Lease::new(VLAN_IP, CLIENT_MAC, SUBNET_VLAN)]);
    let request = Bootp::init_reboot(VLAN_IP, CLIENT_MAC);
    let tci = (5 << 13) | 100; // priority 5, VLAN 100
    let wire = Wire {
        vlans: vec![(TPID_8021Q, tci)],
        ..Wire::broadcast_from(CLIENT_MAC)
    };
    let reply = expect_ack(&lab, &wire.frame(&request.encode()), Counter::AckInitReboot);
    assert_eq!(reply.vlans, vec![(TPID_8021Q, tci)]);
    check_ack_body(&reply, &request, VLAN_IP, LEASE_TIME, T1, T2);
}

#[test]
fn fastpath_qinq_tags_are_kept() {
    let lab = lab_with(&[Lease::new(QINQ_IP, CLIENT_MAC, SUBNET_QINQ)]);
    let request = Bootp::init_reboot(QINQ_IP, CLIENT_MAC);
    let tags = vec![(TPID_8021AD, 100), (TPID_8021Q, 200)];
    let wire = Wire {
        vlans: tags.clone(),
        ..Wire::broadcast_from(CLIENT_MAC)
    };
    let reply = expect_ack(&lab, &wire.frame(&request.encode()), Counter::AckInitReboot);
    assert_eq!(reply.vlans, tags);
    check_ack_body(&reply, &request, QINQ_IP, LEASE_TIME, T1, T2);
    // Double 802.1Q (no 802.1ad) is QinQ too.
    let tags = vec![(TPID_8021Q, 100), (TPID_8021Q, 200)];
    let wire = Wire {
        vlans: tags.clone(),
        ..Wire::broadcast_from(CLIENT_MAC)
    };
    let reply = expect_ack(&lab, &wire.frame(&request.encode()), Counter::AckInitReboot);
    assert_eq!(reply.vlans, tags);
}

#[test]
fn fastpath_three_vlan_tags_are_not_dhcp() {
    let lab = lab_with(&[direct_lease()]);
    let tags = vec![(TPID_8021AD, 1), (TPID_8021Q, 2), (TPID_8021Q, 3)];
    let wire = Wire {
        vlans: tags,
        ..Wire::broadcast_from(CLIENT_MAC)
    };
    run_expect(
        &lab,
        &wire.frame(&Bootp::init_reboot(CLIENT_IP, CLIENT_MAC).encode()),
        Counter::PassNotDhcp,
    );
}

#[test]
fn fastpath_ip_options_are_dropped_from_the_reply() {
    let lab = lab_with(&[direct_lease()]);
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    for options in [
        vec![1, 1, 1, 0],
        vec![0x94, 4, 0, 0, 1, 1, 1, 0],
        vec![1; 40],
    ] {
        let wire = Wire {
            ip_options: options,
            ..Wire::unicast(CLIENT_MAC, CLIENT_IP, SERVER_MAC, SERVER_IP)
        };
        let reply = expect_ack(&lab, &wire.frame(&request.encode()), Counter::AckRenewing);
        assert_eq!(reply.ip.ihl(), 5);
        check_ack_body(&reply, &request, CLIENT_IP, LEASE_TIME, T1, T2);
    }
}

#[test]
fn fastpath_client_id_is_matched_and_echoed() {
    let client_id = [1, 0xaa, 0xbb, 0xcc, 0, 0, 1];
    let lab = lab_with(&[Lease {
        client_id: Some(client_id.to_vec()),
        ..direct_lease()
    }]);
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::CLIENT_ID, &client_id);
    let reply = expect_ack(&lab, &renew_frame(&request), Counter::AckRenewing);
    assert_eq!(
        reply.option(opt::CLIENT_ID),
        Some(&client_id[..]),
        "RFC 6842: option 61 echoed"
    );
    assert_eq!(*reply.codes().last().unwrap(), opt::CLIENT_ID);

    let other = Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::CLIENT_ID, &[1, 2, 3, 4, 5, 6, 7]);
    run_expect(&lab, &renew_frame(&other), Counter::PuntClientIdMismatch);
    let none = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    run_expect(&lab, &renew_frame(&none), Counter::PuntClientIdMismatch);
}

#[test]
fn fastpath_client_id_on_lease_without_one_is_a_mismatch() {
    let lab = lab_with(&[direct_lease()]);
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::CLIENT_ID, &[1, 2, 3]);
    run_expect(&lab, &renew_frame(&request), Counter::PuntClientIdMismatch);
}

#[test]
fn fastpath_long_client_id_is_hashed_whole() {
    // A 255-byte client identifier (the longest an option can carry).
    let client_id: Vec<u8> = (0..255u8).collect();
    let lab = lab_with(&[Lease {
        client_id: Some(client_id.clone()),
        ..direct_lease()
    }]);
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::CLIENT_ID, &client_id);
    let wire = Wire::unicast(CLIENT_MAC, CLIENT_IP, SERVER_MAC, SERVER_IP);
    let request = request.with(opt::MAX_MESSAGE_SIZE, &1500u16.to_be_bytes());
    let reply = expect_ack(&lab, &wire.frame(&request.encode()), Counter::AckRenewing);
    assert_eq!(reply.option(opt::CLIENT_ID), Some(&client_id[..]));
    // The last byte matters.
    let mut changed = client_id.clone();
    changed[254] ^= 1;
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC)
        .with(opt::CLIENT_ID, &changed)
        .with(opt::MAX_MESSAGE_SIZE, &1500u16.to_be_bytes());
    run_expect(
        &lab,
        &wire.frame(&request.encode()),
        Counter::PuntClientIdMismatch,
    );
}

#[test]
fn fastpath_relay_agent_information_is_echoed_verbatim_and_last() {
    let client_id = [0xff, 1, 2, 3, 4];
    let lease = Lease {
        client_id: Some(client_id.to_vec()),
        ..Lease::new(RELAYED_IP, CLIENT_MAC, SUBNET_RELAYED)
    };
    let lab = lab_with(&[lease]);
    // Circuit id, remote id, and an unknown sub-option: copied byte for byte.
    let option82 = [
        1, 4, b'e', b't', b'h', b'0', 2, 6, 0, 1, 2, 3, 4, 5, 151, 2, 0xde, 0xad,
    ];
    let request = Bootp::renew(RELAYED_IP, CLIENT_MAC)
        .relayed_by(RELAY_IN_SUBNET)
        .with(opt::RELAY_AGENT_INFO, &option82)
        .with(opt::CLIENT_ID, &client_id);
    let frame =
        Wire::relay(RELAY_MAC, RELAY_IN_SUBNET, SERVER_MAC, SERVER_IP).frame(&request.encode());
    let reply = expect_ack(&lab, &frame, Counter::AckRebinding);
    let codes = reply.codes();
    assert_eq!(
        *codes.last().unwrap(),
        opt::RELAY_AGENT_INFO,
        "RFC 3046: option 82 last"
    );
    assert_eq!(reply.option(opt::RELAY_AGENT_INFO), Some(&option82[..]));
    assert_eq!(reply.option(opt::CLIENT_ID), Some(&client_id[..]));
}

#[test]
fn fastpath_chaddr_mismatch_and_unknown_lease_punt() {
    let lab = lab_with(&[direct_lease()]);
    let thief = Bootp::renew(CLIENT_IP, OTHER_MAC);
    run_expect(
        &lab,
        &Wire::unicast(OTHER_MAC, CLIENT_IP, SERVER_MAC, SERVER_IP).frame(&thief.encode()),
        Counter::PuntChaddrMismatch,
    );
    let unknown = Bootp::renew(Ipv4Addr::new(10, 0, 0, 51), CLIENT_MAC);
    run_expect(&lab, &renew_frame(&unknown), Counter::PuntUnknownLease);
}

#[test]
fn fastpath_expired_lease_punts() {
    let lab = lab_with(&[Lease {
        expires_in: -1,
        ..direct_lease()
    }]);
    run_expect(
        &lab,
        &renew_frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC)),
        Counter::PuntExpired,
    );
}

#[test]
fn fastpath_horizon_shortens_or_punts() {
    // Horizon below T1 from now: the daemon must commit first.
    let mut lab = lab_with(&[Lease {
        horizon_in: i64::from(T1) - 10,
        ..direct_lease()
    }]);
    run_expect(
        &lab,
        &renew_frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC)),
        Counter::PuntBeyondHorizon,
    );
    assert!(lab.events().is_empty());

    // Horizon between T1 and the lease time: a shortened grant that never passes the horizon.
    let lease = Lease {
        horizon_in: 2500,
        ..direct_lease()
    };
    lab.add(&lease).unwrap();
    let horizon_ns = lab.fp.get_lease(CLIENT_IP).unwrap().horizon_ns;
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    let reply = expect_ack(&lab, &renew_frame(&request), Counter::AckRenewing);
    let granted = reply.option_u32(opt::LEASE_TIME).unwrap();
    assert!((2498..=2500).contains(&granted), "granted {granted}");
    assert_eq!(reply.option_u32(opt::RENEWAL_TIME), Some(granted / 2));
    assert_eq!(
        reply.option_u32(opt::REBINDING_TIME),
        Some(granted - granted / 8)
    );
    let event = lab.events()[0];
    assert!(
        event.granted_until_ns <= horizon_ns,
        "never beyond the horizon"
    );
    assert_eq!(event.granted_s, granted);
}

#[test]
fn fastpath_server_identifier_rules() {
    let lab = lab_with(&[direct_lease()]);
    // SELECTING: 54 and 50, ciaddr 0.
    let selecting =
        Bootp::init_reboot(CLIENT_IP, CLIENT_MAC).with(opt::SERVER_ID, &SERVER_IP.octets());
    run_expect(
        &lab,
        &Wire::broadcast_from(CLIENT_MAC).frame(&selecting.encode()),
        Counter::PuntSelecting,
    );
    // A renewal naming another server.
    let other = Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::SERVER_ID, &[10, 0, 0, 2]);
    run_expect(&lab, &renew_frame(&other), Counter::PuntOtherServer);
    // A renewal naming us (some clients do) is fine.
    let ours = Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::SERVER_ID, &SERVER_IP.octets());
    expect_ack(&lab, &renew_frame(&ours), Counter::AckRenewing);
    // A unicast renewal addressed to some other host (routed through us).
    let wire = Wire::unicast(
        CLIENT_MAC,
        CLIENT_IP,
        SERVER_MAC,
        Ipv4Addr::new(10, 9, 9, 9),
    );
    run_expect(
        &lab,
        &wire.frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC).encode()),
        Counter::PuntOtherServer,
    );
}

#[test]
fn fastpath_request_address_ambiguities_punt() {
    let lab = lab_with(&[direct_lease()]);
    let both =
        Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::REQUESTED_ADDRESS, &CLIENT_IP.octets());
    run_expect(&lab, &renew_frame(&both), Counter::PuntAmbiguousAddress);
    let neither = Bootp::dhcp(msg::REQUEST, CLIENT_MAC);
    run_expect(
        &lab,
        &Wire::broadcast_from(CLIENT_MAC).frame(&neither.encode()),
        Counter::PuntNoAddress,
    );
}

#[test]
fn fastpath_other_message_types_punt() {
    let lab = lab_with(&[direct_lease()]);
    for t in [msg::DISCOVER, msg::DECLINE, msg::RELEASE, msg::INFORM] {
        let m = Bootp {
            ciaddr: CLIENT_IP,
            ..Bootp::dhcp(t, CLIENT_MAC)
        };
        run_expect(
            &lab,
            &Wire::broadcast_from(CLIENT_MAC).frame(&m.encode()),
            Counter::PuntNotRequest,
        );
    }
}

#[test]
fn fastpath_overload_and_split_options_punt() {
    let lab = lab_with(&[direct_lease()]);
    let overload = Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::OVERLOAD, &[3]);
    run_expect(&lab, &renew_frame(&overload), Counter::PuntOverload);
    let split = Bootp::renew(CLIENT_IP, CLIENT_MAC)
        .with(opt::CLIENT_ID, &[1, 2])
        .with(opt::CLIENT_ID, &[3, 4]);
    run_expect(&lab, &renew_frame(&split), Counter::PuntSplitOption);
    let split82 = Bootp::renew(CLIENT_IP, CLIENT_MAC)
        .with(82, &[1, 1, 0])
        .with(82, &[2, 1, 0]);
    run_expect(&lab, &renew_frame(&split82), Counter::PuntSplitOption);
}

#[test]
fn fastpath_reply_size_limits() {
    let lab = lab_with(&[Lease {
        option_set: OPTION_SET_LARGE,
        ..direct_lease()
    }]);
    let request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    run_expect(&lab, &renew_frame(&request), Counter::PuntTooBig);
    let request = request.with(opt::MAX_MESSAGE_SIZE, &1500u16.to_be_bytes());
    let reply = expect_ack(&lab, &renew_frame(&request), Counter::AckRenewing);
    assert!(reply.ip.total_len > 576 && reply.ip.total_len <= 1500);
    assert_eq!(reply.option(224).map(|v| v.len()), Some(250));
    // Option 57 below 576 means 576.
    let request =
        Bootp::renew(CLIENT_IP, CLIENT_MAC).with(opt::MAX_MESSAGE_SIZE, &300u16.to_be_bytes());
    run_expect(&lab, &renew_frame(&request), Counter::PuntTooBig);
}

#[test]
fn fastpath_requests_too_big_to_copy_punt() {
    let lab = lab_with(&[direct_lease()]);
    let mut request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    for _ in 0..9 {
        request = request.with(224, &[0; 250]);
    }
    run_expect(&lab, &renew_frame(&request), Counter::PuntTooBig);
}

#[test]
fn fastpath_many_pads_are_walked_and_too_many_options_punt() {
    let lab = lab_with(&[direct_lease()]);
    let mut request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    request.tail = [vec![0; 100], vec![opt::END]].concat();
    expect_ack(&lab, &renew_frame(&request), Counter::AckRenewing);
    let mut request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    request.tail = [vec![0; 300], vec![opt::END]].concat();
    run_expect(&lab, &renew_frame(&request), Counter::PuntTooManyOptions);
}

#[test]
fn fastpath_missing_end_is_tolerated() {
    let lab = lab_with(&[direct_lease()]);
    let mut request = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    request.tail.clear();
    request.min_len = 0;
    expect_ack(&lab, &renew_frame(&request), Counter::AckRenewing);
}

#[test]
fn fastpath_non_dhcp_traffic_is_untouched() {
    let lab = lab_with(&[direct_lease()]);
    let payload = Bootp::renew(CLIENT_IP, CLIENT_MAC).encode();
    let dhcp = Wire::unicast(CLIENT_MAC, CLIENT_IP, SERVER_MAC, SERVER_IP).frame(&payload);
    // UDP to another port, and DHCP-looking bytes sent to the client port.
    for port in [53u16, 68, 6767] {
        let wire = Wire {
            dst_port: port,
            ..Wire::unicast(CLIENT_MAC, CLIENT_IP, SERVER_MAC, SERVER_IP)
        };
        run_expect(&lab, &wire.frame(&payload), Counter::PassNotDhcp);
    }
    // Same frame as TCP, as IPv6 (ethertype), as ARP, too short for Ethernet.
    let mut tcp = dhcp.clone();
    tcp[23] = 6;
    run_expect(&lab, &tcp, Counter::PassNotDhcp);
    let mut v6 = dhcp.clone();
    v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    run_expect(&lab, &v6, Counter::PassNotDhcp);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    run_expect(&lab, &arp, Counter::PassNotDhcp);
    // An IPv4 ethertype with nothing behind it (the kernel never hands XDP less than 14 bytes).
    run_expect(&lab, &dhcp[..14], Counter::PassNotDhcp);
    run_expect(&lab, &dhcp[..40], Counter::PassNotDhcp);
    // IPv4 version 6 in the version nibble.
    let mut bad_version = dhcp.clone();
    bad_version[14] = 0x65;
    run_expect(&lab, &bad_version, Counter::PassNotDhcp);
}

#[test]
fn fastpath_ip_fragments_are_left_to_the_kernel() {
    let lab = lab_with(&[direct_lease()]);
    let mut frame = renew_frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC));
    frame[20] |= 0x20; // more fragments
    run_expect(&lab, &frame, Counter::PassIpFragment);
}

#[test]
fn fastpath_garbage_to_port_67_is_dropped() {
    let lab = lab_with(&[direct_lease()]);
    let good = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    let wire = Wire::unicast(CLIENT_MAC, CLIENT_IP, SERVER_MAC, SERVER_IP);

    // UDP length beyond the IP datagram; IP length beyond the frame.
    let mut f = wire.frame(&good.encode());
    f[38..40].copy_from_slice(&2000u16.to_be_bytes());
    run_expect(&lab, &f, Counter::DropTruncated);
    let f = wire.frame(&good.encode());
    run_expect(&lab, &f[..f.len() - 10], Counter::DropTruncated);

    // Shorter than a BOOTP header.
    run_expect(
        &lab,
        &wire.frame(&good.encode()[..200]),
        Counter::DropShortBootp,
    );
    // Impossible op and hlen.
    run_expect(
        &lab,
        &wire.frame(
            &Bootp {
                op: 7,
                ..good.clone()
            }
            .encode(),
        ),
        Counter::DropBadOp,
    );
    run_expect(
        &lab,
        &wire.frame(
            &Bootp {
                hlen: 17,
                ..good.clone()
            }
            .encode(),
        ),
        Counter::DropBadHlen,
    );
    // An option whose length runs past the end.
    let mut overrun = good.clone();
    overrun.tail = vec![12, 200, b'x'];
    overrun.min_len = 0;
    run_expect(
        &lab,
        &wire.frame(&overrun.encode()),
        Counter::DropOptionOverrun,
    );
    // Length byte missing at the very end.
    let mut no_len = good.clone();
    no_len.tail = vec![12];
    no_len.min_len = 0;
    run_expect(
        &lab,
        &wire.frame(&no_len.encode()),
        Counter::DropOptionOverrun,
    );
    // Options with impossible lengths or values.
    for bad in [
        good.clone()
            .without(opt::MESSAGE_TYPE)
            .with(opt::MESSAGE_TYPE, &[3, 3]),
        good.clone()
            .without(opt::MESSAGE_TYPE)
            .with(opt::MESSAGE_TYPE, &[0]),
        good.clone()
            .without(opt::MESSAGE_TYPE)
            .with(opt::MESSAGE_TYPE, &[200]),
        good.clone().with(opt::MESSAGE_TYPE, &[3]),
        good.clone().with(opt::SERVER_ID, &[10, 0, 0]),
        good.clone().with(opt::MAX_MESSAGE_SIZE, &[5]),
    ] {
        run_expect(&lab, &wire.frame(&bad.encode()), Counter::DropBadOption);
    }
}

#[test]
fn fastpath_bootp_and_odd_hardware_go_to_the_daemon() {
    let lab = lab_with(&[direct_lease()]);
    let wire = Wire::broadcast_from(CLIENT_MAC);
    let good = Bootp::renew(CLIENT_IP, CLIENT_MAC);
    run_expect(
        &lab,
        &wire.frame(
            &Bootp {
                cookie: [0; 4],
                ..good.clone()
            }
            .encode(),
        ),
        Counter::PuntBootp,
    );
    run_expect(
        &lab,
        &wire.frame(&good.clone().without(opt::MESSAGE_TYPE).encode()),
        Counter::PuntBootp,
    );
    run_expect(&lab, &wire.frame(&good.encode()[..238]), Counter::PuntBootp);
    run_expect(
        &lab,
        &wire.frame(
            &Bootp {
                op: 2,
                ..good.clone()
            }
            .encode(),
        ),
        Counter::PuntBootReply,
    );
    run_expect(
        &lab,
        &wire.frame(
            &Bootp {
                htype: 6,
                ..good.clone()
            }
            .encode(),
        ),
        Counter::PuntHardwareType,
    );
    run_expect(
        &lab,
        &wire.frame(
            &Bootp {
                hlen: 16,
                ..good.clone()
            }
            .encode(),
        ),
        Counter::PuntHardwareType,
    );
}

#[test]
fn fastpath_switches_punt() {
    let mut lab = lab_with(&[Lease {
        flags: LEASE_FLAG_SLOW_PATH_ONLY,
        ..direct_lease()
    }]);
    let frame = renew_frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC));
    run_expect(&lab, &frame, Counter::PuntLeaseDisabled);
    lab.add(&direct_lease()).unwrap();
    lab.fp.set_config(&FastPathConfig::default()).unwrap();
    run_expect(&lab, &frame, Counter::PuntFastPathOff);
}

#[test]
fn fastpath_unknown_interface_punts() {
    let mut lab = lab_with(&[direct_lease()]);
    let frame = renew_frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC));
    let iface = lab.fp.get_iface(lab.ifindex).unwrap();
    lab.fp.remove_iface(lab.ifindex).unwrap();
    run_expect(&lab, &frame, Counter::PuntNoInterface);
    lab.fp.set_iface(lab.ifindex, &iface).unwrap();
    run_expect(&lab, &frame, Counter::AckRenewing);
}

#[test]
fn fastpath_full_ring_buffer_punts() {
    let options = LoadOptions {
        renewals_ring_bytes: 4096,
        ..Default::default()
    };
    let mut lab = XdpLab::with_options(options).unwrap();
    lab.add(&direct_lease()).unwrap();
    let frame = renew_frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC));
    // 4 KiB hold 4096 / (8-byte header + 32-byte event) = 102 events.
    let mut acks = 0;
    loop {
        let run = lab.run(&frame).unwrap();
        if run.action != XDP_TX {
            break;
        }
        acks += 1;
        assert!(acks < 200, "ring never filled");
    }
    assert_eq!(acks, 4096 / 40);
    run_expect(&lab, &frame, Counter::PuntRingFull);
    assert_eq!(lab.events().len(), acks);
    expect_ack(&lab, &frame, Counter::AckRenewing);
}

#[test]
fn fastpath_load_balancing_drops_partner_clients() {
    let mut lab = lab_with(&[direct_lease()]);
    let bucket = loadbalance::bucket(&CLIENT_MAC);
    let mut theirs = [0xffu8; 32];
    theirs[usize::from(bucket / 8)] &= !(1 << (bucket % 8));
    lab.fp
        .set_config(&FastPathConfig {
            flags: CONFIG_FLAG_FAST_PATH | CONFIG_FLAG_LOAD_BALANCE,
            lb_max_secs: 5,
            lb_buckets: theirs,
            ..Default::default()
        })
        .unwrap();
    let discover = Bootp::dhcp(msg::DISCOVER, CLIENT_MAC);
    run_expect(
        &lab,
        &Wire::broadcast_from(CLIENT_MAC).frame(&discover.encode()),
        Counter::DropPartnerBucket,
    );
    let reboot = Bootp::init_reboot(CLIENT_IP, CLIENT_MAC);
    run_expect(
        &lab,
        &Wire::broadcast_from(CLIENT_MAC).frame(&reboot.encode()),
        Counter::DropPartnerBucket,
    );
    // Waited long enough: the partner seems not to answer.
    let patient = Bootp {
        secs: 6,
        ..discover.clone()
    };
    run_expect(
        &lab,
        &Wire::broadcast_from(CLIENT_MAC).frame(&patient.encode()),
        Counter::PuntNotRequest,
    );
    // Unicast renewals reach only us: always answered.
    expect_ack(
        &lab,
        &renew_frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC)),
        Counter::AckRenewing,
    );
    // A client whose client identifier hashes into our buckets.
    let ours = (0u8..=255)
        .map(|b| vec![1, b, 7])
        .find(|id| loadbalance::bucket(id) != bucket)
        .unwrap();
    let discover = Bootp::dhcp(msg::DISCOVER, CLIENT_MAC).with(opt::CLIENT_ID, &ours);
    run_expect(
        &lab,
        &Wire::broadcast_from(CLIENT_MAC).frame(&discover.encode()),
        Counter::PuntNotRequest,
    );
}

#[test]
fn fastpath_missing_option_set_punts() {
    let lab = lab_with(&[Lease {
        option_set: 4097,
        ..direct_lease()
    }]);
    run_expect(
        &lab,
        &renew_frame(&Bootp::renew(CLIENT_IP, CLIENT_MAC)),
        Counter::PuntNoOptionSet,
    );
}
