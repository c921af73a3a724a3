//! Store errors say whose fault it is and whether retrying can help. Client
//! faults are not errors here: they are per-op [`crate::WriteOutcome`]s.

/// A failure of the store as a whole (the batch or read did not happen).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not do it now (locked, disk full, connection lost);
    /// `retryable` says whether the same call may succeed later.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What the backend said.
        message: String,
        /// Whether a retry may succeed.
        retryable: bool,
    },
    /// The stored data contradicts what the code expects: our bug or corruption.
    #[error("store corrupt or out of step with the code: {0}")]
    Corrupt(String),
    /// A file of the store is damaged or missing; `why` says what was found
    /// and what to do.
    #[error("{} is damaged: {why}", file.display())]
    Damaged {
        /// The file or directory.
        file: std::path::PathBuf,
        /// What is wrong, and the way out.
        why: String,
    },
}

impl StoreError {
    /// Whether the same call may succeed if retried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable {
                retryable: true,
                ..
            }
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Code;
        match &err {
            rusqlite::Error::SqliteFailure(code, _) => {
                let retryable = matches!(
                    code.code,
                    Code::DatabaseBusy | Code::DatabaseLocked | Code::SystemIoFailure
                );
                let corrupt = matches!(code.code, Code::DatabaseCorrupt | Code::NotADatabase);
                if corrupt {
                    StoreError::Corrupt(err.to_string())
                } else {
                    StoreError::Unavailable {
                        message: err.to_string(),
                        retryable,
                    }
                }
            }
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(err.to_string()),
            _ => StoreError::Unavailable {
                message: err.to_string(),
                retryable: false,
            },
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(err: std::io::Error) -> Self {
        StoreError::Unavailable {
            message: err.to_string(),
            retryable: false,
        }
    }
}
