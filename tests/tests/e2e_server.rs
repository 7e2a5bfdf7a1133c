//! The real daemon answering crafted exchanges (a scriptable relay), reservations, NAKs,
//! DECLINE, pool exhaustion, bad input, and its command line. Needs root.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use dhcp_common::wire::{msg, opt};
use dhcproto::v4::MessageType;
use xdpdhcp_tests::{
    frames::Bootp,
    netlab::*,
    relay_client::{RelayClient, mac},
};

fn lab_and_daemon(extra: &str) -> (Lab, Daemon) {
    let mut lab = Lab::new(1).unwrap();
    let config = lab.config(600, "", extra);
    let d = lab.start_daemon(&config).unwrap();
    (lab, d)
}

#[test]
fn e2e_two_relays_forwarding_one_discover_get_the_same_offer() {
    let (lab, d) = lab_and_daemon("");
    lab.relay
        .run(&["ip", "addr", "add", "192.168.60.2/22", "dev", "vr"])
        .unwrap();
    let r1 = RelayClient::new(&lab.relay, PLAYED_RELAY_GIADDR).unwrap();
    let r2 = RelayClient::new(&lab.relay, Ipv4Addr::new(192, 168, 60, 2)).unwrap();
    let discover = Bootp {
        xid: 0x5151,
        ..Bootp::dhcp(msg::DISCOVER, mac(7))
    };
    r1.send(&discover).unwrap();
    r2.send(&discover).unwrap();
    let o1 = r1
        .recv(0x5151, Duration::from_secs(3))
        .expect("offer via relay 1");
    let o2 = r2
        .recv(0x5151, Duration::from_secs(3))
        .expect("offer via relay 2");
    assert_eq!(o1.msg_type, MessageType::Offer);
    assert_eq!(
        o1.yiaddr, o2.yiaddr,
        "one client, one address, whichever relay"
    );
    // Another client gets another address.
    let mut r1 = r1;
    let other = r1.exchange(Bootp::dhcp(msg::DISCOVER, mac(8))).unwrap();
    assert_ne!(other.yiaddr, o1.yiaddr);
    assert_eq!(d.counter("tx_offer"), 3);
}

#[test]
fn e2e_reservation_for_a_real_client() {
    let mut lab = Lab::new(1).unwrap();
    let mac_text = lab.clients[0]
        .run(&["cat", "/sys/class/net/vc/address"])
        .unwrap();
    let extra = format!(
        "[[reservation]]\nhw-address = \"{}\"\nip-address = \"10.0.0.42\"\nhostname = \"reserved-host\"\n",
        mac_text.trim()
    );
    let config = lab.config(600, "", &extra);
    let d = lab.start_daemon(&config).unwrap();
    let script = script(&lab.dir, "udhcpc-script", UDHCPC_SCRIPT)
        .unwrap()
        .display()
        .to_string();
    lab.clients[0]
        .spawn(
            &[
                "busybox", "udhcpc", "-f", "-i", "vc", "-s", &script, "-t", "5", "-T", "1",
            ],
            &lab.dir.join("u.log"),
        )
        .unwrap();
    assert!(wait_for(Duration::from_secs(20), || address_of(
        &lab.clients[0],
        "vc"
    ) == Some(
        Ipv4Addr::new(10, 0, 0, 42)
    )));
    let lease = d
        .leases()
        .into_iter()
        .find(|l| l["address"] == "10.0.0.42")
        .unwrap();
    assert_eq!(lease["hostname"], "reserved-host");
    // Nobody else can have it.
    let mut r = RelayClient::new(&lab.relay, Ipv4Addr::new(10, 0, 0, 2)).unwrap();
    let offer = r
        .exchange(Bootp::dhcp(msg::DISCOVER, mac(1)).with(opt::REQUESTED_ADDRESS, &[10, 0, 0, 42]))
        .unwrap();
    assert_ne!(offer.yiaddr, Ipv4Addr::new(10, 0, 0, 42));
}

#[test]
fn e2e_naks() {
    let (lab, d) = lab_and_daemon("");
    let mut r = RelayClient::new(&lab.relay, PLAYED_RELAY_GIADDR).unwrap();
    // INIT-REBOOT for an address of another network (the client moved).
    let a = r
        .exchange(Bootp::init_reboot(Ipv4Addr::new(10, 0, 0, 150), mac(1)))
        .expect("answer");
    assert_eq!(a.msg_type, MessageType::Nak);
    // RENEWING an address it never had.
    let a = r
        .renew(Ipv4Addr::new(192, 168, 60, 77), mac(2))
        .expect("answer");
    assert_eq!(a.msg_type, MessageType::Nak);
    // SELECTING an address leased to someone else.
    let taken = r.dora(mac(3)).unwrap().yiaddr;
    let a = r
        .exchange(
            Bootp::dhcp(msg::REQUEST, mac(4))
                .with(opt::REQUESTED_ADDRESS, &taken.octets())
                .with(opt::SERVER_ID, &SERVER_IP.octets()),
        )
        .expect("answer");
    assert_eq!(a.msg_type, MessageType::Nak);
    // NAKs name the server and explain.
    assert!(a.options.iter().any(|(c, v)| *c == 56 && !v.is_empty()));
    assert!(d.counter("tx_nak") >= 3);
    // The rightful owner still renews (through XDP).
    let before = d.fast("ack_rebinding");
    assert_eq!(r.renew(taken, mac(3)).unwrap().msg_type, MessageType::Ack);
    assert!(d.fast("ack_rebinding") > before);
}

#[test]
fn e2e_decline_quarantines() {
    let (lab, d) = lab_and_daemon("");
    let mut r = RelayClient::new(&lab.relay, PLAYED_RELAY_GIADDR).unwrap();
    let bad = r.dora(mac(1)).unwrap().yiaddr;
    let decline = Bootp::dhcp(msg::DECLINE, mac(1))
        .with(opt::REQUESTED_ADDRESS, &bad.octets())
        .with(opt::SERVER_ID, &SERVER_IP.octets());
    r.send(&decline).unwrap();
    assert!(wait_for(Duration::from_secs(5), || d.leases().iter().any(
        |l| l["address"] == bad.to_string() && l["state"] == "declined"
    )));
    // The address is not handed out again, not even when asked for; the client's renewal of it
    // no longer succeeds through XDP.
    for n in 2..6 {
        let o = r
            .exchange(
                Bootp::dhcp(msg::DISCOVER, mac(n)).with(opt::REQUESTED_ADDRESS, &bad.octets()),
            )
            .unwrap();
        assert_ne!(o.yiaddr, bad);
    }
    assert_eq!(r.renew(bad, mac(1)).unwrap().msg_type, MessageType::Nak);
    assert!(d.log_text().contains("DECLINE"));
}

#[test]
fn e2e_pool_exhaustion_is_logged_and_counted() {
    let mut lab = Lab::new(0).unwrap();
    let config = lab.config(600, "", "").replace(
        r#"pools = [{ start = "192.168.60.10", end = "192.168.63.250" }]"#,
        r#"pools = [{ start = "192.168.60.10", end = "192.168.60.12" }]"#,
    );
    let d = lab.start_daemon(&config).unwrap();
    let mut r = RelayClient::new(&lab.relay, PLAYED_RELAY_GIADDR).unwrap();
    for n in 0..3 {
        r.dora(mac(n)).unwrap();
    }
    assert!(
        r.exchange(Bootp::dhcp(msg::DISCOVER, mac(99))).is_none(),
        "no offer from an exhausted pool"
    );
    assert!(d.counter("pool_exhausted") >= 1);
    assert!(d.log_text().contains("pool exhausted"), "{}", d.log_text());
    let pools = d.stats()["pools"].clone();
    let p = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["subnet"] == "192.168.60.0/22")
        .unwrap()
        .clone();
    assert_eq!(
        (p["free"].as_u64(), p["total"].as_u64()),
        (Some(0), Some(3))
    );
}

#[test]
fn e2e_bad_input_is_survived_and_counted() {
    let (lab, d) = lab_and_daemon("");
    let r = RelayClient::new(&lab.relay, PLAYED_RELAY_GIADDR).unwrap();
    let good = Bootp::dhcp(msg::DISCOVER, mac(1))
        .relayed_by(PLAYED_RELAY_GIADDR)
        .encode();
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1; 10],
        good[..200].to_vec(),
        good[..238].to_vec(),
        // No magic cookie (BOOTP).
        {
            let mut b = good.clone();
            b[236] = 0;
            b
        },
        // An option running past the end.
        {
            let mut b = good[..243].to_vec();
            b.extend_from_slice(&[12, 200, 1, 2]);
            b
        },
        // Message type of length 3, and of an unknown value.
        {
            let mut b = good[..240].to_vec();
            b.extend_from_slice(&[53, 3, 1, 1, 1, 255]);
            b
        },
        {
            let mut b = good[..240].to_vec();
            b.extend_from_slice(&[53, 1, 77, 255]);
            b
        },
        // Requested address of length 2.
        {
            let mut b = good[..243].to_vec();
            b.extend_from_slice(&[50, 2, 1, 1, 255]);
            b
        },
        // hlen 200.
        {
            let mut b = good.clone();
            b[2] = 200;
            b
        },
    ];
    // Unknown options and a giant option list (~1400 bytes) are fine: answered.
    let mut giant = Bootp::dhcp(msg::DISCOVER, mac(2));
    for code in 200..=254u8 {
        giant = giant.with(code, &[code; 20]);
    }
    let giant = Bootp {
        xid: 0x6161,
        ..giant
    };
    let mut random = 0x1234_5678u32;
    for _ in 0..200 {
        let mut b = good.clone();
        for _ in 0..8 {
            random ^= random << 13;
            random ^= random >> 17;
            random ^= random << 5;
            let i = random as usize % b.len();
            b[i] = (random >> 8) as u8;
        }
        cases.push(b);
    }
    for c in &cases {
        r.send_raw(c).unwrap();
    }
    r.send(&giant).unwrap();
    let offer = r
        .recv(0x6161, Duration::from_secs(5))
        .expect("an offer despite 55 unknown options");
    assert_eq!(offer.msg_type, MessageType::Offer);
    assert!(
        d.counter("drop_malformed") >= 8,
        "{}",
        serde_json::to_string_pretty(&d.stats()).unwrap()
    );
    // Still serving normally, still running, nothing panicked.
    let mut r = r;
    r.dora(mac(3)).unwrap();
    assert!(!d.log_text().contains("panicked"));
}

fn xdpdhcp(args: &[&str]) -> (bool, String) {
    let out = Command::new(daemon_binary()).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn e2e_command_line() {
    let (lab, d) = lab_and_daemon("");
    let mut r = RelayClient::new(&lab.relay, PLAYED_RELAY_GIADDR).unwrap();
    let ack = r.dora(mac(1)).unwrap();
    r.renew(ack.yiaddr, mac(1)).unwrap();
    let socket = d.control.display().to_string();

    let (ok, out) = xdpdhcp(&["stats", "--socket", &socket, "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["fast_path"]["ack_rebinding"].as_u64().unwrap() >= 1);
    assert_eq!(v["daemon"]["ack_selecting"], 1);
    let (ok, out) = xdpdhcp(&["stats", "--socket", &socket]);
    assert!(
        ok && out.contains("ack_rebinding") && out.contains("answered in XDP"),
        "{out}"
    );

    let (ok, out) = xdpdhcp(&["leases", "--socket", &socket, "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["leases"][0]["address"], ack.yiaddr.to_string());
    assert_eq!(v["leases"][0]["hwaddr"], "02:42:00:00:00:01");
    let (ok, out) = xdpdhcp(&["leases", "--socket", &socket]);
    assert!(ok && out.contains(&ack.yiaddr.to_string()), "{out}");

    // Stats of a server that does not answer: a clear error, not a panic.
    let (ok, out) = xdpdhcp(&["stats", "--socket", "/nonexistent/control.sock"]);
    assert!(
        !ok && out.contains("connecting to /nonexistent/control.sock"),
        "{out}"
    );
}

#[test]
fn e2e_configuration_errors() {
    let lab = Lab::new(0).unwrap();
    let bad = lab.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "interfaces = [\"vs\"]\n[[subnet]]\nsubnet = \"10.0.0.0/24\"\npools = [{ start = \"10.0.0.200\", end = \"10.0.0.100\" }]\n[subnet.options]\nrouters = \"not-an-ip\"\n",
    )
    .unwrap();
    let (ok, out) = xdpdhcp(&["check-config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("line 4") && out.contains("ends before it starts"),
        "{out}"
    );
    assert!(out.contains("line 6") && out.contains("routers"), "{out}");
    // serve refuses it too, with the same message, and exits.
    let (ok, out) = xdpdhcp(&["serve", "--config", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("ends before it starts"), "{out}");
    let good = lab.dir.join("good.toml");
    std::fs::write(&good, lab.config(600, "", "")).unwrap();
    let (ok, out) = xdpdhcp(&["check-config", good.to_str().unwrap()]);
    assert!(ok && out.contains("OK"), "{out}");
    // A missing file.
    let (ok, out) = xdpdhcp(&["check-config", "/nonexistent.toml"]);
    assert!(!ok && out.contains("cannot read"), "{out}");
}

#[test]
fn e2e_inform_gets_parameters_without_a_lease() {
    let (lab, d) = lab_and_daemon("");
    let mut r = RelayClient::new(&lab.relay, PLAYED_RELAY_GIADDR).unwrap();
    let inform = Bootp {
        ciaddr: Ipv4Addr::new(192, 168, 60, 99),
        ..Bootp::dhcp(msg::INFORM, mac(5))
    }
    .with(opt::PARAMETER_REQUEST_LIST, &[3, 6]);
    let a = r.exchange(inform).expect("an answer to INFORM");
    assert_eq!(a.msg_type, MessageType::Ack);
    assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED, "RFC 2131 §3.4: no address");
    assert_eq!(a.lease_time, None, "and no lease time");
    assert_eq!(
        a.options
            .iter()
            .find(|(c, _)| *c == 3)
            .map(|(_, v)| v.clone()),
        Some(vec![192, 168, 60, 1])
    );
    assert!(d.leases().is_empty(), "INFORM creates no lease");
}
