//! The conversations this core sequences, carried out: the sans-IO
//! [`Sequencer`](crate::sequencer) decides, and `Reactor` performs its
//! effects — conversation loads and Redis seq rounds as tasks of their
//! own, writes into the store writer's queue, answers as each sender's
//! `Reply` says. The commit pump takes the writer's completions in order,
//! hands them to the sequencer, acknowledges each sender and starts the
//! message's deliveries.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::LocalReceiver;
use ourchat_protocol::ids::now_ms;
use ourchat_protocol::pb;
use ourchat_protocol::{Body, ConversationId, Envelope, ErrorCode};
use ourchat_storage::redis::{SendBudget, SeqGrant, SeqRequest};
use ourchat_storage::{ConversationHead, WriteOutcome};
use ourchat_workers::{Completions, Returned};

use super::{encode_frame, pool_error, Accepted, Core, CoreMsg, Reply, SendJob, SendResult};
use crate::fanout;
use crate::limits::Limit;
use crate::metrics::CoreMetrics;
use crate::sequencer::{self, reused_id, Recipients, Ticket, Write};

impl Core {
    /// Hands a send for a conversation this core owns to the sequencer,
    /// and carries out what it decides.
    pub(super) fn sequence(self: &Rc<Self>, job: SendJob) {
        let SendJob {
            conv,
            message,
            origin_conn,
            command,
            reply,
        } = job;
        let job = sequencer::Job {
            conv,
            message,
            origin_conn,
            command,
            reply,
        };
        let mut reactor = Reactor::new(self);
        self.sequencer.borrow_mut().send(job, &mut reactor);
        reactor.spawn_deferred();
    }

    /// Loads a conversation's head on a reader thread, for the sequencer.
    async fn load_conversation(self: Rc<Self>, conv: ConversationId) {
        let id = conv.to_string();
        let window = self.shared.config.storage.dedupe_window;
        let head = self
            .read(move |store| store.conversation_head(&id, window))
            .await;
        let head = match head {
            Ok(head) if head.last_seq == 0 => self.both_sides_exist(conv).await.map(|()| head),
            other => other,
        };
        self.conversation_loaded(conv, head);
    }

    /// A 1:1 conversation with no message yet is only taken in when both
    /// its users have accounts. Checked here, once per conversation taken
    /// in, rather than for every send (where it cost three cache misses a
    /// message: the accounts' shard lock, its table, the entry); one that
    /// holds a message had both then, and accounts are never deleted.
    async fn both_sides_exist(&self, conv: ConversationId) -> Result<(), pb::Error> {
        let ConversationId::Direct { low, high } = conv else {
            return Ok(());
        };
        if self.user_exists(low).await? && self.user_exists(high).await? {
            return Ok(());
        }
        Err(pb::Error::new(ErrorCode::NotFound, "no such receiver"))
    }

    /// The head of a direct conversation the store's memory knows holds
    /// nothing, between two accounts it knows; `None`: a reader thread
    /// must ask the store.
    fn empty_head_in_memory(&self, conv: ConversationId) -> Option<ConversationHead> {
        let memory = self.shared.memory.as_ref()?;
        let ConversationId::Direct { low, high } = conv else {
            return None;
        };
        if !(memory.account_known(low) && memory.account_known(high)) {
            return None;
        }
        memory.empty_direct_head(conv)
    }

    /// Hands a loaded head to the sequencer and carries out what follows.
    fn conversation_loaded(
        self: &Rc<Self>,
        conv: ConversationId,
        head: Result<ConversationHead, pb::Error>,
    ) {
        let mut reactor = Reactor::new(self);
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
    /// The writer wakes this once per batch it commits, not per message.
    pub async fn run_commit_pump(self: Rc<Self>, pending: LocalReceiver<PendingCommit>) {
        let mut committed = VecDeque::new();
        while let Some(commit) = pending.recv().await {
            // Every pending commit's op is in the writer's hands, and its
            // outcome comes back to `committed` in this order.
            let returned = loop {
                if let Some(returned) = committed.pop_front() {
                    break returned;
                }
                committed.shrink_to(Completions::RETAINED);
                self.committed.take(&mut committed).await;
            };
            self.finish_commit(commit, returned);
        }
    }

    fn finish_commit(self: &Rc<Self>, commit: PendingCommit, returned: Returned) {
        let PendingCommit {
            ticket,
            conv,
            origin_conn,
            recipients,
        } = commit;
        // The op is the sequencer's: it always holds a message (a writer
        // gone without answering leaves the default, and an error).
        let (outcome, op) = returned;
        let mut message = op.into_message().unwrap_or_default();
        // A resend found by the store: answered with the first send, and
        // not pushed again (it was delivered when it was first stored).
        let mut sent_before = false;
        let result = match outcome {
            Ok(WriteOutcome::Appended { seq }) => {
                message.seq = seq;
                Ok(Accepted {
                    seq,
                    server_msg_id: message.server_msg_id,
                    sent_at_ms: message.sent_at_ms,
                })
            }
            Ok(WriteOutcome::Done) => Ok(Accepted {
                seq: message.seq,
                server_msg_id: message.server_msg_id,
                sent_at_ms: message.sent_at_ms,
            }),
            Ok(WriteOutcome::SentBefore(first)) if first.same_content => {
                sent_before = true;
                Ok(Accepted {
                    seq: first.seq,
                    server_msg_id: first.server_msg_id,
                    sent_at_ms: first.sent_at_ms,
                })
            }
            Ok(WriteOutcome::SentBefore(_)) => Err(reused_id(message.client_message_id)),
            Ok(other) => {
                tracing::error!(?other, conv = %message.conversation_id, seq = message.seq,
                    "store already held this seq: sequencer out of step, reloading");
                Err(pb::Error::new(
                    ErrorCode::Internal,
                    "sequencing conflict, retry",
                ))
            }
            Err(err) => Err(pool_error(err)),
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
        let frame = encode_frame(&Envelope::new(0, Body::PushMessage(*message)));
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

    /// Starts the loads and Redis rounds the sequencer asked for. A first
    /// send between two users needs no reader thread and no task: the
    /// store knows from memory that there is nothing to read, and the
    /// head goes back to the sequencer here, now that it is not borrowed
    /// (with ten contacts per user, four sends in ten opened a
    /// conversation in the 1:1 benchmark's measured seconds).
    fn spawn_deferred(self) {
        for deferred in self.deferred {
            let core = self.core.clone();
            match deferred {
                Deferred::Load(conv) => match core.empty_head_in_memory(conv) {
                    Some(head) => core.conversation_loaded(conv, Ok(head)),
                    None => {
                        glommio::spawn_local(async move { core.load_conversation(conv).await })
                            .detach();
                    }
                },
                Deferred::Allocate(conv) => {
                    glommio::spawn_local(async move { core.allocate_seqs(conv).await }).detach();
                }
            }
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
        writer
            .try_submit_returning(write.op, &core.committed)
            .map_err(|refused| pool_error(refused.error))?;
        let pending = PendingCommit {
            ticket: write.ticket,
            conv: write.conv,
            origin_conn: write.origin_conn,
            recipients: write.recipients,
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

/// How long cluster mode waits for the store to say whether a send Redis
/// did not remember is an old resend.
const STORE_DEDUPE_WAIT: Duration = Duration::from_millis(500);
