//! One loadgen process: its share of the users on `threads` threads, each
//! a current-thread tokio runtime (thread-per-core, like the gateway). A
//! connection is one task with a few words of state; it logs in by token,
//! then, by phase: heartbeats (idle), sends on its own open-loop schedule
//! (p2p to contacts, group to its group), or drops and reconnects at the
//! signal (storm).
//!
//! Phases are broadcast on a watch channel: `Connect` → (parent says go)
//! `Go` → `Drain` (no new sends, keep reading) → `Exit`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use ourchat_client::TlsSettings;
use ourchat_protocol::codec::{encode, FrameDecoder};
use ourchat_protocol::pb;
use ourchat_protocol::{Body, Envelope};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::report::{new_histogram, Counters};

#[path = "mqtt.rs"]
mod mqtt;

/// What the connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    /// OurChat's framed protobuf, token login.
    Ourchat,
    /// MQTT 3.1.1 at QoS 1 (a broker such as Mosquitto, side by side).
    Mqtt,
}

/// What the connections do once everyone is logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Scenario {
    /// Stay logged in, heartbeating.
    Idle,
    /// Open-loop 1:1 sends at a fixed total rate to random online peers.
    P2p,
    /// Every connection drops and reconnects at once.
    Storm,
    /// Open-loop sends at a fixed total rate, each user to its group
    /// (consecutive users of the token file, `--group-size` per group).
    Group,
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Connecting and logging in.
    Connect,
    /// The measured phase, started at this instant.
    Go(Instant),
    /// No new sends; still reading.
    Drain,
    /// Close everything.
    Exit,
}

/// One user this process drives.
#[derive(Debug, Clone)]
pub struct Assigned {
    /// Index in the token file (seeds its random peer choice).
    pub index: usize,
    /// Where it connects.
    pub target: SocketAddr,
    /// Local address to bind, if any.
    pub source: Option<IpAddr>,
    /// Token for login.
    pub token: String,
}

/// Everything a process needs to run.
pub struct ProcPlan {
    /// The scenario.
    pub scenario: Scenario,
    /// What the connections speak.
    pub protocol: Protocol,
    /// Every user id of the run (peers for p2p).
    pub all_user_ids: Arc<Vec<i64>>,
    /// Connections opened per second by this process.
    pub ramp_per_sec: f64,
    /// Seconds between one connection's sends (p2p).
    pub send_period: Duration,
    /// Contacts each user sends to (p2p): the next `peers` users of the
    /// token file, wrapping. 0: any user at random.
    pub peers: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Answer each push with a DeliveryAck.
    pub delivery_acks: bool,
    /// Group scenario: members per group and the group ids, in token-file
    /// order (user `i` is in group `i / size`).
    pub groups: Option<GroupPlan>,
    /// Connect over TLS with these settings.
    pub tls: Option<TlsSettings>,
    /// Speak the protocol over WebSocket (the targets are `server.ws_listen`
    /// listeners; the upgrade at `/ws`).
    pub ws: bool,
}

/// The groups of a group run.
pub struct GroupPlan {
    /// Members per group (the last may have fewer).
    pub size: usize,
    /// Group ids, in order.
    pub ids: Vec<i64>,
    /// Users in the run.
    pub users: usize,
}

impl GroupPlan {
    /// User `index`'s group and how many other members it has.
    pub fn of(&self, index: usize) -> Option<(i64, u64)> {
        let group = index / self.size.max(1);
        let id = *self.ids.get(group)?;
        let members = self.size.min(self.users - group * self.size);
        Some((id, members.saturating_sub(1) as u64))
    }
}

/// Per-thread latency histograms; the main thread reads them for progress.
pub struct Histograms {
    /// Send → ack.
    pub ack: Histogram<u64>,
    /// Send → deliver.
    pub deliver: Histogram<u64>,
    /// Connect + login.
    pub login: Histogram<u64>,
}

impl Histograms {
    fn new() -> Self {
        Histograms {
            ack: new_histogram(),
            deliver: new_histogram(),
            login: new_histogram(),
        }
    }
}

/// Shared by every thread of the process.
pub struct Shared {
    /// Live counters.
    pub counters: Counters,
    /// Connections that finished their first login attempt (ok or not).
    pub attempted: AtomicUsize,
    /// Phase broadcast.
    pub phase: watch::Receiver<Phase>,
}

/// Nanoseconds since the Unix epoch: comparable across processes on one
/// machine, which the send → deliver latency needs.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs one thread's connections until the phase is `Exit`.
pub fn run_thread(
    plan: Arc<ProcPlan>,
    shared: Arc<Shared>,
    users: Vec<Assigned>,
    histograms: Arc<Mutex<Histograms>>,
    ramp_per_sec: f64,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut tasks = Vec::with_capacity(users.len());
        let gap = Duration::from_secs_f64(1.0 / ramp_per_sec.max(1.0));
        let mut next = Instant::now();
        for user in users {
            tokio::time::sleep_until(next).await;
            next += gap;
            let conn = Conn {
                plan: plan.clone(),
                shared: shared.clone(),
                histograms: histograms.clone(),
                user,
            };
            tasks.push(tokio::task::spawn_local(conn.run()));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    Ok(())
}

struct Conn {
    plan: Arc<ProcPlan>,
    shared: Arc<Shared>,
    histograms: Arc<Mutex<Histograms>>,
    user: Assigned,
}

/// A connection's byte stream: a TCP socket, or TLS over one.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Reads and writes of one logged-in socket.
struct Session {
    stream: Box<dyn Io>,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Conn {
    async fn run(self) {
        let counters = &self.shared.counters;
        let started = Instant::now();
        let mut session = match self.connect().await {
            Some(session) => session,
            None => {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                self.shared.attempted.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        // A storm's figure is its reconnects, timed from the drop; the
        // first logins, paced by the ramp, would be half the sample.
        self.record_login((self.plan.scenario != Scenario::Storm).then_some(started));
        self.shared.attempted.fetch_add(1, Ordering::Relaxed);
        counters.online.fetch_add(1, Ordering::Relaxed);
        loop {
            let next = match self.plan.protocol {
                Protocol::Ourchat => self.drive(&mut session).await,
                Protocol::Mqtt => self.mqtt_drive(&mut session).await,
            };
            match next {
                Next::Exit => break,
                Next::Closed => {
                    counters.kicked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Next::Reconnect(go) => {
                    drop(session);
                    counters.online.fetch_sub(1, Ordering::Relaxed);
                    match self.connect().await {
                        Some(again) => {
                            session = again;
                            self.record_login(Some(go));
                            counters.online.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        }
        counters.online.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a login, and times it from `since` when given.
    fn record_login(&self, since: Option<Instant>) {
        self.shared.counters.logins.fetch_add(1, Ordering::Relaxed);
        let Some(since) = since else { return };
        if let Ok(mut h) = self.histograms.lock() {
            let _ = h.login.record(since.elapsed().as_micros().max(1) as u64);
        }
    }

    /// A logged-in (OurChat) or connected and subscribed (MQTT) session.
    async fn connect(&self) -> Option<Session> {
        match self.plan.protocol {
            Protocol::Ourchat => self.connect_and_login().await,
            Protocol::Mqtt => self.mqtt_connect().await,
        }
    }

    /// A TCP (or TLS) connection to the target, nothing said yet.
    async fn open_stream(&self) -> Option<Session> {
        let socket = match self.user.target {
            SocketAddr::V4(_) => TcpSocket::new_v4().ok()?,
            SocketAddr::V6(_) => TcpSocket::new_v6().ok()?,
        };
        if let Some(source) = self.user.source {
            socket.bind(SocketAddr::new(source, 0)).ok()?;
        }
        let connect = socket.connect(self.user.target);
        let stream = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .ok()?
            .ok()?;
        let _ = stream.set_nodelay(true);
        if self.plan.ws {
            let url = format!("ws://{}/ws", self.user.target);
            let config = ourchat_protocol::ws::lean_config(1 << 20);
            let upgrade =
                async_tungstenite::tokio::client_async_with_config(url, stream, Some(config));
            let (ws, _) = tokio::time::timeout(Duration::from_secs(10), upgrade)
                .await
                .ok()?
                .ok()?;
            let bytes = ourchat_protocol::ws::WsBytes::new(ws, 1 << 20);
            return Some(Session {
                stream: Box::new(async_tungstenite::tokio::TokioAdapter::new(bytes)),
                buf: BytesMut::new(),
                decoder: FrameDecoder::new(1 << 20),
            });
        }
        let stream: Box<dyn Io> = match &self.plan.tls {
            Some(tls) => Box::new(
                tokio::time::timeout(Duration::from_secs(10), tls.wrap(stream))
                    .await
                    .ok()?
                    .ok()?,
            ),
            None => Box::new(stream),
        };
        Some(Session {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(1 << 20),
        })
    }

    async fn connect_and_login(&self) -> Option<Session> {
        let mut session = self.open_stream().await?;
        let login = Envelope::new(
            1,
            Body::Login(pb::LoginRequest {
                token: self.user.token.clone(),
                device_type: "loadgen".into(),
                ..Default::default()
            }),
        );
        let mut out = BytesMut::new();
        encode(&login, &mut out);
        session.write(&out).await.ok()?;
        let reply = tokio::time::timeout(Duration::from_secs(30), session.next_frame())
            .await
            .ok()??;
        match reply.body {
            Some(Body::LoginResp(r)) if r.success => Some(session),
            _ => None,
        }
    }

    /// Runs the logged-in connection until the phase ends it.
    async fn drive(&self, session: &mut Session) -> Next {
        let plan = &self.plan;
        let counters = &self.shared.counters;
        let mut phase_rx = self.shared.phase.clone();
        let mut phase = *phase_rx.borrow_and_update();
        // Seeded afresh per session: client message ids must never repeat
        // across runs or reconnects, or the server rightly treats the sends
        // as resends of messages it already has and delivers nothing new.
        let mut rng = XorShift::new((self.user.index as u64 + 1) ^ unix_ns());
        let mut next_heartbeat = Instant::now() + plan.heartbeat;
        // Open loop: each connection's sends are on a fixed schedule with a
        // random phase, independent of replies.
        let period = plan.send_period;
        let mut next_send = Instant::now() + period.mul_f64(rng.unit());
        let mut req_id: u32 = 1;
        let mut awaiting_ack: HashMap<u32, u64> = HashMap::new();
        let mut seen: HashMap<String, i64> = HashMap::new();
        let mut out = BytesMut::new();
        // One timer each for the whole session, moved when its deadline
        // moves: a `sleep_until` made afresh on every turn of the loop (a
        // turn per frame read) registered and removed two timer-wheel
        // entries per frame, 2.1% of the loadgen's samples at 20,000
        // msg/s (BENCHMARKS.md, "The loadgen's timers").
        let send_timer = tokio::time::sleep_until(next_send);
        let heartbeat_timer = tokio::time::sleep_until(next_heartbeat);
        tokio::pin!(send_timer, heartbeat_timer);
        loop {
            if send_timer.deadline() != next_send {
                send_timer.as_mut().reset(next_send);
            }
            if heartbeat_timer.deadline() != next_heartbeat {
                heartbeat_timer.as_mut().reset(next_heartbeat);
            }
            let sending = matches!(plan.scenario, Scenario::P2p | Scenario::Group)
                && matches!(phase, Phase::Go(_));
            let group = plan.groups.as_ref().and_then(|g| g.of(self.user.index));
            tokio::select! {
                frame = session.next_frame() => {
                    let Some(frame) = frame else { return Next::Closed };
                    match frame.body {
                        Some(Body::SendResp(r)) => {
                            if let Some(scheduled) = awaiting_ack.remove(&frame.req_id) {
                                if r.success {
                                    self.count_ack(scheduled);
                                } else {
                                    counters.send_errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Some(Body::PushMessage(m)) => {
                            if plan.delivery_acks {
                                out.clear();
                                let ack = pb::DeliveryAck {
                                    conversation_id: m.conversation_id.clone(),
                                    seq: m.seq,
                                };
                                encode(&Envelope::new(0, Body::DeliveryAck(ack)), &mut out);
                                if session.write(&out).await.is_err() {
                                    return Next::Closed;
                                }
                            }
                            let mark = seen.entry(m.conversation_id).or_insert(0);
                            self.count_delivery(mark, m.seq, m.content.parse().ok());
                        }
                        Some(Body::Kicked(_)) => return Next::Closed,
                        _ => {}
                    }
                }
                _ = &mut send_timer, if sending => {
                    out.clear();
                    for scheduled in due_sends(&mut next_send, period, Instant::now()) {
                        let (receiver_id, group_id) = match group {
                            Some((group_id, _)) => (0, group_id),
                            None => (self.pick_peer(&mut rng), 0),
                        };
                        req_id = req_id.wrapping_add(1).max(2);
                        awaiting_ack.insert(req_id, scheduled);
                        let send = Envelope::new(req_id, Body::Send(pb::SendMessageRequest {
                            sender_id: 0,
                            receiver_id,
                            group_id,
                            message_type: pb::MessageType::Text as i32,
                            content: scheduled.to_string(),
                            client_message_id: rng.next_positive(),
                            ..Default::default()
                        }));
                        encode(&send, &mut out);
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    if session.write(&out).await.is_err() {
                        return Next::Closed;
                    }
                }
                _ = &mut heartbeat_timer => {
                    next_heartbeat += plan.heartbeat;
                    out.clear();
                    encode(&Envelope::new(0, Body::Heartbeat(pb::Heartbeat {})), &mut out);
                    if session.write(&out).await.is_err() {
                        return Next::Closed;
                    }
                }
                changed = phase_rx.changed() => {
                    let new = changed.ok().map(|()| *phase_rx.borrow_and_update());
                    let step = (plan.scenario, new);
                    if let Some(next) = follow_phase(step, &mut phase, &mut next_send, period, &mut rng) {
                        return next;
                    }
                }
            }
        }
    }

    fn pick_peer(&self, rng: &mut XorShift) -> i64 {
        let ids = &self.plan.all_user_ids;
        ids.get(self.pick_peer_index(rng)).copied().unwrap_or(0)
    }

    /// A peer's place in the token file.
    fn pick_peer_index(&self, rng: &mut XorShift) -> usize {
        let users = self.plan.all_user_ids.len().max(1);
        let me = self.user.index;
        let peers = self.plan.peers.min(users - 1);
        if peers > 0 {
            // A fixed circle of contacts, like a real address book: the
            // same conversations recur, as they do in real chat traffic.
            let offset = 1 + (rng.next() % peers as u64) as usize;
            return (me + offset) % users;
        }
        loop {
            let peer = (rng.next() % users as u64) as usize;
            if peer != me || users < 2 {
                return peer;
            }
        }
    }

    fn record(&self, which: impl Fn(&mut Histograms) -> &mut Histogram<u64>, scheduled_ns: u64) {
        let micros = unix_ns().saturating_sub(scheduled_ns) / 1_000;
        if let Ok(mut h) = self.histograms.lock() {
            let _ = which(&mut h).record(micros.max(1));
        }
    }

    /// A send scheduled at `scheduled` was acked: it now owes its
    /// deliveries (one, or every other member of the sender's group).
    fn count_ack(&self, scheduled: u64) {
        let counters = &self.shared.counters;
        let group = self
            .plan
            .groups
            .as_ref()
            .and_then(|g| g.of(self.user.index));
        counters.acked.fetch_add(1, Ordering::Relaxed);
        let owed = group.map_or(1, |(_, others)| others);
        counters.expected.fetch_add(owed, Ordering::Relaxed);
        self.record(|h| &mut h.ack, scheduled);
    }

    /// A delivery numbered `order` in a stream whose highest so far is
    /// `mark`: new (counted, latency recorded when `scheduled` is known),
    /// a duplicate, or out of order.
    fn count_delivery(&self, mark: &mut i64, order: i64, scheduled: Option<u64>) {
        let counters = &self.shared.counters;
        if order > *mark {
            *mark = order;
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(scheduled) = scheduled {
                self.record(|h| &mut h.deliver, scheduled);
            }
        } else if order == *mark {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a phase change asks of a connection's loop.
enum PhaseStep {
    /// Stop.
    Leave(Next),
    /// Sending starts now: a fresh random offset into the schedule.
    StartSending,
    /// Nothing to do.
    Carry,
}

/// The step a connection takes when the phase goes from `old` to `new`.
fn phase_step(scenario: Scenario, old: Phase, new: Phase) -> PhaseStep {
    match (scenario, old, new) {
        (_, _, Phase::Exit) => PhaseStep::Leave(Next::Exit),
        (Scenario::Storm, Phase::Connect, Phase::Go(go)) => PhaseStep::Leave(Next::Reconnect(go)),
        (_, _, Phase::Go(_)) => PhaseStep::StartSending,
        _ => PhaseStep::Carry,
    }
}

/// A drive loop's answer to a phase change to `new` (`None`: the phase's
/// sender is gone, so leave): `Some(next)` to leave the loop; else the phase
/// moves on, and sending starts at a random offset into the schedule when
/// it begins.
fn follow_phase(
    (scenario, new): (Scenario, Option<Phase>),
    phase: &mut Phase,
    next_send: &mut Instant,
    period: Duration,
    rng: &mut XorShift,
) -> Option<Next> {
    let Some(new) = new else {
        return Some(Next::Exit);
    };
    match phase_step(scenario, *phase, new) {
        PhaseStep::Leave(next) => return Some(next),
        PhaseStep::StartSending => *next_send = Instant::now() + period.mul_f64(rng.unit()),
        PhaseStep::Carry => {}
    }
    *phase = new;
    None
}

/// The scheduled times (unix ns) of the sends due by `now` on an open-loop
/// schedule of one send per `period`, moving `next_send` past them. The
/// scheduled time, not the write time, starts each latency clock.
fn due_sends(next_send: &mut Instant, period: Duration, now: Instant) -> Vec<u64> {
    let mut due = Vec::new();
    while *next_send <= now {
        let behind = now.saturating_duration_since(*next_send);
        due.push(unix_ns().saturating_sub(behind.as_nanos() as u64));
        *next_send += period;
    }
    due
}

enum Next {
    Exit,
    Closed,
    Reconnect(Instant),
}

impl Session {
    /// Writes `bytes` out (TLS holds records until flushed).
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next whole frame, or `None` when the connection is gone.
    async fn next_frame(&mut self) -> Option<Envelope> {
        let decoder = self.decoder.clone();
        self.next_decoded(|buf| decoder.decode(buf).map_err(drop))
            .await
    }

    /// The next whole unit `decode` finds in the stream (reading more as
    /// needed), or `None` when the connection is gone or sent garbage.
    pub(super) async fn next_decoded<T>(
        &mut self,
        mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, ()>,
    ) -> Option<T> {
        loop {
            match decode(&mut self.buf) {
                Ok(Some(unit)) => return Some(unit),
                Ok(None) => {}
                Err(()) => return None,
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A tiny deterministic generator: peers and phases only need spread,
/// not cryptographic quality.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn next_positive(&mut self) -> i64 {
        (self.next() >> 1) as i64 | 1
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A fresh per-thread histogram set.
pub fn thread_histograms() -> Arc<Mutex<Histograms>> {
    Arc::new(Mutex::new(Histograms::new()))
}
