//! Network-namespace labs for end-to-end tests: namespaces, veth pairs, a bridge, the real
//! `xdpdhcp` binary, and real clients (dhclient, udhcpc, perfdhcp, dhcrelay).
//!
//! ```text
//!   S (server, xdpdhcp)          W (switch: bridge br0)          C1, C2 (clients)
//!   vs 10.0.0.1/24  ──────────── ws   br0   w1 ───────────────── vc (C1)
//!   route 192.168.50.0/24 via .2       │     w2 ───────────────── vc (C2)
//!                                      wr ─────────────────────── vr 10.0.0.2/24 (R, relay)
//!   route 192.168.60.0/24 via .2                                  192.168.60.1/24 (on vr)
//!                                                                 rc 192.168.50.1/24 ── vc (RC)
//! ```
//!
//! In R, ISC dhcrelay relays RC's client (giaddr 192.168.50.1, on `rc`); perfdhcp and the
//! scriptable `RelayClient` play relays themselves with giaddr 192.168.60.1, which sits on the
//! uplink because perfdhcp sends out of the interface that holds its local address.
//!
//! Everything is torn down on drop (processes killed, namespaces deleted).

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Runs a command to completion; fails with its output if it fails.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A number unique to this process for each lab (namespace and directory names).
pub fn next_lab_number() -> u32 {
    NEXT_LAB.fetch_add(1, Ordering::Relaxed)
}

/// Unique, short (interface names are at most 15 bytes) prefix for one lab.
fn unique_id() -> String {
    format!("{:x}{}", std::process::id() % 0xfff, next_lab_number())
}

pub struct Netns {
    pub name: String,
    children: Vec<Child>,
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            children: vec![],
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn run(&self, argv: &[&str]) -> Result<String> {
        sh(self.cmd(argv[0]).args(&argv[1..]))
    }

    /// Starts a long-running process in the namespace, killed when the namespace goes.
    /// Returns its pid (`ip netns exec` execs the program in place).
    pub fn spawn(&mut self, argv: &[&str], log: &Path) -> Result<u32> {
        let out = fs::File::create(log)?;
        let child = self
            .cmd(argv[0])
            .args(&argv[1..])
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {argv:?}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Sends `signal` to a process started with `spawn`; SIGKILL also reaps it.
    pub fn signal(&mut self, pid: u32, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, signal) };
        if signal == libc::SIGKILL
            && let Some(i) = self.children.iter().position(|c| c.id() == pid)
        {
            let mut c = self.children.remove(i);
            let _ = c.wait();
        }
    }

    /// Moves the calling thread into the namespace until the guard drops (for code that must
    /// call into the kernel from inside it: attaching XDP, BPF_PROG_TEST_RUN on its devices).
    pub fn enter_here(&self) -> Result<NsGuard> {
        let home = fs::File::open("/proc/thread-self/ns/net")
            .context("opening the current network namespace")?;
        let target = fs::File::open(format!("/var/run/netns/{}", self.name))?;
        // SAFETY: valid namespace fds; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(NsGuard { home })
    }

    /// Runs `f` in a thread that has entered the namespace: sockets it creates live there.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        thread::spawn(move || {
            // SAFETY: a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace panicked"))?
    }
}

/// Returns the thread to its original network namespace when dropped.
pub struct NsGuard {
    home: fs::File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        // SAFETY: the fd of the namespace this thread came from.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Processes started with `ip netns exec` by others (dhclient daemons) die with the
        // namespace only once killed.
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A veth pair between two namespaces.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ])?;
    a.run(&["ip", "link", "set", a_if, "up"])?;
    b.run(&["ip", "link", "set", b_if, "up"])?;
    Ok(())
}

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const RELAY_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// giaddr of dhcrelay (on `rc`, facing the relayed client).
pub const RELAY_GIADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// giaddr of perfdhcp and `RelayClient` (on the relay's uplink).
pub const PLAYED_RELAY_GIADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 1);

/// The standard topology (see module docs) without a daemon.
pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    pub server: Netns,
    pub switch: Netns,
    pub clients: Vec<Netns>,
    pub relay: Netns,
    pub relayed_client: Netns,
}

impl Lab {
    pub fn new(clients: usize) -> Result<Lab> {
        let id = unique_id();
        let dir = std::env::temp_dir().join(format!("xdpdhcp-lab-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let server = Netns::new(&format!("xd{id}s"))?;
        let switch = Netns::new(&format!("xd{id}w"))?;
        let relay = Netns::new(&format!("xd{id}r"))?;
        let relayed_client = Netns::new(&format!("xd{id}rc"))?;
        switch.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.run(&["ip", "link", "set", "br0", "up"])?;
        let port = |name: &str| switch.run(&["ip", "link", "set", name, "master", "br0"]);
        veth(&server, "vs", &switch, "ws")?;
        port("ws")?;
        server.run(&["ip", "addr", "add", "10.0.0.1/24", "dev", "vs"])?;
        server.run(&["ip", "route", "add", "192.168.50.0/24", "via", "10.0.0.2"])?;
        server.run(&["ip", "route", "add", "192.168.60.0/24", "via", "10.0.0.2"])?;
        let mut lab_clients = vec![];
        for i in 0..clients {
            let c = Netns::new(&format!("xd{id}c{i}"))?;
            veth(&c, "vc", &switch, &format!("w{i}"))?;
            port(&format!("w{i}"))?;
            lab_clients.push(c);
        }
        veth(&relay, "vr", &switch, "wr")?;
        port("wr")?;
        relay.run(&["ip", "addr", "add", "10.0.0.2/24", "dev", "vr"])?;
        relay.run(&["ip", "addr", "add", "192.168.60.1/24", "dev", "vr"])?;
        veth(&relay, "rc", &relayed_client, "vc")?;
        relay.run(&["ip", "addr", "add", "192.168.50.1/24", "dev", "rc"])?;
        relay.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Lab {
            id,
            dir,
            server,
            switch,
            clients: lab_clients,
            relay,
            relayed_client,
        })
    }

    /// A configuration for this lab: both subnets with `lease_time`, `global` settings at the
    /// top, `extra` (reservations …) at the end.
    pub fn config(&self, lease_time: u32, global: &str, extra: &str) -> String {
        format!(
            r#"interfaces = ["vs"]
lease-store = "{dir}/leases.db"
control-socket = "{dir}/control.sock"
bpffs-dir = "/sys/fs/bpf/xdpdhcp-{id}"
xdp-mode = "generic"
{global}

[[subnet]]
subnet = "10.0.0.0/24"
interface = "vs"
pools = [{{ start = "10.0.0.100", end = "10.0.0.199" }}]
default-lease-time = {lease_time}
min-lease-time = 10
[subnet.options]
routers = ["10.0.0.1"]
domain-name-servers = ["10.0.0.53"]
domain-name = "lab.example"

[[subnet]]
subnet = "192.168.50.0/24"
pools = [{{ start = "192.168.50.10", end = "192.168.50.250" }}]
default-lease-time = {lease_time}
min-lease-time = 10
[subnet.options]
routers = ["192.168.50.1"]

[[subnet]]
subnet = "192.168.60.0/22"
pools = [{{ start = "192.168.60.10", end = "192.168.63.250" }}]
default-lease-time = {lease_time}
min-lease-time = 10
[subnet.options]
routers = ["192.168.60.1"]

{extra}
"#,
            dir = self.dir.display(),
            id = self.id,
        )
    }

    /// Starts the daemon in the server namespace with `config`.
    pub fn start_daemon(&mut self, config: &str) -> Result<Daemon> {
        Daemon::start(&self.server.name, &self.dir, config)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("XDPDHCP_KEEP_LAB").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `xdpdhcp` binary under test: built by `cargo xtask test` before the tests run.
pub fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XDPDHCP_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/xdpdhcp
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("xdpdhcp"));
    match candidate {
        Some(p) if p.exists() => p,
        _ => panic!(
            "xdpdhcp binary not found: run the tests with `cargo xtask test` (it builds it first)"
        ),
    }
}

/// A running `xdpdhcp serve`.
pub struct Daemon {
    child: Option<Child>,
    netns: String,
    pub config: PathBuf,
    pub control: PathBuf,
    pub log: PathBuf,
    pub db: PathBuf,
}

impl Daemon {
    pub fn start(netns: &str, dir: &Path, config: &str) -> Result<Daemon> {
        let config_path = dir.join("xdpdhcp.toml");
        fs::write(&config_path, config)?;
        let log = dir.join(format!("daemon-{}.log", fs::read_dir(dir)?.count()));
        let mut d = Daemon {
            child: None,
            netns: netns.to_string(),
            config: config_path,
            control: dir.join("control.sock"),
            log,
            db: dir.join("leases.db"),
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<()> {
        let _ = fs::remove_file(&self.control);
        let out = fs::File::create(&self.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(daemon_binary())
            .args(["serve", "--config"])
            .arg(&self.config)
            // XDPDHCP_DAEMON_LOG=debug for a closer look at a failing test.
            .env(
                "RUST_LOG",
                std::env::var("XDPDHCP_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .context("starting xdpdhcp")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ask("stats").is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "xdpdhcp exited with {status} during start-up:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "xdpdhcp did not answer on its control socket within 20 s:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts with the same configuration and store.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Sends a signal to the daemon (SIGSTOP freezes it while its XDP program keeps running).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The child is `ip netns exec`, which execs xdpdhcp: same pid.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = c.try_wait()? {
                    if !status.success() {
                        bail!("xdpdhcp exited with {status}:\n{}", self.log_text());
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    bail!("xdpdhcp did not stop within 15 s of SIGTERM");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn ask(&self, command: &str) -> Result<Value> {
        let mut s = UnixStream::connect(&self.control)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        writeln!(s, "{}", serde_json::json!({ "command": command }))?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    pub fn stats(&self) -> Value {
        self.ask("stats").expect("stats from the daemon")
    }

    /// A fast-path counter by name.
    pub fn fast(&self, counter: &str) -> u64 {
        self.stats()["fast_path"][counter].as_u64().unwrap_or(0)
    }

    /// A daemon counter by name.
    pub fn counter(&self, name: &str) -> u64 {
        self.stats()["daemon"][name].as_u64().unwrap_or(0)
    }

    pub fn leases(&self) -> Vec<Value> {
        self.ask("leases").expect("leases from the daemon")["leases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A dhclient-script that only (de)configures the address and logs what happened, so clients
/// in a lab never touch the host's resolv.conf.
pub const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
echo "$reason $new_ip_address $old_ip_address" >> "$(dirname "$0")/dhclient-$interface-events.log"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
      ip addr del "$old_ip_address/24" dev "$interface" 2>/dev/null
    fi
    ip addr replace "$new_ip_address/24" dev "$interface" ;;
  EXPIRE|FAIL|RELEASE|STOP)
    [ -n "$old_ip_address" ] && ip addr del "$old_ip_address/24" dev "$interface" 2>/dev/null ;;
esac
exit 0
"#;

/// The same for busybox udhcpc (`$1` is the event, `$mask` a prefix length).
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
echo "$1 $ip" >> "$(dirname "$0")/udhcpc-events.log"
case "$1" in
  deconfig) ip addr flush dev "$interface" scope global ;;
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
esac
exit 0
"#;

/// Writes an executable script into `dir`.
pub fn script(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, text)?;
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

/// The IPv4 address of `iface` in `ns`, if any.
pub fn address_of(ns: &Netns, iface: &str) -> Option<Ipv4Addr> {
    let out = ns
        .run(&["ip", "-4", "-o", "addr", "show", "dev", iface])
        .ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}
