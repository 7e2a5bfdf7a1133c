//! `cargo xtask lab`: the whole system on one machine. A server namespace runs xdpdhcp with
//! XDP on its veth; two client namespaces run dhclient and busybox udhcpc; a relay namespace
//! runs ISC dhcrelay for a client behind it. The lab walks the clients through DORA, renewal,
//! reboot and release, then measures DORA/s with perfdhcp, and prints which replies the XDP
//! program answered.

use std::{thread, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use xdpdhcp_tests::netlab::*;

#[derive(Parser)]
#[command(about = "Run xdpdhcp in a network-namespace lab with real clients")]
struct Args {
    /// Keep the lab (namespaces, daemon) until Enter is pressed, to look around.
    #[arg(long)]
    hold: bool,
    /// Seconds of perfdhcp DORA load at the end (0: skip).
    #[arg(long, default_value_t = 10)]
    perfdhcp_seconds: u32,
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn wait(what: &str, secs: u64, f: impl FnMut() -> bool) -> Result<()> {
    if !wait_for(Duration::from_secs(secs), f) {
        bail!("timed out after {secs} s waiting for {what}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("xdpdhcp lab: server, switch, two clients, a relay with a client behind it");
    let mut lab = Lab::new(2).context("creating namespaces (run as root)")?;
    let config = lab.config(20, "", "");
    let d = lab.start_daemon(&config)?;
    println!(
        "daemon: {} (config {}, log {})",
        daemon_binary().display(),
        d.config.display(),
        d.log.display()
    );

    let dir = lab.dir.display().to_string();
    let dh_script = script(&lab.dir, "dhclient-script", DHCLIENT_SCRIPT)?
        .display()
        .to_string();
    let ud_script = script(&lab.dir, "udhcpc-script", UDHCPC_SCRIPT)?
        .display()
        .to_string();
    // Each dhclient has its own lease and pid file (both clients' interfaces are called vc).
    let dhclient = |who: &str| -> Vec<String> {
        [
            "dhclient",
            "-d",
            "-v",
            "-lf",
            &format!("{dir}/dhclient-{who}.leases"),
            "-pf",
            &format!("{dir}/dhclient-{who}.pid"),
            "-sf",
            &dh_script,
            "vc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let argv = dhclient("client1");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();

    step("DORA: dhclient (client 1), udhcpc (client 2), dhclient behind dhcrelay (relayed client)");
    let dhclient_pid = lab.clients[0].spawn(&argv, &lab.dir.join("dhclient.log"))?;
    let udhcpc_pid = lab.clients[1].spawn(
        &[
            "busybox", "udhcpc", "-f", "-i", "vc", "-s", &ud_script, "-t", "5", "-T", "1",
        ],
        &lab.dir.join("udhcpc.log"),
    )?;
    let dhcrelay_pid = lab.relay.spawn(
        &["dhcrelay", "-d", "-4", "-iu", "vr", "-id", "rc", "10.0.0.1"],
        &lab.dir.join("dhcrelay.log"),
    )?;
    thread::sleep(Duration::from_millis(300));
    let relayed_argv = dhclient("relayed");
    let relayed_argv: Vec<&str> = relayed_argv.iter().map(String::as_str).collect();
    lab.relayed_client
        .spawn(&relayed_argv, &lab.dir.join("dhclient-relayed.log"))?;
    wait("client 1's lease", 20, || {
        address_of(&lab.clients[0], "vc").is_some()
    })?;
    wait("client 2's lease", 20, || {
        address_of(&lab.clients[1], "vc").is_some()
    })?;
    wait("the relayed client's lease", 20, || {
        address_of(&lab.relayed_client, "vc").is_some()
    })?;
    lab.relayed_client
        .run(&["ip", "route", "replace", "default", "via", "192.168.50.1"])?;
    let a1 = address_of(&lab.clients[0], "vc").expect("waited");
    let a2 = address_of(&lab.clients[1], "vc").expect("waited");
    let a3 = address_of(&lab.relayed_client, "vc").expect("waited");
    println!(
        "client 1 (dhclient) {a1}, client 2 (udhcpc) {a2}, relayed client (dhclient via dhcrelay) {a3}"
    );

    step("Renewal at T1 (leases are 20 s): unicast REQUESTs, answered by XDP");
    wait("three fast-path renewals", 30, || {
        d.fast("ack_renewing") >= 3
    })?;
    println!("fast-path renewals so far: {}", d.fast("ack_renewing"));

    step("Reboot: client 1's dhclient restarts and asks for its address back (INIT-REBOOT)");
    lab.clients[0].signal(dhclient_pid, libc::SIGKILL);
    lab.clients[0].run(&["ip", "addr", "flush", "dev", "vc"])?;
    lab.clients[0].spawn(&argv, &lab.dir.join("dhclient-reboot.log"))?;
    wait("the INIT-REBOOT ACK", 20, || d.fast("ack_init_reboot") >= 1)?;
    wait("client 1 back on its address", 10, || {
        address_of(&lab.clients[0], "vc") == Some(a1)
    })?;
    println!(
        "client 1 is back on {a1}; answered by XDP: ack_init_reboot = {}",
        d.fast("ack_init_reboot")
    );

    step("Release: dhclient -r on client 1, SIGUSR2 to udhcpc on client 2");
    lab.clients[0].run(&[
        "dhclient",
        "-r",
        "-lf",
        &format!("{dir}/dhclient-client1.leases"),
        "-pf",
        &format!("{dir}/dhclient-client1.pid"),
        "-sf",
        &dh_script,
        "vc",
    ])?;
    lab.clients[1].signal(udhcpc_pid, libc::SIGUSR2);
    let released = |a: std::net::Ipv4Addr| {
        d.leases()
            .iter()
            .any(|l| l["address"] == a.to_string() && l["state"] == "released")
    };
    wait("both releases", 10, || released(a1) && released(a2))?;
    println!("{a1} and {a2} released");

    if args.perfdhcp_seconds > 0 {
        step(&format!(
            "perfdhcp (a relay, giaddr 192.168.60.1): new clients as fast as possible, {} s",
            args.perfdhcp_seconds
        ));
        let secs = args.perfdhcp_seconds.to_string();
        // perfdhcp binds port 67 itself: dhcrelay has to go.
        lab.relay.signal(dhcrelay_pid, libc::SIGKILL);
        // perfdhcp exits non-zero when it saw drops; its report is the same either way.
        match lab.relay.run(&[
            "perfdhcp",
            "-4",
            "-l",
            "192.168.60.1",
            "-r",
            "20000",
            "-R",
            "900",
            "-p",
            &secs,
            "-g",
            "single",
            "10.0.0.1",
        ]) {
            Ok(out) => print_perfdhcp(&out),
            Err(e) => print_perfdhcp(&format!("{e:#}")),
        }
    }

    step("Counters: the fast path (XDP) and the daemon");
    let stats = d.stats();
    let fast = &stats["fast_path"];
    for counter in dhcp_common::Counter::ALL {
        let n = fast[counter.name()].as_u64().unwrap_or(0);
        if n > 0 {
            println!(
                "  xdp    {:<26} {:>9}   {}",
                counter.name(),
                n,
                counter.help()
            );
        }
    }
    for (k, v) in stats["daemon"].as_object().into_iter().flatten() {
        println!("  daemon {k:<26} {v:>9}");
    }
    let fast_acks: u64 = ["ack_renewing", "ack_rebinding", "ack_init_reboot"]
        .iter()
        .map(|c| fast[c].as_u64().unwrap_or(0))
        .sum();
    let daemon_acks: u64 = [
        "ack_selecting",
        "ack_renewing",
        "ack_rebinding",
        "ack_init_reboot",
    ]
    .iter()
    .map(|c| stats["daemon"][c].as_u64().unwrap_or(0))
    .sum();
    println!("\nACKs answered by XDP: {fast_acks}; by the daemon: {daemon_acks}");

    if args.hold {
        println!(
            "\nLab kept: namespaces xd{}*, files in {}. Press Enter to tear down.",
            lab.id,
            lab.dir.display()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    Ok(())
}

fn print_perfdhcp(out: &str) {
    for line in out.lines() {
        let l = line.trim();
        if l.starts_with("Rate:")
            || l.starts_with("***Statistics")
            || l.starts_with("sent packets")
            || l.starts_with("received packets")
            || l.starts_with("drops ratio")
        {
            println!("  {l}");
        }
    }
}
