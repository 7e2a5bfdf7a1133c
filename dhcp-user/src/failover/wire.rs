//! Failover messages (draft-ietf-dhc-failover-12 §6), byte for byte as ISC dhcpd 4.4 sends
//! and accepts them.
//!
//! A message is a 12-byte header — length (u16, the whole message), type (u8), payload offset
//! (u8, 12), the sender's time (u32, unix seconds), transaction id (u32) — followed by options,
//! each a code (u16), a length (u16) and the data. All numbers are big-endian. dhcpd rejects
//! messages shorter than 12 or longer than 2048 bytes, options that appear twice, and
//! fixed-size options of the wrong size; it skips options it does not know.

use std::net::Ipv4Addr;

use thiserror::Error;

/// Message types (§6.1; dhcpd `FTM_*`).
pub mod msg {
    pub const POOLREQ: u8 = 1;
    pub const POOLRESP: u8 = 2;
    pub const BNDUPD: u8 = 3;
    pub const BNDACK: u8 = 4;
    pub const CONNECT: u8 = 5;
    pub const CONNECTACK: u8 = 6;
    pub const UPDREQALL: u8 = 7;
    pub const UPDDONE: u8 = 8;
    pub const UPDREQ: u8 = 9;
    pub const STATE: u8 = 10;
    pub const CONTACT: u8 = 11;
    pub const DISCONNECT: u8 = 12;

    pub fn name(kind: u8) -> &'static str {
        match kind {
            POOLREQ => "POOLREQ",
            POOLRESP => "POOLRESP",
            BNDUPD => "BNDUPD",
            BNDACK => "BNDACK",
            CONNECT => "CONNECT",
            CONNECTACK => "CONNECTACK",
            UPDREQALL => "UPDREQALL",
            UPDDONE => "UPDDONE",
            UPDREQ => "UPDREQ",
            STATE => "STATE",
            CONTACT => "CONTACT",
            DISCONNECT => "DISCONNECT",
            _ => "unknown",
        }
    }
}

/// Option codes (§12; dhcpd `FTO_*`).
pub mod opt {
    pub const ADDRESSES_TRANSFERRED: u16 = 1;
    pub const ASSIGNED_IP_ADDRESS: u16 = 2;
    pub const BINDING_STATUS: u16 = 3;
    pub const CLIENT_IDENTIFIER: u16 = 4;
    pub const CHADDR: u16 = 5;
    pub const CLTT: u16 = 6;
    pub const REPLY_OPTIONS: u16 = 7;
    pub const REQUEST_OPTIONS: u16 = 8;
    pub const DDNS: u16 = 9;
    pub const DELAYED_SERVICE: u16 = 10;
    pub const HBA: u16 = 11;
    pub const IP_FLAGS: u16 = 12;
    pub const LEASE_EXPIRY: u16 = 13;
    pub const MAX_UNACKED: u16 = 14;
    pub const MCLT: u16 = 15;
    pub const MESSAGE: u16 = 16;
    pub const MESSAGE_DIGEST: u16 = 17;
    pub const POTENTIAL_EXPIRY: u16 = 18;
    pub const RECEIVE_TIMER: u16 = 19;
    pub const PROTOCOL_VERSION: u16 = 20;
    pub const REJECT_REASON: u16 = 21;
    pub const RELATIONSHIP_NAME: u16 = 22;
    pub const SERVER_FLAGS: u16 = 23;
    pub const SERVER_STATE: u16 = 24;
    pub const STOS: u16 = 25;
    pub const TLS_REPLY: u16 = 26;
    pub const TLS_REQUEST: u16 = 27;
    pub const VENDOR_CLASS: u16 = 28;
    pub const VENDOR_OPTIONS: u16 = 29;
}

/// Reject reasons (§12.21; dhcpd `FTR_*`).
pub mod reject {
    pub const ILLEGAL_IP_ADDR: u8 = 1;
    pub const FATAL_CONFLICT: u8 = 2;
    pub const MISSING_BINDINFO: u8 = 3;
    pub const TIMEMISMATCH: u8 = 4;
    pub const INVALID_MCLT: u8 = 5;
    pub const MISC_REJECT: u8 = 6;
    pub const DUP_CONNECTION: u8 = 7;
    pub const INVALID_PARTNER: u8 = 8;
    pub const VERSION_MISMATCH: u8 = 14;
    pub const OUTDATED_BIND_INFO: u8 = 15;
    pub const LESS_CRIT_BIND_INFO: u8 = 16;
    pub const NO_TRAFFIC: u8 = 17;
    pub const HBA_CONFLICT: u8 = 18;
    pub const UNKNOWN: u8 = 254;

    pub fn describe(reason: u8) -> &'static str {
        match reason {
            ILLEGAL_IP_ADDR => "illegal IP address (not part of any address pool)",
            FATAL_CONFLICT => "fatal conflict: address in use by another client",
            MISSING_BINDINFO => "missing binding information",
            TIMEMISMATCH => "time mismatch too great",
            INVALID_MCLT => "invalid MCLT",
            MISC_REJECT => "rejected for an unknown reason",
            DUP_CONNECTION => "duplicate connection",
            INVALID_PARTNER => "invalid failover partner",
            VERSION_MISMATCH => "protocol version mismatch",
            OUTDATED_BIND_INFO => "outdated binding information",
            LESS_CRIT_BIND_INFO => "less critical binding information",
            NO_TRAFFIC => "no traffic within sufficient time",
            HBA_CONFLICT => "hash bucket assignment conflict",
            _ => "undefined reason",
        }
    }
}

/// Binding states of a lease on the wire (§12.3; dhcpd `FTS_*`).
pub mod binding {
    pub const FREE: u8 = 1;
    pub const ACTIVE: u8 = 2;
    pub const EXPIRED: u8 = 3;
    pub const RELEASED: u8 = 4;
    pub const ABANDONED: u8 = 5;
    pub const RESET: u8 = 6;
    pub const BACKUP: u8 = 7;
}

/// Protocol version dhcpd speaks (`DHCP_FAILOVER_VERSION`).
pub const PROTOCOL_VERSION: u8 = 1;
/// Server flag: the sender is starting up (§12.23).
pub const SERVER_FLAG_STARTUP: u8 = 1;
pub const HEADER_LEN: usize = 12;
pub const MIN_MESSAGE: usize = 12;
pub const MAX_MESSAGE: usize = 2048;

/// One failover message; absent options are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub kind: u8,
    /// The sender's clock when it sent the message (unix seconds).
    pub time: u32,
    pub xid: u32,

    pub relationship_name: Option<Vec<u8>>,
    pub max_unacked: Option<u32>,
    pub receive_timer: Option<u32>,
    pub vendor_class: Option<Vec<u8>>,
    pub protocol_version: Option<u8>,
    pub tls_request: Option<u8>,
    pub tls_reply: Option<u8>,
    pub mclt: Option<u32>,
    pub hba: Option<Vec<u8>>,

    pub assigned_address: Option<Ipv4Addr>,
    pub binding_status: Option<u8>,
    pub client_id: Option<Vec<u8>>,
    /// Hardware type followed by the hardware address.
    pub chaddr: Option<Vec<u8>>,
    pub lease_expiry: Option<u32>,
    pub potential_expiry: Option<u32>,
    pub stos: Option<u32>,
    pub cltt: Option<u32>,
    pub ip_flags: Option<u16>,

    pub server_state: Option<u8>,
    pub server_flags: Option<u8>,
    pub addresses_transferred: Option<u32>,
    pub reject_reason: Option<u8>,
    pub message: Option<Vec<u8>>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message length {0} outside {MIN_MESSAGE}..={MAX_MESSAGE}")]
    BadLength(usize),
    #[error("payload offset {0} inside the header")]
    BadPayloadOffset(u8),
    #[error("option {code} overruns the message")]
    Overrun { code: u16 },
    #[error("option {code} appears twice")]
    Duplicate { code: u16 },
    #[error("option {code} has length {len}, expected {expected}")]
    BadSize {
        code: u16,
        len: usize,
        expected: usize,
    },
    #[error("message digest is not the last option")]
    DigestNotLast,
}

impl Message {
    pub fn new(kind: u8, xid: u32, time: u32) -> Message {
        Message {
            kind,
            xid,
            time,
            ..Default::default()
        }
    }

    pub fn name(&self) -> &'static str {
        msg::name(self.kind)
    }

    /// The message as bytes, options in the order dhcpd writes them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0, 0, self.kind, HEADER_LEN as u8]);
        out.extend_from_slice(&self.time.to_be_bytes());
        out.extend_from_slice(&self.xid.to_be_bytes());
        let mut put = |code: u16, data: &[u8]| {
            // Options longer than a message can hold are cut (text only; never happens for
            // what we send, whose variable parts are client ids and names).
            let data = &data[..data.len().min(MAX_MESSAGE - HEADER_LEN - 4)];
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(data);
        };
        if let Some(v) = &self.relationship_name {
            put(opt::RELATIONSHIP_NAME, v);
        }
        if let Some(v) = self.max_unacked {
            put(opt::MAX_UNACKED, &v.to_be_bytes());
        }
        if let Some(v) = self.receive_timer {
            put(opt::RECEIVE_TIMER, &v.to_be_bytes());
        }
        if let Some(v) = &self.vendor_class {
            put(opt::VENDOR_CLASS, v);
        }
        if let Some(v) = self.protocol_version {
            put(opt::PROTOCOL_VERSION, &[v]);
        }
        if let Some(v) = self.tls_request {
            put(opt::TLS_REQUEST, &[v]);
        }
        if let Some(v) = self.tls_reply {
            put(opt::TLS_REPLY, &[v]);
        }
        if let Some(v) = self.mclt {
            put(opt::MCLT, &v.to_be_bytes());
        }
        if let Some(v) = &self.hba {
            put(opt::HBA, v);
        }
        if let Some(v) = self.assigned_address {
            put(opt::ASSIGNED_IP_ADDRESS, &v.octets());
        }
        if let Some(v) = self.binding_status {
            put(opt::BINDING_STATUS, &[v]);
        }
        if let Some(v) = &self.client_id {
            put(opt::CLIENT_IDENTIFIER, v);
        }
        if let Some(v) = &self.chaddr {
            put(opt::CHADDR, v);
        }
        if let Some(v) = self.lease_expiry {
            put(opt::LEASE_EXPIRY, &v.to_be_bytes());
        }
        if let Some(v) = self.potential_expiry {
            put(opt::POTENTIAL_EXPIRY, &v.to_be_bytes());
        }
        if let Some(v) = self.server_state {
            put(opt::SERVER_STATE, &[v]);
        }
        if let Some(v) = self.server_flags {
            put(opt::SERVER_FLAGS, &[v]);
        }
        if let Some(v) = self.stos {
            put(opt::STOS, &v.to_be_bytes());
        }
        if let Some(v) = self.cltt {
            put(opt::CLTT, &v.to_be_bytes());
        }
        if let Some(v) = self.ip_flags {
            put(opt::IP_FLAGS, &v.to_be_bytes());
        }
        if let Some(v) = self.addresses_transferred {
            put(opt::ADDRESSES_TRANSFERRED, &v.to_be_bytes());
        }
        if let Some(v) = self.reject_reason {
            put(opt::REJECT_REASON, &[v]);
        }
        if let Some(v) = &self.message {
            put(opt::MESSAGE, v);
        }
        let len = out.len() as u16;
        out[..2].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Parses one whole message (`bytes` starts with its length field and holds exactly it).
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let len = bytes.len();
        if !(MIN_MESSAGE..=MAX_MESSAGE).contains(&len)
            || usize::from(u16::from_be_bytes([bytes[0], bytes[1]])) != len
        {
            return Err(WireError::BadLength(len));
        }
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4"));
        let mut m = Message::new(bytes[2], u32_at(8), u32_at(4));
        let payload = bytes[3];
        if usize::from(payload) < HEADER_LEN {
            return Err(WireError::BadPayloadOffset(payload));
        }
        let mut at = usize::from(payload);
        let mut seen = [false; 32];
        while at < len {
            if at + 4 > len {
                return Err(WireError::Overrun { code: 0 });
            }
            let code = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            let olen = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            at += 4;
            if at + olen > len {
                return Err(WireError::Overrun { code });
            }
            let data = &bytes[at..at + olen];
            at += olen;
            if code == opt::MESSAGE_DIGEST {
                if at != len {
                    return Err(WireError::DigestNotLast);
                }
                continue;
            }
            if usize::from(code) < seen.len() {
                if seen[usize::from(code)] {
                    return Err(WireError::Duplicate { code });
                }
                seen[usize::from(code)] = true;
            }
            let fixed = |expected: usize| -> Result<&[u8], WireError> {
                if data.len() == expected {
                    Ok(data)
                } else {
                    Err(WireError::BadSize {
                        code,
                        len: data.len(),
                        expected,
                    })
                }
            };
            let u8_ = || fixed(1).map(|d| d[0]);
            let u16_ = || fixed(2).map(|d| u16::from_be_bytes([d[0], d[1]]));
            let u32_ = || fixed(4).map(|d| u32::from_be_bytes(d.try_into().expect("4")));
            match code {
                opt::ADDRESSES_TRANSFERRED => m.addresses_transferred = Some(u32_()?),
                opt::ASSIGNED_IP_ADDRESS => m.assigned_address = Some(Ipv4Addr::from(u32_()?)),
                opt::BINDING_STATUS => m.binding_status = Some(u8_()?),
                opt::CLIENT_IDENTIFIER => m.client_id = Some(data.to_vec()),
                opt::CHADDR => m.chaddr = Some(data.to_vec()),
                opt::CLTT => m.cltt = Some(u32_()?),
                opt::HBA => m.hba = Some(data.to_vec()),
                opt::IP_FLAGS => m.ip_flags = Some(u16_()?),
                opt::LEASE_EXPIRY => m.lease_expiry = Some(u32_()?),
                opt::MAX_UNACKED => m.max_unacked = Some(u32_()?),
                opt::MCLT => m.mclt = Some(u32_()?),
                opt::MESSAGE => m.message = Some(data.to_vec()),
                opt::POTENTIAL_EXPIRY => m.potential_expiry = Some(u32_()?),
                opt::RECEIVE_TIMER => m.receive_timer = Some(u32_()?),
                opt::PROTOCOL_VERSION => m.protocol_version = Some(u8_()?),
                opt::REJECT_REASON => m.reject_reason = Some(u8_()?),
                opt::RELATIONSHIP_NAME => m.relationship_name = Some(data.to_vec()),
                opt::SERVER_FLAGS => m.server_flags = Some(u8_()?),
                opt::SERVER_STATE => m.server_state = Some(u8_()?),
                opt::STOS => m.stos = Some(u32_()?),
                opt::TLS_REPLY => m.tls_reply = Some(u8_()?),
                opt::TLS_REQUEST => m.tls_request = Some(u8_()?),
                opt::VENDOR_CLASS => m.vendor_class = Some(data.to_vec()),
                opt::DELAYED_SERVICE => {
                    u8_()?;
                }
                // DDNS, request/reply options, vendor options: not used; unknown: skipped.
                _ => {}
            }
        }
        Ok(m)
    }

    /// The message text, for logs.
    pub fn text(&self) -> String {
        self.message
            .as_deref()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .unwrap_or_default()
    }
}

/// Splits complete messages off the front of a receive buffer.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, an error if the stream
    /// is corrupt (the connection must then be dropped, as dhcpd does).
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if !(MIN_MESSAGE..=MAX_MESSAGE).contains(&len) {
            return Err(WireError::BadLength(len));
        }
        if self.buf.len() < len {
            return Ok(None);
        }
        let m = Message::decode(&self.buf[..len]);
        self.buf.drain(..len);
        m.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BNDUPD as dhcpd 4.4 builds it in dhcp_failover_send_bind_update().
    fn dhcpd_bndupd() -> Vec<u8> {
        let mut b = vec![];
        let mut opt = |code: u16, data: &[u8]| {
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&(data.len() as u16).to_be_bytes());
            b.extend_from_slice(data);
        };
        opt(2, &[10, 0, 0, 7]); // assigned address
        opt(3, &[2]); // active
        opt(4, &[1, 2, 0, 0, 0, 0, 7]); // client id
        opt(5, &[1, 2, 0, 0, 0, 0, 7]); // chaddr: htype + MAC
        opt(13, &1_700_003_600u32.to_be_bytes()); // ends
        opt(18, &1_700_005_400u32.to_be_bytes()); // tstp
        opt(25, &1_700_000_000u32.to_be_bytes()); // starts
        opt(6, &1_700_000_000u32.to_be_bytes()); // cltt
        let mut m = vec![0, 0, msg::BNDUPD, 12];
        m.extend_from_slice(&1_700_000_001u32.to_be_bytes());
        m.extend_from_slice(&42u32.to_be_bytes());
        m.extend_from_slice(&b);
        let len = m.len() as u16;
        m[..2].copy_from_slice(&len.to_be_bytes());
        m
    }

    #[test]
    fn decodes_what_dhcpd_sends() {
        let m = Message::decode(&dhcpd_bndupd()).unwrap();
        assert_eq!(m.kind, msg::BNDUPD);
        assert_eq!(m.xid, 42);
        assert_eq!(m.time, 1_700_000_001);
        assert_eq!(m.assigned_address, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(m.binding_status, Some(binding::ACTIVE));
        assert_eq!(m.chaddr.as_deref(), Some(&[1, 2, 0, 0, 0, 0, 7][..]));
        assert_eq!(m.lease_expiry, Some(1_700_003_600));
        assert_eq!(m.potential_expiry, Some(1_700_005_400));
        assert_eq!(m.stos, Some(1_700_000_000));
        assert_eq!(m.cltt, Some(1_700_000_000));
    }

    #[test]
    fn round_trips() {
        let mut m = Message::new(msg::CONNECT, 7, 1_700_000_000);
        m.relationship_name = Some(b"dhcp-failover".to_vec());
        m.max_unacked = Some(10);
        m.receive_timer = Some(60);
        m.vendor_class = Some(b"xdpdhcp-0.1".to_vec());
        m.protocol_version = Some(PROTOCOL_VERSION);
        m.tls_request = Some(0);
        m.mclt = Some(3600);
        m.hba = Some(vec![0xff; 16].into_iter().chain([0; 16]).collect());
        let bytes = m.encode();
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[0], bytes[1]])),
            bytes.len()
        );
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn rejects_what_dhcpd_rejects() {
        let good = dhcpd_bndupd();
        // Duplicate option.
        let mut dup = good.clone();
        dup.extend_from_slice(&[0, 3, 0, 1, 2]);
        let len = dup.len() as u16;
        dup[..2].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Message::decode(&dup), Err(WireError::Duplicate { code: 3 }));
        // Wrong size for a fixed option.
        let mut bad = good.clone();
        bad[HEADER_LEN + 3] = 3; // assigned address claims 3 bytes
        assert!(Message::decode(&bad).is_err());
        // Length field disagrees.
        let mut short = good.clone();
        short.truncate(good.len() - 1);
        assert!(Message::decode(&short).is_err());
        assert!(Message::decode(&[0, 4, 1, 12]).is_err());
    }

    #[test]
    fn skips_unknown_options_and_header_extensions() {
        let mut m = vec![
            0,
            0,
            msg::CONTACT,
            16,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            9,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        m.extend_from_slice(&[0x7f, 0x00, 0, 2, 1, 2]);
        let len = m.len() as u16;
        m[..2].copy_from_slice(&len.to_be_bytes());
        let d = Message::decode(&m).unwrap();
        assert_eq!((d.kind, d.xid, d.time), (msg::CONTACT, 9, 1));
    }

    #[test]
    fn framer_splits_a_stream_anywhere() {
        let a = dhcpd_bndupd();
        let b = Message::new(msg::CONTACT, 5, 9).encode();
        let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        for cut in 0..stream.len() {
            let mut f = Framer::default();
            f.push(&stream[..cut]);
            let mut got = vec![];
            while let Some(m) = f.next_message().unwrap() {
                got.push(m.kind);
            }
            f.push(&stream[cut..]);
            while let Some(m) = f.next_message().unwrap() {
                got.push(m.kind);
            }
            assert_eq!(got, vec![msg::BNDUPD, msg::CONTACT], "cut at {cut}");
        }
        let mut f = Framer::default();
        f.push(&[0, 3, 1]);
        assert!(f.next_message().is_err());
    }
}
