//! A core's open connections by id, in slots. An id names its core (the
//! top 16 bits, [`crate::core::core_of_conn`]), a slot and the slot's
//! generation, so finding a connection's outbox for a push or an answer is
//! an index and a comparison, where a hash map probed its control bytes
//! first (a cache miss per push and per answer among 10,000 connections).
//! A slot's generation moves on when its connection goes, so an old id
//! (a kick, a push in flight) never reaches the slot's next connection.
//! Ids for requests without a socket (gRPC calls) carry a bit no slot's id
//! has: pushes to them go nowhere.

/// Bits of an id below the core's: the slot, then its generation, then
/// the unregistered flag.
const SLOT_BITS: u32 = 24;
const GENERATION_BITS: u32 = 23;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
const UNREGISTERED: u64 = 1 << (SLOT_BITS + GENERATION_BITS);
/// Every bit of an id below the core's.
const LOCAL_MASK: u64 = (UNREGISTERED << 1) - 1;

struct Slot<T> {
    generation: u64,
    value: Option<T>,
}

/// Values by connection id, for one core.
pub(crate) struct ConnTable<T> {
    /// The core's part of every id it hands out.
    core_bits: u64,
    slots: Vec<Slot<T>>,
    /// Slots without a value, taken oldest first so that a slot's
    /// generations are spread over all of them.
    free: std::collections::VecDeque<u32>,
    len: usize,
    next_unregistered: u64,
}

impl<T> ConnTable<T> {
    /// An empty table whose ids name `core` (`core_bits`: the core
    /// already shifted into place).
    pub(crate) fn new(core_bits: u64) -> Self {
        ConnTable {
            core_bits,
            // Slot 0 is never used: on core 0 its first id would be 0,
            // which callers pass for "no connection" (a push skipping
            // nobody).
            slots: vec![Slot {
                generation: 0,
                value: None,
            }],
            free: std::collections::VecDeque::new(),
            len: 0,
            next_unregistered: 0,
        }
    }

    fn id_of(&self, slot: u32, generation: u64) -> u64 {
        self.core_bits | (generation << SLOT_BITS) | u64::from(slot)
    }

    /// Holds `value` under a new id; `None` when every slot an id can name
    /// is taken (16.7 million connections on one core).
    pub(crate) fn insert(&mut self, value: T) -> Option<u64> {
        let slot = match self.free.pop_front() {
            Some(slot) => slot,
            None if (self.slots.len() as u64) <= SLOT_MASK => {
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
            None => return None,
        };
        let entry = self.slots.get_mut(slot as usize)?;
        entry.value = Some(value);
        self.len += 1;
        let generation = entry.generation;
        Some(self.id_of(slot, generation))
    }

    fn slot_of(&self, id: u64) -> Option<(usize, u64)> {
        let local = id & LOCAL_MASK;
        if local & UNREGISTERED != 0 || id & !LOCAL_MASK != self.core_bits {
            return None;
        }
        Some((
            (local & SLOT_MASK) as usize,
            (local >> SLOT_BITS) & GENERATION_MASK,
        ))
    }

    /// The value under `id`, if it is still held.
    pub(crate) fn get(&self, id: u64) -> Option<&T> {
        let (slot, generation) = self.slot_of(id)?;
        let entry = self.slots.get(slot)?;
        (entry.generation == generation)
            .then_some(entry.value.as_ref())
            .flatten()
    }

    /// Takes the value under `id` out; its slot's next id differs.
    pub(crate) fn remove(&mut self, id: u64) -> Option<T> {
        let (slot, generation) = self.slot_of(id)?;
        let entry = self.slots.get_mut(slot)?;
        if entry.generation != generation {
            return None;
        }
        let value = entry.value.take()?;
        entry.generation = (entry.generation + 1) & GENERATION_MASK;
        self.len -= 1;
        self.free.push_back(slot as u32);
        Some(value)
    }

    /// Values held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every value held.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.slots.iter().filter_map(|slot| slot.value.as_ref())
    }

    /// An id no value will ever be held under (a request without a
    /// socket), unique on this core (for 2^47 of them).
    pub(crate) fn unregistered_id(&mut self) -> u64 {
        let n = self.next_unregistered & (UNREGISTERED - 1);
        self.next_unregistered += 1;
        self.core_bits | UNREGISTERED | n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{conn_id_on, core_of_conn};

    #[test]
    fn an_old_id_never_reaches_its_slots_next_value() {
        let mut table = ConnTable::new(conn_id_on(3, 0));
        let first = table.insert("a").expect("room");
        assert_eq!(core_of_conn(first), 3);
        assert_eq!(table.get(first), Some(&"a"));
        assert_eq!(table.remove(first), Some("a"));
        assert_eq!(table.remove(first), None, "gone once");
        let second = table.insert("b").expect("room");
        assert_ne!(first, second, "the slot's generation moved on");
        assert_eq!(table.get(first), None);
        assert_eq!(table.get(second), Some(&"b"));
        assert_eq!(table.remove(first), None, "an old id takes nothing");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn other_cores_and_unregistered_ids_find_nothing() {
        assert_eq!(
            conn_id_on(1, 0),
            LOCAL_MASK + 1,
            "the core's bits start above ours"
        );
        let mut table = ConnTable::new(conn_id_on(1, 0));
        let id = table.insert(7).expect("room");
        let elsewhere = conn_id_on(2, id & !conn_id_on(1, 0));
        assert_eq!(table.get(elsewhere), None);
        let unregistered = table.unregistered_id();
        assert_eq!(core_of_conn(unregistered), 1);
        assert_ne!(unregistered, table.unregistered_id(), "unique");
        assert_eq!(table.get(unregistered), None);
        assert_eq!(table.remove(unregistered), None);
        assert_eq!(table.get(u64::MAX), None);
        assert_eq!(table.get(0), None);
    }

    #[test]
    fn no_id_is_zero() {
        let mut table = ConnTable::new(conn_id_on(0, 0));
        for n in 0..1_000 {
            let id = table.insert(n).expect("room");
            assert_ne!(id, 0, "0 means no connection");
            if n % 2 == 0 {
                table.remove(id);
            }
        }
    }

    #[test]
    fn behaves_as_a_map_over_random_connects_and_closes() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use std::collections::HashMap;
        let mut rng = StdRng::seed_from_u64(5);
        let mut table = ConnTable::new(conn_id_on(0, 0));
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut gone = Vec::new();
        for step in 0..50_000u32 {
            if rng.gen_bool(0.55) || model.is_empty() {
                let id = table.insert(step).expect("room");
                assert!(model.insert(id, step).is_none(), "ids are never reused");
            } else {
                let id = *model
                    .keys()
                    .nth(rng.gen_range(0..model.len()))
                    .expect("some");
                assert_eq!(table.remove(id), model.remove(&id));
                gone.push(id);
            }
        }
        assert_eq!(table.len(), model.len());
        for (id, value) in &model {
            assert_eq!(table.get(*id), Some(value));
        }
        assert!(gone.iter().all(|id| table.get(*id).is_none()));
        let mut values: Vec<_> = table.values().copied().collect();
        let mut expected: Vec<_> = model.values().copied().collect();
        values.sort_unstable();
        expected.sort_unstable();
        assert_eq!(values, expected);
    }
}
