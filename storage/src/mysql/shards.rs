//! One connection per shard, opened on first use and reopened after a
//! connection-level failure, with a transaction per shard a batch touches;
//! and the schema each shard is given.

use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{Conn, Opts, OptsBuilder, Params};

use super::{Placement, INIT_SQL, SCHEMA_VERSION};
use crate::StoreError;

/// One connection per shard, opened on first use and reopened after a
/// connection-level failure; optionally a transaction per shard.
pub(super) struct Shards {
    pub(super) placement: Placement,
    pub(super) opts: Vec<Opts>,
    pub(super) conns: Vec<Option<Conn>>,
    pub(super) in_transaction: Vec<bool>,
    pub(super) transactional: bool,
}

impl Shards {
    pub(super) fn new(opts: Vec<Opts>) -> Self {
        let count = opts.len();
        Shards {
            placement: Placement::new(count),
            opts,
            conns: (0..count).map(|_| None).collect(),
            in_transaction: vec![false; count],
            transactional: false,
        }
    }

    pub(super) async fn conn(&mut self, shard: usize) -> Result<&mut Conn, StoreError> {
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
    pub(super) fn after_error(&mut self, error: &StoreError) {
        if error.is_retryable() {
            for slot in &mut self.conns {
                *slot = None;
            }
            self.in_transaction.fill(false);
        }
    }

    /// Runs a statement; rows affected (matched, for UPDATE).
    pub(super) async fn exec(
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
    pub(super) async fn insert_new(
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

    pub(super) async fn rows<T: FromRow + Send + 'static>(
        &mut self,
        shard: usize,
        sql: &str,
        params: impl Into<Params> + Send,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.conn(shard).await?;
        Ok(conn.exec(sql, params).await?)
    }

    pub(super) async fn first<T: FromRow + Send + 'static>(
        &mut self,
        shard: usize,
        sql: &str,
        params: impl Into<Params> + Send,
    ) -> Result<Option<T>, StoreError> {
        let conn = self.conn(shard).await?;
        Ok(conn.exec_first(sql, params).await?)
    }

    pub(super) async fn commit_all(&mut self) -> Result<(), StoreError> {
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

    pub(super) async fn rollback_all(&mut self) {
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

    pub(super) async fn create_schema(&mut self) -> Result<(), StoreError> {
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
pub(super) async fn create_database_if_missing(opts: &Opts) -> Result<(), StoreError> {
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
pub(super) fn schema_statements() -> Vec<String> {
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
