//! Set of free slots in a pool, with "next free at or after i" in O(log₆₄ n).
//!
//! A hierarchical bitmap: level 0 has one bit per slot (1 = free); each bit of level k+1 says
//! whether the corresponding word of level k has any bit set. 1 M addresses take 130 KiB and
//! four levels.

#[derive(Clone, Debug)]
pub struct FreeSet {
    len: usize,
    free: usize,
    levels: Vec<Vec<u64>>,
}

impl FreeSet {
    /// A set of `len` slots, all free.
    pub fn full(len: usize) -> Self {
        let mut levels = vec![];
        let mut bits = len;
        loop {
            let words = bits.div_ceil(64).max(1);
            let mut level = vec![u64::MAX; words];
            let tail = bits % 64;
            if tail != 0 {
                level[words - 1] = (1u64 << tail) - 1;
            }
            if bits == 0 {
                level[0] = 0;
            }
            levels.push(level);
            if words == 1 {
                break;
            }
            bits = words;
        }
        FreeSet {
            len,
            free: len,
            levels,
        }
    }

    /// A set of `len` slots, none free.
    pub fn empty(len: usize) -> Self {
        let mut s = FreeSet::full(len);
        for level in &mut s.levels {
            level.iter_mut().for_each(|w| *w = 0);
        }
        s.free = 0;
        s
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of free slots.
    pub fn free(&self) -> usize {
        self.free
    }

    pub fn is_free(&self, i: usize) -> bool {
        i < self.len && self.levels[0][i / 64] & (1 << (i % 64)) != 0
    }

    /// Marks `i` used; returns whether it was free.
    pub fn take(&mut self, i: usize) -> bool {
        if !self.is_free(i) {
            return false;
        }
        self.free -= 1;
        let mut i = i;
        for level in &mut self.levels {
            let word = &mut level[i / 64];
            *word &= !(1 << (i % 64));
            if *word != 0 {
                break;
            }
            i /= 64;
        }
        true
    }

    /// Marks `i` free; returns whether it was used.
    pub fn put(&mut self, i: usize) -> bool {
        if i >= self.len || self.is_free(i) {
            return false;
        }
        self.free += 1;
        let mut i = i;
        for level in &mut self.levels {
            let word = &mut level[i / 64];
            let was_empty = *word == 0;
            *word |= 1 << (i % 64);
            if !was_empty {
                break;
            }
            i /= 64;
        }
        true
    }

    /// First free slot at or after `from`, wrapping around to the start.
    pub fn next_free(&self, from: usize) -> Option<usize> {
        if self.free == 0 {
            return None;
        }
        let from = if from >= self.len { 0 } else { from };
        self.find(0, from).or_else(|| self.find(0, 0))
    }

    /// First set bit at or after `i` in `level`, as an index in that level. An empty word
    /// sends the search one level up, where each bit stands for a whole word.
    fn find(&self, level: usize, i: usize) -> Option<usize> {
        let words = &self.levels[level];
        let w = i / 64;
        if w >= words.len() {
            return None;
        }
        let masked = words[w] & (u64::MAX << (i % 64));
        if masked != 0 {
            return Some(w * 64 + masked.trailing_zeros() as usize);
        }
        if level + 1 == self.levels.len() {
            return None;
        }
        let next_word = self.find(level + 1, w + 1)?;
        Some(next_word * 64 + words[next_word].trailing_zeros() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_find_across_levels() {
        let mut s = FreeSet::full(1_000_000);
        assert_eq!(s.levels.len(), 4);
        assert_eq!(s.next_free(0), Some(0));
        for i in 0..999_990 {
            assert!(s.take(i));
        }
        assert_eq!(s.free(), 10);
        assert_eq!(s.next_free(0), Some(999_990));
        assert_eq!(s.next_free(999_995), Some(999_995));
        assert!(s.put(5));
        assert_eq!(s.next_free(999_999 + 1), Some(5), "wraps around");
        assert_eq!(s.next_free(6), Some(999_990));
        assert!(!s.take(4), "taking a used slot fails");
        assert!(!s.put(999_991), "freeing a free slot fails");
    }

    #[test]
    fn matches_a_naive_model() {
        // Deterministic pseudo-random operations against a Vec<bool>.
        let n = 5000;
        let mut s = FreeSet::full(n);
        let mut model = vec![true; n];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % n as u64) as usize;
            if x & (1 << 40) != 0 {
                assert_eq!(s.take(i), model[i]);
                model[i] = false;
            } else {
                assert_eq!(s.put(i), !model[i]);
                model[i] = true;
            }
            let from = ((x >> 20) % n as u64) as usize;
            let want = (from..n).chain(0..from).find(|j| model[*j]);
            assert_eq!(s.next_free(from), want);
        }
        assert_eq!(s.free(), model.iter().filter(|b| **b).count());
    }

    #[test]
    fn an_empty_set_fills() {
        let mut s = FreeSet::empty(100_000);
        assert_eq!(s.next_free(0), None);
        assert!(s.put(70_000));
        assert_eq!(s.next_free(0), Some(70_000));
        assert_eq!(s.free(), 1);
    }

    #[test]
    fn tiny_and_empty_sets() {
        let mut s = FreeSet::full(1);
        assert_eq!(s.next_free(0), Some(0));
        s.take(0);
        assert_eq!(s.next_free(0), None);
        let e = FreeSet::full(0);
        assert_eq!(e.next_free(0), None);
        assert!(!e.is_free(0));
    }
}
