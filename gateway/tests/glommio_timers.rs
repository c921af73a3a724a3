//! The patched glommio's timers (`vendor/glommio/OURCHAT-PATCH.md`): it
//! keeps its latency ring's preemption timer pending across turns of its
//! loop and through its sleeps, and it takes due user timers off its timer
//! map one by one. This checks what those must keep: a task queue that
//! never yields is still preempted, turn after turn; a sleeping executor
//! still wakes for its own timers, arming one timeout per sleep; timers
//! fire in order, none early.

use std::time::{Duration, Instant};

/// Turns of busy work, each ended by a preemption.
const TURNS: usize = 40;

#[test]
fn a_busy_task_queue_is_preempted_every_turn_and_timers_still_wake_a_sleep() {
    let preempt = Duration::from_millis(5);
    let (busy_waits, timer_waits) = glommio::LocalExecutorBuilder::default()
        .preempt_timer(preempt)
        .spawn(move || async move {
            let mut busy_waits = Vec::with_capacity(TURNS);
            let mut timer_waits = Vec::with_capacity(TURNS);
            for turn in 0..TURNS {
                // Busy until the executor says to yield: without a
                // preemption timer this never ends.
                let started = Instant::now();
                while !glommio::executor().need_preempt() {
                    std::hint::spin_loop();
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "turn {turn}: never preempted"
                    );
                }
                busy_waits.push(started.elapsed());
                glommio::executor().yield_if_needed().await;
                // Then idle: the executor sleeps until this timer.
                let sleeping = Instant::now();
                glommio::timer::sleep(Duration::from_millis(2)).await;
                timer_waits.push(sleeping.elapsed());
            }
            (busy_waits, timer_waits)
        })
        .expect("an executor")
        .join()
        .expect("the executor ran");
    assert_eq!(busy_waits.len(), TURNS);
    // Preempted within a few periods each time (a kept timer fires sooner,
    // never later than one period after it was armed); the bound is loose
    // for a loaded machine.
    let slowest = busy_waits.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(2),
        "slowest preemption {slowest:?}"
    );
    // Each sleep lasted at least its timer, and ended.
    assert!(
        timer_waits.iter().all(|w| *w >= Duration::from_millis(2)),
        "{timer_waits:?}"
    );
}

/// The patched glommio keeps its preemption timer armed through a sleep
/// (it had removed it before each sleep and armed it again after: two
/// timeouts, and their `io_uring_enter` calls, per sleep): an executor
/// that sleeps for a timer again and again arms about one timeout per
/// sleep, the one that wakes it, and still wakes on time.
#[test]
fn sleeping_for_timers_arms_one_timeout_per_sleep() {
    const SLEEPS: u64 = 50;
    let (armed, waits) = glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let before = glommio::timer::latency_timers_armed();
            let mut waits = Vec::new();
            for _ in 0..SLEEPS {
                let sleeping = Instant::now();
                glommio::timer::sleep(Duration::from_millis(1)).await;
                waits.push(sleeping.elapsed());
            }
            (glommio::timer::latency_timers_armed() - before, waits)
        })
        .expect("an executor")
        .join()
        .expect("the executor ran");
    assert!(
        waits.iter().all(|w| *w >= Duration::from_millis(1)),
        "{waits:?}"
    );
    // One per sleep, and a preemption timer now and then (one per 100 ms
    // period at most): the old way armed two per sleep.
    assert!(
        (SLEEPS..=SLEEPS + SLEEPS / 5).contains(&armed),
        "{armed} timeouts armed for {SLEEPS} sleeps"
    );
}

/// The patched glommio takes due timers off the front of its timer map
/// one by one (it split the map, allocating on every turn of its loop):
/// timers still fire in deadline order, none early, and many due in the
/// same turn all fire.
#[test]
fn timers_fire_in_deadline_order_none_early_and_all_due_at_once() {
    let fired = glommio::LocalExecutorBuilder::default()
        .spawn(|| async move {
            let fired = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let started = Instant::now();
            // Deadlines out of order, and 100 timers sharing one deadline.
            let mut delays: Vec<u64> = vec![9, 1, 5, 3, 7];
            delays.extend(std::iter::repeat_n(4, 100));
            let tasks: Vec<_> = delays
                .into_iter()
                .map(|ms| {
                    let fired = fired.clone();
                    glommio::spawn_local(async move {
                        glommio::timer::sleep(Duration::from_millis(ms)).await;
                        fired.borrow_mut().push((ms, started.elapsed()));
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            fired.take()
        })
        .expect("an executor")
        .join()
        .expect("the executor ran");
    assert_eq!(fired.len(), 105, "every timer fired");
    let order: Vec<u64> = fired.iter().map(|(ms, _)| *ms).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "in deadline order");
    for (ms, at) in &fired {
        assert!(*at >= Duration::from_millis(*ms), "{ms} ms fired at {at:?}");
    }
}
