//! Internet checksums (RFC 1071) of the reply.
//!
//! Both sums load 16-bit words in native order and store the result in native order, which is
//! what makes one's-complement sums byte-order independent.

use aya_ebpf::helpers::generated::bpf_csum_diff;

/// `bpf_csum_diff` takes at most 512 bytes per call on older kernels.
const CHUNK: usize = 512;
/// Chunks needed for the largest region we checksum (see `ack::MAX_IP_LEN`).
const MAX_CHUNKS: usize = 3;
pub const MAX_LEN: usize = CHUNK * MAX_CHUNKS;

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(header: &[u8; 20]) -> [u8; 2] {
    let mut sum = 0u64;
    for i in 0..10 {
        sum += u16::from_ne_bytes([header[2 * i], header[2 * i + 1]]) as u64;
    }
    (!fold(sum)).to_ne_bytes()
}

/// Checksum of `len` bytes at `region` (pseudo header followed by the UDP datagram, whose
/// checksum field is zero). `len` must be a multiple of 4 and at most `MAX_LEN`; `region` must
/// point at `MAX_LEN` readable bytes. Returns `None` if the kernel refuses.
#[inline(always)]
pub fn udp(region: *const u8, len: usize) -> Option<[u8; 2]> {
    let mut sum: u64 = 0;
    for chunk in 0..MAX_CHUNKS {
        let off = chunk * CHUNK;
        if off >= len {
            break;
        }
        let n = if len - off > CHUNK { CHUNK } else { len - off };
        let part = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                region.add(off) as *mut u32,
                n as u32,
                fold(sum) as u32,
            )
        };
        if part < 0 {
            return None;
        }
        sum = part as u64;
    }
    let folded = !fold(sum);
    // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
    Some(if folded == 0 { 0xffff } else { folded }.to_ne_bytes())
}
