//! One reactor core: its connections, its partition of users (which devices
//! are online, on which core) and its partition of conversations, whose
//! decisions live in the sans-IO [`Sequencer`](crate::sequencer) and are
//! carried out here (`Reactor`: loads, writes, Redis rounds, answers).
//! Cores share nothing; they talk through the glommio channel mesh with
//! [`CoreMsg`]. Everything here runs on one thread, so state is in
//! `Cell`/`RefCell` and no lock is taken.
//!
//! A 1:1 send travels: sender's core → conversation owner (assigns the
//! seq, queues the write) → store writer → conversation owner's commit pump
//! (acks the sender, then `Deliver` to the owners of both users) → each
//! device's core (`Push` into its outbox). A group send is the same, with
//! the group's owner core also checking membership, and `DeliverMany` /
//! `PushMany` carrying one frame to every member, one mesh message per core.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{GlommioError, ResourceType};
use ourchat_protocol::ids::{now_ms, IdGenerator};
use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_protocol::{codec, Body, ConversationId, Envelope, ErrorCode};
use ourchat_storage::redis::{RedisSeq, SendBudget, SeqGrant, SeqRequest};
use ourchat_storage::{MemoryReads, ReadStore, StoreError, WriteOp, WriteOutcome};
use ourchat_workers::{
    JobHandle, PoolError, Returned, ReturningCompletion, WriteCompletion, WriterHandle,
};

use crate::auth::TokenKeys;
use crate::cluster::{ClusterShared, DeviceChange};
use crate::config::Config;
use crate::directory::{Announce, Directory};
use crate::fanout;
use crate::group_state::GroupCommand;
use crate::limits::{Limit, NodeLimits, TokenBucket};
use crate::metrics::{CoreMetrics, Metrics};
use crate::outbox::{clock_ms, Outbox};
use crate::presence_queue::PresenceQueue;
use crate::remembered::Remembered;
use crate::sequencer::{self, reused_id, Recipients, Sequencer, Ticket, Write};

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
    /// What the store answers from memory, on the reactor itself (the
    /// embedded store, one node on its own).
    pub memory: Option<Arc<dyn MemoryReads>>,
    /// The web app's files (`server.web_root`), served on the WebSocket
    /// listener's port.
    pub web: Option<Arc<crate::web::WebAssets>>,
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
    /// To the user's owner: take this connection, whose login was just
    /// granted, and serve it here (`connection/handover.rs`).
    Adopt(Box<crate::connection::Handover>),
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
    /// To a connection's core: a pipelined send's answer, for its outbox.
    Answer {
        /// Whose send, and how to answer it.
        to: ConnReply,
        /// The seq it was stored at, or the refusal.
        result: SendResult,
    },
    /// To a connection's core: tell the client why, then close it.
    Kick {
        /// Target connection.
        conn_id: u64,
        /// Shown to the client.
        reason: String,
    },
}

/// What a core queued for a peer whose channel was full.
#[derive(Default)]
struct Overflow {
    /// In the order it was forwarded.
    queue: std::collections::VecDeque<CoreMsg>,
    /// A task is sending the queue; new messages go behind it.
    draining: bool,
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
    pub reply: Reply,
}

/// Who hears a send's answer.
pub enum Reply {
    /// A caller awaiting it (gRPC, group changes).
    Waiting(oneshot::Sender<SendResult>),
    /// A connection's pipelined send: answered straight into its outbox on
    /// its own core (over the mesh from another), so no task and no channel
    /// wait for it.
    Connection(ConnReply),
}

/// A connection's send, as its answer must name it.
pub struct ConnReply {
    /// The sending connection (its core is in the id).
    pub conn_id: u64,
    /// The request the answer names.
    pub req_id: u32,
    /// The conversation, which the answer carries.
    pub conv: ConversationId,
    /// When the frame arrived, for the send-ack latency metric.
    pub received_at: Instant,
}

pub use crate::sequencer::{Accepted, SendResult};

/// Connection ids carry their core in the top 16 bits.
const CONN_CORE_SHIFT: u32 = 48;

/// The core a connection id lives on.
pub fn core_of_conn(conn_id: u64) -> usize {
    (conn_id >> CONN_CORE_SHIFT) as usize
}

/// The `n`th connection id of `core`.
pub(crate) fn conn_id_on(core: usize, n: u64) -> u64 {
    ((core as u64) << CONN_CORE_SHIFT) | n
}

/// The core (of `cores`) that owns a user's directory entry.
pub(crate) fn user_owner(user_id: i64, cores: usize) -> usize {
    (mix(user_id as u64) % cores as u64) as usize
}

/// The core (of `cores`) that sequences a conversation. A 1:1
/// conversation's is one of its two users' own cores, where their
/// connections are too (`connection/handover.rs`): a send from that user
/// is sequenced, answered and pushed to the user's other devices without
/// leaving the core, and a send to that user is pushed from there. Which of
/// the two is a hash of the pair, so that each user owns half of their
/// conversations whatever their id.
pub(crate) fn conversation_owner(conv: &ConversationId, cores: usize) -> usize {
    match *conv {
        ConversationId::Direct { low, high } => {
            let user = if mix(conv.shard_hash()) >> 63 == 0 {
                low
            } else {
                high
            };
            user_owner(user, cores)
        }
        ConversationId::Group(_) => (mix(conv.shard_hash()) % cores as u64) as usize,
    }
}

/// Spreads ids over cores; snowflake low bits alone are too regular.
pub(crate) fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Users whose existence a core remembers before asking the store again.
const KNOWN_USERS_CAP: usize = 100_000;

/// (user, group conversation) pairs a core remembers the user may see.
const GROUP_VIEWERS_CAP: usize = 200_000;

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
    /// Per peer core: this core's traffic that found its channel full.
    overflows: RefCell<Vec<Overflow>>,
    ids: RefCell<IdGenerator>,
    next_conn: Cell<u64>,
    conns: RefCell<HashMap<u64, Rc<Outbox>>>,
    directory: RefCell<Directory>,
    sequencer: RefCell<Sequencer<Reply>>,
    commits: LocalSender<PendingCommit>,
    known_users: Remembered<i64>,
    /// Users a store read showed may see a group conversation: their
    /// delivery acks on it need no second read.
    pub(crate) group_viewers: Remembered<(i64, ConversationId)>,
    /// Send buckets of users sending from this core; full ones are
    /// forgotten by the sweeper.
    send_buckets: RefCell<HashMap<i64, TokenBucket>>,
    /// Delivery acks waiting to go to the store together.
    pub acks: crate::acks::AckCoalescer,
    /// Presence changes waiting to be pushed to friends, in order.
    presence_out: PresenceQueue,
    /// This core's parking lot, where adopted connections park. Weak: the
    /// lot's connections hold the core.
    lot: std::rc::Weak<crate::connection::Lot>,
}

impl Core {
    /// A core with its mesh senders; returns the receiver its commit pump
    /// must drain (see [`Core::run_commit_pump`]). `lot`: where it parks
    /// idle connections, handed-over ones too.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        mesh: Senders<CoreMsg>,
        lot: Option<&Rc<crate::connection::Lot>>,
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
            overflows: RefCell::new((0..shared.cores).map(|_| Overflow::default()).collect()),
            directory: RefCell::default(),
            sequencer: RefCell::new(Sequencer::new(sequencer::Limits {
                window: shared.config.storage.dedupe_window,
                max_conversations: shared.config.storage.max_conversations_per_core,
                max_group_members: shared.config.server.max_group_members,
                clustered: shared.cluster.is_some(),
            })),
            commits,
            known_users: Remembered::new(KNOWN_USERS_CAP),
            group_viewers: Remembered::new(GROUP_VIEWERS_CAP),
            send_buckets: RefCell::default(),
            acks: Default::default(),
            presence_out: Default::default(),
            lot: lot.map(Rc::downgrade).unwrap_or_default(),
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
        user_owner(user_id, self.shared.cores)
    }

    /// The core owning a conversation's sequence.
    pub fn owner_of_conversation(&self, conv: &ConversationId) -> usize {
        conversation_owner(conv, self.shared.cores)
    }

    /// This core's counters.
    pub fn metrics(&self) -> &CoreMetrics {
        self.shared.metrics.core(self.id)
    }

    /// Registers a connection (new, or handed over by another core) and
    /// returns its id here.
    pub fn add_connection(&self, outbox: Rc<Outbox>) -> u64 {
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
        conn_id_on(self.id, n)
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
    /// `login_timeout`, or logged in but silent for `idle_timeout`; asks
    /// those silent for `park_after` to park; gives up closes that could
    /// not write out in [`crate::outbox::LINGER`]. One sweep over the
    /// core's connections replaces a timer per connection.
    pub fn sweep_deadlines(
        &self,
        login_timeout: Duration,
        idle_timeout: Duration,
        park_after: Option<Duration>,
    ) {
        let now_ms = clock_ms();
        let metrics = self.metrics();
        for outbox in self.conns.borrow().values() {
            if outbox.is_closing() {
                if outbox.quiet_for(now_ms) >= crate::outbox::LINGER {
                    outbox.give_up();
                }
                continue;
            }
            let silent = outbox.quiet_for(now_ms);
            if park_after.is_some_and(|after| silent >= after)
                && silent < idle_timeout
                && outbox.is_logged_in()
            {
                outbox.ask_to_park();
            }
            if !outbox.is_logged_in() {
                if silent >= login_timeout {
                    metrics.error(ErrorCode::LoginTimeout as i32);
                    outbox.close_with(Some(encode_frame(&Envelope::error(
                        0,
                        ErrorCode::LoginTimeout,
                        "no login within the deadline",
                    ))));
                }
            } else if silent >= idle_timeout {
                CoreMetrics::inc(&metrics.idle_closes);
                outbox.close_with(Some(kicked_frame("idle timeout: no heartbeat")));
            }
        }
        let rate = self.shared.config.limits.user_send_rate();
        let now = Instant::now();
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

    /// Sends a request's `msg` to `core`, handling it in place when that
    /// is us; waits while the peer's channel is full (the backpressure that
    /// stops a busy connection being read). A core's own traffic goes with
    /// [`Core::forward`] instead.
    pub async fn route(self: &Rc<Self>, core: usize, msg: CoreMsg) {
        if core == self.id {
            return self.handle(msg);
        }
        CoreMetrics::inc(&self.metrics().mesh_sent);
        if self.mesh.send_to(core, msg).await.is_err() {
            // The peer is shutting down; its connections are closing anyway.
            tracing::debug!(peer = core, "mesh peer gone");
        }
    }

    /// Sends a core's own traffic (deliveries, pushes, answers, kicks) to
    /// `core` without ever waiting: what finds the peer's channel full
    /// queues here, in order, behind it. A core's inbox must not wait on a
    /// peer whose inbox may be waiting on it (with both channels full, the
    /// two cores would stall for ever); the wait belongs to the connections
    /// whose sends make the traffic ([`Core::route`]), and it reaches them
    /// because the queue drains at the peer's pace.
    pub fn forward(self: &Rc<Self>, core: usize, msg: CoreMsg) {
        if core == self.id {
            return self.handle(msg);
        }
        CoreMetrics::inc(&self.metrics().mesh_sent);
        let mut overflows = self.overflows.borrow_mut();
        let Some(overflow) = overflows.get_mut(core) else {
            return;
        };
        if overflow.draining {
            overflow.queue.push_back(msg);
            return CoreMetrics::inc(&self.metrics().mesh_overflows);
        }
        match self.mesh.try_send_to(core, msg) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                overflow.queue.push_back(msg);
                overflow.draining = true;
                CoreMetrics::inc(&self.metrics().mesh_overflows);
                // glommio runs a new task at once, up to its first wait.
                drop(overflows);
                glommio::spawn_local(self.clone().drain_overflow(core)).detach();
            }
            // The peer is shutting down; its connections are closing anyway.
            Err(_) => tracing::debug!(peer = core, "mesh peer gone"),
        }
    }

    /// Sends what queued for `core` in order, as its channel makes room.
    async fn drain_overflow(self: Rc<Self>, core: usize) {
        loop {
            let next = self
                .overflows
                .borrow_mut()
                .get_mut(core)
                .and_then(|overflow| overflow.queue.pop_front());
            let Some(msg) = next else {
                break;
            };
            if self.mesh.send_to(core, msg).await.is_err() {
                tracing::debug!(peer = core, "mesh peer gone");
                break;
            }
        }
        if let Some(overflow) = self.overflows.borrow_mut().get_mut(core) {
            overflow.queue.clear();
            overflow.draining = false;
        }
    }

    /// Handles one message from the mesh (or from ourselves). It never
    /// waits: what it sends on goes through [`Core::forward`].
    pub fn handle(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Sequence(job) => self.sequence(*job),
            CoreMsg::Deliver {
                user_id,
                frame,
                skip_conn,
                committed_at,
            } => self.deliver_local(&[user_id], frame, skip_conn, committed_at),
            CoreMsg::DeliverMany {
                user_ids,
                frame,
                skip_conn,
                committed_at,
            } => self.deliver_local(&user_ids, frame, skip_conn, committed_at),
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
            CoreMsg::Answer { to, result } => self.answer_local(to, result),
            CoreMsg::Adopt(handover) => {
                crate::connection::adopt(self, handover, self.lot.upgrade());
            }
            CoreMsg::Online {
                user_id,
                device_id,
                conn_id,
                done,
            } => {
                let published = self.publish_device(user_id, &device_id, DeviceChange::LoggedIn);
                let logged_in = self.directory.borrow_mut().online(
                    user_id,
                    &device_id,
                    conn_id,
                    now_ms() as i64,
                );
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
                self.announce_presence(logged_in.announce);
                if let Some(old) = logged_in.replaced {
                    let reason = "this device logged in again elsewhere".to_string();
                    self.forward(
                        core_of_conn(old),
                        CoreMsg::Kick {
                            conn_id: old,
                            reason,
                        },
                    );
                }
            }
            CoreMsg::Offline {
                user_id,
                device_id,
                conn_id,
            } => {
                let logged_out = self.directory.borrow_mut().offline(
                    user_id,
                    &device_id,
                    conn_id,
                    now_ms() as i64,
                );
                if logged_out.device_gone {
                    let _ = self.publish_device(user_id, &device_id, DeviceChange::Gone);
                }
                self.announce_presence(logged_out.announce);
            }
            CoreMsg::SetAway {
                user_id,
                conn_id,
                away,
                done,
            } => {
                let (changed, announce) =
                    self.directory
                        .borrow_mut()
                        .set_away(user_id, conn_id, away, now_ms() as i64);
                if let Some(device_id) = changed {
                    let _ = self.publish_device(user_id, &device_id, DeviceChange::Away(away));
                }
                let _ = done.send(());
                self.announce_presence(announce);
            }
            CoreMsg::Presence { user_id, reply } => {
                let info = self.directory.borrow().presence(user_id, now_ms() as i64);
                let _ = reply.send(info);
            }
            CoreMsg::OnlineDevices { user_id, reply } => {
                let online = self.directory.borrow().online_devices(user_id);
                let _ = reply.send(online);
            }
            CoreMsg::KickDevice {
                user_id,
                device_id,
                reason,
                registered_before_ms,
                reply,
            } => {
                let conn = self.directory.borrow().connection_of(
                    user_id,
                    &device_id,
                    registered_before_ms,
                );
                if let Some(reply) = reply {
                    let _ = reply.send(conn.is_some());
                }
                if let Some(conn_id) = conn {
                    self.forward(core_of_conn(conn_id), CoreMsg::Kick { conn_id, reason });
                }
            }
            CoreMsg::SetBlocked {
                conversation,
                blocked,
                done,
            } => {
                self.sequencer
                    .borrow_mut()
                    .set_blocked(conversation, blocked);
                let _ = done.send(());
            }
            CoreMsg::Forget { conversation } => self.sequencer.borrow_mut().forget(conversation),
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
    fn deliver_local(
        self: &Rc<Self>,
        user_ids: &[i64],
        frame: Bytes,
        skip_conn: u64,
        committed_at: Option<Instant>,
    ) {
        let pushes = fanout::pushes_by_core(
            self.directory.borrow().connections(user_ids, skip_conn),
            self.shared.cores,
            core_of_conn,
        );
        for push in pushes {
            let (core, push) = match push {
                fanout::Push::One { core, conn_id } => (
                    core,
                    CoreMsg::Push {
                        conn_id,
                        frame: frame.clone(),
                        committed_at,
                    },
                ),
                fanout::Push::Many { core, conn_ids } => (
                    core,
                    CoreMsg::PushMany {
                        conn_ids,
                        frame: frame.clone(),
                        committed_at,
                    },
                ),
            };
            self.forward(core, push);
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

    /// Answers a connection's send, on its core: here, or over the mesh.
    fn answer(self: &Rc<Self>, to: ConnReply, result: SendResult) {
        self.forward(core_of_conn(to.conn_id), CoreMsg::Answer { to, result });
    }

    /// Queues a send's answer on its connection, if still open, and counts
    /// the send as answered there.
    fn answer_local(&self, to: ConnReply, result: SendResult) {
        let conns = self.conns.borrow();
        let Some(outbox) = conns.get(&to.conn_id) else {
            return;
        };
        let metrics = self.metrics();
        match &result {
            Ok(_) => metrics
                .send_ack_us
                .record(to.received_at.elapsed().as_micros() as u64),
            Err(error) => metrics.error(error.code),
        }
        let response = crate::messages::send_response(to.conv, result);
        crate::connection::queue_answer(outbox, to.req_id, Body::SendResp(response));
        outbox.send_answered();
    }

    /// Whether a user id exists (cached per core).
    pub async fn user_exists(&self, user_id: i64) -> Result<bool, pb::Error> {
        if user_id <= 0 {
            return Ok(false);
        }
        let in_memory = self.shared.memory.as_ref();
        if self.known_users.contains(&user_id)
            || in_memory.is_some_and(|m| m.account_known(user_id))
        {
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
        let writer = &self.shared.writer;
        // Headroom for sends already forwarded to sequencing cores.
        let high_water = writer.capacity().saturating_sub(writer.capacity() / 8);
        wait_for_room(|| writer.depth() >= high_water).await
    }

    // ----- sequencing (this core owns the conversation) -----

    fn sequence(self: &Rc<Self>, job: SendJob) {
        let SendJob {
            message,
            origin_conn,
            command,
            reply,
        } = job;
        let job = sequencer::Job {
            message,
            origin_conn,
            command,
            reply,
        };
        let mut reactor = Reactor::new(self);
        self.sequencer.borrow_mut().send(job, &mut reactor);
        reactor.spawn_deferred();
    }

    async fn load_conversation(self: Rc<Self>, conv: ConversationId) {
        // A first send between two users needs no reader thread: the
        // store knows from memory that there is nothing to read.
        let in_memory = self.shared.memory.as_ref();
        let head = match in_memory.and_then(|memory| memory.empty_direct_head(conv)) {
            Some(head) => Ok(head),
            None => {
                let id = conv.to_string();
                let window = self.shared.config.storage.dedupe_window;
                self.read(move |store| store.conversation_head(&id, window))
                    .await
            }
        };
        let mut reactor = Reactor::new(&self);
        self.sequencer.borrow_mut().loaded(conv, head, &mut reactor);
        reactor.spawn_deferred();
    }

    /// Cluster mode: asks Redis for the seqs of every send queued on `conv`
    /// (one call per round), then submits them in seq order; repeats while
    /// sends keep arriving.
    async fn allocate_seqs(self: Rc<Self>, conv: ConversationId) {
        // Let this turn's sends queue first: one Redis round takes them all.
        yield_once().await;
        let id = conv.to_string();
        loop {
            let mut reactor = Reactor::new(&self);
            let asked = self
                .sequencer
                .borrow_mut()
                .take_allocation(conv, &mut reactor);
            reactor.spawn_deferred();
            let Some(allocation) = asked else {
                return;
            };
            if let Some(cluster) = &self.shared.cluster {
                let stats = &cluster.stats;
                stats
                    .seq_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                stats.seq_sends.fetch_add(
                    allocation.requests.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            let rate = self.shared.config.limits.user_send_rate();
            let budget = SendBudget {
                per_sec: rate.per_sec,
                burst: rate.burst,
            };
            let (key, floor) = (id.clone(), allocation.floor);
            let requests = allocation.requests;
            let asked = requests.clone();
            let grants = self
                .redis(move |redis| redis.allocate(&key, floor, &asked, budget))
                .await;
            let in_store = match &grants {
                Ok(grants) => self.sent_before_redis_window(&id, &requests, grants).await,
                Err(_) => HashMap::new(),
            };
            let mut reactor = Reactor::new(&self);
            self.sequencer
                .borrow_mut()
                .allocated(conv, grants, &in_store, &mut reactor);
            reactor.spawn_deferred();
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
        requests: &[SeqRequest],
        grants: &[SeqGrant],
    ) -> HashMap<(i64, i64), ourchat_storage::RecentSend> {
        // Chat sends only (a group change is not budgeted, and not
        // deduplicated by the store).
        let sends: Vec<(i64, i64)> = requests
            .iter()
            .zip(grants)
            .filter(|(request, grant)| request.budgeted && matches!(grant, SeqGrant::New { .. }))
            .map(|(request, _)| (request.sender_id, request.client_message_id))
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
        self.sequencer.borrow().members(conv)
    }

    /// Drops the owner's state of `conv` (it changed on another node).
    pub(crate) async fn forget_conversation(self: &Rc<Self>, conv: ConversationId) {
        self.route(
            self.owner_of_conversation(&conv),
            CoreMsg::Forget { conversation: conv },
        )
        .await;
    }

    /// Drains commit completions in submission order: acks every waiting
    /// sender, then delivers, so pushes leave in seq order.
    pub async fn run_commit_pump(self: Rc<Self>, pending: LocalReceiver<PendingCommit>) {
        while let Some(mut commit) = pending.recv().await {
            let outcome = (&mut commit.completion).await;
            self.finish_commit(commit, outcome);
        }
    }

    fn finish_commit(
        self: &Rc<Self>,
        commit: PendingCommit,
        returned: Result<Returned, oneshot::Canceled>,
    ) {
        let PendingCommit {
            ticket,
            conv,
            origin_conn,
            recipients,
            ..
        } = commit;
        // The op is the sequencer's: it always holds a message (a writer
        // gone without answering leaves the default, and an error).
        let (outcome, mut message) = match returned {
            Ok((outcome, op)) => (Ok(outcome), op.into_message().unwrap_or_default()),
            Err(canceled) => (Err(canceled), ChatMessage::default()),
        };
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
        // A group change the store did not take was applied in memory.
        let unstored_change = sent_before && message.group_event.is_some();
        let mut reactor = Reactor::new(self);
        self.sequencer.borrow_mut().committed(
            ticket,
            Some(conv),
            &result,
            unstored_change,
            &mut reactor,
        );
        reactor.spawn_deferred();
        if result.is_err() || sent_before {
            return;
        }
        CoreMetrics::inc(&self.metrics().messages_accepted);
        let committed_at = Some(Instant::now());
        let frame = encode_frame(&Envelope::new(0, Body::PushMessage(message)));
        let plan = fanout::deliveries(&recipients, origin_conn, self.shared.cores, |user| {
            self.owner_of_user(user)
        });
        for leg in plan {
            let (core, deliver) = match leg {
                fanout::Deliver::One {
                    core,
                    user_id,
                    skip_conn,
                } => (
                    core,
                    CoreMsg::Deliver {
                        user_id,
                        frame: frame.clone(),
                        skip_conn,
                        committed_at,
                    },
                ),
                fanout::Deliver::Many {
                    core,
                    user_ids,
                    skip_conn,
                } => (
                    core,
                    CoreMsg::DeliverMany {
                        user_ids,
                        frame: frame.clone(),
                        skip_conn,
                        committed_at,
                    },
                ),
            };
            self.forward(core, deliver);
        }
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
        let owners = fanout::users_by_owner(user_ids, self.shared.cores, |user_id| {
            self.owner_of_user(user_id)
        });
        for (core, user_ids) in owners {
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

    /// Tells a user's friends of their new presence (`None`: it did not
    /// change): other nodes through the log, this node's through the
    /// presence queue.
    fn announce_presence(self: &Rc<Self>, announce: Announce) {
        let Some(info) = announce else {
            return;
        };
        let user_id = info.user_id;
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
        self.tell_friends(info);
    }

    /// Queues a presence change for the user's friends' devices on this
    /// node; they hear changes in the order they were queued.
    pub(crate) fn tell_friends(self: &Rc<Self>, info: pb::PresenceInfo) {
        if self.presence_out.add(info) {
            glommio::spawn_local(self.clone().push_presence_changes()).detach();
        }
    }

    /// Drains the presence queue: one store read for the friends of every
    /// change waiting, then the pushes in order, until nothing waits.
    async fn push_presence_changes(self: Rc<Self>) {
        loop {
            let changes = self.presence_out.take();
            if changes.is_empty() {
                return;
            }
            let user_ids: Vec<i64> = changes.iter().map(|info| info.user_id).collect();
            let read = self.read(move |store| {
                user_ids
                    .iter()
                    .map(|user_id| store.friends(*user_id))
                    .collect::<Result<Vec<_>, _>>()
            });
            let Ok(friend_lists) = read.await else {
                tracing::warn!(
                    changes = changes.len(),
                    "presence not pushed: friends unread"
                );
                continue;
            };
            for (info, friends) in changes.into_iter().zip(friend_lists) {
                if friends.is_empty() {
                    continue;
                }
                let frame = encode_frame(&Envelope::new(0, Body::Presence(info)));
                for (friend, _) in friends {
                    self.push_to_user(friend, frame.clone(), 0).await;
                }
            }
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

/// A queued write the commit pump waits on. The message is in the writer's
/// hands meanwhile and comes back with the outcome, to be pushed.
pub struct PendingCommit {
    ticket: Ticket,
    conv: ConversationId,
    origin_conn: u64,
    recipients: Recipients,
    completion: ReturningCompletion,
}

/// The core carrying out the sequencer's effects: loads and Redis rounds
/// as tasks of their own, writes into the writer's queue (and their
/// completions onto the commit pump), answers to each sender as its
/// `Reply` says.
struct Reactor<'a> {
    core: &'a Rc<Core>,
    /// Tasks to start once the sequencer is no longer borrowed: glommio
    /// runs a new task at once, up to its first await, and a load that
    /// fails at once would re-enter the sequencer.
    deferred: Vec<Deferred>,
}

enum Deferred {
    Load(ConversationId),
    Allocate(ConversationId),
}

impl<'a> Reactor<'a> {
    fn new(core: &'a Rc<Core>) -> Self {
        Reactor {
            core,
            deferred: Vec::new(),
        }
    }

    /// Starts the loads and Redis rounds the sequencer asked for.
    fn spawn_deferred(self) {
        for deferred in self.deferred {
            let core = self.core.clone();
            match deferred {
                Deferred::Load(conv) => {
                    glommio::spawn_local(async move { core.load_conversation(conv).await }).detach()
                }
                Deferred::Allocate(conv) => {
                    glommio::spawn_local(async move { core.allocate_seqs(conv).await }).detach()
                }
            };
        }
    }
}

impl sequencer::Effects<Reply> for Reactor<'_> {
    fn load(&mut self, conv: ConversationId) {
        self.deferred.push(Deferred::Load(conv));
    }

    fn answer(&mut self, reply: Reply, result: SendResult) {
        match reply {
            Reply::Waiting(sender) => {
                let _ = sender.send(result);
            }
            Reply::Connection(to) => self.core.answer(to, result),
        }
    }

    fn write(&mut self, write: Write) -> Result<(), pb::Error> {
        let core = self.core;
        let writer = match &core.shared.cluster {
            Some(cluster) => &cluster.log_writer,
            None => &core.shared.writer,
        };
        let completion = writer
            .try_submit_returning(write.op)
            .map_err(|refused| pool_error(refused.error))?;
        let pending = PendingCommit {
            ticket: write.ticket,
            conv: write.conv,
            origin_conn: write.origin_conn,
            recipients: write.recipients,
            completion,
        };
        if core.commits.try_send(pending).is_err() {
            tracing::error!("commit pump gone; send left unanswered");
        }
        Ok(())
    }

    fn allocate(&mut self, conv: ConversationId) {
        self.deferred.push(Deferred::Allocate(conv));
    }

    fn next_id(&mut self) -> i64 {
        self.core.next_id()
    }

    fn now_ms(&mut self) -> i64 {
        now_ms() as i64
    }

    fn over_budget(&mut self) -> pb::Error {
        self.core.metrics().limited(Limit::UserSendRate);
        self.core.slow_down()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_conversation_is_sequenced_on_one_of_its_users_cores_each_half_the_time() {
        let cores = 4;
        let mut low_owns = 0;
        for low in 1..2_000i64 {
            let high = low * 7_919 + 13;
            let conv = ConversationId::Direct { low, high };
            let owner = conversation_owner(&conv, cores);
            let (low_core, high_core) = (user_owner(low, cores), user_owner(high, cores));
            assert!(
                owner == low_core || owner == high_core,
                "{conv:?} on core {owner}"
            );
            if low_core != high_core && owner == low_core {
                low_owns += 1;
            }
        }
        let both_differ = (1..2_000i64)
            .filter(|&low| user_owner(low, cores) != user_owner(low * 7_919 + 13, cores))
            .count();
        let share = f64::from(low_owns) / both_differ as f64;
        assert!(
            (0.4..0.6).contains(&share),
            "the lower user owns {share:.2}"
        );
    }
}
