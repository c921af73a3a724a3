//! A map whose values stay where they were put: in fixed chunks, found by
//! key through a [`Sharded`] index of small entries, or directly by the
//! [`Place`] a caller kept from an earlier lookup. The sequencer keeps its
//! conversations here so that a write's commit finds its conversation
//! without a second lookup by key (two hashes, the index's control bytes
//! and a ~200-byte entry, each a likely cache miss: 3.1% of the reactor's
//! user time at 10,000 msg/s, BENCHMARKS.md "Conversations kept in
//! place"). The index's entries are 32 bytes, so more of them stay cached
//! than a table of the values themselves would.

use std::hash::Hash;

use crate::sharded::Sharded;

/// Values per chunk: a chunk is allocated whole, so a table of a few
/// conversations (tests, small nodes) holds only one, and growth never
/// copies what is already there (a table of 200,000 doubling as one
/// vector would move 40 MB at once).
const CHUNK: usize = 256;

/// Where a value sits, valid until its key is removed; checked against
/// the key on use, since the place may have gone to another key since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place(u32);

/// A place's key and value, or nothing.
type Slot<K, V> = Option<(K, V)>;

/// A map from `K` to `V` whose values stay where they were put.
pub struct Slotted<K, V> {
    index: Sharded<K, Place>,
    chunks: Vec<Box<[Slot<K, V>]>>,
    /// Places whose values were removed, reused before new ones.
    free: Vec<Place>,
    /// Places handed out so far (used or freed).
    used: u32,
}

impl<K, V> Default for Slotted<K, V> {
    fn default() -> Self {
        Slotted {
            index: Sharded::default(),
            chunks: Vec::new(),
            free: Vec::new(),
            used: 0,
        }
    }
}

impl<K: Hash + Eq + Copy, V> Slotted<K, V> {
    fn slot(&self, place: Place) -> Option<&Slot<K, V>> {
        let place = place.0 as usize;
        self.chunks.get(place / CHUNK)?.get(place % CHUNK)
    }

    fn slot_mut(&mut self, place: Place) -> Option<&mut Slot<K, V>> {
        let place = place.0 as usize;
        self.chunks.get_mut(place / CHUNK)?.get_mut(place % CHUNK)
    }

    /// Where `key`'s value is.
    pub fn place_of(&self, key: &K) -> Option<Place> {
        self.index.get(key).copied()
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        let (_, value) = self.slot(self.place_of(key)?)?.as_ref()?;
        Some(value)
    }

    /// The value under `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        Some(self.get_placed_mut(key)?.1)
    }

    /// The value under `key`, to change, and where it is.
    pub fn get_placed_mut(&mut self, key: &K) -> Option<(Place, &mut V)> {
        let place = self.place_of(key)?;
        let (_, value) = self.slot_mut(place)?.as_mut()?;
        Some((place, value))
    }

    /// The value at `place` if it is still `key`'s, else `key`'s wherever
    /// it is now.
    pub fn get_at_mut(&mut self, place: Place, key: &K) -> Option<&mut V> {
        let there = matches!(self.slot(place), Some(Some((k, _))) if k == key);
        let place = if there { place } else { self.place_of(key)? };
        let (_, value) = self.slot_mut(place)?.as_mut()?;
        Some(value)
    }

    /// Puts `value` under `key` (replacing any value it had, in place).
    pub fn insert(&mut self, key: K, value: V) -> Place {
        if let Some(place) = self.place_of(&key) {
            if let Some(slot) = self.slot_mut(place) {
                *slot = Some((key, value));
                return place;
            }
        }
        let place = match self.free.pop() {
            Some(place) => place,
            None => {
                let place = Place(self.used);
                self.used += 1;
                if place.0 as usize / CHUNK == self.chunks.len() {
                    self.chunks.push((0..CHUNK).map(|_| None).collect());
                }
                place
            }
        };
        if let Some(slot) = self.slot_mut(place) {
            *slot = Some((key, value));
        }
        self.index.insert(key, place);
        place
    }

    /// Takes the value under `key` out; its place may go to another key.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let place = self.index.remove(key)?;
        let (_, value) = self.slot_mut(place)?.take()?;
        self.free.push(place);
        Some(value)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    #[test]
    fn a_place_is_reused_and_checked_against_its_key() {
        let mut table: Slotted<u32, &str> = Slotted::default();
        let a = table.insert(1, "one");
        assert_eq!(table.get(&1), Some(&"one"));
        assert_eq!(table.remove(&1), Some("one"));
        let b = table.insert(2, "two");
        assert_eq!(a, b, "a freed place is used again");
        // The old place now holds key 2: key 1 is not found through it.
        assert_eq!(table.get_at_mut(a, &1), None);
        assert_eq!(table.get_at_mut(a, &2), Some(&mut "two"));
        // Key 2 moved: its old place is not trusted.
        table.remove(&2);
        table.insert(3, "three");
        let c = table.insert(2, "two again");
        assert_ne!(a, c);
        assert_eq!(table.get_at_mut(a, &2), Some(&mut "two again"));
        assert_eq!(
            table.insert(2, "replaced"),
            c,
            "a replaced value keeps its place"
        );
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.get_at_mut(Place(1_000_000), &2),
            Some(&mut "replaced")
        );
    }

    #[test]
    fn behaves_as_a_hash_map_over_random_changes() {
        let mut rng = StdRng::seed_from_u64(17);
        let mut table: Slotted<u16, u64> = Slotted::default();
        let mut model: HashMap<u16, u64> = HashMap::new();
        for step in 0..200_000u64 {
            let key = rng.gen_range(0..2_000u16);
            match rng.gen_range(0..3) {
                0 => {
                    table.insert(key, step);
                    model.insert(key, step);
                }
                1 => assert_eq!(table.remove(&key), model.remove(&key)),
                _ => assert_eq!(table.get(&key), model.get(&key)),
            }
            assert_eq!(table.contains_key(&key), model.contains_key(&key));
        }
        assert_eq!(table.len(), model.len());
        assert!(
            table.chunks.len() * CHUNK <= 2_000 + CHUNK,
            "places are reused"
        );
    }
}
