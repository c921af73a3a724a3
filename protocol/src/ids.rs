//! Snowflake ids: `time | generator | sequence`, so every core of every node
//! mints ids with no central allocator and no collisions.
//!
//! Layout of the positive `i64`: 41 bits of milliseconds since 2024-01-01
//! (69 years), 13 bits of generator (node * 64 + core: 128 nodes of up to 64
//! cores), 9 bits of sequence (512 ids per millisecond per core).

use std::time::{SystemTime, UNIX_EPOCH};

const EPOCH_MS: u64 = 1_704_067_200_000;
const GENERATOR_BITS: u32 = 13;
const SEQUENCE_BITS: u32 = 9;
const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;
/// Cores per node the generator field leaves room for.
pub const MAX_CORES: u16 = 64;
/// Nodes the generator field leaves room for.
pub const MAX_NODES: u16 = 128;

/// Mints unique ids for one core of one node. Not shared between threads:
/// each core owns one.
#[derive(Debug)]
pub struct IdGenerator {
    generator: u64,
    last_ms: u64,
    sequence: u64,
}

impl IdGenerator {
    /// A generator for `core` on `node`; both are reduced into their fields.
    pub fn new(node: u16, core: u16) -> Self {
        let generator =
            u64::from(node % MAX_NODES) * u64::from(MAX_CORES) + u64::from(core % MAX_CORES);
        IdGenerator {
            generator,
            last_ms: 0,
            sequence: 0,
        }
    }

    /// The next id. Never repeats; if the clock steps back, keeps counting
    /// from the last millisecond it used instead.
    pub fn next_id(&mut self) -> i64 {
        let now = now_ms().saturating_sub(EPOCH_MS).max(self.last_ms);
        if now == self.last_ms {
            self.sequence += 1;
            if self.sequence > MAX_SEQUENCE {
                // Borrow the next millisecond rather than spin on the clock.
                self.last_ms += 1;
                self.sequence = 0;
            }
        } else {
            self.last_ms = now;
            self.sequence = 0;
        }
        ((self.last_ms << (GENERATOR_BITS + SEQUENCE_BITS))
            | (self.generator << SEQUENCE_BITS)
            | self.sequence) as i64
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_positive_and_increasing() {
        let mut generator = IdGenerator::new(3, 1);
        let mut seen = HashSet::new();
        let mut last = 0;
        for _ in 0..100_000 {
            let id = generator.next_id();
            assert!(id > last);
            assert!(seen.insert(id));
            last = id;
        }
    }

    #[test]
    fn generators_never_collide() {
        let mut a = IdGenerator::new(0, 0);
        let mut b = IdGenerator::new(0, 1);
        let ids_a: HashSet<i64> = (0..10_000).map(|_| a.next_id()).collect();
        assert!((0..10_000).all(|_| !ids_a.contains(&b.next_id())));
    }
}
