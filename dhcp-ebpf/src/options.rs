//! The BOOTP header and a bounded walk over the DHCP options.
//!
//! The fixed header is copied to `Scratch::reply` (where the ACK will be built from it) and the
//! cookie and options to `Scratch::opts`; both copies use `bpf_xdp_load_bytes`, so every later
//! read is a masked index into a map value, which the verifier accepts without fuss.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use dhcp_common::{
    Counter,
    wire::{self, BOOTP_FIXED_LEN, MAGIC_COOKIE, field, msg, opt},
};

use crate::{
    frame::Frame,
    maps::{OPTS_BUF, OPTS_MASK, Scratch, layout},
};

/// Upper bound on options (PAD included) walked before END; real clients send a dozen or two.
const MAX_OPTION_STEPS: usize = 255;

// Slots in which the walk records the options the fast path cares about.
const SLOT_OTHER: usize = 0;
const SLOT_MESSAGE_TYPE: usize = 1;
const SLOT_SERVER_ID: usize = 2;
const SLOT_REQUESTED: usize = 3;
const SLOT_CLIENT_ID: usize = 4;
const SLOT_RELAY: usize = 5;
const SLOT_MAX_SIZE: usize = 6;
const SLOT_OVERLOAD: usize = 7;
const SLOTS: usize = 8;

/// Option code → slot. A table instead of a `match` keeps the walk free of branches, so the
/// verifier explores one path per option instead of one per option code.
static OPTION_SLOT: [u8; 256] = {
    let mut table = [SLOT_OTHER as u8; 256];
    table[opt::MESSAGE_TYPE as usize] = SLOT_MESSAGE_TYPE as u8;
    table[opt::SERVER_ID as usize] = SLOT_SERVER_ID as u8;
    table[opt::REQUESTED_ADDRESS as usize] = SLOT_REQUESTED as u8;
    table[opt::CLIENT_ID as usize] = SLOT_CLIENT_ID as u8;
    table[opt::RELAY_AGENT_INFO as usize] = SLOT_RELAY as u8;
    table[opt::MAX_MESSAGE_SIZE as usize] = SLOT_MAX_SIZE as u8;
    table[opt::OVERLOAD as usize] = SLOT_OVERLOAD as u8;
    table
};

/// An option found in `Scratch::opts`: offset of its code byte and its value length.
#[derive(Clone, Copy, Default)]
pub struct OptionRef {
    pub at: usize,
    pub len: usize,
}

impl OptionRef {
    pub const ABSENT: Self = Self { at: 0, len: 0 };

    /// Offset 0 holds the magic cookie, so no option can start there.
    pub fn present(&self) -> bool {
        self.at != 0
    }

    /// Length of the whole option (code, length and value).
    pub fn wire_len(&self) -> usize {
        if self.present() { self.len + 2 } else { 0 }
    }

    /// The value length, re-read from scratch for use as a loop bound. Every exit of a loop
    /// `for i in 0..N { if i >= len { break } }` teaches the verifier that `len == i`; done on
    /// `self.len`, which later sizes a copy, that would split all later verification into N
    /// states. A fresh (volatile) read carries no such link.
    #[inline(always)]
    pub fn loop_bound(&self, opts: &[u8; OPTS_BUF]) -> usize {
        unsafe { core::ptr::read_volatile(&opts[(self.at + 1) & OPTS_MASK]) as usize }
    }
}

/// The parts of a DHCP request the fast path decides on.
#[derive(Clone, Copy)]
pub struct Request {
    pub msg_type: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: u32,
    pub giaddr: u32,
    pub chaddr: [u8; 6],
    /// Option 54, 0 if absent.
    pub server_id: u32,
    pub has_server_id: bool,
    /// Option 50, 0 if absent.
    pub requested: u32,
    pub has_requested: bool,
    pub client_id: OptionRef,
    pub relay_info: OptionRef,
    /// Option 57, 0 if absent.
    pub max_message_size: u16,
}

#[inline(always)]
fn be16_at(buf: &[u8; OPTS_BUF], at: usize) -> u16 {
    u16::from_be_bytes([buf[at & OPTS_MASK], buf[(at + 1) & OPTS_MASK]])
}

#[inline(always)]
fn be32_at(buf: &[u8; OPTS_BUF], at: usize) -> u32 {
    u32::from_be_bytes([
        buf[at & OPTS_MASK],
        buf[(at + 1) & OPTS_MASK],
        buf[(at + 2) & OPTS_MASK],
        buf[(at + 3) & OPTS_MASK],
    ])
}

#[inline(always)]
fn header_u32(reply: &[u8], at: usize) -> u32 {
    let b = layout::BOOTP + at;
    u32::from_be_bytes([reply[b], reply[b + 1], reply[b + 2], reply[b + 3]])
}

/// Reads the BOOTP message into scratch and walks its options.
#[inline(always)]
pub fn parse(ctx: &XdpContext, frame: &Frame, s: &mut Scratch) -> Result<Request, Counter> {
    if frame.bootp_len < BOOTP_FIXED_LEN {
        return Err(Counter::DropShortBootp);
    }
    let header = s.reply[layout::BOOTP..].as_mut_ptr();
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            frame.bootp_off as u32,
            header.cast(),
            BOOTP_FIXED_LEN as u32,
        )
    };
    if loaded != 0 {
        return Err(Counter::DropShortBootp);
    }
    let header = &s.reply;
    match header[layout::BOOTP + field::OP] {
        wire::BOOTREQUEST => {}
        wire::BOOTREPLY => return Err(Counter::PuntBootReply),
        _ => return Err(Counter::DropBadOp),
    }
    let hlen = header[layout::BOOTP + field::HLEN];
    if hlen > wire::MAX_HLEN {
        return Err(Counter::DropBadHlen);
    }

    // Cookie and options. A BOOTP request without room for a cookie is the daemon's business.
    let opts_len = frame.bootp_len - BOOTP_FIXED_LEN;
    if opts_len < MAGIC_COOKIE.len() {
        return Err(Counter::PuntBootp);
    }
    if opts_len > OPTS_BUF {
        return Err(Counter::PuntTooBig);
    }
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (frame.bootp_off + BOOTP_FIXED_LEN) as u32,
            s.opts.as_mut_ptr().cast(),
            opts_len as u32,
        )
    };
    if loaded != 0 {
        return Err(Counter::DropShortBootp);
    }
    if [s.opts[0], s.opts[1], s.opts[2], s.opts[3]] != MAGIC_COOKIE {
        return Err(Counter::PuntBootp);
    }

    walk(&s.opts, opts_len, &mut s.found)?;
    let req = interpret(&s.opts, &s.found)?;

    let header = &s.reply;
    if header[layout::BOOTP + field::HTYPE] != wire::HTYPE_ETHERNET || hlen != wire::ETHERNET_HLEN {
        return Err(Counter::PuntHardwareType);
    }
    let c = layout::BOOTP + field::CHADDR;
    Ok(Request {
        xid: header_u32(header, field::XID),
        secs: u16::from_be_bytes([
            header[layout::BOOTP + field::SECS],
            header[layout::BOOTP + field::SECS + 1],
        ]),
        flags: u16::from_be_bytes([
            header[layout::BOOTP + field::FLAGS],
            header[layout::BOOTP + field::FLAGS + 1],
        ]),
        ciaddr: header_u32(header, field::CIADDR),
        giaddr: header_u32(header, field::GIADDR),
        chaddr: [
            header[c],
            header[c + 1],
            header[c + 2],
            header[c + 3],
            header[c + 4],
            header[c + 5],
        ],
        ..req
    })
}

/// Bounded option walk, recording interesting options in `found` (count << 32 | offset). An
/// option running past the end is garbage; a missing END is tolerated (as Kea and ISC dhcpd do).
#[inline(always)]
fn walk(opts: &[u8; OPTS_BUF], len: usize, found: &mut [u64; SLOTS]) -> Result<(), Counter> {
    for slot in found.iter_mut() {
        // Volatile: a plain zeroing loop becomes a memset call.
        unsafe { core::ptr::write_volatile(slot, 0) };
    }
    let mut i = MAGIC_COOKIE.len();
    for _ in 0..MAX_OPTION_STEPS {
        if i >= len {
            return Ok(());
        }
        let code = opts[i & OPTS_MASK];
        if code == opt::END {
            return Ok(());
        }
        // PAD is one byte, every other option is code, length, value. Computed without a
        // branch: two paths per step would double the verifier's states with every option.
        let is_pad = (code as usize).wrapping_sub(1) >> (usize::BITS - 1);
        let value_len = opts[(i + 1) & OPTS_MASK] as usize;
        let option_len = is_pad + (1 - is_pad) * (2 + value_len);
        if i + option_len > len {
            return Err(Counter::DropOptionOverrun);
        }
        // PAD lands in SLOT_OTHER, which nobody reads.
        let slot = OPTION_SLOT[code as usize] as usize & (SLOTS - 1);
        found[slot] = (((found[slot] >> 32) + 1) << 32) | i as u64;
        i += option_len;
    }
    Err(Counter::PuntTooManyOptions)
}

/// Validates the recorded options and reads their values.
#[inline(always)]
fn interpret(opts: &[u8; OPTS_BUF], found: &[u64; SLOTS]) -> Result<Request, Counter> {
    let seen = |slot: usize| found[slot] >> 32;
    let option = |slot: usize| {
        if seen(slot) == 0 {
            OptionRef::ABSENT
        } else {
            let at = (found[slot] as usize) & OPTS_MASK;
            OptionRef {
                at,
                len: opts[(at + 1) & OPTS_MASK] as usize,
            }
        }
    };
    // Options may continue in sname/file: only the daemon reads those.
    if seen(SLOT_OVERLOAD) != 0 {
        return Err(Counter::PuntOverload);
    }
    let msg_type = option(SLOT_MESSAGE_TYPE);
    if !msg_type.present() {
        return Err(Counter::PuntBootp);
    }
    let msg_type_value = opts[(msg_type.at + 2) & OPTS_MASK];
    if seen(SLOT_MESSAGE_TYPE) != 1
        || msg_type.len != 1
        || msg_type_value == 0
        || msg_type_value > msg::MAX_KNOWN
    {
        return Err(Counter::DropBadOption);
    }
    // Concatenated (RFC 3396) copies of options we echo or compare: the daemon reassembles.
    if seen(SLOT_CLIENT_ID) > 1 || seen(SLOT_RELAY) > 1 {
        return Err(Counter::PuntSplitOption);
    }
    let server_id = option(SLOT_SERVER_ID);
    let requested = option(SLOT_REQUESTED);
    let max_size = option(SLOT_MAX_SIZE);
    if seen(SLOT_SERVER_ID) > 1
        || seen(SLOT_REQUESTED) > 1
        || seen(SLOT_MAX_SIZE) > 1
        || (server_id.present() && server_id.len != 4)
        || (requested.present() && requested.len != 4)
        || (max_size.present() && max_size.len != 2)
    {
        return Err(Counter::DropBadOption);
    }

    Ok(Request {
        msg_type: msg_type_value,
        xid: 0,
        secs: 0,
        flags: 0,
        ciaddr: 0,
        giaddr: 0,
        chaddr: [0; 6],
        server_id: if server_id.present() {
            be32_at(opts, server_id.at + 2)
        } else {
            0
        },
        has_server_id: server_id.present(),
        requested: if requested.present() {
            be32_at(opts, requested.at + 2)
        } else {
            0
        },
        has_requested: requested.present(),
        client_id: option(SLOT_CLIENT_ID),
        relay_info: option(SLOT_RELAY),
        max_message_size: if max_size.present() {
            be16_at(opts, max_size.at + 2)
        } else {
            0
        },
    })
}
