//! The real daemon with real clients in network namespaces: dhclient, busybox udhcpc,
//! perfdhcp (a relay), ISC dhcrelay. Needs root.

use std::{fs, net::Ipv4Addr, time::Duration};

use xdpdhcp_tests::netlab::*;

fn in_pool(a: Ipv4Addr, first: [u8; 4], last: [u8; 4]) -> bool {
    Ipv4Addr::from(first) <= a && a <= Ipv4Addr::from(last)
}

fn lease_state(d: &Daemon, address: Ipv4Addr) -> Option<String> {
    d.leases()
        .into_iter()
        .find(|l| l["address"] == address.to_string())
        .map(|l| l["state"].as_str().unwrap_or("").to_string())
}

/// Short leases so that clients renew within the test (T1 = 10 s).
const SHORT_LEASE: u32 = 20;

fn dhclient_argv<'a>(dir: &'a str, script: &'a str, iface: &'a str) -> Vec<String> {
    vec![
        "dhclient".into(),
        "-d".into(),
        "-v".into(),
        "-lf".into(),
        format!("{dir}/dhclient-{iface}.leases"),
        "-pf".into(),
        format!("{dir}/dhclient-{iface}.pid"),
        "-sf".into(),
        script.into(),
        iface.into(),
    ]
}

#[test]
fn e2e_dhclient_dora_fast_renew_reboot_release() {
    let mut lab = Lab::new(1).unwrap();
    let config = lab.config(SHORT_LEASE, "", "");
    let d = lab.start_daemon(&config).unwrap();
    let dir = lab.dir.display().to_string();
    let script = script(&lab.dir, "dhclient-script", DHCLIENT_SCRIPT)
        .unwrap()
        .display()
        .to_string();
    let argv = dhclient_argv(&dir, &script, "vc");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let client_log = lab.dir.join("dhclient.log");
    let pid = lab.clients[0].spawn(&argv, &client_log).unwrap();

    // DORA through the daemon.
    assert!(
        wait_for(Duration::from_secs(20), || address_of(
            &lab.clients[0],
            "vc"
        )
        .is_some()),
        "no lease: {}",
        fs::read_to_string(&client_log).unwrap_or_default()
    );
    let a = address_of(&lab.clients[0], "vc").unwrap();
    assert!(in_pool(a, [10, 0, 0, 100], [10, 0, 0, 199]), "{a}");
    assert_eq!(lease_state(&d, a).as_deref(), Some("active"));
    assert_eq!(d.counter("ack_selecting"), 1);

    // The renewal at T1 (10 s) is answered by XDP.
    assert!(
        wait_for(Duration::from_secs(25), || d.fast("ack_renewing") >= 1),
        "no fast-path renewal: {}\n{}",
        serde_json::to_string_pretty(&d.stats()).unwrap(),
        fs::read_to_string(&client_log).unwrap_or_default()
    );
    assert!(
        wait_for(Duration::from_secs(2), || d.counter("fast_path_renewals")
            >= 1),
        "the daemon saw the renewal event"
    );
    assert_eq!(address_of(&lab.clients[0], "vc"), Some(a));

    // Reboot: dhclient dies, the address goes, dhclient starts again with its lease file and
    // asks for the same address (INIT-REBOOT).
    lab.clients[0].signal(pid, libc::SIGKILL);
    lab.clients[0]
        .run(&["ip", "addr", "flush", "dev", "vc"])
        .unwrap();
    let reboot_log = lab.dir.join("dhclient-reboot.log");
    lab.clients[0].spawn(&argv, &reboot_log).unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || d.fast("ack_init_reboot") >= 1),
        "INIT-REBOOT not answered by XDP: {}",
        fs::read_to_string(&reboot_log).unwrap_or_default()
    );
    assert!(wait_for(Duration::from_secs(10), || address_of(
        &lab.clients[0],
        "vc"
    ) == Some(a)));

    // Release.
    lab.clients[0]
        .run(&[
            "dhclient",
            "-r",
            "-lf",
            &format!("{dir}/dhclient-vc.leases"),
            "-pf",
            &format!("{dir}/dhclient-vc.pid"),
            "-sf",
            &script,
            "vc",
        ])
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || lease_state(&d, a)
        .as_deref()
        == Some("released")));
    assert_eq!(d.counter("released"), 1);
}

#[test]
fn e2e_udhcpc_dora_renew_release() {
    let mut lab = Lab::new(1).unwrap();
    let config = lab.config(SHORT_LEASE, "", "");
    let d = lab.start_daemon(&config).unwrap();
    let script = script(&lab.dir, "udhcpc-script", UDHCPC_SCRIPT)
        .unwrap()
        .display()
        .to_string();
    let log = lab.dir.join("udhcpc.log");
    let pid = lab.clients[0]
        .spawn(
            &[
                "busybox", "udhcpc", "-f", "-i", "vc", "-s", &script, "-t", "5", "-T", "1", "-A",
                "1",
            ],
            &log,
        )
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || address_of(
            &lab.clients[0],
            "vc"
        )
        .is_some()),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let a = address_of(&lab.clients[0], "vc").unwrap();
    assert_eq!(lease_state(&d, a).as_deref(), Some("active"));

    // udhcpc renews at T1 with a unicast REQUEST: answered by XDP.
    assert!(
        wait_for(Duration::from_secs(25), || d.fast("ack_renewing") >= 1),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    // Forced renewal (SIGUSR1) too.
    let before = d.fast("ack_renewing");
    lab.clients[0].signal(pid, libc::SIGUSR1);
    assert!(wait_for(Duration::from_secs(10), || d.fast("ack_renewing") > before));
    // SIGUSR2: release.
    lab.clients[0].signal(pid, libc::SIGUSR2);
    assert!(
        wait_for(Duration::from_secs(10), || lease_state(&d, a).as_deref()
            == Some("released")),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn e2e_perfdhcp_relayed_dora_and_fast_renewals() {
    let mut lab = Lab::new(0).unwrap();
    let config = lab.config(600, "", "");
    let d = lab.start_daemon(&config).unwrap();
    // perfdhcp is a relay: giaddr 192.168.60.1, hops 1. 30 exchanges/s, 10 of them renewals.
    let out = lab
        .relay
        .run(&[
            "perfdhcp",
            "-4",
            "-l",
            "192.168.60.1",
            "-r",
            "30",
            "-f",
            "10",
            "-R",
            "100",
            "-p",
            "6",
            "-g",
            "single",
            "10.0.0.1",
        ])
        .unwrap();
    let received: u64 = out
        .lines()
        .filter(|l| l.contains("received packets:"))
        .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(received > 0, "perfdhcp received nothing:\n{out}");
    let leases = d.leases();
    let relayed = leases
        .iter()
        .filter(|l| {
            l["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("192.168.6"))
        })
        .count();
    assert!(
        relayed >= 10,
        "{relayed} relayed leases; perfdhcp said:\n{out}"
    );
    // Relayed renewals (ciaddr + giaddr) are answered by XDP.
    assert!(
        d.fast("ack_rebinding") > 0,
        "no fast-path relayed renewals:\n{out}\n{}",
        serde_json::to_string_pretty(&d.stats()).unwrap()
    );
}

#[test]
fn e2e_dhcrelay_relayed_client_renews_through_xdp() {
    let mut lab = Lab::new(0).unwrap();
    let config = lab.config(SHORT_LEASE, "", "");
    let d = lab.start_daemon(&config).unwrap();
    let relay_log = lab.dir.join("dhcrelay.log");
    lab.relay
        .spawn(
            &["dhcrelay", "-d", "-4", "-iu", "vr", "-id", "rc", "10.0.0.1"],
            &relay_log,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let dir = lab.dir.display().to_string();
    let script = script(&lab.dir, "dhclient-script", DHCLIENT_SCRIPT)
        .unwrap()
        .display()
        .to_string();
    let argv = dhclient_argv(&dir, &script, "vc");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let log = lab.dir.join("dhclient-relayed.log");
    lab.relayed_client.spawn(&argv, &log).unwrap();
    assert!(
        wait_for(Duration::from_secs(25), || address_of(
            &lab.relayed_client,
            "vc"
        )
        .is_some()),
        "no lease through dhcrelay: {}\n{}",
        fs::read_to_string(&log).unwrap_or_default(),
        fs::read_to_string(&relay_log).unwrap_or_default()
    );
    let a = address_of(&lab.relayed_client, "vc").unwrap();
    assert!(in_pool(a, [192, 168, 50, 10], [192, 168, 50, 250]), "{a}");
    // The client renews by unicast straight to the server (routed through the relay host).
    lab.relayed_client
        .run(&["ip", "route", "replace", "default", "via", "192.168.50.1"])
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(25), || d.fast("ack_renewing") >= 1),
        "{}",
        serde_json::to_string_pretty(&d.stats()).unwrap()
    );
}
