//! Threads that keep the store tidy rather than answer anyone: the segment
//! summaries and the high-water marks written after a segment fills. They
//! run at the lowest priority (nice 19), so beside a reactor or the writer
//! they get about one part in seventy of a CPU and otherwise only what is
//! idle: a full segment's summary is ~0.1 s of encoding, and on a
//! reactor's CPU at normal priority it was a tenth of a second in which
//! every send behind it waited (BENCHMARKS.md, "A segment's upkeep at the
//! lowest priority"). What they write is a cache and a check (a summary a
//! start may use instead of reading the segment; marks that may lag the
//! log), so being late costs a slower start or a looser check, never data.

use rustix::process::setpriority_process;
use rustix::thread::gettid;

/// The nice value of an upkeep thread: the lowest there is.
const UPKEEP_NICE: i32 = 19;

/// Gives the calling thread the lowest priority (Linux keeps a nice value
/// per thread); where the kernel refuses, it stays as it was.
pub(crate) fn yield_to_requests() {
    if let Err(error) = setpriority_process(Some(gettid()), UPKEEP_NICE) {
        tracing::debug!(%error, "an upkeep thread keeps its priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::getpriority_process;

    fn own_nice() -> Option<i32> {
        getpriority_process(Some(gettid())).ok()
    }

    #[test]
    fn an_upkeep_thread_alone_runs_at_the_lowest_priority() {
        let before = own_nice();
        let upkeep = std::thread::spawn(|| {
            yield_to_requests();
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!(upkeep, Some(UPKEEP_NICE));
        assert_eq!(own_nice(), before, "only the upkeep thread moved");
    }
}
