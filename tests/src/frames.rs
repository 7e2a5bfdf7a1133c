//! Crafting request frames and taking replies apart.
//!
//! Requests are encoded by hand (options as raw TLVs) so tests can also build what no library
//! would: duplicate, split, truncated and oversized options. Replies are decoded twice: with a
//! small raw walker (to check order and exact bytes) and with dhcproto (to check that a
//! standard decoder accepts them). L3/L4 headers and checksums go through etherparse.

use std::net::Ipv4Addr;

use dhcp_common::wire::{MAGIC_COOKIE, msg, opt};
use dhcproto::{Decodable, Decoder, v4};
use etherparse::{IpNumber, Ipv4Header, UdpHeader};

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

/// A BOOTP/DHCP request, field by field.
#[derive(Clone, Debug)]
pub struct Bootp {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub sname: [u8; 64],
    pub file: [u8; 128],
    pub cookie: [u8; 4],
    /// Options in order as (code, value); encoded as code, len, value.
    pub options: Vec<(u8, Vec<u8>)>,
    /// Bytes after the options, before padding (END unless a test removes it).
    pub tail: Vec<u8>,
    /// Pad the message with zeros to at least this length (clients pad to 300).
    pub min_len: usize,
}

pub fn mac16(mac: [u8; 6]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..6].copy_from_slice(&mac);
    c
}

impl Bootp {
    /// A DHCP message of type `msg_type` from `mac`.
    pub fn dhcp(msg_type: u8, mac: [u8; 6]) -> Self {
        Bootp {
            op: 1,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 0x1234_5678,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac16(mac),
            sname: [0; 64],
            file: [0; 128],
            cookie: MAGIC_COOKIE,
            options: vec![(opt::MESSAGE_TYPE, vec![msg_type])],
            tail: vec![opt::END],
            min_len: 300,
        }
    }

    /// RENEWING/REBINDING: REQUEST with ciaddr, no 50, no 54.
    pub fn renew(ciaddr: Ipv4Addr, mac: [u8; 6]) -> Self {
        Bootp {
            ciaddr,
            ..Self::dhcp(msg::REQUEST, mac)
        }
        .with(opt::PARAMETER_REQUEST_LIST, &[1, 3, 6, 15, 51, 58, 59])
    }

    /// INIT-REBOOT: REQUEST with option 50, ciaddr 0, no 54.
    pub fn init_reboot(requested: Ipv4Addr, mac: [u8; 6]) -> Self {
        Self::dhcp(msg::REQUEST, mac).with(opt::REQUESTED_ADDRESS, &requested.octets())
    }

    pub fn with(mut self, code: u8, value: &[u8]) -> Self {
        self.options.push((code, value.to_vec()));
        self
    }

    pub fn without(mut self, code: u8) -> Self {
        self.options.retain(|(c, _)| *c != code);
        self
    }

    pub fn relayed_by(mut self, giaddr: Ipv4Addr) -> Self {
        self.giaddr = giaddr;
        self.hops = 1;
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(576);
        b.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        b.extend_from_slice(&self.sname);
        b.extend_from_slice(&self.file);
        b.extend_from_slice(&self.cookie);
        for (code, value) in &self.options {
            b.push(*code);
            b.push(value.len() as u8);
            b.extend_from_slice(value);
        }
        b.extend_from_slice(&self.tail);
        if b.len() < self.min_len {
            b.resize(self.min_len, 0);
        }
        b
    }
}

/// Ethernet/VLAN/IPv4/UDP around a payload.
#[derive(Clone, Debug)]
pub struct Wire {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// (TPID, TCI), outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Wire {
    /// A client with no address broadcasting to servers.
    pub fn broadcast_from(mac: [u8; 6]) -> Self {
        Wire {
            src_mac: mac,
            dst_mac: BROADCAST_MAC,
            vlans: vec![],
            src_ip: Ipv4Addr::UNSPECIFIED,
            dst_ip: Ipv4Addr::BROADCAST,
            ip_options: vec![],
            src_port: 68,
            dst_port: 67,
        }
    }

    /// A bound client unicasting to the server.
    pub fn unicast(
        mac: [u8; 6],
        src_ip: Ipv4Addr,
        server_mac: [u8; 6],
        server_ip: Ipv4Addr,
    ) -> Self {
        Wire {
            dst_mac: server_mac,
            src_ip,
            dst_ip: server_ip,
            ..Self::broadcast_from(mac)
        }
    }

    /// A relay agent forwarding to the server (perfdhcp sends exactly this).
    pub fn relay(
        relay_mac: [u8; 6],
        giaddr: Ipv4Addr,
        server_mac: [u8; 6],
        server_ip: Ipv4Addr,
    ) -> Self {
        Wire {
            src_port: 67,
            ..Self::unicast(relay_mac, giaddr, server_mac, server_ip)
        }
    }

    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(64 + payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = Ipv4Header::new(
            (payload.len() + 8) as u16,
            64,
            IpNumber::UDP,
            self.src_ip.octets(),
            self.dst_ip.octets(),
        )
        .expect("payload fits an IPv4 datagram");
        ip.options = self
            .ip_options
            .as_slice()
            .try_into()
            .expect("IP options: a multiple of 4, at most 40");
        ip.set_payload_len(payload.len() + 8)
            .expect("payload fits an IPv4 datagram");
        ip.header_checksum = ip.calc_header_checksum();
        let udp = UdpHeader::with_ipv4_checksum(self.src_port, self.dst_port, &ip, payload)
            .expect("payload fits a UDP datagram");
        ip.write(&mut f).expect("writing to a Vec");
        udp.write(&mut f).expect("writing to a Vec");
        f.extend_from_slice(payload);
        f
    }
}

/// A reply frame, checked and taken apart.
#[derive(Debug)]
pub struct Reply {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlans: Vec<(u16, u16)>,
    pub ip: Ipv4Header,
    pub udp: UdpHeader,
    /// The BOOTP message as bytes.
    pub bootp: Vec<u8>,
    /// Options in wire order (PAD skipped), up to END.
    pub options: Vec<(u8, Vec<u8>)>,
    /// The same message as dhcproto decodes it.
    pub message: v4::Message,
}

impl Reply {
    /// Parses an Ethernet frame and checks every length and checksum; `Err` says what is wrong.
    pub fn parse(frame: &[u8]) -> Result<Reply, String> {
        if frame.len() < 14 {
            return Err("frame shorter than Ethernet".into());
        }
        let dst_mac: [u8; 6] = frame[0..6].try_into().unwrap();
        let src_mac: [u8; 6] = frame[6..12].try_into().unwrap();
        let mut off = 12;
        let mut vlans = vec![];
        loop {
            let ethertype = u16::from_be_bytes([frame[off], frame[off + 1]]);
            if ethertype == TPID_8021Q || ethertype == TPID_8021AD {
                let tci = u16::from_be_bytes([frame[off + 2], frame[off + 3]]);
                vlans.push((ethertype, tci));
                off += 4;
                continue;
            }
            if ethertype != 0x0800 {
                return Err(format!("ethertype {ethertype:#06x}"));
            }
            off += 2;
            break;
        }
        let (ip, rest) = Ipv4Header::from_slice(&frame[off..]).map_err(|e| format!("IPv4: {e}"))?;
        if ip.header_checksum != ip.calc_header_checksum() {
            return Err("IPv4 header checksum".into());
        }
        if ip.protocol != IpNumber::UDP {
            return Err("not UDP".into());
        }
        let ip_payload_len = ip.total_len as usize - ip.header_len();
        if rest.len() != ip_payload_len {
            return Err(format!(
                "frame carries {} bytes after IP, header says {ip_payload_len}",
                rest.len()
            ));
        }
        let (udp, payload) = UdpHeader::from_slice(rest).map_err(|e| format!("UDP: {e}"))?;
        if udp.length as usize != rest.len() {
            return Err("UDP length".into());
        }
        if udp.checksum == 0 {
            return Err("UDP checksum missing".into());
        }
        let expected = udp
            .calc_checksum_ipv4(&ip, payload)
            .map_err(|e| format!("UDP: {e}"))?;
        if udp.checksum != expected {
            return Err(format!(
                "UDP checksum {:#06x}, expected {expected:#06x}",
                udp.checksum
            ));
        }
        let options = raw_options(payload)?;
        let message = v4::Message::decode(&mut Decoder::new(payload))
            .map_err(|e| format!("dhcproto: {e}"))?;
        Ok(Reply {
            dst_mac,
            src_mac,
            vlans,
            ip,
            udp,
            bootp: payload.to_vec(),
            options,
            message,
        })
    }

    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    pub fn option_u32(&self, code: u8) -> Option<u32> {
        self.option(code)
            .map(|v| u32::from_be_bytes(v.try_into().expect("4-byte option")))
    }

    pub fn codes(&self) -> Vec<u8> {
        self.options.iter().map(|(c, _)| *c).collect()
    }
}

/// Options of a BOOTP message in wire order, up to END; errors on overruns.
pub fn raw_options(bootp: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    if bootp.len() < 240 || bootp[236..240] != MAGIC_COOKIE {
        return Err("no magic cookie".into());
    }
    let mut i = 240;
    let mut out = vec![];
    while i < bootp.len() {
        match bootp[i] {
            opt::PAD => i += 1,
            opt::END => return Ok(out),
            code => {
                let len = *bootp.get(i + 1).ok_or("option length missing")? as usize;
                let value = bootp
                    .get(i + 2..i + 2 + len)
                    .ok_or("option overruns message")?;
                out.push((code, value.to_vec()));
                i += 2 + len;
            }
        }
    }
    Err("no END option".into())
}
