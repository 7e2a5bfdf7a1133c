//! The real XDP program, loaded into the kernel and driven with BPF_PROG_TEST_RUN.
//!
//! `XdpLab` fills the maps with a small, fixed topology (below) through the same `FastPath`
//! calls the daemon uses. Frames run without an ingress device, which the kernel reports as
//! the loopback interface, so "direct" links are keyed on loopback's ifindex.
//!
//! | link | how requests arrive         | subnet            |
//! |------|-----------------------------|-------------------|
//! | 1    | untagged on the interface   | 10.0.0.0/24       |
//! | 2    | VLAN 100                    | 10.100.0.0/24     |
//! | 3    | QinQ 100/200                | 10.200.0.0/24     |
//! | 4    | relayed (giaddr in subnet, or relay 172.16.9.1) | 192.168.50.0/24 |

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use dhcp_common::{
    CONFIG_FLAG_FAST_PATH, FastPathConfig, IfaceEntry, LeaseEntry, LinkKey, RenewalEvent,
    SUBNET_FLAG_VALID, SubnetEntry, digest,
};
use dhcp_user::{
    clock,
    fastpath::{CounterSnapshot, FastPath, LoadOptions},
};
use ipnet::Ipv4Net;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const RELAY_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x99];

pub const SUBNET_DIRECT: u16 = 0;
pub const SUBNET_VLAN: u16 = 1;
pub const SUBNET_QINQ: u16 = 2;
pub const SUBNET_RELAYED: u16 = 3;
pub const RELAY_OUTSIDE_SUBNET: Ipv4Addr = Ipv4Addr::new(172, 16, 9, 1);
pub const RELAY_IN_SUBNET: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);

/// Option set 0: mask, router, DNS, domain name (RFC 2132 encoding).
pub const OPTION_SET_STANDARD: u16 = 0;
pub const STANDARD_OPTIONS: &[u8] = &[
    1, 4, 255, 255, 255, 0, // subnet mask
    3, 4, 10, 0, 0, 1, // router
    6, 8, 10, 0, 0, 53, 10, 0, 0, 54, // DNS servers
    15, 11, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'n', b'e', b't', // domain
];
/// Option set 1: large enough that the ACK exceeds 576 bytes.
pub const OPTION_SET_LARGE: u16 = 1;

pub const LEASE_TIME: u32 = 3600;
pub const T1: u32 = 1800;
pub const T2: u32 = 3150;
pub const NS: u64 = 1_000_000_000;

/// What a test asks to put in LEASES.
#[derive(Clone, Debug)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    pub client_id: Option<Vec<u8>>,
    pub subnet: u16,
    /// Seconds from now until the lease the client holds ends.
    pub expires_in: i64,
    /// Seconds from now until the horizon.
    pub horizon_in: i64,
    pub option_set: u16,
    pub flags: u16,
}

impl Lease {
    pub fn new(address: Ipv4Addr, mac: [u8; 6], subnet: u16) -> Self {
        Lease {
            address,
            mac,
            client_id: None,
            subnet,
            expires_in: 1000,
            horizon_in: 2 * LEASE_TIME as i64,
            option_set: OPTION_SET_STANDARD,
            flags: 0,
        }
    }

    pub fn entry(&self) -> LeaseEntry {
        let at = |secs: i64| (clock::boottime_ns() as i64 + secs * NS as i64).max(0) as u64;
        LeaseEntry {
            client_id_digest: self
                .client_id
                .as_deref()
                .map_or(digest::NO_CLIENT_ID, digest::client_id_digest),
            expires_ns: at(self.expires_in),
            horizon_ns: at(self.horizon_in),
            lease_time_s: LEASE_TIME,
            renew_s: T1,
            rebind_s: T2,
            chaddr: self.mac,
            subnet_id: self.subnet,
            option_set: self.option_set,
            flags: self.flags,
        }
    }
}

/// Result of one run of the program on one frame.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub output: Vec<u8>,
}

pub struct XdpLab {
    pub fp: FastPath,
    renewals: RingBuf<MapData>,
    pub ifindex: u32,
}

impl XdpLab {
    pub fn new() -> Result<Self> {
        Self::with_options(LoadOptions::default())
    }

    pub fn with_options(options: LoadOptions) -> Result<Self> {
        let mut fp = FastPath::load(&options)?;
        let renewals = fp.take_renewals().context("RENEWALS already taken")?;
        let ifindex = loopback_ifindex();
        let mut lab = XdpLab {
            fp,
            renewals,
            ifindex,
        };
        lab.install_topology()?;
        Ok(lab)
    }

    fn install_topology(&mut self) -> Result<()> {
        let fp = &mut self.fp;
        fp.set_config(&FastPathConfig {
            flags: CONFIG_FLAG_FAST_PATH,
            ..Default::default()
        })?;
        fp.set_iface(
            self.ifindex,
            &IfaceEntry {
                mac: SERVER_MAC,
                _reserved: [0; 2],
                address: SERVER_IP.into(),
            },
        )?;
        let subnets = [
            (SUBNET_DIRECT, "10.0.0.0/24", 1),
            (SUBNET_VLAN, "10.100.0.0/24", 2),
            (SUBNET_QINQ, "10.200.0.0/24", 3),
            (SUBNET_RELAYED, "192.168.50.0/24", 4),
        ];
        for (id, net, link) in subnets {
            let net: Ipv4Net = net.parse()?;
            fp.set_subnet(
                id,
                &SubnetEntry {
                    network: net.network().into(),
                    mask: net.netmask().into(),
                    server_id: SERVER_IP.into(),
                    link_id: link,
                    flags: SUBNET_FLAG_VALID,
                    _reserved: 0,
                },
            )?;
        }
        let links = [(0, 0, 1), (100, 0, 2), (100, 200, 3)];
        for (outer, inner, link) in links {
            fp.set_link(
                &LinkKey {
                    ifindex: self.ifindex,
                    outer_vlan: outer,
                    inner_vlan: inner,
                },
                link,
            )?;
        }
        fp.set_relay_prefix(Ipv4Net::new(RELAY_OUTSIDE_SUBNET, 32)?, 4)?;
        fp.set_option_set(OPTION_SET_STANDARD, STANDARD_OPTIONS)?;
        let mut large = Vec::new();
        for i in 0..3 {
            large.extend_from_slice(&[224, 250]); // site-specific option 224+, 250 bytes
            large.extend(std::iter::repeat_n(i as u8, 250));
        }
        fp.set_option_set(OPTION_SET_LARGE, &large)?;
        Ok(())
    }

    pub fn add(&mut self, lease: &Lease) -> Result<()> {
        self.fp.upsert_lease(lease.address, &lease.entry())
    }

    /// Runs the program once on `frame`.
    pub fn run(&self, frame: &[u8]) -> Result<Run> {
        let mut out = vec![0u8; 4096];
        let result = self
            .fp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            action: result.return_value,
            output: out,
        })
    }

    /// Runs `frame` `repeat` times in the kernel; returns the kernel's mean ns per run.
    pub fn time(&self, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let mut out = vec![0u8; 4096];
        let result = self
            .fp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }

    /// RENEWALS events published since the last call.
    pub fn events(&mut self) -> Vec<RenewalEvent> {
        let mut events = vec![];
        while let Some(item) = self.renewals.next() {
            assert_eq!(
                item.len(),
                size_of::<RenewalEvent>(),
                "ring buffer record size"
            );
            events.push(bytemuck::pod_read_unaligned::<RenewalEvent>(&item));
        }
        events
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.fp.counters().expect("reading COUNTERS")
    }
}

pub fn loopback_ifindex() -> u32 {
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    assert_ne!(index, 0, "no loopback interface");
    index
}
