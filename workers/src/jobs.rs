//! A bounded pool of threads that run closures against a per-thread
//! context: store readers (each thread owns a read connection) and password
//! hashing (no context). The caller awaits a oneshot, so a reactor only
//! ever waits, never blocks.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender, TrySendError};

use crate::doorbell::Doorbell;
use futures::channel::oneshot;

use crate::PoolError;

type Job<C> = Box<dyn FnOnce(&mut C) + Send>;

/// `None` tells one thread to stop once the jobs before it are done, so
/// shutdown does not depend on every handle having been dropped.
type Queued<C> = Option<Job<C>>;

/// Threads that each own a `C` and run jobs on it.
pub struct JobPool<C> {
    handle: JobHandle<C>,
    threads: Vec<JoinHandle<()>>,
}

/// Cheap to clone; submits jobs to the pool.
pub struct JobHandle<C> {
    tx: Sender<Queued<C>>,
    bell: Arc<Doorbell>,
}

impl<C> Clone for JobHandle<C> {
    fn clone(&self) -> Self {
        JobHandle {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<C: 'static> JobPool<C> {
    /// Starts `threads` threads named `name-N`, each with a context made by
    /// `make_context(N)`, sharing a queue of `capacity` jobs, each allowed
    /// on `cpus` (empty: any).
    pub fn start<E>(
        name: &str,
        threads: usize,
        capacity: usize,
        cpus: &[usize],
        make_context: impl Fn(usize) -> Result<C, E>,
    ) -> Result<Self, E>
    where
        C: Send,
        E: From<std::io::Error>,
    {
        let (tx, rx) = bounded::<Queued<C>>(capacity.max(1));
        let bell = Arc::new(Doorbell::default());
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads.max(1) {
            let mut context = make_context(index)?;
            let rx = rx.clone();
            let bell = bell.clone();
            let cpus = cpus.to_vec();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    if let Err(e) = crate::pin_current_thread(&cpus) {
                        tracing::warn!(error = %e, ?cpus, "could not pin a worker thread");
                    }
                    while let Ok(Some(job)) = bell.recv(&rx) {
                        job(&mut context);
                    }
                })?;
            handles.push(thread);
        }
        Ok(JobPool {
            handle: JobHandle { tx, bell },
            threads: handles,
        })
    }

    /// A handle for submitting jobs.
    pub fn handle(&self) -> JobHandle<C> {
        self.handle.clone()
    }

    /// Finishes the queued jobs, then stops every thread.
    pub fn shutdown(self) {
        let JobPool { handle, threads } = self;
        for _ in &threads {
            let _ = handle.tx.send(None);
        }
        handle.bell.ring_all();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("worker thread panicked");
            }
        }
    }
}

impl<C: 'static> JobHandle<C> {
    /// Queues `job`; its result arrives on the returned receiver. A full
    /// queue is refused at once so the caller can push back.
    pub fn try_run<T, F>(&self, job: F) -> Result<oneshot::Receiver<T>, PoolError>
    where
        T: Send + 'static,
        F: FnOnce(&mut C) -> T + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job<C> = Box::new(move |context: &mut C| {
            let _ = done.send(job(context));
        });
        match self.tx.try_send(Some(job)) {
            Ok(()) => {
                self.bell.ring();
                Ok(result)
            }
            Err(TrySendError::Full(_)) => Err(PoolError::Full),
            Err(TrySendError::Disconnected(_)) => Err(PoolError::Closed),
        }
    }

    /// Jobs waiting for a thread.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Whether a job submitted now would be refused.
    pub fn is_full(&self) -> bool {
        self.tx.is_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_their_thread_context() {
        let pool = JobPool::start("t", 2, 8, &[0], |i| Ok::<_, std::io::Error>(i * 10)).unwrap();
        let handle = pool.handle();
        let results: Vec<_> = (0..8)
            .map(|n| handle.try_run(move |ctx: &mut usize| *ctx + n).unwrap())
            .collect();
        for (n, r) in results.into_iter().enumerate() {
            let value = futures::executor::block_on(r).unwrap();
            assert!(value == n || value == 10 + n);
        }
        drop(handle);
        pool.shutdown();
    }

    #[test]
    fn full_queue_is_refused() {
        let pool = JobPool::start("t", 1, 1, &[], |_| Ok::<_, std::io::Error>(())).unwrap();
        let handle = pool.handle();
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let busy = handle
            .try_run(move |_: &mut ()| {
                let _ = gate.recv();
            })
            .unwrap();
        let mut refused = false;
        let mut queued = Vec::new();
        for _ in 0..4 {
            match handle.try_run(|_: &mut ()| ()) {
                Ok(r) => queued.push(r),
                Err(e) => {
                    assert_eq!(e, PoolError::Full);
                    refused = true;
                }
            }
        }
        assert!(refused);
        release.send(()).unwrap();
        futures::executor::block_on(busy).unwrap();
        drop(handle);
        pool.shutdown();
    }
}
