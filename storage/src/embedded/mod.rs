//! The embedded store, the single-node default: messages, delivery
//! cursors, read marks and recalls in the message log (`msglog`), which
//! appends a batch with one write and one fsync and answers reads from an
//! in-memory index; accounts, devices, friends and groups in SQLite, which
//! is good at what changes rarely and is queried many ways.
//!
//! Opening it: SQLite first (schema migrations), then the log (replay,
//! torn-tail and damage checks, high-water marks), then the group tables
//! are brought up to the log (a crash may have fallen between the two),
//! then a store written before the log existed has its messages moved in.

mod accounts;
mod change;
mod memory;
mod reader;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};

use crate::msglog::disk::FileDisk;
use crate::msglog::log::LogError;
use crate::msglog::store::{Append, MessageReader, MessageStore, SharedIndex};
use crate::sqlite::{
    apply_group_change, message_from_row, Durability, SqliteBackend, MESSAGE_COLUMNS,
};
use crate::{Backend, MemoryReads, ReadStore, StoreError, WriteStore};
use accounts::Accounts;
use memory::{Blocks, EmbeddedMemory};
use reader::EmbeddedReader;
use writer::EmbeddedWriter;

/// The log's directory inside the data directory.
pub const LOG_DIR: &str = "messages";

/// Segment files are this long (sparse until written).
const SEGMENT_BYTES: u64 = 64 << 20;

/// Messages moved per log batch when an old store is migrated.
const MIGRATE_BATCH: usize = 2_000;

/// The embedded store in one data directory.
pub struct EmbeddedBackend {
    sqlite: SqliteBackend,
    log_dir: PathBuf,
    index: SharedIndex,
    /// Who blocked whom, kept by the writer.
    blocks: Arc<Blocks>,
    /// Account ids and revoked devices, kept by the writer.
    accounts: Arc<Accounts>,
    /// The one writer, until it is taken.
    writer: Mutex<Option<MessageStore<FileDisk>>>,
    /// Held (flock) while the store is open: a second process on the same
    /// directory would interleave its batches with ours.
    _lock: File,
}

/// A log error as the store's: damage and lost data are corruption.
pub(crate) fn log_error(err: LogError) -> StoreError {
    match err {
        LogError::Damaged { .. } | LogError::Lost { .. } | LogError::BadMarks(_) => {
            StoreError::Corrupt(err.to_string())
        }
        other => StoreError::Unavailable {
            message: other.to_string(),
            retryable: false,
        },
    }
}

impl EmbeddedBackend {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let sqlite = SqliteBackend::open(data_dir, durability)?;
        let mut conn = sqlite.connect(false)?;
        let (applied_batch, migrated): (i64, bool) = conn.query_row(
            "SELECT applied_batch, migrated FROM message_log",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let log_dir = data_dir.join(LOG_DIR);
        let in_log = |err: LogError| match log_error(err) {
            StoreError::Corrupt(why) => StoreError::Damaged {
                file: log_dir.clone(),
                why,
            },
            other => other,
        };
        let has_segments = std::fs::read_dir(&log_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            })
            .unwrap_or(false);
        if migrated && !has_segments {
            return Err(StoreError::Damaged {
                file: log_dir,
                why: format!(
                    "the message log is missing or empty, but {} says it holds the messages: \
                     restore the whole data directory from a backup",
                    sqlite.path().display()
                ),
            });
        }
        let lock = lock(&log_dir)?;
        let mut behind = Vec::new();
        let disk = FileDisk::new(&log_dir)?;
        // `Normal`: an ack survives a process crash (the page cache has
        // the batch), not power loss; the log then skips its fsyncs.
        let sync = durability == Durability::Full;
        let mut log =
            MessageStore::open_replaying(disk, SEGMENT_BYTES, sync, |event, change, batch| {
                if batch as i64 > applied_batch {
                    behind.push((event.clone(), change.to_vec(), batch));
                }
            })
            .map_err(in_log)?;
        catch_up_groups(&mut conn, behind)?;
        if !migrated {
            migrate(&mut conn, &mut log).map_err(|e| match e {
                MigrateError::Store(e) => e,
                MigrateError::Log(e) => in_log(e),
            })?;
        }
        let blocks = Arc::new(Blocks::load(&conn)?);
        let accounts = Arc::new(Accounts::load(&conn)?);
        Ok(EmbeddedBackend {
            sqlite,
            blocks,
            accounts,
            index: log.index(),
            log_dir,
            writer: Mutex::new(Some(log)),
            _lock: lock,
        })
    }

    /// The SQLite half (identity, WAL checkpointer, accounts for the
    /// admin commands).
    pub fn sqlite(&self) -> &SqliteBackend {
        &self.sqlite
    }
}

impl Backend for EmbeddedBackend {
    fn writer(&self) -> Result<Box<dyn WriteStore>, StoreError> {
        let log = self
            .writer
            .lock()
            .map_err(|_| StoreError::Corrupt("the writer slot is poisoned".into()))?
            .take()
            .ok_or_else(|| StoreError::Unavailable {
                message: "the message log has one writer and it is taken".into(),
                retryable: false,
            })?;
        Ok(Box::new(EmbeddedWriter {
            log,
            conn: self.sqlite.connect(false)?,
            blocks: self.blocks.clone(),
            accounts: self.accounts.clone(),
            stopped: None,
        }))
    }

    fn reader(&self) -> Result<Box<dyn ReadStore>, StoreError> {
        Ok(Box::new(EmbeddedReader {
            sql: self.sqlite.sqlite_reader()?,
            log: MessageReader::new(FileDisk::new(&self.log_dir)?, self.index.clone()),
            blocks: self.blocks.clone(),
        }))
    }

    fn memory_reads(&self) -> Option<Arc<dyn MemoryReads>> {
        Some(Arc::new(EmbeddedMemory {
            index: self.index.clone(),
            blocks: self.blocks.clone(),
            accounts: self.accounts.clone(),
        }))
    }
}

/// Takes the directory's lock, or says who holds it.
fn lock(log_dir: &Path) -> Result<File, StoreError> {
    use nix::fcntl::{flock, FlockArg};
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(log_dir)?;
    let file = File::create(log_dir.join("LOCK"))?;
    #[allow(deprecated)] // nix 0.27's Flock type needs a newer nix here
    flock(file.as_raw_fd(), FlockArg::LockExclusiveNonblock).map_err(|_| {
        StoreError::Unavailable {
            message: format!(
                "{} is in use by another ourchat process: stop it first",
                log_dir.display()
            ),
            retryable: false,
        }
    })?;
    Ok(file)
}

/// Applies the group changes the log holds but SQLite's group tables do
/// not (a crash between the log's fsync and SQLite's commit).
fn catch_up_groups(
    conn: &mut Connection,
    behind: Vec<(crate::ChatMessage, Vec<u8>, u64)>,
) -> Result<(), StoreError> {
    let Some(last) = behind.last().map(|(_, _, batch)| *batch) else {
        return Ok(());
    };
    let tx = conn.transaction()?;
    for (event, bytes, _) in &behind {
        let change = change::decode(bytes).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the group change of {} seq {} does not decode",
                event.conversation_id, event.seq
            ))
        })?;
        apply_group_change(&tx, event, event.seq, &change)?;
    }
    tx.execute(
        "UPDATE message_log SET applied_batch = ?1",
        params![last as i64],
    )?;
    tx.commit()?;
    tracing::info!(
        changes = behind.len(),
        "group tables brought up to the message log"
    );
    Ok(())
}

enum MigrateError {
    Store(StoreError),
    Log(LogError),
}

impl From<StoreError> for MigrateError {
    fn from(err: StoreError) -> Self {
        MigrateError::Store(err)
    }
}

impl From<rusqlite::Error> for MigrateError {
    fn from(err: rusqlite::Error) -> Self {
        MigrateError::Store(err.into())
    }
}

impl From<LogError> for MigrateError {
    fn from(err: LogError) -> Self {
        MigrateError::Log(err)
    }
}

/// Moves a store written before the message log existed into it: every
/// message under its seq, delivery cursors and read marks, then empties
/// the old tables, in one SQLite transaction after the log is durable (a
/// crash in between moves them again: stored seqs are skipped).
fn migrate(conn: &mut Connection, log: &mut MessageStore<FileDisk>) -> Result<(), MigrateError> {
    let mut moved = 0usize;
    let mut after: (String, i64) = (String::new(), 0);
    loop {
        let page = conn
            .prepare(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE (conversation_id, seq) > (?1, ?2)
                 ORDER BY conversation_id, seq LIMIT {MIGRATE_BATCH}"
            ))?
            .query_map(params![after.0, after.1], message_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let Some(last) = page.last() else { break };
        after = (last.conversation_id.clone(), last.seq);
        let appends: Vec<Append<'_>> = page.iter().map(Append::Message).collect();
        log.append(&appends)?;
        moved += page.len();
    }
    let cursors = conn
        .prepare("SELECT user_id, device_id, conversation_id, delivered_seq FROM device_cursors")?
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let reads = conn
        .prepare("SELECT user_id, conversation_id, read_seq FROM read_cursors")?
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut appends: Vec<Append<'_>> = Vec::new();
    for (user_id, device_id, conversation, seq) in &cursors {
        if let Ok(conversation) = conversation.parse() {
            appends.push(Append::Cursor {
                user_id: *user_id,
                device_id,
                conversation,
                seq: *seq,
            });
        }
    }
    for (user_id, conversation, seq) in &reads {
        if let Ok(conversation) = conversation.parse() {
            appends.push(Append::Read {
                user_id: *user_id,
                conversation,
                seq: *seq,
            });
        }
    }
    for chunk in appends.chunks(MIGRATE_BATCH * 8) {
        log.append(chunk)?;
    }
    log.checkpoint()?;
    let tx = conn.transaction()?;
    tx.execute_batch(
        "DELETE FROM messages; DELETE FROM conversations; DELETE FROM device_cursors;
         DELETE FROM read_cursors; UPDATE message_log SET migrated = 1;",
    )?;
    tx.commit()?;
    if moved > 0 {
        tracing::info!(
            messages = moved,
            cursors = cursors.len(),
            reads = reads.len(),
            "messages moved from SQLite into the message log"
        );
    }
    Ok(())
}
