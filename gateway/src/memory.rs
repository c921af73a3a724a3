//! Handing a core thread's allocator cache back while the node idles. An
//! allocator keeps a cache of freed blocks per thread (jemalloc's tcache),
//! trimmed only as the thread allocates; a core whose connections went
//! quiet and parked allocates next to nothing, so what it freed stays
//! cached, and the pages under it stay resident: on 5,000 idle
//! connections, 1,100–1,600 bytes per connection with the caches against
//! 760–840 without (BENCHMARKS.md, "The allocator's thread caches at
//! rest"). The binary knows its allocator, so it installs the release;
//! each core's sweeper calls it once a second, when a refill costs a busy
//! core a few microseconds.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Installs how a thread's allocator cache is given back (once; later
/// calls are ignored).
pub fn set_thread_cache_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Gives this thread's allocator cache back, if the binary said how.
pub(crate) fn release_thread_cache() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RELEASED: AtomicUsize = AtomicUsize::new(0);

    fn count_release() {
        RELEASED.fetch_add(1, Ordering::Relaxed);
    }

    fn other_release() {
        RELEASED.fetch_add(100, Ordering::Relaxed);
    }

    #[test]
    fn the_first_installed_release_runs_each_time_it_is_asked_for() {
        set_thread_cache_release(count_release);
        set_thread_cache_release(other_release);
        release_thread_cache();
        release_thread_cache();
        assert_eq!(RELEASED.load(Ordering::Relaxed), 2);
    }
}
