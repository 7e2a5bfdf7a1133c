//! DHCPv4 wire constants (RFC 2131, RFC 2132) used by both sides.

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
pub const HTYPE_ETHERNET: u8 = 1;
pub const ETHERNET_HLEN: u8 = 6;
/// chaddr is 16 bytes; a larger hlen cannot be a BOOTP message.
pub const MAX_HLEN: u8 = 16;

/// Fixed BOOTP header, up to and excluding the magic cookie.
pub const BOOTP_FIXED_LEN: usize = 236;
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Offset of the options field from the start of the BOOTP message.
pub const OPTIONS_OFFSET: usize = BOOTP_FIXED_LEN + MAGIC_COOKIE.len();
/// RFC 1542 §2.1: BOOTP messages are at least 300 bytes; servers pad replies to it.
pub const BOOTP_MIN_LEN: usize = 300;
/// RFC 2131 §2: every client accepts an IP datagram of 576 bytes; larger only with option 57.
pub const DEFAULT_MAX_DATAGRAM: u16 = 576;
/// BOOTP flags: the client cannot receive unicast before it is configured.
pub const FLAG_BROADCAST: u16 = 0x8000;

/// Offsets of BOOTP header fields from the start of the message.
pub mod field {
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: usize = 4;
    pub const SECS: usize = 8;
    pub const FLAGS: usize = 10;
    pub const CIADDR: usize = 12;
    pub const YIADDR: usize = 16;
    pub const SIADDR: usize = 20;
    pub const GIADDR: usize = 24;
    pub const CHADDR: usize = 28;
    pub const SNAME: usize = 44;
    pub const FILE: usize = 108;
}

/// DHCP message types (option 53).
pub mod msg {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const DECLINE: u8 = 4;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const RELEASE: u8 = 7;
    pub const INFORM: u8 = 8;
    /// Highest message type defined (RFC 6926 LEASEQUERY family, RFC 7724 …).
    pub const MAX_KNOWN: u8 = 18;
}

/// Option codes the fast path looks at or writes.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTERS: u8 = 3;
    pub const REQUESTED_ADDRESS: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const END: u8 = 255;
}
