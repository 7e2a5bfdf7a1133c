//! RFC 3074 load balancing: which of two failover servers answers a client.
//!
//! The client identifier (option 61 value) or, without one, the hardware address is hashed with
//! Pearson's hash into one of 256 buckets; each server answers the buckets assigned to it.

/// RFC 3074 §6 mixing table: 256 distinct values in pseudo-random order.
pub const MIX_TABLE: [u8; 256] = [
    251, 175, 119, 215, 81, 14, 79, 191, 103, 49, 181, 143, 186, 157, 0, 232, 31, 32, 55, 60, 152,
    58, 17, 237, 174, 70, 160, 144, 220, 90, 57, 223, 59, 3, 18, 140, 111, 166, 203, 196, 134, 243,
    124, 95, 222, 179, 197, 65, 180, 48, 36, 15, 107, 46, 233, 130, 165, 30, 123, 161, 209, 23, 97,
    16, 40, 91, 219, 61, 100, 10, 210, 109, 250, 127, 22, 138, 29, 108, 244, 67, 207, 9, 178, 204,
    74, 98, 126, 249, 167, 116, 34, 77, 193, 200, 121, 5, 20, 113, 71, 35, 128, 13, 182, 94, 25,
    226, 227, 199, 75, 27, 41, 245, 230, 224, 43, 225, 177, 26, 155, 150, 212, 142, 218, 115, 241,
    73, 88, 105, 39, 114, 62, 255, 192, 201, 145, 214, 168, 158, 221, 148, 154, 122, 12, 84, 82,
    163, 44, 139, 228, 236, 205, 242, 217, 11, 187, 146, 159, 64, 86, 239, 195, 42, 106, 198, 118,
    112, 184, 172, 87, 2, 173, 117, 176, 229, 247, 253, 137, 185, 99, 164, 102, 147, 45, 66, 231,
    52, 141, 211, 194, 206, 246, 238, 56, 110, 78, 248, 63, 240, 189, 93, 92, 51, 53, 183, 19, 171,
    72, 50, 33, 104, 101, 69, 8, 252, 83, 120, 76, 135, 85, 54, 202, 125, 188, 213, 96, 235, 136,
    208, 162, 129, 190, 132, 156, 38, 47, 1, 7, 254, 24, 4, 216, 131, 89, 21, 28, 133, 37, 153,
    149, 80, 170, 68, 6, 169, 234, 151,
];

/// One step of the hash; the key is consumed from its last byte to its first.
#[inline(always)]
pub const fn step(hash: u8, byte: u8) -> u8 {
    MIX_TABLE[(hash ^ byte) as usize]
}

/// Bucket (0..=255) of a key: the option 61 value, or chaddr[..hlen].
pub fn bucket(key: &[u8]) -> u8 {
    // RFC 3074 seeds the hash with the key length (taken modulo 256).
    let mut hash = key.len() as u8;
    for &byte in key.iter().rev() {
        hash = step(hash, byte);
    }
    hash
}

/// Is `bucket` set in a 256-bit bucket map (bit n of byte n/8, least significant first)?
#[inline(always)]
pub const fn is_set(map: &[u8; 32], bucket: u8) -> bool {
    map[(bucket >> 3) as usize] & (1 << (bucket & 7)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_permutation() {
        let mut seen = [false; 256];
        for v in MIX_TABLE {
            assert!(!seen[v as usize]);
            seen[v as usize] = true;
        }
    }

    #[test]
    fn rfc3074_reference_hashes() {
        // RFC 3074 §7 gives no vectors; these pin the algorithm (seed = length, reverse order).
        assert_eq!(bucket(&[]), 0);
        assert_eq!(bucket(&[0]), MIX_TABLE[1]);
        assert_eq!(bucket(&[1, 2]), MIX_TABLE[(MIX_TABLE[2 ^ 2] ^ 1) as usize]);
    }
}
