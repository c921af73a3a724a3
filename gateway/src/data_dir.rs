//! The data directory's identity: the marker `ourchat.id`, written once the
//! embedded store is created, holds that store's identity. At every start
//! the store found must be the one the marker names, so a deleted, emptied
//! or swapped `ourchat.db` stops the node instead of starting it empty next
//! to the old keys (every account and message silently gone).

use std::path::{Path, PathBuf};

/// The marker's file name inside the data directory.
pub const MARKER_FILE: &str = "ourchat.id";

/// Files that only an initialised directory holds: a directory written
/// before the marker existed is recognised by them.
const KEY_FILES: [&str; 2] = ["jwt.secret", "admin.token"];

/// Why a data directory cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The marker says a store lives here, and its database is not there.
    #[error(
        "{db} is {state}, but {marker} says this data directory holds store {id}: restore \
         {db} (with its -wal file) from a backup, or move the directory away to start an \
         empty node"
    )]
    StoreMissing {
        /// The database file.
        db: PathBuf,
        /// "missing" or "empty".
        state: &'static str,
        /// The marker file.
        marker: PathBuf,
        /// The identity it holds.
        id: String,
    },
    /// A directory written before markers existed has keys but no store.
    #[error(
        "{db} is {state}, but {key} shows this data directory was in use: restore {db} from \
         a backup, or move the directory away to start an empty node"
    )]
    KeysWithoutStore {
        /// The database file.
        db: PathBuf,
        /// "missing" or "empty".
        state: &'static str,
        /// The key file found.
        key: PathBuf,
    },
    /// The database belongs to another store than the marker names.
    #[error(
        "{db} is store {found}, but {marker} says this directory holds store {expected}: put \
         the right {db} back, or move the directory away to start an empty node"
    )]
    OtherStore {
        /// The database file.
        db: PathBuf,
        /// The marker file.
        marker: PathBuf,
        /// The identity in the database.
        found: String,
        /// The identity in the marker.
        expected: String,
    },
    /// The marker itself is unreadable or garbled.
    #[error(
        "{marker} is damaged ({why}): it must hold the 32-hex-digit identity of {db}; restore \
         it from a backup"
    )]
    BadMarker {
        /// The marker file.
        marker: PathBuf,
        /// The database file.
        db: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Reading or writing the marker failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// What the directory expects of the store about to be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// No marker yet: whatever store opens (new, or one written before
    /// markers) is adopted and the marker written.
    Adopt,
    /// The store with this identity, and no other.
    Store(String),
}

/// Checks the directory before the store is opened (opening would create
/// an empty database where one is missing).
pub fn check_before_open(dir: &Path, db_file: &str) -> Result<Expected, DataDirError> {
    let db = dir.join(db_file);
    let marker = dir.join(MARKER_FILE);
    let db_state = match std::fs::metadata(&db) {
        Ok(meta) if meta.len() > 0 => None,
        Ok(_) => Some("empty"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing"),
        Err(source) => return Err(DataDirError::Io { path: db, source }),
    };
    match read_marker(&marker, &db)? {
        Some(id) => match db_state {
            Some(state) => Err(DataDirError::StoreMissing {
                db,
                state,
                marker,
                id,
            }),
            None => Ok(Expected::Store(id)),
        },
        None => {
            if let Some(state) = db_state {
                if let Some(key) = KEY_FILES.iter().map(|k| dir.join(k)).find(|k| k.exists()) {
                    return Err(DataDirError::KeysWithoutStore { db, state, key });
                }
            }
            Ok(Expected::Adopt)
        }
    }
}

/// Checks the opened store's identity against what the directory expects,
/// and writes the marker for a store seen for the first time.
pub fn confirm_store(
    dir: &Path,
    db_file: &str,
    expected: &Expected,
    found: &str,
) -> Result<(), DataDirError> {
    let marker = dir.join(MARKER_FILE);
    match expected {
        Expected::Store(id) if id == found => Ok(()),
        Expected::Store(id) => Err(DataDirError::OtherStore {
            db: dir.join(db_file),
            marker,
            found: found.to_string(),
            expected: id.clone(),
        }),
        Expected::Adopt => {
            crate::auth::write_file(&marker, format!("{found}\n").as_bytes(), 0o644).map_err(
                |source| DataDirError::Io {
                    path: marker.clone(),
                    source,
                },
            )?;
            tracing::info!(store = found, marker = %marker.display(), "data directory marked");
            Ok(())
        }
    }
}

/// Whether the directory was initialised (it has a marker).
pub fn is_initialised(dir: &Path) -> bool {
    dir.join(MARKER_FILE).exists()
}

fn read_marker(marker: &Path, db: &Path) -> Result<Option<String>, DataDirError> {
    let text = match std::fs::read_to_string(marker) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DataDirError::BadMarker {
                marker: marker.to_path_buf(),
                db: db.to_path_buf(),
                why: e.to_string(),
            })
        }
    };
    let id = text.trim();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DataDirError::BadMarker {
            marker: marker.to_path_buf(),
            db: db.to_path_buf(),
            why: format!("{} bytes that are not an identity", text.len()),
        });
    }
    Ok(Some(id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "ourchat.db";
    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_fresh_directory_adopts_and_marks_its_store() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_before_open(dir.path(), DB).unwrap(), Expected::Adopt);
        std::fs::write(dir.path().join(DB), b"x").unwrap();
        confirm_store(dir.path(), DB, &Expected::Adopt, ID).unwrap();
        assert!(is_initialised(dir.path()));
        assert_eq!(
            check_before_open(dir.path(), DB).unwrap(),
            Expected::Store(ID.into())
        );
        confirm_store(dir.path(), DB, &Expected::Store(ID.into()), ID).unwrap();
    }

    #[test]
    fn a_marked_directory_refuses_a_missing_empty_or_other_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER_FILE), format!("{ID}\n")).unwrap();
        let missing = check_before_open(dir.path(), DB).unwrap_err().to_string();
        assert!(missing.contains("ourchat.db is missing"), "{missing}");
        assert!(missing.contains(ID), "{missing}");
        std::fs::write(dir.path().join(DB), b"").unwrap();
        let empty = check_before_open(dir.path(), DB).unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
        let other = confirm_store(dir.path(), DB, &Expected::Store(ID.into()), "f00")
            .unwrap_err()
            .to_string();
        assert!(other.contains("is store f00"), "{other}");
    }

    #[test]
    fn keys_without_a_store_or_a_garbled_marker_refuse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwt.secret"), "k".repeat(64)).unwrap();
        let err = check_before_open(dir.path(), DB).unwrap_err().to_string();
        assert!(err.contains("jwt.secret shows"), "{err}");
        std::fs::write(dir.path().join(MARKER_FILE), "garbage").unwrap();
        let err = check_before_open(dir.path(), DB).unwrap_err().to_string();
        assert!(err.contains("is damaged"), "{err}");
    }
}
