//! The embedded backend: one SQLite file in WAL mode under the data
//! directory. One writer connection commits batches; any number of reader
//! connections read concurrently (WAL lets readers run beside the writer).
//! The schema is created on first open and upgraded by numbered migrations
//! tracked in `PRAGMA user_version`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::{
    content_fingerprint, Account, Backend, ChatMessage, ConversationCursor, ConversationHead,
    ConversationRow, Device, FriendRequestRow, GroupChange, GroupMemberRow, GroupRole, GroupRoster,
    GroupRow, ReadStore, RecentSend, Relation, SentBefore, StoreError, Stored, Visibility, WriteOp,
    WriteOutcome, WriteStore, SEND_COLUMNS,
};
use ourchat_protocol::ConversationId;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "ourchat.db";

/// Migrations in order; entry `i` upgrades the schema from version `i` to
/// `i + 1`. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, devices, messages, conversations, cursors.
    "
    CREATE TABLE users (
        user_id       INTEGER PRIMARY KEY,
        username      TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        phone         TEXT NOT NULL DEFAULT '',
        email         TEXT NOT NULL DEFAULT '',
        nickname      TEXT NOT NULL DEFAULT '',
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE devices (
        user_id      INTEGER NOT NULL,
        device_id    TEXT NOT NULL,
        device_type  TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        conversation_id   TEXT NOT NULL,
        seq               INTEGER NOT NULL,
        server_msg_id     INTEGER NOT NULL,
        sender_id         INTEGER NOT NULL,
        receiver_id       INTEGER NOT NULL,
        message_type      INTEGER NOT NULL,
        content           TEXT NOT NULL,
        client_message_id INTEGER NOT NULL,
        sent_at_ms        INTEGER NOT NULL,
        sender_device     TEXT NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_dedupe
        ON messages (conversation_id, sender_id, client_message_id);
    CREATE TABLE conversations (
        conversation_id TEXT PRIMARY KEY,
        last_seq        INTEGER NOT NULL,
        last_at_ms      INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE user_conversations (
        user_id         INTEGER NOT NULL,
        conversation_id TEXT NOT NULL,
        PRIMARY KEY (user_id, conversation_id)
    ) WITHOUT ROWID;
    CREATE TABLE device_cursors (
        user_id         INTEGER NOT NULL,
        device_id       TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        delivered_seq   INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id, conversation_id)
    ) WITHOUT ROWID;
    ",
    // 2: structured payloads, recall, read cursors.
    "
    ALTER TABLE messages ADD COLUMN media BLOB;
    ALTER TABLE messages ADD COLUMN location BLOB;
    ALTER TABLE messages ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE read_cursors (
        user_id         INTEGER NOT NULL,
        conversation_id TEXT NOT NULL,
        read_seq        INTEGER NOT NULL,
        PRIMARY KEY (user_id, conversation_id)
    ) WITHOUT ROWID;
    ",
    // 3: profiles, per-device token epochs (revocation).
    "
    ALTER TABLE users ADD COLUMN avatar_url TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN signature TEXT NOT NULL DEFAULT '';
    ALTER TABLE devices ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN signed_out INTEGER NOT NULL DEFAULT 0;
    ",
    // 4: friends, pending requests, blocks; search indexes.
    "
    CREATE TABLE friend_requests (
        from_user     INTEGER NOT NULL,
        to_user       INTEGER NOT NULL,
        note          TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (from_user, to_user)
    ) WITHOUT ROWID;
    CREATE INDEX friend_requests_to ON friend_requests (to_user);
    CREATE TABLE friends (
        user_id   INTEGER NOT NULL,
        friend_id INTEGER NOT NULL,
        since_ms  INTEGER NOT NULL,
        PRIMARY KEY (user_id, friend_id)
    ) WITHOUT ROWID;
    CREATE TABLE blocks (
        user_id    INTEGER NOT NULL,
        blocked_id INTEGER NOT NULL,
        since_ms   INTEGER NOT NULL,
        PRIMARY KEY (user_id, blocked_id)
    ) WITHOUT ROWID;
    CREATE INDEX users_nickname ON users (nickname);
    CREATE INDEX users_phone ON users (phone);
    CREATE INDEX users_email ON users (email);
    ",
    // 5: groups; per-user visibility windows; group event payloads.
    "
    CREATE TABLE chat_groups (
        group_id      INTEGER PRIMARY KEY,
        name          TEXT NOT NULL,
        description   TEXT NOT NULL,
        avatar_url    TEXT NOT NULL,
        owner_id      INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        dissolved     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE group_members (
        group_id     INTEGER NOT NULL,
        user_id      INTEGER NOT NULL,
        role         INTEGER NOT NULL,
        join_seq     INTEGER NOT NULL,
        joined_at_ms INTEGER NOT NULL,
        PRIMARY KEY (group_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_user ON group_members (user_id, group_id);
    ALTER TABLE user_conversations ADD COLUMN from_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE user_conversations ADD COLUMN to_seq INTEGER;
    ALTER TABLE messages ADD COLUMN group_event BLOB;
    ",
    // 6: the store's identity, so a data directory can tell its own store
    // from a missing, empty or swapped one.
    "
    CREATE TABLE store_identity (id TEXT NOT NULL);
    INSERT INTO store_identity (id) VALUES (lower(hex(randomblob(16))));
    ",
    // 7: messages and cursors move to the message log (`embedded`): how far
    // the group tables have caught up with it, and whether this store's
    // old message tables were moved into it.
    "
    CREATE TABLE message_log (applied_batch INTEGER NOT NULL, migrated INTEGER NOT NULL);
    INSERT INTO message_log (applied_batch, migrated) VALUES (0, 0);
    ",
];

/// How hard a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit: an ack survives power loss (`synchronous=FULL`).
    #[default]
    Full,
    /// fsync at checkpoints: an ack survives a process crash, not power
    /// loss (`synchronous=NORMAL`).
    Normal,
}

/// The embedded SQLite store in one directory.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    path: PathBuf,
    durability: Durability,
}

impl SqliteBackend {
    /// Opens (creating if needed) the store in `data_dir` and brings its
    /// schema up to date.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Unavailable {
            message: format!("cannot create data dir {}: {e}", data_dir.display()),
            retryable: false,
        })?;
        let backend = SqliteBackend {
            path: data_dir.join(DB_FILE),
            durability,
        };
        let mut conn = backend.connect(false)?;
        migrate(&mut conn)?;
        Ok(backend)
    }

    pub(crate) fn connect(&self, read_only: bool) -> Result<Connection, StoreError> {
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(&self.path, flags)?;
        // Readers may briefly meet a checkpoint; the writer never waits long
        // because it is the only writer.
        conn.busy_timeout(Duration::from_secs(5))?;
        if !read_only {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            let sync = match self.durability {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            };
            conn.pragma_update(None, "synchronous", sync)?;
        }
        // SQLite's default page cache is 2 MiB; the writer touches every
        // index of every conversation it appends to, readers the accounts
        // and recent messages. Sizes are in KiB (negative = KiB).
        let cache_kib = if read_only {
            READER_CACHE_KIB
        } else {
            WRITER_CACHE_KIB
        };
        conn.pragma_update(None, "cache_size", -cache_kib)?;
        if !read_only {
            // Checkpoints run on the checkpointer thread, never inside a
            // commit that clients are waiting for.
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        }
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// The identity written when this store was created (random, 32 hex
    /// digits); the data directory's marker keeps a copy.
    pub fn identity(&self) -> Result<String, StoreError> {
        let conn = self.connect(true)?;
        let id = conn.query_row("SELECT id FROM store_identity", [], |row| row.get(0))?;
        Ok(id)
    }

    /// Whether this store's messages were moved to the message log (then
    /// only the embedded store may open it).
    pub fn messages_in_log(&self) -> Result<bool, StoreError> {
        let conn = self.connect(true)?;
        Ok(conn.query_row("SELECT migrated FROM message_log", [], |row| row.get(0))?)
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts the thread that copies the WAL into the database file every
    /// `CHECKPOINT_EVERY` (PASSIVE: never blocks the writer or readers).
    /// It stops, after one last checkpoint, when the handle is dropped.
    pub fn start_checkpointer(&self) -> Result<Checkpointer, StoreError> {
        let conn = self.connect(false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ourchat-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(CHECKPOINT_EVERY);
                    checkpoint(&conn, "PASSIVE");
                }
                checkpoint(&conn, "TRUNCATE");
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

/// Page cache of the writer connection, KiB.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Page cache of each reader connection, KiB.
const READER_CACHE_KIB: i64 = 16 * 1024;
/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

fn checkpoint(conn: &Connection, mode: &str) {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    if let Err(e) = conn.query_row(&sql, [], |_| Ok(())) {
        tracing::warn!(error = %e, mode, "WAL checkpoint failed");
    }
}

/// The running checkpointer; dropping it stops the thread.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Backend for SqliteBackend {
    fn writer(&self) -> Result<Box<dyn WriteStore>, StoreError> {
        Ok(Box::new(SqliteWriter {
            conn: self.connect(false)?,
        }))
    }

    fn reader(&self) -> Result<Box<dyn ReadStore>, StoreError> {
        Ok(Box::new(self.sqlite_reader()?))
    }
}

impl SqliteBackend {
    /// A reader, unboxed (the embedded store adds to it).
    pub(crate) fn sqlite_reader(&self) -> Result<SqliteReader, StoreError> {
        Ok(SqliteReader {
            conn: self.connect(true)?,
        })
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this build knows ({known})"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "store schema migrated");
    }
    Ok(())
}

struct SqliteWriter {
    conn: Connection,
}

impl WriteStore for SqliteWriter {
    fn apply_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(ops.len());
        // Conversation heads are written once per batch, not per message:
        // under load one batch holds many messages of the same conversations.
        // They also give the next seq of a conversation already appended to.
        let mut heads: HashMap<&str, Head<'_>> = HashMap::new();
        // A sender has read their own conversation up to what they sent.
        let mut own_reads: HashMap<(i64, &str), i64> = HashMap::new();
        for op in ops {
            let (outcome, appended) = match op {
                WriteOp::AppendMessage(msg) => {
                    let stored = append_message(&tx, msg, &heads)?;
                    (stored.outcome(msg), stored.seq().map(|seq| (msg, seq)))
                }
                WriteOp::GroupChange { event, change } => {
                    let stored = append_message(&tx, event, &heads)?;
                    let seq = stored.seq();
                    if let Some(seq) = seq {
                        apply_group_change(&tx, event, seq, change)?;
                    }
                    (stored.outcome(event), seq.map(|seq| (event, seq)))
                }
                other => (apply_one(&tx, other)?, None),
            };
            if let Some((msg, seq)) = appended {
                let head = heads
                    .entry(&msg.conversation_id)
                    .or_insert(Head { msg, seq });
                if seq >= head.seq {
                    *head = Head { msg, seq };
                }
                let read = own_reads
                    .entry((msg.sender_id, &msg.conversation_id))
                    .or_insert(seq);
                *read = (*read).max(seq);
            }
            outcomes.push(outcome);
        }
        for head in heads.into_values() {
            record_conversation_head(&tx, head.msg, head.seq)?;
        }
        for ((user_id, conversation_id), seq) in own_reads {
            advance_read_cursor(&tx, user_id, conversation_id, seq)?;
        }
        tx.commit()?;
        Ok(outcomes)
    }
}

/// The newest message a batch appended to one conversation, and its seq.
struct Head<'a> {
    msg: &'a ChatMessage,
    seq: i64,
}

fn advance_read_cursor(
    tx: &rusqlite::Transaction<'_>,
    user_id: i64,
    conversation_id: &str,
    seq: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO read_cursors (user_id, conversation_id, read_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id, conversation_id) DO UPDATE
             SET read_seq = MAX(read_seq, excluded.read_seq)",
    )?
    .execute(params![user_id, conversation_id, seq])?;
    Ok(())
}

/// Moves a conversation's head to `msg`; the first time a 1:1 conversation
/// is seen, also lists it for both users (that is what Sync walks). Group
/// members are listed when they join.
fn record_conversation_head(
    tx: &rusqlite::Transaction<'_>,
    msg: &ChatMessage,
    seq: i64,
) -> Result<(), StoreError> {
    let created = tx
        .prepare_cached(
            "INSERT INTO conversations (conversation_id, last_seq, last_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (conversation_id) DO NOTHING",
        )?
        .execute(params![msg.conversation_id, seq, msg.sent_at_ms])?;
    let direct = matches!(
        msg.conversation_id.parse::<ConversationId>(),
        Ok(ConversationId::Direct { .. })
    );
    if created == 1 && direct {
        let mut link = tx.prepare_cached(
            "INSERT INTO user_conversations (user_id, conversation_id) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
        )?;
        link.execute(params![msg.sender_id, msg.conversation_id])?;
        link.execute(params![msg.receiver_id, msg.conversation_id])?;
    } else if created == 0 {
        tx.prepare_cached(
            "UPDATE conversations SET last_seq = MAX(last_seq, ?2), last_at_ms = ?3
             WHERE conversation_id = ?1",
        )?
        .execute(params![msg.conversation_id, seq, msg.sent_at_ms])?;
    }
    Ok(())
}

pub(crate) fn apply_one(
    tx: &rusqlite::Transaction<'_>,
    op: &WriteOp,
) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::CreateAccount(account) => {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO users (user_id, username, password_hash, phone, email, nickname, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    account.user_id,
                    account.username,
                    account.password_hash,
                    account.phone,
                    account.email,
                    account.nickname,
                    account.created_at_ms
                ])?;
            Ok(if inserted == 1 {
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
            tx.prepare_cached(
                "INSERT INTO devices (user_id, device_id, device_type, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET device_type = excluded.device_type,
                     last_seen_ms = excluded.last_seen_ms, signed_out = 0",
            )?
            .execute(params![user_id, device_id, device_type, seen_at_ms])?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::UpdateProfile { user_id, update } => {
            let changed = tx
                .prepare_cached(
                    "UPDATE users SET nickname = COALESCE(?2, nickname),
                         avatar_url = COALESCE(?3, avatar_url), signature = COALESCE(?4, signature),
                         phone = COALESCE(?5, phone), email = COALESCE(?6, email)
                     WHERE user_id = ?1",
                )?
                .execute(params![
                    user_id,
                    update.nickname,
                    update.avatar_url,
                    update.signature,
                    update.phone,
                    update.email
                ])?;
            Ok(if changed == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::SetPassword {
            user_id,
            password_hash,
            keep_device,
        } => {
            let changed = tx
                .prepare_cached("UPDATE users SET password_hash = ?2 WHERE user_id = ?1")?
                .execute(params![user_id, password_hash])?;
            tx.prepare_cached(
                "UPDATE devices SET token_epoch = token_epoch + 1, signed_out = 1
                 WHERE user_id = ?1 AND device_id != ?2",
            )?
            .execute(params![user_id, keep_device])?;
            Ok(if changed == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::RevokeDevice { user_id, device_id } => {
            let changed = tx
                .prepare_cached(
                    "UPDATE devices SET token_epoch = token_epoch + 1, signed_out = 1
                     WHERE user_id = ?1 AND device_id = ?2",
                )?
                .execute(params![user_id, device_id])?;
            Ok(if changed == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::RequestFriend {
            from,
            to,
            note,
            at_ms,
        } => {
            tx.prepare_cached(
                "INSERT INTO friend_requests (from_user, to_user, note, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (from_user, to_user) DO UPDATE
                     SET note = excluded.note, created_at_ms = excluded.created_at_ms",
            )?
            .execute(params![from, to, note, at_ms])?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::AnswerFriend {
            from,
            to,
            accept,
            at_ms,
        } => {
            let answered = tx
                .prepare_cached(
                    "DELETE FROM friend_requests WHERE from_user = ?1 AND to_user = ?2",
                )?
                .execute(params![from, to])?;
            if answered == 0 {
                return Ok(WriteOutcome::Refused);
            }
            if *accept {
                let mut befriend = tx.prepare_cached(
                    "INSERT INTO friends (user_id, friend_id, since_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?;
                befriend.execute(params![from, to, at_ms])?;
                befriend.execute(params![to, from, at_ms])?;
                // A crossed request the other way is answered by this too.
                tx.prepare_cached(
                    "DELETE FROM friend_requests WHERE from_user = ?1 AND to_user = ?2",
                )?
                .execute(params![to, from])?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::Unfriend { a, b } => {
            let removed = tx
                .prepare_cached(
                    "DELETE FROM friends WHERE (user_id = ?1 AND friend_id = ?2)
                        OR (user_id = ?2 AND friend_id = ?1)",
                )?
                .execute(params![a, b])?;
            Ok(if removed > 0 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::Block {
            user_id,
            blocked_id,
            block,
            at_ms,
        } => {
            if *block {
                tx.prepare_cached(
                    "INSERT INTO blocks (user_id, blocked_id, since_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![user_id, blocked_id, at_ms])?;
                tx.prepare_cached(
                    "DELETE FROM friends WHERE (user_id = ?1 AND friend_id = ?2)
                        OR (user_id = ?2 AND friend_id = ?1)",
                )?
                .execute(params![user_id, blocked_id])?;
                tx.prepare_cached(
                    "DELETE FROM friend_requests WHERE (from_user = ?1 AND to_user = ?2)
                        OR (from_user = ?2 AND to_user = ?1)",
                )?
                .execute(params![user_id, blocked_id])?;
                Ok(WriteOutcome::Done)
            } else {
                let removed = tx
                    .prepare_cached("DELETE FROM blocks WHERE user_id = ?1 AND blocked_id = ?2")?
                    .execute(params![user_id, blocked_id])?;
                Ok(if removed == 1 {
                    WriteOutcome::Done
                } else {
                    WriteOutcome::Refused
                })
            }
        }
        WriteOp::MarkRead {
            user_id,
            conversation_id,
            seq,
        } => {
            advance_read_cursor(tx, *user_id, conversation_id, *seq)?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::Recall {
            conversation_id,
            seq,
            sender_id,
            not_before_ms,
        } => {
            // One conditional statement: sender, window and "not yet
            // recalled" are checked where the row is changed, so a race
            // cannot recall twice or recall someone else's message.
            let changed = tx
                .prepare_cached(
                    "UPDATE messages SET recalled = 1, content = '', media = NULL, location = NULL
                     WHERE conversation_id = ?1 AND seq = ?2 AND sender_id = ?3
                       AND sent_at_ms >= ?4 AND recalled = 0",
                )?
                .execute(params![conversation_id, seq, sender_id, not_before_ms])?;
            Ok(if changed == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
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
            tx.prepare_cached(
                "INSERT INTO device_cursors (user_id, device_id, conversation_id, delivered_seq)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, device_id, conversation_id) DO UPDATE
                     SET delivered_seq = MAX(delivered_seq, excluded.delivered_seq)",
            )?
            .execute(params![user_id, device_id, conversation_id, seq])?;
            Ok(WriteOutcome::Done)
        }
    }
}

/// Applies a group change whose event message `event` was just stored.
pub(crate) fn apply_group_change(
    tx: &rusqlite::Transaction<'_>,
    event: &ChatMessage,
    seq: i64,
    change: &GroupChange,
) -> Result<(), StoreError> {
    let group_id = event.group_id;
    let conversation_id = &event.conversation_id;
    let join = |user_id: i64, role: GroupRole| -> Result<(), StoreError> {
        tx.prepare_cached(
            "INSERT INTO group_members (group_id, user_id, role, join_seq, joined_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role,
                 join_seq = excluded.join_seq, joined_at_ms = excluded.joined_at_ms",
        )?
        .execute(params![
            group_id,
            user_id,
            role as i32,
            seq,
            event.sent_at_ms
        ])?;
        // A rejoin starts a new window: what was said while away stays unseen.
        tx.prepare_cached(
            "INSERT INTO user_conversations (user_id, conversation_id, from_seq, to_seq)
             VALUES (?1, ?2, ?3, NULL)
             ON CONFLICT (user_id, conversation_id) DO UPDATE
                 SET from_seq = excluded.from_seq, to_seq = NULL",
        )?
        .execute(params![user_id, conversation_id, seq])?;
        // The join event is theirs: it does not count as unread.
        advance_read_cursor(tx, user_id, conversation_id, seq)
    };
    let leave = |user_id: i64| -> Result<(), StoreError> {
        tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
            .execute(params![group_id, user_id])?;
        tx.prepare_cached(
            "UPDATE user_conversations SET to_seq = ?3 WHERE user_id = ?1 AND conversation_id = ?2",
        )?
        .execute(params![user_id, conversation_id, seq])?;
        Ok(())
    };
    let set_role = |user_id: i64, role: GroupRole| -> Result<(), StoreError> {
        tx.prepare_cached(
            "UPDATE group_members SET role = ?3 WHERE group_id = ?1 AND user_id = ?2",
        )?
        .execute(params![group_id, user_id, role as i32])?;
        Ok(())
    };
    match change {
        GroupChange::Create { group, members } => {
            tx.prepare_cached(
                "INSERT INTO chat_groups (group_id, name, description, avatar_url, owner_id, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                group.group_id,
                group.name,
                group.description,
                group.avatar_url,
                group.owner_id,
                group.created_at_ms
            ])?;
            join(group.owner_id, GroupRole::Owner)?;
            for member in members {
                join(*member, GroupRole::Member)?;
            }
        }
        GroupChange::Update {
            name,
            description,
            avatar_url,
        } => {
            tx.prepare_cached(
                "UPDATE chat_groups SET name = COALESCE(?2, name),
                     description = COALESCE(?3, description), avatar_url = COALESCE(?4, avatar_url)
                 WHERE group_id = ?1",
            )?
            .execute(params![group_id, name, description, avatar_url])?;
        }
        GroupChange::Join(users) => {
            for user in users {
                join(*user, GroupRole::Member)?;
            }
        }
        GroupChange::Leave(users) => {
            for user in users {
                leave(*user)?;
            }
        }
        GroupChange::SetRole { user_id, role } => set_role(*user_id, *role)?,
        GroupChange::TransferOwner { from, to } => {
            set_role(*from, GroupRole::Admin)?;
            set_role(*to, GroupRole::Owner)?;
            tx.prepare_cached("UPDATE chat_groups SET owner_id = ?2 WHERE group_id = ?1")?
                .execute(params![group_id, to])?;
        }
        GroupChange::Dissolve => {
            tx.prepare_cached("UPDATE chat_groups SET dissolved = 1 WHERE group_id = ?1")?
                .execute([group_id])?;
            tx.prepare_cached(
                "UPDATE user_conversations SET to_seq = ?2
                 WHERE conversation_id = ?1 AND to_seq IS NULL",
            )?
            .execute(params![conversation_id, seq])?;
            tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1")?
                .execute([group_id])?;
        }
    }
    Ok(())
}

/// Appends `msg` under its given seq, or (seq 0) under the conversation's
/// next one; `heads` knows the newest seq this batch gave each
/// conversation so far.
fn append_message(
    tx: &rusqlite::Transaction<'_>,
    msg: &ChatMessage,
    heads: &HashMap<&str, Head<'_>>,
) -> Result<Stored, StoreError> {
    let seq = match msg.seq {
        0 => match heads.get(msg.conversation_id.as_str()) {
            Some(head) => head.seq + 1,
            None => {
                tx.prepare_cached(
                    "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?1",
                )?
                .query_row([&msg.conversation_id], |row| row.get::<_, i64>(0))?
                    + 1
            }
        },
        given => given,
    };
    let media = msg.media.as_ref().map(Message::encode_to_vec);
    let location = msg.location.as_ref().map(Message::encode_to_vec);
    let inserted = tx
        .prepare_cached(
            "INSERT INTO messages (conversation_id, seq, server_msg_id, sender_id, receiver_id,
                 message_type, content, client_message_id, sent_at_ms, sender_device, media, location,
                 group_event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            msg.conversation_id,
            seq,
            msg.server_msg_id,
            msg.sender_id,
            msg.receiver_id,
            msg.message_type,
            msg.content,
            msg.client_message_id,
            msg.sent_at_ms,
            msg.sender_device,
            media,
            location,
            msg.group_event.as_ref().map(Message::encode_to_vec),
        ])?;
    if inserted == 1 {
        return Ok(Stored::At(seq));
    }
    // Nothing written: the client id is taken (a resend, however old), or
    // a given seq is (a replay).
    let first = tx
        .prepare_cached(
            "SELECT seq, server_msg_id, sent_at_ms, message_type, content, media, location
             FROM messages
             WHERE conversation_id = ?1 AND sender_id = ?2 AND client_message_id = ?3",
        )?
        .query_row(
            params![msg.conversation_id, msg.sender_id, msg.client_message_id],
            |row| {
                Ok(SentBefore {
                    seq: row.get(0)?,
                    server_msg_id: row.get(1)?,
                    sent_at_ms: row.get(2)?,
                    same_content: row.get::<_, i32>(3)? == msg.message_type
                        && row.get::<_, String>(4)? == msg.content
                        && row.get::<_, Option<Vec<u8>>>(5)? == media
                        && row.get::<_, Option<Vec<u8>>>(6)? == location,
                })
            },
        )
        .optional()?;
    Ok(match first {
        Some(first) => Stored::SentBefore(first),
        None => Stored::SeqTaken,
    })
}

fn recent_send(row: &rusqlite::Row<'_>) -> rusqlite::Result<RecentSend> {
    Ok(RecentSend {
        sender_id: row.get(0)?,
        client_message_id: row.get(1)?,
        seq: row.get(2)?,
        server_msg_id: row.get(3)?,
        sent_at_ms: row.get(4)?,
        fingerprint: content_fingerprint(
            row.get(5)?,
            &row.get::<_, String>(6)?,
            row.get::<_, Option<Vec<u8>>>(7)?.as_deref(),
            row.get::<_, Option<Vec<u8>>>(8)?.as_deref(),
        ),
    })
}

pub(crate) struct SqliteReader {
    conn: Connection,
}

pub(crate) const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, server_msg_id, sender_id, receiver_id,
    message_type, content, client_message_id, sent_at_ms, sender_device, media, location, recalled,
    group_event";

/// Decodes a stored payload column; bytes that do not decode are corrupt.
fn payload<T: Message + Default>(
    row: &rusqlite::Row<'_>,
    column: usize,
) -> rusqlite::Result<Option<T>> {
    let bytes: Option<Vec<u8>> = row.get(column)?;
    bytes
        .map(|b| {
            T::decode(b.as_slice()).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    column,
                    rusqlite::types::Type::Blob,
                    Box::new(e),
                )
            })
        })
        .transpose()
}

pub(crate) fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ChatMessage> {
    let conversation_id: String = row.get(0)?;
    let group_id = match conversation_id.parse::<ConversationId>() {
        Ok(ConversationId::Group(group_id)) => group_id,
        _ => 0,
    };
    Ok(ChatMessage {
        conversation_id,
        group_id,
        seq: row.get(1)?,
        server_msg_id: row.get(2)?,
        sender_id: row.get(3)?,
        receiver_id: row.get(4)?,
        message_type: row.get(5)?,
        content: row.get(6)?,
        client_message_id: row.get(7)?,
        sent_at_ms: row.get(8)?,
        sender_device: row.get(9)?,
        media: payload(row, 10)?,
        location: payload(row, 11)?,
        recalled: row.get(12)?,
        group_event: payload(row, 13)?,
    })
}

const ACCOUNT_COLUMNS: &str =
    "user_id, username, password_hash, nickname, phone, email, avatar_url, signature";

fn account_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        user_id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        nickname: row.get(3)?,
        phone: row.get(4)?,
        email: row.get(5)?,
        avatar_url: row.get(6)?,
        signature: row.get(7)?,
    })
}

fn device_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        device_id: row.get(0)?,
        device_type: row.get(1)?,
        last_seen_ms: row.get(2)?,
        token_epoch: row.get(3)?,
        signed_out: row.get(4)?,
    })
}

/// A group and the viewer's role; `?2` binds the viewer.
const GROUP_COLUMNS: &str = "g.group_id, g.name, g.description, g.avatar_url, g.owner_id,
    (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.group_id), g.created_at_ms,
    g.dissolved, (SELECT role FROM group_members v WHERE v.group_id = g.group_id AND v.user_id = ?2)";

fn group_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    Ok(GroupRow {
        group_id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        avatar_url: row.get(3)?,
        owner_id: row.get(4)?,
        member_count: row.get(5)?,
        created_at_ms: row.get(6)?,
        dissolved: row.get(7)?,
        viewer_role: row.get::<_, Option<i32>>(8)?.map(GroupRole::from_i32),
    })
}

impl SqliteReader {
    /// The conversations listed for a user (groups from their join, and
    /// 1:1 conversations of stores written before the message log) with
    /// what the user may see of each.
    pub(crate) fn listed(&mut self, user_id: i64) -> Result<Vec<(String, Visibility)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT conversation_id, from_seq, to_seq FROM user_conversations
                 WHERE user_id = ?1",
            )?
            .query_map([user_id], |row| {
                Ok((
                    row.get(0)?,
                    Visibility {
                        from_seq: row.get(1)?,
                        to_seq: row.get(2)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// What the sequencer checks sends against, besides the messages: for
    /// a 1:1 conversation whether one side blocked the other, for a group
    /// its roster.
    pub(crate) fn standing(
        &mut self,
        conversation_id: &str,
    ) -> Result<(bool, Option<GroupRoster>), StoreError> {
        match conversation_id.parse::<ConversationId>() {
            Ok(ConversationId::Direct { low, high }) => {
                let blocked = self
                    .conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM blocks WHERE (user_id = ?1 AND blocked_id = ?2)
                            OR (user_id = ?2 AND blocked_id = ?1))",
                    )?
                    .query_row(params![low, high], |row| row.get(0))?;
                Ok((blocked, None))
            }
            Ok(ConversationId::Group(group_id)) => Ok((false, self.group_roster(group_id)?)),
            Err(_) => Ok((false, None)),
        }
    }

    fn group_roster(&mut self, group_id: i64) -> Result<Option<GroupRoster>, StoreError> {
        let Some((owner_id, dissolved)) = self
            .conn
            .prepare_cached("SELECT owner_id, dissolved FROM chat_groups WHERE group_id = ?1")?
            .query_row([group_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?
        else {
            return Ok(None);
        };
        let members = self
            .conn
            .prepare_cached("SELECT user_id, role FROM group_members WHERE group_id = ?1")?
            .query_map([group_id], |row| {
                Ok((row.get(0)?, GroupRole::from_i32(row.get(1)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(GroupRoster {
            owner_id,
            dissolved,
            members,
        }))
    }
}

/// SQLite takes LIMIT as i64; callers' limits are small, so saturate.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A user's friends and since when, by friend id.
const FRIENDS_OF_USER: &str =
    "SELECT friend_id, since_ms FROM friends WHERE user_id = ?1 ORDER BY friend_id";

/// [`FRIENDS_OF_USER`] run for `user_id` on its prepared statement.
fn friends_by(
    statement: &mut rusqlite::CachedStatement<'_>,
    user_id: i64,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    statement
        .query_map([user_id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect()
}

impl ReadStore for SqliteReader {
    fn check_health(&mut self) -> Result<(), StoreError> {
        let conn = &self.conn;
        conn.query_row("SELECT id FROM store_identity", [], |_| Ok(()))?;
        let objects = conn
            .prepare(
                "SELECT type, name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')",
            )?
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (kind, name, table) in objects {
            let probe = if kind == "table" {
                format!("SELECT * FROM \"{name}\" NOT INDEXED LIMIT 1")
            } else {
                let first_column: Option<String> = conn
                    .query_row(&format!("PRAGMA index_info(\"{name}\")"), [], |row| {
                        row.get(2)
                    })
                    .ok();
                let Some(column) = first_column else { continue };
                format!(
                    "SELECT 1 FROM \"{table}\" INDEXED BY \"{name}\" ORDER BY \"{column}\" LIMIT 1"
                )
            };
            // Only damage counts: a probe the planner cannot run is skipped.
            if let Err(err) = conn.query_row(&probe, [], |_| Ok(())).optional() {
                if let StoreError::Corrupt(message) = StoreError::from(err) {
                    return Err(StoreError::Corrupt(format!("{name}: {message}")));
                }
            }
        }
        Ok(())
    }

    fn account_by_username(&mut self, username: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM users WHERE username = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([username], account_from_row)
            .optional()?)
    }

    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM users WHERE user_id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([user_id], account_from_row)
            .optional()?)
    }

    fn friends(&mut self, user_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        Ok(friends_by(
            &mut self.conn.prepare_cached(FRIENDS_OF_USER)?,
            user_id,
        )?)
    }

    /// One read transaction for all: each statement alone would take and
    /// drop the database's locks (file locks, two system calls each way),
    /// and a reconnect storm asks for thousands a second.
    fn friends_of_each(&mut self, user_ids: &[i64]) -> Result<Vec<Vec<(i64, i64)>>, StoreError> {
        let read = self.conn.transaction()?;
        let mut statement = read.prepare_cached(FRIENDS_OF_USER)?;
        let lists = user_ids
            .iter()
            .map(|user_id| friends_by(&mut statement, *user_id))
            .collect::<Result<Vec<_>, _>>()?;
        drop(statement);
        read.commit()?;
        Ok(lists)
    }

    fn friend_requests(&mut self, user_id: i64) -> Result<Vec<FriendRequestRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT from_user, to_user, note, created_at_ms FROM friend_requests
                 WHERE from_user = ?1 OR to_user = ?1 ORDER BY created_at_ms, from_user",
            )?
            .query_map([user_id], |row| {
                Ok(FriendRequestRow {
                    from: row.get(0)?,
                    to: row.get(1)?,
                    note: row.get(2)?,
                    created_at_ms: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn relation(&mut self, a: i64, b: i64) -> Result<Relation, StoreError> {
        let exists = |conn: &Connection, sql: &str| -> Result<bool, StoreError> {
            Ok(conn
                .prepare_cached(sql)?
                .query_row(params![a, b], |row| row.get(0))?)
        };
        Ok(Relation {
            friends: exists(
                &self.conn,
                "SELECT EXISTS (SELECT 1 FROM friends WHERE user_id = ?1 AND friend_id = ?2)",
            )?,
            a_blocked_b: exists(
                &self.conn,
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE user_id = ?1 AND blocked_id = ?2)",
            )?,
            b_blocked_a: exists(
                &self.conn,
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE user_id = ?2 AND blocked_id = ?1)",
            )?,
            b_requested_a: exists(
                &self.conn,
                "SELECT EXISTS (SELECT 1 FROM friend_requests WHERE from_user = ?2 AND to_user = ?1)",
            )?,
        })
    }

    fn blocked_by(&mut self, user_id: i64) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT blocked_id FROM blocks WHERE user_id = ?1 ORDER BY blocked_id")?
            .query_map([user_id], |row| row.get(0))?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn search_users(
        &mut self,
        prefix: &str,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        let pattern = crate::like_prefix(prefix);
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM users
             WHERE user_id > ?2 AND (username LIKE ?1 ESCAPE '\\' OR nickname LIKE ?1 ESCAPE '\\'
                OR phone LIKE ?1 ESCAPE '\\' OR email LIKE ?1 ESCAPE '\\')
             ORDER BY user_id LIMIT ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![pattern, after_user_id, sql_limit(limit)],
                account_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn devices(&mut self, user_id: i64) -> Result<Vec<Device>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT device_id, device_type, last_seen_ms, token_epoch, signed_out FROM devices
                 WHERE user_id = ?1 ORDER BY last_seen_ms DESC, device_id",
            )?
            .query_map([user_id], device_from_row)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn device(&mut self, user_id: i64, device_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT device_id, device_type, last_seen_ms, token_epoch, signed_out FROM devices
                 WHERE user_id = ?1 AND device_id = ?2",
            )?
            .query_row(params![user_id, device_id], device_from_row)
            .optional()?)
    }

    fn sends_among(
        &mut self,
        conversation_id: &str,
        sends: &[(i64, i64)],
    ) -> Result<Vec<RecentSend>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {SEND_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND sender_id = ?2 AND client_message_id = ?3"
        ))?;
        let mut found = Vec::new();
        for (sender, client_message_id) in sends {
            let row = statement
                .query_row(
                    params![conversation_id, sender, client_message_id],
                    recent_send,
                )
                .optional()?;
            found.extend(row);
        }
        Ok(found)
    }

    fn conversation_head(
        &mut self,
        conversation_id: &str,
        window: usize,
    ) -> Result<ConversationHead, StoreError> {
        let recent = self
            .conn
            .prepare_cached(&format!(
                "SELECT {SEND_COLUMNS} FROM messages WHERE conversation_id = ?1
                     ORDER BY seq DESC LIMIT ?2"
            ))?
            .query_map(params![conversation_id, sql_limit(window)], recent_send)?
            .collect::<Result<Vec<_>, _>>()?;
        let (blocked, group) = self.standing(conversation_id)?;
        // The newest row is the head; with an empty window, ask for it alone.
        let last_seq = match recent.first() {
            Some(newest) => newest.seq,
            None => self
                .conn
                .prepare_cached(
                    "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?1",
                )?
                .query_row([conversation_id], |row| row.get(0))?,
        };
        Ok(ConversationHead {
            last_seq,
            recent,
            blocked,
            group,
        })
    }

    fn group(&mut self, group_id: i64, viewer: i64) -> Result<Option<GroupRow>, StoreError> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM chat_groups g WHERE g.group_id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![group_id, viewer], group_from_row)
            .optional()?)
    }

    fn group_members(
        &mut self,
        group_id: i64,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupMemberRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT user_id, role, join_seq, joined_at_ms FROM group_members
                 WHERE group_id = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3",
            )?
            .query_map(params![group_id, after_user_id, sql_limit(limit)], |row| {
                Ok(GroupMemberRow {
                    user_id: row.get(0)?,
                    role: GroupRole::from_i32(row.get(1)?),
                    join_seq: row.get(2)?,
                    joined_at_ms: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn my_groups(
        &mut self,
        user_id: i64,
        after_group_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupRow>, StoreError> {
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM group_members m JOIN chat_groups g ON g.group_id = m.group_id
             WHERE m.user_id = ?2 AND m.group_id > ?1 ORDER BY m.group_id LIMIT ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![after_group_id, user_id, sql_limit(limit)],
                group_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn visibility(
        &mut self,
        user_id: i64,
        conversation_id: &str,
    ) -> Result<Option<Visibility>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT from_seq, to_seq FROM user_conversations
                 WHERE user_id = ?1 AND conversation_id = ?2",
            )?
            .query_row(params![user_id, conversation_id], |row| {
                Ok(Visibility {
                    from_seq: row.get(0)?,
                    to_seq: row.get(1)?,
                })
            })
            .optional()?)
    }

    fn existing_users(&mut self, user_ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE user_id = ?1)")?;
        let mut found = Vec::with_capacity(user_ids.len());
        for &user_id in user_ids {
            if statement.query_row([user_id], |row| row.get::<_, bool>(0))? {
                found.push(user_id);
            }
        }
        Ok(found)
    }

    fn history(
        &mut self,
        conversation_id: &str,
        before_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let before = if before_seq <= 0 {
            i64::MAX
        } else {
            before_seq
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND seq < ?2
             ORDER BY seq DESC LIMIT ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![conversation_id, before, sql_limit(limit)],
                message_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn messages_after(
        &mut self,
        conversation_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND seq > ?2
             ORDER BY seq ASC LIMIT ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![conversation_id, after_seq, sql_limit(limit)],
                message_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn message(
        &mut self,
        conversation_id: &str,
        seq: i64,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND seq = ?2"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![conversation_id, seq], message_from_row)
            .optional()?)
    }

    fn read_seq(&mut self, user_id: i64, conversation_id: &str) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT read_seq FROM read_cursors WHERE user_id = ?1 AND conversation_id = ?2",
            )?
            .query_row(params![user_id, conversation_id], |row| row.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn conversations(
        &mut self,
        user_id: i64,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        // Most recent first; (last_at_ms, conversation_id) is the page key.
        let (before_at, before_id) = before.unwrap_or((i64::MAX, ""));
        Ok(self
            .conn
            .prepare_cached(
                "SELECT c.conversation_id, MIN(c.last_seq, COALESCE(uc.to_seq, c.last_seq)),
                     c.last_at_ms, COALESCE(r.read_seq, 0)
                 FROM user_conversations uc
                 JOIN conversations c ON c.conversation_id = uc.conversation_id
                 LEFT JOIN read_cursors r ON r.user_id = uc.user_id
                      AND r.conversation_id = uc.conversation_id
                 WHERE uc.user_id = ?1
                   AND (c.last_at_ms < ?2 OR (c.last_at_ms = ?2 AND c.conversation_id < ?3))
                 ORDER BY c.last_at_ms DESC, c.conversation_id DESC
                 LIMIT ?4",
            )?
            .query_map(
                params![user_id, before_at, before_id, sql_limit(limit)],
                |row| {
                    Ok(ConversationRow {
                        conversation_id: row.get(0)?,
                        last_seq: row.get(1)?,
                        last_at_ms: row.get(2)?,
                        read_seq: row.get(3)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn conversation_cursors(
        &mut self,
        user_id: i64,
        device_id: &str,
    ) -> Result<Vec<ConversationCursor>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT uc.conversation_id, c.last_seq, COALESCE(dc.delivered_seq, 0),
                     uc.from_seq, uc.to_seq
                 FROM user_conversations uc
                 JOIN conversations c ON c.conversation_id = uc.conversation_id
                 LEFT JOIN device_cursors dc ON dc.user_id = uc.user_id AND dc.device_id = ?2
                      AND dc.conversation_id = uc.conversation_id
                 WHERE uc.user_id = ?1
                 ORDER BY uc.conversation_id",
            )?
            .query_map(params![user_id, device_id], |row| {
                Ok(ConversationCursor {
                    conversation_id: row.get(0)?,
                    last_seq: row.get(1)?,
                    delivered_seq: row.get(2)?,
                    visible: Visibility {
                        from_seq: row.get(3)?,
                        to_seq: row.get(4)?,
                    },
                })
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: i64, name: &str) -> WriteOp {
        WriteOp::CreateAccount(crate::NewAccount {
            user_id: id,
            username: name.into(),
            password_hash: "h".into(),
            phone: String::new(),
            email: String::new(),
            nickname: name.into(),
            created_at_ms: 0,
        })
    }

    #[test]
    fn reopening_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = SqliteBackend::open(dir.path(), Durability::Full).unwrap();
            backend
                .writer()
                .unwrap()
                .apply_batch(&[account(9, "zed")])
                .unwrap();
        }
        let backend = SqliteBackend::open(dir.path(), Durability::Full).unwrap();
        let mut reader = backend.reader().unwrap();
        assert_eq!(reader.account_by_id(9).unwrap().unwrap().username, "zed");
        let conn = backend.connect(true).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(dir.path(), Durability::Full).unwrap();
        backend
            .connect(false)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            SqliteBackend::open(dir.path(), Durability::Full),
            Err(StoreError::Corrupt(_))
        ));
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// Writer cost per message, alone on the machine. A measurement, not a
    /// test: `cargo test --release -p ourchat-storage -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn writer_cost_per_message() {
        for (durability, batch) in [
            (Durability::Full, 1),
            (Durability::Full, 30),
            (Durability::Full, 300),
            (Durability::Normal, 30),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let backend = SqliteBackend::open(dir.path(), durability).unwrap();
            let mut writer = backend.writer().unwrap();
            let total = 30_000;
            let started = std::time::Instant::now();
            let mut seqs = std::collections::HashMap::new();
            let ops: Vec<WriteOp> = (0..total)
                .map(|i: i64| {
                    let a = 1 + (i * 7919) % 2000;
                    let b = 1 + (a + 1 + i % 10) % 2000;
                    let (low, high) = (a.min(b), a.max(b).max(a.min(b) + 1));
                    let conv = format!("si_{low}_{high}");
                    let seq = seqs.entry(conv.clone()).or_insert(0);
                    *seq += 1;
                    WriteOp::AppendMessage(Box::new(ChatMessage {
                        conversation_id: conv,
                        seq: *seq,
                        server_msg_id: i,
                        sender_id: low,
                        receiver_id: high,
                        message_type: 0,
                        content: "1795734060617000000".into(),
                        client_message_id: i + 1,
                        sent_at_ms: i,
                        sender_device: "d".into(),
                        ..Default::default()
                    }))
                })
                .collect();
            for chunk in ops.chunks(batch) {
                writer.apply_batch(chunk).unwrap();
            }
            let per = started.elapsed() / total as u32;
            println!("{durability:?} batch {batch}: {per:?} per message");
        }
    }
}
