//! Cluster mode on one node: what it starts beside the cores and how
//! records from the other nodes come in.
//!
//! - The message writer is a [`LoggedWriter`]: accepted messages go to
//!   Kafka (`im_message_raw`, keyed by conversation); the sender's ack
//!   waits for Kafka's.
//! - Seqs come from Redis ([`RedisSeq`]) on a small thread pool; a core
//!   keeps at most one request per conversation in flight and hands the
//!   sends queued meanwhile one contiguous batch.
//! - The *store feeder* thread reads `im_message_raw` and writes MySQL in
//!   multi-row batches, committing offsets only after MySQL committed: a
//!   crash replays, and replays insert nothing twice. While MySQL is away
//!   it retries and the log keeps everything. By default every node feeds
//!   the whole log (its own consumer group `ourchat-store-node<id>`), so
//!   the log reaches MySQL while any node lives, whatever the broker does
//!   with a dead member's partitions; `cluster.shared_feeder` splits it
//!   over one group `ourchat-store` instead.
//! - The *tail* thread reads every partition of `im_message_raw` and
//!   `im_group_events` from their ends, in no group, and hands each record
//!   from another node to a core, which pushes it to this node's devices.
//!   Cross-node delivery therefore rides the log itself: no node-to-node
//!   connections, no routing table to keep right when nodes die; each node
//!   reads every message (fine for a handful of nodes; per-node topics
//!   chosen from a Redis directory are the step after).

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_protocol::{Body, ConversationId, Envelope};
use ourchat_storage::kafka::{self, LoggedWriter, MessageLog};
use ourchat_storage::redis::RedisSeq;
use ourchat_storage::{Backend, StoreError, WriteStore};
use ourchat_workers::{JobHandle, JobPool, WriterConfig, WriterHandle, WriterPool};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::Message as _;

use crate::config::Config;
use crate::core::{encode_frame, Core};

/// Records waiting for a core before the tail thread waits.
const INBOX_QUEUE: usize = 4096;
/// Consumer group of the MySQL feeders.
const STORE_GROUP: &str = "ourchat-store";
/// How long the feeder gathers a batch before writing what it has.
const FEED_LINGER: Duration = Duration::from_millis(5);

/// What the cores use in cluster mode.
#[derive(Clone)]
pub struct ClusterShared {
    /// Where sequenced messages and group changes are written.
    pub log_writer: WriterHandle,
    /// Seq allocation, and the threads that publish to Kafka off the
    /// reactors.
    pub redis: JobHandle<RedisSeq>,
    /// The log, for presence changes.
    pub log: Arc<MessageLog>,
    /// What the cluster threads did, for `/metrics`.
    pub stats: Arc<ClusterStats>,
}

/// Counters of the cluster machinery.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Log records the feeder wrote to MySQL.
    pub stored_records: AtomicU64,
    /// Batches it wrote them in.
    pub store_batches: AtomicU64,
    /// Times MySQL refused a batch (each retried).
    pub store_retries: AtomicU64,
    /// Messages from other nodes handed to this node's cores.
    pub remote_messages: AtomicU64,
    /// Presence changes from other nodes.
    pub remote_presence: AtomicU64,
    /// Redis seq requests.
    pub seq_requests: AtomicU64,
    /// Sends those requests sequenced.
    pub seq_sends: AtomicU64,
    /// Partitions of the message log this node's feeder holds now.
    pub feeder_partitions: AtomicU64,
}

/// A record from another node, for a core.
pub enum Inbound {
    /// A message (or group event) to push to this node's devices (boxed:
    /// it is the large one).
    Message(Box<ChatMessage>),
    /// A user's presence changed: tell their friends' devices here.
    Presence(pb::PresenceInfo),
    /// Who may send in a conversation changed on another node: drop what
    /// this node keeps of it.
    Changed(ConversationId),
    /// Another node revoked a device, or it logged in there: close its
    /// connection here.
    SignOut(pb::DeviceSignOut),
}

/// What happened to a device of this node, for the Redis directory.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DeviceChange {
    /// It logged in here.
    LoggedIn,
    /// It said it is away (`true`) or back.
    Away(bool),
    /// Its connection closed.
    Gone,
}

/// Each core's end of the inbox, taken once by the core at start.
pub type InboxEnds = Arc<std::sync::Mutex<Vec<Option<mpsc::Receiver<Inbound>>>>>;

/// The cluster machinery of one node.
pub struct ClusterNode {
    /// Handles for the cores.
    pub shared: ClusterShared,
    log_pool: WriterPool,
    redis_pool: JobPool<RedisSeq>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis or Kafka could not be reached or set up.
    #[error("cluster: {what}: {message}")]
    Unavailable {
        /// Which part.
        what: &'static str,
        /// What it said.
        message: String,
    },
    /// The store's writer could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A thread could not be started.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ClusterNode {
    /// Connects to Redis and Kafka (creating the topics when missing) and
    /// starts the feeder and tail threads; returns the cores' inbox ends.
    /// `job_queue`: jobs waiting for the Redis threads before cores wait.
    pub fn start(
        config: &Config,
        backend: &dyn Backend,
        cores: usize,
        job_queue: usize,
    ) -> Result<(ClusterNode, InboxEnds), ClusterError> {
        let cluster = &config.cluster;
        let storage = &config.storage;
        let unavailable =
            |what: &'static str, e: &dyn std::fmt::Display| ClusterError::Unavailable {
                what,
                message: e.to_string(),
            };
        let mut probe = RedisSeq::new(&cluster.redis, cluster.dedupe_ttl_secs)
            .map_err(|e| unavailable("redis", &e))?;
        probe.ping().map_err(|e| unavailable("redis", &e))?;
        let topics = kafka::Topics::with_prefix(&cluster.topic_prefix);
        kafka::ensure_topics(&cluster.kafka, &topics, cluster.partitions)
            .map_err(|e| unavailable("kafka topics", &e))?;
        let log = Arc::new(
            MessageLog::connect(
                &cluster.kafka,
                topics.clone(),
                config.server.node_id,
                Duration::from_millis(cluster.send_timeout_ms),
            )
            .map_err(|e| unavailable("kafka producer", &e))?,
        );
        let log_pool = WriterPool::start(
            Box::new(LoggedWriter::new(log.clone(), backend.writer()?)),
            WriterConfig {
                queue_capacity: storage.writer_queue,
                max_batch: storage.max_batch,
                cpus: storage.worker_cpus.clone(),
                // Measured on the embedded store only.
                linger: std::time::Duration::ZERO,
            },
        )?;
        let (url, ttl) = (cluster.redis.clone(), cluster.dedupe_ttl_secs);
        let redis_pool = JobPool::start(
            "ourchat-redis",
            cluster.redis_threads,
            job_queue,
            &storage.worker_cpus,
            move |_| RedisSeq::new(&url, ttl),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ClusterStats::default());
        let mut threads = Vec::new();

        let group = match cluster.shared_feeder {
            true => format!("{}{STORE_GROUP}", cluster.topic_prefix),
            false => format!(
                "{}{STORE_GROUP}-node{}",
                cluster.topic_prefix, config.server.node_id
            ),
        };
        let feeder = kafka::group_consumer(&cluster.kafka, &group, &[&topics.messages])
            .map_err(|e| unavailable("kafka consumer", &e))?;
        let store = backend.writer()?;
        let (flag, batch, counters) = (stop.clone(), cluster.store_batch, stats.clone());
        threads.push(
            std::thread::Builder::new()
                .name("ourchat-feeder".into())
                .spawn(move || feed_store(feeder, store, batch, &counters, &flag))?,
        );

        let tail = kafka::tail_consumer(
            &cluster.kafka,
            &[&topics.messages, &topics.presence, &topics.group_events],
        )
        .map_err(|e| unavailable("kafka tail", &e))?;
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..cores).map(|_| mpsc::channel(INBOX_QUEUE)).unzip();
        let (flag, node) = (stop.clone(), config.server.node_id);
        let (tail_topics, counters) = (topics.clone(), stats.clone());
        threads.push(
            std::thread::Builder::new()
                .name("ourchat-tail".into())
                .spawn(move || tail_log(tail, node, &tail_topics, senders, &counters, &flag))?,
        );
        tracing::info!(redis = %cluster.redis, kafka = %cluster.kafka, "cluster mode on");
        let node = ClusterNode {
            shared: ClusterShared {
                log_writer: log_pool.handle(),
                redis: redis_pool.handle(),
                log,
                stats,
            },
            log_pool,
            redis_pool,
            stop,
            threads,
        };
        let ends = Arc::new(std::sync::Mutex::new(
            receivers.into_iter().map(Some).collect(),
        ));
        Ok((node, ends))
    }

    /// Flushes the message writer (Kafka has every acked message), then
    /// stops the threads.
    pub fn stop(self) {
        self.log_pool.shutdown();
        self.redis_pool.shutdown();
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Writes the log to MySQL: gather up to `max_batch` records (or what
/// came within [`FEED_LINGER`]), write them in one batch until MySQL takes
/// it, then commit the offsets.
fn feed_store(
    consumer: BaseConsumer,
    mut store: Box<dyn WriteStore>,
    max_batch: usize,
    stats: &ClusterStats,
    stop: &AtomicBool,
) {
    let mut ops: Vec<ChatMessage> = Vec::with_capacity(max_batch);
    while !stop.load(Ordering::Relaxed) {
        if let Ok(assignment) = consumer.assignment() {
            stats
                .feeder_partitions
                .store(assignment.count() as u64, Ordering::Relaxed);
        }
        let gather_until = Instant::now() + FEED_LINGER;
        let mut wait = Duration::from_millis(100);
        while ops.len() < max_batch {
            match consumer.poll(wait) {
                Some(Ok(record)) => {
                    if let Some(record) = kafka::decode_record(&record) {
                        ops.push(record.message);
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, "feeder poll"),
                None => break,
            }
            wait = gather_until.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
        }
        if ops.is_empty() {
            continue;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match store.append_log(&ops) {
                Ok(_) => break,
                Err(error) => {
                    stats.store_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, records = ops.len(), "MySQL refused the log batch; retrying");
                    if stop.load(Ordering::Relaxed) {
                        // Uncommitted: the group replays it to whoever is next.
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        stats.store_batches.fetch_add(1, Ordering::Relaxed);
        stats
            .stored_records
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        tracing::debug!(records = ops.len(), "log batch stored");
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            // The batch will be replayed; replays insert nothing twice.
            tracing::debug!(%error, "feeder offset commit");
        }
        ops.clear();
    }
}

/// Hands every record another node published to a core: a message to
/// the core that delivers its conversation (one core per conversation
/// keeps its order), a presence change to the user's.
fn tail_log(
    consumer: BaseConsumer,
    node_id: u16,
    topics: &kafka::Topics,
    mut cores: Vec<mpsc::Sender<Inbound>>,
    stats: &ClusterStats,
    stop: &AtomicBool,
) {
    let count = cores.len().max(1);
    while !stop.load(Ordering::Relaxed) {
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let record = match polled {
            Ok(record) => record,
            Err(error) => {
                tracing::debug!(%error, "tail poll");
                continue;
            }
        };
        if kafka::origin_of(&record) == Some(node_id) {
            continue;
        }
        let routed = if record.topic() == topics.presence {
            // A user's record: their owner core takes it.
            let Some(payload) = record.payload() else {
                continue;
            };
            if kafka::is_sign_out(&record) {
                pb::DeviceSignOut::decode(payload)
                    .ok()
                    .map(|sign_out| (sign_out.user_id as u64, Inbound::SignOut(sign_out)))
            } else {
                pb::PresenceInfo::decode(payload)
                    .ok()
                    .map(|info| (info.user_id as u64, Inbound::Presence(info)))
            }
        } else {
            // A message, or a change notice: both name their conversation,
            // and its owner core takes them, in log order.
            let change_notice = record.topic() == topics.group_events;
            kafka::decode_record(&record).and_then(|record| {
                let conv = record
                    .message
                    .conversation_id
                    .parse::<ConversationId>()
                    .ok()?;
                let inbound = if change_notice {
                    Inbound::Changed(conv)
                } else {
                    Inbound::Message(Box::new(record.message))
                };
                Some((conv.shard_hash(), inbound))
            })
        };
        let Some((hash, mut inbound)) = routed else {
            continue;
        };
        let counter = match inbound {
            Inbound::Message(_) => Some(&stats.remote_messages),
            Inbound::Presence(_) => Some(&stats.remote_presence),
            Inbound::Changed(_) | Inbound::SignOut(_) => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let core = (crate::core::mix(hash) % count as u64) as usize;
        let Some(sender) = cores.get_mut(core) else {
            continue;
        };
        loop {
            match sender.try_send(inbound) {
                Ok(()) => break,
                Err(full) if full.is_full() && !stop.load(Ordering::Relaxed) => {
                    inbound = full.into_inner();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
    }
}

/// How long a user's directory entry outlives their last heartbeat: a
/// connection silent that long is closed anyway.
fn directory_ttl(config: &Config) -> u64 {
    config.server.idle_timeout_secs.max(1)
}

/// A core's side of the inbox: pushes each record to this node's online
/// devices of its recipients.
pub async fn serve_inbox(core: Rc<Core>, mut inbox: mpsc::Receiver<Inbound>) {
    while let Some(inbound) = inbox.next().await {
        match inbound {
            Inbound::Message(message) => core.deliver_from_another_node(*message).await,
            Inbound::Presence(info) => core.tell_friends(info),
            Inbound::Changed(conv) => core.forget_conversation(conv).await,
            Inbound::SignOut(sign_out) => core.sign_out_here(sign_out).await,
        }
    }
}

impl Core {
    /// Cluster mode: records a device of this node in the Redis directory,
    /// or removes it; off the reactor, and a failure only costs other
    /// nodes' presence queries their accuracy. A device that logs in here
    /// while the directory has it on another node is signed out there (it
    /// logged in again elsewhere: that connection is stale). The receiver
    /// completes once the directory is written (or the write failed): a
    /// login is answered after it, so a client that moves to another node
    /// after its answer finds this node in the directory.
    pub(crate) fn publish_device(
        &self,
        user_id: i64,
        device_id: &str,
        change: DeviceChange,
    ) -> Option<futures::channel::oneshot::Receiver<()>> {
        let cluster = self.shared.cluster.as_ref()?;
        let (written_tx, written_rx) = futures::channel::oneshot::channel();
        let (node, device) = (self.shared.config.server.node_id, device_id.to_string());
        let ttl = directory_ttl(&self.shared.config);
        let log = cluster.log.clone();
        let logged_in_at = ourchat_protocol::ids::now_ms() as i64;
        let queued = cluster.redis.try_run(move |redis| {
            let written = match change {
                DeviceChange::LoggedIn => redis
                    .put_device(user_id, &device, node, false, ttl)
                    .and_then(|moved_from| match moved_from {
                        Some(_) => {
                            let sign_out = pb::DeviceSignOut {
                                user_id,
                                device_id: device.clone(),
                                reason: "this device logged in again elsewhere".into(),
                                registered_before_ms: logged_in_at,
                            };
                            log.publish_sign_out(user_id, &sign_out.encode_to_vec())
                        }
                        None => Ok(()),
                    }),
                DeviceChange::Away(away) => redis
                    .put_device(user_id, &device, node, away, ttl)
                    .map(|_| ()),
                DeviceChange::Gone => redis.remove_device(user_id, &device, node),
            };
            if let Err(error) = written {
                tracing::debug!(%error, user_id, "directory not updated");
            }
            let _ = written_tx.send(());
        });
        if queued.is_err() {
            tracing::debug!(user_id, "directory not updated: cluster threads busy");
            return None;
        }
        Some(written_rx)
    }

    /// Cluster mode: signs `device_id` out on whichever other node holds
    /// its connection (its token was just revoked); whether the directory
    /// had it online on another node.
    pub(crate) async fn sign_out_elsewhere(
        &self,
        user_id: i64,
        device_id: &str,
        reason: &str,
    ) -> bool {
        let Some(cluster) = &self.shared.cluster else {
            return false;
        };
        let node = self.shared.config.server.node_id;
        let log = cluster.log.clone();
        let sign_out = pb::DeviceSignOut {
            user_id,
            device_id: device_id.to_string(),
            reason: reason.to_string(),
            registered_before_ms: 0,
        };
        let signed_out = self
            .redis(move |redis| {
                // Published whatever the directory says: it may lag, and a
                // revoked device must not stay connected anywhere.
                log.publish_sign_out(user_id, &sign_out.encode_to_vec())?;
                let devices = redis.online_devices(user_id)?;
                Ok(devices
                    .iter()
                    .any(|d| d.device_id == sign_out.device_id && d.node_id != node))
            })
            .await;
        match signed_out {
            Ok(elsewhere) => elsewhere,
            Err(error) => {
                tracing::warn!(code = error.code, user_id, "sign-out not published");
                false
            }
        }
    }

    /// Cluster mode: a heartbeat keeps the user's directory entry alive.
    pub(crate) fn touch_directory(&self, user_id: i64) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        let ttl = directory_ttl(&self.shared.config);
        let _ = cluster.redis.try_run(move |redis| {
            if let Err(error) = redis.touch_user(user_id, ttl) {
                tracing::debug!(%error, user_id, "directory entry not refreshed");
            }
        });
    }

    /// Cluster mode: completes what this node knows of a user's presence
    /// (`here`) with their devices online on other nodes.
    pub(crate) async fn presence_elsewhere(&self, mut here: pb::PresenceInfo) -> pb::PresenceInfo {
        if self.shared.cluster.is_none() {
            return here;
        }
        let (user_id, node) = (here.user_id, self.shared.config.server.node_id);
        let Ok(devices) = self.redis(move |redis| redis.online_devices(user_id)).await else {
            return here;
        };
        let elsewhere: Vec<_> = devices.into_iter().filter(|d| d.node_id != node).collect();
        if elsewhere.is_empty() {
            return here;
        }
        let online_elsewhere = elsewhere.iter().any(|d| !d.away);
        here.devices_online += elsewhere.len() as u32;
        let online_here = here.state == pb::PresenceState::Online as i32;
        here.state = if online_here || online_elsewhere {
            pb::PresenceState::Online as i32
        } else {
            pb::PresenceState::Away as i32
        };
        here.last_seen_ms = ourchat_protocol::ids::now_ms() as i64;
        here
    }

    /// Cluster mode: tells the other nodes that who may send in `conv`
    /// changed (a block), from the cluster threads, never the reactor.
    pub(crate) fn announce_change(&self, conv: ConversationId) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        let (log, id) = (cluster.log.clone(), conv.to_string());
        let queued = cluster.redis.try_run(move |_| {
            if let Err(error) = log.publish_changed(&id) {
                tracing::warn!(%error, conv = %id, "conversation change not published");
            }
        });
        if queued.is_err() {
            tracing::warn!(conv = %conv, "conversation change not published: cluster threads busy");
        }
    }

    async fn deliver_from_another_node(self: &Rc<Self>, message: ChatMessage) {
        let recipients: Vec<i64> = if message.group_id != 0 {
            let group_id = message.group_id;
            let conv = ConversationId::Group(group_id);
            if message.group_event.is_some() {
                // The group changed elsewhere: this node's copy of its
                // roster is stale.
                self.forget_conversation(conv).await;
            } else if let Some(members) = self.loaded_members(&conv) {
                // The log orders a group's changes before its later
                // messages, so a roster this core holds is current.
                let frame = encode_frame(&Envelope::new(0, Body::PushMessage(message)));
                return self.deliver_to_users(&members, frame, 0, None).await;
            }
            match self
                .read(move |store| store.group_members(group_id, 0, usize::MAX))
                .await
            {
                // Those an event names (a removed member) hear of it too.
                Ok(members) => {
                    let mut users: Vec<i64> = members.iter().map(|m| m.user_id).collect();
                    if let Some(event) = &message.group_event {
                        let named: Vec<i64> = event
                            .user_ids
                            .iter()
                            .filter(|id| !users.contains(id))
                            .copied()
                            .collect();
                        users.extend(named);
                    }
                    users
                }
                Err(error) => {
                    tracing::warn!(code = error.code, group_id, "remote group push skipped");
                    return;
                }
            }
        } else {
            vec![message.receiver_id, message.sender_id]
        };
        let frame = encode_frame(&Envelope::new(0, Body::PushMessage(message)));
        self.deliver_to_users(&recipients, frame, 0, None).await;
    }
}
