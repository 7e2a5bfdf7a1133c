//! The servers `cargo xtask bench` compares, each configured the same way, for its best honest
//! performance (no ping checks, quiet logging), its leases durable as it makes them by default:
//! xdpdhcp (SQLite, synchronous commits), Kea (memfile CSV), ISC dhcpd 4.4 (leases file),
//! dnsmasq (leases file).
//!
//! Network (see `BenchNet`): the server on `vs` (10.0.0.1/12), the load generator on `vg`
//! (10.0.0.2/12 and relay address 172.16.0.1). Bound clients can be preloaded into each
//! server's own lease database before it starts.

use std::{
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use dhcp_common::loadgen::client_mac;
use dhcp_user::{
    lease::{ClientKey, FailoverTimes, HwAddr, Lease, LeaseState},
    store::{self, Batch, Write},
};

use crate::{
    frames::Bootp,
    netlab::{Netns, daemon_binary, sh, veth},
    relay_client::RelayClient,
};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// Directly attached clients (INIT-REBOOT storm): client `i` holds `DIRECT_BASE + i`.
pub const DIRECT_BASE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
pub const DIRECT_POOL_END: Ipv4Addr = Ipv4Addr::new(10, 2, 255, 255);
/// Relayed clients (renewals, DORA): client `i` holds `RELAY_BASE + i`.
pub const RELAY_BASE: Ipv4Addr = Ipv4Addr::new(172, 16, 16, 0);
pub const RELAY_POOL_END: Ipv4Addr = Ipv4Addr::new(172, 19, 255, 255);
/// Client indices of the preloaded direct clients start here (relayed ones at 0).
pub const DIRECT_INDEX: u32 = 1 << 20;
pub const LEASE_TIME: u32 = 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Xdpdhcp,
    Kea,
    Dhcpd,
    Dnsmasq,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Xdpdhcp, Kind::Kea, Kind::Dhcpd, Kind::Dnsmasq];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Xdpdhcp => "xdpdhcp",
            Kind::Kea => "kea",
            Kind::Dhcpd => "dhcpd",
            Kind::Dnsmasq => "dnsmasq",
        }
    }
}

/// Generator and server namespaces joined by a veth pair.
pub struct BenchNet {
    pub server: Netns,
    pub generator: Netns,
    pub dir: PathBuf,
    pub server_mac: [u8; 6],
    pub gen_mac: [u8; 6],
}

fn mac_of(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let text = ns.run(&["cat", &format!("/sys/class/net/{iface}/address")])?;
    dhcp_user::config::parse_mac(text.trim()).context("reading a MAC address")
}

impl BenchNet {
    pub fn new(dir: &Path) -> Result<BenchNet> {
        fs::create_dir_all(dir)?;
        let id = std::process::id() % 0xffff;
        let server = Netns::new(&format!("xb{id:x}s"))?;
        let generator = Netns::new(&format!("xb{id:x}g"))?;
        veth(&server, "vs", &generator, "vg")?;
        server.run(&["ip", "addr", "add", "10.0.0.1/12", "dev", "vs"])?;
        server.run(&["ip", "route", "add", "172.16.0.0/12", "via", "10.0.0.2"])?;
        generator.run(&["ip", "addr", "add", "10.0.0.2/12", "dev", "vg"])?;
        generator.run(&["ip", "addr", "add", "172.16.0.1/12", "dev", "vg"])?;
        let server_mac = mac_of(&server, "vs")?;
        let gen_mac = mac_of(&generator, "vg")?;
        Ok(BenchNet {
            server,
            generator,
            dir: dir.to_path_buf(),
            server_mac,
            gen_mac,
        })
    }
}

/// Raises the default socket receive buffer to the allowed maximum for the run, and restores
/// it afterwards. Frames the XDP generator sends become skbs with page-sized truesize, so the
/// default 208 KiB buffer would hold only ~50 requests and penalize socket-based servers
/// (all of them, for DORA) in a way real NIC traffic does not. The setting is global: it
/// cannot be changed per network namespace.
pub struct RecvBuffers {
    previous: String,
}

impl RecvBuffers {
    pub fn raise() -> Result<RecvBuffers> {
        let read = |k: &str| {
            fs::read_to_string(format!("/proc/sys/net/core/{k}")).map(|s| s.trim().to_string())
        };
        let previous = read("rmem_default")?;
        let max = read("rmem_max")?;
        fs::write("/proc/sys/net/core/rmem_default", &max)
            .context("raising net.core.rmem_default")?;
        Ok(RecvBuffers { previous })
    }
}

impl Drop for RecvBuffers {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/net/core/rmem_default", &self.previous);
    }
}

/// Bound clients each server starts with.
#[derive(Clone, Copy, Debug, Default)]
pub struct Preload {
    /// Relayed clients `0 .. relayed` at `RELAY_BASE + i`.
    pub relayed: u32,
    /// Direct clients `DIRECT_INDEX .. DIRECT_INDEX + direct` at `DIRECT_BASE + i`.
    pub direct: u32,
}

impl Preload {
    /// (address, hardware address) of every preloaded client.
    fn leases(&self) -> impl Iterator<Item = (Ipv4Addr, [u8; 6])> + '_ {
        let relayed =
            (0..self.relayed).map(|i| (Ipv4Addr::from(u32::from(RELAY_BASE) + i), client_mac(i)));
        let direct = (0..self.direct).map(|i| {
            (
                Ipv4Addr::from(u32::from(DIRECT_BASE) + i),
                client_mac(DIRECT_INDEX + i),
            )
        });
        relayed.chain(direct)
    }
}

/// A server under test, running in the server namespace.
pub struct Running {
    pub kind: Kind,
    child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// From spawning the process to its first answer.
    pub ready_after: Duration,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (KiB).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Starts `kind` with `preload` bound clients and waits until it answers a DISCOVER.
/// `xdp_mode` matters for xdpdhcp only.
pub fn start(kind: Kind, net: &BenchNet, preload: Preload, xdp_mode: &str) -> Result<Running> {
    start_with_pool(kind, net, preload, xdp_mode, RELAY_POOL_END)
}

/// `start`, with the relayed pool ending at `relay_pool_end` (the 1 M lease scale test).
pub fn start_with_pool(
    kind: Kind,
    net: &BenchNet,
    preload: Preload,
    xdp_mode: &str,
    relay_pool_end: Ipv4Addr,
) -> Result<Running> {
    let dir = net.dir.join(kind.name());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let log = dir.join("server.log");
    let argv = match kind {
        Kind::Xdpdhcp => xdpdhcp(&dir, preload, xdp_mode, relay_pool_end)?,
        Kind::Kea => kea(&dir, preload)?,
        Kind::Dhcpd => dhcpd(&dir, preload)?,
        Kind::Dnsmasq => dnsmasq(&dir, preload)?,
    };
    spawn(kind, net, dir, log, &argv)
}

/// Starts xdpdhcp again on the configuration and store it already has (cold-start test).
pub fn restart_xdpdhcp(net: &BenchNet) -> Result<Running> {
    let dir = net.dir.join(Kind::Xdpdhcp.name());
    let argv = xdpdhcp_argv(&dir);
    spawn(
        Kind::Xdpdhcp,
        net,
        dir.clone(),
        dir.join("server-restart.log"),
        &argv,
    )
}

fn spawn(
    kind: Kind,
    net: &BenchNet,
    dir: PathBuf,
    log: PathBuf,
    argv: &[String],
) -> Result<Running> {
    let out = fs::File::create(&log)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.server.name])
        .args(argv)
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null());
    if kind == Kind::Kea {
        cmd.env("KEA_PIDFILE_DIR", &dir)
            .env("KEA_LOCKFILE_DIR", "none");
    }
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", kind.name()))?;
    let mut running = Running {
        kind,
        child,
        dir,
        log,
        ready_after: Duration::ZERO,
    };
    wait_ready(&mut running, net)?;
    running.ready_after = spawned.elapsed();
    wait_idle(&running);
    Ok(running)
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Waits until the server stops using CPU (start-up work done: some servers answer a first
/// DISCOVER and then spend seconds on their lease file), for at most a minute.
fn wait_idle(server: &Running) {
    server.wait_idle();
}

impl Running {
    /// Waits until the server stops using CPU (a backlog worked off), for at most 10 s.
    pub fn wait_idle(&self) {
        self.wait_idle_for(Duration::from_secs(10));
    }

    /// As `wait_idle`, for at most `max`.
    pub fn wait_idle_for(&self, max: Duration) {
        let server = self;
        let deadline = Instant::now() + max;
        let mut last = cpu_ticks(server.pid());
        let mut quiet = 0;
        while quiet < 3 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(150));
            let now = cpu_ticks(server.pid());
            quiet = if now - last <= 1 { quiet + 1 } else { 0 };
            last = now;
        }
    }
}

/// A relayed DISCOVER until an OFFER comes back (start-up may take a while: dhcpd builds
/// every pool address in memory, xdpdhcp loads its store into the fast path).
fn wait_ready(server: &mut Running, net: &BenchNet) -> Result<()> {
    let mut probe = RelayClient::new(&net.generator, RELAY_IP)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "{} exited ({status}) during start-up:\n{}",
                server.kind.name(),
                fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        // Asked every 20 ms (same xid, so a slow answer still counts): start-up time is measured to
        // within 20 ms.
        if probe
            .exchange_with(
                Bootp::dhcp(dhcp_common::wire::msg::DISCOVER, client_mac(u32::MAX)),
                50,
                Duration::from_millis(20),
            )
            .is_some()
        {
            return Ok(());
        }
    }
    bail!(
        "{} did not answer within 120 s:\n{}",
        server.kind.name(),
        fs::read_to_string(&server.log).unwrap_or_default()
    )
}

fn xdpdhcp(
    dir: &Path,
    preload: Preload,
    xdp_mode: &str,
    relay_pool_end: Ipv4Addr,
) -> Result<Vec<String>> {
    let db = dir.join("leases.db");
    let config = format!(
        r#"interfaces = ["vs"]
server-id = "10.0.0.1"
lease-store = "{db}"
control-socket = "{dir}/control.sock"
bpffs-dir = "/sys/fs/bpf/xdpdhcp-bench"
xdp-mode = "{xdp_mode}"
default-lease-time = {LEASE_TIME}
max-lease-time = {LEASE_TIME}

[[subnet]]
subnet = "10.0.0.0/12"
interface = "vs"
pools = [{{ start = "{DIRECT_BASE}", end = "{DIRECT_POOL_END}" }}]

[[subnet]]
subnet = "172.16.0.0/12"
pools = [{{ start = "{RELAY_BASE}", end = "{relay_pool_end}" }}]
"#,
        db = db.display(),
        dir = dir.display(),
    );
    fs::write(dir.join("xdpdhcp.toml"), config)?;
    preload_xdpdhcp(&db, preload)?;
    Ok(xdpdhcp_argv(dir))
}

fn xdpdhcp_argv(dir: &Path) -> Vec<String> {
    let config = dir.join("xdpdhcp.toml").display().to_string();
    vec![
        daemon_binary().display().to_string(),
        "serve".into(),
        "--config".into(),
        config,
        "--log".into(),
        "warn".into(),
    ]
}

/// Writes bound leases into an xdpdhcp store the way the daemon itself would have.
pub fn preload_xdpdhcp(db: &Path, preload: Preload) -> Result<()> {
    let now = unix_now();
    let writes: Vec<Write> = preload
        .leases()
        .map(|(address, mac)| {
            let subnet = if address.octets()[0] == 10 {
                "10.0.0.0/12"
            } else {
                "172.16.0.0/12"
            };
            Write::Lease(
                Lease {
                    address,
                    subnet: 0,
                    state: LeaseState::Active,
                    client: Some(ClientKey::Hw {
                        htype: 1,
                        addr: mac.into(),
                    }),
                    hw: Some(HwAddr::new(1, &mac)),
                    hostname: None,
                    starts: now,
                    ends: now + u64::from(LEASE_TIME),
                    held_until: now + 2 * u64::from(LEASE_TIME),
                    lease_time: LEASE_TIME,
                    failover: FailoverTimes::default(),
                },
                subnet.to_string(),
            )
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let store = store::Store::start(db, move |c| {
        let _ = tx.send(c.result);
    })?;
    store.submit(Batch { id: 1, writes })?;
    rx.recv_timeout(Duration::from_secs(300))?
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

fn kea(dir: &Path, preload: Preload) -> Result<Vec<String>> {
    let csv = dir.join("kea-leases4.csv");
    let mut f = std::io::BufWriter::new(fs::File::create(&csv)?);
    writeln!(
        f,
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context"
    )?;
    let expire = unix_now() + u64::from(LEASE_TIME);
    for (address, mac) in preload.leases() {
        let subnet = if address.octets()[0] == 10 { 1 } else { 2 };
        writeln!(
            f,
            "{address},{},,{LEASE_TIME},{expire},{subnet},0,0,,0,",
            mac_text(mac)
        )?;
    }
    f.flush()?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = format!(
        r#"{{ "Dhcp4": {{
  "interfaces-config": {{ "interfaces": ["vs"], "dhcp-socket-type": "raw" }},
  "lease-database": {{ "type": "memfile", "persist": true, "name": "{csv}", "lfc-interval": 0 }},
  "multi-threading": {{ "enable-multi-threading": true, "thread-pool-size": {threads}, "packet-queue-size": 256 }},
  "valid-lifetime": {LEASE_TIME},
  "authoritative": true,
  "subnet4": [
    {{ "id": 1, "subnet": "10.0.0.0/12", "pools": [ {{ "pool": "{DIRECT_BASE} - {DIRECT_POOL_END}" }} ] }},
    {{ "id": 2, "subnet": "172.16.0.0/12", "pools": [ {{ "pool": "{RELAY_BASE} - {RELAY_POOL_END}" }} ] }}
  ],
  "loggers": [ {{ "name": "kea-dhcp4", "severity": "{severity}", "debuglevel": 99, "output_options": [ {{ "output": "stderr" }} ] }} ]
}} }}"#,
        csv = csv.display(),
        severity = if std::env::var_os("XDPDHCP_BENCH_DEBUG").is_some() {
            "DEBUG"
        } else {
            "WARN"
        },
    );
    fs::write(dir.join("kea.json"), config)?;
    Ok(vec![
        "kea-dhcp4".into(),
        "-c".into(),
        dir.join("kea.json").display().to_string(),
    ])
}

/// dhcpd.leases dates: weekday and UTC date-time.
fn dhcpd_time(t: u64) -> String {
    let days = t / 86400;
    let secs = t % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 4) % 7; // 1970-01-01 was a Thursday
    format!(
        "{weekday} {year}/{month:02}/{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn dhcpd(dir: &Path, preload: Preload) -> Result<Vec<String>> {
    let leases = dir.join("dhcpd.leases");
    let mut f = std::io::BufWriter::new(fs::File::create(&leases)?);
    let now = unix_now();
    let (starts, ends) = (dhcpd_time(now), dhcpd_time(now + u64::from(LEASE_TIME)));
    for (address, mac) in preload.leases() {
        writeln!(
            f,
            "lease {address} {{\n  starts {starts};\n  ends {ends};\n  cltt {starts};\n  binding state active;\n  next binding state free;\n  rewind binding state free;\n  hardware ethernet {};\n}}",
            mac_text(mac)
        )?;
    }
    f.flush()?;
    let config = format!(
        "authoritative;\nping-check false;\ndefault-lease-time {LEASE_TIME};\nmax-lease-time {LEASE_TIME};\n\
         subnet 10.0.0.0 netmask 255.240.0.0 {{ range {DIRECT_BASE} {DIRECT_POOL_END}; }}\n\
         subnet 172.16.0.0 netmask 255.240.0.0 {{ range {RELAY_BASE} {RELAY_POOL_END}; }}\n"
    );
    fs::write(dir.join("dhcpd.conf"), config)?;
    let arg = |p: &str| dir.join(p).display().to_string();
    Ok(vec![
        // -d: log to stderr (our log file). With -f it logs to syslog, which without a syslog
        // daemon falls back to the console: that, not dhcpd, would be measured.
        "dhcpd".into(),
        "-4".into(),
        "-d".into(),
        "-cf".into(),
        arg("dhcpd.conf"),
        "-lf".into(),
        arg("dhcpd.leases"),
        "-pf".into(),
        arg("dhcpd.pid"),
        "vs".into(),
    ])
}

fn dnsmasq(dir: &Path, preload: Preload) -> Result<Vec<String>> {
    let leases = dir.join("dnsmasq.leases");
    let mut f = std::io::BufWriter::new(fs::File::create(&leases)?);
    let expire = unix_now() + u64::from(LEASE_TIME);
    for (address, mac) in preload.leases() {
        writeln!(f, "{expire} {} {address} * *", mac_text(mac))?;
    }
    f.flush()?;
    Ok(vec![
        "dnsmasq".into(),
        "--keep-in-foreground".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--interface=vs".into(),
        "--bind-interfaces".into(),
        "--user=root".into(),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        format!("--dhcp-leasefile={}", leases.display()),
        "--dhcp-authoritative".into(),
        "--no-ping".into(),
        "--quiet-dhcp".into(),
        // Log to stderr (our log file), not to a syslog that falls back to the console.
        "--log-facility=-".into(),
        "--dhcp-lease-max=2000000".into(),
        format!("--dhcp-range={DIRECT_BASE},{DIRECT_POOL_END},255.240.0.0,{LEASE_TIME}"),
        format!("--dhcp-range={RELAY_BASE},{RELAY_POOL_END},255.240.0.0,{LEASE_TIME}"),
    ])
}

/// xdpdhcp's non-zero counters, one line (from its control socket).
pub fn xdpdhcp_counters(server: &Running) -> String {
    let out = Command::new(daemon_binary())
        .args(["stats", "--json", "--socket"])
        .arg(server.dir.join("control.sock"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut parts = vec![];
    for section in ["fast_path", "daemon"] {
        for (k, n) in v[section].as_object().into_iter().flatten() {
            if n.as_u64().unwrap_or(0) > 0 {
                parts.push(format!("{k}={n}"));
            }
        }
    }
    parts.join(" ")
}

/// Sum of the memory locked by an xdpdhcp process's BPF maps (from /proc/<pid>/fdinfo).
pub fn bpf_map_memory(pid: u32) -> u64 {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Runs perfdhcp from the generator namespace: relayed DORA at `rate` for `seconds`.
/// Returns (DISCOVERs sent, ACKs received, achieved 4-way rate).
/// One perfdhcp run (DORA as a relay) at `rate` for `seconds`: (DISCOVERs sent, ACKs received).
/// Quick runs wait less for late replies.
pub fn perfdhcp(
    net: &BenchNet,
    rate: u32,
    seconds: u32,
    clients: u32,
    quick: bool,
) -> Result<(u64, u64)> {
    // A reply within `drop` seconds (when a client would retransmit) counts, as with the
    // generator; perfdhcp waits `exit wait` after its last packet for the stragglers.
    let (drop, exit_wait) = if quick {
        ("2", "1000000")
    } else {
        ("4", "4000000")
    };
    let out = net
        .generator
        .cmd("perfdhcp")
        .args([
            "-4",
            "-l",
            &RELAY_IP.to_string(),
            "-r",
            &rate.to_string(),
            "-p",
            &seconds.to_string(),
            "-R",
            &clients.to_string(),
        ])
        .args([
            "-d",
            drop,
            "-W",
            exit_wait,
            "-g",
            "single",
            &SERVER_IP.to_string(),
        ])
        .output()
        .context("running perfdhcp")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sections = text.split("***Statistics for: ");
    let num = |section: &str, key: &str| -> u64 {
        section
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let _ = sections.next();
    let discover = sections.next().unwrap_or("");
    let request = sections.next().unwrap_or("");
    let sent = num(discover, "sent packets:");
    let acks = num(request, "received packets:");
    if sent == 0 {
        bail!(
            "perfdhcp sent nothing:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((sent, acks))
}

/// Checks that the peers' binaries are installed (cargo xtask setup installs them).
pub fn check_installed() -> Result<()> {
    for bin in ["kea-dhcp4", "dhcpd", "dnsmasq", "perfdhcp"] {
        sh(Command::new("sh").args(["-c", &format!("command -v {bin}")]))
            .with_context(|| format!("{bin} is not installed; run `cargo xtask setup`"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Failover: xdpdhcp with a partner.

/// A second xdpdhcp, the failover secondary, in its own namespace: linked to the server by
/// `fo` (10.9.0.1 ↔ 10.9.0.2); it serves no clients here (a hot standby), it only keeps the
/// lease database in step.
pub struct Partner {
    pub ns: Netns,
    pub dir: PathBuf,
    child: Child,
}

impl Partner {
    /// `xdpdhcp failover status --json` of the partner.
    pub fn status(&self) -> serde_json::Value {
        failover_status(&self.dir.join("control.sock"))
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `failover status` of the xdpdhcp listening on `socket`.
pub fn failover_status(socket: &Path) -> serde_json::Value {
    let out = Command::new(daemon_binary())
        .args(["failover", "status", "--json", "--socket"])
        .arg(socket)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    serde_json::from_str(&out).unwrap_or_default()
}

fn failover_config(
    dir: &Path,
    role: &str,
    relay_pool_end: Ipv4Addr,
    xdp_mode: &str,
    max_unacked: u32,
) -> String {
    let (me, peer, sid) = if role == "primary" {
        ("10.9.0.1", "10.9.0.2", "10.0.0.1")
    } else {
        ("10.9.0.2", "10.9.0.1", "10.0.0.3")
    };
    // A hot standby: every bucket is the primary's, so every renewal is answered there and
    // sent to the secondary.
    let split = if role == "primary" { "split = 256" } else { "" };
    format!(
        r#"interfaces = ["vs"]
server-id = "{sid}"
lease-store = "{dir}/leases.db"
control-socket = "{dir}/control.sock"
bpffs-dir = "/sys/fs/bpf/xdpdhcp-bench-{role}"
xdp-mode = "{xdp_mode}"
default-lease-time = {LEASE_TIME}
max-lease-time = {LEASE_TIME}

[failover]
name = "bench"
role = "{role}"
address = "{me}"
peer-address = "{peer}"
mclt = {LEASE_TIME}
max-response-delay = 30
max-unacked-updates = {max_unacked}
{split}

[[subnet]]
subnet = "10.0.0.0/12"
interface = "vs"
pools = [{{ start = "{DIRECT_BASE}", end = "10.1.0.255" }}]

[[subnet]]
subnet = "172.16.0.0/12"
pools = [{{ start = "{RELAY_BASE}", end = "{relay_pool_end}" }}]
"#,
        dir = dir.display(),
    )
}

/// xdpdhcp as failover primary (with `relayed` bound clients) and a new secondary that learns
/// them all (UPDREQALL) before both reach NORMAL. Returns the primary, the partner, and how
/// long the partner took to receive the database.
pub fn xdpdhcp_failover_pair(
    net: &BenchNet,
    relayed: u32,
    max_unacked: u32,
) -> Result<(Running, Partner, Duration)> {
    let pool_end = Ipv4Addr::from(u32::from(RELAY_BASE) + relayed + 255);
    // The partner's namespace and links.
    let pns = Netns::new(&format!("{}p", net.server.name))?;
    veth(&net.server, "fo", &pns, "fo")?;
    net.server
        .run(&["ip", "addr", "add", "10.9.0.1/30", "dev", "fo"])?;
    pns.run(&["ip", "addr", "add", "10.9.0.2/30", "dev", "fo"])?;
    pns.run(&[
        "ip", "link", "add", "vs", "type", "veth", "peer", "name", "vsp",
    ])?;
    pns.run(&["ip", "link", "set", "vs", "up"])?;
    pns.run(&["ip", "link", "set", "vsp", "up"])?;
    pns.run(&["ip", "addr", "add", "10.0.0.3/12", "dev", "vs"])?;

    let pdir = net.dir.join("partner");
    let _ = fs::remove_dir_all(&pdir);
    fs::create_dir_all(&pdir)?;
    fs::write(
        pdir.join("xdpdhcp.toml"),
        failover_config(&pdir, "secondary", pool_end, "off", max_unacked),
    )?;
    let dir = net.dir.join(Kind::Xdpdhcp.name());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("xdpdhcp.toml"),
        failover_config(&dir, "primary", pool_end, "native", max_unacked),
    )?;
    preload_xdpdhcp(&dir.join("leases.db"), Preload { relayed, direct: 0 })?;

    let started = Instant::now();
    let out = fs::File::create(pdir.join("server.log"))?;
    let child = pns
        .cmd(&daemon_binary().display().to_string())
        .args(["serve", "--config"])
        .arg(pdir.join("xdpdhcp.toml"))
        .args(["--log", "warn"])
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .context("starting the failover partner")?;
    let partner = Partner {
        ns: pns,
        dir: pdir,
        child,
    };
    // The primary answers once both are NORMAL (before, it is recovering: not responding).
    let primary = spawn(
        Kind::Xdpdhcp,
        net,
        dir.clone(),
        dir.join("server.log"),
        &xdpdhcp_argv(&dir),
    )?;
    let synced = started.elapsed();
    Ok((primary, partner, synced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcpd_dates() {
        assert_eq!(dhcpd_time(0), "4 1970/01/01 00:00:00");
        assert_eq!(dhcpd_time(1_700_000_000), "2 2023/11/14 22:13:20");
    }
}
