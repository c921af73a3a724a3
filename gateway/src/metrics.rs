//! The counters. Each core records into its own [`CoreMetrics`] with
//! relaxed atomics (only that core writes them, so no cache line is
//! shared on the hot path); a scrape sums them (`admin_http.rs` renders
//! them for Prometheus).

use std::sync::atomic::{AtomicU64, Ordering};

use ourchat_workers::stats::{AtomicHistogram, LATENCY_US_BUCKETS};

use crate::limits::Limit;

/// Error codes counted (every `ErrorCode` value is below this).
pub(crate) const ERROR_SLOTS: usize = 16;

/// Counters of one core.
#[derive(Debug)]
pub struct CoreMetrics {
    /// Open connections (gauge).
    pub connections: AtomicU64,
    /// Idle connections parked as their bare socket (gauge).
    pub parked: AtomicU64,
    /// Heartbeats answered to parked connections without resuming them.
    pub parked_heartbeats: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections handed over to their user's core at login.
    pub handed_over: AtomicU64,
    /// Successful logins.
    pub logins_ok: AtomicU64,
    /// Refused logins.
    pub logins_failed: AtomicU64,
    /// Accounts created.
    pub registrations: AtomicU64,
    /// Frames read from clients.
    pub frames_in: AtomicU64,
    /// Frames written to clients.
    pub frames_out: AtomicU64,
    /// Messages made durable by this core's sequencer.
    pub messages_accepted: AtomicU64,
    /// Message pushes queued to this core's connections.
    pub pushes: AtomicU64,
    /// Other pushes (read receipts, recalls, typing) queued.
    pub events_pushed: AtomicU64,
    /// Connections closed because they did not read their pushes.
    pub slow_reader_closes: AtomicU64,
    /// Messages sent to another core over the mesh.
    pub mesh_sent: AtomicU64,
    /// Messages to another core that found its channel full and queued
    /// behind it (in order) instead of stalling this core.
    pub mesh_overflows: AtomicU64,
    /// Logged-in connections closed for silence past the idle timeout.
    pub idle_closes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// WebSocket upgrades refused (path, origin) or failed or timed out.
    pub ws_upgrades_refused: AtomicU64,
    /// Refusals by limit, indexed like [`Limit::ALL`].
    pub limited: [AtomicU64; Limit::ALL.len()],
    /// Errors sent to clients, by `ErrorCode`.
    pub errors: [AtomicU64; ERROR_SLOTS],
    /// Send received → ack queued, microseconds.
    pub send_ack_us: AtomicHistogram,
    /// Commit done → push queued on the device's connection, microseconds.
    pub deliver_us: AtomicHistogram,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        CoreMetrics {
            connections: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            parked_heartbeats: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            handed_over: AtomicU64::new(0),
            logins_ok: AtomicU64::new(0),
            logins_failed: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            messages_accepted: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            events_pushed: AtomicU64::new(0),
            slow_reader_closes: AtomicU64::new(0),
            mesh_sent: AtomicU64::new(0),
            mesh_overflows: AtomicU64::new(0),
            idle_closes: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            ws_upgrades_refused: AtomicU64::new(0),
            limited: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            send_ack_us: AtomicHistogram::new(LATENCY_US_BUCKETS),
            deliver_us: AtomicHistogram::new(LATENCY_US_BUCKETS),
        }
    }
}

impl CoreMetrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one refusal by `limit`.
    pub fn limited(&self, limit: Limit) {
        if let Some(slot) = self.limited.get(limit as usize) {
            Self::inc(slot);
        }
    }

    /// Counts an error sent to a client.
    pub fn error(&self, code: i32) {
        if let Some(slot) = usize::try_from(code).ok().and_then(|i| self.errors.get(i)) {
            Self::inc(slot);
        }
    }
}

/// Every core's counters.
#[derive(Debug)]
pub struct Metrics {
    cores: Vec<CoreMetrics>,
    fallback: CoreMetrics,
}

impl Metrics {
    /// Counters for `cores` cores.
    pub fn new(cores: usize) -> Self {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            fallback: CoreMetrics::default(),
        }
    }

    /// One core's counters.
    pub fn core(&self, id: usize) -> &CoreMetrics {
        self.cores.get(id).unwrap_or(&self.fallback)
    }

    /// Every core's counters, in core order.
    pub fn all_cores(&self) -> &[CoreMetrics] {
        &self.cores
    }
}
