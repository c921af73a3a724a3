//! A hash map kept in shards, so that rebuilding its table never moves
//! more than one shard's entries at once. A `HashMap` rebuilds in one go
//! when it doubles, and when deleted entries have used up its room (a
//! table at its cap with entries coming and going does that every few
//! tens of thousands of changes). The log's index of every conversation
//! stalled the writer, and every send waiting on it, for 350–410 ms at
//! 917,504 conversations; a core's 200,000 sequenced conversations held
//! the core for 80–127 ms (BENCHMARKS.md, "The writer's long stalls" and
//! "The same on the cores").
//! In 64 shards each rebuild moves a 64th. The shards are of unequal
//! sizes, spread over one doubling, so that they do not all grow at once
//! either. The shard picker also serves the store's set of accounts,
//! shared between threads with a lock per shard.

use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};

/// The shards' maps, and the message log's: foldhash, seeded per process
/// (keys such as client ids cannot be chosen to collide), several times
/// cheaper than SipHash on these small keys.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A [`Map`]'s set.
pub type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Shards of a [`Sharded`] map: a power of two (the top bits of a hash
/// pick one).
pub const SHARDS: usize = 64;

/// Slots of the table that picks a shard from a hash's top byte.
const PICKS: usize = 256;

/// Which shard each value of a hash's top byte picks: shard `i` gets a
/// share of the keys growing with `2^(i / SHARDS)`, so the shards' sizes
/// spread evenly over one doubling and each reaches its next doubling at
/// a different total.
fn pick_table() -> [u8; PICKS] {
    let weight = |shard: usize| (shard as f64 / SHARDS as f64).exp2();
    let total: f64 = (0..SHARDS).map(weight).sum();
    let mut table = [0u8; PICKS];
    let (mut shard, mut filled) = (0usize, 0.0f64);
    for (slot, pick) in table.iter_mut().enumerate() {
        // Move on once this shard has its share of the slots.
        while shard + 1 < SHARDS && (slot as f64) >= filled + weight(shard) / total * PICKS as f64 {
            filled += weight(shard) / total * PICKS as f64;
            shard += 1;
        }
        *pick = shard as u8;
    }
    table
}

/// Which of [`SHARDS`] shards a key belongs in, by a hash seeded apart
/// from the shards' own (with the same hash, a shard's keys would share
/// its top bits, which its table uses to tell keys apart), with the
/// staggered shares of [`pick_table`]. Also used by sets shared between
/// threads, a lock per shard (the store's accounts).
///
/// The picker's hash is foldhash's quality variant (one more multiply than
/// the maps' fast one): the pick reads only a hash's top byte, and with
/// the fast variant one run in many saw 5,000 consecutive ids reach 28 of
/// the 64 shards (`embedded::accounts`' test of the spread).
pub struct ShardPicker {
    picker: foldhash::quality::RandomState,
    picks: [u8; PICKS],
}

impl Default for ShardPicker {
    fn default() -> Self {
        ShardPicker {
            picker: foldhash::quality::RandomState::default(),
            picks: pick_table(),
        }
    }
}

impl ShardPicker {
    /// The shard of `key`, below [`SHARDS`].
    pub fn shard_of<K: Hash>(&self, key: &K) -> usize {
        self.picks[(self.picker.hash_one(key) >> (u64::BITS - 8)) as usize] as usize
    }
}

/// A map in [`SHARDS`] shards.
pub struct Sharded<K, V> {
    picker: ShardPicker,
    shards: Box<[Map<K, V>]>,
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Sharded {
            picker: ShardPicker::default(),
            shards: (0..SHARDS).map(|_| Map::default()).collect(),
        }
    }
}

impl<K, V> Sharded<K, V> {
    /// Every entry, shard by shard.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards.iter().flat_map(|shard| shard.iter())
    }
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    fn shard_of(&self, key: &K) -> usize {
        self.picker.shard_of(key)
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[self.shard_of(key)].get(key)
    }

    /// The value under `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let shard = self.shard_of(key);
        self.shards[shard].get_mut(key)
    }

    /// The entry of `key`, there or not.
    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        let shard = self.shard_of(&key);
        self.shards[shard].entry(key)
    }

    /// Puts `value` under `key`; the value it replaces, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard_of(&key);
        self.shards[shard].insert(key, value)
    }

    /// Takes the value under `key` out.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let shard = self.shard_of(key);
        self.shards[shard].remove(key)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// The entries of shard `shard` (below [`SHARDS`]; none past it), so
    /// that a walk over the whole map can stop between shards.
    pub fn iter_shard(&self, shard: usize) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards
            .get(shard)
            .into_iter()
            .flat_map(|shard| shard.iter())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.is_empty())
    }
}

/// Entries past which a [`Growing`] map moves into shards: before its one
/// table would double to 131,072 slots (at 57,344 entries), so that no
/// rebuild moves more than this many entries at once.
const SHARD_PAST: usize = 50_000;

/// A map that is one [`Map`] while small (most are: a conversation's
/// sends, per conversation) and moves into a [`Sharded`] map once it holds
/// [`SHARD_PAST`] entries: one conversation with millions of messages
/// rebuilt its table of sends on the writer for 53 / 104 / 209 ms at
/// 0.9 / 1.8 / 3.7 million (BENCHMARKS.md, "A big conversation's own
/// table").
pub enum Growing<K, V> {
    /// Small: one table.
    One(Map<K, V>),
    /// Large: in shards (boxed: most maps never get here).
    Sharded(Box<Sharded<K, V>>),
}

impl<K, V> Default for Growing<K, V> {
    fn default() -> Self {
        Growing::One(Map::default())
    }
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for Growing<K, V> {
    /// The same entries, however each is kept.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(key, value)| other.get(key) == Some(value))
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for Growing<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> Growing<K, V> {
    /// Every entry.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&K, &V)> + '_> {
        match self {
            Growing::One(map) => Box::new(map.iter()),
            Growing::Sharded(sharded) => Box::new(sharded.iter()),
        }
    }
}

impl<K: Hash + Eq, V> Growing<K, V> {
    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        match self {
            Growing::One(map) => map.get(key),
            Growing::Sharded(sharded) => sharded.get(key),
        }
    }

    /// Puts `value` under `key`; the value it replaces, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Growing::One(map) if map.len() >= SHARD_PAST && !map.contains_key(&key) => {
                let mut sharded = Sharded::default();
                for (key, value) in map.drain() {
                    sharded.insert(key, value);
                }
                sharded.insert(key, value);
                *self = Growing::Sharded(Box::new(sharded));
                None
            }
            Growing::One(map) => map.insert(key, value),
            Growing::Sharded(sharded) => sharded.insert(key, value),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        match self {
            Growing::One(map) => map.len(),
            Growing::Sharded(sharded) => sharded.len(),
        }
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_a_map_holds_and_spreads_it() {
        let mut sharded: Sharded<i64, i64> = Sharded::default();
        let mut plain: Map<i64, i64> = Map::default();
        for key in 0..100_000i64 {
            let key = key.wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as i64);
            *sharded.entry(key).or_default() += key % 7;
            *plain.entry(key).or_default() += key % 7;
        }
        for key in [3i64, 5, 3] {
            *sharded.entry(key).or_default() += 1;
            *plain.entry(key).or_default() += 1;
        }
        if let Some(value) = sharded.get_mut(&3) {
            *value += 10;
        }
        if let Some(value) = plain.get_mut(&3) {
            *value += 10;
        }
        assert_eq!(sharded.len(), plain.len());
        assert_eq!(sharded.get(&3), Some(&12));
        assert_eq!(sharded.get(&4), None);
        let mut all: Vec<(i64, i64)> = sharded.iter().map(|(k, v)| (*k, *v)).collect();
        let mut expected: Vec<(i64, i64)> = plain.into_iter().collect();
        all.sort_unstable();
        expected.sort_unstable();
        assert_eq!(all, expected);
        // Every shard is used, none holds much more than twice another.
        let sizes: Vec<usize> = sharded.shards.iter().map(|shard| shard.len()).collect();
        let (least, most) = (sizes.iter().min(), sizes.iter().max());
        assert!(least > Some(&0), "{sizes:?}");
        assert!(most < Some(&(3 * 100_000 / SHARDS)), "{sizes:?}");
    }

    #[test]
    fn a_growing_map_moves_into_shards_once_large_and_keeps_everything() {
        let mut growing: Growing<i64, i64> = Growing::default();
        for key in 0..SHARD_PAST as i64 {
            assert_eq!(growing.insert(key, key * 2), None);
        }
        assert!(matches!(growing, Growing::One(_)));
        // Replacing at the threshold does not move it.
        assert_eq!(growing.insert(7, 70), Some(14));
        assert!(matches!(growing, Growing::One(_)));
        assert_eq!(growing.insert(SHARD_PAST as i64, 1), None);
        assert!(matches!(growing, Growing::Sharded(_)));
        assert_eq!(growing.len(), SHARD_PAST + 1);
        assert_eq!(growing.get(&7), Some(&70));
        assert_eq!(
            growing.get(&(SHARD_PAST as i64 - 1)),
            Some(&((SHARD_PAST as i64 - 1) * 2))
        );
        assert_eq!(growing.get(&(SHARD_PAST as i64)), Some(&1));
        assert_eq!(growing.get(&-1), None);
        assert_eq!(growing.insert(7, 71), Some(70));
        assert_eq!(growing.iter().count(), SHARD_PAST + 1);
        assert!(!growing.is_empty());
    }

    #[test]
    fn the_shares_spread_over_one_doubling() {
        let table = pick_table();
        let share = |shard: u8| table.iter().filter(|&&pick| pick == shard).count();
        assert_eq!(table[0], 0);
        assert_eq!(table[PICKS - 1] as usize, SHARDS - 1);
        // From about 2.8 slots for the first to about 5.6 for the last.
        assert!((2..=4).contains(&share(0)), "{}", share(0));
        let last = (SHARDS - 1) as u8;
        assert!((5..=7).contains(&share(last)), "{}", share(last));
    }
}
