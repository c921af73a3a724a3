//! The core's calls on the worker threads: store reads, password hashing,
//! writes and Redis rounds, each waiting for room in its pool's queue (the
//! normal backpressure) for at most `QUEUE_WAIT_LIMIT`, and every pool
//! failure turned into the client's error.

use std::time::Duration;

use ourchat_protocol::pb;
use ourchat_protocol::ErrorCode;
use ourchat_storage::redis::RedisSeq;
use ourchat_storage::{ReadStore, StoreError, WriteOp, WriteOutcome};
use ourchat_workers::{JobHandle, PoolError, WriteCompletion};

use super::Core;

impl Core {
    /// Whether a user id is known to exist without asking the store
    /// (cached per core, or the store's memory knows it).
    pub fn user_known(&self, user_id: i64) -> bool {
        // The store's memory first: where there is one it knows every
        // account, and the core's cache (filled by reads) stays empty.
        let in_memory = self.shared.memory.as_ref();
        in_memory.is_some_and(|m| m.account_known(user_id)) || self.known_users.contains(&user_id)
    }

    /// Whether a user id exists (cached per core).
    pub async fn user_exists(&self, user_id: i64) -> Result<bool, pb::Error> {
        if user_id <= 0 {
            return Ok(false);
        }
        if self.user_known(user_id) {
            return Ok(true);
        }
        let exists = self
            .read(move |store| store.account_by_id(user_id).map(|a| a.is_some()))
            .await?;
        if exists {
            self.known_users.insert(user_id);
        }
        Ok(exists)
    }

    /// Runs a read on a reader thread, waiting for queue room if needed.
    pub async fn read<T, F>(&self, job: F) -> Result<T, pb::Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Box<dyn ReadStore>) -> Result<T, StoreError> + Send + 'static,
    {
        run_store_job(&self.shared.readers, job).await
    }

    /// Runs a password hash or check on the hashing pool.
    pub async fn hash<T, F>(&self, job: F) -> Result<T, pb::Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let hasher = &self.shared.hasher;
        wait_for_room(|| hasher.is_full()).await?;
        let result = hasher.try_run(move |_| job()).map_err(pool_error)?;
        result.await.map_err(|_| pool_error(PoolError::Closed))
    }

    /// Queues a write, waiting for room; the completion says when it is durable.
    pub async fn write(&self, op: WriteOp) -> Result<WriteCompletion, pb::Error> {
        self.wait_for_writer_room().await?;
        self.shared
            .writer
            .try_submit(op)
            .map_err(|refused| pool_error(refused.error))
    }

    /// Queues a write nobody waits for (see
    /// [`WriterHandle::try_submit_detached`]).
    pub async fn write_detached(&self, op: WriteOp) -> Result<(), pb::Error> {
        self.wait_for_writer_room().await?;
        self.shared
            .writer
            .try_submit_detached(op)
            .map_err(|refused| pool_error(refused.error))
    }

    /// Queues a write and waits until it is durable; the store's answer or
    /// a client-facing error.
    pub async fn commit(&self, op: WriteOp) -> Result<WriteOutcome, pb::Error> {
        match self.write(op).await?.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => Err(pool_error(err)),
            Err(_) => Err(pool_error(PoolError::Closed)),
        }
    }

    /// Waits while the writer queue is nearly full: this is how a busy
    /// store pushes back on connections (they stop being read).
    pub async fn wait_for_writer_room(&self) -> Result<(), pb::Error> {
        wait_for_room(|| !self.writer_has_room()).await
    }

    /// Whether a send may go to the writer now, below its high water
    /// (headroom for sends already forwarded to sequencing cores).
    pub fn writer_has_room(&self) -> bool {
        let writer = &self.shared.writer;
        let high_water = writer.capacity().saturating_sub(writer.capacity() / 8);
        writer.depth() < high_water
    }

    /// Runs a Redis call on the cluster's Redis threads.
    pub(crate) async fn redis<T, F>(&self, job: F) -> Result<T, pb::Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut RedisSeq) -> Result<T, StoreError> + Send + 'static,
    {
        let Some(cluster) = &self.shared.cluster else {
            return Err(pb::Error::new(ErrorCode::Internal, "not in cluster mode"));
        };
        run_store_job(&cluster.redis, job).await
    }
}

/// Runs a store call on `pool`'s threads, waiting for queue room; its
/// error, or the pool's, as a client error.
async fn run_store_job<S, T, F>(pool: &JobHandle<S>, job: F) -> Result<T, pb::Error>
where
    S: 'static,
    T: Send + 'static,
    F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
{
    wait_for_room(|| pool.is_full()).await?;
    let result = pool.try_run(job).map_err(pool_error)?;
    match result.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(pool_error(PoolError::from(err))),
        Err(_) => Err(pool_error(PoolError::Closed)),
    }
}

async fn wait_for_room(is_full: impl Fn() -> bool) -> Result<(), pb::Error> {
    let started = std::time::Instant::now();
    while is_full() {
        if started.elapsed() > QUEUE_WAIT_LIMIT {
            return Err(pool_error(PoolError::Full));
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// How long a reactor waits for room in a full worker queue before
/// answering BUSY. Waiting, not failing, is the normal backpressure.
const QUEUE_WAIT_LIMIT: Duration = Duration::from_secs(5);

/// The client-facing error for a worker failure.
pub fn pool_error(err: PoolError) -> pb::Error {
    match err {
        PoolError::Full => pb::Error::new(ErrorCode::Busy, "server busy, retry shortly"),
        PoolError::Closed => pb::Error::new(ErrorCode::StoreUnavailable, "server shutting down"),
        PoolError::Store { message, .. } => {
            tracing::warn!(%message, "store error reached a client");
            // Cluster mode: say which engine, so an operator reading a
            // client's report knows where to look.
            let what = if message.contains("kafka:") {
                "message log (Kafka) unavailable, not accepted: retry later"
            } else if message.contains("redis:") {
                "sequencer (Redis) unavailable, not accepted: retry later"
            } else {
                "store unavailable, retry later"
            };
            pb::Error::new(ErrorCode::StoreUnavailable, what)
        }
    }
}
