//! One reactor core: its connections, its partition of users (which devices
//! are online, on which core) and its partition of conversations (seq
//! counter and recent sends). Cores share nothing; they talk through the
//! glommio channel mesh with [`CoreMsg`]. Everything here runs on one
//! thread, so state is in `Cell`/`RefCell` and no lock is taken.
//!
//! A 1:1 send travels: sender's core → conversation owner (assigns the
//! seq, queues the write) → store writer → conversation owner's commit pump
//! (acks the sender, then `Deliver` to the owners of both users) → each
//! device's core (`Push` into its outbox). A group send is the same, with
//! the group's owner core also checking membership, and `DeliverMany` /
//! `PushMany` carrying one frame to every member, one mesh message per core.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use ourchat_protocol::ids::{now_ms, IdGenerator};
use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_protocol::{codec, Body, ConversationId, Envelope, ErrorCode};
use ourchat_storage::redis::{RedisSeq, SendBudget, SeqGrant, SeqRequest};
use ourchat_storage::{
    fingerprint_of, ConversationHead, GroupChange, ReadStore, StoreError, WriteOp, WriteOutcome,
};
use ourchat_workers::{JobHandle, PoolError, WriteCompletion, WriterHandle};

use crate::auth::TokenKeys;
use crate::cluster::{ClusterShared, DeviceChange};
use crate::config::Config;
use crate::group_state::{self, GroupCommand, GroupState};
use crate::limits::{Limit, NodeLimits, TokenBucket};
use crate::metrics::{CoreMetrics, Metrics};
use crate::outbox::Outbox;

/// Everything the cores share: read-only config and thread-safe handles.
pub struct Shared {
    /// Effective configuration.
    pub config: Config,
    /// Reactor cores running.
    pub cores: usize,
    /// The batched store writer.
    pub writer: WriterHandle,
    /// Store reader threads.
    pub readers: JobHandle<Box<dyn ReadStore>>,
    /// Password hashing threads.
    pub hasher: JobHandle<()>,
    /// Token signing keys.
    pub tokens: TokenKeys,
    /// Set once on SIGINT/SIGTERM.
    pub shutdown: Arc<AtomicBool>,
    /// Set once every core listens; `/readyz` answers from it.
    pub ready: AtomicBool,
    /// Per-core counters.
    pub metrics: Metrics,
    /// TLS server configuration, when TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Node-wide abuse books (connections per address, login back-off,
    /// registrations).
    pub limits: Arc<NodeLimits>,
    /// Cluster mode's message writer and seq allocation (`None`: one node
    /// on its own).
    pub cluster: Option<ClusterShared>,
}

/// Messages between cores.
pub enum CoreMsg {
    /// To the conversation's owner: sequence and store this message. Boxed:
    /// every mesh slot is as large as the largest message, and pushes (the
    /// bulk of mesh traffic) are small.
    Sequence(Box<SendJob>),
    /// To the user's owner: push `frame` to each online device of `user_id`
    /// except the connection `skip_conn` (the sending device).
    Deliver {
        /// Recipient.
        user_id: i64,
        /// Encoded push.
        frame: Bytes,
        /// Connection not to push to (0: none).
        skip_conn: u64,
        /// When the message became durable (for the delivery latency
        /// metric); `None` for pushes that are not messages.
        committed_at: Option<Instant>,
    },
    /// To the owner of these users: like `Deliver`, for many at once (a
    /// group's fan-out sends one of these per core, not one per member).
    DeliverMany {
        /// Recipients, all owned by the receiving core.
        user_ids: Vec<i64>,
        /// Encoded push.
        frame: Bytes,
        /// Connection not to push to (0: none).
        skip_conn: u64,
        /// When the message became durable, for messages.
        committed_at: Option<Instant>,
    },
    /// To a connection's core: queue `frame` on each of these connections.
    PushMany {
        /// Target connections, all on the receiving core.
        conn_ids: Vec<u64>,
        /// Encoded frame.
        frame: Bytes,
        /// When the message became durable; `None` for other pushes.
        committed_at: Option<Instant>,
    },
    /// To a connection's core: queue `frame` on it.
    Push {
        /// Target connection.
        conn_id: u64,
        /// Encoded frame.
        frame: Bytes,
        /// When the message became durable; `None` for other pushes.
        committed_at: Option<Instant>,
    },
    /// To the user's owner: this device is online on `conn_id`. `done`
    /// fires once registered, so a login reply means pushes will arrive.
    Online {
        /// User.
        user_id: i64,
        /// Device.
        device_id: String,
        /// Its connection.
        conn_id: u64,
        /// Registered.
        done: oneshot::Sender<()>,
    },
    /// To the user's owner: this connection is gone.
    Offline {
        /// User.
        user_id: i64,
        /// Device.
        device_id: String,
        /// The connection that closed.
        conn_id: u64,
    },
    /// To the user's owner: this connection's device is (not) away.
    SetAway {
        /// User.
        user_id: i64,
        /// The device's connection.
        conn_id: u64,
        /// Away or back online.
        away: bool,
        /// Fires once applied (the reply waits: later queries see it).
        done: oneshot::Sender<()>,
    },
    /// To the user's owner: the user's aggregated presence.
    Presence {
        /// User.
        user_id: i64,
        /// Answered with it.
        reply: oneshot::Sender<pb::PresenceInfo>,
    },
    /// To the user's owner: which of the user's devices are online.
    OnlineDevices {
        /// User.
        user_id: i64,
        /// Answered with the online device ids.
        reply: oneshot::Sender<Vec<String>>,
    },
    /// To the user's owner: close this device's connection, if online.
    KickDevice {
        /// User.
        user_id: i64,
        /// Device.
        device_id: String,
        /// Shown to the client.
        reason: String,
        /// Only a connection registered before this (ms since the epoch;
        /// 0: any).
        registered_before_ms: i64,
        /// Answered with whether it was online.
        reply: Option<oneshot::Sender<bool>>,
    },
    /// To the conversation's owner: the two users now do (not) block each
    /// other; sends are refused while they do.
    SetBlocked {
        /// The 1:1 conversation.
        conversation: ConversationId,
        /// Whether either side blocks the other.
        blocked: bool,
        /// Fires once applied: the blocker's reply waits for it, so no send
        /// sequenced after that reply slips through on another mesh channel.
        done: oneshot::Sender<()>,
    },
    /// To the conversation's owner: drop what it keeps of the conversation
    /// (changed on another node); the next send reloads it.
    Forget {
        /// The conversation.
        conversation: ConversationId,
    },
    /// To every core: push `frame` to each logged-in connection; answered
    /// with how many.
    Broadcast {
        /// Encoded push.
        frame: Bytes,
        /// Answered with the connections it was queued to.
        reply: oneshot::Sender<usize>,
    },
    /// To a connection's core: tell the client why, then close it.
    Kick {
        /// Target connection.
        conn_id: u64,
        /// Shown to the client.
        reason: String,
    },
}

/// A message to sequence, from the sender's connection.
pub struct SendJob {
    /// The message with everything but seq, id and time filled in.
    pub message: ChatMessage,
    /// The sending connection (its device does not get the push).
    pub origin_conn: u64,
    /// For a GROUP_EVENT message: the change it records, checked and
    /// applied by the group's core.
    pub command: Option<GroupCommand>,
    /// Answered once the message is durable (or refused).
    pub reply: oneshot::Sender<SendResult>,
}

/// What a send becomes.
pub type SendResult = Result<Accepted, pb::Error>;

/// Where a durable message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Seq in its conversation.
    pub seq: i64,
    /// Server id.
    pub server_msg_id: i64,
    /// Server time.
    pub sent_at_ms: i64,
}

/// Connection ids carry their core in the top 16 bits.
const CONN_CORE_SHIFT: u32 = 48;

/// The core a connection id lives on.
pub fn core_of_conn(conn_id: u64) -> usize {
    (conn_id >> CONN_CORE_SHIFT) as usize
}

/// Spreads ids over cores; snowflake low bits alone are too regular.
pub(crate) fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Users whose last-disconnect time a core remembers (beyond it the map
/// starts over; the time is a courtesy, not a record).
const LAST_SEEN_CAP: usize = 1_000_000;

/// Users whose existence a core remembers before asking the store again.
const KNOWN_USERS_CAP: usize = 100_000;

/// How long a reactor waits for room in a full worker queue before
/// answering BUSY. Waiting, not failing, is the normal backpressure.
const QUEUE_WAIT_LIMIT: Duration = Duration::from_secs(5);

/// One reactor core's state.
pub struct Core {
    /// This core's index.
    pub id: usize,
    /// Shared handles.
    pub shared: Arc<Shared>,
    mesh: Senders<CoreMsg>,
    ids: RefCell<IdGenerator>,
    next_conn: Cell<u64>,
    conns: RefCell<HashMap<u64, Rc<Outbox>>>,
    directory: RefCell<HashMap<i64, Vec<DeviceConn>>>,
    sequencer: RefCell<Sequencer>,
    commits: LocalSender<PendingCommit>,
    known_users: RefCell<HashSet<i64>>,
    /// When this core's users last disconnected.
    last_seen: RefCell<HashMap<i64, i64>>,
    /// Send buckets of users sending from this core; full ones are
    /// forgotten by the sweeper.
    send_buckets: RefCell<HashMap<i64, TokenBucket>>,
    /// Delivery acks waiting to go to the store together.
    pub acks: crate::acks::AckCoalescer,
}

struct DeviceConn {
    device_id: Box<str>,
    conn_id: u64,
    /// When this connection registered (ms since the epoch): a sign-out
    /// from another node spares a connection newer than itself.
    registered_ms: i64,
    /// The device said it is away (still connected).
    away: bool,
}

impl Core {
    /// A core with its mesh senders; returns the receiver its commit pump
    /// must drain (see [`Core::run_commit_pump`]).
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        mesh: Senders<CoreMsg>,
    ) -> (Rc<Core>, LocalReceiver<PendingCommit>) {
        // Unbounded by type, bounded in fact: each entry is an op in the
        // bounded writer queue or one just completed.
        let (commits, pending) = local_channel::new_unbounded();
        let node = shared.config.server.node_id;
        let core = Core {
            id,
            mesh,
            ids: RefCell::new(IdGenerator::new(node, id as u16)),
            next_conn: Cell::new(1),
            conns: RefCell::default(),
            directory: RefCell::default(),
            sequencer: RefCell::new(Sequencer {
                convs: HashMap::new(),
                block_overrides: HashMap::new(),
                stale_loads: HashSet::new(),
                max: shared.config.storage.max_conversations_per_core,
            }),
            commits,
            known_users: RefCell::default(),
            last_seen: RefCell::default(),
            send_buckets: RefCell::default(),
            acks: Default::default(),
            shared,
        };
        (Rc::new(core), pending)
    }

    /// A fresh snowflake id.
    pub fn next_id(&self) -> i64 {
        self.ids.borrow_mut().next_id()
    }

    /// The core owning `user_id`'s online devices.
    pub fn owner_of_user(&self, user_id: i64) -> usize {
        (mix(user_id as u64) % self.shared.cores as u64) as usize
    }

    /// The core owning a conversation's sequence.
    pub fn owner_of_conversation(&self, conv: &ConversationId) -> usize {
        (mix(conv.shard_hash()) % self.shared.cores as u64) as usize
    }

    /// This core's counters.
    pub fn metrics(&self) -> &CoreMetrics {
        self.shared.metrics.core(self.id)
    }

    /// Registers a new connection and returns its id.
    pub fn add_connection(&self, outbox: Rc<Outbox>) -> u64 {
        CoreMetrics::inc(&self.metrics().accepted);
        CoreMetrics::inc(&self.metrics().connections);
        let conn_id = self.new_conn_id();
        self.conns.borrow_mut().insert(conn_id, outbox);
        conn_id
    }

    /// A fresh connection id. Used alone for a request with no socket (a
    /// gRPC call): never registered, so pushes to it go nowhere.
    pub fn new_conn_id(&self) -> u64 {
        let n = self.next_conn.get();
        self.next_conn.set(n + 1);
        ((self.id as u64) << CONN_CORE_SHIFT) | n
    }

    /// Forgets a closed connection.
    pub fn remove_connection(&self, conn_id: u64) {
        if self.conns.borrow_mut().remove(&conn_id).is_some() {
            self.metrics()
                .connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Connections open on this core.
    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Closes connections past their deadline: no login within
    /// `login_timeout`, or logged in but silent for `idle_timeout`. One
    /// sweep over the core's connections replaces a timer per connection.
    pub fn sweep_deadlines(&self, login_timeout: Duration, idle_timeout: Duration) {
        let now = Instant::now();
        let metrics = self.metrics();
        for outbox in self.conns.borrow().values() {
            if outbox.is_closing() {
                continue;
            }
            if !outbox.is_logged_in() {
                if now.duration_since(outbox.opened_at()) >= login_timeout {
                    metrics.error(ErrorCode::LoginTimeout as i32);
                    outbox.close_with(Some(encode_frame(&Envelope::error(
                        0,
                        ErrorCode::LoginTimeout,
                        "no login within the deadline",
                    ))));
                }
            } else if now.duration_since(outbox.last_frame_at()) >= idle_timeout {
                CoreMetrics::inc(&metrics.idle_closes);
                outbox.close_with(Some(kicked_frame("idle timeout: no heartbeat")));
            }
        }
        let rate = self.shared.config.limits.user_send_rate();
        self.send_buckets
            .borrow_mut()
            .retain(|_, bucket| !bucket.is_full(rate, now));
    }

    /// Takes one send from `user_id`'s bucket on this core; `false` when
    /// the user sends faster than allowed.
    pub fn take_send(&self, user_id: i64) -> bool {
        let rate = self.shared.config.limits.user_send_rate();
        let now = Instant::now();
        let taken = self
            .send_buckets
            .borrow_mut()
            .entry(user_id)
            .or_insert_with(|| TokenBucket::full(rate, now))
            .take(rate, now);
        if !taken {
            self.metrics().limited(Limit::UserSendRate);
        }
        taken
    }

    /// The refusal of a send over the user's rate.
    pub fn slow_down(&self) -> pb::Error {
        pb::Error::new(
            ErrorCode::RateLimited,
            format!(
                "slow down: {} messages per second allowed",
                self.shared.config.limits.user_sends_per_sec
            ),
        )
    }

    /// Closes every connection on this core with a reason (shutdown).
    pub fn close_all(&self, reason: &str) {
        let frame = kicked_frame(reason);
        for outbox in self.conns.borrow().values() {
            outbox.close_with(Some(frame.clone()));
        }
    }

    /// Sends `msg` to `core`, handling it in place when that is us.
    pub async fn route(self: &Rc<Self>, core: usize, msg: CoreMsg) {
        if core == self.id {
            // Boxed: handling may route again (Deliver → Push).
            let local: Pin<Box<dyn Future<Output = ()> + '_>> = Box::pin(self.handle(msg));
            local.await;
        } else if self.mesh.send_to(core, msg).await.is_err() {
            // The peer is shutting down; its connections are closing anyway.
            tracing::debug!(peer = core, "mesh peer gone");
        }
    }

    /// Handles one message from the mesh (or from ourselves).
    pub async fn handle(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Sequence(job) => self.sequence(*job),
            CoreMsg::Deliver {
                user_id,
                frame,
                skip_conn,
                committed_at,
            } => {
                self.deliver_local(&[user_id], frame, skip_conn, committed_at)
                    .await
            }
            CoreMsg::DeliverMany {
                user_ids,
                frame,
                skip_conn,
                committed_at,
            } => {
                self.deliver_local(&user_ids, frame, skip_conn, committed_at)
                    .await
            }
            CoreMsg::PushMany {
                conn_ids,
                frame,
                committed_at,
            } => {
                for conn_id in conn_ids {
                    self.push_local(conn_id, frame.clone(), committed_at);
                }
            }
            CoreMsg::Push {
                conn_id,
                frame,
                committed_at,
            } => self.push_local(conn_id, frame, committed_at),
            CoreMsg::Online {
                user_id,
                device_id,
                conn_id,
                done,
            } => {
                let before = self.presence_of(user_id);
                let published = self.publish_device(user_id, &device_id, DeviceChange::LoggedIn);
                let registered_ms = now_ms() as i64;
                let replaced = {
                    let mut directory = self.directory.borrow_mut();
                    // Most users have one device online: room for one, not the four a
                    // first push would reserve.
                    let devices = directory
                        .entry(user_id)
                        .or_insert_with(|| Vec::with_capacity(1));
                    match devices.iter_mut().find(|d| *d.device_id == *device_id) {
                        Some(existing) => {
                            existing.registered_ms = registered_ms;
                            Some(std::mem::replace(&mut existing.conn_id, conn_id))
                        }
                        None => {
                            devices.push(DeviceConn {
                                device_id: device_id.into_boxed_str(),
                                conn_id,
                                registered_ms,
                                away: false,
                            });
                            None
                        }
                    }
                };
                match published {
                    // Cluster mode: answered once the directory has it.
                    Some(written) => {
                        glommio::spawn_local(async move {
                            let _ = written.await;
                            let _ = done.send(());
                        })
                        .detach();
                    }
                    None => {
                        let _ = done.send(());
                    }
                }
                self.announce_presence(user_id, before);
                if let Some(old) = replaced.filter(|old| *old != conn_id) {
                    let reason = "this device logged in again elsewhere".to_string();
                    self.route(
                        core_of_conn(old),
                        CoreMsg::Kick {
                            conn_id: old,
                            reason,
                        },
                    )
                    .await;
                }
            }
            CoreMsg::Offline {
                user_id,
                device_id,
                conn_id,
            } => {
                let before = self.presence_of(user_id);
                {
                    let mut directory = self.directory.borrow_mut();
                    if let Some(devices) = directory.get_mut(&user_id) {
                        // Only the connection that registered may unregister:
                        // a kicked connection's late Offline must not remove
                        // the device's new connection.
                        devices.retain(|d| !(*d.device_id == *device_id && d.conn_id == conn_id));
                        if devices.is_empty() {
                            directory.remove(&user_id);
                        }
                    }
                }
                let still_here = self
                    .directory
                    .borrow()
                    .get(&user_id)
                    .is_some_and(|devices| devices.iter().any(|d| *d.device_id == *device_id));
                if !still_here {
                    let _ = self.publish_device(user_id, &device_id, DeviceChange::Gone);
                }
                self.announce_presence(user_id, before);
            }
            CoreMsg::SetAway {
                user_id,
                conn_id,
                away,
                done,
            } => {
                let before = self.presence_of(user_id);
                let changed = self
                    .directory
                    .borrow_mut()
                    .get_mut(&user_id)
                    .and_then(|devices| devices.iter_mut().find(|d| d.conn_id == conn_id))
                    .map(|device| {
                        device.away = away;
                        device.device_id.to_string()
                    });
                if let Some(device_id) = changed {
                    let _ = self.publish_device(user_id, &device_id, DeviceChange::Away(away));
                }
                let _ = done.send(());
                self.announce_presence(user_id, before);
            }
            CoreMsg::Presence { user_id, reply } => {
                let _ = reply.send(self.presence_info(user_id));
            }
            CoreMsg::OnlineDevices { user_id, reply } => {
                let online = self
                    .directory
                    .borrow()
                    .get(&user_id)
                    .map(|devices| devices.iter().map(|d| d.device_id.to_string()).collect())
                    .unwrap_or_default();
                let _ = reply.send(online);
            }
            CoreMsg::KickDevice {
                user_id,
                device_id,
                reason,
                registered_before_ms,
                reply,
            } => {
                let conn = self.directory.borrow().get(&user_id).and_then(|devices| {
                    devices
                        .iter()
                        .find(|d| *d.device_id == *device_id)
                        .filter(|d| {
                            registered_before_ms == 0 || d.registered_ms < registered_before_ms
                        })
                        .map(|d| d.conn_id)
                });
                if let Some(reply) = reply {
                    let _ = reply.send(conn.is_some());
                }
                if let Some(conn_id) = conn {
                    self.route(core_of_conn(conn_id), CoreMsg::Kick { conn_id, reason })
                        .await;
                }
            }
            CoreMsg::SetBlocked {
                conversation,
                blocked,
                done,
            } => {
                let mut sequencer = self.sequencer.borrow_mut();
                match sequencer.convs.get_mut(&conversation) {
                    Some(Slot::Ready(state)) => state.blocked = blocked,
                    // The load may have read the store before the change
                    // committed: apply it when the load lands.
                    Some(Slot::Loading(_)) => {
                        sequencer.block_overrides.insert(conversation, blocked);
                    }
                    None => {}
                }
                let _ = done.send(());
            }
            CoreMsg::Forget { conversation } => {
                let mut sequencer = self.sequencer.borrow_mut();
                match sequencer.convs.get_mut(&conversation) {
                    // In-flight sends hold on to the state: drop it once
                    // they are answered (`reload_if_stale`).
                    Some(Slot::Ready(state)) if state.has_pending() => state.stale = true,
                    Some(Slot::Ready(_)) => {
                        sequencer.convs.remove(&conversation);
                    }
                    Some(Slot::Loading(_)) => {
                        sequencer.stale_loads.insert(conversation);
                    }
                    None => {}
                }
            }
            CoreMsg::Broadcast { frame, reply } => {
                let mut queued = 0;
                for outbox in self.conns.borrow().values() {
                    if outbox.is_logged_in()
                        && !outbox.is_closing()
                        && outbox.push(frame.clone()).is_ok()
                    {
                        queued += 1;
                    }
                }
                CoreMetrics::add(&self.metrics().events_pushed, queued as u64);
                let _ = reply.send(queued);
            }
            CoreMsg::Kick { conn_id, reason } => {
                if let Some(outbox) = self.conns.borrow().get(&conn_id) {
                    outbox.close_with(Some(kicked_frame(&reason)));
                }
            }
        }
    }

    /// Pushes `frame` to the online devices of `user_ids` (users this core
    /// owns), one mesh message per core that holds any of their connections.
    async fn deliver_local(
        self: &Rc<Self>,
        user_ids: &[i64],
        frame: Bytes,
        skip_conn: u64,
        committed_at: Option<Instant>,
    ) {
        let mut by_core: Vec<Vec<u64>> = vec![Vec::new(); self.shared.cores];
        {
            let directory = self.directory.borrow();
            for user_id in user_ids {
                for device in directory.get(user_id).into_iter().flatten() {
                    if device.conn_id != skip_conn {
                        if let Some(conns) = by_core.get_mut(core_of_conn(device.conn_id)) {
                            conns.push(device.conn_id);
                        }
                    }
                }
            }
        }
        for (core, conn_ids) in by_core.into_iter().enumerate() {
            match conn_ids.len() {
                0 => {}
                1 => {
                    let push = CoreMsg::Push {
                        conn_id: conn_ids[0],
                        frame: frame.clone(),
                        committed_at,
                    };
                    self.route(core, push).await;
                }
                _ => {
                    let push = CoreMsg::PushMany {
                        conn_ids,
                        frame: frame.clone(),
                        committed_at,
                    };
                    self.route(core, push).await;
                }
            }
        }
    }

    fn push_local(&self, conn_id: u64, frame: Bytes, committed_at: Option<Instant>) {
        let conns = self.conns.borrow();
        let Some(outbox) = conns.get(&conn_id) else {
            return;
        };
        let metrics = self.metrics();
        if outbox.push(frame).is_ok() {
            match committed_at {
                Some(at) => {
                    CoreMetrics::inc(&metrics.pushes);
                    metrics.deliver_us.record(at.elapsed().as_micros() as u64);
                }
                None => CoreMetrics::inc(&metrics.events_pushed),
            }
        } else {
            CoreMetrics::inc(&metrics.slow_reader_closes);
            tracing::debug!(conn_id, "slow reader: outbound queue full, closing");
            outbox.close_with(Some(kicked_frame(
                "outbound queue full: reconnect and sync",
            )));
        }
    }

    /// Whether a user id exists (cached per core).
    pub async fn user_exists(&self, user_id: i64) -> Result<bool, pb::Error> {
        if user_id <= 0 {
            return Ok(false);
        }
        if self.known_users.borrow().contains(&user_id) {
            return Ok(true);
        }
        let exists = self
            .read(move |store| store.account_by_id(user_id).map(|a| a.is_some()))
            .await?;
        if exists {
            let mut known = self.known_users.borrow_mut();
            if known.len() >= KNOWN_USERS_CAP {
                known.clear();
            }
            known.insert(user_id);
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
        let writer = &self.shared.writer;
        // Headroom for sends already forwarded to sequencing cores.
        let high_water = writer.capacity().saturating_sub(writer.capacity() / 8);
        wait_for_room(|| writer.depth() >= high_water).await
    }

    // ----- sequencing (this core owns the conversation) -----

    fn sequence(self: &Rc<Self>, job: SendJob) {
        let conv = match job.message.conversation_id.parse::<ConversationId>() {
            Ok(conv) => conv,
            Err(e) => {
                let _ = job
                    .reply
                    .send(Err(pb::Error::new(ErrorCode::BadRequest, e.to_string())));
                return;
            }
        };
        let mut sequencer = self.sequencer.borrow_mut();
        match sequencer.convs.get_mut(&conv) {
            Some(Slot::Ready(state)) if state.stale => {
                state.held.push(job);
                // Normally the last in-flight answer reloads it; if none is
                // left, nothing else would.
                drop(sequencer);
                self.reload_if_stale(conv);
            }
            Some(Slot::Ready(state)) => self.assign(conv, state, job),
            Some(Slot::Loading(queue)) => queue.push(job),
            None => {
                sequencer.evict_idle();
                sequencer.convs.insert(conv, Slot::Loading(vec![job]));
                drop(sequencer);
                let core = self.clone();
                glommio::spawn_local(async move { core.load_conversation(conv).await }).detach();
            }
        }
    }

    async fn load_conversation(self: Rc<Self>, conv: ConversationId) {
        let id = conv.to_string();
        let window = self.shared.config.storage.dedupe_window;
        let head = self
            .read(move |store| store.conversation_head(&id, window))
            .await;
        let mut sequencer = self.sequencer.borrow_mut();
        let queued = match sequencer.convs.remove(&conv) {
            Some(Slot::Loading(queued)) => queued,
            // Only the loader replaces a Loading slot.
            Some(other) => {
                sequencer.convs.insert(conv, other);
                return;
            }
            None => return,
        };
        if sequencer.stale_loads.remove(&conv) {
            sequencer.convs.insert(conv, Slot::Loading(queued));
            drop(sequencer);
            glommio::spawn_local(async move { self.load_conversation(conv).await }).detach();
            return;
        }
        match head {
            Ok(head) => {
                let mut state = ConvState::from_head(head);
                if let Some(blocked) = sequencer.block_overrides.remove(&conv) {
                    state.blocked = blocked;
                }
                for job in queued {
                    self.assign(conv, &mut state, job);
                }
                sequencer.convs.insert(conv, Slot::Ready(state));
            }
            Err(err) => {
                for job in queued {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Gives `job` the conversation's next seq and queues its write, or
    /// answers it from the recent-sends window when it is a resend.
    fn assign(self: &Rc<Self>, conv: ConversationId, state: &mut ConvState, job: SendJob) {
        let SendJob {
            mut message,
            origin_conn,
            command,
            reply,
        } = job;
        let fingerprint = fingerprint_of(&message);
        let resend = state.recent.iter().rev().find(|r| {
            r.sender_id == message.sender_id && r.client_message_id == message.client_message_id
        });
        if let Some(previous) = resend {
            if previous.fingerprint != fingerprint {
                let _ = reply.send(Err(reused_id(message.client_message_id)));
                return;
            }
            match &previous.waiters {
                None => {
                    let _ = reply.send(Ok(previous.accepted));
                }
                Some(waiters) => waiters.borrow_mut().push(reply),
            }
            return;
        }
        let mut recipients = Recipients::Direct {
            receiver: message.receiver_id,
            sender: message.sender_id,
        };
        let mut change = None;
        // A refused write must not leave a change applied in memory.
        let mut before_change = None;
        if message.group_id != 0 {
            let checked = match command {
                None => match &state.group {
                    Some(group) => group
                        .check_send(message.sender_id)
                        .map(|()| group.members()),
                    None => Err(pb::Error::new(ErrorCode::NotFound, "no such group")),
                },
                Some(command) => {
                    before_change = Some(state.group.clone());
                    let max = self.shared.config.server.max_group_members;
                    group_state::apply(&mut state.group, message.sender_id, command, max).map(
                        |applied| {
                            message.group_event = Some(applied.event);
                            change = Some(applied.change);
                            applied.recipients
                        },
                    )
                }
            };
            match checked {
                Ok(members) => recipients = Recipients::Group(members),
                Err(error) => {
                    let _ = reply.send(Err(error));
                    return;
                }
            }
        } else if state.blocked {
            let _ = reply.send(Err(pb::Error::new(
                ErrorCode::Forbidden,
                "you cannot message this user",
            )));
            return;
        }
        let staged = Staged {
            message,
            fingerprint,
            origin_conn,
            recipients,
            change,
            before_change,
            reply,
        };
        if self.shared.cluster.is_some() {
            // Seqs come from Redis: queue, and keep one request per
            // conversation in flight (it takes everything queued so far).
            state.awaiting.push(staged);
            if !state.allocating {
                state.allocating = true;
                let core = self.clone();
                glommio::spawn_local(async move { core.allocate_seqs(conv).await }).detach();
            }
            return;
        }
        // Seq 0: the store gives the seq when it writes the message, after
        // checking its unique index for this (sender, client id), so a
        // resend older than the window is answered with its first seq and
        // takes none (no gap).
        let accepted = Accepted {
            seq: 0,
            server_msg_id: self.next_id(),
            sent_at_ms: now_ms() as i64,
        };
        self.submit(state, staged, accepted);
    }

    /// Queues a sequenced message's write and its commit; the sender's
    /// reply waits for the commit.
    fn submit(&self, state: &mut ConvState, staged: Staged, accepted: Accepted) {
        let Staged {
            mut message,
            fingerprint,
            origin_conn,
            recipients,
            change,
            before_change,
            reply,
        } = staged;
        message.seq = accepted.seq;
        message.server_msg_id = accepted.server_msg_id;
        message.sent_at_ms = accepted.sent_at_ms;
        let op = match change {
            Some(change) => WriteOp::GroupChange {
                event: message.clone(),
                change,
            },
            None => WriteOp::AppendMessage(message.clone()),
        };
        let writer = match &self.shared.cluster {
            Some(cluster) => &cluster.log_writer,
            None => &self.shared.writer,
        };
        let completion = match writer.try_submit(op) {
            Ok(completion) => completion,
            Err(refused) => {
                // The seq was not taken: the next send reuses it.
                if let Some(group) = before_change {
                    state.group = group;
                }
                let _ = reply.send(Err(pool_error(refused.error)));
                return;
            }
        };
        state.last_seq = state.last_seq.max(accepted.seq);
        let waiters = Rc::new(RefCell::new(vec![reply]));
        state.recent.push_back(RecentSend {
            sender_id: message.sender_id,
            client_message_id: message.client_message_id,
            fingerprint,
            accepted,
            waiters: Some(waiters.clone()),
        });
        state.trim(self.sequencer_window());
        let pending = PendingCommit {
            message,
            origin_conn,
            recipients,
            completion,
            waiters,
        };
        if self.commits.try_send(pending).is_err() {
            tracing::error!("commit pump gone; send left unanswered");
        }
    }

    /// Cluster mode: asks Redis for the seqs of every send queued on `conv`
    /// (one call per round), then submits them in seq order; repeats while
    /// sends keep arriving.
    async fn allocate_seqs(self: Rc<Self>, conv: ConversationId) {
        // Spawned by `assign` while the sequencer is borrowed: let that
        // borrow end before taking it.
        yield_once().await;
        let id = conv.to_string();
        loop {
            let (batch, floor) = {
                let mut sequencer = self.sequencer.borrow_mut();
                let Some(Slot::Ready(state)) = sequencer.convs.get_mut(&conv) else {
                    return;
                };
                if state.awaiting.is_empty() {
                    state.allocating = false;
                    drop(sequencer);
                    self.reload_if_stale(conv);
                    return;
                }
                (std::mem::take(&mut state.awaiting), state.last_seq)
            };
            let minted: Vec<(i64, i64)> = batch
                .iter()
                .map(|_| (self.next_id(), now_ms() as i64))
                .collect();
            let requests: Vec<SeqRequest> = batch
                .iter()
                .zip(&minted)
                .map(|(staged, (server_msg_id, sent_at_ms))| SeqRequest {
                    sender_id: staged.message.sender_id,
                    client_message_id: staged.message.client_message_id,
                    server_msg_id: *server_msg_id,
                    sent_at_ms: *sent_at_ms,
                    fingerprint: staged.fingerprint,
                    // Chat sends also draw on the sender's budget shared by
                    // every node (this core's bucket knows this core only).
                    budgeted: staged.change.is_none(),
                })
                .collect();
            if let Some(cluster) = &self.shared.cluster {
                let stats = &cluster.stats;
                stats
                    .seq_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                stats
                    .seq_sends
                    .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            let rate = self.shared.config.limits.user_send_rate();
            let budget = SendBudget {
                per_sec: rate.per_sec,
                burst: rate.burst,
            };
            let key = id.clone();
            let grants = self
                .redis(move |redis| redis.allocate(&key, floor, &requests, budget))
                .await;
            let sent_before = match &grants {
                Ok(grants) => self.sent_before_redis_window(&id, &batch, grants).await,
                Err(_) => HashMap::new(),
            };
            let mut sequencer = self.sequencer.borrow_mut();
            let state = match sequencer.convs.get_mut(&conv) {
                Some(Slot::Ready(state)) => Some(state),
                _ => None,
            };
            match (grants, state) {
                (Ok(grants), Some(state)) if grants.len() == batch.len() => {
                    for ((staged, grant), (server_msg_id, sent_at_ms)) in
                        batch.into_iter().zip(grants).zip(minted)
                    {
                        // A resend is written again under its first seq:
                        // if its first write never reached Kafka this one
                        // does, and if it did, MySQL keeps one and clients
                        // drop the repeated push by seq.
                        let accepted = match grant {
                            SeqGrant::Limited => {
                                self.metrics().limited(Limit::UserSendRate);
                                let _ = staged.reply.send(Err(self.slow_down()));
                                continue;
                            }
                            SeqGrant::New { seq } => {
                                let message = &staged.message;
                                let key = (message.sender_id, message.client_message_id);
                                if let Some(first) = sent_before.get(&key) {
                                    // Older than Redis's window: answered from
                                    // the store; the seq Redis gave stays unused.
                                    let answer = match first.fingerprint == staged.fingerprint {
                                        true => Ok(Accepted {
                                            seq: first.seq,
                                            server_msg_id: first.server_msg_id,
                                            sent_at_ms: first.sent_at_ms,
                                        }),
                                        false => Err(reused_id(message.client_message_id)),
                                    };
                                    let _ = staged.reply.send(answer);
                                    continue;
                                }
                                Accepted {
                                    seq,
                                    server_msg_id,
                                    sent_at_ms,
                                }
                            }
                            SeqGrant::Resend {
                                fingerprint: Some(first),
                                ..
                            } if first != staged.fingerprint => {
                                let reused = reused_id(staged.message.client_message_id);
                                let _ = staged.reply.send(Err(reused));
                                continue;
                            }
                            SeqGrant::Resend {
                                seq,
                                server_msg_id,
                                sent_at_ms,
                                ..
                            } => Accepted {
                                seq,
                                server_msg_id,
                                sent_at_ms,
                            },
                        };
                        self.submit(state, staged, accepted);
                    }
                }
                (outcome, state) => {
                    let error = match outcome {
                        Err(error) => error,
                        Ok(_) => {
                            pb::Error::new(ErrorCode::Internal, "sequencing interrupted, retry")
                        }
                    };
                    tracing::warn!(conv = %conv, code = error.code, "seq allocation failed");
                    if let Some(state) = state {
                        // Undo the queued group changes, newest first.
                        for staged in batch.iter().rev() {
                            if let Some(group) = &staged.before_change {
                                state.group = group.clone();
                            }
                        }
                    }
                    for staged in batch {
                        let _ = staged.reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Cluster mode: the chat sends Redis took for new (its dedupe records
    /// expire) that the store already holds, by (sender, client id). A
    /// store that does not answer within `STORE_DEDUPE_WAIT` is not waited
    /// for: sends keep flowing while MySQL is away (the log feeds it later),
    /// at the price of such a resend being taken as new meanwhile.
    async fn sent_before_redis_window(
        &self,
        conv: &str,
        batch: &[Staged],
        grants: &[SeqGrant],
    ) -> HashMap<(i64, i64), ourchat_storage::RecentSend> {
        let sends: Vec<(i64, i64)> = batch
            .iter()
            .zip(grants)
            .filter(|(staged, grant)| {
                staged.change.is_none() && matches!(grant, SeqGrant::New { .. })
            })
            .map(|(staged, _)| (staged.message.sender_id, staged.message.client_message_id))
            .collect();
        if sends.is_empty() {
            return HashMap::new();
        }
        let conv = conv.to_string();
        let lookup = Box::pin(self.read(move |store| store.sends_among(&conv, &sends)));
        let wait = Box::pin(glommio::timer::sleep(STORE_DEDUPE_WAIT));
        match futures::future::select(lookup, wait).await {
            futures::future::Either::Left((Ok(found), _)) => found
                .into_iter()
                .map(|send| ((send.sender_id, send.client_message_id), send))
                .collect(),
            futures::future::Either::Left((Err(error), _)) => {
                tracing::warn!(
                    code = error.code,
                    "store dedupe check failed; sends taken as new"
                );
                HashMap::new()
            }
            futures::future::Either::Right(_) => {
                tracing::warn!("store dedupe check timed out; sends taken as new");
                HashMap::new()
            }
        }
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

    /// The members of a group whose conversation this core sequences and
    /// has in memory (`None`: not here, so ask the store).
    pub(crate) fn loaded_members(&self, conv: &ConversationId) -> Option<Rc<[i64]>> {
        if self.owner_of_conversation(conv) != self.id {
            return None;
        }
        match self.sequencer.borrow().convs.get(conv) {
            Some(Slot::Ready(state)) => state.group.as_ref().map(GroupState::members),
            _ => None,
        }
    }

    /// Drops the owner's state of `conv` (it changed on another node).
    pub(crate) async fn forget_conversation(self: &Rc<Self>, conv: ConversationId) {
        self.route(
            self.owner_of_conversation(&conv),
            CoreMsg::Forget { conversation: conv },
        )
        .await;
    }

    /// Drops a conversation's state that another node changed, once its
    /// in-flight sends are answered, and reads it again for the sends held
    /// meanwhile.
    fn reload_if_stale(self: &Rc<Self>, conv: ConversationId) {
        let mut sequencer = self.sequencer.borrow_mut();
        let settled = matches!(
            sequencer.convs.get(&conv),
            Some(Slot::Ready(state)) if state.stale && !state.in_flight()
        );
        if !settled {
            return;
        }
        let Some(Slot::Ready(state)) = sequencer.convs.remove(&conv) else {
            return;
        };
        if state.held.is_empty() {
            return;
        }
        sequencer.convs.insert(conv, Slot::Loading(state.held));
        drop(sequencer);
        let core = self.clone();
        glommio::spawn_local(async move { core.load_conversation(conv).await }).detach();
    }

    fn sequencer_window(&self) -> usize {
        self.shared.config.storage.dedupe_window
    }

    /// Drains commit completions in submission order: acks every waiting
    /// sender, then delivers, so pushes leave in seq order.
    pub async fn run_commit_pump(self: Rc<Self>, pending: LocalReceiver<PendingCommit>) {
        while let Some(mut commit) = pending.recv().await {
            let outcome = (&mut commit.completion).await;
            self.finish_commit(commit, outcome).await;
        }
    }

    async fn finish_commit(
        self: &Rc<Self>,
        commit: PendingCommit,
        outcome: Result<Result<WriteOutcome, PoolError>, oneshot::Canceled>,
    ) {
        let PendingCommit {
            mut message,
            origin_conn,
            recipients,
            waiters,
            ..
        } = commit;
        let conv = message.conversation_id.parse::<ConversationId>().ok();
        // A resend found by the store: answered with the first send, and
        // not pushed again (it was delivered when it was first stored).
        let mut sent_before = false;
        let result = match outcome {
            Ok(Ok(WriteOutcome::Appended { seq })) => {
                message.seq = seq;
                Ok(Accepted {
                    seq,
                    server_msg_id: message.server_msg_id,
                    sent_at_ms: message.sent_at_ms,
                })
            }
            Ok(Ok(WriteOutcome::Done)) => Ok(Accepted {
                seq: message.seq,
                server_msg_id: message.server_msg_id,
                sent_at_ms: message.sent_at_ms,
            }),
            Ok(Ok(WriteOutcome::SentBefore(first))) if first.same_content => {
                sent_before = true;
                Ok(Accepted {
                    seq: first.seq,
                    server_msg_id: first.server_msg_id,
                    sent_at_ms: first.sent_at_ms,
                })
            }
            Ok(Ok(WriteOutcome::SentBefore(_))) => Err(reused_id(message.client_message_id)),
            Ok(Ok(other)) => {
                tracing::error!(?other, conv = %message.conversation_id, seq = message.seq,
                    "store already held this seq: sequencer out of step, reloading");
                Err(pb::Error::new(
                    ErrorCode::Internal,
                    "sequencing conflict, retry",
                ))
            }
            Ok(Err(err)) => Err(pool_error(err)),
            Err(_) => Err(pool_error(PoolError::Closed)),
        };
        if let Some(conv) = conv {
            let mut sequencer = self.sequencer.borrow_mut();
            // A group change the store did not take was applied in memory:
            // read the group again.
            let unstored_change = sent_before && message.group_event.is_some();
            let dropped = match (&result, sequencer.convs.get_mut(&conv)) {
                (Ok(accepted), Some(Slot::Ready(state))) if !unstored_change => {
                    state.mark_committed(&message, *accepted);
                    None
                }
                // The seq may be half-known to the store: start over from
                // what it holds on the next send.
                (Err(_), Some(Slot::Ready(_))) => sequencer.convs.remove(&conv),
                _ => None,
            };
            drop(sequencer);
            match dropped {
                Some(Slot::Ready(state)) => {
                    for job in state.held {
                        self.sequence(job);
                    }
                }
                _ => self.reload_if_stale(conv),
            }
        }
        for waiter in waiters.borrow_mut().drain(..) {
            let _ = waiter.send(result.clone());
        }
        if result.is_err() || sent_before {
            return;
        }
        CoreMetrics::inc(&self.metrics().messages_accepted);
        let committed_at = Some(Instant::now());
        let frame = encode_frame(&Envelope::new(0, Body::PushMessage(message)));
        let (receiver, sender) = match recipients {
            Recipients::Direct { receiver, sender } => (receiver, sender),
            Recipients::Group(members) => {
                return self
                    .deliver_to_users(&members, frame, origin_conn, committed_at)
                    .await;
            }
        };
        self.route(
            self.owner_of_user(receiver),
            CoreMsg::Deliver {
                user_id: receiver,
                frame: frame.clone(),
                skip_conn: 0,
                committed_at,
            },
        )
        .await;
        self.route(
            self.owner_of_user(sender),
            CoreMsg::Deliver {
                user_id: sender,
                frame,
                skip_conn: origin_conn,
                committed_at,
            },
        )
        .await;
    }

    /// Pushes `frame` to every online device of `user_ids` except the
    /// connection `skip_conn`, with one mesh message per owning core.
    pub async fn deliver_to_users(
        self: &Rc<Self>,
        user_ids: &[i64],
        frame: Bytes,
        skip_conn: u64,
        committed_at: Option<Instant>,
    ) {
        let mut by_owner: Vec<Vec<i64>> = vec![Vec::new(); self.shared.cores];
        for user_id in user_ids {
            if let Some(users) = by_owner.get_mut(self.owner_of_user(*user_id)) {
                users.push(*user_id);
            }
        }
        for (core, user_ids) in by_owner.into_iter().enumerate() {
            if user_ids.is_empty() {
                continue;
            }
            let deliver = CoreMsg::DeliverMany {
                user_ids,
                frame: frame.clone(),
                skip_conn,
                committed_at,
            };
            self.route(core, deliver).await;
        }
    }

    /// Pushes `frame` to every online device of `user_id` except the
    /// connection `skip_conn`: receipts, recalls, typing.
    pub async fn push_to_user(self: &Rc<Self>, user_id: i64, frame: Bytes, skip_conn: u64) {
        let deliver = CoreMsg::Deliver {
            user_id,
            frame,
            skip_conn,
            committed_at: None,
        };
        self.route(self.owner_of_user(user_id), deliver).await;
    }

    /// A user's presence as this core (their owner) sees it: online if any
    /// device is online, away if every connected device is away.
    fn presence_of(&self, user_id: i64) -> (pb::PresenceState, u32) {
        match self.directory.borrow().get(&user_id) {
            Some(devices) if !devices.is_empty() => {
                let state = if devices.iter().all(|d| d.away) {
                    pb::PresenceState::Away
                } else {
                    pb::PresenceState::Online
                };
                (state, devices.len() as u32)
            }
            _ => (pb::PresenceState::Offline, 0),
        }
    }

    fn presence_info(&self, user_id: i64) -> pb::PresenceInfo {
        let (state, devices_online) = self.presence_of(user_id);
        let last_seen_ms = match state {
            pb::PresenceState::Offline => {
                self.last_seen.borrow().get(&user_id).copied().unwrap_or(0)
            }
            _ => now_ms() as i64,
        };
        pb::PresenceInfo {
            user_id,
            state: state as i32,
            last_seen_ms,
            devices_online,
        }
    }

    /// If the user's aggregated presence changed, tells their friends. The
    /// friend list is read off the reactor, in a task of its own.
    fn announce_presence(self: &Rc<Self>, user_id: i64, before: (pb::PresenceState, u32)) {
        let after = self.presence_of(user_id);
        if after.0 == before.0 {
            return;
        }
        if after.0 == pb::PresenceState::Offline {
            let mut last_seen = self.last_seen.borrow_mut();
            if last_seen.len() >= LAST_SEEN_CAP {
                last_seen.clear();
            }
            last_seen.insert(user_id, now_ms() as i64);
        }
        let mut info = self.presence_info(user_id);
        // Stamped with the change, so clients keep the newest if two pushes cross.
        info.last_seen_ms = now_ms() as i64;
        if let Some(cluster) = &self.shared.cluster {
            // Friends on other nodes hear of it through the log.
            let (log, payload) = (cluster.log.clone(), prost::Message::encode_to_vec(&info));
            let published = cluster.redis.try_run(move |_| {
                if let Err(error) = log.publish_presence(user_id, &payload) {
                    tracing::warn!(%error, user_id, "presence not published");
                }
            });
            if published.is_err() {
                tracing::warn!(user_id, "presence not published: cluster threads busy");
            }
        }
        glommio::spawn_local(self.clone().tell_friends(info)).detach();
    }

    /// Pushes a presence change to the user's friends' devices on this node.
    pub(crate) async fn tell_friends(self: Rc<Self>, info: pb::PresenceInfo) {
        let user_id = info.user_id;
        let Ok(friends) = self.read(move |store| store.friends(user_id)).await else {
            return;
        };
        if friends.is_empty() {
            return;
        }
        let frame = encode_frame(&Envelope::new(0, Body::Presence(info)));
        for (friend, _) in friends {
            self.push_to_user(friend, frame.clone(), 0).await;
        }
    }

    /// A user's aggregated presence, from their owner core.
    pub async fn presence(self: &Rc<Self>, user_id: i64) -> pb::PresenceInfo {
        let (reply, answer) = oneshot::channel();
        self.route(
            self.owner_of_user(user_id),
            CoreMsg::Presence { user_id, reply },
        )
        .await;
        let here = answer.await.unwrap_or(pb::PresenceInfo {
            user_id,
            ..Default::default()
        });
        self.presence_elsewhere(here).await
    }

    /// The user's online device ids.
    pub async fn online_devices(self: &Rc<Self>, user_id: i64) -> Vec<String> {
        let (reply, answer) = oneshot::channel();
        let ask = CoreMsg::OnlineDevices { user_id, reply };
        self.route(self.owner_of_user(user_id), ask).await;
        answer.await.unwrap_or_default()
    }

    /// Closes a device's connection (if online) with `reason`; whether it was.
    pub async fn kick_device(
        self: &Rc<Self>,
        user_id: i64,
        device_id: String,
        reason: &str,
    ) -> bool {
        let (reply, answer) = oneshot::channel();
        let elsewhere = self.sign_out_elsewhere(user_id, &device_id, reason).await;
        let kick = CoreMsg::KickDevice {
            user_id,
            device_id,
            reason: reason.to_string(),
            registered_before_ms: 0,
            reply: Some(reply),
        };
        self.route(self.owner_of_user(user_id), kick).await;
        answer.await.unwrap_or(false) || elsewhere
    }

    /// Closes this node's connection of a device another node signed out.
    pub(crate) async fn sign_out_here(self: &Rc<Self>, sign_out: pb::DeviceSignOut) {
        let kick = CoreMsg::KickDevice {
            user_id: sign_out.user_id,
            device_id: sign_out.device_id,
            reason: sign_out.reason,
            registered_before_ms: sign_out.registered_before_ms,
            reply: None,
        };
        self.route(self.owner_of_user(sign_out.user_id), kick).await;
    }

    /// Sends still waiting for their commit on this core.
    pub fn commits_pending(&self) -> usize {
        self.commits.len()
    }
}

/// Who a committed message is pushed to.
enum Recipients {
    /// Both sides of a 1:1 conversation.
    Direct { receiver: i64, sender: i64 },
    /// Every member of a group (as of the message's seq).
    Group(Rc<[i64]>),
}

/// A queued write the commit pump waits on.
pub struct PendingCommit {
    message: ChatMessage,
    origin_conn: u64,
    recipients: Recipients,
    completion: WriteCompletion,
    waiters: Rc<RefCell<Vec<oneshot::Sender<SendResult>>>>,
}

struct Sequencer {
    convs: HashMap<ConversationId, Slot>,
    /// Block changes that arrived while their conversation was loading.
    block_overrides: HashMap<ConversationId, bool>,
    /// Conversations another node changed while they were loading: the
    /// load may have read the store before the change, so it runs again.
    stale_loads: HashSet<ConversationId>,
    max: usize,
}

enum Slot {
    /// Head being read from the store; sends wait here in order.
    Loading(Vec<SendJob>),
    Ready(ConvState),
}

/// A checked send waiting for its seq.
struct Staged {
    message: ChatMessage,
    /// Of the message's payload, to tell a resend from a reused id.
    fingerprint: u64,
    origin_conn: u64,
    recipients: Recipients,
    change: Option<GroupChange>,
    /// The group as it was before this send's change (to undo it).
    before_change: Option<Option<GroupState>>,
    reply: oneshot::Sender<SendResult>,
}

struct ConvState {
    last_seq: i64,
    /// Cluster mode: checked sends waiting for Redis to give them seqs.
    awaiting: Vec<Staged>,
    /// Cluster mode: a seq request for this conversation is in flight.
    allocating: bool,
    /// Oldest first.
    recent: VecDeque<RecentSend>,
    /// One side blocks the other: new sends are refused.
    blocked: bool,
    /// A group conversation's membership (`None`: not a group, or no such
    /// group yet).
    group: Option<GroupState>,
    /// Another node changed who may send here while sends were in flight:
    /// once they are answered, this state is dropped and read again.
    stale: bool,
    /// Sends that arrived while stale, for the reloaded state, in order.
    held: Vec<SendJob>,
}

struct RecentSend {
    sender_id: i64,
    client_message_id: i64,
    fingerprint: u64,
    accepted: Accepted,
    /// `Some` while the write is in flight: resends wait with the original.
    waiters: Option<Rc<RefCell<Vec<oneshot::Sender<SendResult>>>>>,
}

impl ConvState {
    fn from_head(head: ConversationHead) -> Self {
        let recent = head
            .recent
            .iter()
            .rev()
            .map(|r| RecentSend {
                sender_id: r.sender_id,
                client_message_id: r.client_message_id,
                fingerprint: r.fingerprint,
                accepted: Accepted {
                    seq: r.seq,
                    server_msg_id: r.server_msg_id,
                    sent_at_ms: r.sent_at_ms,
                },
                waiters: None,
            })
            .collect();
        ConvState {
            last_seq: head.last_seq,
            awaiting: Vec::new(),
            allocating: false,
            recent,
            blocked: head.blocked,
            group: head.group.map(GroupState::from_roster),
            stale: false,
            held: Vec::new(),
        }
    }

    /// Records the stored seq (or the first send's, for a resend) of an
    /// in-flight send, so later resends are answered from the window.
    fn mark_committed(&mut self, message: &ChatMessage, accepted: Accepted) {
        self.last_seq = self.last_seq.max(accepted.seq);
        let entry = self.recent.iter_mut().rev().find(|r| {
            r.sender_id == message.sender_id && r.client_message_id == message.client_message_id
        });
        if let Some(entry) = entry {
            entry.accepted = accepted;
            entry.waiters = None;
        }
    }

    fn has_pending(&self) -> bool {
        self.in_flight() || !self.held.is_empty()
    }

    /// Sends checked against this state and not yet answered.
    fn in_flight(&self) -> bool {
        self.allocating
            || !self.awaiting.is_empty()
            || self.recent.iter().any(|r| r.waiters.is_some())
    }

    /// Drops the oldest committed entries beyond the window; in-flight ones
    /// stay so their resends still find them.
    fn trim(&mut self, window: usize) {
        while self.recent.len() > window && self.recent.front().is_some_and(|r| r.waiters.is_none())
        {
            self.recent.pop_front();
        }
    }
}

impl Sequencer {
    /// Keeps the number of conversations in memory bounded: past the cap,
    /// drops idle ones (they reload from the store on their next send).
    fn evict_idle(&mut self) {
        if self.convs.len() < self.max {
            return;
        }
        let target = self.max - self.max / 4;
        let mut excess = self.convs.len() - target;
        self.convs.retain(|_, slot| match slot {
            Slot::Ready(state) if excess > 0 && !state.has_pending() => {
                excess -= 1;
                false
            }
            _ => true,
        });
    }
}

/// Returns to the executor once, so whoever spawned this task finishes
/// its turn first.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
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

/// How long cluster mode waits for the store to say whether a send Redis
/// did not remember is an old resend.
const STORE_DEDUPE_WAIT: Duration = Duration::from_millis(500);

/// A send whose client id its sender already used for another payload in
/// this conversation: not retryable, the client must pick a new id.
fn reused_id(client_message_id: i64) -> pb::Error {
    pb::Error::new(
        ErrorCode::Conflict,
        format!(
            "client_message_id {client_message_id} already names another message of yours \
             in this conversation: give a new message a new id"
        ),
    )
}

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

/// Encodes one framed envelope.
pub fn encode_frame(envelope: &Envelope) -> Bytes {
    Bytes::from(codec::encode_to_vec(envelope))
}

/// The frame sent before closing a connection on purpose.
pub fn kicked_frame(reason: &str) -> Bytes {
    encode_frame(&Envelope::new(
        0,
        Body::Kicked(pb::Kicked {
            reason: reason.to_string(),
        }),
    ))
}
