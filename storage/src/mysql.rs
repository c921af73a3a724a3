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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use mysql_async::prelude::{FromRow, FromValue, Queryable};
use mysql_async::{Conn, Opts, OptsBuilder, Params, Row, Value};
use prost::Message;

use crate::{
    content_fingerprint, Account, Backend, ChatMessage, ConversationCursor, ConversationHead,
    ConversationRow, Device, FriendRequestRow, GroupChange, GroupMemberRow, GroupRole, GroupRoster,
    GroupRow, ReadStore, RecentSend, Relation, SentBefore, StoreError, Stored, Visibility, WriteOp,
    WriteOutcome, WriteStore, SEND_COLUMNS,
};
use ourchat_protocol::ConversationId;

/// The schema every shard holds; also what operators run by hand.
pub const INIT_SQL: &str = include_str!("../../scripts/init.sql");

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

/// One connection per shard, opened on first use and reopened after a
/// connection-level failure; optionally a transaction per shard.
struct Shards {
    placement: Placement,
    opts: Vec<Opts>,
    conns: Vec<Option<Conn>>,
    in_transaction: Vec<bool>,
    transactional: bool,
}

impl Shards {
    fn new(opts: Vec<Opts>) -> Self {
        let count = opts.len();
        Shards {
            placement: Placement::new(count),
            opts,
            conns: (0..count).map(|_| None).collect(),
            in_transaction: vec![false; count],
            transactional: false,
        }
    }

    async fn conn(&mut self, shard: usize) -> Result<&mut Conn, StoreError> {
        let Some(slot) = self.conns.get_mut(shard) else {
            return Err(StoreError::Corrupt(format!("no shard {shard}")));
        };
        if slot.is_none() {
            let opts = self.opts.get(shard).cloned().unwrap_or_default();
            *slot = Some(Conn::new(opts).await?);
        }
        let conn = slot
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("connection vanished".into()))?;
        if self.transactional && !self.in_transaction[shard] {
            conn.query_drop("START TRANSACTION").await?;
            self.in_transaction[shard] = true;
        }
        Ok(conn)
    }

    /// Forgets connections that failed below SQL, so the next call dials
    /// again (a restarted MySQL must not need a restarted node).
    fn after_error(&mut self, error: &StoreError) {
        if error.is_retryable() {
            for slot in &mut self.conns {
                *slot = None;
            }
            self.in_transaction.fill(false);
        }
    }

    /// Runs a statement; rows affected (matched, for UPDATE).
    async fn exec(
        &mut self,
        shard: usize,
        sql: &str,
        params: impl Into<Params> + Send,
    ) -> Result<u64, StoreError> {
        let conn = self.conn(shard).await?;
        conn.exec_drop(sql, params).await?;
        Ok(conn.affected_rows())
    }

    /// Runs an INSERT; `false` when it hit an existing key (error 1062,
    /// which rolls back only the statement, not the transaction). Unlike
    /// `INSERT IGNORE` this keeps strict mode: too-long data is an error,
    /// never a silent truncation.
    async fn insert_new(
        &mut self,
        shard: usize,
        sql: &str,
        params: impl Into<Params> + Send,
    ) -> Result<bool, StoreError> {
        let conn = self.conn(shard).await?;
        match conn.exec_drop(sql, params).await {
            Ok(()) => Ok(true),
            Err(mysql_async::Error::Server(e)) if e.code == 1062 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn rows<T: FromRow + Send + 'static>(
        &mut self,
        shard: usize,
        sql: &str,
        params: impl Into<Params> + Send,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.conn(shard).await?;
        Ok(conn.exec(sql, params).await?)
    }

    async fn first<T: FromRow + Send + 'static>(
        &mut self,
        shard: usize,
        sql: &str,
        params: impl Into<Params> + Send,
    ) -> Result<Option<T>, StoreError> {
        let conn = self.conn(shard).await?;
        Ok(conn.exec_first(sql, params).await?)
    }

    async fn commit_all(&mut self) -> Result<(), StoreError> {
        for shard in 0..self.conns.len() {
            if self.in_transaction[shard] {
                if let Some(conn) = self.conns[shard].as_mut() {
                    conn.query_drop("COMMIT").await?;
                }
                self.in_transaction[shard] = false;
            }
        }
        Ok(())
    }

    async fn rollback_all(&mut self) {
        for shard in 0..self.conns.len() {
            if self.in_transaction[shard] {
                if let Some(conn) = self.conns[shard].as_mut() {
                    if conn.query_drop("ROLLBACK").await.is_err() {
                        self.conns[shard] = None;
                    }
                }
                self.in_transaction[shard] = false;
            }
        }
    }

    async fn create_schema(&mut self) -> Result<(), StoreError> {
        for shard in 0..self.opts.len() {
            create_database_if_missing(&self.opts[shard]).await?;
            let conn = self.conn(shard).await?;
            for statement in schema_statements() {
                conn.query_drop(statement).await?;
            }
            let version: Option<i64> = conn
                .query_first("SELECT version FROM ourchat_schema WHERE id = 1")
                .await?;
            if let Some(version) = version.filter(|v| *v > SCHEMA_VERSION) {
                return Err(StoreError::Corrupt(format!(
                    "shard {shard} has schema version {version}, newer than this build knows \
                     ({SCHEMA_VERSION})"
                )));
            }
        }
        Ok(())
    }
}

/// Creates the shard's database when the server says it does not exist
/// (error 1049) and the account may create it; any other failure is left
/// for the real connection to report.
async fn create_database_if_missing(opts: &Opts) -> Result<(), StoreError> {
    let Some(name) = opts.db_name() else {
        return Ok(());
    };
    match Conn::new(opts.clone()).await {
        Ok(conn) => {
            let _ = conn.disconnect().await;
            Ok(())
        }
        Err(mysql_async::Error::Server(e)) if e.code == 1049 => {
            if name.contains('`') {
                return Err(StoreError::Unavailable {
                    message: format!("unusable database name {name:?}"),
                    retryable: false,
                });
            }
            let server = OptsBuilder::from_opts(opts.clone()).db_name(None::<String>);
            let mut conn = Conn::new(server).await?;
            conn.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .await?;
            let _ = conn.disconnect().await;
            tracing::info!(database = name, "created the shard's database");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The statements of `INIT_SQL`, comments dropped first (they may hold
/// semicolons).
fn schema_statements() -> Vec<String> {
    let code: String = INIT_SQL
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    code.split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_string)
        .collect()
}

/// `?, ?, ?` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn column<T: FromValue>(row: &mut Row, index: usize) -> Result<T, StoreError> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(StoreError::Corrupt(format!("column {index}: {e}"))),
        None => Err(StoreError::Corrupt(format!("column {index} missing"))),
    }
}

fn payload<T: Message + Default>(row: &mut Row, index: usize) -> Result<Option<T>, StoreError> {
    let bytes: Option<Vec<u8>> = column(row, index)?;
    bytes
        .map(|b| {
            T::decode(b.as_slice())
                .map_err(|e| StoreError::Corrupt(format!("payload column {index}: {e}")))
        })
        .transpose()
}

const MESSAGE_COLUMNS: &str = "conversation_id, seq, server_msg_id, sender_id, receiver_id,
    message_type, content, client_message_id, sent_at_ms, sender_device, media, location, recalled,
    group_event";

fn message_from_row(mut row: Row) -> Result<ChatMessage, StoreError> {
    let conversation_id: String = column(&mut row, 0)?;
    let group_id = match conversation_id.parse::<ConversationId>() {
        Ok(ConversationId::Group(group_id)) => group_id,
        _ => 0,
    };
    Ok(ChatMessage {
        group_id,
        seq: column(&mut row, 1)?,
        server_msg_id: column(&mut row, 2)?,
        sender_id: column(&mut row, 3)?,
        receiver_id: column(&mut row, 4)?,
        message_type: column(&mut row, 5)?,
        content: column(&mut row, 6)?,
        client_message_id: column(&mut row, 7)?,
        sent_at_ms: column(&mut row, 8)?,
        sender_device: column(&mut row, 9)?,
        media: payload(&mut row, 10)?,
        location: payload(&mut row, 11)?,
        recalled: column(&mut row, 12)?,
        group_event: payload(&mut row, 13)?,
        conversation_id,
    })
}

const ACCOUNT_COLUMNS: &str =
    "user_id, username, password_hash, nickname, phone, email, avatar_url, signature";

type AccountTuple = (i64, String, String, String, String, String, String, String);

fn account_from(t: AccountTuple) -> Account {
    Account {
        user_id: t.0,
        username: t.1,
        password_hash: t.2,
        nickname: t.3,
        phone: t.4,
        email: t.5,
        avatar_url: t.6,
        signature: t.7,
    }
}

const DEVICE_COLUMNS: &str = "device_id, device_type, last_seen_ms, token_epoch, signed_out";

fn device_from(t: (String, String, i64, i64, bool)) -> Device {
    Device {
        device_id: t.0,
        device_type: t.1,
        last_seen_ms: t.2,
        token_epoch: t.3,
        signed_out: t.4,
    }
}

/// A group and the viewer's role: binds (viewer, group_id).
const GROUP_SELECT: &str = "SELECT g.group_id, g.name, g.description, g.avatar_url, g.owner_id,
    (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.group_id), g.created_at_ms,
    g.dissolved, (SELECT role FROM group_members v WHERE v.group_id = g.group_id AND v.user_id = ?)
    FROM chat_groups g WHERE g.group_id = ?";

type GroupTuple = (
    i64,
    String,
    String,
    String,
    i64,
    u32,
    i64,
    bool,
    Option<i32>,
);

fn group_from(t: GroupTuple) -> GroupRow {
    GroupRow {
        group_id: t.0,
        name: t.1,
        description: t.2,
        avatar_url: t.3,
        owner_id: t.4,
        member_count: t.5,
        created_at_ms: t.6,
        dissolved: t.7,
        viewer_role: t.8.map(GroupRole::from_i32),
    }
}

struct MysqlWriter {
    runtime: tokio::runtime::Runtime,
    shards: Shards,
}

/// What one writer transaction does.
enum Work<'o> {
    Batch(&'o [WriteOp]),
    Log(&'o [ChatMessage]),
}

impl MysqlWriter {
    /// Runs `work` in one transaction per shard it touches: all commit, or
    /// (on an error before the commits) all roll back.
    fn transaction(&mut self, work: Work<'_>) -> Result<Vec<WriteOutcome>, StoreError> {
        let shards = &mut self.shards;
        self.runtime.block_on(async {
            shards.transactional = true;
            let done = match work {
                Work::Batch(ops) => apply_batch(shards, ops).await,
                Work::Log(messages) => append_log(shards, messages).await.map(|()| Vec::new()),
            };
            let result = match done {
                Ok(value) => shards.commit_all().await.map(|()| value),
                Err(error) => Err(error),
            };
            if let Err(error) = &result {
                shards.rollback_all().await;
                shards.after_error(error);
            }
            shards.transactional = false;
            result
        })
    }
}

impl WriteStore for MysqlWriter {
    fn apply_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.transaction(Work::Batch(ops))
    }

    fn append_log(&mut self, messages: &[ChatMessage]) -> Result<(), StoreError> {
        self.transaction(Work::Log(messages)).map(|_| ())
    }
}

/// Rows per multi-row INSERT of log records.
const LOG_ROWS_PER_INSERT: usize = 200;

/// The feeder's path: messages from the log in multi-row inserts per
/// shard; a row already there (a replay, or a group event stored with its
/// change) is left as it is.
async fn append_log(s: &mut Shards, messages: &[ChatMessage]) -> Result<(), StoreError> {
    let mut by_shard: BTreeMap<usize, Vec<&ChatMessage>> = BTreeMap::new();
    for message in messages {
        by_shard
            .entry(s.placement.conversation(&message.conversation_id))
            .or_default()
            .push(message);
    }
    for (shard, rows) in by_shard {
        for chunk in rows.chunks(LOG_ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO messages (conversation_id, seq, server_msg_id, sender_id,
                     receiver_id, message_type, content, client_message_id, sent_at_ms,
                     sender_device, media, location, group_event)
                 VALUES {}
                 ON DUPLICATE KEY UPDATE seq = seq",
                vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            let values: Vec<Value> = chunk
                .iter()
                .flat_map(|msg| message_values(msg, msg.seq))
                .collect();
            s.exec(shard, &sql, Params::Positional(values)).await?;
        }
    }
    let mut heads: HashMap<&str, &ChatMessage> = HashMap::new();
    let mut own_reads: HashMap<(i64, &str), i64> = HashMap::new();
    for msg in messages {
        let head = heads.entry(&msg.conversation_id).or_insert(msg);
        if msg.seq >= head.seq {
            *head = msg;
        }
        let read = own_reads
            .entry((msg.sender_id, &msg.conversation_id))
            .or_insert(msg.seq);
        *read = (*read).max(msg.seq);
    }
    for msg in heads.into_values() {
        record_conversation_head(s, msg, msg.seq).await?;
    }
    for ((user_id, conversation_id), seq) in own_reads {
        advance_read_cursor(s, user_id, conversation_id, seq).await?;
    }
    Ok(())
}

/// A message's column values, in `messages` insert order.
fn message_values(msg: &ChatMessage, seq: i64) -> Vec<Value> {
    vec![
        msg.conversation_id.as_str().into(),
        seq.into(),
        msg.server_msg_id.into(),
        msg.sender_id.into(),
        msg.receiver_id.into(),
        msg.message_type.into(),
        msg.content.as_str().into(),
        msg.client_message_id.into(),
        msg.sent_at_ms.into(),
        msg.sender_device.as_str().into(),
        msg.media.as_ref().map(Message::encode_to_vec).into(),
        msg.location.as_ref().map(Message::encode_to_vec).into(),
        msg.group_event.as_ref().map(Message::encode_to_vec).into(),
    ]
}

async fn apply_batch(s: &mut Shards, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(ops.len());
    // Heads and the senders' own read cursors are written once per batch,
    // as in the embedded store; the heads also give the next seq of a
    // conversation this batch already appended to.
    let mut heads: HashMap<&str, (&ChatMessage, i64)> = HashMap::new();
    let mut own_reads: HashMap<(i64, &str), i64> = HashMap::new();
    for op in ops {
        let (outcome, appended) = match op {
            WriteOp::AppendMessage(msg) => {
                let stored = append_message(s, msg, &heads).await?;
                (stored.outcome(msg), stored.seq().map(|seq| (msg, seq)))
            }
            WriteOp::GroupChange { event, change } => {
                let stored = append_message(s, event, &heads).await?;
                if let Some(seq) = stored.seq() {
                    apply_group_change(s, event, seq, change).await?;
                }
                (stored.outcome(event), stored.seq().map(|seq| (event, seq)))
            }
            other => (apply_one(s, other).await?, None),
        };
        if let Some((msg, seq)) = appended {
            let head = heads.entry(&msg.conversation_id).or_insert((msg, seq));
            if seq >= head.1 {
                *head = (msg, seq);
            }
            let read = own_reads
                .entry((msg.sender_id, &msg.conversation_id))
                .or_insert(seq);
            *read = (*read).max(seq);
        }
        outcomes.push(outcome);
    }
    for (msg, seq) in heads.into_values() {
        record_conversation_head(s, msg, seq).await?;
    }
    for ((user_id, conversation_id), seq) in own_reads {
        advance_read_cursor(s, user_id, conversation_id, seq).await?;
    }
    Ok(outcomes)
}

async fn advance_read_cursor(
    s: &mut Shards,
    user_id: i64,
    conversation_id: &str,
    seq: i64,
) -> Result<(), StoreError> {
    let shard = s.placement.user(user_id);
    s.exec(
        shard,
        "INSERT INTO read_cursors (user_id, conversation_id, read_seq) VALUES (?, ?, ?)
         ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
        (user_id, conversation_id, seq),
    )
    .await?;
    Ok(())
}

/// Moves a conversation's head to `msg` and, for a 1:1 conversation, lists
/// it for both users every time (idempotent: a replay after a half-applied
/// batch completes the listing).
async fn record_conversation_head(
    s: &mut Shards,
    msg: &ChatMessage,
    seq: i64,
) -> Result<(), StoreError> {
    let shard = s.placement.conversation(&msg.conversation_id);
    s.exec(
        shard,
        "INSERT INTO conversations (conversation_id, last_seq, last_at_ms) VALUES (?, ?, ?)
         ON DUPLICATE KEY UPDATE last_seq = GREATEST(last_seq, VALUES(last_seq)),
             last_at_ms = GREATEST(last_at_ms, VALUES(last_at_ms))",
        (&msg.conversation_id, seq, msg.sent_at_ms),
    )
    .await?;
    if let Ok(ConversationId::Direct { low, high }) = msg.conversation_id.parse() {
        for user_id in [low, high] {
            let shard = s.placement.user(user_id);
            s.exec(
                shard,
                "INSERT IGNORE INTO user_conversations (user_id, conversation_id) VALUES (?, ?)",
                (user_id, &msg.conversation_id),
            )
            .await?;
        }
    }
    Ok(())
}

fn done_if(condition: bool) -> WriteOutcome {
    if condition {
        WriteOutcome::Done
    } else {
        WriteOutcome::Refused
    }
}

/// The distinct shards of two users (one when they share it).
fn both(s: &Shards, a: i64, b: i64) -> Vec<usize> {
    let (sa, sb) = (s.placement.user(a), s.placement.user(b));
    if sa == sb {
        vec![sa]
    } else {
        vec![sa, sb]
    }
}

async fn apply_one(s: &mut Shards, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::CreateAccount(account) => {
            // The name index decides: its primary key is the uniqueness.
            let name_shard = s.placement.username(&account.username);
            let claimed = s
                .insert_new(
                    name_shard,
                    "INSERT INTO usernames (username, user_id) VALUES (?, ?)",
                    (&account.username, account.user_id),
                )
                .await?;
            if !claimed {
                return Ok(WriteOutcome::UsernameTaken);
            }
            let shard = s.placement.user(account.user_id);
            let inserted = s
                .insert_new(
                    shard,
                    "INSERT INTO users (user_id, username, password_hash, phone, email,
                         nickname, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        account.user_id,
                        &account.username,
                        &account.password_hash,
                        &account.phone,
                        &account.email,
                        &account.nickname,
                        account.created_at_ms,
                    ),
                )
                .await?;
            Ok(if inserted {
                WriteOutcome::Done
            } else {
                WriteOutcome::UsernameTaken
            })
        }
        WriteOp::TouchDevice {
            user_id,
            device_id,
            device_type,
            seen_at_ms,
        } => {
            let shard = s.placement.user(*user_id);
            s.exec(
                shard,
                "INSERT INTO devices (user_id, device_id, device_type, last_seen_ms)
                 VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE device_type = VALUES(device_type),
                     last_seen_ms = VALUES(last_seen_ms), signed_out = 0",
                (user_id, device_id, device_type, seen_at_ms),
            )
            .await?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::UpdateProfile { user_id, update } => {
            let shard = s.placement.user(*user_id);
            let matched = s
                .exec(
                    shard,
                    "UPDATE users SET nickname = COALESCE(?, nickname),
                         avatar_url = COALESCE(?, avatar_url), signature = COALESCE(?, signature),
                         phone = COALESCE(?, phone), email = COALESCE(?, email)
                     WHERE user_id = ?",
                    (
                        &update.nickname,
                        &update.avatar_url,
                        &update.signature,
                        &update.phone,
                        &update.email,
                        user_id,
                    ),
                )
                .await?;
            Ok(done_if(matched == 1))
        }
        WriteOp::SetPassword {
            user_id,
            password_hash,
            keep_device,
        } => {
            let shard = s.placement.user(*user_id);
            let matched = s
                .exec(
                    shard,
                    "UPDATE users SET password_hash = ? WHERE user_id = ?",
                    (password_hash, user_id),
                )
                .await?;
            s.exec(
                shard,
                "UPDATE devices SET token_epoch = token_epoch + 1, signed_out = 1
                 WHERE user_id = ? AND device_id != ?",
                (user_id, keep_device),
            )
            .await?;
            Ok(done_if(matched == 1))
        }
        WriteOp::RevokeDevice { user_id, device_id } => {
            let shard = s.placement.user(*user_id);
            let matched = s
                .exec(
                    shard,
                    "UPDATE devices SET token_epoch = token_epoch + 1, signed_out = 1
                     WHERE user_id = ? AND device_id = ?",
                    (user_id, device_id),
                )
                .await?;
            Ok(done_if(matched == 1))
        }
        WriteOp::RequestFriend {
            from,
            to,
            note,
            at_ms,
        } => {
            for shard in both(s, *from, *to) {
                s.exec(
                    shard,
                    "INSERT INTO friend_requests (from_user, to_user, note, created_at_ms)
                     VALUES (?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE note = VALUES(note),
                         created_at_ms = VALUES(created_at_ms)",
                    (from, to, note, at_ms),
                )
                .await?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::AnswerFriend {
            from,
            to,
            accept,
            at_ms,
        } => {
            // The asked user's copy decides whether there is a request.
            let deciding = s.placement.user(*to);
            let answered = s
                .exec(
                    deciding,
                    "DELETE FROM friend_requests WHERE from_user = ? AND to_user = ?",
                    (from, to),
                )
                .await?;
            if answered == 0 {
                return Ok(WriteOutcome::Refused);
            }
            let shards = both(s, *from, *to);
            for &shard in &shards {
                s.exec(
                    shard,
                    "DELETE FROM friend_requests WHERE from_user = ? AND to_user = ?",
                    (from, to),
                )
                .await?;
            }
            if *accept {
                for (a, b) in [(*from, *to), (*to, *from)] {
                    let shard = s.placement.user(a);
                    s.exec(
                        shard,
                        "INSERT IGNORE INTO friends (user_id, friend_id, since_ms) VALUES (?, ?, ?)",
                        (a, b, at_ms),
                    )
                    .await?;
                }
                // A crossed request the other way is answered by this too.
                for &shard in &shards {
                    s.exec(
                        shard,
                        "DELETE FROM friend_requests WHERE from_user = ? AND to_user = ?",
                        (to, from),
                    )
                    .await?;
                }
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::Unfriend { a, b } => {
            let removed = unfriend(s, *a, *b).await?;
            Ok(done_if(removed > 0))
        }
        WriteOp::Block {
            user_id,
            blocked_id,
            block,
            at_ms,
        } => {
            let shard = s.placement.user(*user_id);
            if !*block {
                let removed = s
                    .exec(
                        shard,
                        "DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?",
                        (user_id, blocked_id),
                    )
                    .await?;
                return Ok(done_if(removed == 1));
            }
            s.exec(
                shard,
                "INSERT IGNORE INTO blocks (user_id, blocked_id, since_ms) VALUES (?, ?, ?)",
                (user_id, blocked_id, at_ms),
            )
            .await?;
            unfriend(s, *user_id, *blocked_id).await?;
            for shard in both(s, *user_id, *blocked_id) {
                s.exec(
                    shard,
                    "DELETE FROM friend_requests WHERE (from_user = ? AND to_user = ?)
                        OR (from_user = ? AND to_user = ?)",
                    (user_id, blocked_id, blocked_id, user_id),
                )
                .await?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::MarkRead {
            user_id,
            conversation_id,
            seq,
        } => {
            advance_read_cursor(s, *user_id, conversation_id, *seq).await?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::Recall {
            conversation_id,
            seq,
            sender_id,
            not_before_ms,
        } => {
            // One conditional statement, as in the embedded store: sender,
            // window and "not yet recalled" are checked where the row changes.
            let shard = s.placement.conversation(conversation_id);
            let matched = s
                .exec(
                    shard,
                    "UPDATE messages SET recalled = 1, content = '', media = NULL, location = NULL
                     WHERE conversation_id = ? AND seq = ? AND sender_id = ?
                       AND sent_at_ms >= ? AND recalled = 0",
                    (conversation_id, seq, sender_id, not_before_ms),
                )
                .await?;
            Ok(done_if(matched == 1))
        }
        WriteOp::AppendMessage(_) | WriteOp::GroupChange { .. } => Err(StoreError::Corrupt(
            "appends are applied by the batch, not one by one".into(),
        )),
        WriteOp::AdvanceCursor {
            user_id,
            device_id,
            conversation,
            seq,
        } => {
            let (device_id, conversation_id) = (device_id.as_ref(), conversation.to_string());
            let shard = s.placement.user(*user_id);
            s.exec(
                shard,
                "INSERT INTO device_cursors (user_id, device_id, conversation_id, delivered_seq)
                 VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE delivered_seq = GREATEST(delivered_seq, VALUES(delivered_seq))",
                (user_id, device_id, conversation_id, seq),
            )
            .await?;
            Ok(WriteOutcome::Done)
        }
    }
}

/// Removes both directions of a friendship; rows removed.
async fn unfriend(s: &mut Shards, a: i64, b: i64) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (x, y) in [(a, b), (b, a)] {
        let shard = s.placement.user(x);
        removed += s
            .exec(
                shard,
                "DELETE FROM friends WHERE user_id = ? AND friend_id = ?",
                (x, y),
            )
            .await?;
    }
    Ok(removed)
}

/// Appends `msg` under its given seq, or (seq 0) under the conversation's
/// next one; `heads` knows the newest seq this batch gave each
/// conversation so far.
async fn append_message(
    s: &mut Shards,
    msg: &ChatMessage,
    heads: &HashMap<&str, (&ChatMessage, i64)>,
) -> Result<Stored, StoreError> {
    let shard = s.placement.conversation(&msg.conversation_id);
    let seq = match msg.seq {
        0 => match heads.get(msg.conversation_id.as_str()) {
            Some((_, seq)) => seq + 1,
            None => {
                let last: Option<i64> = s
                    .first(
                        shard,
                        "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?",
                        (&msg.conversation_id,),
                    )
                    .await?;
                last.unwrap_or(0) + 1
            }
        },
        given => given,
    };
    let inserted = s
        .insert_new(
            shard,
            "INSERT INTO messages (conversation_id, seq, server_msg_id, sender_id,
                 receiver_id, message_type, content, client_message_id, sent_at_ms, sender_device,
                 media, location, group_event)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            Params::Positional(message_values(msg, seq)),
        )
        .await?;
    if inserted {
        return Ok(Stored::At(seq));
    }
    // Nothing written: the client id is taken (a resend, however old), or
    // a given seq is (a replay).
    type FirstSend = (i64, i64, i64, i32, String, Option<Vec<u8>>, Option<Vec<u8>>);
    let first: Option<FirstSend> = s
        .first(
            shard,
            "SELECT seq, server_msg_id, sent_at_ms, message_type, content, media, location
             FROM messages
             WHERE conversation_id = ? AND sender_id = ? AND client_message_id = ?",
            (&msg.conversation_id, msg.sender_id, msg.client_message_id),
        )
        .await?;
    Ok(match first {
        Some((seq, server_msg_id, sent_at_ms, message_type, content, media, location)) => {
            Stored::SentBefore(SentBefore {
                seq,
                server_msg_id,
                sent_at_ms,
                same_content: message_type == msg.message_type
                    && content == msg.content
                    && media == msg.media.as_ref().map(Message::encode_to_vec)
                    && location == msg.location.as_ref().map(Message::encode_to_vec),
            })
        }
        None => Stored::SeqTaken,
    })
}

/// Applies a group change whose event message `event` was just stored.
async fn apply_group_change(
    s: &mut Shards,
    event: &ChatMessage,
    seq: i64,
    change: &GroupChange,
) -> Result<(), StoreError> {
    let group_id = event.group_id;
    let group_shard = s.placement.group(group_id);
    let conversation_id = event.conversation_id.as_str();
    match change {
        GroupChange::Create { group, members } => {
            s.exec(
                group_shard,
                "INSERT INTO chat_groups (group_id, name, description, avatar_url, owner_id,
                     created_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    group.group_id,
                    &group.name,
                    &group.description,
                    &group.avatar_url,
                    group.owner_id,
                    group.created_at_ms,
                ),
            )
            .await?;
            join_group(s, event, group.owner_id, GroupRole::Owner).await?;
            for member in members {
                join_group(s, event, *member, GroupRole::Member).await?;
            }
        }
        GroupChange::Update {
            name,
            description,
            avatar_url,
        } => {
            s.exec(
                group_shard,
                "UPDATE chat_groups SET name = COALESCE(?, name),
                     description = COALESCE(?, description), avatar_url = COALESCE(?, avatar_url)
                 WHERE group_id = ?",
                (name, description, avatar_url, group_id),
            )
            .await?;
        }
        GroupChange::Join(users) => {
            for user in users {
                join_group(s, event, *user, GroupRole::Member).await?;
            }
        }
        GroupChange::Leave(users) => {
            for user in users {
                s.exec(
                    group_shard,
                    "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                    (group_id, user),
                )
                .await?;
                close_window(s, *user, conversation_id, seq).await?;
            }
        }
        GroupChange::SetRole { user_id, role } => {
            set_role(s, group_id, *user_id, *role).await?;
        }
        GroupChange::TransferOwner { from, to } => {
            set_role(s, group_id, *from, GroupRole::Admin).await?;
            set_role(s, group_id, *to, GroupRole::Owner).await?;
            s.exec(
                group_shard,
                "UPDATE chat_groups SET owner_id = ? WHERE group_id = ?",
                (to, group_id),
            )
            .await?;
        }
        GroupChange::Dissolve => {
            s.exec(
                group_shard,
                "UPDATE chat_groups SET dissolved = 1 WHERE group_id = ?",
                (group_id,),
            )
            .await?;
            let members: Vec<i64> = s
                .rows(
                    group_shard,
                    "SELECT user_id FROM group_members WHERE group_id = ? FOR UPDATE",
                    (group_id,),
                )
                .await?;
            for member in members {
                close_window(s, member, conversation_id, seq).await?;
            }
            s.exec(
                group_shard,
                "DELETE FROM group_members WHERE group_id = ?",
                (group_id,),
            )
            .await?;
        }
    }
    Ok(())
}

/// A member joins at the event's seq: a rejoin starts a new window, and the
/// join event itself does not count as unread.
async fn join_group(
    s: &mut Shards,
    event: &ChatMessage,
    user_id: i64,
    role: GroupRole,
) -> Result<(), StoreError> {
    let group_shard = s.placement.group(event.group_id);
    s.exec(
        group_shard,
        "INSERT INTO group_members (group_id, user_id, role, join_seq, joined_at_ms)
         VALUES (?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE role = VALUES(role), join_seq = VALUES(join_seq),
             joined_at_ms = VALUES(joined_at_ms)",
        (
            event.group_id,
            user_id,
            role as i32,
            event.seq,
            event.sent_at_ms,
        ),
    )
    .await?;
    let user_shard = s.placement.user(user_id);
    s.exec(
        user_shard,
        "INSERT INTO user_conversations (user_id, conversation_id, from_seq, to_seq)
         VALUES (?, ?, ?, NULL)
         ON DUPLICATE KEY UPDATE from_seq = VALUES(from_seq), to_seq = NULL",
        (user_id, &event.conversation_id, event.seq),
    )
    .await?;
    advance_read_cursor(s, user_id, &event.conversation_id, event.seq).await
}

/// A member's visible window ends at `seq`.
async fn close_window(
    s: &mut Shards,
    user_id: i64,
    conversation_id: &str,
    seq: i64,
) -> Result<(), StoreError> {
    let shard = s.placement.user(user_id);
    s.exec(
        shard,
        "UPDATE user_conversations SET to_seq = ?
         WHERE user_id = ? AND conversation_id = ? AND to_seq IS NULL",
        (seq, user_id, conversation_id),
    )
    .await?;
    Ok(())
}

async fn set_role(
    s: &mut Shards,
    group_id: i64,
    user_id: i64,
    role: GroupRole,
) -> Result<(), StoreError> {
    let shard = s.placement.group(group_id);
    s.exec(
        shard,
        "UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?",
        (role as i32, group_id, user_id),
    )
    .await?;
    Ok(())
}

struct MysqlReader {
    runtime: tokio::runtime::Runtime,
    primary: Shards,
    /// History and search go here when replicas are configured.
    replica: Option<Shards>,
    /// After a replica fails, reads go to the primaries until then.
    replica_resting_until: Option<Instant>,
}

/// How long reads avoid replicas after one failed: a dead replica must not
/// cost every read a failed dial first.
const REPLICA_REST: Duration = Duration::from_secs(5);

type ShardRead<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + 'a>>;

type SendRow = (
    i64,
    i64,
    i64,
    i64,
    i64,
    i32,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn recent_send(r: SendRow) -> RecentSend {
    RecentSend {
        sender_id: r.0,
        client_message_id: r.1,
        seq: r.2,
        server_msg_id: r.3,
        sent_at_ms: r.4,
        fingerprint: content_fingerprint(r.5, &r.6, r.7.as_deref(), r.8.as_deref()),
    }
}

impl MysqlReader {
    /// Runs `read` on the primaries, dropping failed connections so the
    /// next read dials again.
    fn run<T>(
        &mut self,
        read: impl for<'a> FnOnce(&'a mut Shards) -> ShardRead<'a, T>,
    ) -> Result<T, StoreError> {
        let result = self.runtime.block_on(read(&mut self.primary));
        if let Err(error) = &result {
            self.primary.after_error(error);
        }
        result
    }

    /// Runs `read` on the replicas when there are any and they answer,
    /// else on the primaries: a replica that is down or refuses costs
    /// freshness of history and search, never the answer.
    fn run_on_replica<T>(
        &mut self,
        read: impl for<'a> Fn(&'a mut Shards) -> ShardRead<'a, T>,
    ) -> Result<T, StoreError> {
        let resting = self
            .replica_resting_until
            .is_some_and(|until| Instant::now() < until);
        let Some(replicas) = self.replica.as_mut().filter(|_| !resting) else {
            return self.run(read);
        };
        match self.runtime.block_on(read(replicas)) {
            Err(error @ StoreError::Unavailable { .. }) => {
                replicas.after_error(&error);
                tracing::warn!(%error, "replica read failed; reading the primaries for a while");
                self.replica_resting_until = Some(Instant::now() + REPLICA_REST);
                self.run(read)
            }
            answered => answered,
        }
    }
}

async fn account_by_id(s: &mut Shards, user_id: i64) -> Result<Option<Account>, StoreError> {
    let shard = s.placement.user(user_id);
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM users WHERE user_id = ?");
    Ok(s.first::<AccountTuple>(shard, &sql, (user_id,))
        .await?
        .map(account_from))
}

async fn exists(
    s: &mut Shards,
    shard: usize,
    sql: &str,
    params: impl Into<Params> + Send,
) -> Result<bool, StoreError> {
    Ok(s.first::<i64>(shard, sql, params).await?.unwrap_or(0) != 0)
}

async fn group_roster(s: &mut Shards, group_id: i64) -> Result<Option<GroupRoster>, StoreError> {
    let shard = s.placement.group(group_id);
    let Some((owner_id, dissolved)) = s
        .first::<(i64, bool)>(
            shard,
            "SELECT owner_id, dissolved FROM chat_groups WHERE group_id = ?",
            (group_id,),
        )
        .await?
    else {
        return Ok(None);
    };
    let members = s
        .rows::<(i64, i32)>(
            shard,
            "SELECT user_id, role FROM group_members WHERE group_id = ?",
            (group_id,),
        )
        .await?
        .into_iter()
        .map(|(user_id, role)| (user_id, GroupRole::from_i32(role)))
        .collect();
    Ok(Some(GroupRoster {
        owner_id,
        dissolved,
        members,
    }))
}

/// Heads (last_seq, last_at_ms) of the given conversations, gathered from
/// their shards.
async fn heads_of(
    s: &mut Shards,
    conversation_ids: &[String],
) -> Result<HashMap<String, (i64, i64)>, StoreError> {
    let mut by_shard: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for id in conversation_ids {
        by_shard
            .entry(s.placement.conversation(id))
            .or_default()
            .push(id);
    }
    let mut heads = HashMap::with_capacity(conversation_ids.len());
    for (shard, ids) in by_shard {
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT conversation_id, last_seq, last_at_ms FROM conversations
                 WHERE conversation_id IN ({})",
                placeholders(chunk.len())
            );
            let params: Vec<Value> = chunk.iter().map(|id| Value::from(*id)).collect();
            for (id, last_seq, last_at) in s
                .rows::<(String, i64, i64)>(shard, &sql, Params::Positional(params))
                .await?
            {
                heads.insert(id, (last_seq, last_at));
            }
        }
    }
    Ok(heads)
}

async fn messages(
    s: &mut Shards,
    conversation_id: &str,
    condition: &str,
    seq: i64,
    limit: usize,
) -> Result<Vec<ChatMessage>, StoreError> {
    let shard = s.placement.conversation(conversation_id);
    let sql =
        format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND {condition}");
    s.rows::<Row>(shard, &sql, (conversation_id, seq, limit as u64))
        .await?
        .into_iter()
        .map(message_from_row)
        .collect()
}

impl ReadStore for MysqlReader {
    fn account_by_username(&mut self, username: &str) -> Result<Option<Account>, StoreError> {
        let username = username.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.username(&username);
                let Some(user_id) = s
                    .first::<i64>(
                        shard,
                        "SELECT user_id FROM usernames WHERE username = ?",
                        (&username,),
                    )
                    .await?
                else {
                    return Ok(None);
                };
                Ok(account_by_id(s, user_id)
                    .await?
                    .filter(|account| account.username == username))
            })
        })
    }

    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError> {
        self.run(|s| Box::pin(account_by_id(s, user_id)))
    }

    fn sends_among(
        &mut self,
        conversation_id: &str,
        sends: &[(i64, i64)],
    ) -> Result<Vec<RecentSend>, StoreError> {
        let conversation_id = conversation_id.to_string();
        let sends = sends.to_vec();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.conversation(&conversation_id);
                let sql = format!(
                    "SELECT {SEND_COLUMNS} FROM messages
                     WHERE conversation_id = ? AND sender_id = ? AND client_message_id = ?"
                );
                let mut found = Vec::new();
                for (sender, client_message_id) in sends {
                    let row: Option<SendRow> = s
                        .first(shard, &sql, (&conversation_id, sender, client_message_id))
                        .await?;
                    found.extend(row.map(recent_send));
                }
                Ok(found)
            })
        })
    }

    fn conversation_head(
        &mut self,
        conversation_id: &str,
        window: usize,
    ) -> Result<ConversationHead, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.conversation(&conversation_id);
                let recent: Vec<RecentSend> = s
                    .rows::<SendRow>(
                        shard,
                        &format!(
                            "SELECT {SEND_COLUMNS} FROM messages WHERE conversation_id = ?
                             ORDER BY seq DESC LIMIT ?"
                        ),
                        (&conversation_id, window as u64),
                    )
                    .await?
                    .into_iter()
                    .map(recent_send)
                    .collect();
                let last_seq = match recent.first() {
                    Some(newest) => newest.seq,
                    None => s
                        .first::<i64>(
                            shard,
                            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?",
                            (&conversation_id,),
                        )
                        .await?
                        .unwrap_or(0),
                };
                let (blocked, group) = match conversation_id.parse::<ConversationId>() {
                    Ok(ConversationId::Direct { low, high }) => {
                        let mut blocked = false;
                        for (a, b) in [(low, high), (high, low)] {
                            let shard = s.placement.user(a);
                            blocked |= exists(
                                s,
                                shard,
                                "SELECT COUNT(*) FROM blocks WHERE user_id = ? AND blocked_id = ?",
                                (a, b),
                            )
                            .await?;
                        }
                        (blocked, None)
                    }
                    Ok(ConversationId::Group(group_id)) => {
                        (false, group_roster(s, group_id).await?)
                    }
                    Err(_) => (false, None),
                };
                Ok(ConversationHead {
                    last_seq,
                    recent,
                    blocked,
                    group,
                })
            })
        })
    }

    fn history(
        &mut self,
        conversation_id: &str,
        before_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let conversation_id = conversation_id.to_string();
        let before = if before_seq <= 0 {
            i64::MAX
        } else {
            before_seq
        };
        self.run_on_replica(|s| {
            let conversation_id = conversation_id.clone();
            Box::pin(async move {
                messages(
                    s,
                    &conversation_id,
                    "seq < ? ORDER BY seq DESC LIMIT ?",
                    before,
                    limit,
                )
                .await
            })
        })
    }

    fn messages_after(
        &mut self,
        conversation_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                messages(
                    s,
                    &conversation_id,
                    "seq > ? ORDER BY seq ASC LIMIT ?",
                    after_seq,
                    limit,
                )
                .await
            })
        })
    }

    fn friends(&mut self, user_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                s.rows(
                    shard,
                    "SELECT friend_id, since_ms FROM friends WHERE user_id = ? ORDER BY friend_id",
                    (user_id,),
                )
                .await
            })
        })
    }

    fn friend_requests(&mut self, user_id: i64) -> Result<Vec<FriendRequestRow>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                Ok(s.rows::<(i64, i64, String, i64)>(
                    shard,
                    "SELECT from_user, to_user, note, created_at_ms FROM friend_requests
                         WHERE from_user = ? OR to_user = ? ORDER BY created_at_ms, from_user",
                    (user_id, user_id),
                )
                .await?
                .into_iter()
                .map(|r| FriendRequestRow {
                    from: r.0,
                    to: r.1,
                    note: r.2,
                    created_at_ms: r.3,
                })
                .collect())
            })
        })
    }

    fn relation(&mut self, a: i64, b: i64) -> Result<Relation, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let (shard_a, shard_b) = (s.placement.user(a), s.placement.user(b));
                Ok(Relation {
                    friends: exists(
                        s,
                        shard_a,
                        "SELECT COUNT(*) FROM friends WHERE user_id = ? AND friend_id = ?",
                        (a, b),
                    )
                    .await?,
                    a_blocked_b: exists(
                        s,
                        shard_a,
                        "SELECT COUNT(*) FROM blocks WHERE user_id = ? AND blocked_id = ?",
                        (a, b),
                    )
                    .await?,
                    b_blocked_a: exists(
                        s,
                        shard_b,
                        "SELECT COUNT(*) FROM blocks WHERE user_id = ? AND blocked_id = ?",
                        (b, a),
                    )
                    .await?,
                    b_requested_a: exists(
                        s,
                        shard_a,
                        "SELECT COUNT(*) FROM friend_requests WHERE from_user = ? AND to_user = ?",
                        (b, a),
                    )
                    .await?,
                })
            })
        })
    }

    fn blocked_by(&mut self, user_id: i64) -> Result<Vec<i64>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                s.rows(
                    shard,
                    "SELECT blocked_id FROM blocks WHERE user_id = ? ORDER BY blocked_id",
                    (user_id,),
                )
                .await
            })
        })
    }

    fn search_users(
        &mut self,
        prefix: &str,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        let pattern = crate::like_prefix(prefix);
        self.run_on_replica(|s| {
            let pattern = pattern.clone();
            Box::pin(async move {
                let sql = format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM users
                     WHERE user_id > ? AND (username LIKE ? OR nickname LIKE ?
                        OR phone LIKE ? OR email LIKE ?)
                     ORDER BY user_id LIMIT ?"
                );
                // Every shard's first `limit`, merged by id: the global
                // first `limit` are among them.
                let mut found = Vec::new();
                for shard in 0..s.placement.count {
                    let rows = s
                        .rows::<AccountTuple>(
                            shard,
                            &sql,
                            (
                                after_user_id,
                                &pattern,
                                &pattern,
                                &pattern,
                                &pattern,
                                limit as u64,
                            ),
                        )
                        .await?;
                    found.extend(rows.into_iter().map(account_from));
                }
                found.sort_by_key(|a| a.user_id);
                found.truncate(limit);
                Ok(found)
            })
        })
    }

    fn devices(&mut self, user_id: i64) -> Result<Vec<Device>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                let sql = format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ?
                     ORDER BY last_seen_ms DESC, device_id"
                );
                Ok(s.rows(shard, &sql, (user_id,))
                    .await?
                    .into_iter()
                    .map(device_from)
                    .collect())
            })
        })
    }

    fn device(&mut self, user_id: i64, device_id: &str) -> Result<Option<Device>, StoreError> {
        let device_id = device_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                let sql = format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND device_id = ?"
                );
                Ok(s.first(shard, &sql, (user_id, &device_id))
                    .await?
                    .map(device_from))
            })
        })
    }

    fn message(
        &mut self,
        conversation_id: &str,
        seq: i64,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.conversation(&conversation_id);
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND seq = ?"
                );
                s.first::<Row>(shard, &sql, (&conversation_id, seq))
                    .await?
                    .map(message_from_row)
                    .transpose()
            })
        })
    }

    fn read_seq(&mut self, user_id: i64, conversation_id: &str) -> Result<i64, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                Ok(s.first::<i64>(
                    shard,
                    "SELECT read_seq FROM read_cursors WHERE user_id = ? AND conversation_id = ?",
                    (user_id, &conversation_id),
                )
                .await?
                .unwrap_or(0))
            })
        })
    }

    fn conversations(
        &mut self,
        user_id: i64,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let (before_at, before_id) = before
            .map(|(at, id)| (at, id.to_string()))
            .unwrap_or((i64::MAX, String::new()));
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                let listed = s
                    .rows::<(String, Option<i64>, i64)>(
                        shard,
                        "SELECT uc.conversation_id, uc.to_seq, COALESCE(r.read_seq, 0)
                         FROM user_conversations uc
                         LEFT JOIN read_cursors r ON r.user_id = uc.user_id
                              AND r.conversation_id = uc.conversation_id
                         WHERE uc.user_id = ?",
                        (user_id,),
                    )
                    .await?;
                let ids: Vec<String> = listed.iter().map(|row| row.0.clone()).collect();
                let heads = heads_of(s, &ids).await?;
                let mut rows: Vec<ConversationRow> = listed
                    .into_iter()
                    .filter_map(|(id, to_seq, read_seq)| {
                        let (last_seq, last_at_ms) = *heads.get(&id)?;
                        Some(ConversationRow {
                            last_seq: to_seq.map_or(last_seq, |to| to.min(last_seq)),
                            last_at_ms,
                            read_seq,
                            conversation_id: id,
                        })
                    })
                    .filter(|row| {
                        row.last_at_ms < before_at
                            || (row.last_at_ms == before_at
                                && row.conversation_id.as_str() < before_id.as_str())
                    })
                    .collect();
                rows.sort_by(|x, y| {
                    (y.last_at_ms, &y.conversation_id).cmp(&(x.last_at_ms, &x.conversation_id))
                });
                rows.truncate(limit);
                Ok(rows)
            })
        })
    }

    fn group(&mut self, group_id: i64, viewer: i64) -> Result<Option<GroupRow>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.group(group_id);
                Ok(
                    s.first::<GroupTuple>(shard, GROUP_SELECT, (viewer, group_id))
                        .await?
                        .map(group_from),
                )
            })
        })
    }

    fn group_members(
        &mut self,
        group_id: i64,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupMemberRow>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.group(group_id);
                Ok(s.rows::<(i64, i32, i64, i64)>(
                    shard,
                    "SELECT user_id, role, join_seq, joined_at_ms FROM group_members
                         WHERE group_id = ? AND user_id > ? ORDER BY user_id LIMIT ?",
                    (group_id, after_user_id, limit.min(i64::MAX as usize) as u64),
                )
                .await?
                .into_iter()
                .map(|r| GroupMemberRow {
                    user_id: r.0,
                    role: GroupRole::from_i32(r.1),
                    join_seq: r.2,
                    joined_at_ms: r.3,
                })
                .collect())
            })
        })
    }

    fn my_groups(
        &mut self,
        user_id: i64,
        after_group_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupRow>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                // A member's window of a group conversation is open: the
                // user's own shard knows their groups without asking others.
                let shard = s.placement.user(user_id);
                let listed: Vec<String> = s
                    .rows(
                        shard,
                        "SELECT conversation_id FROM user_conversations
                         WHERE user_id = ? AND to_seq IS NULL AND conversation_id LIKE 'sg\\_%'",
                        (user_id,),
                    )
                    .await?;
                let mut group_ids: Vec<i64> = listed
                    .iter()
                    .filter_map(|id| match id.parse::<ConversationId>() {
                        Ok(ConversationId::Group(group_id)) if group_id > after_group_id => {
                            Some(group_id)
                        }
                        _ => None,
                    })
                    .collect();
                group_ids.sort_unstable();
                let mut groups = Vec::new();
                for group_id in group_ids {
                    if groups.len() >= limit {
                        break;
                    }
                    let shard = s.placement.group(group_id);
                    if let Some(row) = s
                        .first::<GroupTuple>(shard, GROUP_SELECT, (user_id, group_id))
                        .await?
                    {
                        groups.push(group_from(row));
                    }
                }
                Ok(groups)
            })
        })
    }

    fn visibility(
        &mut self,
        user_id: i64,
        conversation_id: &str,
    ) -> Result<Option<Visibility>, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                Ok(s.first::<(i64, Option<i64>)>(
                    shard,
                    "SELECT from_seq, to_seq FROM user_conversations
                         WHERE user_id = ? AND conversation_id = ?",
                    (user_id, &conversation_id),
                )
                .await?
                .map(|(from_seq, to_seq)| Visibility { from_seq, to_seq }))
            })
        })
    }

    fn existing_users(&mut self, user_ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let user_ids = user_ids.to_vec();
        self.run(|s| {
            Box::pin(async move {
                let mut by_shard: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
                for &id in &user_ids {
                    by_shard.entry(s.placement.user(id)).or_default().push(id);
                }
                let mut found = std::collections::HashSet::new();
                for (shard, ids) in by_shard {
                    for chunk in ids.chunks(IN_CHUNK) {
                        let sql = format!(
                            "SELECT user_id FROM users WHERE user_id IN ({})",
                            placeholders(chunk.len())
                        );
                        let params: Vec<Value> = chunk.iter().map(|id| Value::from(*id)).collect();
                        found.extend(
                            s.rows::<i64>(shard, &sql, Params::Positional(params))
                                .await?,
                        );
                    }
                }
                Ok(user_ids
                    .into_iter()
                    .filter(|id| found.contains(id))
                    .collect())
            })
        })
    }

    fn conversation_cursors(
        &mut self,
        user_id: i64,
        device_id: &str,
    ) -> Result<Vec<ConversationCursor>, StoreError> {
        let device_id = device_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                let listed = s
                    .rows::<(String, i64, i64, Option<i64>)>(
                        shard,
                        "SELECT uc.conversation_id, COALESCE(dc.delivered_seq, 0), uc.from_seq,
                             uc.to_seq
                         FROM user_conversations uc
                         LEFT JOIN device_cursors dc ON dc.user_id = uc.user_id
                              AND dc.device_id = ? AND dc.conversation_id = uc.conversation_id
                         WHERE uc.user_id = ?
                         ORDER BY uc.conversation_id",
                        (&device_id, user_id),
                    )
                    .await?;
                let ids: Vec<String> = listed.iter().map(|row| row.0.clone()).collect();
                let heads = heads_of(s, &ids).await?;
                Ok(listed
                    .into_iter()
                    .filter_map(|(id, delivered_seq, from_seq, to_seq)| {
                        let (last_seq, _) = *heads.get(&id)?;
                        Some(ConversationCursor {
                            conversation_id: id,
                            last_seq,
                            delivered_seq,
                            visible: Visibility { from_seq, to_seq },
                        })
                    })
                    .collect())
            })
        })
    }
}

#[cfg(test)]
mod tests {
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
