//! Interfaces and sockets: what the daemon receives on and how replies leave.
//!
//! Receiving: one UDP socket per interface, bound to 0.0.0.0:67 and to the device, so the
//! daemon knows where a broadcast arrived. Sending: relay, unicast and broadcast replies go
//! through that socket; a reply to a client that has no address yet (yiaddr at chaddr, RFC
//! 2131 §4.1) goes through a packet socket with IPv4 and UDP headers built here.

use std::{
    ffi::CString,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use dhcp_common::wire::{CLIENT_PORT, SERVER_PORT};
use etherparse::{IpNumber, Ipv4Header, UdpHeader};
use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::Destination;

/// An interface the daemon serves on.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Primary IPv4 address, if it has one.
    pub address: Option<Ipv4Addr>,
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).context("interface name with a NUL byte")?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface named {name}");
    }
    Ok(index)
}

pub fn interface(name: &str) -> Result<Interface> {
    let ifindex = ifindex(name)?;
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
        .with_context(|| format!("reading the MAC address of {name}"))?;
    let mac = crate::config::parse_mac(mac_text.trim()).unwrap_or([0; 6]);
    Ok(Interface {
        name: name.to_string(),
        ifindex,
        mac,
        address: ipv4_address(name)?,
    })
}

/// The first IPv4 address of `name` (getifaddrs).
fn ipv4_address(name: &str) -> Result<Option<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: nodes of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        let ifa_name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if ifa_name == name
            && !ifa.ifa_addr.is_null()
            && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET
        {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// UDP socket on 0.0.0.0:67 bound to `iface`, non-blocking.
pub fn server_socket(iface: &str) -> Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context("creating a UDP socket")?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("binding a socket to {iface}"))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT).into())
        .with_context(|| {
            format!("binding UDP port 67 on {iface} (is another DHCP server running?)")
        })?;
    s.set_nonblocking(true)?;
    // Renewal storms arrive in bursts; a deep receive queue rides them out.
    let _ = s.set_recv_buffer_size(8 << 20);
    Ok(s.into())
}

/// Where a UDP reply goes, for destinations a UDP socket can reach.
pub fn udp_target(dest: Destination) -> Option<SocketAddrV4> {
    match dest {
        Destination::Relay(a) => Some(SocketAddrV4::new(a, SERVER_PORT)),
        Destination::Unicast(a) => Some(SocketAddrV4::new(a, CLIENT_PORT)),
        Destination::Broadcast => Some(SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)),
        Destination::Hardware { .. } => None,
    }
}

/// AF_PACKET socket for replies to clients that have no IP address yet.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn open() -> Result<PacketSocket> {
        let proto = (libc::ETH_P_IP as u16).to_be() as i32;
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                proto,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a packet socket");
        }
        // SAFETY: a fresh descriptor we own. We never read from it: no receive buffer needed.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let zero: libc::c_int = 0;
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&zero as *const libc::c_int).cast(),
                4,
            )
        };
        Ok(PacketSocket { fd })
    }

    /// Sends `payload` in UDP/IPv4 from `src`:67 to `dst`:68, at `mac` on `ifindex`.
    pub fn send(
        &self,
        ifindex: u32,
        mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &[u8],
    ) -> Result<()> {
        let ip = Ipv4Header::new(
            (payload.len() + 8) as u16,
            64,
            IpNumber::UDP,
            src.octets(),
            dst.octets(),
        )
        .context("reply too large for IPv4")?;
        let mut ip = ip;
        ip.header_checksum = ip.calc_header_checksum();
        let udp = UdpHeader::with_ipv4_checksum(SERVER_PORT, CLIENT_PORT, &ip, payload)
            .context("UDP header")?;
        let mut frame = Vec::with_capacity(28 + payload.len());
        ip.write(&mut frame)?;
        udp.write(&mut frame)?;
        frame.extend_from_slice(payload);
        // SAFETY: zeroed sockaddr_ll filled below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac);
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("sending on the packet socket");
        }
        Ok(())
    }
}
