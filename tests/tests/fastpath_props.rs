//! Property tests of the XDP program: whatever the frame, the program never fails, counts the
//! frame exactly once, leaves unanswered frames untouched, and transmits only valid ACKs for
//! leases in the map whose hardware address matches.

use std::{
    net::Ipv4Addr,
    sync::{Mutex, OnceLock},
};

use dhcp_common::wire::opt;
use dhcproto::v4::MessageType;
use proptest::prelude::*;
use xdpdhcp_tests::{
    frames::{Bootp, Reply, TPID_8021AD, TPID_8021Q, Wire},
    xdp::*,
};

const MACS: [[u8; 6]; 3] = [
    [0xaa, 0, 0, 0, 0, 1],
    [0xaa, 0, 0, 0, 0, 2],
    [0xaa, 0, 0, 0, 0, 3],
];
const ADDRS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 0, 11),
    Ipv4Addr::new(10, 0, 0, 12),
    Ipv4Addr::new(192, 168, 50, 13),
];

fn lab() -> &'static Mutex<XdpLab> {
    static LAB: OnceLock<Mutex<XdpLab>> = OnceLock::new();
    LAB.get_or_init(|| {
        let mut lab = XdpLab::new().expect("loading the XDP program (run as root)");
        lab.add(&Lease::new(ADDRS[0], MACS[0], SUBNET_DIRECT))
            .unwrap();
        lab.add(&Lease {
            client_id: Some(vec![1, 2, 3]),
            ..Lease::new(ADDRS[1], MACS[1], SUBNET_DIRECT)
        })
        .unwrap();
        lab.add(&Lease::new(ADDRS[2], MACS[2], SUBNET_RELAYED))
            .unwrap();
        Mutex::new(lab)
    })
}

/// Frames the fast path answers, in all the shapes it handles.
fn valid_frames() -> Vec<Vec<u8>> {
    let unicast = Wire::unicast(MACS[0], ADDRS[0], SERVER_MAC, SERVER_IP);
    vec![
        unicast.frame(&Bootp::renew(ADDRS[0], MACS[0]).encode()),
        Wire::unicast(MACS[1], ADDRS[1], SERVER_MAC, SERVER_IP).frame(
            &Bootp::renew(ADDRS[1], MACS[1])
                .with(opt::CLIENT_ID, &[1, 2, 3])
                .encode(),
        ),
        Wire::broadcast_from(MACS[0]).frame(&Bootp::init_reboot(ADDRS[0], MACS[0]).encode()),
        Wire::relay(RELAY_MAC, RELAY_IN_SUBNET, SERVER_MAC, SERVER_IP).frame(
            &Bootp::renew(ADDRS[2], MACS[2])
                .relayed_by(RELAY_IN_SUBNET)
                .with(opt::RELAY_AGENT_INFO, &[1, 2, 0, 1])
                .encode(),
        ),
        Wire {
            ip_options: vec![1; 12],
            ..unicast.clone()
        }
        .frame(&Bootp::renew(ADDRS[0], MACS[0]).encode()),
        Wire {
            vlans: vec![(TPID_8021AD, 9), (TPID_8021Q, 10)],
            ..unicast
        }
        .frame(&Bootp::renew(ADDRS[0], MACS[0]).encode()),
    ]
}

/// Runs one frame and checks every invariant.
fn check(frame: &[u8]) -> Result<u32, TestCaseError> {
    let lab = lab().lock().unwrap();
    let before = lab.counters();
    let run = lab
        .run(frame)
        .map_err(|e| TestCaseError::fail(format!("test_run failed: {e:#}")))?;
    let counted: u64 = lab.counters().since(&before).0.iter().sum();
    prop_assert_eq!(counted, 1, "every frame ends in exactly one counter");
    match run.action {
        XDP_PASS | XDP_DROP => {
            prop_assert_eq!(&run.output[..], frame, "unanswered frames are untouched")
        }
        XDP_TX => {
            let reply = Reply::parse(&run.output)
                .map_err(|e| TestCaseError::fail(format!("bad ACK: {e}")))?;
            prop_assert_eq!(reply.message.opts().msg_type(), Some(MessageType::Ack));
            let yiaddr = reply.message.yiaddr();
            let lease = lab.fp.get_lease(yiaddr);
            prop_assert!(lease.is_some(), "ACK for {} which is not in LEASES", yiaddr);
            prop_assert_eq!(
                &reply.message.chaddr()[..6],
                &lease.unwrap().chaddr[..],
                "ACK to another client"
            );
        }
        other => prop_assert!(false, "unexpected XDP action {}", other),
    }
    Ok(run.action)
}

#[test]
fn fastpath_props_valid_frames_are_acked() {
    for frame in valid_frames() {
        assert_eq!(check(&frame).unwrap(), XDP_TX);
    }
}

#[test]
fn fastpath_props_truncation_at_every_offset_never_acks() {
    for frame in valid_frames() {
        for len in 14..frame.len() {
            let action = check(&frame[..len]).unwrap();
            assert_ne!(
                action,
                XDP_TX,
                "truncated to {len} of {} bytes and still answered",
                frame.len()
            );
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Xor(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        4 => (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Mutation::Xor(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, v)| Mutation::Insert(i, v)),
    ]
}

fn apply(frame: &mut Vec<u8>, m: &Mutation) {
    let n = frame.len();
    match m {
        Mutation::Set(i, b) => frame[i % n] = *b,
        Mutation::Xor(i, b) => frame[i % n] ^= *b,
        Mutation::Truncate(i) => frame.truncate((14 + i % n).min(n)),
        Mutation::Insert(i, v) => {
            let at = i % n;
            frame.splice(at..at, v.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fastpath_props_mutated_frames(which in 0..6usize, mutations in prop::collection::vec(mutation(), 1..6)) {
        let mut frame = valid_frames()[which].clone();
        for m in &mutations {
            apply(&mut frame, m);
        }
        check(&frame)?;
    }

    #[test]
    fn fastpath_props_random_frames(bytes in prop::collection::vec(any::<u8>(), 14..1600)) {
        check(&bytes)?;
    }

    #[test]
    fn fastpath_props_random_dhcp_payloads(payload in prop::collection::vec(any::<u8>(), 0..1400), relayed: bool) {
        // Random bytes behind valid headers reach the BOOTP and option parsers.
        let wire = if relayed {
            Wire::relay(RELAY_MAC, RELAY_IN_SUBNET, SERVER_MAC, SERVER_IP)
        } else {
            Wire::unicast(MACS[0], ADDRS[0], SERVER_MAC, SERVER_IP)
        };
        check(&wire.frame(&payload))?;
    }

    #[test]
    fn fastpath_props_random_options(options in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 0..30)) {
        let mut bootp = Bootp::renew(ADDRS[0], MACS[0]);
        bootp.options.extend(options);
        check(&Wire::unicast(MACS[0], ADDRS[0], SERVER_MAC, SERVER_IP).frame(&bootp.encode()))?;
    }
}
