//! The XDP load generator (bench-ebpf) from user space: templates, pacing, counting.

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use dhcp_common::loadgen::{self as lg, GenConfig, GenTemplate, count, frame};
use etherparse::{IpNumber, Ipv4Header};

pub static GEN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-ebpf"));

/// Frames sent per BPF_PROG_TEST_RUN call are processed in batches of this many.
const LIVE_BATCH: u32 = 64;

/// Which request the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Replies pass to the stack (for perfdhcp and probes); nothing is sent.
    Idle,
    Renew,
    Reboot,
    Discover,
}

impl Mode {
    fn code(self) -> u32 {
        match self {
            Mode::Idle => 0,
            Mode::Renew => lg::MODE_RENEW,
            Mode::Reboot => lg::MODE_REBOOT,
            Mode::Discover => lg::MODE_DISCOVER,
        }
    }
}

/// Addresses of the bench topology the templates need.
#[derive(Clone, Copy, Debug)]
pub struct Wiring {
    pub our_mac: [u8; 6],
    pub server_mac: [u8; 6],
    pub relay_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
}

/// Reply counters since the last reset.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub sent: u64,
    pub ack: u64,
    pub nak: u64,
    pub offer: u64,
    pub request_sent: u64,
    pub other: u64,
    pub stale: u64,
    /// CLOCK_MONOTONIC nanoseconds of the latest ACK.
    pub last_ack_ns: u64,
}

pub struct Generator {
    ebpf: Ebpf,
    config: Array<MapData, GenConfig>,
    template: Array<MapData, GenTemplate>,
    todo: Array<MapData, u32>,
    acked: PerCpuArray<MapData, u64>,
    counts: PerCpuArray<MapData, u64>,
    seq: Array<MapData, u64>,
    ifindex: u32,
    rx_link: Option<XdpLinkId>,
    wiring: Wiring,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("{name} missing"))?
        .try_into()?)
}

impl Generator {
    /// Loads the generator; call from inside the generator's namespace (the device lookups
    /// and the attachment happen there). `iface` gets the receiving program.
    pub fn new(iface: &str, wiring: Wiring) -> Result<Generator> {
        let mut ebpf = aya::EbpfLoader::new()
            .load(GEN_OBJECT)
            .context("loading the load generator")?;
        for name in ["loadgen_tx", "loadgen_rx", "xdp_pass"] {
            program(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        let take = |e: &mut Ebpf, n: &str| e.take_map(n).ok_or_else(|| anyhow!("map {n} missing"));
        let config = Array::try_from(take(&mut ebpf, lg::GEN_CONFIG)?)?;
        let template = Array::try_from(take(&mut ebpf, lg::GEN_TEMPLATE)?)?;
        let todo = Array::try_from(take(&mut ebpf, lg::GEN_TODO)?)?;
        let acked = PerCpuArray::try_from(take(&mut ebpf, lg::GEN_ACKED)?)?;
        let counts = PerCpuArray::try_from(take(&mut ebpf, lg::GEN_COUNTS)?)?;
        let seq = Array::try_from(take(&mut ebpf, lg::GEN_SEQ)?)?;
        let ifindex = xdpdhcp_ifindex(iface)?;
        let mut g = Generator {
            ebpf,
            config,
            template,
            todo,
            acked,
            counts,
            seq,
            ifindex,
            rx_link: None,
            wiring,
        };
        g.rx_link = Some(
            program(&mut g.ebpf, "loadgen_rx")?
                .attach(iface, XdpMode::Driver)
                .context("attaching the receiver")?,
        );
        g.set(Mode::Idle, 0, 0, Ipv4Addr::UNSPECIFIED)?;
        Ok(g)
    }

    /// Attaches the pass-through program to `iface` in the current namespace (a peer server's
    /// veth: frames sent with XDP reach a veth only if it runs an XDP program).
    pub fn attach_pass(&mut self, iface: &str) -> Result<XdpLinkId> {
        program(&mut self.ebpf, "xdp_pass")?
            .attach(iface, XdpMode::Driver)
            .context("attaching xdp_pass")
    }

    pub fn detach_pass(&mut self, link: XdpLinkId) -> Result<()> {
        Ok(program(&mut self.ebpf, "xdp_pass")?.detach(link)?)
    }

    /// Mode and client range: clients `first .. first + clients`, addresses from `base_ip`.
    pub fn set(&mut self, mode: Mode, first: u32, clients: u32, base_ip: Ipv4Addr) -> Result<()> {
        let cfg = GenConfig {
            mode: mode.code(),
            first,
            clients,
            todo_len: 0,
            base_ip: base_ip.into(),
            relay_ip: self.wiring.relay_ip.into(),
            server_ip: self.wiring.server_ip.into(),
            min_xid: 0,
        };
        self.config.set(0, cfg, 0)?;
        let mut t = GenTemplate {
            bytes: [0; frame::LEN],
            _pad: [0; 2],
        };
        t.bytes.copy_from_slice(&self.template(mode));
        self.template.set(0, t, 0)?;
        Ok(())
    }

    /// Sends to exactly these clients (round robin) until the next `set`.
    pub fn set_todo(&mut self, clients: &[u32]) -> Result<()> {
        for (i, c) in clients.iter().enumerate() {
            self.todo.set(i as u32, c, 0)?;
        }
        let mut cfg = self.config.get(&0, 0)?;
        cfg.todo_len = clients.len() as u32;
        self.config.set(0, cfg, 0)?;
        Ok(())
    }

    /// The frame the transmitter patches per client.
    pub fn template(&self, mode: Mode) -> Vec<u8> {
        let w = self.wiring;
        let mut f = vec![0u8; frame::LEN];
        let (src_mac, dst_mac, src_ip, dst_ip, src_port, msg, giaddr) = match mode {
            Mode::Reboot => (
                w.our_mac,
                [0xff; 6],
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                68u16,
                3u8,
                Ipv4Addr::UNSPECIFIED,
            ),
            Mode::Discover => (
                w.our_mac,
                w.server_mac,
                w.relay_ip,
                w.server_ip,
                67,
                1,
                w.relay_ip,
            ),
            Mode::Renew | Mode::Idle => (
                w.our_mac,
                w.server_mac,
                w.relay_ip,
                w.server_ip,
                67,
                3,
                w.relay_ip,
            ),
        };
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = Ipv4Header::new(
            (frame::LEN - frame::UDP) as u16,
            64,
            IpNumber::UDP,
            src_ip.octets(),
            dst_ip.octets(),
        )
        .expect("small");
        ip.header_checksum = ip.calc_header_checksum();
        f[frame::IP..frame::UDP].copy_from_slice(&ip.to_bytes());
        let udp_len = ((frame::LEN - frame::UDP) as u16).to_be_bytes();
        f[frame::UDP..frame::BOOTP].copy_from_slice(&[
            (src_port >> 8) as u8,
            src_port as u8,
            0,
            67,
            udp_len[0],
            udp_len[1],
            0,
            0,
        ]);
        let b = frame::BOOTP;
        f[b..b + 4].copy_from_slice(&[1, 1, 6, u8::from(!giaddr.is_unspecified())]);
        f[b + 24..b + 28].copy_from_slice(&giaddr.octets());
        f[b + 236..b + 240].copy_from_slice(&dhcp_common::wire::MAGIC_COOKIE);
        let o = frame::OPTIONS;
        f[o..o + 3].copy_from_slice(&[53, 1, msg]);
        if mode == Mode::Reboot {
            f[o + 3..o + 5].copy_from_slice(&[50, 4]);
            f[o + 9] = 255;
        } else {
            f[o + 3] = 255;
        }
        f
    }

    /// Transmits `n` frames from `template` as fast as the kernel goes.
    pub fn burst(&self, template: &[u8], n: u32) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.ifindex.to_ne_bytes());
        let tx: &Xdp = self
            .ebpf
            .program("loadgen_tx")
            .expect("loaded")
            .try_into()?;
        tx.test_run(TestRunOptions {
            data_in: Some(template),
            ctx_in: Some(&ctx),
            repeat: n,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN (live frames)")?;
        Ok(())
    }

    /// Transmits at `rate` frames per second for `duration`; returns how many were sent.
    pub fn paced(&self, template: &[u8], rate: f64, duration: Duration) -> Result<u64> {
        let start = Instant::now();
        let slot = Duration::from_micros(500);
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if due > sent {
                let n = (due - sent).min(1 << 20) as u32;
                self.burst(template, n)?;
                sent += u64::from(n);
            }
            thread::sleep(slot);
        }
        Ok(sent)
    }

    pub fn counts(&self) -> Result<Counts> {
        let get = |i: u32| -> Result<u64> { Ok(self.counts.get(&i, 0)?.iter().sum()) };
        Ok(Counts {
            sent: get(count::SENT)?,
            ack: get(count::ACK)?,
            nak: get(count::NAK)?,
            offer: get(count::OFFER)?,
            request_sent: get(count::REQUEST_SENT)?,
            other: get(count::OTHER_REPLY)?,
            stale: get(count::STALE)?,
            last_ack_ns: self
                .counts
                .get(&count::LAST_ACK_NS, 0)?
                .iter()
                .copied()
                .max()
                .unwrap_or(0),
        })
    }

    /// Waits until ACKs stop arriving (no new one for `quiet`), at most `max`.
    pub fn settle(&self, quiet: Duration, max: Duration) -> Result<Counts> {
        let start = Instant::now();
        let mut last = self.counts()?;
        let mut still = Instant::now();
        loop {
            thread::sleep(Duration::from_millis(20));
            let now = self.counts()?;
            if now.ack != last.ack || now.offer != last.offer {
                still = Instant::now();
                last = now;
            }
            if still.elapsed() >= quiet || start.elapsed() >= max {
                return Ok(now);
            }
        }
    }

    /// Which of clients `first .. first + n` got an ACK since the last reset.
    pub fn acked(&self, first: u32, n: u32) -> Result<Vec<bool>> {
        let mut words = vec![0u64; ((first + n) as usize).div_ceil(64)];
        for (w, word) in words.iter_mut().enumerate().skip(first as usize / 64) {
            *word = self.acked.get(&(w as u32), 0)?.iter().fold(0, |a, b| a | b);
        }
        Ok((first..first + n)
            .map(|i| words[i as usize / 64] & (1 << (i % 64)) != 0)
            .collect())
    }

    /// Zeroes the counters and the ACK bitmap of clients below `clients`; from now on replies
    /// to earlier requests count as stale.
    pub fn reset(&mut self, clients: u32) -> Result<()> {
        let next_xid = self.seq.get(&0, 0)? as u32 + 1;
        let mut cfg = self.config.get(&0, 0)?;
        cfg.min_xid = next_xid;
        self.config.set(0, cfg, 0)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = || aya::maps::PerCpuValues::try_from(vec![0u64; cpus]);
        for i in 0..count::SLOTS {
            self.counts.set(i, zeros()?, 0)?;
        }
        for w in 0..clients.div_ceil(64) {
            self.acked.set(w, zeros()?, 0)?;
        }
        Ok(())
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn xdpdhcp_ifindex(iface: &str) -> Result<u32> {
    dhcp_user::net::ifindex(iface)
}

impl Drop for Generator {
    fn drop(&mut self) {
        if let Some(link) = self.rx_link.take()
            && let Ok(p) = program(&mut self.ebpf, "loadgen_rx")
        {
            let _ = p.detach(link);
        }
    }
}
