//! The embedded message log (issue 14's store, chosen by `store_mix`):
//! batches of records appended to fixed-size segment files with one write
//! and one fsync each, recovered by a scan that proves where the durable
//! data ends — a torn final batch (never acknowledged) is dropped, damage
//! to acknowledged data refuses to start. Above the batches, `store` keeps
//! messages (numbered by conversation, deduplicated by sender and client
//! id however old) and delivery cursors.
//!
//! `batch` is the on-disk format and the scanner, without I/O; `disk` the
//! file operations (real files, or the crash tests' disk that tears
//! writes); `log` the appends, segment rolls, recovery and the log-end
//! file; `records` what a batch body holds (messages, group events,
//! cursors, read marks, recalls); `index` the in-memory indexes rebuilt
//! from them, `summary` what a sealed segment changed in them (loaded at a
//! start instead of its records); `store` the writer that numbers, deduplicates and coalesces,
//! and the readers. `crate::embedded` puts it behind the store traits.

pub mod batch;
pub mod disk;
pub mod index;
pub mod log;
mod records;
pub mod store;
mod summary;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod testing;
