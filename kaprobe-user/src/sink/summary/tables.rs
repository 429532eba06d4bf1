//! Bounded tables and samples: a summary's memory does not grow with the traffic.
use super::{MAX_GROUPS, MAX_SAMPLES};
use crate::FastMap;

/// Samples for a median, bounded by reservoir sampling.
#[derive(Debug, Clone, Default)]
pub(super) struct Samples {
    seen: u64,
    pub(super) kept: Vec<u64>,
}

impl Samples {
    pub(super) fn add(&mut self, v: u64, rng: &mut u64) {
        self.seen += 1;
        if self.kept.len() < MAX_SAMPLES {
            self.kept.push(v);
            return;
        }
        // xorshift: deterministic, good enough to pick which sample to replace.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let i = (*rng % self.seen) as usize;
        if i < MAX_SAMPLES {
            self.kept[i] = v;
        }
    }

    /// How many values were added (kept or not).
    pub(super) fn seen(&self) -> u64 {
        self.seen
    }

    pub(super) fn median(&self) -> Option<u64> {
        if self.kept.is_empty() {
            return None;
        }
        let mut v = self.kept.clone();
        let mid = v.len() / 2;
        let (_, m, _) = v.select_nth_unstable(mid);
        Some(*m)
    }
}

/// A bounded map: past [`MAX_GROUPS`] keys, new keys go to `other`.
#[derive(Debug, Clone)]
pub(super) struct Table<K, V> {
    pub(super) groups: FastMap<K, V>,
    pub(super) other: V,
    pub(super) others: u64,
}

impl<K, V: Default> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            groups: FastMap::default(),
            other: V::default(),
            others: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq, V: Default> Table<K, V> {
    /// Whether `key` has a group of its own.
    pub(super) fn contains(&self, key: &K) -> bool {
        self.groups.contains_key(key)
    }

    pub(super) fn get(&mut self, key: K) -> &mut V {
        if self.groups.len() < MAX_GROUPS {
            return self.groups.entry(key).or_default();
        }
        match self.groups.get_mut(&key) {
            Some(v) => v,
            None => {
                self.others += 1;
                &mut self.other
            }
        }
    }
}
