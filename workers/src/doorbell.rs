//! How a worker thread waits for its queue without spinning. crossbeam's
//! blocking `recv` spins and then calls `sched_yield` several times before
//! it parks; with a wake-up per job (a store read, an ack's cursor write)
//! that was 7% of a node's CPU at 2,000 msg/s (BENCHMARKS.md). Here a
//! worker that finds its queue empty goes straight to sleep on a condvar,
//! and a submitter rings only when someone sleeps.
//!
//! No lost wake-up: the worker counts itself asleep and then looks at the
//! queue again; the submitter queues and then looks at the count (both
//! with sequentially consistent operations), so one of them sees the
//! other. A sleeper also wakes every `RECHECK` to notice a queue whose
//! senders are all gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvError, TryRecvError};

/// Bounds a sleep when nobody rings (a queue closed by dropping its
/// senders rings nobody).
const RECHECK: Duration = Duration::from_millis(100);

/// The queue's bell.
#[derive(Default)]
pub(crate) struct Doorbell {
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Doorbell {
    /// Wakes one sleeping worker, if any; call after queueing.
    pub(crate) fn ring(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_one();
        }
    }

    /// Wakes every sleeping worker (shutdown).
    pub(crate) fn ring_all(&self) {
        let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_all();
    }

    /// The next item of `rx`, sleeping while it is empty; `Err` once it is
    /// empty and every sender is gone. A worker that slept a whole
    /// `RECHECK` without an item hands its allocator cache back, once per
    /// idle spell: a busy worker never pays for it.
    pub(crate) fn recv<T>(&self, rx: &Receiver<T>) -> Result<T, RecvError> {
        let mut released = false;
        loop {
            match rx.try_recv() {
                Ok(item) => return Ok(item),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
            let held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let item = match rx.try_recv() {
                Ok(item) => Some(Ok(item)),
                Err(TryRecvError::Disconnected) => Some(Err(RecvError)),
                Err(TryRecvError::Empty) => {
                    let (held, waited) = self
                        .wake
                        .wait_timeout(held, RECHECK)
                        .unwrap_or_else(PoisonError::into_inner);
                    drop(held);
                    if waited.timed_out() && !released {
                        crate::memory::release_thread_cache();
                        released = true;
                    }
                    None
                }
            };
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            if let Some(item) = item {
                return item;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn every_item_is_received_by_sleeping_workers_and_a_closed_queue_ends_them() {
        let (tx, rx) = crossbeam_channel::bounded::<u64>(64);
        let bell = Arc::new(Doorbell::default());
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (rx, bell) = (rx.clone(), bell.clone());
                std::thread::spawn(move || {
                    let mut sum = 0;
                    while let Ok(item) = bell.recv(&rx) {
                        sum += item;
                    }
                    sum
                })
            })
            .collect();
        let mut expected = 0;
        for i in 1..=20_000u64 {
            tx.send(i).unwrap();
            bell.ring();
            expected += i;
            if i % 1_000 == 0 {
                // Let the workers fall asleep between bursts.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drop(tx);
        let got: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_idle_worker_hands_its_allocator_cache_back_once_per_idle_spell() {
        crate::memory::counting::install();
        let (tx, rx) = crossbeam_channel::bounded::<u64>(8);
        let bell = Arc::new(Doorbell::default());
        // Busy: five items waiting before the worker starts, so it never
        // sleeps between them however slowly this machine runs it.
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let worker = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                let mut releases = Vec::new();
                while bell.recv(&rx).is_ok() {
                    releases.push(crate::memory::counting::on_this_thread());
                }
                releases
            })
        };
        // Idle for three RECHECKs, then one item.
        std::thread::sleep(RECHECK * 3 + RECHECK / 2);
        tx.send(5).unwrap();
        bell.ring();
        drop(tx);
        let releases = worker.join().unwrap();
        assert_eq!(releases, [0, 0, 0, 0, 0, 1]);
    }
}
