//! The batched store writer. One thread per store owns the write
//! connection; it takes everything waiting in its queue (up to `max_batch`),
//! commits it as one transaction, completes every caller, and repeats. Under
//! low load a batch is one op and latency is one commit; under high load
//! batches grow and throughput follows. No timers.
//!
//! Exactly one writer per store is deliberate: ops are committed in the
//! order they were queued, so a conversation's seqs reach the store in
//! order and a crash can never leave seq n+1 without seq n.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use futures::channel::oneshot;
use ourchat_storage::{StoreError, WriteOp, WriteOutcome, WriteStore};

use crate::completions::{Completions, ReturnTo};
use crate::doorbell::Doorbell;
use crate::stats::{AtomicHistogram, BATCH_BUCKETS, LATENCY_US_BUCKETS};
use crate::PoolError;

/// Sizes of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Ops that may wait for the writer. Sized to absorb a burst from every
    /// core while one commit (an fsync, ~1-10 ms) is under way.
    pub queue_capacity: usize,
    /// Most ops in one transaction; bounds the latency one batch adds.
    pub max_batch: usize,
    /// CPUs the writer thread may run on (empty: any).
    pub cpus: Vec<usize>,
    /// Group commit: while ops come fast enough that at least two more
    /// are expected to join (see [`worth_lingering`]), the writer waits
    /// this long after the first op of a batch. Zero: never waits.
    pub linger: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_capacity: 65_536,
            max_batch: 4_096,
            cpus: Vec::new(),
            linger: Duration::ZERO,
        }
    }
}

/// A batch that failed with a retryable error is tried this many times in
/// all before its callers are told; a passing lock or I/O hiccup should not
/// fail acknowledged-looking work.
const COMMIT_ATTEMPTS: u32 = 4;

/// Result of one submitted op, delivered once its batch commits or fails.
pub type WriteCompletion = oneshot::Receiver<Result<WriteOutcome, PoolError>>;

/// An op's result with the op handed back: a caller that still needs what
/// it wrote (a sent message, pushed once stored) need not keep a copy.
pub type Returned = (Result<WriteOutcome, PoolError>, WriteOp);

/// Who hears how a write went.
enum Done {
    /// Nobody (detached).
    Nobody,
    /// The caller, told the outcome.
    Outcome(oneshot::Sender<Result<WriteOutcome, PoolError>>),
    /// The caller's [`Completions`], given the outcome and the op back.
    Returning(ReturnTo),
}

impl Done {
    /// `to_wake` collects the [`Completions`] told, to wake once a batch.
    fn tell(
        self,
        result: Result<WriteOutcome, PoolError>,
        op: WriteOp,
        to_wake: &mut Vec<Arc<Completions>>,
    ) {
        // A caller that went away (closed connection) needs no answer.
        match self {
            Done::Nobody => {}
            Done::Outcome(done) => {
                let _ = done.send(result);
            }
            Done::Returning(done) => done.tell((result, op), to_wake),
        }
    }
}

struct WriteJob {
    op: WriteOp,
    done: Done,
}

/// What travels on the writer queue. `Stop` is queued by shutdown behind
/// everything already submitted, so the writer commits all of it first;
/// shutdown never depends on every handle having been dropped.
// Not boxed: every write travels as `Job`, `Stop` once per process; a box
// would cost an allocation per write to save queue slots that hold jobs
// anyway.
#[allow(clippy::large_enum_variant)]
enum Queued {
    Job(WriteJob),
    Stop,
}

/// An op the writer would not take, handed back with the reason.
#[derive(Debug)]
pub struct Refused {
    /// The op, untouched.
    pub op: WriteOp,
    /// Why: [`PoolError::Full`] (back off and retry) or [`PoolError::Closed`].
    pub error: PoolError,
}

/// Counters for logs and metrics.
#[derive(Debug)]
pub struct WriterStats {
    /// Committed (or failed) batches.
    pub batches: AtomicU64,
    /// Ops in those batches.
    pub ops: AtomicU64,
    /// Batches that failed after all attempts.
    pub failed_batches: AtomicU64,
    /// Ops per batch.
    pub batch_sizes: AtomicHistogram,
    /// Time to commit one batch, in microseconds (fsync included).
    pub commit_us: AtomicHistogram,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            batches: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            batch_sizes: AtomicHistogram::new(BATCH_BUCKETS),
            commit_us: AtomicHistogram::new(LATENCY_US_BUCKETS),
        }
    }
}

/// The writer thread and the way to stop it.
pub struct WriterPool {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

/// Cheap to clone; each core keeps one to submit ops.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<Queued>,
    bell: Arc<Doorbell>,
    stats: Arc<WriterStats>,
}

impl WriterPool {
    /// Starts the writer thread on `store`.
    pub fn start(store: Box<dyn WriteStore>, config: WriterConfig) -> std::io::Result<Self> {
        let (tx, rx) = bounded(config.queue_capacity.max(1));
        let bell = Arc::new(Doorbell::default());
        let thread_bell = bell.clone();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let max_batch = config.max_batch.max(1);
        let (cpus, linger) = (config.cpus, config.linger);
        let thread = std::thread::Builder::new()
            .name("ourchat-writer".into())
            .spawn(move || {
                if let Err(e) = crate::pin_current_thread(&cpus) {
                    tracing::warn!(error = %e, ?cpus, "could not pin the store writer");
                }
                run_writer(store, rx, &thread_bell, max_batch, linger, &thread_stats)
            })?;
        Ok(WriterPool {
            handle: WriterHandle { tx, bell, stats },
            thread: Some(thread),
        })
    }

    /// A handle for submitting ops.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Commits everything submitted so far, then stops the writer; later
    /// submits fail with [`PoolError::Closed`]. Call after the cores stop.
    pub fn shutdown(mut self) {
        // A blocking send: waits for room behind the queued ops.
        let _ = self.handle.tx.send(Queued::Stop);
        self.handle.bell.ring_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

impl WriterHandle {
    /// Queues `op`; the returned completion resolves when its batch commits.
    /// A full queue gives the op back (boxed: refusal is the rare path).
    pub fn try_submit(&self, op: WriteOp) -> Result<WriteCompletion, Box<Refused>> {
        let (done, completion) = oneshot::channel();
        self.queue(op, Done::Outcome(done)).map(|()| completion)
    }

    /// Queues `op`; once its batch commits or fails, the op comes back
    /// with its outcome in `completions`, behind every op submitted there
    /// before it.
    pub fn try_submit_returning(
        &self,
        op: WriteOp,
        completions: &Arc<Completions>,
    ) -> Result<(), Box<Refused>> {
        self.queue(op, Done::Returning(ReturnTo::new(completions)))
    }

    /// Queues `op` with nobody to tell how it went: for writes whose loss
    /// costs only a repeat (a delivery cursor's move), which then need no
    /// completion channel each.
    pub fn try_submit_detached(&self, op: WriteOp) -> Result<(), Box<Refused>> {
        self.queue(op, Done::Nobody)
    }

    fn queue(&self, op: WriteOp, done: Done) -> Result<(), Box<Refused>> {
        let error = match self.tx.try_send(Queued::Job(WriteJob { op, done })) {
            Ok(()) => {
                self.bell.ring();
                return Ok(());
            }
            Err(TrySendError::Full(queued)) => (queued, PoolError::Full),
            Err(TrySendError::Disconnected(queued)) => (queued, PoolError::Closed),
        };
        match error {
            (Queued::Job(job), error) => Err(Box::new(Refused { op: job.op, error })),
            // Only shutdown queues Stop, never through a handle.
            (Queued::Stop, error) => Err(Box::new(Refused {
                op: WriteOp::AppendMessage(Box::default()),
                error,
            })),
        }
    }

    /// Ops waiting for the writer.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Most ops that may wait.
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

/// Whether waiting `linger` for more ops pays: a commit costs the writer
/// a wake-up, a write and an fdatasync however few ops it holds, so under
/// load a moment's wait lets the next ones share it. Worth it when, at the
/// rate the previous batch's ops came (`previous_len` of them in the
/// `cycle` from its first op to this one), at least two more would arrive
/// meanwhile; at a trickle each op is committed at once.
fn worth_lingering(previous_len: usize, cycle: Duration, linger: Duration) -> bool {
    !linger.is_zero() && previous_len as f64 * linger.as_secs_f64() >= 2.0 * cycle.as_secs_f64()
}

fn run_writer(
    mut store: Box<dyn WriteStore>,
    rx: Receiver<Queued>,
    bell: &Doorbell,
    max_batch: usize,
    linger: Duration,
    stats: &WriterStats,
) {
    let mut ops = Vec::with_capacity(max_batch);
    // The previous batch: when its first op was taken, and its size.
    let mut previous: Option<(Instant, usize)> = None;
    let mut waiters = Vec::with_capacity(max_batch);
    let mut to_wake = Vec::new();
    let mut stopping = false;
    while !stopping {
        match bell.recv(&rx) {
            Ok(Queued::Job(first)) => {
                ops.push(first.op);
                waiters.push(first.done);
            }
            Ok(Queued::Stop) | Err(_) => break,
        }
        let taken = Instant::now();
        if previous.is_some_and(|(at, len)| worth_lingering(len, taken - at, linger)) {
            std::thread::sleep(linger);
        }
        while ops.len() < max_batch {
            match rx.try_recv() {
                Ok(Queued::Job(job)) => {
                    ops.push(job.op);
                    waiters.push(job.done);
                }
                Ok(Queued::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        previous = Some((taken, ops.len()));
        let started = Instant::now();
        let result = commit_with_retry(store.as_mut(), &ops);
        stats.commit_us.record(started.elapsed().as_micros() as u64);
        stats.batch_sizes.record(ops.len() as u64);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
        tracing::debug!(batch = ops.len(), queued = rx.len(), "store batch");
        let batch = ops.len();
        let done = waiters.drain(..).zip(ops.drain(..));
        match result {
            Ok(outcomes) => {
                for ((done, op), outcome) in done.zip(outcomes) {
                    done.tell(Ok(outcome), op, &mut to_wake);
                }
            }
            Err(err) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, batch, "store batch failed");
                let err = PoolError::from(err);
                for (done, op) in done {
                    done.tell(Err(err.clone()), op, &mut to_wake);
                }
            }
        }
        for completions in to_wake.drain(..) {
            completions.wake();
        }
    }
    tracing::debug!("store writer drained and stopped");
}

fn commit_with_retry(
    store: &mut dyn WriteStore,
    ops: &[WriteOp],
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut attempt = 1;
    loop {
        match store.apply_batch(ops) {
            Ok(outcomes) if outcomes.len() == ops.len() => return Ok(outcomes),
            Ok(outcomes) => {
                return Err(StoreError::Corrupt(format!(
                    "store answered {} outcomes for {} ops",
                    outcomes.len(),
                    ops.len()
                )))
            }
            Err(err) if err.is_retryable() && attempt < COMMIT_ATTEMPTS => {
                tracing::warn!(error = %err, attempt, "store batch failed, retrying");
                std::thread::sleep(Duration::from_millis(10 << (2 * attempt)));
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ourchat_storage::sqlite::{Durability, SqliteBackend};
    use ourchat_storage::{Backend, NewAccount};

    fn account(id: i64, name: &str) -> WriteOp {
        WriteOp::CreateAccount(NewAccount {
            user_id: id,
            username: name.into(),
            password_hash: "h".into(),
            phone: String::new(),
            email: String::new(),
            nickname: String::new(),
            created_at_ms: 0,
        })
    }

    /// The first `count` ops back from `completions`, waiting for them.
    fn take(completions: &Completions, count: usize) -> Vec<Returned> {
        let mut taken = std::collections::VecDeque::new();
        while taken.len() < count {
            futures::executor::block_on(completions.take(&mut taken));
        }
        taken.into()
    }

    /// A writer pool over a fresh SQLite store in `dir`, default settings.
    fn sqlite_pool(dir: &std::path::Path) -> WriterPool {
        let backend = SqliteBackend::open(dir, Durability::Normal).unwrap();
        WriterPool::start(backend.writer().unwrap(), WriterConfig::default()).unwrap()
    }

    #[test]
    fn every_caller_is_completed_and_batches_form_under_load() {
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlite_pool(dir.path());
        let handle = pool.handle();
        let completions: Vec<_> = (1..=2_000)
            .map(|i| handle.try_submit(account(i, &format!("u{i}"))).unwrap())
            .collect();
        let dup = handle.try_submit(account(9_999, "u1")).unwrap();
        for completion in completions {
            let outcome = futures::executor::block_on(completion).unwrap().unwrap();
            assert_eq!(outcome, WriteOutcome::Done);
        }
        assert_eq!(
            futures::executor::block_on(dup).unwrap().unwrap(),
            WriteOutcome::UsernameTaken
        );
        let stats = handle.stats();
        assert_eq!(stats.ops.load(Ordering::Relaxed), 2_001);
        assert!(
            stats.batches.load(Ordering::Relaxed) < 2_001,
            "no batching happened"
        );
        drop(handle);
        pool.shutdown();
    }

    #[test]
    fn detached_ops_are_committed_in_order_with_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlite_pool(dir.path());
        let handle = pool.handle();
        for i in 1..=100 {
            handle
                .try_submit_detached(account(i, &format!("u{i}")))
                .unwrap();
        }
        // Queued after them, so committed with or after them.
        let last = handle.try_submit(account(101, "u1")).unwrap();
        assert_eq!(
            futures::executor::block_on(last).unwrap().unwrap(),
            WriteOutcome::UsernameTaken
        );
        assert_eq!(handle.stats().ops.load(Ordering::Relaxed), 101);
        drop(handle);
        pool.shutdown();
    }

    #[test]
    fn lingers_only_when_two_more_ops_are_expected() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        // 5,000 ops/s: 2 ops in the 0.4 ms since the last batch began.
        assert!(worth_lingering(2, us(400), ms(1)));
        // Lingering keeps itself up while the rate holds: 6 in 1.3 ms.
        assert!(worth_lingering(6, us(1_300), ms(1)));
        // 1,000 ops/s is a trickle: one op per millisecond...
        assert!(!worth_lingering(1, ms(1), ms(1)));
        // ...and lingering does not sustain itself there: 1.3 in 1.3 ms.
        assert!(!worth_lingering(1, us(1_300), ms(1)));
        assert!(!worth_lingering(100, us(10), Duration::ZERO));
    }

    /// Ops arriving while the writer lingers after a busy batch's first
    /// op join that batch; without lingering each has a batch of its own.
    #[test]
    fn a_lingering_writer_gathers_ops_arriving_under_load() {
        let batches_for = |linger: Duration| {
            let dir = tempfile::tempdir().unwrap();
            let backend = SqliteBackend::open(dir.path(), Durability::Normal).unwrap();
            let config = WriterConfig {
                linger,
                ..WriterConfig::default()
            };
            let pool = WriterPool::start(backend.writer().unwrap(), config).unwrap();
            let handle = pool.handle();
            // One op alone first: the writer has just committed when the
            // paced ones come, so it is under load.
            let first = handle.try_submit(account(1, "u1")).unwrap();
            futures::executor::block_on(first).unwrap().unwrap();
            let completions: Vec<_> = (2..=21)
                .map(|i| {
                    std::thread::sleep(Duration::from_millis(1));
                    handle.try_submit(account(i, &format!("u{i}"))).unwrap()
                })
                .collect();
            for completion in completions {
                let outcome = futures::executor::block_on(completion).unwrap().unwrap();
                assert_eq!(outcome, WriteOutcome::Done);
            }
            let batches = handle.stats().batches.load(Ordering::Relaxed);
            drop(handle);
            pool.shutdown();
            batches
        };
        let lingering = batches_for(Duration::from_millis(100));
        assert!(lingering <= 3, "{lingering} batches for 21 ops");
        let eager = batches_for(Duration::ZERO);
        assert!(eager >= 10, "{eager} batches for 21 ops");
    }

    #[test]
    fn full_queue_hands_the_op_back() {
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl WriteStore for Stuck {
            fn apply_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
                let _ = self.0.recv();
                Ok(vec![WriteOutcome::Done; ops.len()])
            }
        }
        let (release, gate) = std::sync::mpsc::channel();
        let pool = WriterPool::start(
            Box::new(Stuck(gate)),
            WriterConfig {
                queue_capacity: 2,
                max_batch: 1,
                cpus: Vec::new(),
                linger: Duration::ZERO,
            },
        )
        .unwrap();
        let handle = pool.handle();
        let mut accepted = Vec::new();
        let refused = loop {
            match handle.try_submit(account(1, "x")) {
                Ok(c) => accepted.push(c),
                Err(refused) => break refused,
            }
            assert!(accepted.len() < 10, "queue is not bounded");
        };
        assert_eq!(refused.error, PoolError::Full);
        assert_eq!(refused.op, account(1, "x"));
        for _ in 0..accepted.len() {
            release.send(()).unwrap();
        }
        for c in accepted {
            assert!(futures::executor::block_on(c).unwrap().is_ok());
        }
        drop(handle);
        drop(release);
        pool.shutdown();
    }

    #[test]
    fn failed_batch_fails_every_caller() {
        struct Broken;
        impl WriteStore for Broken {
            fn apply_batch(&mut self, _: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
                Err(StoreError::Unavailable {
                    message: "disk full".into(),
                    retryable: false,
                })
            }
        }
        let pool = WriterPool::start(Box::new(Broken), WriterConfig::default()).unwrap();
        let completion = pool.handle().try_submit(account(1, "x")).unwrap();
        let completions = Completions::new();
        pool.handle()
            .try_submit_returning(account(2, "y"), &completions)
            .unwrap();
        let result = futures::executor::block_on(completion).unwrap();
        assert!(matches!(
            result,
            Err(PoolError::Store {
                retryable: false,
                ..
            })
        ));
        let (result, op) = take(&completions, 1).remove(0);
        assert!(matches!(result, Err(PoolError::Store { .. })));
        assert_eq!(op, account(2, "y"), "the op comes back failed too");
        pool.shutdown();
    }

    #[test]
    fn a_returning_submit_gets_its_op_back_with_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlite_pool(dir.path());
        let handle = pool.handle();
        let completions = Completions::new();
        for (i, name) in ["a", "b", "a"].iter().enumerate() {
            handle
                .try_submit_returning(account(i as i64 + 1, name), &completions)
                .unwrap();
        }
        let back = take(&completions, 3);
        let outcomes = [
            WriteOutcome::Done,
            WriteOutcome::Done,
            WriteOutcome::UsernameTaken,
        ];
        for (i, ((result, op), outcome)) in back.into_iter().zip(outcomes).enumerate() {
            assert_eq!(result.unwrap(), outcome);
            assert_eq!(op, account(i as i64 + 1, ["a", "b", "a"][i]));
        }
        drop(handle);
        pool.shutdown();
    }
}
