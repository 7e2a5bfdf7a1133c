//! `xdpdhcp serve`: start-up, the event loop, shutdown.
//!
//! One task owns all lease state (`Server`), the fast path's maps and the pending commits, so
//! there are no locks and every decision sees one consistent state. Around it: a receiver per
//! interface, the store's writer thread, the RENEWALS ring buffer, a one-second tick, the
//! control socket and signals.
//!
//! Start-up order (DESIGN.md): load the store, fill LEASES and the option sets, then attach
//! XDP. A reply that depends on a lease change leaves only after the store has committed it;
//! only then is the lease published to the fast path.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    maps::{MapData, RingBuf},
    programs::{XdpMode, xdp::XdpLinkId},
};
use dhcp_common::{
    CONFIG_FLAG_FAST_PATH, CONFIG_FLAG_LOAD_BALANCE, FastPathConfig, IfaceEntry, LeaseEntry,
    LinkKey, RenewalEvent, SUBNET_FLAG_VALID, SubnetEntry,
};
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, unix::AsyncFd},
    net::{UdpSocket, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{debug, error, info, warn};

use crate::{
    clock,
    config::{self, Config, XdpModeSetting},
    failover::{
        engine::{Engine, LinkId, Output},
        link::{self, LinkEvent},
        states::Service,
    },
    fastpath::{FastPath, LoadOptions},
    net::{self, Interface, PacketSocket},
    server::{AfterCommit, Arrival, Effects, FailoverView, FastLease, Outgoing, Server},
    store::{self, Batch, Committed, Store},
    wire::{Destination, Request},
};

/// A command on the control socket.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum ControlRequest {
    Stats,
    Leases,
    FailoverStatus,
    FailoverPartnerDown,
}

enum Event {
    Packet { interface: usize, bytes: Vec<u8> },
    Committed(Committed),
    Control(ControlRequest, oneshot::Sender<Value>),
    Failover(LinkEvent),
    Shutdown(&'static str),
}

/// The failover engine and its connections.
struct FailoverRuntime {
    engine: Engine,
    links: HashMap<LinkId, mpsc::UnboundedSender<Vec<u8>>>,
    /// Tells the connector to dial the partner.
    wanted: Arc<AtomicBool>,
}

struct Core {
    config: Arc<Config>,
    server: Server,
    interfaces: Vec<Interface>,
    sockets: Vec<Arc<UdpSocket>>,
    packet: PacketSocket,
    fast: Option<FastPath>,
    xdp_links: Vec<XdpLinkId>,
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    store: Store,
    pending: HashMap<u64, AfterCommit>,
    next_batch: u64,
    started: Instant,
    failover: Option<FailoverRuntime>,
    /// The fast path's switches as last written.
    fast_config: Option<FastPathConfig>,
}

pub async fn serve(config_path: &Path) -> Result<()> {
    let config = Arc::new(config::load(config_path).map_err(|e| anyhow!("{e}"))?);
    let interfaces: Vec<Interface> = config
        .interfaces
        .iter()
        .map(|n| net::interface(n))
        .collect::<Result<_>>()
        .context("resolving interfaces")?;
    let default_server_id = config
        .server_id
        .or_else(|| interfaces.iter().find_map(|i| i.address))
        .context("no server-id configured and no interface has an IPv4 address")?;

    // 1. The XDP program goes through the verifier on another thread while the store loads.
    let start = Instant::now();
    let loading = (config.xdp_mode != XdpModeSetting::Off).then(|| {
        let (config, interfaces) = (config.clone(), interfaces.clone());
        std::thread::spawn(move || load_fast_path(&config, &interfaces))
    });

    // 2. The store: SQLite decodes rows on one thread while this one installs them.
    let expected = store::count(&config.lease_store)?;
    let (chunks_tx, chunks) = std::sync::mpsc::sync_channel(16);
    let reading = {
        let path = config.lease_store.clone();
        std::thread::spawn(move || {
            store::load_streaming(&path, 8192, |chunk| {
                let _ = chunks_tx.send(chunk);
            })
        })
    };
    let now = clock::unix_now();
    let mut server = Server::load(
        config.clone(),
        default_server_id,
        expected,
        chunks.into_iter().flatten(),
        now,
    );
    let (meta, bad_rows) = reading
        .join()
        .map_err(|_| anyhow!("reading the lease store panicked"))??;
    for bad in &bad_rows {
        error!("lease store row skipped: {bad}");
    }
    info!(
        leases = server.leases().count(),
        store = %config.lease_store.display(),
        ms = start.elapsed().as_millis() as u64,
        "loaded the lease store"
    );

    // Failover: the stored state, then STARTUP (nothing is answered until the partner has been
    // heard or the start-up time has passed).
    let mut engine = config
        .failover
        .clone()
        .map(|f| Engine::new(f, &meta, clock::unix_now()));
    let started_failover = engine
        .as_mut()
        .map(|e| e.start(&mut server, clock::unix_now()));

    // 3. The fast path: maps filled before XDP is attached.
    let (mut fast, ring) = match loading {
        None => {
            info!("xdp-mode = off: every request is answered by the daemon");
            (None, None)
        }
        Some(loading) => {
            let (mut fast, ring) = loading
                .join()
                .map_err(|_| anyhow!("loading the XDP program panicked"))??;
            publish_leases(&mut fast, &mut server)?;
            fast.set_config(&fast_config(&config, server.failover()))?;
            info!(ms = start.elapsed().as_millis() as u64, "fast path ready");
            (Some(fast), Some(ring))
        }
    };

    // 4. Sockets, then XDP (so nothing it passes up is lost).
    let sockets: Vec<Arc<UdpSocket>> = interfaces
        .iter()
        .map(|i| Ok(Arc::new(UdpSocket::from_std(net::server_socket(&i.name)?)?)))
        .collect::<Result<_>>()?;
    let packet = PacketSocket::open()?;
    let mut xdp_links = vec![];
    if let Some(fast) = &mut fast {
        for i in &interfaces {
            xdp_links.push(attach(fast, &i.name, config.xdp_mode)?);
        }
    }

    let (tx, rx) = mpsc::channel::<Event>(65536);
    let done_tx = tx.clone();
    let store = Store::start(&config.lease_store, move |c| {
        let _ = done_tx.blocking_send(Event::Committed(c));
    })?;
    for (index, socket) in sockets.iter().enumerate() {
        tokio::spawn(receive(index, socket.clone(), tx.clone()));
    }
    tokio::spawn(control_server(config.control_socket.clone(), tx.clone()));
    tokio::spawn(signals(tx.clone()));
    let failover = match (engine, &config.failover) {
        (Some(engine), Some(fc)) => {
            let wanted = Arc::new(AtomicBool::new(true));
            let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(4096);
            link::spawn(fc, wanted.clone(), link_tx)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(e) = link_rx.recv().await {
                    if tx.send(Event::Failover(e)).await.is_err() {
                        return;
                    }
                }
            });
            Some(FailoverRuntime {
                engine,
                links: HashMap::new(),
                wanted,
            })
        }
        _ => None,
    };

    let mut core = Core {
        config: config.clone(),
        server,
        interfaces,
        sockets,
        packet,
        fast,
        xdp_links,
        ring: ring.map(watch_ring).transpose()?,
        store,
        pending: HashMap::new(),
        next_batch: 1,
        started: Instant::now(),
        failover,
        fast_config: None,
    };
    if let Some(out) = started_failover {
        core.failover_io(out).await;
    }
    core.sync_fast_config();
    info!(
        interfaces = ?config.interfaces,
        server_id = %default_server_id,
        fast_path = core.fast.is_some(),
        "serving"
    );
    core.run(rx).await
}

/// Loads the XDP program and fills the maps that come from the configuration alone.
fn load_fast_path(
    config: &Config,
    interfaces: &[Interface],
) -> Result<(FastPath, RingBuf<MapData>)> {
    let pin_dir = prepare_bpffs(&config.bpffs_dir);
    let max_leases =
        (config.pool_size() + config.pool_size() / 4 + 1024).min(u64::from(u32::MAX)) as u32;
    let mut fast = FastPath::load(&LoadOptions {
        max_leases,
        pin_dir,
        ..Default::default()
    })?;
    let ring = fast.take_renewals().context("RENEWALS ring buffer")?;
    fast.set_config(&FastPathConfig {
        flags: if config.fast_path {
            CONFIG_FLAG_FAST_PATH
        } else {
            0
        },
        ..Default::default()
    })?;
    for i in interfaces {
        fast.set_iface(
            i.ifindex,
            &IfaceEntry {
                mac: i.mac,
                _reserved: [0; 2],
                address: i.address.map_or(0, u32::from),
            },
        )?;
    }
    for s in &config.subnets {
        let server_id = s.server_id.or(config.server_id).or_else(|| {
            s.interface
                .as_ref()
                .and_then(|n| interfaces.iter().find(|i| &i.name == n))
                .and_then(|i| i.address)
        });
        fast.set_subnet(
            s.id,
            &SubnetEntry {
                network: s.net.network().into(),
                mask: s.net.netmask().into(),
                server_id: server_id.map_or(0, u32::from),
                link_id: s.link,
                flags: SUBNET_FLAG_VALID,
                _reserved: 0,
            },
        )?;
        if let Some(name) = &s.interface
            && let Some(i) = interfaces.iter().find(|i| &i.name == name)
        {
            fast.set_link(
                &LinkKey {
                    ifindex: i.ifindex,
                    outer_vlan: s.vlan,
                    inner_vlan: s.inner_vlan,
                },
                s.link,
            )?;
        }
        fast.set_relay_prefix(s.net, s.link)?;
        for r in &s.relay_addresses {
            fast.set_relay_prefix(Ipv4Net::new(*r, 32).expect("/32"), s.link)?;
        }
    }
    info!(max_leases, "XDP program loaded");
    Ok((fast, ring))
}

/// Writes the option sets and every lease the fast path may answer into its maps.
fn publish_leases(fast: &mut FastPath, server: &mut Server) -> Result<()> {
    for (id, bytes) in server.take_new_option_sets() {
        fast.set_option_set(id, &bytes)?;
    }
    let clock = clock::Snapshot::now();
    let entries: Vec<(Ipv4Addr, LeaseEntry)> = server
        .fast_leases()
        .map(|(address, lease)| (address, lease_entry_at(&lease, &clock)))
        .collect();
    fast.upsert_leases(&entries)?;
    info!(leases = entries.len(), "fast path leases written");
    Ok(())
}

/// The fast path's switches: on only while the failover state lets us answer clients, load
/// balancing in the normal state.
fn fast_config(config: &Config, failover: Option<&FailoverView>) -> FastPathConfig {
    let responds = failover.is_none_or(|f| f.service.responds());
    let mut flags = 0;
    if config.fast_path && responds {
        flags |= CONFIG_FLAG_FAST_PATH;
    }
    let mut c = FastPathConfig::default();
    if let Some(f) = failover
        && f.service == Service::Cooperating
    {
        flags |= CONFIG_FLAG_LOAD_BALANCE;
        c.lb_buckets = f.our_buckets;
        c.lb_max_secs = f.lb_max_secs;
    }
    c.flags = flags;
    c
}

/// Makes sure `dir` is on a bpffs (mounting one at /sys/fs/bpf if needed); `None` if pinning
/// is impossible, in which case `xdpdhcp stats` can only ask the running daemon.
fn prepare_bpffs(dir: &Path) -> Option<std::path::PathBuf> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let mount_point = Path::new("/sys/fs/bpf");
    let is_bpffs = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: valid path and statfs buffer.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0)
            .then_some(st.f_type as i64 == BPF_FS_MAGIC)
    };
    if dir.starts_with(mount_point) && is_bpffs(mount_point) != Some(true) {
        // SAFETY: constant, NUL-terminated arguments.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            warn!(
                "cannot mount bpffs at /sys/fs/bpf ({}); counters will not be pinned",
                std::io::Error::last_os_error()
            );
            return None;
        }
    }
    if std::fs::create_dir_all(dir).is_err() || is_bpffs(dir) != Some(true) {
        warn!(dir = %dir.display(), "not on a bpffs; counters will not be pinned");
        return None;
    }
    Some(dir.to_path_buf())
}

/// Registers the ring buffer's fd with the reactor (readable when the XDP program wakes us).
fn watch_ring(ring: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
    // (which owns the RingBuf) is dropped.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("watching the RENEWALS ring buffer: {}", e.into_parts().1))
}

fn attach(fast: &mut FastPath, iface: &str, mode: XdpModeSetting) -> Result<XdpLinkId> {
    match mode {
        XdpModeSetting::Native => fast.attach(iface, XdpMode::Driver),
        XdpModeSetting::Generic => fast.attach(iface, XdpMode::Skb),
        XdpModeSetting::Auto => fast.attach(iface, XdpMode::Driver).or_else(|e| {
            warn!("native XDP on {iface} failed ({e:#}); using generic mode");
            fast.attach(iface, XdpMode::Skb)
        }),
        XdpModeSetting::Off => bail!("XDP is off"),
    }
}

/// The map entry for a lease (the one place unix time becomes CLOCK_BOOTTIME for the maps).
pub fn lease_entry(l: &FastLease) -> LeaseEntry {
    lease_entry_at(l, &clock::Snapshot::now())
}

fn lease_entry_at(l: &FastLease, clock: &clock::Snapshot) -> LeaseEntry {
    LeaseEntry {
        client_id_digest: l.client_id_digest,
        expires_ns: clock.unix_to_boot_ns(l.ends),
        horizon_ns: clock.unix_to_boot_ns(l.horizon),
        lease_time_s: l.lease_time,
        renew_s: l.renew,
        rebind_s: l.rebind,
        chaddr: l.chaddr,
        subnet_id: l.subnet,
        option_set: l.option_set,
        flags: 0,
    }
}

async fn receive(interface: usize, socket: Arc<UdpSocket>, tx: mpsc::Sender<Event>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, _from)) => {
                if tx
                    .send(Event::Packet {
                        interface,
                        bytes: buf[..n].to_vec(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                warn!("receive error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn signals(tx: mpsc::Sender<Event>) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let _ = tx.send(Event::Shutdown(why)).await;
}

async fn control_server(path: std::path::PathBuf, tx: mpsc::Sender<Event>) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            error!(path = %path.display(), "control socket unavailable: {e}");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let response = match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(request) => {
                        let (reply_tx, reply_rx) = oneshot::channel();
                        if tx.send(Event::Control(request, reply_tx)).await.is_err() {
                            return;
                        }
                        reply_rx
                            .await
                            .unwrap_or_else(|_| json!({ "error": "daemon shutting down" }))
                    }
                    Err(e) => json!({ "error": format!("bad request: {e}") }),
                };
                let mut out = response.to_string();
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

impl Core {
    async fn run(&mut self, mut rx: mpsc::Receiver<Event>) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // The XDP program wakes us only when much is pending; this catches the rest.
        let mut ring_poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(Event::Packet { interface, bytes }) => self.on_packet(interface, &bytes).await,
                    Some(Event::Committed(c)) => self.on_committed(c).await,
                    Some(Event::Control(request, reply)) => { let v = self.on_control(request).await; let _ = reply.send(v); }
                    Some(Event::Failover(e)) => self.on_failover(e).await,
                    Some(Event::Shutdown(why)) => return self.shutdown(why, &mut rx).await,
                    None => return Ok(()),
                },
                ready = async { self.ring.as_ref().expect("guarded").readable().await }, if self.ring.is_some() => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    self.drain_renewals().await;
                }
                _ = ring_poll.tick(), if self.ring.is_some() => self.drain_renewals().await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    async fn on_packet(&mut self, interface: usize, bytes: &[u8]) {
        let req = match Request::parse(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.server.stats.inc("drop_malformed");
                debug!(interface = %self.interfaces[interface].name, "dropped malformed packet: {e}");
                return;
            }
        };
        let iface = &self.interfaces[interface];
        let arrival = Arrival {
            interface: iface.name.clone(),
            ifindex: iface.ifindex,
        };
        let effects = self.server.handle(&req, &arrival, clock::unix_now());
        self.apply(effects).await;
    }

    /// Performs effects in the required order: fast-path removals, immediate sends, commits.
    async fn apply(&mut self, effects: Effects) {
        if let Some(fast) = &mut self.fast {
            for address in &effects.remove_from_fast_path {
                if let Err(e) = fast.remove_lease(*address) {
                    error!("{e:#}");
                }
            }
            for (id, bytes) in self.server.take_new_option_sets() {
                if let Err(e) = fast.set_option_set(id, &bytes) {
                    error!("{e:#}");
                }
            }
        }
        if let Some(out) = effects.send {
            self.send(&out).await;
        }
        for address in effects.republish {
            self.publish(address);
        }
        if !effects.failover_updates.is_empty()
            && let Some(fo) = &mut self.failover
        {
            let mut out = fo.engine.updates(
                &effects.failover_updates,
                &mut self.server,
                clock::unix_now(),
            );
            self.failover_send(&mut out);
        }
        if let Some((writes, after)) = effects.commit {
            self.submit(writes, after);
        }
    }

    /// Hands `writes` to the store writer; `after` is carried out once they are durable.
    fn submit(&mut self, writes: Vec<store::Write>, after: AfterCommit) {
        let id = self.next_batch;
        self.next_batch += 1;
        self.pending.insert(id, after);
        if let Err(e) = self.store.submit(Batch { id, writes }) {
            error!("{e:#}");
            self.pending.remove(&id);
        }
    }

    async fn on_committed(&mut self, c: Committed) {
        self.server.stats.inc("store_transactions");
        self.server
            .stats
            .add("store_batches", c.transaction_batches as u64);
        self.server.stats.add("store_commit_micros", c.micros);
        if let Err(e) = &c.result {
            self.server.stats.inc("store_errors");
            error!(
                "lease store commit failed ({e}); {} replies withheld",
                c.ids.len()
            );
        }
        for id in c.ids {
            let Some(after) = self.pending.remove(&id) else {
                continue;
            };
            if c.result.is_err() {
                continue;
            }
            for (address, version) in after.publish {
                if let Some(lease) = self.server.committed(address, version)
                    && let Some(fast) = &mut self.fast
                    && let Err(e) = fast.upsert_lease(address, &lease_entry(&lease))
                {
                    self.server.stats.inc("fast_path_map_errors");
                    warn!("{e:#}");
                }
            }
            if let Some(reply) = after.reply {
                self.send(&reply).await;
            }
            for (xid, address) in after.failover_acks {
                if let Some(fo) = &mut self.failover {
                    let mut out = fo.engine.ack_committed(xid, address, clock::unix_now());
                    self.failover_send(&mut out);
                }
            }
        }
    }

    /// Rewrites the fast path's entry of `address` (or removes it if it may not answer it).
    fn publish(&mut self, address: Ipv4Addr) {
        let Some(fast) = &mut self.fast else { return };
        let result = match self.server.fast_lease(address) {
            Some(lease) => fast.upsert_lease(address, &lease_entry(&lease)),
            None => fast.remove_lease(address),
        };
        if let Err(e) = result {
            self.server.stats.inc("fast_path_map_errors");
            warn!("{e:#}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Failover.

    async fn on_failover(&mut self, event: LinkEvent) {
        let now = clock::unix_now();
        let Some(fo) = &mut self.failover else { return };
        let out = match event {
            LinkEvent::Up(id, tx) => {
                fo.links.insert(id, tx);
                fo.engine.link_up(id, now)
            }
            LinkEvent::Message(id, m) => fo.engine.receive(id, *m, &mut self.server, now),
            LinkEvent::Down(id, why) => {
                debug!(link = id, "failover connection closed: {why}");
                fo.links.remove(&id);
                fo.engine.link_down(id, &mut self.server, now)
            }
        };
        self.failover_io(out).await;
    }

    /// Performs an engine output: messages, closes, state writes, then lease effects.
    async fn failover_io(&mut self, mut out: Output) {
        self.failover_send(&mut out);
        let effects = std::mem::take(&mut out.effects);
        self.apply(effects).await;
    }

    /// The synchronous part of an engine output (everything but lease effects).
    fn failover_send(&mut self, out: &mut Output) {
        let Some(fo) = &mut self.failover else { return };
        for (id, m) in out.send.drain(..) {
            if let Some(tx) = fo.links.get(&id) {
                let _ = tx.send(m.encode());
            }
        }
        for id in out.close.drain(..) {
            // Dropping the sender ends the connection task.
            fo.links.remove(&id);
        }
        fo.wanted
            .store(fo.engine.wants_connection(), Ordering::Relaxed);
        if out.persist {
            out.persist = false;
            let writes = fo.engine.meta();
            self.submit(writes, AfterCommit::default());
        }
        self.sync_fast_config();
    }

    /// Writes the fast path's switches when the failover state changes what it may do.
    fn sync_fast_config(&mut self) {
        let wanted = fast_config(&self.config, self.server.failover());
        if self.fast_config == Some(wanted) {
            return;
        }
        if let Some(fast) = &mut self.fast {
            match fast.set_config(&wanted) {
                Ok(()) => self.fast_config = Some(wanted),
                Err(e) => error!("{e:#}"),
            }
        }
    }

    async fn send(&mut self, out: &Outgoing) {
        let Some(index) = self
            .interfaces
            .iter()
            .position(|i| i.ifindex == out.ifindex)
        else {
            return;
        };
        let result = match out.dest {
            Destination::Hardware { ip, mac } => {
                self.packet.send(out.ifindex, mac, out.src, ip, &out.bytes)
            }
            dest => {
                let target = net::udp_target(dest).expect("UDP destination");
                self.sockets[index]
                    .send_to(&out.bytes, target)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        };
        match result {
            Ok(()) => self.server.stats.inc("tx_packets"),
            Err(e) => {
                self.server.stats.inc("tx_errors");
                warn!(dest = ?out.dest, "sending {:?}: {e:#}", out.msg_type);
            }
        }
    }

    /// Reads every pending fast-path renewal and records it.
    async fn drain_renewals(&mut self) {
        let Some(ring) = &mut self.ring else { return };
        let mut renewals = vec![];
        let ring = ring.get_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<RenewalEvent>() {
                continue;
            }
            let e: RenewalEvent = bytemuck::pod_read_unaligned(&item[..size_of::<RenewalEvent>()]);
            renewals.push((
                Ipv4Addr::from(e.address),
                e.chaddr,
                clock::boot_ns_to_unix(e.granted_until_ns),
            ));
        }
        if renewals.is_empty() {
            return;
        }
        let effects = self.server.observe_renewals(&renewals, clock::unix_now());
        self.apply(effects).await;
    }

    async fn on_tick(&mut self) {
        self.drain_renewals().await;
        let now = clock::unix_now();
        if let Some(fo) = &mut self.failover {
            let out = fo.engine.tick(&mut self.server, now);
            self.failover_io(out).await;
        }
        let mut candidates = self.server.expiry_candidates(now);
        if let Some(fast) = &self.fast {
            // A renewal the fast path granted after our last drain keeps the lease alive: its
            // event is on the way. (Once expires_ns has passed, the fast path punts.)
            let boot_now = clock::boottime_ns();
            candidates.retain(|a| fast.get_lease(*a).is_none_or(|e| e.expires_ns <= boot_now));
        }
        let effects = self.server.expire(&candidates, now);
        self.apply(effects).await;
    }

    async fn on_control(&mut self, request: ControlRequest) -> Value {
        let now = clock::unix_now();
        match request {
            ControlRequest::FailoverStatus => match &self.failover {
                Some(fo) => fo.engine.status(&self.server, now),
                None => json!({ "error": "failover is not configured" }),
            },
            ControlRequest::FailoverPartnerDown => {
                let Some(fo) = &mut self.failover else {
                    return json!({ "error": "failover is not configured" });
                };
                match fo.engine.partner_down(&mut self.server, now) {
                    Ok(out) => {
                        self.failover_io(out).await;
                        json!({ "ok": "entered partner-down" })
                    }
                    Err(e) => json!({ "error": e }),
                }
            }
            ControlRequest::Stats => {
                let fast = self.fast.as_ref().and_then(|f| f.counters().ok()).map(|c| {
                    c.iter()
                        .map(|(counter, n)| (counter.name().to_string(), json!(n)))
                        .collect::<serde_json::Map<_, _>>()
                });
                let pools: Vec<Value> = self
                    .server
                    .pool_usage()
                    .into_iter()
                    .map(|(subnet, free, total)| json!({ "subnet": subnet, "free": free, "total": total }))
                    .collect();
                json!({
                    "uptime_s": self.started.elapsed().as_secs(),
                    "fast_path": fast,
                    "daemon": self.server.stats.0,
                    "pending_commits": self.pending.len(),
                    "leases": self.server.leases().filter(|l| l.is_active(clock::unix_now())).count(),
                    "pools": pools,
                })
            }
            ControlRequest::Leases => {
                let mut leases: Vec<&crate::lease::Lease> = self.server.leases().collect();
                leases.sort_by_key(|l| l.address);
                let rows: Vec<Value> = leases
                    .into_iter()
                    .map(|l| {
                        json!({
                            "address": l.address.to_string(),
                            "state": l.state.as_str(),
                            "hwaddr": l.hw.map(|h| h.to_string()),
                            "client_id": l.client.as_ref().and_then(|c| c.client_id()).map(crate::lease::hex),
                            "hostname": l.hostname,
                            "starts": l.starts,
                            "ends": l.ends,
                            "held_until": l.held_until,
                        })
                    })
                    .collect();
                json!({ "leases": rows })
            }
        }
    }

    async fn shutdown(&mut self, why: &str, rx: &mut mpsc::Receiver<Event>) -> Result<()> {
        info!("{why}: shutting down");
        // Detach first: from now on nothing is answered that we could not record.
        if let Some(fast) = &mut self.fast {
            for link in self.xdp_links.drain(..) {
                if let Err(e) = fast.detach(link) {
                    warn!("{e:#}");
                }
            }
        }
        self.drain_renewals().await;
        // Let the store finish what is in flight, and send those replies.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Committed(c))) => self.on_committed(c).await,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if !self.pending.is_empty() {
            warn!(
                "{} commits did not finish before shutdown",
                self.pending.len()
            );
        }
        let _ = std::fs::remove_file(&self.config.control_socket);
        info!("stopped");
        Ok(())
    }
}
