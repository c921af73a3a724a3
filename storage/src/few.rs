//! A map that is nearly always tiny: a 1:1 conversation's read marks (its
//! two users) and delivery cursors (their few devices). Up to `INLINE`
//! entries live in the value itself and are found by a scan, so the
//! writer's lookup per message touches the conversation's own slot and no
//! table elsewhere on the heap (a hash map there was a cache miss and, for
//! each new conversation, two allocations). Past `SPILL_AT` entries (a
//! group's members) they move to a hash map.

use std::hash::Hash;

use smallvec::SmallVec;

use crate::sharded::Map;

/// Entries held in place.
const INLINE: usize = 2;

/// Entries past which a scan costs more than a hash.
const SPILL_AT: usize = 8;

/// A map of few entries (see the module's note).
#[derive(Debug)]
pub enum Few<K, V> {
    /// Scanned: in place up to [`INLINE`], then on the heap.
    Listed(SmallVec<[(K, V); INLINE]>),
    /// Hashed.
    Hashed(Box<Map<K, V>>),
}

impl<K, V> Default for Few<K, V> {
    fn default() -> Self {
        Few::Listed(SmallVec::new())
    }
}

impl<K: Copy + Eq + Hash, V> Few<K, V> {
    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        match self {
            Few::Listed(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Few::Hashed(map) => map.get(key),
        }
    }

    /// The value under `key`, `default` put there first if it has none.
    pub fn get_or_insert(&mut self, key: K, default: V) -> &mut V {
        if let Few::Listed(entries) = self {
            if entries.len() >= SPILL_AT && !entries.iter().any(|(k, _)| *k == key) {
                let map: Map<K, V> = entries.drain(..).collect();
                *self = Few::Hashed(Box::new(map));
            }
        }
        match self {
            Few::Listed(entries) => {
                let at = match entries.iter().position(|(k, _)| *k == key) {
                    Some(at) => at,
                    None => {
                        entries.push((key, default));
                        entries.len() - 1
                    }
                };
                &mut entries[at].1
            }
            Few::Hashed(map) => map.entry(key).or_insert(default),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        match self {
            Few::Listed(entries) => entries.len(),
            Few::Hashed(map) => map.len(),
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let (listed, hashed) = match self {
            Few::Listed(entries) => (Some(entries.iter().map(|(k, v)| (k, v))), None),
            Few::Hashed(map) => (None, Some(map.iter())),
        };
        listed
            .into_iter()
            .flatten()
            .chain(hashed.into_iter().flatten())
    }
}

/// Equal when they hold the same entries, however they hold them.
impl<K: Copy + Eq + Hash, V: PartialEq> PartialEq for Few<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_and_raised_before_and_after_the_spill() {
        let mut few: Few<i64, i64> = Few::default();
        for key in 0..20 {
            *few.get_or_insert(key, 0) += key;
            *few.get_or_insert(key, 0) += 1;
            assert_eq!(few.len(), key as usize + 1);
            let hashed = matches!(few, Few::Hashed(_));
            assert_eq!(hashed, key as usize >= SPILL_AT, "at {key} entries");
            for earlier in 0..=key {
                assert_eq!(few.get(&earlier), Some(&(earlier + 1)));
            }
        }
        assert_eq!(few.get(&20), None);
        let mut seen: Vec<_> = few.iter().map(|(k, v)| (*k, *v)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..20).map(|k| (k, k + 1)).collect::<Vec<_>>());
    }

    #[test]
    fn equality_ignores_order_and_form() {
        let mut a: Few<i64, i64> = Few::default();
        let mut b: Few<i64, i64> = Few::default();
        for key in [1, 2, 3] {
            a.get_or_insert(key, key);
        }
        for key in [3, 1, 2] {
            b.get_or_insert(key, key);
        }
        assert_eq!(a, b);
        let hashed = Few::Hashed(Box::new([(1, 1), (2, 2), (3, 3)].into_iter().collect()));
        assert_eq!(a, hashed);
        b.get_or_insert(4, 4);
        assert_ne!(a, b);
        *a.get_or_insert(3, 0) = 9;
        assert_ne!(a, hashed);
    }
}
