//! The reactors are woken from other threads all the time (worker pools
//! completing writes, the gRPC bridge, the cluster inbox). This checks the
//! patched glommio (`vendor/glommio/OURCHAT-PATCH.md`): a waker dropped on
//! a foreign thread while the executor drops the task's `JoinHandle` must
//! never free the task twice. Published glommio 0.9.0 crashes here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

/// Rounds of the race; published glommio fails well within this in a
/// release build, and under ASan in every run of 300,000.
const ROUNDS: usize = 200_000;

#[test]
fn a_foreign_thread_dropping_a_waker_never_frees_a_task_twice() {
    let (to_foreign, wakers) = std::sync::mpsc::sync_channel::<Waker>(1);
    let released = Arc::new(AtomicUsize::new(0));
    let released_seen = released.clone();
    let foreign = std::thread::spawn(move || {
        let mut round = 0;
        for waker in wakers {
            round += 1;
            // Drop it the moment the executor drops the task's handle.
            while released_seen.load(Ordering::Acquire) < round {
                std::hint::spin_loop();
            }
            drop(waker);
        }
        round
    });
    let rounds = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            for round in 1..=ROUNDS {
                let to_foreign = to_foreign.clone();
                let mut polled = false;
                let handle = glommio::spawn_local(std::future::poll_fn(move |cx| {
                    if polled {
                        return Poll::Ready(());
                    }
                    polled = true;
                    // The foreign thread holds the last waker once this
                    // task completes.
                    let _ = to_foreign.send(cx.waker().clone());
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }));
                yield_once().await;
                yield_once().await;
                released.store(round, Ordering::Release);
                // Vary the moment a little, round to round.
                for _ in 0..(round % 7) {
                    std::hint::spin_loop();
                }
                drop(handle);
            }
            ROUNDS
        })
        .expect("start an executor")
        .join()
        .expect("executor ran");
    assert_eq!(foreign.join().expect("foreign thread"), rounds);
}

/// Lets the executor run other tasks once.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}
