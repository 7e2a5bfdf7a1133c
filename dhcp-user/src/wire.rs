//! DHCP messages on the daemon's side: requests decoded with dhcproto plus a strict raw option
//! walk (RFC 3396 concatenation, option overload, verbatim relay agent information); replies
//! encoded with the same option layout the XDP program uses.

use std::{collections::BTreeMap, net::Ipv4Addr};

use dhcp_common::wire::{
    BOOTP_FIXED_LEN, BOOTP_MIN_LEN, DEFAULT_MAX_DATAGRAM, FLAG_BROADCAST, MAGIC_COOKIE,
    OPTIONS_OFFSET, field, opt,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder, v4};
use thiserror::Error;

use crate::lease::{ClientKey, HwAddr};

const OPT_MESSAGE: u8 = 56;
const OPT_HOSTNAME: u8 = 12;

/// Why a packet on port 67 is not a request we answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("shorter than a BOOTP header ({0} bytes)")]
    Short(usize),
    #[error("not a BOOTREQUEST (op {0})")]
    NotRequest(u8),
    #[error("no DHCP magic cookie (plain BOOTP is not served)")]
    NoCookie,
    #[error("hardware address length {0} exceeds 16")]
    BadHlen(u8),
    #[error("option {code} at offset {at} runs past the end of the message")]
    OptionOverrun { code: u8, at: usize },
    #[error("no DHCP message type (option 53)")]
    NoMessageType,
    #[error("invalid DHCP message type {0:?}")]
    BadMessageType(Vec<u8>),
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("dhcproto: {0}")]
    Decode(String),
}

/// Option values by code, each the concatenation of all its instances (RFC 3396).
pub type RawOptions = BTreeMap<u8, Vec<u8>>;

/// Walks an options area into `out`; returns the overload value (option 52) if present.
fn walk_options(area: &[u8], base: usize, out: &mut RawOptions) -> Result<Option<u8>, ParseError> {
    let mut i = 0;
    let mut overload = None;
    while i < area.len() {
        match area[i] {
            opt::PAD => i += 1,
            opt::END => break,
            code => {
                let len = *area
                    .get(i + 1)
                    .ok_or(ParseError::OptionOverrun { code, at: base + i })?
                    as usize;
                let value = area
                    .get(i + 2..i + 2 + len)
                    .ok_or(ParseError::OptionOverrun { code, at: base + i })?;
                if code == opt::OVERLOAD {
                    overload = value.first().copied();
                }
                out.entry(code).or_default().extend_from_slice(value);
                i += 2 + len;
            }
        }
    }
    Ok(overload)
}

/// A decoded, validated client message.
#[derive(Clone, Debug)]
pub struct Request {
    pub message: v4::Message,
    pub msg_type: v4::MessageType,
    pub options: RawOptions,
    pub hw: HwAddr,
    pub client: ClientKey,
}

impl Request {
    pub fn parse(bytes: &[u8]) -> Result<Request, ParseError> {
        if bytes.len() < BOOTP_FIXED_LEN {
            return Err(ParseError::Short(bytes.len()));
        }
        if bytes[field::OP] != 1 {
            return Err(ParseError::NotRequest(bytes[field::OP]));
        }
        let hlen = bytes[field::HLEN];
        if hlen > 16 {
            return Err(ParseError::BadHlen(hlen));
        }
        if bytes.len() < OPTIONS_OFFSET || bytes[BOOTP_FIXED_LEN..OPTIONS_OFFSET] != MAGIC_COOKIE {
            return Err(ParseError::NoCookie);
        }
        let mut options = RawOptions::new();
        let overload = walk_options(&bytes[OPTIONS_OFFSET..], OPTIONS_OFFSET, &mut options)?;
        // RFC 2131 §4.1: with option 52, options continue in `file`, then `sname`.
        if let Some(o) = overload {
            if o & 1 != 0 {
                walk_options(
                    &bytes[field::FILE..BOOTP_FIXED_LEN],
                    field::FILE,
                    &mut options,
                )?;
            }
            if o & 2 != 0 {
                walk_options(
                    &bytes[field::SNAME..field::FILE],
                    field::SNAME,
                    &mut options,
                )?;
            }
        }
        let msg_type = match options.get(&opt::MESSAGE_TYPE).map(Vec::as_slice) {
            None => return Err(ParseError::NoMessageType),
            Some([t]) if (1..=18).contains(t) => v4::MessageType::from(*t),
            Some(other) => return Err(ParseError::BadMessageType(other.to_vec())),
        };
        for (code, len) in [
            (opt::REQUESTED_ADDRESS, 4),
            (opt::SERVER_ID, 4),
            (opt::LEASE_TIME, 4),
            (opt::MAX_MESSAGE_SIZE, 2),
        ] {
            if let Some(v) = options.get(&code)
                && v.len() != len
            {
                return Err(ParseError::BadOptionLength { code, len: v.len() });
            }
        }
        let message = v4::Message::decode(&mut Decoder::new(bytes))
            .map_err(|e| ParseError::Decode(e.to_string()))?;
        let hw = HwAddr::new(
            bytes[field::HTYPE],
            &bytes[field::CHADDR..field::CHADDR + hlen as usize],
        );
        let client = match options.get(&opt::CLIENT_ID) {
            Some(id) if !id.is_empty() => ClientKey::Id(id.clone().into_boxed_slice()),
            _ => ClientKey::Hw {
                htype: hw.htype,
                addr: hw.as_slice().into(),
            },
        };
        Ok(Request {
            message,
            msg_type,
            options,
            hw,
            client,
        })
    }

    fn ip_option(&self, code: u8) -> Option<Ipv4Addr> {
        self.options
            .get(&code)
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(Ipv4Addr::from)
    }

    pub fn requested_address(&self) -> Option<Ipv4Addr> {
        self.ip_option(opt::REQUESTED_ADDRESS)
            .filter(|a| !a.is_unspecified())
    }

    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.ip_option(opt::SERVER_ID)
    }

    pub fn requested_lease_time(&self) -> Option<u32> {
        self.options
            .get(&opt::LEASE_TIME)
            .and_then(|v| v.as_slice().try_into().ok())
            .map(u32::from_be_bytes)
    }

    pub fn parameter_request_list(&self) -> Option<&[u8]> {
        self.options
            .get(&opt::PARAMETER_REQUEST_LIST)
            .map(Vec::as_slice)
    }

    pub fn max_message_size(&self) -> u16 {
        self.options
            .get(&opt::MAX_MESSAGE_SIZE)
            .and_then(|v| v.as_slice().try_into().ok())
            .map(u16::from_be_bytes)
            .unwrap_or(DEFAULT_MAX_DATAGRAM)
            .max(DEFAULT_MAX_DATAGRAM)
    }

    pub fn hostname(&self) -> Option<String> {
        self.options.get(&OPT_HOSTNAME).map(|v| {
            String::from_utf8_lossy(v)
                .chars()
                .filter(|c| !c.is_control())
                .take(63)
                .collect()
        })
    }

    pub fn ciaddr(&self) -> Ipv4Addr {
        self.message.ciaddr()
    }

    pub fn giaddr(&self) -> Ipv4Addr {
        self.message.giaddr()
    }

    pub fn xid(&self) -> u32 {
        self.message.xid()
    }

    pub fn secs(&self) -> u16 {
        self.message.secs()
    }

    pub fn broadcast_flag(&self) -> bool {
        u16::from(self.message.flags()) & FLAG_BROADCAST != 0
    }
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The relay agent, port 67.
    Relay(Ipv4Addr),
    /// A configured client, port 68.
    Unicast(Ipv4Addr),
    /// 255.255.255.255, port 68, on the arrival link.
    Broadcast,
    /// yiaddr at chaddr, for a client that cannot receive unicast IP yet (packet socket).
    Hardware { ip: Ipv4Addr, mac: [u8; 6] },
}

impl Destination {
    /// RFC 2131 §4.1 for ACK/OFFER; NAKs set `nak`.
    pub fn for_reply(req: &Request, yiaddr: Ipv4Addr, nak: bool) -> Destination {
        let giaddr = req.giaddr();
        if !giaddr.is_unspecified() {
            return Destination::Relay(giaddr);
        }
        if nak {
            return Destination::Broadcast;
        }
        let ciaddr = req.ciaddr();
        if !ciaddr.is_unspecified() {
            return Destination::Unicast(ciaddr);
        }
        match req.hw.ethernet() {
            Some(mac) if !req.broadcast_flag() && !yiaddr.is_unspecified() => {
                Destination::Hardware { ip: yiaddr, mac }
            }
            _ => Destination::Broadcast,
        }
    }
}

/// What goes into a reply besides the request it answers.
pub struct ReplySpec<'a> {
    pub msg_type: v4::MessageType,
    pub yiaddr: Ipv4Addr,
    pub server_id: Ipv4Addr,
    /// Lease time, T1 and T2 (ACK and OFFER; none for INFORM and NAK).
    pub lease: Option<(u32, u32, u32)>,
    /// Pre-encoded options (what the fast path calls an option set).
    pub options: &'a [u8],
    /// Option 56 text, for NAKs.
    pub message: Option<&'a str>,
}

/// Encodes a reply: header from the request (RFC 2131 table 3), options 53, 54, 51, 58, 59, the
/// option set, 56, 61 echoed (RFC 6842), 82 echoed verbatim and last (RFC 3046), END, padding.
/// Options that do not fit the client's maximum message size are left out from the end.
pub fn encode_reply(req: &Request, spec: &ReplySpec) -> Vec<u8> {
    // RFC 2131 table 3: ciaddr is echoed in ACKs only; sname, file and siaddr stay empty.
    let ciaddr = if spec.msg_type == v4::MessageType::Ack {
        req.ciaddr()
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let mut header = v4::Message::new_with_id(
        req.xid(),
        ciaddr,
        spec.yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        req.message.chaddr(),
    );
    header.set_opcode(v4::Opcode::BootReply);
    header.set_htype(req.message.htype());
    header.set_flags(req.message.flags());
    header.set_hops(0);
    let mut out = Vec::with_capacity(576);
    header
        .encode(&mut Encoder::new(&mut out))
        .expect("encoding to a Vec cannot fail");
    debug_assert_eq!(out.len(), OPTIONS_OFFSET);

    let mut fixed = vec![opt::MESSAGE_TYPE, 1, u8::from(spec.msg_type)];
    fixed.extend_from_slice(&[opt::SERVER_ID, 4]);
    fixed.extend_from_slice(&spec.server_id.octets());
    if let Some((lease, t1, t2)) = spec.lease {
        for (code, v) in [
            (opt::LEASE_TIME, lease),
            (opt::RENEWAL_TIME, t1),
            (opt::REBINDING_TIME, t2),
        ] {
            fixed.extend_from_slice(&[code, 4]);
            fixed.extend_from_slice(&v.to_be_bytes());
        }
    }
    let mut tail = vec![];
    if let Some(text) = spec.message {
        crate::config::options::append(&mut tail, OPT_MESSAGE, text.as_bytes());
    }
    if let Some(id) = req.options.get(&opt::CLIENT_ID) {
        crate::config::options::append(&mut tail, opt::CLIENT_ID, id);
    }
    if let Some(info) = req.options.get(&opt::RELAY_AGENT_INFO) {
        crate::config::options::append(&mut tail, opt::RELAY_AGENT_INFO, info);
    }
    // The option set is the only part that may be trimmed to fit (whole options only).
    let limit = usize::from(req.max_message_size()) - 28; // IP and UDP headers
    let room = limit.saturating_sub(OPTIONS_OFFSET + fixed.len() + tail.len() + 1);
    let set = trim_to(spec.options, room);
    out.extend_from_slice(&fixed);
    out.extend_from_slice(set);
    out.extend_from_slice(&tail);
    out.push(opt::END);
    if out.len() < BOOTP_MIN_LEN {
        out.resize(BOOTP_MIN_LEN, 0);
    }
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

/// The longest prefix of whole options in `options` that fits in `room` bytes.
fn trim_to(options: &[u8], room: usize) -> &[u8] {
    let mut end = 0;
    while end < options.len() {
        let next = end + 2 + options.get(end + 1).copied().unwrap_or(0) as usize;
        if next > room || next > options.len() {
            break;
        }
        end = next;
    }
    &options[..end]
}

/// Chooses and encodes the options a client gets (RFC 2131 §4.3.1): those it asks for in
/// option 55, in that order, then those marked always-send; everything configured if it sent
/// no list.
pub fn select_options(configured: &crate::config::OptionList, prl: Option<&[u8]>) -> Vec<u8> {
    let mut out = vec![];
    let mut add =
        |o: &crate::config::OptionValue| crate::config::options::append(&mut out, o.code, &o.value);
    match prl {
        Some(prl) => {
            let mut sent = [false; 256];
            for code in prl {
                if let Some(o) = configured.0.get(code)
                    && !sent[usize::from(*code)]
                {
                    sent[usize::from(*code)] = true;
                    add(o);
                }
            }
            for o in configured.0.values() {
                if o.always_send && !sent[usize::from(o.code)] {
                    add(o);
                }
            }
        }
        None => configured.0.values().for_each(add),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OptionList, OptionValue};

    fn request(extra: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0xabcdu32.to_be_bytes());
        b[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[53, 1, 1]);
        for (code, v) in extra {
            b.push(*code);
            b.push(v.len() as u8);
            b.extend_from_slice(v);
        }
        b.push(255);
        b
    }

    #[test]
    fn parses_and_concatenates_long_options() {
        let r = Request::parse(&request(&[(61, &[1, 2]), (61, &[3]), (82, &[1, 1, 7])])).unwrap();
        assert_eq!(r.msg_type, v4::MessageType::Discover);
        assert_eq!(r.options[&61], [1, 2, 3]);
        assert_eq!(r.client, ClientKey::Id(vec![1, 2, 3].into()));
        assert_eq!(r.hw.ethernet(), Some([2, 0, 0, 0, 0, 9]));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            Request::parse(&[0; 100]).unwrap_err(),
            ParseError::Short(100)
        );
        let mut b = request(&[]);
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[12, 40, b'x']);
        assert!(matches!(
            Request::parse(&b).unwrap_err(),
            ParseError::OptionOverrun { code: 12, .. }
        ));
        let b = request(&[(50, &[1, 2, 3])]);
        assert_eq!(
            Request::parse(&b).unwrap_err(),
            ParseError::BadOptionLength { code: 50, len: 3 }
        );
        let mut b = request(&[]);
        b[240..243].copy_from_slice(&[53, 1, 99]);
        assert!(matches!(
            Request::parse(&b).unwrap_err(),
            ParseError::BadMessageType(_)
        ));
    }

    #[test]
    fn overload_reads_file_and_sname() {
        let mut b = request(&[(52, &[3])]);
        b[field::FILE..field::FILE + 4].copy_from_slice(&[12, 2, b'h', b'i']);
        b[field::SNAME..field::SNAME + 3].copy_from_slice(&[15, 1, b'x']);
        let r = Request::parse(&b).unwrap();
        assert_eq!(r.hostname().as_deref(), Some("hi"));
        assert_eq!(r.options[&15], b"x");
    }

    #[test]
    fn replies_echo_and_order_options() {
        let r = Request::parse(&request(&[
            (61, &[1, 2, 3]),
            (82, &[2, 2, 9, 9]),
            (55, &[6, 3]),
        ]))
        .unwrap();
        let configured = OptionList(
            [
                (3, vec![10, 0, 0, 1]),
                (6, vec![10, 0, 0, 53]),
                (15, b"ex".to_vec()),
            ]
            .into_iter()
            .map(|(code, value)| {
                (
                    code,
                    OptionValue {
                        code,
                        value,
                        always_send: code == 15,
                    },
                )
            })
            .collect(),
        );
        let set = select_options(&configured, r.parameter_request_list());
        assert_eq!(
            set,
            [6, 4, 10, 0, 0, 53, 3, 4, 10, 0, 0, 1, 15, 2, b'e', b'x']
        );
        let bytes = encode_reply(
            &r,
            &ReplySpec {
                msg_type: v4::MessageType::Ack,
                yiaddr: Ipv4Addr::new(10, 0, 0, 9),
                server_id: Ipv4Addr::new(10, 0, 0, 1),
                lease: Some((600, 300, 525)),
                options: &set,
                message: None,
            },
        );
        assert!(bytes.len() >= 300 && bytes.len().is_multiple_of(4));
        let m = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(m.opcode(), v4::Opcode::BootReply);
        assert_eq!(m.xid(), 0xabcd);
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 0, 9));
        let mut raw = RawOptions::new();
        walk_options(&bytes[OPTIONS_OFFSET..], 0, &mut raw).unwrap();
        assert_eq!(raw[&82], [2, 2, 9, 9]);
        assert_eq!(raw[&61], [1, 2, 3]);
        assert_eq!(raw[&51], 600u32.to_be_bytes());
        // 82 is last before END.
        let end = bytes.iter().rposition(|b| *b == 255).unwrap();
        assert_eq!(&bytes[end - 6..end], &[82, 4, 2, 2, 9, 9]);
    }

    #[test]
    fn oversized_option_sets_are_trimmed_to_whole_options() {
        let r = Request::parse(&request(&[])).unwrap();
        let mut set = vec![];
        for _ in 0..5 {
            set.extend_from_slice(&[224, 100]);
            set.extend_from_slice(&[1; 100]);
        }
        let bytes = encode_reply(
            &r,
            &ReplySpec {
                msg_type: v4::MessageType::Ack,
                yiaddr: Ipv4Addr::new(10, 0, 0, 9),
                server_id: Ipv4Addr::new(10, 0, 0, 1),
                lease: Some((600, 300, 525)),
                options: &set,
                message: None,
            },
        );
        assert!(bytes.len() + 28 <= 576, "{}", bytes.len());
        raw_len_ok(&bytes);
    }

    fn raw_len_ok(bytes: &[u8]) {
        let mut raw = RawOptions::new();
        walk_options(&bytes[OPTIONS_OFFSET..], 0, &mut raw).unwrap();
        assert_eq!(raw[&224].len() % 100, 0);
    }

    #[test]
    fn destinations_follow_rfc2131() {
        let mut b = request(&[]);
        let r = Request::parse(&b).unwrap();
        let y = Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(
            Destination::for_reply(&r, y, false),
            Destination::Hardware {
                ip: y,
                mac: [2, 0, 0, 0, 0, 9]
            }
        );
        assert_eq!(Destination::for_reply(&r, y, true), Destination::Broadcast);
        b[10] = 0x80;
        assert_eq!(
            Destination::for_reply(&Request::parse(&b).unwrap(), y, false),
            Destination::Broadcast
        );
        b[12..16].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(
            Destination::for_reply(&Request::parse(&b).unwrap(), y, false),
            Destination::Unicast(y)
        );
        b[24..28].copy_from_slice(&[10, 9, 9, 1]);
        assert_eq!(
            Destination::for_reply(&Request::parse(&b).unwrap(), y, true),
            Destination::Relay(Ipv4Addr::new(10, 9, 9, 1))
        );
    }
}
