//! The conversation sequencer, without I/O: the state a conversation's
//! owner core keeps (last seq, the window of recent sends, block flag,
//! group roster, sends waiting for a load) and every decision about a
//! send — answer a resend from the window, refuse it, or stage its write —
//! as a state machine. Events come in as method calls (`send`, `loaded`,
//! `committed`, `allocated`, `forget`, `set_blocked`); what must happen
//! outside goes to an [`Effects`] (read a conversation's head, write a
//! message, ask Redis for seqs, answer a sender). `core` carries the
//! effects out over the store, Redis and the mesh; the simulation test in
//! this module carries them out on a fake store with seeded interleavings.
//!
//! Rules it keeps: a conversation's sends are staged in arrival order; a
//! resend (same sender and client id) within the window gets the first
//! send's answer and no new write (one still in flight: it waits for the
//! same answer); the same id with another payload is refused; every send
//! is answered exactly once; a write the store failed drops the
//! conversation's state, so the next send starts from what the store
//! holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_protocol::{ConversationId, ErrorCode};
use ourchat_storage::redis::{SeqGrant, SeqRequest};
use ourchat_storage::slotted::{Place, Slotted};
use ourchat_storage::{fingerprint_of, ConversationHead, RecentSend as StoredSend, WriteOp};

use crate::group_state::{self, GroupCommand, GroupState};
use recent::{RecentSend, RecentWindow};
use tickets::Tickets;

/// A send's answer: where it was stored, or why not.
pub type SendResult = Result<Accepted, pb::Error>;

/// What a sender is told about an accepted send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The conversation's seq.
    pub seq: i64,
    /// Snowflake id.
    pub server_msg_id: i64,
    /// Server time.
    pub sent_at_ms: i64,
}

/// Names one staged write, from its effect to its commit.
pub(crate) type Ticket = u64;

/// A send to sequence; `R` answers it (a oneshot in the node, an id in
/// the simulation).
pub(crate) struct Job<R> {
    /// `message.conversation_id`, parsed by whoever made the message.
    pub(crate) conv: ConversationId,
    /// Boxed from the start: the same box goes on to the store's queue
    /// and comes back to be pushed.
    pub(crate) message: Box<ChatMessage>,
    /// The sending connection (not pushed its own message).
    pub(crate) origin_conn: u64,
    /// A group change this event carries.
    pub(crate) command: Option<GroupCommand>,
    pub(crate) reply: R,
}

/// Who a committed message is pushed to.
pub(crate) enum Recipients {
    /// Both sides of a 1:1 conversation.
    Direct { receiver: i64, sender: i64 },
    /// Every member of a group (as of the message's seq).
    Group(Rc<[i64]>),
}

/// A staged message's write.
pub(crate) struct Write {
    pub(crate) ticket: Ticket,
    /// What the store is asked to do: it holds the message, pushed once
    /// it commits ([`WriteOp::message`]).
    pub(crate) op: WriteOp,
    pub(crate) conv: ConversationId,
    pub(crate) origin_conn: u64,
    pub(crate) recipients: Recipients,
}

/// Who waits for one write: its sender, and any resend of it meanwhile
/// (rare: held inline, no allocation per send).
type Waiters<R> = smallvec::SmallVec<[R; 1]>;

/// A write in flight: who waits for it, and where its conversation's
/// state was when it was staged.
struct InFlight<R> {
    waiters: Waiters<R>,
    place: Place,
}

/// Cluster mode: seqs to ask Redis for, one per staged send in order.
pub(crate) struct Allocation {
    /// The conversation's last seq known here (Redis never goes below).
    pub(crate) floor: i64,
    pub(crate) requests: Vec<SeqRequest>,
}

/// What the sequencer needs done outside itself.
pub(crate) trait Effects<R> {
    /// Read the conversation's head from the store, then call
    /// [`Sequencer::loaded`].
    fn load(&mut self, conv: ConversationId);
    /// Answer a send.
    fn answer(&mut self, reply: R, result: SendResult);
    /// Queue a write; once the store answers, call
    /// [`Sequencer::committed`] with its ticket, in the order written. An
    /// error: the write was not queued (the queue is full or gone).
    fn write(&mut self, write: Write) -> Result<(), pb::Error>;
    /// Cluster mode: start asking Redis for this conversation's seqs
    /// ([`Sequencer::take_allocation`], then [`Sequencer::allocated`],
    /// until nothing is left to ask for).
    fn allocate(&mut self, conv: ConversationId);
    /// A new snowflake id.
    fn next_id(&mut self) -> i64;
    /// Server time, in ms.
    fn now_ms(&mut self) -> i64;
    /// A sender over its budget (cluster mode: Redis says so): the error
    /// it is answered with.
    fn over_budget(&mut self) -> pb::Error;
}

/// Limits the sequencer works within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Recent sends kept per conversation for dedupe.
    pub(crate) window: usize,
    /// Conversations kept in memory (idle ones are dropped past it).
    pub(crate) max_conversations: usize,
    /// Members a group may have.
    pub(crate) max_group_members: usize,
    /// Seqs come from Redis (cluster mode), not from the store.
    pub(crate) clustered: bool,
}

/// Every conversation this core sequences.
pub(crate) struct Sequencer<R> {
    /// Indexed in shards: a table of 200,000 with conversations coming and
    /// going rebuilds itself every few tens of thousands of changes, which
    /// in one piece held the core 80–127 ms. A write carries its
    /// conversation's place to its commit.
    convs: Slotted<ConversationId, Slot<R>>,
    /// Block changes that arrived while their conversation was loading.
    block_overrides: HashMap<ConversationId, bool>,
    /// Conversations another node changed while they were loading: the
    /// load may have read the store before the change, so it runs again.
    stale_loads: HashSet<ConversationId>,
    /// Answers owed per write in flight (apart from the conversation's
    /// state, which a failure may drop while writes are in flight).
    waiting: Tickets<InFlight<R>>,
    limits: Limits,
    /// Conversations in the order they were first taken in, oldest first:
    /// where eviction looks. An id whose state is gone (dropped, or taken
    /// in again later) is skipped when it comes up.
    arrivals: VecDeque<ConversationId>,
}

/// Conversations a new one may look at to make room: eviction is spread
/// over the sends that need it instead of done in one pass over the
/// table (at 200,000 conversations such a pass held the core 14–18 ms).
const EVICTION_LOOKS: usize = 8;

enum Slot<R> {
    /// Head being read from the store; sends wait here in order.
    Loading(Vec<Job<R>>),
    Ready(ConvState<R>),
}

/// A checked send waiting for its seq.
struct Staged<R> {
    message: Box<ChatMessage>,
    /// Of the message's payload, to tell a resend from a reused id.
    fingerprint: u64,
    origin_conn: u64,
    recipients: Recipients,
    change: Option<ourchat_storage::GroupChange>,
    /// The group as it was before this send's change (to undo it).
    before_change: Option<Option<GroupState>>,
    reply: R,
}

struct ConvState<R> {
    last_seq: i64,
    /// Cluster mode: checked sends waiting for Redis to give them seqs.
    awaiting: Vec<Staged<R>>,
    /// Cluster mode: the sends Redis is being asked about, with the ids
    /// and times minted for them.
    asking: Vec<(Staged<R>, Accepted)>,
    /// Cluster mode: a seq request for this conversation is in flight.
    allocating: bool,
    recent: RecentWindow,
    /// One side blocks the other: new sends are refused.
    blocked: bool,
    /// A group conversation's membership (`None`: not a group, or no such
    /// group yet).
    group: Option<GroupState>,
    /// Another node changed who may send here while sends were in flight:
    /// once they are answered, this state is dropped and read again.
    stale: bool,
    /// Sends that arrived while stale, for the reloaded state, in order.
    held: Vec<Job<R>>,
    /// A send came since eviction last looked at it: it gets another
    /// round before it can be dropped.
    sent_lately: bool,
}

/// The answer to a send whose sequencing was cut short (its conversation's
/// state was dropped, or Redis's answer did not fit): retry.
fn interrupted() -> pb::Error {
    pb::Error::new(ErrorCode::Internal, "sequencing interrupted, retry")
}

/// A send whose client id its sender already used for another payload in
/// this conversation: not retryable, the client must pick a new id.
pub(crate) fn reused_id(client_message_id: i64) -> pb::Error {
    pb::Error::new(
        ErrorCode::Conflict,
        format!(
            "client_message_id {client_message_id} already names another message of yours \
             in this conversation: give a new message a new id"
        ),
    )
}

impl<R> Sequencer<R> {
    /// No conversation loaded.
    pub(crate) fn new(limits: Limits) -> Self {
        Sequencer {
            convs: Slotted::default(),
            block_overrides: HashMap::new(),
            stale_loads: HashSet::new(),
            waiting: Tickets::starting_at(1),
            limits,
            arrivals: VecDeque::new(),
        }
    }

    /// A send for one of this core's conversations.
    pub(crate) fn send(&mut self, job: Job<R>, out: &mut impl Effects<R>) {
        let conv = job.conv;
        debug_assert_eq!(job.message.conversation_id, conv.to_string());
        match self.convs.get_placed_mut(&conv) {
            Some((_, Slot::Ready(state))) if state.stale => {
                state.held.push(job);
                // Normally the last in-flight answer reloads it; if none is
                // left, nothing else would.
                self.reload_if_stale(conv, out);
            }
            Some((place, Slot::Ready(state))) => {
                state.sent_lately = true;
                self.assign(conv, place, job, out)
            }
            Some((_, Slot::Loading(queue))) => queue.push(job),
            None => {
                self.make_room();
                self.convs.insert(conv, Slot::Loading(vec![job]));
                self.arrivals.push_back(conv);
                out.load(conv);
            }
        }
    }

    /// A conversation's head, read from the store (or why not).
    pub(crate) fn loaded(
        &mut self,
        conv: ConversationId,
        head: Result<ConversationHead, pb::Error>,
        out: &mut impl Effects<R>,
    ) {
        let queued = match self.convs.remove(&conv) {
            Some(Slot::Loading(queued)) => queued,
            // Only the loader replaces a Loading slot.
            Some(other) => {
                self.convs.insert(conv, other);
                return;
            }
            None => return,
        };
        if self.stale_loads.remove(&conv) {
            self.convs.insert(conv, Slot::Loading(queued));
            return out.load(conv);
        }
        match head {
            Ok(head) => {
                let mut state = ConvState::from_head(head);
                if let Some(blocked) = self.block_overrides.remove(&conv) {
                    state.blocked = blocked;
                }
                let place = self.convs.insert(conv, Slot::Ready(state));
                for job in queued {
                    self.assign(conv, place, job, out);
                }
            }
            Err(err) => {
                for job in queued {
                    out.answer(job.reply, Err(err.clone()));
                }
            }
        }
    }

    /// The store answered write `ticket` (of `conv`, `None` when its id
    /// does not parse) with `result`; `unstored_change`: it carried a
    /// group change the store did not take (a resend), applied here in
    /// memory. Answers every sender waiting on it.
    pub(crate) fn committed(
        &mut self,
        ticket: Ticket,
        conv: Option<ConversationId>,
        result: &SendResult,
        unstored_change: bool,
        out: &mut impl Effects<R>,
    ) {
        let (replies, place) = match self.waiting.take(ticket) {
            Some(InFlight { waiters, place }) => (waiters, Some(place)),
            None => (Waiters::new(), None),
        };
        if let Some(conv) = conv {
            let slot = match place {
                Some(place) => self.convs.get_at_mut(place, &conv),
                None => self.convs.get_mut(&conv),
            };
            match (result, slot) {
                (Ok(accepted), Some(Slot::Ready(state))) if !unstored_change => {
                    state.mark_committed(ticket, *accepted);
                    if state.stale {
                        self.reload_if_stale(conv, out);
                    }
                }
                // The seq may be half-known to the store: start over from
                // what it holds on the next send. A change applied here but
                // not stored: read the group again.
                (_, Some(Slot::Ready(_))) => self.drop_state(conv, out),
                _ => self.reload_if_stale(conv, out),
            }
        }
        for reply in replies {
            out.answer(reply, result.clone());
        }
    }

    /// Forgets a conversation's state: sends staged for Redis are answered
    /// (retry), held ones sequenced again (they load it afresh).
    fn drop_state(&mut self, conv: ConversationId, out: &mut impl Effects<R>) {
        let Some(Slot::Ready(state)) = self.convs.remove(&conv) else {
            return;
        };
        let error = interrupted();
        let staged = state.asking.into_iter().map(|(staged, _)| staged);
        for staged in staged.chain(state.awaiting) {
            out.answer(staged.reply, Err(error.clone()));
        }
        for job in state.held {
            self.send(job, out);
        }
    }

    /// Cluster mode: the sends to ask Redis about now (every staged one,
    /// in order), or `None` when there are none left (allocation stops).
    pub(crate) fn take_allocation(
        &mut self,
        conv: ConversationId,
        out: &mut impl Effects<R>,
    ) -> Option<Allocation> {
        let Some(Slot::Ready(state)) = self.convs.get_mut(&conv) else {
            return None;
        };
        if state.awaiting.is_empty() {
            state.allocating = false;
            self.reload_if_stale(conv, out);
            return None;
        }
        let batch = std::mem::take(&mut state.awaiting);
        let mut requests = Vec::with_capacity(batch.len());
        for staged in batch {
            let accepted = Accepted {
                seq: 0,
                server_msg_id: out.next_id(),
                sent_at_ms: out.now_ms(),
            };
            requests.push(SeqRequest {
                sender_id: staged.message.sender_id,
                client_message_id: staged.message.client_message_id,
                server_msg_id: accepted.server_msg_id,
                sent_at_ms: accepted.sent_at_ms,
                fingerprint: staged.fingerprint,
                // Chat sends also draw on the sender's budget shared by
                // every node (this core's bucket knows this core only).
                budgeted: staged.change.is_none(),
            });
            state.asking.push((staged, accepted));
        }
        Some(Allocation {
            floor: state.last_seq,
            requests,
        })
    }

    /// Cluster mode: Redis's answer for the sends of the last
    /// [`Sequencer::take_allocation`], one grant each (or why none); `in_store`:
    /// those Redis took for new that the store already holds (a resend
    /// older than Redis's window), by (sender, client id).
    pub(crate) fn allocated(
        &mut self,
        conv: ConversationId,
        grants: Result<Vec<SeqGrant>, pb::Error>,
        in_store: &HashMap<(i64, i64), StoredSend>,
        out: &mut impl Effects<R>,
    ) {
        let (place, state) = match self.convs.get_placed_mut(&conv) {
            Some((place, Slot::Ready(state))) => (place, state),
            _ => return,
        };
        let batch = std::mem::take(&mut state.asking);
        let grants = match grants {
            Ok(grants) if grants.len() == batch.len() => grants,
            outcome => {
                let error = match outcome {
                    Err(error) => error,
                    Ok(_) => interrupted(),
                };
                tracing::warn!(conv = %conv, code = error.code, "seq allocation failed");
                // Undo the queued group changes, newest first.
                for (staged, _) in batch.iter().rev() {
                    if let Some(group) = &staged.before_change {
                        state.group = group.clone();
                    }
                }
                for (staged, _) in batch {
                    out.answer(staged.reply, Err(error.clone()));
                }
                return;
            }
        };
        for ((staged, minted), grant) in batch.into_iter().zip(grants) {
            // A resend is written again under its first seq: if its first
            // write never reached Kafka this one does, and if it did, MySQL
            // keeps one and clients drop the repeated push by seq.
            let accepted = match grant {
                SeqGrant::Limited => {
                    let error = out.over_budget();
                    out.answer(staged.reply, Err(error));
                    continue;
                }
                SeqGrant::New { seq } => {
                    let message = &staged.message;
                    let key = (message.sender_id, message.client_message_id);
                    if let Some(first) = in_store.get(&key) {
                        // Older than Redis's window: answered from the
                        // store; the seq Redis gave stays unused.
                        let answer = match first.fingerprint == staged.fingerprint {
                            true => Ok(Accepted {
                                seq: first.seq,
                                server_msg_id: first.server_msg_id,
                                sent_at_ms: first.sent_at_ms,
                            }),
                            false => Err(reused_id(message.client_message_id)),
                        };
                        out.answer(staged.reply, answer);
                        continue;
                    }
                    Accepted { seq, ..minted }
                }
                SeqGrant::Resend {
                    fingerprint: Some(first),
                    ..
                } if first != staged.fingerprint => {
                    let reused = reused_id(staged.message.client_message_id);
                    out.answer(staged.reply, Err(reused));
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
            self.submit(conv, place, staged, accepted, out);
        }
    }

    /// One side of a 1:1 conversation blocked (or unblocked) the other.
    pub(crate) fn set_blocked(&mut self, conv: ConversationId, blocked: bool) {
        match self.convs.get_mut(&conv) {
            Some(Slot::Ready(state)) => state.blocked = blocked,
            // The load may have read the store before the change
            // committed: apply it when the load lands.
            Some(Slot::Loading(_)) => {
                self.block_overrides.insert(conv, blocked);
            }
            None => {}
        }
    }

    /// Another node changed the conversation: drop what is known of it.
    pub(crate) fn forget(&mut self, conv: ConversationId) {
        match self.convs.get_mut(&conv) {
            // In-flight sends hold on to the state: drop it once they are
            // answered (`reload_if_stale`).
            Some(Slot::Ready(state)) if state.has_pending(&self.waiting) => state.stale = true,
            Some(Slot::Ready(_)) => {
                self.convs.remove(&conv);
            }
            Some(Slot::Loading(_)) => {
                self.stale_loads.insert(conv);
            }
            None => {}
        }
    }

    /// The members of a loaded group conversation.
    pub(crate) fn members(&self, conv: &ConversationId) -> Option<Rc<[i64]>> {
        match self.convs.get(conv) {
            Some(Slot::Ready(state)) => state.group.as_ref().map(GroupState::members),
            _ => None,
        }
    }

    /// Gives `job` the conversation's next seq and queues its write, or
    /// answers it from the recent-sends window when it is a resend.
    /// `place`: where the conversation's state was last seen.
    fn assign(
        &mut self,
        conv: ConversationId,
        place: Place,
        job: Job<R>,
        out: &mut impl Effects<R>,
    ) {
        let Some(Slot::Ready(state)) = self.convs.get_at_mut(place, &conv) else {
            return self.send(job, out);
        };
        let Job {
            mut message,
            origin_conn,
            command,
            reply,
            ..
        } = job;
        let fingerprint = fingerprint_of(&message);
        let resend = state
            .recent
            .find(message.sender_id, message.client_message_id);
        if let Some(previous) = resend {
            if previous.fingerprint != fingerprint {
                return out.answer(reply, Err(reused_id(message.client_message_id)));
            }
            match previous.ticket.and_then(|t| self.waiting.get_mut(t)) {
                Some(in_flight) => in_flight.waiters.push(reply),
                None => out.answer(reply, Ok(previous.accepted)),
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
                    let max = self.limits.max_group_members;
                    group_state::apply(&mut state.group, message.sender_id, command, max).map(
                        |applied| {
                            message.group_event = Some(Box::new(applied.event));
                            change = Some(applied.change);
                            applied.recipients
                        },
                    )
                }
            };
            match checked {
                Ok(members) => recipients = Recipients::Group(members),
                Err(error) => return out.answer(reply, Err(error)),
            }
        } else if state.blocked {
            let error = pb::Error::new(ErrorCode::Forbidden, "you cannot message this user");
            return out.answer(reply, Err(error));
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
        if self.limits.clustered {
            // Seqs come from Redis: queue, and keep one request per
            // conversation in flight (it takes everything queued so far).
            state.awaiting.push(staged);
            if !state.allocating {
                state.allocating = true;
                out.allocate(conv);
            }
            return;
        }
        // Seq 0: the store gives the seq when it writes the message, after
        // checking its unique index for this (sender, client id), so a
        // resend older than the window is answered with its first seq and
        // takes none (no gap).
        let accepted = Accepted {
            seq: 0,
            server_msg_id: out.next_id(),
            sent_at_ms: out.now_ms(),
        };
        self.submit(conv, place, staged, accepted, out);
    }

    /// Queues a sequenced message's write; its sender's answer waits for
    /// the commit. `place`: where the conversation's state was last seen.
    fn submit(
        &mut self,
        conv: ConversationId,
        place: Place,
        staged: Staged<R>,
        accepted: Accepted,
        out: &mut impl Effects<R>,
    ) {
        let Some(Slot::Ready(state)) = self.convs.get_at_mut(place, &conv) else {
            let error = interrupted();
            return out.answer(staged.reply, Err(error));
        };
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
        let (sender_id, client_message_id) = (message.sender_id, message.client_message_id);
        let op = match change {
            Some(change) => WriteOp::GroupChange {
                event: message,
                change,
            },
            None => WriteOp::AppendMessage(message),
        };
        let ticket = self.waiting.next();
        let written = out.write(Write {
            ticket,
            op,
            conv,
            origin_conn,
            recipients,
        });
        if let Err(error) = written {
            // The seq was not taken: the next send reuses it.
            if let Some(group) = before_change {
                state.group = group;
            }
            return out.answer(reply, Err(error));
        }
        self.waiting.push(InFlight {
            waiters: smallvec::smallvec![reply],
            place,
        });
        state.last_seq = state.last_seq.max(accepted.seq);
        state.recent.push(RecentSend {
            sender_id,
            client_message_id,
            fingerprint,
            accepted,
            ticket: Some(ticket),
        });
        state.recent.trim(self.limits.window);
    }

    /// Drops a conversation's state that another node changed, once its
    /// in-flight sends are answered, and reads it again for the sends held
    /// meanwhile.
    fn reload_if_stale(&mut self, conv: ConversationId, out: &mut impl Effects<R>) {
        let settled = matches!(
            self.convs.get(&conv),
            Some(Slot::Ready(state)) if state.stale && !state.in_flight(&self.waiting)
        );
        if !settled {
            return;
        }
        let Some(Slot::Ready(state)) = self.convs.remove(&conv) else {
            return;
        };
        if !state.held.is_empty() {
            self.convs.insert(conv, Slot::Loading(state.held));
            out.load(conv);
        }
    }

    /// Keeps the number of conversations in memory bounded: at the cap, a
    /// new one drops the oldest idle ones (they reload from the store on
    /// their next send), looking at no more than [`EVICTION_LOOKS`]. Busy
    /// ones, and ones sent to since last looked at (a second chance, as
    /// in CLOCK), go to the back. Should every one it looks at be spared,
    /// the table stays over the cap until later sends make room.
    fn make_room(&mut self) {
        let max = self.limits.max_conversations;
        for _ in 0..EVICTION_LOOKS {
            if self.convs.len() < max {
                break;
            }
            let Some(conv) = self.arrivals.pop_front() else {
                break;
            };
            let evict = match self.convs.get_mut(&conv) {
                Some(Slot::Ready(state)) if state.sent_lately => {
                    state.sent_lately = false;
                    false
                }
                Some(Slot::Ready(state)) => !state.has_pending(&self.waiting),
                Some(Slot::Loading(_)) => false,
                None => continue,
            };
            if evict {
                self.convs.remove(&conv);
            } else {
                self.arrivals.push_back(conv);
            }
        }
        // Ids of states dropped and taken in again pile up only through
        // failures and other nodes' changes; past twice the table, keep
        // one per conversation held.
        if self.arrivals.len() > 2 * max.max(self.convs.len()) {
            let mut kept = HashSet::with_capacity(self.convs.len());
            let convs = &self.convs;
            self.arrivals
                .retain(|conv| convs.contains_key(conv) && kept.insert(*conv));
        }
    }

    /// Writes in flight (for tests and metrics).
    #[cfg(test)]
    fn writes_in_flight(&self) -> usize {
        self.waiting.len()
    }
}

impl<R> ConvState<R> {
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
                ticket: None,
            })
            .collect();
        ConvState {
            last_seq: head.last_seq,
            awaiting: Vec::new(),
            asking: Vec::new(),
            allocating: false,
            recent,
            blocked: head.blocked,
            group: head.group.map(GroupState::from_roster),
            stale: false,
            held: Vec::new(),
            sent_lately: false,
        }
    }

    /// Records the stored seq (or the first send's, for a resend) of an
    /// in-flight send, so later resends are answered from the window.
    /// Write `ticket` is stored. Found by its ticket, not by its sender and
    /// client id: after a failure dropped the state, a send reusing the id
    /// may be staged again (from a head read before this write landed),
    /// and must keep its own answer to come.
    fn mark_committed(&mut self, ticket: Ticket, accepted: Accepted) {
        self.last_seq = self.last_seq.max(accepted.seq);
        // In flight means among the newest.
        if let Some(entry) = self.recent.in_flight_mut(ticket) {
            entry.accepted = accepted;
            entry.ticket = None;
        }
    }

    fn has_pending(&self, waiting: &Tickets<InFlight<R>>) -> bool {
        self.in_flight(waiting) || !self.held.is_empty()
    }

    /// Sends checked against this state and not yet answered.
    fn in_flight(&self, waiting: &Tickets<InFlight<R>>) -> bool {
        self.allocating
            || !self.awaiting.is_empty()
            || self.recent.any_in_flight(|t| waiting.contains(t))
    }
}

#[cfg(test)]
pub(crate) mod fake;
mod recent;
#[cfg(test)]
mod simulation;
mod tickets;
