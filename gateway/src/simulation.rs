//! Seeded simulation of a node's deciding parts together: the sequencer
//! of each conversation's owner core, the directory of each user's owner
//! core, and the fan-out plans between them, over two to four simulated
//! cores joined by FIFO queues (glommio's mesh keeps each pair's order),
//! one store with one writer, and each core's commit pump. Random
//! interleavings of logins (a device logging in again replaces its old
//! connection), logouts, new sends to another user or to the run's one
//! group (whose last user is not a member), resends (same payload or another),
//! mesh messages arriving, loads landing, writes committing or failing,
//! pumps running, and crashes of the node (each queued write may or may
//! not reach the disk; cores and connections start over). Each seed
//! drains everything, then checks: every send answered exactly once (at
//! most once if a crash cut it off), and an accepted one stored; one seq
//! per (conversation, sender, client id), never reused; each connection
//! got a conversation's messages in seq order, each at most once, and
//! never its own, and only a side's (a member's, in the group); and every
//! stored message reached every device of every side that was online from
//! before it was sent to the end, except the connection that sent it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_protocol::{ConversationId, ErrorCode};
use ourchat_storage::{GroupRole, GroupRoster, WriteOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::core::{conn_id_on, conversation_owner, core_of_conn, user_owner};
use crate::directory::Directory;
use crate::fanout::{self, Push};
use crate::sequencer::fake::{FakeStore, Recorder, ReplyId};
use crate::sequencer::{Job, Limits, SendResult, Sequencer, Write};

const LIMITS: Limits = Limits {
    window: 4,
    max_conversations: 3,
    max_group_members: 100,
    clustered: false,
};

/// The one group of every run: every user but the last is a member (so
/// one user's sends to it are refused).
const GROUP: i64 = 900;

fn group_members(users: i64) -> Vec<i64> {
    (1..users).collect()
}

/// Whether `user` is on the receiving side of `conv`.
fn side_of(conv: &ConversationId, user: i64, users: i64) -> bool {
    match conv {
        ConversationId::Group(_) => group_members(users).contains(&user),
        _ => conv.peer_of(user).is_some(),
    }
}

/// A committed message as pushed: enough to check order and origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Pushed {
    conv: ConversationId,
    seq: i64,
}

/// What travels between cores.
enum Msg {
    Sequence(Box<Job<ReplyId>>),
    Online {
        user: i64,
        device: u8,
        conn: u64,
    },
    Offline {
        user: i64,
        device: u8,
        conn: u64,
    },
    Deliver {
        users: Vec<i64>,
        skip: u64,
        message: Pushed,
    },
    Push {
        conns: Vec<u64>,
        message: Pushed,
    },
}

/// A client connection, on the core its id names.
struct Conn {
    user: i64,
    device: u8,
    /// Its Online has been carried out: it may send, pushes reach it.
    registered: bool,
    /// Logged out or replaced.
    closed: bool,
    /// Pushes received, in order.
    inbox: Vec<Pushed>,
}

/// A write's completion waiting on its core's commit pump.
struct Completion {
    write: Write,
    result: SendResult,
    /// The store already held it: answered with the first, not pushed.
    sent_before: bool,
}

/// One core's deciding parts and the effects they asked for.
struct Core {
    sequencer: Sequencer<ReplyId>,
    directory: Directory,
    effects: Recorder,
    pump: VecDeque<Completion>,
}

/// One send the simulation made.
struct Sent {
    conv: ConversationId,
    sender: i64,
    client_id: i64,
    content: String,
    /// Connections of both sides registered and open when it was sent.
    online_then: Vec<u64>,
    /// The world's clock when it was sent.
    sent_at: u64,
    /// Lost to a crash of the node: it may go unanswered.
    cut_off: bool,
}

struct World {
    cores: Vec<Core>,
    /// Mesh queues by (from, to).
    mesh: BTreeMap<(usize, usize), VecDeque<Msg>>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    store: FakeStore,
    /// (core, conversation) loads waiting for the store.
    loads: Vec<(usize, ConversationId)>,
    /// The writer's queue: one store, ops in queue order.
    writer: VecDeque<(usize, Write)>,
    answers: HashMap<ReplyId, Vec<SendResult>>,
    /// The first write of each stored message: its origin connection,
    /// and the clock when it was stored.
    origin: HashMap<Pushed, (u64, u64)>,
    sent: Vec<Sent>,
    /// Steps taken.
    clock: u64,
    /// Users `1..=users`.
    users: i64,
}

impl World {
    fn new(cores: usize, users: i64) -> World {
        let mut store = FakeStore::default();
        let members = group_members(users)
            .into_iter()
            .map(|user| match user {
                1 => (user, GroupRole::Owner),
                _ => (user, GroupRole::Member),
            })
            .collect();
        let roster = GroupRoster {
            owner_id: 1,
            dissolved: false,
            members,
        };
        store.groups.insert(GROUP, roster);
        World {
            cores: (0..cores)
                .map(|core| Core {
                    sequencer: Sequencer::new(LIMITS),
                    directory: Directory::default(),
                    effects: Recorder {
                        next_id: (core as i64) << 40,
                        ..Recorder::default()
                    },
                    pump: VecDeque::new(),
                })
                .collect(),
            mesh: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            store,
            loads: Vec::new(),
            writer: VecDeque::new(),
            answers: HashMap::new(),
            origin: HashMap::new(),
            sent: Vec::new(),
            clock: 0,
            users,
        }
    }

    fn route(&mut self, from: usize, to: usize, msg: Msg) {
        self.mesh.entry((from, to)).or_default().push_back(msg);
    }

    /// Moves what core `core`'s sequencer asked for out to the world.
    fn collect_effects(&mut self, core: usize) {
        let effects = &mut self.cores[core].effects;
        let loads: Vec<_> = effects.loads.drain(..).map(|conv| (core, conv)).collect();
        let writes: Vec<_> = effects
            .writes
            .drain(..)
            .map(|write| (core, write))
            .collect();
        let answers: Vec<_> = effects.answers.drain().collect();
        self.loads.extend(loads);
        self.writer.extend(writes);
        for (reply, results) in answers {
            self.answers.entry(reply).or_default().extend(results);
        }
    }

    fn login(&mut self, rng: &mut StdRng) {
        let user = rng.gen_range(1..=self.users);
        let device = rng.gen_range(0..2u8);
        let core = rng.gen_range(0..self.cores.len());
        let conn = conn_id_on(core, self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                user,
                device,
                registered: false,
                closed: false,
                inbox: Vec::new(),
            },
        );
        let owner = user_owner(user, self.cores.len());
        self.route(core, owner, Msg::Online { user, device, conn });
    }

    /// A logged-in connection still open, if any.
    fn pick_open(&self, rng: &mut StdRng) -> Option<u64> {
        let open: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.registered && !c.closed)
            .map(|(id, _)| *id)
            .collect();
        (!open.is_empty()).then(|| open[rng.gen_range(0..open.len())])
    }

    fn logout(&mut self, rng: &mut StdRng) {
        let Some(conn_id) = self.pick_open(rng) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        conn.closed = true;
        let (user, device) = (conn.user, conn.device);
        let owner = user_owner(user, self.cores.len());
        let offline = Msg::Offline {
            user,
            device,
            conn: conn_id,
        };
        self.route(core_of_conn(conn_id), owner, offline);
    }

    /// A new send from an open connection, or a resend of one of its
    /// user's earlier sends (now and then with another payload).
    fn send(&mut self, rng: &mut StdRng) {
        let users = self.users;
        let Some(conn_id) = self.pick_open(rng) else {
            return;
        };
        let sender = self.conns[&conn_id].user;
        let earlier: Vec<usize> = (0..self.sent.len())
            .filter(|&i| self.sent[i].sender == sender)
            .collect();
        let (conv, client_id, mut content) = match earlier.is_empty() || rng.gen_range(0..4) > 0 {
            true => {
                let mut peer = rng.gen_range(1..=users);
                if peer == sender {
                    peer = peer % users + 1;
                }
                let conv = match rng.gen_range(0..4) {
                    0 => ConversationId::Group(GROUP),
                    _ => match ConversationId::direct(sender, peer) {
                        Some(conv) => conv,
                        None => return,
                    },
                };
                let n = self.sent.len();
                (conv, n as i64 + 1, format!("m{n}"))
            }
            false => {
                let first = &self.sent[earlier[rng.gen_range(0..earlier.len())]];
                (first.conv, first.client_id, first.content.clone())
            }
        };
        if client_id as usize <= self.sent.len() && rng.gen_range(0..5) == 0 {
            content.push('!');
        }
        let receiver = conv.peer_of(sender).unwrap_or_default();
        let online_then = self
            .conns
            .iter()
            .filter(|(_, c)| c.registered && !c.closed && side_of(&conv, c.user, users))
            .map(|(id, _)| *id)
            .collect();
        let reply = self.sent.len();
        self.sent.push(Sent {
            conv,
            sender,
            client_id,
            content: content.clone(),
            online_then,
            sent_at: self.clock,
            cut_off: false,
        });
        let message = ChatMessage {
            conversation_id: conv.to_string(),
            sender_id: sender,
            receiver_id: receiver,
            group_id: match conv {
                ConversationId::Group(group_id) => group_id,
                _ => 0,
            },
            client_message_id: client_id,
            content,
            ..ChatMessage::default()
        };
        let job = Job {
            conv,
            message: Box::new(message),
            origin_conn: conn_id,
            command: None,
            reply,
        };
        let owner = conversation_owner(&conv, self.cores.len());
        self.route(core_of_conn(conn_id), owner, Msg::Sequence(Box::new(job)));
    }

    /// Core `to` handles the oldest message from `from`.
    fn deliver_mesh(&mut self, from: usize, to: usize) {
        let Some(msg) = self.mesh.get_mut(&(from, to)).and_then(VecDeque::pop_front) else {
            return;
        };
        let cores = self.cores.len();
        match msg {
            Msg::Sequence(job) => {
                let core = &mut self.cores[to];
                core.sequencer.send(*job, &mut core.effects);
                self.collect_effects(to);
            }
            Msg::Online { user, device, conn } => {
                let logged_in = self.cores[to]
                    .directory
                    .online(user, &device.to_string(), conn, 0);
                if let Some(conn) = self.conns.get_mut(&conn) {
                    conn.registered = true;
                }
                if let Some(old) = logged_in.replaced {
                    // Kicked: the old connection closes and says goodbye.
                    if let Some(old_conn) = self.conns.get_mut(&old) {
                        old_conn.closed = true;
                    }
                    let offline = Msg::Offline {
                        user,
                        device,
                        conn: old,
                    };
                    self.route(core_of_conn(old), to, offline);
                }
            }
            Msg::Offline { user, device, conn } => {
                self.cores[to]
                    .directory
                    .offline(user, &device.to_string(), conn, 0);
            }
            Msg::Deliver {
                users,
                skip,
                message,
            } => {
                let conns: Vec<u64> = self.cores[to].directory.connections(&users, skip).collect();
                for push in fanout::pushes_by_core(conns, cores, core_of_conn) {
                    let (core, conns) = match push {
                        Push::One { core, conn_id } => (core, vec![conn_id]),
                        Push::Many { core, conn_ids } => (core, conn_ids),
                    };
                    self.route(to, core, Msg::Push { conns, message });
                }
            }
            Msg::Push { conns, message } => {
                for conn_id in conns {
                    assert_eq!(core_of_conn(conn_id), to, "a push on another core");
                    // A closed connection is gone from its core.
                    if let Some(conn) = self.conns.get_mut(&conn_id).filter(|c| !c.closed) {
                        conn.inbox.push(message);
                    }
                }
            }
        }
    }

    /// A pending load lands (any of them, not in order).
    fn land_load(&mut self, rng: &mut StdRng) {
        if self.loads.is_empty() {
            return;
        }
        let (core, conv) = self.loads.swap_remove(rng.gen_range(0..self.loads.len()));
        let head = match rng.gen_range(0..15) {
            0 => Err(pb::Error::new(ErrorCode::StoreUnavailable, "store busy")),
            _ => Ok(self.store.head(conv, LIMITS.window)),
        };
        let owner = &mut self.cores[core];
        owner.sequencer.loaded(conv, head, &mut owner.effects);
        self.collect_effects(core);
    }

    /// The writer commits its oldest op, as the embedded store does: a
    /// (sender, client id) it holds is answered with the first send.
    fn commit_next(&mut self, fails: bool) {
        let Some((core, write)) = self.writer.pop_front() else {
            return;
        };
        let WriteOp::AppendMessage(message) = &write.op else {
            unreachable!("1:1 sends only")
        };
        let (result, sent_before) = match fails {
            true => (
                Err(pb::Error::new(ErrorCode::Internal, "disk failed")),
                false,
            ),
            false => self.store_append(message, write.origin_conn),
        };
        self.cores[core].pump.push_back(Completion {
            write,
            result,
            sent_before,
        });
    }

    /// The store takes a message; one it did not hold yet remembers its
    /// origin connection and when it was stored.
    fn store_append(&mut self, message: &ChatMessage, origin: u64) -> (SendResult, bool) {
        let (result, sent_before) = self.store.append(message);
        if let (Ok(accepted), false, Ok(conv)) =
            (&result, sent_before, message.conversation_id.parse())
        {
            let pushed = Pushed {
                conv,
                seq: accepted.seq,
            };
            self.origin.insert(pushed, (origin, self.clock));
        }
        (result, sent_before)
    }

    /// Core `core`'s commit pump takes its oldest completion: answers,
    /// then delivers what was newly stored, as `Core::finish_commit` does.
    fn pump(&mut self, core: usize) {
        let Some(Completion {
            write,
            result,
            sent_before,
        }) = self.cores[core].pump.pop_front()
        else {
            return;
        };
        let Write {
            ticket,
            conv,
            origin_conn,
            recipients,
            ..
        } = write;
        let conv = Some(conv);
        let owner = &mut self.cores[core];
        owner
            .sequencer
            .committed(ticket, conv, &result, false, &mut owner.effects);
        self.collect_effects(core);
        let (Ok(accepted), false, Some(conv)) = (result, sent_before, conv) else {
            return;
        };
        let pushed = Pushed {
            conv,
            seq: accepted.seq,
        };
        let cores = self.cores.len();
        for leg in fanout::deliveries(&recipients, origin_conn, cores, |u| user_owner(u, cores)) {
            let (to, users, skip) = match leg {
                fanout::Deliver::One {
                    core,
                    user_id,
                    skip_conn,
                } => (core, vec![user_id], skip_conn),
                fanout::Deliver::Many {
                    core,
                    user_ids,
                    skip_conn,
                } => (core, user_ids, skip_conn),
            };
            let deliver = Msg::Deliver {
                users,
                skip,
                message: pushed,
            };
            self.route(core, to, deliver);
        }
    }

    /// The node crashes and starts again: each queued write may or may
    /// not have reached the disk, every core starts empty, every
    /// connection is gone (its client logs in again later), and sends in
    /// flight may never be answered.
    fn crash(&mut self, rng: &mut StdRng) {
        while let Some((_, write)) = self.writer.pop_front() {
            if let (true, WriteOp::AppendMessage(message)) = (rng.gen_bool(0.5), &write.op) {
                let _ = self.store_append(message, write.origin_conn);
            }
        }
        self.loads.clear();
        self.mesh.clear();
        for core in &mut self.cores {
            *core = Core {
                sequencer: Sequencer::new(LIMITS),
                directory: Directory::default(),
                effects: Recorder {
                    next_id: core.effects.next_id,
                    ..Recorder::default()
                },
                pump: VecDeque::new(),
            };
        }
        for conn in self.conns.values_mut() {
            conn.closed = true;
        }
        for (i, sent) in self.sent.iter_mut().enumerate() {
            if !self.answers.contains_key(&i) {
                sent.cut_off = true;
            }
        }
    }

    /// Anything left to do.
    fn busy(&self) -> bool {
        self.mesh.values().any(|q| !q.is_empty())
            || !self.loads.is_empty()
            || !self.writer.is_empty()
            || self.cores.iter().any(|c| !c.pump.is_empty())
    }

    fn step(&mut self, rng: &mut StdRng, draining: bool) {
        self.clock += 1;
        let cores = self.cores.len();
        let roll = match draining {
            true => rng.gen_range(30..100),
            false => rng.gen_range(0..100),
        };
        match roll {
            0..=7 => self.login(rng),
            8..=11 => self.logout(rng),
            12..=29 => self.send(rng),
            30..=64 => {
                let busy: Vec<(usize, usize)> = self
                    .mesh
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(pair, _)| *pair)
                    .collect();
                if !busy.is_empty() {
                    let (from, to) = busy[rng.gen_range(0..busy.len())];
                    self.deliver_mesh(from, to);
                }
            }
            65..=74 => self.land_load(rng),
            75..=86 => self.commit_next(rng.gen_range(0..25) == 0),
            87 if !draining && rng.gen_range(0..4) == 0 => self.crash(rng),
            _ => self.pump(rng.gen_range(0..cores)),
        }
    }
}

/// Runs one seed; how many group messages it stored and pushed.
fn run(seed: u64) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cores = rng.gen_range(2..=4);
    let users = rng.gen_range(2..=5);
    let mut world = World::new(cores, users);
    for _ in 0..rng.gen_range(100..400) {
        world.step(&mut rng, false);
    }
    let mut rounds = 0;
    while world.busy() {
        world.step(&mut rng, true);
        rounds += 1;
        assert!(rounds < 100_000, "seed {seed}: the drain does not end");
    }
    check(seed, &world);
    let group = ConversationId::Group(GROUP);
    let pushed = world.conns.values().flat_map(|c| &c.inbox);
    (
        world.store.messages(&group).len(),
        pushed.filter(|p| p.conv == group).count(),
    )
}

fn check(seed: u64, world: &World) {
    // Every send answered exactly once (a crash may cut one off), an
    // accepted one stored; one seq per (conversation, sender, client id);
    // a reused id with another payload refused.
    let mut seq_of: HashMap<(ConversationId, i64, i64), (i64, &str)> = HashMap::new();
    for (i, sent) in world.sent.iter().enumerate() {
        let answers = world.answers.get(&i).map_or(&[][..], |a| &a[..]);
        match (answers, sent.cut_off) {
            ([_], _) | ([], true) => {}
            _ => panic!("seed {seed}: send {i} answered {answers:?}"),
        }
        let Some(Ok(accepted)) = answers.first() else {
            continue;
        };
        let key = (sent.conv, sent.sender, sent.client_id);
        match seq_of.get(&key) {
            Some((seq, content)) => {
                assert_eq!(*seq, accepted.seq, "seed {seed}: send {i} got a second seq");
                assert_eq!(
                    *content, sent.content,
                    "seed {seed}: send {i}: reused id taken"
                );
            }
            None => {
                seq_of.insert(key, (accepted.seq, &sent.content));
            }
        }
        let stored = &world.store.messages(&sent.conv)[accepted.seq as usize - 1];
        assert_eq!(
            (stored.sender, stored.client_id),
            (sent.sender, sent.client_id),
            "seed {seed}: send {i} answered with another message's seq"
        );
    }
    // Pushes: in seq order per conversation, at most once, never back to
    // the connection that sent them, only to the conversation's sides.
    let mut received: HashSet<(u64, Pushed)> = HashSet::new();
    for (conn_id, conn) in &world.conns {
        let mut last: HashMap<ConversationId, i64> = HashMap::new();
        for pushed in &conn.inbox {
            let previous = last.insert(pushed.conv, pushed.seq).unwrap_or(0);
            assert!(
                previous < pushed.seq,
                "seed {seed}: conn {conn_id} got seq {} after {previous}",
                pushed.seq
            );
            let origin = world.origin.get(pushed).map(|(origin, _)| origin);
            assert_ne!(origin, Some(conn_id), "seed {seed}: echoed");
            assert!(
                side_of(&pushed.conv, conn.user, world.users),
                "seed {seed}: outsider"
            );
            received.insert((*conn_id, *pushed));
        }
    }
    // Every stored message reached every device of both sides online
    // from before it was stored to the end (not the sending one): checked
    // from each send made before the store took it.
    for sent in &world.sent {
        let Some((seq, _)) = seq_of.get(&(sent.conv, sent.sender, sent.client_id)) else {
            continue;
        };
        let pushed = Pushed {
            conv: sent.conv,
            seq: *seq,
        };
        let Some(&(origin, stored_at)) = world.origin.get(&pushed) else {
            panic!("seed {seed}: {pushed:?} answered but never stored");
        };
        if sent.sent_at > stored_at {
            continue;
        }
        for conn_id in &sent.online_then {
            let conn = &world.conns[conn_id];
            if conn.closed || origin == *conn_id {
                continue;
            }
            assert!(
                received.contains(&(*conn_id, pushed)),
                "seed {seed}: conn {conn_id} (user {}) never got {pushed:?}",
                conn.user
            );
        }
    }
}

#[test]
fn sequencer_directory_and_fan_out_over_simulated_cores() {
    let seeds: u64 = std::env::var("OURCHAT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    let (mut stored, mut pushed) = (0, 0);
    for seed in 0..seeds {
        let (s, p) = run(seed);
        stored += s;
        pushed += p;
    }
    // The runs must exercise groups, not refuse them all.
    assert!(
        seeds < 100 || (stored > 100 && pushed > 100),
        "{stored} stored, {pushed} pushed"
    );
}
