//! Write completions handed back in batches. A caller that submits many
//! ops and needs each one back (a core's sequenced messages, to push once
//! durable) gives the writer its [`Completions`]; the writer appends every
//! op of a batch there with its outcome, in submission order, and wakes the
//! caller once for the batch. A oneshot channel per op cost an allocation
//! and a wake from the writer's thread per message, and a task poll each.
//!
//! An op the writer drops without an outcome (its thread gone) comes back
//! as [`PoolError::Closed`], as a dropped oneshot sender would say, so the
//! caller's count of outstanding ops never loses one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use futures::task::AtomicWaker;
use ourchat_storage::WriteOp;

use crate::writer::Returned;
use crate::PoolError;

/// One caller's completed ops, in the order it submitted them.
#[derive(Default)]
pub struct Completions {
    ready: Mutex<Vec<Returned>>,
    waker: AtomicWaker,
}

impl Completions {
    /// Ops' room a queue keeps once emptied (an op and its outcome take
    /// 176 bytes: a burst's 4,096-op batch must not hold 700 KB for good).
    pub const RETAINED: usize = 64;

    /// An empty queue, to share with the writer.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Waits until at least one op has completed, then moves every
    /// completed op, in order, to the back of `into`.
    pub async fn take(&self, into: &mut VecDeque<Returned>) {
        futures::future::poll_fn(|cx| {
            if self.move_ready(into) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A batch appended between the first look and the registration
            // woke nobody: look again.
            match self.move_ready(into) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
        .await
    }

    fn move_ready(&self, into: &mut VecDeque<Returned>) -> bool {
        let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
        if ready.is_empty() {
            return false;
        }
        into.extend(ready.drain(..));
        ready.shrink_to(Self::RETAINED);
        true
    }

    /// Appends one op's outcome; the caller hears of it at [`Self::wake`].
    fn append(&self, returned: Returned) {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(returned);
    }

    /// Tells the caller that outcomes wait.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }
}

/// Where one op's outcome goes: told once, or on drop told that the writer
/// closed.
pub(crate) struct ReturnTo(Option<Arc<Completions>>);

impl ReturnTo {
    pub(crate) fn new(completions: &Arc<Completions>) -> Self {
        ReturnTo(Some(completions.clone()))
    }

    /// Appends the outcome; adds the queue to `to_wake` (once) so the
    /// writer wakes each caller once for its whole batch.
    pub(crate) fn tell(mut self, returned: Returned, to_wake: &mut Vec<Arc<Completions>>) {
        if let Some(completions) = self.0.take() {
            completions.append(returned);
            if !to_wake
                .iter()
                .any(|queued| Arc::ptr_eq(queued, &completions))
            {
                to_wake.push(completions);
            }
        }
    }
}

impl Drop for ReturnTo {
    fn drop(&mut self) {
        if let Some(completions) = self.0.take() {
            // The op went with the job that dropped this: the caller gets
            // an empty one in its place, with the error.
            completions.append((
                Err(PoolError::Closed),
                WriteOp::AppendMessage(Box::default()),
            ));
            completions.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ourchat_storage::WriteOutcome;

    fn op(seq: i64) -> WriteOp {
        WriteOp::AppendMessage(Box::new(ourchat_storage::ChatMessage {
            seq,
            ..Default::default()
        }))
    }

    #[test]
    fn outcomes_come_back_in_order_with_one_wake_per_caller() {
        let completions = Completions::new();
        let mut to_wake = Vec::new();
        for seq in 1..=3 {
            ReturnTo::new(&completions).tell((Ok(WriteOutcome::Done), op(seq)), &mut to_wake);
        }
        assert_eq!(to_wake.len(), 1, "one wake for the batch");
        let mut taken = VecDeque::new();
        futures::executor::block_on(completions.take(&mut taken));
        let seqs: Vec<i64> = taken
            .iter()
            .map(|(_, op)| op.message().map_or(0, |m| m.seq))
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn a_bursts_room_is_given_back() {
        let completions = Completions::new();
        let mut to_wake = Vec::new();
        for seq in 0..1_000 {
            ReturnTo::new(&completions).tell((Ok(WriteOutcome::Done), op(seq)), &mut to_wake);
        }
        let mut taken = VecDeque::new();
        futures::executor::block_on(completions.take(&mut taken));
        assert_eq!(taken.len(), 1_000);
        let kept = completions.ready.lock().map(|ready| ready.capacity());
        assert!(kept.is_ok_and(|kept| kept <= Completions::RETAINED));
    }

    #[test]
    fn an_op_and_its_outcome_stay_small() {
        // Each is moved through the writer's queue, into a caller's
        // completions and out again: a message held inline made it 544.
        assert!(std::mem::size_of::<Returned>() <= 176);
    }

    #[test]
    fn an_op_dropped_untold_comes_back_closed() {
        let completions = Completions::new();
        drop(ReturnTo::new(&completions));
        let mut taken = VecDeque::new();
        futures::executor::block_on(completions.take(&mut taken));
        assert!(matches!(
            taken.pop_front(),
            Some((Err(PoolError::Closed), _))
        ));
    }

    #[test]
    fn a_waiting_caller_is_woken_by_the_batch() {
        let completions = Completions::new();
        let writer_side = completions.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut to_wake = Vec::new();
            ReturnTo::new(&writer_side).tell((Ok(WriteOutcome::Done), op(7)), &mut to_wake);
            to_wake.iter().for_each(|queue| queue.wake());
        });
        let mut taken = VecDeque::new();
        futures::executor::block_on(completions.take(&mut taken));
        assert_eq!(taken.len(), 1);
        writer.join().unwrap();
    }
}
