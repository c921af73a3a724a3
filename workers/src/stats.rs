//! Lock-free counters for metrics: a fixed-bucket histogram that any
//! thread can record into with relaxed atomics, rendered in Prometheus's
//! histogram format. Each recorder should own its histogram (one per core,
//! one per writer) so the hot path never shares a cache line.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of values at or below each bound, plus a sum, Prometheus style.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// Latency buckets in microseconds: 50 µs to 1 s.
pub const LATENCY_US_BUCKETS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Batch-size buckets in ops.
pub const BATCH_BUCKETS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

impl AtomicHistogram {
    /// An empty histogram over `bounds` (ascending); one more bucket holds
    /// everything above the last bound.
    pub fn new(bounds: &'static [u64]) -> Self {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, value: u64) {
        let index = self.bounds.partition_point(|bound| *bound < value);
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Appends this histogram, summed with `others` of the same bounds, as
    /// Prometheus text under `name` with `labels` (`key="value",...` or "").
    pub fn render_sum<'a>(
        name: &str,
        labels: &str,
        parts: impl IntoIterator<Item = &'a AtomicHistogram> + Clone,
        out: &mut String,
    ) {
        let mut bounds: &[u64] = &[];
        let mut counts: Vec<u64> = Vec::new();
        let mut sum = 0;
        for part in parts {
            bounds = part.bounds;
            counts.resize(part.counts.len(), 0);
            for (total, count) in counts.iter_mut().zip(part.counts.iter()) {
                *total += count.load(Ordering::Relaxed);
            }
            sum += part.sum.load(Ordering::Relaxed);
        }
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_into_the_right_bucket_and_renders_cumulatively() {
        let h = AtomicHistogram::new(&[10, 100]);
        for v in [1, 10, 11, 100, 5000] {
            h.record(v);
        }
        assert_eq!(h.count(), 5);
        let mut out = String::new();
        AtomicHistogram::render_sum("x", "core=\"0\"", [&h], &mut out);
        assert!(out.contains("x_bucket{core=\"0\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{core=\"0\",le=\"100\"} 4\n"), "{out}");
        assert!(
            out.contains("x_bucket{core=\"0\",le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("x_sum{core=\"0\"} 5122\n"), "{out}");
    }
}
