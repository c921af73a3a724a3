//! Presence changes on their way to friends, in the order they happened.
//! Each change used to be pushed by a task of its own after reading the
//! user's friends off the reactor, and two reads could finish in either
//! order: a friend could be told "away" after "offline" and keep the stale
//! state. Changes now wait here; one drain at a time takes everything
//! waiting, reads every friend list in one store job and pushes in the
//! order the changes happened, so what a friend hears last is what is
//! true.

use std::cell::{Cell, RefCell};

use ourchat_protocol::pb;

/// Most changes one store read serves: a reconnect storm queues thousands,
/// and one read for all of them would hold a reader thread that long.
pub const MAX_BATCH: usize = 256;

/// The presence changes waiting on one core.
#[derive(Default)]
pub struct PresenceQueue {
    waiting: RefCell<Vec<pb::PresenceInfo>>,
    draining: Cell<bool>,
}

impl PresenceQueue {
    /// Queues a change; `true` when no drain is running (the caller starts one).
    pub fn add(&self, info: pb::PresenceInfo) -> bool {
        self.waiting.borrow_mut().push(info);
        !self.draining.replace(true)
    }

    /// The oldest waiting changes, up to [`MAX_BATCH`]; empty when the
    /// drain is done (the next `add` starts a new one).
    pub fn take(&self) -> Vec<pb::PresenceInfo> {
        let mut waiting = self.waiting.borrow_mut();
        let count = waiting.len().min(MAX_BATCH);
        let batch: Vec<_> = waiting.drain(..count).collect();
        if batch.is_empty() {
            self.draining.set(false);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user_id: i64, state: pb::PresenceState) -> pb::PresenceInfo {
        pb::PresenceInfo {
            user_id,
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn one_drain_at_a_time_takes_every_change_in_order() {
        let queue = PresenceQueue::default();
        assert!(queue.add(info(1, pb::PresenceState::Away)), "start a drain");
        assert!(!queue.add(info(2, pb::PresenceState::Online)));
        assert!(!queue.add(info(1, pb::PresenceState::Offline)));
        assert_eq!(
            queue.take(),
            vec![
                info(1, pb::PresenceState::Away),
                info(2, pb::PresenceState::Online),
                info(1, pb::PresenceState::Offline),
            ]
        );
        // Changes while the drain pushes go in its next round, not a new drain.
        assert!(!queue.add(info(1, pb::PresenceState::Online)));
        assert_eq!(queue.take(), vec![info(1, pb::PresenceState::Online)]);
        assert!(queue.take().is_empty(), "the drain ends");
        assert!(queue.add(info(3, pb::PresenceState::Online)), "a new drain");
    }

    #[test]
    fn a_storm_is_served_in_bounded_batches_in_order() {
        let queue = PresenceQueue::default();
        for user_id in 0..(MAX_BATCH as i64 * 2 + 1) {
            queue.add(info(user_id, pb::PresenceState::Online));
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| Some(queue.take()))
            .take_while(|batch| !batch.is_empty())
            .map(|batch| batch.len())
            .collect();
        assert_eq!(sizes, vec![MAX_BATCH, MAX_BATCH, 1]);
        assert!(
            queue.add(info(0, pb::PresenceState::Away)),
            "drained: a new drain"
        );
    }
}
