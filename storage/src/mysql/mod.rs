//! The sharded MySQL backend (mysql_async; MySQL 8 and MariaDB 10.11):
//! the same store traits as the embedded one, over N shards that each hold
//! the whole schema (`scripts/init.sql`) and a slice of the rows. A row's
//! shard is a hash of its owner modulo the shard count: users, devices,
//! cursors, friends and blocks by user id; messages and conversation heads
//! by conversation (a conversation's history lives on one shard, a group's
//! conversation on its group's shard); groups and members by group id; the
//! username index by the name. Reads that span users (search, the
//! conversation list) gather from the shards involved.
//!
//! A batch opens one transaction per shard it touches and commits them all
//! at the end; a failure before the commits rolls every shard back. There
//! is no two-phase commit, so a connection lost *between* two shards'
//! commits can leave the batch half applied: every op is written so that
//! applying it again completes it without doubling anything (upserts,
//! insert-if-absent, monotonic cursors), which is what the callers' retries
//! and the Kafka consumers' replays do.
//!
//! The traits are blocking (they run on worker threads); each reader or
//! writer owns a single-threaded tokio runtime that drives its connections.
//!
//! `shards` holds the connections and transactions, `writer` and `groups`
//! the writes, `reader` and `reads` the reads, `rows` how a row becomes a
//! value.

mod groups;
mod reader;
mod reads;
mod rows;
mod shards;
mod writer;

use mysql_async::{Opts, OptsBuilder};

use ourchat_protocol::ConversationId;

use crate::{Backend, ReadStore, StoreError, WriteStore};
use reader::MysqlReader;
use shards::Shards;
use writer::MysqlWriter;

/// The schema every shard holds; also what operators run by hand.
pub const INIT_SQL: &str = include_str!("../../../scripts/init.sql");

/// The schema version `INIT_SQL` creates.
const SCHEMA_VERSION: i64 = 1;

/// Most ids bound in one `IN (...)` list.
const IN_CHUNK: usize = 500;

/// Where each kind of row lives among `count` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    count: usize,
}

impl Placement {
    /// Placement over `count` shards (at least one).
    pub fn new(count: usize) -> Self {
        Placement {
            count: count.max(1),
        }
    }

    /// The shard of a user's own rows.
    pub fn user(&self, user_id: i64) -> usize {
        // Snowflake ids end in a per-millisecond counter that is mostly
        // zero at low rates: a plain modulo would put nearly everyone on
        // shard 0. The id is mixed first, then taken modulo.
        (mix(user_id as u64) % self.count as u64) as usize
    }

    /// The shard of a group and of its conversation.
    pub fn group(&self, group_id: i64) -> usize {
        self.user(group_id)
    }

    /// The shard of a conversation's messages and head.
    pub fn conversation(&self, conversation_id: &str) -> usize {
        match conversation_id.parse::<ConversationId>() {
            Ok(ConversationId::Group(group_id)) => self.group(group_id),
            Ok(direct) => (mix(direct.shard_hash()) % self.count as u64) as usize,
            Err(_) => (fnv1a(conversation_id.as_bytes()) % self.count as u64) as usize,
        }
    }

    /// The shard of the username index entry.
    pub fn username(&self, username: &str) -> usize {
        (fnv1a(username.as_bytes()) % self.count as u64) as usize
    }
}

fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl From<mysql_async::Error> for StoreError {
    fn from(err: mysql_async::Error) -> Self {
        use mysql_async::Error as E;
        match &err {
            E::Io(_) | E::Driver(_) => StoreError::Unavailable {
                message: err.to_string(),
                retryable: true,
            },
            // Deadlock and lock wait timeout: the transaction was rolled
            // back and may simply be run again.
            E::Server(server) => StoreError::Unavailable {
                message: err.to_string(),
                retryable: matches!(server.code, 1205 | 1213),
            },
            E::Url(_) | E::Other(_) => StoreError::Unavailable {
                message: err.to_string(),
                retryable: false,
            },
        }
    }
}

/// The shards of one deployment: where to connect, and optional read
/// replicas for history and search.
#[derive(Debug, Clone)]
pub struct MysqlBackend {
    primaries: Vec<Opts>,
    replicas: Vec<Option<Opts>>,
}

impl MysqlBackend {
    /// Connects to every shard (`mysql://user:pass@host:port/db` each),
    /// creating the schema where it is missing and refusing a shard whose
    /// schema is newer than this build. `replicas[i]`, when present and not
    /// empty, serves shard `i`'s history and search reads.
    pub fn connect(shards: &[String], replicas: &[String]) -> Result<Self, StoreError> {
        if shards.is_empty() {
            return Err(StoreError::Unavailable {
                message: "no MySQL shards configured (storage.mysql_shards)".into(),
                retryable: false,
            });
        }
        let opts_of = |url: &str| -> Result<Opts, StoreError> {
            let opts = Opts::from_url(url).map_err(|e| StoreError::Unavailable {
                message: format!("bad MySQL URL: {e}"),
                retryable: false,
            })?;
            // UPDATE reports rows matched, not rows changed: "no such row"
            // must not be confused with "already so".
            Ok(OptsBuilder::from_opts(opts)
                .client_found_rows(true)
                .stmt_cache_size(128)
                // The same rules on MySQL 8 and MariaDB, whatever the server
                // default: too-long data is an error, and `\` escapes in
                // LIKE patterns.
                .init(vec![
                    "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'",
                ])
                .into())
        };
        let primaries = shards
            .iter()
            .map(|url| opts_of(url))
            .collect::<Result<Vec<_>, _>>()?;
        let replicas = (0..primaries.len())
            .map(|i| match replicas.get(i).map(|s| s.trim()) {
                Some(url) if !url.is_empty() => opts_of(url).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let backend = MysqlBackend {
            primaries,
            replicas,
        };
        let mut shards = backend.shards(false)?;
        let runtime = runtime()?;
        runtime.block_on(shards.create_schema())?;
        Ok(backend)
    }

    /// How rows are placed over this backend's shards.
    pub fn placement(&self) -> Placement {
        Placement::new(self.primaries.len())
    }

    fn shards(&self, replicas: bool) -> Result<Shards, StoreError> {
        let opts = if replicas {
            self.primaries
                .iter()
                .zip(&self.replicas)
                .map(|(primary, replica)| replica.clone().unwrap_or_else(|| primary.clone()))
                .collect()
        } else {
            self.primaries.clone()
        };
        Ok(Shards::new(opts))
    }
}

impl Backend for MysqlBackend {
    fn writer(&self) -> Result<Box<dyn WriteStore>, StoreError> {
        Ok(Box::new(MysqlWriter {
            runtime: runtime()?,
            shards: self.shards(false)?,
        }))
    }

    fn reader(&self) -> Result<Box<dyn ReadStore>, StoreError> {
        let has_replicas = self.replicas.iter().any(Option::is_some);
        Ok(Box::new(MysqlReader {
            runtime: runtime()?,
            primary: self.shards(false)?,
            replica: if has_replicas {
                Some(self.shards(true)?)
            } else {
                None
            },
            replica_resting_until: None,
        }))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::shards::schema_statements;
    use super::*;

    #[test]
    fn placement_spreads_snowflake_ids_and_keeps_a_group_with_its_conversation() {
        let placement = Placement::new(2);
        // Snowflake-like ids: same millisecond counter bits (zero), ids
        // differ in the time part only.
        let counts = (0..1000i64)
            .map(|ms| placement.user((ms << 22) | (1 << 12)))
            .fold([0usize; 2], |mut acc, shard| {
                acc[shard] += 1;
                acc
            });
        assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
        let group = 7_000_000_123i64;
        let conversation = ConversationId::Group(group).to_string();
        assert_eq!(
            placement.conversation(&conversation),
            placement.group(group)
        );
    }

    #[test]
    fn init_sql_splits_into_statements() {
        let statements = schema_statements();
        assert!(statements.len() >= 14, "{}", statements.len());
        assert!(statements.iter().all(|s| !s.contains("--")));
    }
}
