//! The embedded backend: one SQLite file in WAL mode under the data
//! directory. One writer connection commits batches; any number of reader
//! connections read concurrently (WAL lets readers run beside the writer).
//! The schema is created on first open and upgraded by numbered migrations
//! tracked in `PRAGMA user_version`.
//!
//! `migrations` holds the schema's history, `writer` the batched writes
//! (which the embedded store's writer reuses for its SQLite half), `reader`
//! the reads, and `rows` how a row becomes a value.

mod migrations;
mod reader;
mod rows;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::{Backend, ReadStore, StoreError, WriteStore};
use migrations::MIGRATIONS;
pub(crate) use reader::SqliteReader;
pub(crate) use rows::{message_from_row, MESSAGE_COLUMNS};
use writer::SqliteWriter;
pub(crate) use writer::{apply_group_change, apply_one};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "ourchat.db";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WriteOp;

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
    use crate::{ChatMessage, WriteOp};

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
