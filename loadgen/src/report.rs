//! What a run measured: counters, HdrHistogram latencies (microseconds,
//! from the *scheduled* send time, so a stalled server cannot hide its
//! queueing: coordinated omission is corrected by construction), and the
//! merge of several processes' results into one report.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency tracked: one minute, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 1 µs to 60 s at three
/// significant digits (a few tens of KiB).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Live counters of one process, shared by its threads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections logged in now.
    pub online: AtomicU64,
    /// Connect or login failures.
    pub connect_errors: AtomicU64,
    /// Logins that succeeded (all time).
    pub logins: AtomicU64,
    /// Sends written.
    pub sent: AtomicU64,
    /// Sends acked as durable.
    pub acked: AtomicU64,
    /// Sends refused by the server.
    pub send_errors: AtomicU64,
    /// Deliveries the acked sends owe: one per 1:1 send, one per other
    /// member per group send.
    pub expected: AtomicU64,
    /// Distinct messages received (seq above the conversation's mark).
    pub delivered: AtomicU64,
    /// Messages received again (seq equal to the mark).
    pub duplicates: AtomicU64,
    /// Messages received after a higher seq of the same conversation.
    pub out_of_order: AtomicU64,
    /// Connections the server closed on us.
    pub kicked: AtomicU64,
}

impl Counters {
    /// A point-in-time copy.
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            online: get(&self.online),
            connect_errors: get(&self.connect_errors),
            logins: get(&self.logins),
            sent: get(&self.sent),
            acked: get(&self.acked),
            send_errors: get(&self.send_errors),
            expected: get(&self.expected),
            delivered: get(&self.delivered),
            duplicates: get(&self.duplicates),
            out_of_order: get(&self.out_of_order),
            kicked: get(&self.kicked),
        }
    }
}

/// Counter values, summable across processes.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// See [`Counters`].
    pub online: u64,
    /// See [`Counters`].
    pub connect_errors: u64,
    /// See [`Counters`].
    pub logins: u64,
    /// See [`Counters`].
    pub sent: u64,
    /// See [`Counters`].
    pub acked: u64,
    /// See [`Counters`].
    pub send_errors: u64,
    /// See [`Counters`].
    #[serde(default)]
    pub expected: u64,
    /// See [`Counters`].
    pub delivered: u64,
    /// See [`Counters`].
    pub duplicates: u64,
    /// See [`Counters`].
    pub out_of_order: u64,
    /// See [`Counters`].
    pub kicked: u64,
}

impl CounterSnapshot {
    /// Field-wise sum.
    pub fn add(&mut self, other: &CounterSnapshot) {
        self.online += other.online;
        self.connect_errors += other.connect_errors;
        self.logins += other.logins;
        self.sent += other.sent;
        self.acked += other.acked;
        self.send_errors += other.send_errors;
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.kicked += other.kicked;
    }
}

/// A histogram as (value, count) pairs, for the pipe between processes.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Recorded(pub Vec<(u64, u64)>);

impl Recorded {
    /// Every recorded value of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Recorded(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these values into `h`.
    pub fn merge_into(&self, h: &mut Histogram<u64>) {
        for (value, count) in &self.0 {
            let _ = h.record_n(*value, *count);
        }
    }
}

/// Latency percentiles of one histogram, in microseconds.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// Percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One process's final result.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ProcResult {
    /// Counters at the end of `--drain` (the rates' counts).
    pub counters: CounterSnapshot,
    /// Counters once late deliveries stopped coming (losses, duplicates,
    /// order, CPU per delivery).
    #[serde(default)]
    pub settled: CounterSnapshot,
    /// Send → durable ack.
    pub ack_us: Recorded,
    /// Send → delivered to the recipient.
    pub deliver_us: Recorded,
    /// Connect + token login (storm: from the reconnect signal).
    pub login_us: Recorded,
    /// Seconds the measured phase lasted in this process.
    pub phase_secs: f64,
}

/// Lines a child prints on stdout for its parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum ChildLine {
    /// Every connection of the child is logged in; waiting for "go".
    Ready,
    /// Once a second.
    Progress {
        /// Counters so far.
        counters: CounterSnapshot,
        /// p99 send → deliver so far, µs.
        deliver_p99_us: u64,
    },
    /// Past `--drain`: waiting for the parent's "end" (it sees every
    /// process's acks and deliveries), progress lines meanwhile.
    Draining,
    /// At the end.
    Done(Box<ProcResult>),
}
