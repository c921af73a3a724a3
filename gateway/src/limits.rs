//! Abuse limits, the arithmetic and the node-wide books. Per connection: a
//! token bucket over every frame, and flood detection (too many refusals in
//! one second closes the connection). Per user: a token bucket over sends,
//! kept by the core the sending connection is on (so a user with devices on
//! several cores gets at most cores × the rate); in cluster mode each send
//! also draws on the user's bucket in Redis, one for every node (checked
//! with the send's seq, see `core/sequencing.rs`). Per node, behind mutexes
//! because connections from one address land on any core: concurrent
//! connections per source address, failed-login back-off per username and
//! per address, and a registration bucket per address. The node-wide maps
//! are touched once per connection, login or registration (each of which
//! costs far more than a lock), never per message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// Entries a node-wide map may hold; past it, expired entries are dropped
/// first, then new keys are not recorded (the limit fails open rather than
/// letting an attacker grow memory without bound).
const MAX_ENTRIES: usize = 100_000;

/// How long a failed-login record is remembered after its last failure.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Which limit refused something (the label of `ourchat_limited_total`);
/// its discriminant is its counter slot, in [`Limit::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A connection's frame rate.
    FrameRate,
    /// A user's send rate.
    UserSendRate,
    /// A connection closed for flooding.
    Flood,
    /// A login refused while its username or address backs off.
    LoginBackoff,
    /// A registration refused for its address's rate.
    Registration,
    /// A connection refused for its address's connection count.
    ConnectionsPerIp,
}

impl Limit {
    /// Every limit, in label order.
    pub const ALL: [Limit; 6] = [
        Limit::FrameRate,
        Limit::UserSendRate,
        Limit::Flood,
        Limit::LoginBackoff,
        Limit::Registration,
        Limit::ConnectionsPerIp,
    ];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::FrameRate => "frame_rate",
            Limit::UserSendRate => "user_send_rate",
            Limit::Flood => "flood_disconnect",
            Limit::LoginBackoff => "login_backoff",
            Limit::Registration => "registration_rate",
            Limit::ConnectionsPerIp => "connections_per_ip",
        }
    }
}

/// A refill rate and the most tokens a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Capacity: the burst allowed after a quiet spell.
    pub burst: f64,
}

/// A token bucket. `f32` tokens keep it at 24 bytes; the rounding is far
/// below one token.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            tokens: rate.burst as f32,
            updated: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether it has refilled completely (its owner may forget it).
    pub fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        f64::from(self.tokens) >= rate.burst
    }

    /// How long until one token is there.
    pub fn wait_for_one(&self, rate: Rate) -> Duration {
        let missing = (1.0 - f64::from(self.tokens)).max(0.0);
        Duration::from_secs_f64(missing / rate.per_sec.max(f64::MIN_POSITIVE))
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (f64::from(self.tokens) + elapsed * rate.per_sec).min(rate.burst) as f32;
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allow,
    /// Answer RATE_LIMITED and carry on.
    Refuse,
    /// Sustained flood: close the connection.
    Disconnect,
}

/// One connection's frame limit.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimiter {
    bucket: TokenBucket,
    window_start: Instant,
    refused_in_window: u32,
}

impl FrameLimiter {
    /// A limiter with a full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        FrameLimiter {
            bucket: TokenBucket::full(rate, now),
            window_start: now,
            refused_in_window: 0,
        }
    }

    /// The verdict on one more frame: refused past the rate, and
    /// disconnected once more than `flood_refusals` are refused within one
    /// second (0: never).
    pub fn check(&mut self, rate: Rate, flood_refusals: u32, now: Instant) -> Verdict {
        if self.bucket.take(rate, now) {
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if flood_refusals > 0 && self.refused_in_window > flood_refusals {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

/// Whose failed logins a record counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    User(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Instant,
}

/// Limits shared by every core of the node.
pub struct NodeLimits {
    config: LimitsConfig,
    connections: Mutex<HashMap<IpAddr, u32>>,
    failures: Mutex<HashMap<FailureKey, Failures>>,
    registrations: Mutex<HashMap<IpAddr, TokenBucket>>,
}

/// A counted connection from one address; dropping it uncounts it.
pub struct IpSlot {
    limits: Arc<NodeLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut connections = lock(&self.limits.connections);
        if let Some(count) = connections.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                connections.remove(&self.ip);
            }
        }
    }
}

impl NodeLimits {
    /// Empty books for `config`.
    pub fn new(config: LimitsConfig) -> Arc<Self> {
        Arc::new(NodeLimits {
            config,
            connections: Mutex::default(),
            failures: Mutex::default(),
            registrations: Mutex::default(),
        })
    }

    /// Counts a new connection from `ip`, or `None` when the address is at
    /// its cap.
    pub fn open_connection(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let cap = self.config.max_connections_per_ip;
        let mut connections = lock(&self.connections);
        let count = connections.entry(ip).or_insert(0);
        if cap > 0 && *count >= cap {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// `Err(retry_after)` while `username` or `ip` backs off after failed
    /// logins.
    pub fn login_allowed(
        &self,
        username: &str,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        let failures = lock(&self.failures);
        let locked = |key: &FailureKey| {
            failures.get(key).map_or(Duration::ZERO, |f| {
                f.locked_until.saturating_duration_since(now)
            })
        };
        let mut wait = locked(&FailureKey::User(username.to_string()));
        if let Some(ip) = ip {
            wait = wait.max(locked(&FailureKey::Ip(ip)));
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Records a wrong password: past the free attempts, each further
    /// failure doubles the back-off, up to the configured maximum.
    pub fn login_failed(&self, username: &str, ip: Option<IpAddr>, now: Instant) {
        let config = &self.config;
        let mut failures = lock(&self.failures);
        if failures.len() >= MAX_ENTRIES {
            failures.retain(|_, f| now.saturating_duration_since(f.last) < FAILURE_MEMORY);
        }
        let user = (
            FailureKey::User(username.to_string()),
            config.login_failures_per_user,
        );
        let address = ip.map(|ip| (FailureKey::Ip(ip), config.login_failures_per_ip));
        for (key, free) in std::iter::once(user).chain(address) {
            if failures.len() >= MAX_ENTRIES && !failures.contains_key(&key) {
                continue;
            }
            let entry = failures.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: now,
            });
            if now.saturating_duration_since(entry.last) >= FAILURE_MEMORY {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = now;
            if entry.count > free {
                let doublings = (entry.count - free - 1).min(20);
                let backoff = Duration::from_secs(1u64 << doublings)
                    .min(Duration::from_secs(config.login_backoff_max_secs));
                entry.locked_until = now + backoff;
            }
        }
    }

    /// A right password clears its username's record (not its address's:
    /// one good account must not launder an address's guesses).
    pub fn login_succeeded(&self, username: &str) {
        lock(&self.failures).remove(&FailureKey::User(username.to_string()));
    }

    /// Takes one registration from `ip`'s bucket; `Err(retry_after)` when
    /// it is empty.
    pub fn registration_allowed(&self, ip: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let Some(ip) = ip else {
            return Ok(());
        };
        let rate = Rate {
            per_sec: self.config.registrations_per_ip_per_hour / 3600.0,
            burst: self.config.registration_burst,
        };
        let mut buckets = lock(&self.registrations);
        if buckets.len() >= MAX_ENTRIES {
            buckets.retain(|_, bucket| !bucket.is_full(rate, now));
        }
        if buckets.len() >= MAX_ENTRIES && !buckets.contains_key(&ip) {
            return Ok(());
        }
        let bucket = buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(rate, now));
        if bucket.take(rate, now) {
            Ok(())
        } else {
            Err(bucket.wait_for_one(rate))
        }
    }
}

/// The map, even if a thread panicked holding it (the books stay usable;
/// at worst a count is off by one).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_sec: 10.0,
        burst: 5.0,
    };

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(RATE, start);
        assert_eq!((0..10).filter(|_| bucket.take(RATE, start)).count(), 5);
        let later = start + Duration::from_millis(300);
        assert_eq!((0..10).filter(|_| bucket.take(RATE, later)).count(), 3);
        assert!(bucket.wait_for_one(RATE) <= Duration::from_millis(100));
        assert!(bucket.is_full(RATE, later + Duration::from_secs(1)));
    }

    #[test]
    fn modest_excess_is_refused_and_a_flood_disconnects() {
        let start = Instant::now();
        let mut limiter = FrameLimiter::new(RATE, start);
        let verdicts: Vec<_> = (0..8).map(|_| limiter.check(RATE, 5, start)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Allow; 5]);
        assert_eq!(&verdicts[5..], &[Verdict::Refuse; 3]);
        // A new second: the refusal count starts again.
        let next = start + Duration::from_secs(1);
        assert_eq!(limiter.check(RATE, 5, next), Verdict::Allow);
        let flood: Vec<_> = (0..20).map(|_| limiter.check(RATE, 5, next)).collect();
        assert!(flood.contains(&Verdict::Disconnect));
        // 0 never disconnects.
        let mut lenient = FrameLimiter::new(RATE, start);
        assert!((0..100).all(|_| lenient.check(RATE, 0, start) != Verdict::Disconnect));
    }

    fn config() -> LimitsConfig {
        LimitsConfig {
            login_failures_per_user: 2,
            login_failures_per_ip: 4,
            login_backoff_max_secs: 8,
            max_connections_per_ip: 2,
            registration_burst: 2.0,
            registrations_per_ip_per_hour: 3600.0,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn failed_logins_back_off_doubling_and_success_clears_the_user() {
        let limits = NodeLimits::new(config());
        let ip: IpAddr = [10, 0, 0, 1].into();
        let now = Instant::now();
        for _ in 0..2 {
            assert!(limits.login_allowed("eve", Some(ip), now).is_ok());
            limits.login_failed("eve", Some(ip), now);
        }
        assert!(limits.login_allowed("eve", Some(ip), now).is_ok());
        limits.login_failed("eve", Some(ip), now);
        assert_eq!(
            limits.login_allowed("eve", None, now),
            Err(Duration::from_secs(1))
        );
        limits.login_failed("eve", Some(ip), now);
        assert_eq!(
            limits.login_allowed("eve", None, now),
            Err(Duration::from_secs(2))
        );
        // The address has had 4 failures: at its free limit, not over.
        assert!(limits.login_allowed("bob", Some(ip), now).is_ok());
        limits.login_failed("bob", Some(ip), now);
        assert!(limits.login_allowed("carol", Some(ip), now).is_err());
        // The back-off is capped.
        for _ in 0..10 {
            limits.login_failed("eve", None, now);
        }
        assert_eq!(
            limits.login_allowed("eve", None, now),
            Err(Duration::from_secs(8))
        );
        limits.login_succeeded("eve");
        assert!(limits.login_allowed("eve", None, now).is_ok());
        // Forgotten after a quiet spell.
        let later = now + FAILURE_MEMORY;
        limits.login_failed("carol", Some(ip), later);
        assert!(limits.login_allowed("dave", Some(ip), later).is_ok());
    }

    #[test]
    fn connections_per_ip_are_capped_and_released() {
        let limits = NodeLimits::new(config());
        let ip: IpAddr = [10, 0, 0, 2].into();
        let first = limits.open_connection(ip).unwrap();
        let _second = limits.open_connection(ip).unwrap();
        assert!(limits.open_connection(ip).is_none());
        assert!(limits.open_connection([10, 0, 0, 3].into()).is_some());
        drop(first);
        assert!(limits.open_connection(ip).is_some());
    }

    #[test]
    fn registrations_per_ip_follow_their_bucket() {
        let limits = NodeLimits::new(config());
        let ip: IpAddr = [10, 0, 0, 4].into();
        let now = Instant::now();
        assert!(limits.registration_allowed(Some(ip), now).is_ok());
        assert!(limits.registration_allowed(Some(ip), now).is_ok());
        assert!(limits.registration_allowed(Some(ip), now).is_err());
        assert!(limits.registration_allowed(None, now).is_ok());
        assert!(limits
            .registration_allowed(Some(ip), now + Duration::from_secs(1))
            .is_ok());
    }
}
