//! The node's store, opened as configured: the embedded store or all-SQLite
//! in the data directory (checked against its marker, health-checked so a
//! damaged page fails the start), or MySQL shards; and the error that
//! names a damaged file and the way out.

use std::path::Path;

use ourchat_storage::embedded::EmbeddedBackend;
use ourchat_storage::mysql::MysqlBackend;
use ourchat_storage::sqlite::{self, SqliteBackend};
use ourchat_storage::{Backend, StoreError};

use super::ServeError;
use crate::config::{Durability, StorageConfig, StoreKind};
use crate::data_dir;

/// The configured store, and for SQLite its WAL checkpointer (kept alive
/// for as long as the node runs).
pub fn open_store(
    storage: &StorageConfig,
) -> Result<(Box<dyn Backend>, Option<sqlite::Checkpointer>), ServeError> {
    let dir = &storage.data_dir;
    let durability = durability_of(storage.durability);
    let (backend, sqlite): (Box<dyn Backend>, SqliteBackend) = match storage.backend {
        StoreKind::Embedded => {
            let expected = data_dir::check_before_open(dir, sqlite::DB_FILE)?;
            let backend = EmbeddedBackend::open(dir, durability)
                .map_err(|e| damaged_store(&dir.join(sqlite::DB_FILE), e))?;
            let sqlite = backend.sqlite().clone();
            confirm_identity(dir, &expected, &sqlite)?;
            (Box::new(backend), sqlite)
        }
        StoreKind::Sqlite => {
            let sqlite = open_sqlite(storage)?;
            let moved = sqlite
                .messages_in_log()
                .map_err(|e| damaged_store(sqlite.path(), e))?;
            if moved {
                return Err(ServeError::Core(format!(
                    "the messages of {} are in its message log: start it with \
                     storage.backend = \"embedded\"",
                    dir.display()
                )));
            }
            (Box::new(sqlite.clone()), sqlite)
        }
        StoreKind::Mysql => return open_mysql(storage),
    };
    // A damaged page fails the start, not every later login.
    backend
        .reader()
        .and_then(|mut reader| reader.check_health())
        .map_err(|e| damaged_store(sqlite.path(), e))?;
    let checkpointer = sqlite.start_checkpointer()?;
    Ok((backend, Some(checkpointer)))
}

/// The SQLite store of the data directory, checked against its marker.
pub(super) fn open_sqlite(storage: &StorageConfig) -> Result<SqliteBackend, ServeError> {
    let dir = &storage.data_dir;
    let expected = data_dir::check_before_open(dir, sqlite::DB_FILE)?;
    let backend = SqliteBackend::open(dir, durability_of(storage.durability))
        .map_err(|e| damaged_store(&dir.join(sqlite::DB_FILE), e))?;
    confirm_identity(dir, &expected, &backend)?;
    Ok(backend)
}

pub(super) fn confirm_identity(
    dir: &Path,
    expected: &data_dir::Expected,
    backend: &SqliteBackend,
) -> Result<(), ServeError> {
    let identity = backend
        .identity()
        .map_err(|e| damaged_store(backend.path(), e))?;
    Ok(data_dir::confirm_store(
        dir,
        sqlite::DB_FILE,
        expected,
        &identity,
    )?)
}

/// The part of the configured store that keeps accounts and devices, for
/// the admin commands: with the embedded store that is its SQLite half,
/// which (unlike the message log) may be opened while the node runs.
pub fn open_account_store(storage: &StorageConfig) -> Result<Box<dyn Backend>, ServeError> {
    match storage.backend {
        StoreKind::Embedded | StoreKind::Sqlite => Ok(Box::new(open_sqlite(storage)?)),
        StoreKind::Mysql => open_mysql(storage).map(|(backend, _)| backend),
    }
}

pub(super) fn open_mysql(
    storage: &StorageConfig,
) -> Result<(Box<dyn Backend>, Option<sqlite::Checkpointer>), ServeError> {
    let backend = MysqlBackend::connect(&storage.mysql_shards, &storage.mysql_replicas)?;
    tracing::info!(shards = storage.mysql_shards.len(), "MySQL store connected");
    Ok((Box::new(backend), None))
}

/// Names the database file and the way out in a store that cannot open.
pub(super) fn damaged_store(db: &Path, err: StoreError) -> ServeError {
    match err {
        StoreError::Corrupt(message) => ServeError::Core(format!(
            "{} is damaged ({message}): restore it from a backup; the node will not start \
             on it",
            db.display()
        )),
        damaged @ StoreError::Damaged { .. } => {
            ServeError::Core(format!("{damaged}; the node will not start on it"))
        }
        other => ServeError::Store(other),
    }
}

/// The store's durability for a configured one.
pub fn durability_of(durability: Durability) -> sqlite::Durability {
    match durability {
        Durability::Full => sqlite::Durability::Full,
        Durability::Normal => sqlite::Durability::Normal,
    }
}
