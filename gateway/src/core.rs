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
//!
//! Here: the core's state, its placement rules (which core owns a user, a
//! conversation, a connection) and [`Core::handle`], which dispatches each
//! mesh message. The rest is in parts, in the order a message meets them:
//! `sequencing` (the sequencer's effects and the commit pump), `mesh`
//! (sending to other cores), `delivery` (pushes and answers), `presence`
//! and `workers` (calls on the store, hashing and Redis threads).

use std::cell::RefCell;
// The core's maps are keyed by ids the server assigns (users, connections):
// foldhash, not SipHash, whose rounds showed in the reactor's profile.
use foldhash::HashMap;
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
use ourchat_storage::{MemoryReads, ReadStore};
use ourchat_workers::{JobHandle, WriterHandle};

use crate::auth::TokenKeys;
use crate::cluster::{ClusterShared, DeviceChange};
use crate::config::Config;
use crate::conn_table::ConnTable;
use crate::directory::Directory;
use crate::group_state::GroupCommand;
use crate::limits::{Limit, NodeLimits, TokenBucket};
use crate::metrics::{CoreMetrics, Metrics};
use crate::outbox::{clock_ms, Outbox};
use crate::presence_queue::PresenceQueue;
use crate::remembered::Remembered;
use crate::sequencer::{self, Sequencer};

mod delivery;
use delivery::Pushing;
mod mesh;
mod presence;
mod sequencing;
mod workers;

use mesh::Overflow;
pub use sequencing::PendingCommit;
pub use workers::pool_error;

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

/// A message to sequence, from the sender's connection.
pub struct SendJob {
    /// The message's conversation, parsed (the message holds it as text).
    pub conv: ConversationId,
    /// The message with everything but seq, id and time filled in (its
    /// box goes on to the store's queue and back).
    pub message: Box<ChatMessage>,
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
    conns: RefCell<ConnTable<Rc<Outbox>>>,
    directory: RefCell<Directory>,
    sequencer: RefCell<Sequencer<Reply>>,
    commits: LocalSender<PendingCommit>,
    /// The writer's outcomes of this core's sequenced messages, in the
    /// order of `commits`.
    committed: Arc<ourchat_workers::Completions>,
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
            conns: RefCell::new(ConnTable::new(conn_id_on(id, 0))),
            overflows: RefCell::new((0..shared.cores).map(|_| Overflow::default()).collect()),
            directory: RefCell::default(),
            sequencer: RefCell::new(Sequencer::new(sequencer::Limits {
                window: shared.config.storage.dedupe_window,
                max_conversations: shared.config.storage.max_conversations_per_core,
                max_group_members: shared.config.server.max_group_members,
                clustered: shared.cluster.is_some(),
            })),
            commits,
            committed: ourchat_workers::Completions::new(),
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
        let added = self.conns.borrow_mut().insert(outbox.clone());
        match added {
            Some(conn_id) => {
                CoreMetrics::inc(&self.metrics().connections);
                conn_id
            }
            None => {
                outbox.close_with(Some(kicked_frame(
                    "this core holds all the connections it can",
                )));
                self.new_conn_id()
            }
        }
    }

    /// A fresh connection id. Used alone for a request with no socket (a
    /// gRPC call): never registered, so pushes to it go nowhere.
    pub fn new_conn_id(&self) -> u64 {
        self.conns.borrow_mut().unregistered_id()
    }

    /// Forgets a closed connection.
    pub fn remove_connection(&self, conn_id: u64) {
        if self.conns.borrow_mut().remove(conn_id).is_some() {
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

    /// Takes one send from `user_id`'s bucket on this core, as of `now`;
    /// `false` when the user sends faster than allowed.
    pub fn take_send(&self, user_id: i64, now: Instant) -> bool {
        let rate = self.shared.config.limits.user_send_rate();
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
                    self.push_local(conn_id, frame.clone(), committed_at, Pushing::Queued);
                }
            }
            CoreMsg::Push {
                conn_id,
                frame,
                committed_at,
            } => self.push_local(conn_id, frame, committed_at, Pushing::Now),
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
                if let Some(outbox) = self.conns.borrow().get(conn_id) {
                    outbox.close_with(Some(kicked_frame(&reason)));
                }
            }
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
