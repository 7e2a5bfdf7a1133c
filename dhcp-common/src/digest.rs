//! The client-identifier digest stored in LEASES.
//!
//! The fast path cannot keep variable-length client identifiers in a map value, so both sides
//! reduce option 61 to a 64-bit FNV-1a digest. `NO_CLIENT_ID` (0) means "no option 61"; a real
//! digest that happens to be 0 is mapped to 1 so the two can never be confused.

pub const NO_CLIENT_ID: u64 = 0;
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One FNV-1a step; the XDP program calls this in its bounded loop.
#[inline(always)]
pub const fn fnv1a_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(FNV_PRIME)
}

/// Turns a finished FNV-1a hash into a digest that is never `NO_CLIENT_ID`.
#[inline(always)]
pub const fn finish(hash: u64) -> u64 {
    if hash == NO_CLIENT_ID { 1 } else { hash }
}

/// Digest of an option 61 value (the bytes after code and length).
pub fn client_id_digest(client_id: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in client_id {
        hash = fnv1a_step(hash, byte);
    }
    finish(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // FNV-1a 64 reference values.
        assert_eq!(client_id_digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(client_id_digest(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(client_id_digest(&[1, 2, 3]), NO_CLIENT_ID);
    }
}
