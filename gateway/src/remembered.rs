//! A core's memory of facts a store read established and that cannot
//! become false (a user id exists; a user may see a group conversation,
//! which a past member keeps), so that the next request needing one is
//! answered without a reader thread. Bounded: when full it forgets
//! everything and the reads start again.

use foldhash::HashSet;
use std::cell::RefCell;
use std::hash::Hash;

pub struct Remembered<T> {
    facts: RefCell<HashSet<T>>,
    cap: usize,
}

impl<T: Eq + Hash> Remembered<T> {
    pub fn new(cap: usize) -> Self {
        Remembered {
            facts: RefCell::default(),
            cap,
        }
    }

    pub fn contains(&self, fact: &T) -> bool {
        self.facts.borrow().contains(fact)
    }

    pub fn insert(&self, fact: T) {
        let mut facts = self.facts.borrow_mut();
        if facts.len() >= self.cap {
            facts.clear();
        }
        facts.insert(fact);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_everything_when_full() {
        let remembered = Remembered::new(2);
        remembered.insert(1);
        remembered.insert(2);
        assert!(remembered.contains(&1) && remembered.contains(&2));
        remembered.insert(3);
        assert!(!remembered.contains(&1) && !remembered.contains(&2));
        assert!(remembered.contains(&3));
    }
}
