//! Address pools: which addresses the server may hand out dynamically, and which are free.

use std::net::Ipv4Addr;

use super::freeset::FreeSet;
use crate::config::Config;

struct Range {
    start: u32,
    end: u32,
    subnet: u16,
    /// Addresses this server may hand out now.
    free: FreeSet,
    /// Failover: addresses in the BACKUP state (the secondary's to hand out).
    backup: FreeSet,
}

/// Every dynamic pool of every subnet, sorted by address, each with its free set.
pub struct Pools {
    ranges: Vec<Range>,
    /// Per subnet: indices into `ranges`.
    by_subnet: Vec<Vec<usize>>,
    /// Per range: where the next search starts (round robin keeps recently used addresses
    /// unused for a while, which helps clients that come back).
    cursor: Vec<usize>,
}

impl Pools {
    /// All pool addresses start free; the caller then takes those that are not.
    pub fn new(config: &Config) -> Pools {
        let mut ranges: Vec<Range> = config
            .subnets
            .iter()
            .flat_map(|s| {
                s.pools.iter().map(|p| Range {
                    start: p.start.into(),
                    end: p.end.into(),
                    subnet: s.id,
                    free: FreeSet::full((u32::from(p.end) - u32::from(p.start)) as usize + 1),
                    backup: FreeSet::empty((u32::from(p.end) - u32::from(p.start)) as usize + 1),
                })
            })
            .collect();
        ranges.sort_by_key(|r| r.start);
        let mut by_subnet = vec![vec![]; config.subnets.len()];
        for (i, r) in ranges.iter().enumerate() {
            by_subnet[usize::from(r.subnet)].push(i);
        }
        let cursor = vec![0; ranges.len()];
        Pools {
            ranges,
            by_subnet,
            cursor,
        }
    }

    fn find(&self, a: Ipv4Addr) -> Option<usize> {
        let a = u32::from(a);
        let i = self.ranges.partition_point(|r| r.end < a);
        (i < self.ranges.len() && self.ranges[i].start <= a).then_some(i)
    }

    /// The subnet whose pool holds `a`.
    pub fn subnet_of(&self, a: Ipv4Addr) -> Option<u16> {
        self.find(a).map(|i| self.ranges[i].subnet)
    }

    /// Marks `a` free or taken (no-op outside pools).
    pub fn set_free(&mut self, a: Ipv4Addr, free: bool) {
        if let Some(i) = self.find(a) {
            let off = (u32::from(a) - self.ranges[i].start) as usize;
            let r = &mut self.ranges[i];
            if free {
                r.free.put(off);
            } else {
                r.free.take(off);
            }
        }
    }

    /// Failover: marks `a` as being in the BACKUP state or not.
    pub fn set_backup(&mut self, a: Ipv4Addr, backup: bool) {
        if let Some(i) = self.find(a) {
            let off = (u32::from(a) - self.ranges[i].start) as usize;
            let r = &mut self.ranges[i];
            if backup {
                r.backup.put(off);
            } else {
                r.backup.take(off);
            }
        }
    }

    /// Is `a` free for us to hand out?
    #[cfg(test)]
    pub fn is_free(&self, a: Ipv4Addr) -> bool {
        self.find(a).is_some_and(|i| {
            let r = &self.ranges[i];
            r.free.is_free((u32::from(a) - r.start) as usize)
        })
    }

    /// Every pool address, in order.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|r| (r.start..=r.end).map(Ipv4Addr::from))
    }

    /// Per pool (range): (free for us, in BACKUP, size), for failover balancing.
    pub fn balance(&self) -> Vec<(usize, usize, usize)> {
        self.ranges
            .iter()
            .map(|r| (r.free.free(), r.backup.free(), r.free.len()))
            .collect()
    }

    /// Up to `n` addresses of pool (range) `i` that are free for us, from its cursor on.
    pub fn take_free(&mut self, i: usize, n: usize) -> Vec<Ipv4Addr> {
        let mut out = vec![];
        let r = &mut self.ranges[i];
        let mut from = self.cursor[i];
        while out.len() < n {
            let Some(off) = r.free.next_free(from) else {
                break;
            };
            r.free.take(off);
            out.push(Ipv4Addr::from(r.start + off as u32));
            from = off + 1;
        }
        out
    }

    /// A free address in `subnet`'s pools, round robin.
    pub fn next_free(&mut self, subnet: u16) -> Option<Ipv4Addr> {
        for &i in self.by_subnet.get(usize::from(subnet))? {
            if let Some(off) = self.ranges[i].free.next_free(self.cursor[i]) {
                self.cursor[i] = off + 1;
                return Some(Ipv4Addr::from(self.ranges[i].start + off as u32));
            }
        }
        None
    }

    /// (free, total) addresses of `subnet`.
    pub fn usage(&self, subnet: u16) -> (usize, usize) {
        self.by_subnet
            .get(usize::from(subnet))
            .map_or((0, 0), |ranges| {
                ranges.iter().fold((0, 0), |(f, t), &i| {
                    (
                        f + self.ranges[i].free.free(),
                        t + self.ranges[i].free.len(),
                    )
                })
            })
    }
}
