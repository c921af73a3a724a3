//! Typed configuration. Every key has a default, so `ourchat serve` with no
//! file runs on the embedded store in `./data`. Sources, later winning:
//! defaults, the TOML file (`--config`), `OURCHAT_<SECTION>__<KEY>`
//! environment variables, then flags (named ones, or `--set section.key=value`
//! for any key). `validate()` runs after all of them.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// CPU numbers at or above this are refused (Linux's cpu_set_t size).
const MAX_CPU: usize = 1024;

/// Prefix of environment overrides: `OURCHAT_SERVER__LISTEN=...` sets
/// `server.listen`.
pub const ENV_PREFIX: &str = "OURCHAT_";

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A source is not valid TOML or a value has the wrong type.
    #[error("invalid config: {0}")]
    Parse(String),
    /// Values are well-formed but unusable together.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client listener and connection rules.
    pub server: ServerConfig,
    /// Where and how messages are stored.
    pub storage: StorageConfig,
    /// Passwords and tokens.
    pub auth: AuthConfig,
    /// TLS for clients and gRPC.
    pub tls: TlsConfig,
    /// Abuse limits.
    pub limits: LimitsConfig,
    /// Several nodes on Redis and Kafka (off: one node on its own).
    pub cluster: ClusterConfig,
}

/// Cluster mode: every node of a deployment shares the MySQL shards
/// (`storage.backend = "mysql"`), one Redis and one Kafka. Sequence numbers
/// come from Redis; accepted messages go to Kafka (the sender's ack means
/// Kafka has them), from which MySQL is written and other nodes deliver to
/// their own connections. `config/cluster.toml` is a worked example.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// On or off.
    pub enabled: bool,
    /// `redis://host:port` (persistent: `appendonly yes`).
    pub redis: String,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub kafka: String,
    /// Put before the topic names and the feeders' consumer group, so that
    /// several deployments can share one Kafka ("": the standard names).
    pub topic_prefix: String,
    /// Partitions of each topic when this node creates them.
    pub partitions: i32,
    /// A send Kafka has not acknowledged within this fails (not acked).
    pub send_timeout_ms: u64,
    /// How long a resend is recognised on any node.
    pub dedupe_ttl_secs: u64,
    /// Threads talking to Redis.
    pub redis_threads: usize,
    /// Most log records written to MySQL in one batch.
    pub store_batch: usize,
    /// `false`: every node's feeder writes the whole log to MySQL (each in
    /// its own consumer group; writing a record twice is a no-op), so the
    /// log keeps reaching MySQL while any one node lives. `true`: the nodes
    /// split the log in one consumer group (less MySQL work), which needs a
    /// broker that hands a dead member's partitions to the living: Kafka
    /// does; tansu 0.6 does not.
    pub shared_feeder: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            redis: String::new(),
            kafka: String::new(),
            topic_prefix: String::new(),
            partitions: 8,
            send_timeout_ms: 5_000,
            dedupe_ttl_secs: 86_400,
            redis_threads: 2,
            store_batch: 1_000,
            shared_feeder: false,
        }
    }
}

/// Abuse limits; "Security" in the README explains each. Every refusal is
/// counted in `ourchat_limited_total{limit=...}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Frames (of any kind) one connection may send per second...
    pub frames_per_sec: f64,
    /// ...and in a burst after a quiet spell. Past it: RATE_LIMITED.
    pub frame_burst: f64,
    /// Messages one user may send per second (per core their devices are
    /// on; in cluster mode also across every node)...
    pub user_sends_per_sec: f64,
    /// ...and in a burst.
    pub user_send_burst: f64,
    /// Refusals within one second after which a connection is closed as a
    /// flood; 0 = never.
    pub flood_refusals_per_sec: u32,
    /// Wrong passwords for one username before logins for it back off
    /// (1 s, doubling per further failure).
    pub login_failures_per_user: u32,
    /// Wrong passwords from one address before its logins back off.
    pub login_failures_per_ip: u32,
    /// Longest login back-off, seconds.
    pub login_backoff_max_secs: u64,
    /// Registrations one address may make per hour...
    pub registrations_per_ip_per_hour: f64,
    /// ...and in a burst.
    pub registration_burst: f64,
    /// Concurrent connections from one address (plain and TLS); 0 = no cap.
    pub max_connections_per_ip: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            frames_per_sec: 200.0,
            frame_burst: 400.0,
            user_sends_per_sec: 100.0,
            user_send_burst: 200.0,
            flood_refusals_per_sec: 100,
            login_failures_per_user: 5,
            login_failures_per_ip: 50,
            login_backoff_max_secs: 900,
            registrations_per_ip_per_hour: 60.0,
            registration_burst: 20.0,
            max_connections_per_ip: 1000,
        }
    }
}

impl LimitsConfig {
    /// The per-connection frame rate.
    pub fn frame_rate(&self) -> crate::limits::Rate {
        crate::limits::Rate {
            per_sec: self.frames_per_sec,
            burst: self.frame_burst,
        }
    }

    /// The per-user send rate.
    pub fn user_send_rate(&self) -> crate::limits::Rate {
        crate::limits::Rate {
            per_sec: self.user_sends_per_sec,
            burst: self.user_send_burst,
        }
    }
}

/// TLS for clients, gRPC and WebSocket. Off until `listen` (client TLS),
/// `grpc` or `ws` is set; all use the same certificate and key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Client TLS address beside the plain one (e.g. `0.0.0.0:50443`),
    /// bound per core like it; empty = no TLS listener.
    pub listen: String,
    /// PEM certificate chain, leaf first (`ourchat gen-cert` writes one).
    pub cert_file: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key_file: PathBuf,
    /// Serve gRPC over TLS (on `server.grpc_listen`) with the same pair.
    pub grpc: bool,
    /// Serve the WebSocket listener (`server.ws_listen`) as WSS with the
    /// same pair.
    pub ws: bool,
}

impl TlsConfig {
    /// Whether anything uses the certificate.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || self.grpc || self.ws
    }
}

/// Client listener and connection rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Client TCP address; every core binds it with SO_REUSEPORT (seed's port 50003).
    pub listen: SocketAddr,
    /// Admin HTTP address for /metrics, /healthz, /readyz; empty = off.
    /// Loopback by default: metrics are for operators, not the internet.
    pub admin_listen: String,
    /// Reactor cores; 0 = one per CPU.
    pub cores: usize,
    /// Pin each reactor to its own CPU. Turn off when sharing a box with a loadgen.
    pub pin_cores: bool,
    /// Exact CPUs for the reactors, one each (empty: spread automatically).
    /// Sets the core count when `cores` is 0.
    pub reactor_cpus: Vec<usize>,
    /// io_uring submission-queue depth per reactor. Large on purpose: the
    /// kernel sizes the hash table it searches on every cancel (glommio
    /// cancels a timer each reactor loop) from the completion-queue size,
    /// and every idle connection's readiness poll sits in that table; at
    /// glommio's default of 128 it has 8 buckets, at 4096 the maximum 256.
    pub ring_depth: usize,
    /// Messages each core may have queued to each other core. A full
    /// channel makes a sending connection wait (backpressure); a core's own
    /// traffic (deliveries, answers) queues behind it in order instead.
    pub mesh_capacity: usize,
    /// This node's number (0..128), part of every id it mints.
    pub node_id: u16,
    /// Largest accepted frame body in bytes; larger is a protocol error.
    pub max_frame_bytes: usize,
    /// Largest message content in bytes.
    pub max_content_bytes: usize,
    /// Largest media file a message may point at, bytes.
    pub max_media_bytes: u64,
    /// How long after sending a user may recall a message, seconds.
    pub recall_window_secs: u64,
    /// Most members a group may have.
    pub max_group_members: usize,
    /// gRPC address serving the six services; empty = off.
    pub grpc_listen: String,
    /// WebSocket address for browsers (the upgrade at `/ws`; one binary
    /// message = one envelope); every core binds it; empty = off.
    pub ws_listen: String,
    /// Page origins (`https://chat.example`) allowed to open a WebSocket
    /// besides the node's own (the host the browser asked for).
    pub ws_allowed_origins: Vec<String>,
    /// A built web app's folder (with `index.html`), served on the
    /// WebSocket listener's port; empty = none.
    pub web_root: String,
    /// Time a new connection has to log in, in milliseconds.
    pub login_timeout_ms: u64,
    /// Heartbeat interval told to clients, in seconds.
    pub heartbeat_secs: u32,
    /// A logged-in connection silent for this long is closed, in seconds.
    pub idle_timeout_secs: u64,
    /// A logged-in plain-TCP connection silent for this long is parked
    /// (kept as its bare socket, no task) until it reads or is written
    /// to, in milliseconds; 0 = never.
    pub park_after_ms: u64,
    /// Move a plain-TCP connection to its user's core at login, so that
    /// the user's pushes never cross cores (needs parking on).
    pub move_to_user_core: bool,
    /// Frames queued for one connection before it is closed as a slow reader.
    pub outbound_queue_frames: usize,
    /// Sends one connection may have awaiting their ack; past it the
    /// connection is not read until acks come back.
    pub max_inflight_sends: usize,
    /// Seconds to wait at shutdown for connections and writes to drain.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 50003)),
            admin_listen: "127.0.0.1:50090".into(),
            cores: 0,
            pin_cores: true,
            reactor_cpus: Vec::new(),
            ring_depth: 4096,
            mesh_capacity: 4096,
            node_id: 0,
            max_frame_bytes: ourchat_protocol::DEFAULT_MAX_FRAME,
            max_content_bytes: 16 * 1024,
            max_media_bytes: 1 << 30,
            recall_window_secs: 120,
            max_group_members: 10_000,
            grpc_listen: "0.0.0.0:50051".into(),
            ws_listen: String::new(),
            ws_allowed_origins: Vec::new(),
            web_root: String::new(),
            login_timeout_ms: 10_000,
            heartbeat_secs: 30,
            idle_timeout_secs: 90,
            park_after_ms: 10_000,
            move_to_user_core: true,
            outbound_queue_frames: 1024,
            max_inflight_sends: 256,
            shutdown_grace_secs: 5,
        }
    }
}

/// Where and how messages are stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Which store: the embedded one (message log + SQLite), the older
    /// SQLite-only one, or sharded MySQL.
    pub backend: StoreKind,
    /// Directory of the embedded store (created if missing); with MySQL it
    /// still holds the node's generated token key.
    pub data_dir: PathBuf,
    /// MySQL shards, `mysql://user:password@host:port/database` each; the
    /// order is the placement, so never reorder a deployment's list.
    pub mysql_shards: Vec<String>,
    /// Read replica per shard (same order; "" for none) for history and
    /// search.
    pub mysql_replicas: Vec<String>,
    /// `full`: an ack survives power loss (fsync per batch). `normal`: an
    /// ack survives a process crash only.
    pub durability: Durability,
    /// Ops waiting for the writer before connections are pushed back.
    pub writer_queue: usize,
    /// Most ops committed in one transaction.
    pub max_batch: usize,
    /// Group commit: while ops come fast enough that two more are
    /// expected meanwhile, the writer waits this long (µs) after a batch's
    /// first op so that they share its fdatasync (0: never).
    pub commit_linger_us: u64,
    /// Reader threads (history, sync, logins).
    pub readers: usize,
    /// Recent sends per conversation kept to answer resends without a read.
    pub dedupe_window: usize,
    /// Conversations whose sequencer state a core keeps in memory.
    pub max_conversations_per_core: usize,
    /// CPUs the writer, reader and hashing threads may run on (empty: any).
    pub worker_cpus: Vec<usize>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StoreKind::Embedded,
            data_dir: PathBuf::from("./data"),
            mysql_shards: Vec::new(),
            mysql_replicas: Vec::new(),
            durability: Durability::Full,
            writer_queue: 65_536,
            max_batch: 4_096,
            commit_linger_us: 1_000,
            readers: 2,
            dedupe_window: 128,
            max_conversations_per_core: 200_000,
            worker_cpus: Vec::new(),
        }
    }
}

/// See [`StorageConfig::backend`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Under `data_dir`: messages, cursors and read marks in the message
    /// log (`messages/`), accounts, friends and groups in `ourchat.db`.
    Embedded,
    /// Everything in `ourchat.db` (the store before the message log; kept
    /// for comparison and for directories not yet moved to the log).
    Sqlite,
    /// `mysql_shards`.
    Mysql,
}

/// See [`StorageConfig::durability`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync every commit.
    Full,
    /// fsync at checkpoints.
    Normal,
}

/// Passwords and tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC key for tokens (HS256). Empty: a random key is generated once
    /// and kept in `<data_dir>/jwt.secret`.
    pub jwt_secret: String,
    /// Former `jwt_secret`s: tokens they signed stay valid until they
    /// expire. Rotate by moving the old secret here and setting a new one.
    pub jwt_retired_secrets: Vec<String>,
    /// Token lifetime in seconds.
    pub token_ttl_secs: u64,
    /// Password hashing threads; 0 = one per reactor core.
    pub hash_threads: usize,
    /// Devices one user may have; logging in on one more signs the least
    /// recently seen out (its token is revoked).
    pub max_devices_per_user: usize,
    /// Friends one user may have; accepting past it is refused.
    pub max_friends: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            jwt_retired_secrets: Vec::new(),
            token_ttl_secs: 7 * 24 * 3600,
            hash_threads: 0,
            max_devices_per_user: 10,
            max_friends: 5_000,
        }
    }
}

impl Config {
    /// Builds the configuration from an optional file, the environment
    /// (`(name, value)` pairs, injectable in tests) and `key=value` overrides.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            // Only OURCHAT_<SECTION>__<KEY>: other OURCHAT_* variables
            // (OURCHAT_CONFIG, the CLI's OURCHAT_SERVER) are not config keys.
            let Some(key) = name.strip_prefix(ENV_PREFIX).filter(|k| k.contains("__")) else {
                continue;
            };
            let path = key.to_ascii_lowercase().replace("__", ".");
            set_key(&mut table, &path, &value)?;
        }
        for (key, value) in overrides {
            set_key(&mut table, key, value)?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let s = &self.server;
        if !s.admin_listen.is_empty() && s.admin_listen.parse::<SocketAddr>().is_err() {
            return invalid("server.admin_listen must be host:port (or empty for off)");
        }
        if s.max_frame_bytes < 256 || s.max_frame_bytes > 16 << 20 {
            return invalid("server.max_frame_bytes must be within 256 B..16 MiB");
        }
        if s.max_content_bytes == 0 || s.max_content_bytes + 512 > s.max_frame_bytes {
            return invalid("server.max_content_bytes must be > 0 and leave 512 B of the frame");
        }
        if s.node_id >= ourchat_protocol::ids::MAX_NODES {
            return invalid("server.node_id must be below 128");
        }
        // The last id-generator slot is kept for admin tools.
        if s.cores >= usize::from(ourchat_protocol::ids::MAX_CORES) {
            return invalid("server.cores must be at most 63");
        }
        if s.login_timeout_ms == 0 || s.idle_timeout_secs == 0 || s.heartbeat_secs == 0 {
            return invalid("timeouts and heartbeat must be positive");
        }
        if u64::from(s.heartbeat_secs) >= s.idle_timeout_secs {
            return invalid("server.idle_timeout_secs must exceed server.heartbeat_secs");
        }
        if !(8..=32_768).contains(&s.ring_depth) || !s.ring_depth.is_power_of_two() {
            return invalid("server.ring_depth must be a power of two in 8..=32768");
        }
        if s.mesh_capacity == 0 {
            return invalid("server.mesh_capacity must be positive");
        }
        if s.outbound_queue_frames == 0 || s.max_inflight_sends == 0 {
            return invalid("queue bounds must be positive");
        }
        // A connection's outbox keeps both as u16 (every connection holds one).
        if s.outbound_queue_frames > u16::MAX as usize || s.max_inflight_sends > u16::MAX as usize {
            return invalid(
                "server.outbound_queue_frames and server.max_inflight_sends must be at most 65535",
            );
        }
        let st = &self.storage;
        if st.writer_queue == 0 || st.max_batch == 0 || st.readers == 0 {
            return invalid("storage.writer_queue, max_batch and readers must be positive");
        }
        if st.commit_linger_us > 100_000 {
            return invalid("storage.commit_linger_us must be at most 100000 (0.1 s)");
        }
        // Whether each CPU is online is checked at start, on the machine
        // that runs; here only what no machine has.
        if let Some(cpu) = s
            .reactor_cpus
            .iter()
            .chain(&st.worker_cpus)
            .find(|cpu| **cpu >= MAX_CPU)
        {
            return Err(ConfigError::Invalid(format!(
                "cpu {cpu} is beyond {MAX_CPU}"
            )));
        }
        if !s.reactor_cpus.is_empty() && s.cores != 0 && s.cores != s.reactor_cpus.len() {
            return invalid("server.reactor_cpus must list exactly server.cores CPUs");
        }
        let c = &self.cluster;
        if c.enabled {
            if st.backend != StoreKind::Mysql {
                return invalid("cluster.enabled needs storage.backend = \"mysql\"");
            }
            if c.redis.is_empty() || c.kafka.is_empty() {
                return invalid("cluster.enabled needs cluster.redis and cluster.kafka");
            }
            if c.partitions < 1 || c.redis_threads == 0 || c.store_batch == 0 {
                return invalid(
                    "cluster.partitions, redis_threads and store_batch must be positive",
                );
            }
        }
        if st.backend == StoreKind::Mysql && st.mysql_shards.is_empty() {
            return invalid("storage.backend = \"mysql\" needs storage.mysql_shards");
        }
        if st.max_conversations_per_core < 16 {
            return invalid("storage.max_conversations_per_core must be at least 16");
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 16 {
            return invalid("auth.jwt_secret must be at least 16 bytes");
        }
        if self.auth.max_friends == 0 {
            return invalid("auth.max_friends must be at least 1");
        }
        if self.auth.max_devices_per_user == 0 {
            return invalid("auth.max_devices_per_user must be at least 1");
        }
        let tls = &self.tls;
        if !tls.listen.is_empty() && tls.listen.parse::<SocketAddr>().is_err() {
            return invalid("tls.listen must be host:port (or empty for off)");
        }
        if tls.enabled()
            && (tls.cert_file.as_os_str().is_empty() || tls.key_file.as_os_str().is_empty())
        {
            return invalid("tls.cert_file and tls.key_file are required when TLS is on");
        }
        if tls.grpc && s.grpc_listen.is_empty() {
            return invalid("tls.grpc needs server.grpc_listen");
        }
        if tls.ws && s.ws_listen.is_empty() {
            return invalid("tls.ws needs server.ws_listen");
        }
        if !s.web_root.is_empty() && s.ws_listen.is_empty() {
            return invalid("server.web_root is served on server.ws_listen: set it too");
        }
        let l = &self.limits;
        let rates = [
            l.frames_per_sec,
            l.frame_burst,
            l.user_sends_per_sec,
            l.user_send_burst,
            l.registrations_per_ip_per_hour,
            l.registration_burst,
        ];
        if rates.iter().any(|r| !r.is_finite() || *r <= 0.0) {
            return invalid("limits: rates and bursts must be positive numbers");
        }
        if l.frame_burst < 1.0 || l.user_send_burst < 1.0 || l.registration_burst < 1.0 {
            return invalid("limits: bursts must be at least 1");
        }
        if l.login_backoff_max_secs == 0 {
            return invalid("limits.login_backoff_max_secs must be positive");
        }
        if self.auth.token_ttl_secs == 0 {
            return invalid("auth.token_ttl_secs must be positive");
        }
        Ok(())
    }

    /// Reactor cores to run: the configured count, or one per CPU.
    pub fn core_count(&self) -> usize {
        if !self.server.reactor_cpus.is_empty() {
            return self.server.reactor_cpus.len();
        }
        match self.server.cores {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(usize::from(ourchat_protocol::ids::MAX_CORES) - 1),
            n => n,
        }
    }
}

/// Sets `a.b=value` in `table`. The value is read as TOML when it parses
/// (numbers, booleans, arrays) and as a plain string otherwise.
fn set_key(table: &mut toml::Table, path: &str, value: &str) -> Result<(), ConfigError> {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop().filter(|k| !k.is_empty()) else {
        return Err(ConfigError::Parse(format!("empty config key in {path:?}")));
    };
    let mut node = table;
    for part in parts {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::Parse(format!("{path}: {part} is not a section")))?;
    }
    node.insert(last.to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let config = Config::load(None, [], &[]).unwrap();
        assert_eq!(config.server.listen.port(), 50003);
        assert_eq!(config.storage.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/ourchat.toml");
        let example = Config::load(Some(std::path::Path::new(path)), [], &[]).unwrap();
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&example).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
    }

    #[test]
    fn the_cluster_example_is_valid_and_cluster_mode_needs_its_engines() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/cluster.toml");
        let example = Config::load(Some(std::path::Path::new(path)), [], &[]).unwrap();
        assert!(example.cluster.enabled);
        assert_eq!(example.storage.backend, StoreKind::Mysql);
        assert_eq!(example.storage.mysql_shards.len(), 2);
        let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for refused in [
            set(&[("cluster.enabled", "true")]),
            set(&[
                ("cluster.enabled", "true"),
                ("storage.backend", "mysql"),
                ("storage.mysql_shards", "[\"mysql://u:p@h/db\"]"),
            ]),
            set(&[("storage.backend", "mysql")]),
        ] {
            assert!(
                matches!(
                    Config::load(None, [], &refused),
                    Err(ConfigError::Invalid(_))
                ),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\ncores = 3\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let env = [
            ("OURCHAT_SERVER__CORES".to_string(), "2".to_string()),
            (
                "OURCHAT_STORAGE__DATA_DIR".to_string(),
                "/tmp/x".to_string(),
            ),
            ("UNRELATED".to_string(), "1".to_string()),
            ("OURCHAT_CONFIG".to_string(), "/elsewhere.toml".to_string()),
            ("OURCHAT_TEST_LOG".to_string(), "1".to_string()),
        ];
        let flags = [("server.cores".to_string(), "1".to_string())];
        let config = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(config.server.cores, 1);
        assert_eq!(config.server.listen.port(), 1);
        assert_eq!(config.storage.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let bad = [("server.cores".to_string(), "lots".to_string())];
        assert!(Config::load(None, [], &bad).is_err());
        let unknown = [("server.colour".to_string(), "1".to_string())];
        let err = Config::load(None, [], &unknown).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        let invalid = [("server.heartbeat_secs".to_string(), "500".to_string())];
        assert!(matches!(
            Config::load(None, [], &invalid),
            Err(ConfigError::Invalid(_))
        ));
        for key in ["server.outbound_queue_frames", "server.max_inflight_sends"] {
            let too_many = [(key.to_string(), "65536".to_string())];
            let err = Config::load(None, [], &too_many).unwrap_err().to_string();
            assert!(err.contains("65535"), "{err}");
            let most = [(key.to_string(), "65535".to_string())];
            assert!(Config::load(None, [], &most).is_ok(), "{key}");
        }
    }
}
