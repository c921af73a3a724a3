//! Handing a thread's allocator cache back while it idles. An allocator
//! keeps a cache of freed blocks per thread (jemalloc's tcache), trimmed
//! only as the thread allocates; a thread that went quiet allocates next
//! to nothing, so what it freed stays cached, and the pages under it stay
//! resident: on 5,000 idle connections, 1,100–1,600 bytes per connection
//! with the cores' caches against 760–840 without (BENCHMARKS.md, "The
//! allocator's thread caches at rest"). The binary knows its allocator, so
//! it installs the release; each reactor core's sweeper calls it once a
//! second, and a worker thread (store writer, reader, hasher) once each
//! time it has found nothing to do for a while (`doorbell.rs`).

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Installs how a thread's allocator cache is given back (once; later
/// calls are ignored).
pub fn set_thread_cache_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Gives this thread's allocator cache back, if the binary said how.
pub fn release_thread_cache() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}

/// A release that counts, per thread, for tests: each test installs it
/// (the first install wins, and it is the same function) and reads its own
/// thread's count.
#[cfg(test)]
pub(crate) mod counting {
    use std::cell::Cell;

    thread_local!(static RELEASED: Cell<usize> = const { Cell::new(0) });

    fn count() {
        RELEASED.with(|n| n.set(n.get() + 1));
    }

    /// Installs the counting release.
    pub(crate) fn install() {
        super::set_thread_cache_release(count);
    }

    /// Releases asked for on this thread so far.
    pub(crate) fn on_this_thread() -> usize {
        RELEASED.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other_release() {
        panic!("a second install must not replace the first");
    }

    #[test]
    fn the_first_installed_release_runs_each_time_it_is_asked_for() {
        counting::install();
        set_thread_cache_release(other_release);
        release_thread_cache();
        release_thread_cache();
        assert_eq!(counting::on_this_thread(), 2);
    }
}
