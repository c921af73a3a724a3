//! Worker pools that keep blocking work off the reactors: the batched store
//! writer, store readers, and password hashing. Every queue is a bounded
//! crossbeam channel with a doorbell its workers sleep on; a full queue
//! hands the item back to the caller (who
//! stops reading its connection) instead of dropping it. Completions travel
//! back on `futures` oneshots, which wake the waiting task on its own core,
//! or, for a caller with many ops in flight, in batches (`completions`).

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
// Input must never reach a panic: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod completions;
mod doorbell;
pub mod jobs;
pub mod memory;
pub mod password;
pub mod stats;
pub mod writer;

pub use completions::Completions;
pub use jobs::{JobHandle, JobPool};
pub use writer::{
    Refused, Returned, WriteCompletion, WriterConfig, WriterHandle, WriterPool, WriterStats,
};

/// Why a pool could not do a job.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// The queue is full: back off and retry (the caller keeps its item).
    #[error("worker queue full")]
    Full,
    /// The pool is shutting down or its thread died.
    #[error("worker pool closed")]
    Closed,
    /// The store refused the batch; `retryable` says whether trying again may work.
    #[error("store error: {message}")]
    Store {
        /// What the store said.
        message: String,
        /// Whether a retry may succeed.
        retryable: bool,
    },
}

/// Pins the calling thread to `cpus` (no-op when empty). Workers share
/// CPUs with nothing else when the operator sets it, keeping reactors'
/// caches and run queues to themselves.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus {
        set.set(*cpu).map_err(std::io::Error::from)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::from)
}

impl From<ourchat_storage::StoreError> for PoolError {
    fn from(err: ourchat_storage::StoreError) -> Self {
        PoolError::Store {
            retryable: err.is_retryable(),
            message: err.to_string(),
        }
    }
}
