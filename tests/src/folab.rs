//! A failover lab: two servers (xdpdhcp or ISC dhcpd) on one client segment, with their own
//! link for the failover protocol (so a partition is `ip link set fo down`), and clients.
//!
//! ```text
//!   S1 (primary)    vs 10.0.0.1/24 ──┐            ┌── vc (C0) … vc (Cn)
//!                   fo 10.9.0.1/30 ─┐│  W: br0   │
//!                                   ││            │
//!   S2 (secondary)  fo 10.9.0.2/30 ─┘│            │
//!                   vs 10.0.0.2/24 ──┘────────────┘
//! ```

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netlab::{DHCLIENT_SCRIPT, Daemon, Netns, script, sh, veth, wait_for};

pub const NAME: &str = "lab-failover";
pub const POOL_START: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const POOL_END: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 119);

/// Timing of a lab relationship (short, so that tests run in seconds).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease_time: u32,
    pub mclt: u32,
    pub max_response_delay: u32,
}

pub const FAST: Timing = Timing {
    lease_time: 60,
    mclt: 10,
    max_response_delay: 4,
};

pub struct FoLab {
    pub id: String,
    pub dir: PathBuf,
    pub servers: [Netns; 2],
    pub switch: Netns,
    pub clients: Vec<Netns>,
    /// Last address of the pool (10.0.0.100 – this); both servers get the same pool.
    pub pool_end: Ipv4Addr,
    /// dhclient processes per client index.
    dhclients: BTreeMap<usize, u32>,
}

/// Server `n` (0: primary, 1: secondary): client-side and failover addresses.
pub fn server_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 1 + n as u8)
}

pub fn failover_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, 1 + n as u8)
}

/// A MAC whose RFC 3074 bucket (split 128) belongs to the primary or to the secondary. The
/// clients send no client identifier, so the bucket is the hash of the MAC.
pub fn mac_for(primary: bool, n: u8) -> [u8; 6] {
    (0..=255u8)
        .map(|i| [0x02, 0x1f, 0x00, n, 0x00, i])
        .find(|m| (dhcp_common::loadbalance::bucket(m) < 128) == primary)
        .expect("both halves are common")
}

pub fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FoLab {
    pub fn new(clients: usize) -> Result<FoLab> {
        let id = format!(
            "{:x}{}",
            std::process::id() % 0xfff,
            crate::netlab::next_lab_number()
        );
        let dir = std::env::temp_dir().join(format!("xdpdhcp-folab-{id}"));
        let _ = fs::remove_dir_all(&dir);
        for n in 0..2 {
            fs::create_dir_all(dir.join(format!("s{}", n + 1)))?;
        }
        let s1 = Netns::new(&format!("xf{id}s1"))?;
        let s2 = Netns::new(&format!("xf{id}s2"))?;
        let switch = Netns::new(&format!("xf{id}w"))?;
        switch.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.run(&["ip", "link", "set", "br0", "up"])?;
        let port = |name: &str| switch.run(&["ip", "link", "set", name, "master", "br0"]);
        for (n, s) in [&s1, &s2].into_iter().enumerate() {
            let w = format!("ws{}", n + 1);
            veth(s, "vs", &switch, &w)?;
            port(&w)?;
            s.run(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", server_ip(n)),
                "dev",
                "vs",
            ])?;
        }
        veth(&s1, "fo", &s2, "fo")?;
        s1.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", failover_ip(0)),
            "dev",
            "fo",
        ])?;
        s2.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", failover_ip(1)),
            "dev",
            "fo",
        ])?;
        let mut lab_clients = vec![];
        for i in 0..clients {
            let c = Netns::new(&format!("xf{id}c{i}"))?;
            veth(&c, "vc", &switch, &format!("w{i}"))?;
            port(&format!("w{i}"))?;
            lab_clients.push(c);
        }
        Ok(FoLab {
            id,
            dir,
            servers: [s1, s2],
            switch,
            clients: lab_clients,
            pool_end: POOL_END,
            dhclients: BTreeMap::new(),
        })
    }

    pub fn server_dir(&self, n: usize) -> PathBuf {
        self.dir.join(format!("s{}", n + 1))
    }

    /// The xdpdhcp configuration of server `n` (0 primary, 1 secondary).
    pub fn xdpdhcp_config(&self, n: usize, t: Timing, extra_failover: &str) -> String {
        let dir = self.server_dir(n);
        let role = if n == 0 { "primary" } else { "secondary" };
        let lb = if n == 0 { "split = 128\n" } else { "" };
        format!(
            r#"interfaces = ["vs"]
server-id = "{sid}"
lease-store = "{dir}/leases.db"
control-socket = "{dir}/control.sock"
bpffs-dir = "/sys/fs/bpf/xdpdhcp-fo{id}-{n}"
xdp-mode = "generic"

[failover]
name = "{NAME}"
role = "{role}"
address = "{me}"
peer-address = "{peer}"
mclt = {mclt}
max-response-delay = {mrd}
max-unacked-updates = 10
load-balance-max-seconds = 3
{lb}{extra_failover}

[[subnet]]
subnet = "10.0.0.0/24"
interface = "vs"
pools = [{{ start = "{POOL_START}", end = "{end}" }}]
default-lease-time = {lt}
max-lease-time = {lt}
min-lease-time = 10
[subnet.options]
routers = ["10.0.0.254"]
"#,
            sid = server_ip(n),
            dir = dir.display(),
            id = self.id,
            me = failover_ip(n),
            peer = failover_ip(1 - n),
            mclt = t.mclt,
            mrd = t.max_response_delay,
            lt = t.lease_time,
            end = self.pool_end,
        )
    }

    /// Addresses in the pool.
    pub fn pool_size(&self) -> u32 {
        u32::from(self.pool_end) - u32::from(POOL_START) + 1
    }

    pub fn start_xdpdhcp(&self, n: usize, t: Timing, extra_failover: &str) -> Result<Daemon> {
        let config = self.xdpdhcp_config(n, t, extra_failover);
        Daemon::start(&self.servers[n].name, &self.server_dir(n), &config)
    }

    /// ISC dhcpd as server `n`, with the same relationship.
    pub fn start_dhcpd(&mut self, n: usize, t: Timing, auto_partner_down: u32) -> Result<Dhcpd> {
        let dir = self.server_dir(n);
        let role = if n == 0 { "primary" } else { "secondary" };
        let primary_only = if n == 0 {
            format!("mclt {};\n    split 128;\n", t.mclt)
        } else {
            String::new()
        };
        let auto = if auto_partner_down > 0 {
            format!("auto-partner-down {auto_partner_down};\n")
        } else {
            String::new()
        };
        let conf = format!(
            r#"authoritative;
ddns-update-style none;
default-lease-time {lt};
max-lease-time {lt};
min-lease-time 10;
ping-check false;
failover peer "{NAME}" {{
    {role};
    address {me};
    port 647;
    peer address {peer};
    peer port 647;
    max-response-delay {mrd};
    max-unacked-updates 10;
    load balance max seconds 3;
    {primary_only}    {auto}}}
subnet 10.0.0.0 netmask 255.255.255.0 {{
    option routers 10.0.0.254;
    pool {{
        failover peer "{NAME}";
        deny dynamic bootp clients;
        range {POOL_START} {end};
    }}
}}
"#,
            lt = t.lease_time,
            me = failover_ip(n),
            peer = failover_ip(1 - n),
            mrd = t.max_response_delay,
            end = self.pool_end,
        );
        let conf_path = dir.join("dhcpd.conf");
        fs::write(&conf_path, conf)?;
        let leases = dir.join("dhcpd.leases");
        if !leases.exists() {
            fs::write(&leases, "")?;
        }
        let log = dir.join(format!("dhcpd-{}.log", fs::read_dir(&dir)?.count()));
        let argv = [
            "dhcpd",
            "-4",
            "-f",
            "-d",
            "-cf",
            conf_path.to_str().unwrap(),
            "-lf",
            leases.to_str().unwrap(),
            "-pf",
            dir.join("dhcpd.pid").to_str().unwrap(),
            "vs",
        ]
        .map(String::from);
        let out = fs::File::create(&log)?;
        let child = self.servers[n]
            .cmd("dhcpd")
            .args(&argv[1..])
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting dhcpd")?;
        Ok(Dhcpd {
            child: Some(child),
            log,
            leases,
        })
    }

    /// Starts dhclient for client `i` with `mac` (it runs until the lab ends or `stop_client`).
    pub fn start_client(&mut self, i: usize, mac: [u8; 6]) -> Result<()> {
        let c = &self.clients[i];
        c.run(&["ip", "link", "set", "vc", "down"])?;
        c.run(&["ip", "link", "set", "vc", "address", &mac_text(mac)])?;
        c.run(&["ip", "link", "set", "vc", "up"])?;
        let dir = self.dir.join(format!("c{i}"));
        fs::create_dir_all(&dir)?;
        let script = script(&dir, "dhclient-script", DHCLIENT_SCRIPT)?;
        let argv = [
            "dhclient".to_string(),
            "-d".into(),
            "-v".into(),
            "-lf".into(),
            dir.join("dhclient.leases").display().to_string(),
            "-pf".into(),
            dir.join("dhclient.pid").display().to_string(),
            "-sf".into(),
            script.display().to_string(),
            "vc".into(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let pid = self.clients[i].spawn(&argv, &dir.join("dhclient.log"))?;
        self.dhclients.insert(i, pid);
        Ok(())
    }

    pub fn stop_client(&mut self, i: usize) {
        if let Some(pid) = self.dhclients.remove(&i) {
            self.clients[i].signal(pid, libc::SIGKILL);
        }
    }

    /// Client `i`'s address and the server that gave it, once bound.
    pub fn client_lease(&self, i: usize) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let address = crate::netlab::address_of(&self.clients[i], "vc")?;
        let log = fs::read_to_string(self.dir.join(format!("c{i}/dhclient.log"))).ok()?;
        let from = log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("DHCPACK of {address} from ")))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((address, from))
    }

    pub fn wait_client(&self, i: usize, timeout: Duration) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.client_lease(i) {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!(
                    "client {i} got no lease within {timeout:?}:\n{}",
                    fs::read_to_string(self.dir.join(format!("c{i}/dhclient.log")))
                        .unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The lines of client `i`'s script event log (`BOUND 10.0.0.100 `, `RENEW …`).
    pub fn client_events(&self, i: usize) -> Vec<String> {
        fs::read_to_string(self.dir.join(format!("c{i}/dhclient-vc-events.log")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every address client `i` was ever bound to (its script's event log).
    pub fn client_history(&self, i: usize) -> Vec<Ipv4Addr> {
        let log = fs::read_to_string(self.dir.join(format!("c{i}/dhclient-vc-events.log")))
            .unwrap_or_default();
        let mut v: Vec<Ipv4Addr> = log
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match w.next()? {
                    "BOUND" | "RENEW" | "REBIND" | "REBOOT" => w.next()?.parse().ok(),
                    _ => None,
                }
            })
            .collect();
        v.dedup();
        v
    }

    /// Cuts (or restores) the failover link between the servers.
    pub fn partition(&self, cut: bool) -> Result<()> {
        let state = if cut { "down" } else { "up" };
        for s in &self.servers {
            s.run(&["ip", "link", "set", "fo", state])?;
        }
        Ok(())
    }
}

impl Drop for FoLab {
    fn drop(&mut self) {
        if std::env::var_os("XDPDHCP_KEEP_LAB").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `xdpdhcp failover status` of a daemon, as JSON.
pub fn status(d: &Daemon) -> Value {
    d.ask("failover-status").unwrap_or_default()
}

/// Waits until `d` reports `state` (its own failover state).
pub fn wait_state(d: &Daemon, state: &str, timeout: Duration) -> Result<()> {
    if wait_for(timeout, || {
        status(d)["my_state"] == state && status(d)["starting_up"] == false
    }) {
        Ok(())
    } else {
        bail!(
            "failover state is not {state} after {timeout:?}: {}\n{}",
            status(d),
            d.log_text()
        )
    }
}

/// xdpdhcp's bindings: address → (state, hardware address).
pub fn xdpdhcp_bindings(d: &Daemon) -> BTreeMap<Ipv4Addr, (String, String)> {
    d.leases()
        .into_iter()
        .filter_map(|l| {
            Some((
                l["address"].as_str()?.parse().ok()?,
                (
                    l["state"].as_str()?.to_string(),
                    l["hwaddr"].as_str().unwrap_or("").to_string(),
                ),
            ))
        })
        .collect()
}

/// A running ISC dhcpd.
pub struct Dhcpd {
    child: Option<Child>,
    pub log: PathBuf,
    pub leases: PathBuf,
}

impl Dhcpd {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until dhcpd's log has a line containing `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) -> Result<()> {
        if wait_for(timeout, || self.log_text().contains(text)) {
            Ok(())
        } else {
            bail!("dhcpd never logged `{text}`:\n{}", self.log_text())
        }
    }

    /// dhcpd's bindings from its lease file: address → (binding state, hardware address).
    pub fn bindings(&self) -> BTreeMap<Ipv4Addr, (String, String)> {
        parse_dhcpd_leases(&fs::read_to_string(&self.leases).unwrap_or_default())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dhcpd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last block of each address in a dhcpd.leases file.
pub fn parse_dhcpd_leases(text: &str) -> BTreeMap<Ipv4Addr, (String, String)> {
    let mut out = BTreeMap::new();
    let mut current: Option<(Ipv4Addr, String, String)> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("lease ") {
            current = rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .map(|a| (a, String::new(), String::new()));
        } else if let Some(rest) = l.strip_prefix("binding state ") {
            if let Some(c) = &mut current {
                c.1 = rest.trim_end_matches(';').to_string();
            }
        } else if let Some(rest) = l.strip_prefix("hardware ethernet ") {
            if let Some(c) = &mut current {
                c.2 = rest.trim_end_matches(';').to_string();
            }
        } else if l == "}"
            && let Some((a, state, hw)) = current.take()
        {
            out.insert(a, (state, hw));
        }
    }
    out
}

/// Runs `xdpdhcp failover partner-down` against `d`.
pub fn partner_down(d: &Daemon) -> Result<String> {
    sh(std::process::Command::new(crate::netlab::daemon_binary())
        .args(["failover", "partner-down", "--socket"])
        .arg(&d.control))
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
