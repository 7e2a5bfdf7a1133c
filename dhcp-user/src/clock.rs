//! The one place where kernel time (CLOCK_BOOTTIME, used in the BPF maps) meets wall-clock time
//! (UTC seconds, used in the lease store and on the failover wire).
//!
//! CLOCK_BOOTTIME counts from boot and includes suspend; the offset to UTC is re-read at every
//! conversion, so a wall-clock step (NTP) is honoured from then on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Nanoseconds of CLOCK_BOOTTIME now, the clock of `bpf_ktime_get_boot_ns`.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME exists on every supported kernel.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) cannot fail on Linux");
    ts.tv_sec as u64 * NS_PER_SEC + ts.tv_nsec as u64
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Converts a UTC time (seconds) to CLOCK_BOOTTIME nanoseconds, rounding down so that the
/// kernel never believes a lease lasts longer than the store says. Times before boot map to 0.
pub fn unix_to_boot_ns(unix_s: u64) -> u64 {
    Snapshot::now().unix_to_boot_ns(unix_s)
}

/// Converts CLOCK_BOOTTIME nanoseconds to UTC seconds, rounding up so that a lease granted in
/// the kernel is never recorded as ending earlier than it does.
pub fn boot_ns_to_unix(boot_ns: u64) -> u64 {
    let (boot, unix_ns) = now_pair();
    let unix_at = unix_ns as i128 + (boot_ns as i128 - boot as i128);
    let secs = (unix_at + NS_PER_SEC as i128 - 1).div_euclid(NS_PER_SEC as i128);
    secs.clamp(0, u64::MAX as i128) as u64
}

/// Both clocks read once, for converting many times at start-up (a million leases).
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    boot_ns: u64,
    unix_ns: u128,
}

impl Snapshot {
    pub fn now() -> Snapshot {
        let (boot_ns, unix_ns) = now_pair();
        Snapshot { boot_ns, unix_ns }
    }

    /// As `unix_to_boot_ns`, at the moment of the snapshot.
    pub fn unix_to_boot_ns(&self, unix_s: u64) -> u64 {
        let target = unix_s as i128 * NS_PER_SEC as i128;
        let boot_at = self.boot_ns as i128 + (target - self.unix_ns as i128);
        boot_at.clamp(0, u64::MAX as i128) as u64
    }
}

/// Both clocks read back to back.
fn now_pair() -> (u64, u128) {
    let boot = boottime_ns();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    (boot, unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_conservatively() {
        let now = unix_now();
        let boot = unix_to_boot_ns(now + 3600);
        let back = boot_ns_to_unix(boot);
        // Kernel time never exceeds what the store says; the store never undershoots.
        assert!(
            back >= now + 3600 && back <= now + 3601,
            "{back} vs {}",
            now + 3600
        );
        assert!(boottime_ns() < unix_to_boot_ns(now + 10));
    }
}
