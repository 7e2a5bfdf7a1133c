//! A scriptable relay agent: crafted client messages sent the way a relay forwards them
//! (from giaddr, port 67), replies read back. Lets tests play many clients, two relays, and
//! exactly the packets a case needs.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dhcp_common::wire::{msg, opt};
use dhcproto::{Decodable, Decoder, v4};

use crate::{
    frames::{Bootp, raw_options},
    netlab::{Netns, SERVER_IP},
};

/// A reply as a relay sees it.
#[derive(Clone, Debug)]
pub struct Answer {
    pub msg_type: v4::MessageType,
    pub xid: u32,
    pub yiaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub lease_time: Option<u32>,
    pub options: Vec<(u8, Vec<u8>)>,
    /// When the relay received it.
    pub at: std::time::SystemTime,
}

pub struct RelayClient {
    socket: UdpSocket,
    pub giaddr: Ipv4Addr,
    next_xid: u32,
}

impl RelayClient {
    /// Binds `giaddr`:67 inside `ns` (the address must be configured there).
    pub fn new(ns: &Netns, giaddr: Ipv4Addr) -> Result<RelayClient> {
        let socket = ns.enter(move || UdpSocket::bind(SocketAddrV4::new(giaddr, 67)))??;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(RelayClient {
            socket,
            giaddr,
            next_xid: rand_xid(),
        })
    }

    pub fn xid(&mut self) -> u32 {
        self.next_xid = self.next_xid.wrapping_add(1);
        self.next_xid
    }

    /// Sends a client message as relayed by us (giaddr set, hops 1).
    pub fn send(&self, bootp: &Bootp) -> Result<()> {
        let b = bootp.clone().relayed_by(self.giaddr);
        self.socket
            .send_to(&b.encode(), SocketAddrV4::new(SERVER_IP, 67))
            .context("sending to the server")?;
        Ok(())
    }

    /// Sends raw bytes (malformed input tests).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        self.socket
            .send_to(bytes, SocketAddrV4::new(SERVER_IP, 67))?;
        Ok(())
    }

    /// The next reply with `xid`, within `timeout`.
    pub fn recv(&self, xid: u32, timeout: Duration) -> Option<Answer> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = self.socket.set_read_timeout(Some(left));
            let Ok((n, _)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(m) = v4::Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if m.xid() != xid {
                continue;
            }
            let options = raw_options(&buf[..n]).unwrap_or_default();
            let lease_time = options
                .iter()
                .find(|(c, _)| *c == opt::LEASE_TIME)
                .and_then(|(_, v)| v.as_slice().try_into().ok())
                .map(u32::from_be_bytes);
            return Some(Answer {
                msg_type: m.opts().msg_type()?,
                xid,
                yiaddr: m.yiaddr(),
                chaddr: m.chaddr()[..6].try_into().ok()?,
                lease_time,
                options,
                at: std::time::SystemTime::now(),
            });
        }
    }

    /// Sends and waits for the answer, retrying like a client would.
    pub fn exchange(&mut self, bootp: Bootp) -> Option<Answer> {
        self.exchange_with(bootp, 4, Duration::from_millis(500))
    }

    /// Sends `bootp` up to `tries` times, waiting `timeout` for the answer each time.
    pub fn exchange_with(
        &mut self,
        mut bootp: Bootp,
        tries: u32,
        timeout: Duration,
    ) -> Option<Answer> {
        bootp.xid = self.xid();
        for _ in 0..tries {
            self.send(&bootp).ok()?;
            if let Some(a) = self.recv(bootp.xid, timeout) {
                return Some(a);
            }
        }
        None
    }

    /// DISCOVER, OFFER, REQUEST, ACK for `mac`; the ACK.
    pub fn dora(&mut self, mac: [u8; 6]) -> Result<Answer> {
        let offer = self
            .exchange(Bootp::dhcp(msg::DISCOVER, mac))
            .context("no OFFER")?;
        if offer.msg_type != v4::MessageType::Offer {
            bail!("expected an OFFER, got {:?}", offer.msg_type);
        }
        let request = Bootp::dhcp(msg::REQUEST, mac)
            .with(opt::REQUESTED_ADDRESS, &offer.yiaddr.octets())
            .with(opt::SERVER_ID, &SERVER_IP.octets());
        let ack = self.exchange(request).context("no answer to REQUEST")?;
        if ack.msg_type != v4::MessageType::Ack {
            bail!("expected an ACK, got {:?}", ack.msg_type);
        }
        Ok(ack)
    }

    /// A relayed renewal (what perfdhcp sends): REQUEST with ciaddr.
    pub fn renew(&mut self, ip: Ipv4Addr, mac: [u8; 6]) -> Option<Answer> {
        self.exchange(Bootp::renew(ip, mac))
    }
}

fn rand_xid() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)) | 1
}

/// A client hardware address numbered `n`.
pub fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0x42, b[0], b[1], b[2], b[3]]
}
