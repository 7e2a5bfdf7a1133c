//! The XDP program as the daemon sees it: loading, attaching, and typed access to its maps.
//!
//! Map layouts live in dhcp-common; this module is the only user-space code that touches the
//! maps, so the daemon, the tests and the benchmarks all go through the same calls.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use dhcp_common::{
    Counter, FastPathConfig, IfaceEntry, LeaseEntry, LinkKey, OPTION_SET_CAPACITY, OptionSet,
    SubnetEntry, maps as names,
};
use ipnet::Ipv4Net;

/// The compiled XDP program (built by build.rs from dhcp-ebpf).
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dhcp-ebpf"));
/// Name of the XDP function in the object.
pub const PROGRAM: &str = "xdp_dhcp";

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// LEASES capacity: the daemon sizes it from its pools.
    pub max_leases: u32,
    /// RENEWALS size in bytes (a power of two, at least a page).
    pub renewals_ring_bytes: u32,
    /// Directory under bpffs where COUNTERS is pinned for `xdpdhcp stats`.
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_leases: names::DEFAULT_MAX_LEASES,
            renewals_ring_bytes: names::RENEWALS_RING_BYTES,
            pin_dir: None,
        }
    }
}

/// Counter values summed over CPUs, in `Counter::ALL` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterSnapshot(pub Vec<u64>);

impl CounterSnapshot {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(counter as usize).copied().unwrap_or(0)
    }

    /// Counters that changed between `earlier` and `self`.
    pub fn since(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot(
            self.0
                .iter()
                .zip(earlier.0.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|c| (*c, self.get(*c)))
    }
}

pub struct FastPath {
    ebpf: Ebpf,
    leases: HashMap<MapData, u32, LeaseEntry>,
    subnets: Array<MapData, SubnetEntry>,
    option_sets: Array<MapData, OptionSet>,
    ifaces: HashMap<MapData, u32, IfaceEntry>,
    links: HashMap<MapData, LinkKey, u32>,
    relay_links: LpmTrie<MapData, [u8; 4], u32>,
    config: Array<MapData, FastPathConfig>,
    counters: PerCpuArray<MapData, u64>,
    renewals: Option<RingBuf<MapData>>,
    counters_pin: Option<PathBuf>,
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl FastPath {
    /// Loads the program into the kernel (running the verifier) without attaching it.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::LEASES, options.max_leases.max(1))
            .map_max_entries(names::RENEWALS, options.renewals_ring_bytes)
            .load(XDP_OBJECT)
            .context("loading the XDP object (are you root, and is bpffs/BTF available?)")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing from the XDP object"))?
            .try_into()?;
        program
            .load()
            .context("the kernel verifier rejected the XDP program")?;

        let counters_pin = match &options.pin_dir {
            Some(dir) => Some(pin_counters(&ebpf, dir)?),
            None => None,
        };
        Ok(Self {
            leases: take(&mut ebpf, names::LEASES)?,
            subnets: take(&mut ebpf, names::SUBNETS)?,
            option_sets: take(&mut ebpf, names::OPTION_SETS)?,
            ifaces: take(&mut ebpf, names::IFACES)?,
            links: take(&mut ebpf, names::LINKS)?,
            relay_links: take(&mut ebpf, names::RELAY_LINKS)?,
            config: take(&mut ebpf, names::CONFIG)?,
            counters: take(&mut ebpf, names::COUNTERS)?,
            renewals: Some(take(&mut ebpf, names::RENEWALS)?),
            counters_pin,
            ebpf,
        })
    }

    pub fn program(&self) -> &Xdp {
        let program = self.ebpf.program(PROGRAM).expect("checked in load");
        program.try_into().expect("checked in load")
    }

    /// Attaches to `iface`. The link lives as long as `self` (dropping detaches).
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .expect("checked in load")
            .try_into()
            .expect("checked in load");
        program
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface} in {mode:?} mode"))
    }

    /// Detaches from one interface.
    pub fn detach(&mut self, link: XdpLinkId) -> Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .expect("checked in load")
            .try_into()
            .expect("checked in load");
        program.detach(link).context("detaching XDP")
    }

    /// The RENEWALS ring buffer; can be taken once (by the daemon's consumer task).
    pub fn take_renewals(&mut self) -> Option<RingBuf<MapData>> {
        self.renewals.take()
    }

    pub fn set_config(&mut self, config: &FastPathConfig) -> Result<()> {
        self.config.set(0, config, 0).context("writing CONFIG")
    }

    pub fn set_subnet(&mut self, id: u16, entry: &SubnetEntry) -> Result<()> {
        self.subnets
            .set(u32::from(id), entry, 0)
            .with_context(|| format!("writing subnet {id}"))
    }

    /// Stores pre-encoded options (code, len, value … without END) as option set `id`.
    pub fn set_option_set(&mut self, id: u16, encoded: &[u8]) -> Result<()> {
        if encoded.len() > OPTION_SET_CAPACITY {
            bail!(
                "option set {id} is {} bytes, the fast path holds {OPTION_SET_CAPACITY}",
                encoded.len()
            );
        }
        let mut set = OptionSet {
            len: encoded.len() as u16,
            ..OptionSet::default()
        };
        set.bytes[..encoded.len()].copy_from_slice(encoded);
        self.option_sets
            .set(u32::from(id), set, 0)
            .with_context(|| format!("writing option set {id}"))
    }

    pub fn set_iface(&mut self, ifindex: u32, entry: &IfaceEntry) -> Result<()> {
        self.ifaces
            .insert(ifindex, entry, 0)
            .with_context(|| format!("writing interface {ifindex}"))
    }

    pub fn get_iface(&self, ifindex: u32) -> Option<IfaceEntry> {
        self.ifaces.get(&ifindex, 0).ok()
    }

    pub fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        self.ifaces
            .remove(&ifindex)
            .with_context(|| format!("removing interface {ifindex}"))
    }

    pub fn set_link(&mut self, key: &LinkKey, link_id: u32) -> Result<()> {
        self.links.insert(key, link_id, 0).context("writing LINKS")
    }

    /// giaddrs in `prefix` are relays of `link_id`.
    pub fn set_relay_prefix(&mut self, prefix: Ipv4Net, link_id: u32) -> Result<()> {
        let key = Key::new(u32::from(prefix.prefix_len()), prefix.network().octets());
        self.relay_links
            .insert(&key, link_id, 0)
            .with_context(|| format!("writing relay prefix {prefix}"))
    }

    pub fn upsert_lease(&mut self, address: Ipv4Addr, entry: &LeaseEntry) -> Result<()> {
        self.leases
            .insert(u32::from(address), entry, 0)
            .with_context(|| format!("writing lease {address}"))
    }

    /// Writes many leases with BPF_MAP_UPDATE_BATCH (one syscall per chunk instead of one per
    /// lease: a million leases load in well under a second). Falls back to single updates on
    /// kernels without batch support for hash maps.
    pub fn upsert_leases(&mut self, leases: &[(Ipv4Addr, LeaseEntry)]) -> Result<()> {
        const CHUNK: usize = 16 * 1024;
        let fd = self.leases.map().fd().as_fd().as_raw_fd();
        for chunk in leases.chunks(CHUNK) {
            let keys: Vec<u32> = chunk.iter().map(|(a, _)| u32::from(*a)).collect();
            let values: Vec<LeaseEntry> = chunk.iter().map(|(_, e)| *e).collect();
            match update_batch(fd, &keys, &values) {
                Ok(()) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(524) =>
                {
                    // EINVAL / ENOTSUPP: no batch operations here.
                    for (address, entry) in chunk {
                        self.upsert_lease(*address, entry)?;
                    }
                }
                Err(e) => return Err(e).context("writing leases (BPF_MAP_UPDATE_BATCH)"),
            }
        }
        Ok(())
    }

    pub fn get_lease(&self, address: Ipv4Addr) -> Option<LeaseEntry> {
        self.leases.get(&u32::from(address), 0).ok()
    }

    /// Removes a lease; removing one that is absent is not an error.
    pub fn remove_lease(&mut self, address: Ipv4Addr) -> Result<()> {
        match self.leases.remove(&u32::from(address)) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("removing lease {address}")),
        }
    }

    pub fn leases(&self) -> impl Iterator<Item = (Ipv4Addr, LeaseEntry)> + '_ {
        self.leases
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (Ipv4Addr::from(k), v))
    }

    pub fn counters(&self) -> Result<CounterSnapshot> {
        read_counters(&self.counters)
    }
}

/// BPF_MAP_UPDATE_BATCH on a map with u32 keys: all of `keys`/`values` or an error.
fn update_batch(map_fd: RawFd, keys: &[u32], values: &[LeaseEntry]) -> std::io::Result<()> {
    /// The `batch` member of `union bpf_attr` (linux/bpf.h).
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    debug_assert_eq!(keys.len(), values.len());
    let mut done = 0;
    while done < keys.len() {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done) as u32,
            map_fd: map_fd as u32,
            elem_flags: 0, // BPF_ANY
            flags: 0,
        };
        // SAFETY: attr points at a valid bpf_attr prefix (the kernel zero-extends it); keys and
        // values are live arrays of `count` elements of the map's key and value sizes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // The kernel reports in `count` how many it wrote before the error: go on from there.
        let e = std::io::Error::last_os_error();
        let written = attr.count as usize;
        if written == 0 && e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
        done += written;
    }
    Ok(())
}

impl Drop for FastPath {
    fn drop(&mut self) {
        if let Some(pin) = &self.counters_pin {
            let _ = std::fs::remove_file(pin);
        }
    }
}

fn read_counters(map: &PerCpuArray<MapData, u64>) -> Result<CounterSnapshot> {
    let mut values = Vec::with_capacity(Counter::ALL.len());
    for counter in Counter::ALL {
        let per_cpu = map.get(&(*counter as u32), 0).context("reading COUNTERS")?;
        values.push(per_cpu.iter().sum());
    }
    Ok(CounterSnapshot(values))
}

/// Path of the pinned COUNTERS map under `pin_dir`.
pub fn counters_pin_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join(names::COUNTERS)
}

/// Reads counters pinned by a running (or crashed) daemon.
pub fn read_pinned_counters(pin_dir: &Path) -> Result<CounterSnapshot> {
    let path = counters_pin_path(pin_dir);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "no pinned counters at {} (is the daemon running?)",
            path.display()
        )
    })?;
    let map = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?;
    read_counters(&map)
}

fn pin_counters(ebpf: &Ebpf, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    let path = counters_pin_path(dir);
    // A pin left by a daemon that was killed belongs to a map nobody updates any more.
    let _ = std::fs::remove_file(&path);
    let map = ebpf
        .map(names::COUNTERS)
        .ok_or_else(|| anyhow!("COUNTERS missing"))?;
    let data: &MapData = match map {
        aya::maps::Map::PerCpuArray(data) => data,
        _ => bail!("COUNTERS is not a per-CPU array"),
    };
    data.pin(&path)
        .with_context(|| format!("pinning counters at {}", path.display()))?;
    Ok(path)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large LEASES maps load.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}
