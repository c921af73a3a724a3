//! One client connection, from accept to close: read a frame, check the
//! session state allows it, have it carried out (`handlers.rs`: the
//! handlers return their result and know nothing of sockets), frame the
//! reply. The first frame must be
//! Register or Login within the login deadline; after login the connection
//! must stay chatty (any frame, usually Heartbeat) within the idle timeout.
//! Both deadlines are enforced by the core's sweeper, not by a timer per
//! read. Replies and pushes go through the connection's [`Outbox`],
//! written by the writing half of the connection's one task, so a slow
//! peer never stalls the core. A close lets the peer read its last frames
//! before the socket goes (`close_gracefully`).
//!
//! Here: the connection's state and its reading half. `accept` admits a
//! socket (its TLS handshake too) and serves it, `framing` reads frames,
//! `writing` is the writing half and the close, `parked` keeps an idle
//! connection without a task, `handover` moves one to its user's core.

use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;

use futures::channel::oneshot;
use futures::io::{AsyncRead, AsyncWrite};
use ourchat_protocol::codec::FrameError;
use ourchat_protocol::ids::now_ms;
use ourchat_protocol::pb;
use ourchat_protocol::{Body, ConversationId, Envelope, ErrorCode};

use crate::account::LoginGrant;
use crate::core::{encode_frame, ConnReply, Core, CoreMsg, Reply};
use crate::handlers::{refusal_for, refused_send, Caller, Session};
use crate::limits::{FrameLimiter, Limit, Verdict};
use crate::messages::SubmittedNow;
use crate::metrics::CoreMetrics;
use crate::outbox::{Outbox, Overflow, Parking, Pushed};

mod accept;
mod framing;
mod handover;
mod parked;
mod writing;
pub use accept::{accept, accept_local};
pub(crate) use accept::{admit, serve, tls_handshake};
use framing::{Asked, FrameReader, ReadEnd};
pub use handover::{adopt, Handover};
pub use parked::{resume_parked, Lot, Parked};
use writing::{write_loop, Shared};

/// Failed logins tolerated on one connection before it is closed.
const MAX_LOGIN_FAILURES: u32 = 3;

/// Sends or queues an answer ([`Outbox::push_now`]); a socket whose queue
/// is full is closed (the client reconnects and syncs).
pub(crate) fn push_answer(outbox: &Outbox, metrics: &CoreMetrics, req_id: u32, body: Body) {
    match outbox.push_now(encode_frame(&Envelope::new(req_id, body))) {
        Ok(Pushed::Written) => CoreMetrics::inc(&metrics.frames_out),
        Ok(Pushed::Queued) => {}
        Err(Overflow) => outbox.close_with(Some(crate::core::kicked_frame(
            "outbound queue full: reconnect and sync",
        ))),
    }
}

/// The reader's next step after a frame (or the end of reading).
enum Step<'a> {
    /// Read the next frame.
    Next,
    /// Handle a request (boxed: its state lives on the heap only while a
    /// request is handled); `false`: the connection ends.
    Handle(Pin<Box<dyn Future<Output = bool> + 'a>>),
    /// End the connection, after this.
    Close(Pin<Box<dyn Future<Output = ()> + 'a>>),
    /// Stop reading: the connection parks.
    Park,
}

/// How a connection's task ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The connection is over.
    Closed,
    /// Both halves are at rest and it was asked to park: the socket is
    /// still open and the session on.
    Parked,
}

/// One client connection's state: where its requests run (its core, its
/// id, its peer's address), its session, its limits and its outbox.
pub struct Connection {
    pub(crate) caller: Caller,
    outbox: Rc<Outbox>,
    session: Option<Session>,
    login_failures: u32,
    /// Bytes past the frame being handled were already read: a login now
    /// does not move the connection (`handover.rs`), which would leave
    /// them behind.
    reads_ahead: bool,
    /// The peer ended its stream and all of it was read: the close need
    /// not drain it ([`close_gracefully`]).
    peer_ended: bool,
    /// A granted login moving this connection to its user's core once it
    /// stops.
    moving: Option<Box<handover::Moving>>,
    /// This connection's frame rate.
    frames: FrameLimiter,
}

impl Connection {
    /// A new socket's connection, registered with its core; `parkable`
    /// when it may be parked while idle.
    fn open(core: Rc<Core>, peer: Option<IpAddr>, parkable: bool) -> Connection {
        CoreMetrics::inc(&core.metrics().accepted);
        let frame_rate = core.shared.config.limits.frame_rate();
        let frames = FrameLimiter::new(frame_rate, std::time::Instant::now());
        Connection::register(core, peer, parkable, frames)
    }

    /// A connection registered with `core` (a new socket's, or one handed
    /// over by another core with its frame limiter).
    fn register(
        core: Rc<Core>,
        peer: Option<IpAddr>,
        parkable: bool,
        frames: FrameLimiter,
    ) -> Connection {
        let outbox = Rc::new(Outbox::new(
            core.shared.config.server.outbound_queue_frames,
            parkable,
        ));
        let conn_id = core.add_connection(outbox.clone());
        Connection {
            caller: Caller {
                core,
                conn_id,
                peer,
            },
            outbox,
            session: None,
            login_failures: 0,
            reads_ahead: false,
            peer_ended: false,
            moving: None,
            frames,
        }
    }

    fn outbox(&self) -> Rc<Outbox> {
        self.outbox.clone()
    }

    /// Reads and writes `stream` in one task until the connection closes
    /// or parks. Its halves share the stream (each borrows it only inside
    /// one poll), so a connection is one task and one allocation, with no
    /// lock between its halves.
    async fn run<S>(&mut self, stream: &RefCell<S>, socket: Option<RawFd>) -> Ended
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let outbox = self.outbox();
        loop {
            let core = self.caller.core.clone();
            let reading = async {
                let ended = self.read_loop(Shared(stream), &outbox).await;
                if ended == Ended::Closed {
                    Box::pin(self.sign_off()).await;
                    outbox.close_with(None);
                }
                ended
            };
            let writing = write_loop(Shared(stream), outbox.clone(), core.clone(), socket);
            match futures::future::join(reading, writing).await {
                (Ended::Parked, Ended::Parked) if outbox.may_park() => return Ended::Parked,
                // Something was queued after the writer stopped: serve it.
                (Ended::Parked, Ended::Parked) => continue,
                // The writer closed (a close queued after the reader
                // parked, a failed write).
                (Ended::Parked, Ended::Closed) => Box::pin(self.sign_off()).await,
                // The writer had stopped to park: it writes what is left.
                // (Boxed: rare, and this future lives as long as the task.)
                (Ended::Closed, Ended::Parked) => {
                    Box::pin(write_loop(Shared(stream), outbox.clone(), core, socket)).await;
                }
                (Ended::Closed, Ended::Closed) => {}
            }
            return Ended::Closed;
        }
    }

    /// The end of a logged-in device's connection, told to its user's core.
    /// (Callers box it for the same reason as the handlers: only a closing
    /// connection pays for the routing future.)
    async fn sign_off(&mut self) {
        if let Some(session) = self.session.take() {
            let owner = self.caller.core.owner_of_user(session.user_id);
            let offline = CoreMsg::Offline {
                user_id: session.user_id,
                device_id: session.device_id.to_string(),
                conn_id: self.caller.conn_id,
            };
            self.caller.core.route(owner, offline).await;
        }
    }

    /// Reads and handles frames until the connection ends or, at a frame
    /// boundary, finds itself asked to park.
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut reader: R, outbox: &Outbox) -> Ended {
        let max_frame = self.caller.core.shared.config.server.max_frame_bytes;
        let mut frames = FrameReader::default();
        let asked = || {
            if outbox.is_closing() {
                Asked::Close
            } else if outbox.parking() == Parking::Asked {
                Asked::Park
            } else {
                Asked::Nothing
            }
        };
        loop {
            // The frame goes straight into a plain function that boxes
            // what must be awaited: an envelope (hundreds of bytes) then
            // never has a slot in this future, which every idle connection
            // carries (it was 840 bytes, mostly that slot).
            let step = {
                let read = frames.next(&mut reader, max_frame, asked).await;
                self.reads_ahead = frames.holds_bytes();
                self.next_step(read)
            };
            match step {
                Step::Next => {}
                Step::Handle(handling) => {
                    if !handling.await {
                        return Ended::Closed;
                    }
                }
                Step::Close(closing) => {
                    closing.await;
                    return Ended::Closed;
                }
                Step::Park => return Ended::Parked,
            }
        }
    }

    /// What to do with what the reader got.
    fn next_step(&mut self, read: Result<Envelope, ReadEnd>) -> Step<'_> {
        let envelope = match read {
            Ok(envelope) => envelope,
            Err(ReadEnd::Closed) => return Step::Close(Box::pin(async {})),
            Err(ReadEnd::PeerEnded) => {
                self.peer_ended = true;
                // A client may end its stream after its last sends and
                // read on (a half-close): their answers go out first.
                return Step::Close(Box::pin(self.outbox.all_sends_answered()));
            }
            Err(ReadEnd::Park) => return Step::Park,
            Err(ReadEnd::Bad(FrameError::TooLarge { len, max })) => {
                let message = format!("frame of {len} bytes exceeds the maximum of {max}");
                return Step::Close(Box::pin(async move {
                    self.close_after_inflight(0, ErrorCode::FrameTooLarge, &message)
                        .await
                }));
            }
            Err(ReadEnd::Bad(err)) => {
                let message = err.to_string();
                return Step::Close(Box::pin(async move {
                    self.close_after_inflight(0, ErrorCode::Protocol, &message)
                        .await
                }));
            }
        };
        // One clock read per frame, for the idle clock, the frame rate,
        // the sender's rate and a send's time in the node.
        let now = std::time::Instant::now();
        self.outbox.touch(now);
        match self.frame_verdict(now) {
            Verdict::Allow if self.handled_in_line(&envelope) => Step::Next,
            Verdict::Allow => match (&self.session, envelope.body) {
                (Some(session), Some(Body::Send(request))) if self.sends_in_line() => {
                    self.send_in_line(session, envelope.req_id, request, now)
                }
                (_, body) => Step::Handle(Box::pin(self.handle(Envelope { body, ..envelope }))),
            },
            // Refused frames are answered and never carried out.
            Verdict::Refuse => {
                self.refuse_frame(envelope.req_id);
                Step::Next
            }
            Verdict::Disconnect => {
                self.caller.core.metrics().limited(Limit::Flood);
                Step::Close(Box::pin(self.close_after_inflight(
                    envelope.req_id,
                    ErrorCode::RateLimited,
                    "flooding: connection closed",
                )))
            }
        }
    }

    pub(crate) fn reply(&self, req_id: u32, body: Body) {
        if let Some(error) = error_in(&body) {
            self.caller.core.metrics().error(error.code);
        }
        push_answer(&self.outbox, self.caller.core.metrics(), req_id, body);
    }

    pub(crate) fn reply_error(&self, req_id: u32, error: pb::Error) {
        self.reply(req_id, Body::Error(error));
    }

    fn close_with_error(&self, req_id: u32, code: ErrorCode, message: &str) {
        self.caller.core.metrics().error(code as i32);
        let error = Body::Error(pb::Error::new(code, message));
        self.outbox
            .close_with(Some(encode_frame(&Envelope::new(req_id, error))));
    }

    /// Takes a token from this connection's frame bucket.
    fn frame_verdict(&mut self, now: std::time::Instant) -> Verdict {
        let limits = &self.caller.core.shared.config.limits;
        self.frames
            .check(limits.frame_rate(), limits.flood_refusals_per_sec, now)
    }

    /// The one answer a frame over the rate gets, naming its request.
    fn refuse_frame(&self, req_id: u32) {
        self.caller.core.metrics().limited(Limit::FrameRate);
        let message = format!(
            "slow down: {} frames per second allowed; request {req_id} was not carried out",
            self.caller.core.shared.config.limits.frames_per_sec
        );
        self.reply_error(req_id, pb::Error::new(ErrorCode::RateLimited, message));
    }

    /// Closes with a reason once every send this connection has in flight
    /// is answered: a message stored before the close is acked before it.
    async fn close_after_inflight(&self, req_id: u32, code: ErrorCode, message: &str) {
        self.outbox.all_sends_answered().await;
        self.close_with_error(req_id, code, message);
    }

    /// Handles a frame that needs no waiting without boxing a future for
    /// it: a logged-in device's delivery ack (one per push, half of what a
    /// busy connection reads) for a conversation known here. `false`: not
    /// handled, [`Connection::handle`] takes it.
    fn handled_in_line(&self, envelope: &Envelope) -> bool {
        let (Some(session), Some(Body::DeliveryAck(ack))) = (&self.session, &envelope.body) else {
            return false;
        };
        let Some(conv) = self.caller.acked_now(&ack.conversation_id, session.user_id) else {
            return false;
        };
        CoreMetrics::inc(&self.caller.core.metrics().frames_in);
        if let Err(error) = conv.and_then(|conv| self.caller.record_ack(session, conv, ack.seq)) {
            self.reply_error(envelope.req_id, error);
        }
        true
    }

    /// Whether a logged-in device's send is one nothing has to wait for
    /// ([`Caller::send_needs_no_wait`], and room under the in-flight
    /// limit, which is then counted): half of what a busy connection
    /// reads, handed on by [`Connection::send_in_line`] with no future
    /// boxed for it. The rest is [`Connection::handle`]'s.
    fn sends_in_line(&self) -> bool {
        self.caller.send_needs_no_wait() && self.outbox.try_begin_send(self.inflight_limit())
    }

    /// Hands on a send [`Connection::sends_in_line`] passed.
    fn send_in_line(
        &self,
        session: &Session,
        req_id: u32,
        request: pb::SendMessageRequest,
        received_at: std::time::Instant,
    ) -> Step<'_> {
        CoreMetrics::inc(&self.caller.core.metrics().frames_in);
        let reply_for = self.answer_to(req_id, received_at);
        match self
            .caller
            .submit_send_now(session, request, received_at, reply_for)
        {
            SubmittedNow::Routed => Step::Next,
            SubmittedNow::Refused(error) => {
                self.refuse_send(req_id, error);
                Step::Next
            }
            // Admitted, and the channel to its sequencing core is full.
            SubmittedNow::MeshFull(owner, job) => Step::Handle(Box::pin(async move {
                self.caller.core.route(owner, job).await;
                true
            })),
        }
    }

    /// Most sends this connection may have unanswered.
    fn inflight_limit(&self) -> u16 {
        // The config keeps it within u16.
        self.caller.core.shared.config.server.max_inflight_sends as u16
    }

    /// Where the answer to send `req_id` goes: this connection, once its
    /// sequencing core has it stored or refused.
    fn answer_to(
        &self,
        req_id: u32,
        received_at: std::time::Instant,
    ) -> impl FnOnce(ConversationId) -> Reply {
        let conn_id = self.caller.conn_id;
        move |conv| {
            Reply::Connection(ConnReply {
                conn_id,
                req_id,
                conv,
                received_at,
            })
        }
    }

    /// Answers a send refused before it was handed on; it is in flight no
    /// more.
    fn refuse_send(&self, req_id: u32, error: pb::Error) {
        self.reply(req_id, Body::SendResp(refused_send(error)));
        self.outbox.send_answered();
    }

    /// Handles one frame; `false` closes the connection.
    async fn handle(&mut self, envelope: Envelope) -> bool {
        CoreMetrics::inc(&self.caller.core.metrics().frames_in);
        let req_id = envelope.req_id;
        let Some(body) = envelope.body else {
            self.close_after_inflight(req_id, ErrorCode::Protocol, "frame has no body")
                .await;
            return false;
        };
        let refused = refusal_for(&body);
        let Some(session) = self.session.clone() else {
            return match body {
                Body::Register(request) => {
                    let reply = self.caller.register(request).await;
                    self.reply(req_id, reply.unwrap_or_else(refused));
                    true
                }
                Body::Login(request) => self.login(req_id, request).await,
                _ => {
                    self.close_with_error(
                        req_id,
                        ErrorCode::Unauthenticated,
                        "log in first: the first frame must be Login or Register",
                    );
                    false
                }
            };
        };
        match body {
            Body::Heartbeat(_) => {
                self.caller.core.touch_directory(session.user_id);
                self.reply(
                    req_id,
                    Body::HeartbeatAck(pb::HeartbeatAck {
                        server_time_ms: now_ms() as i64,
                    }),
                )
            }
            Body::Send(request) => self.send(req_id, &session, request).await,
            Body::Logout(_) => {
                // Logging out revokes this device's token, then closes.
                if let Err(error) = self
                    .caller
                    .sign_out_device(session.user_id, &session.device_id, "logged out")
                    .await
                {
                    tracing::warn!(code = error.code, "logout could not revoke the token");
                }
                // Say why here: the directory's kick may arrive after we close.
                let reason = "logged out".to_string();
                let kicked = Envelope::new(0, Body::Kicked(pb::Kicked { reason }));
                self.outbox.close_with(Some(encode_frame(&kicked)));
                return false;
            }
            body => match self.caller.handle(&session, body).await {
                Ok(Some(reply)) => self.reply(req_id, reply),
                Ok(None) => {}
                Err(error) => self.reply(req_id, refused(error)),
            },
        }
        true
    }

    /// Logs in by token or password; `false` closes the connection.
    async fn login(&mut self, req_id: u32, request: pb::LoginRequest) -> bool {
        match self.caller.authenticate(&request).await {
            Ok(grant) => {
                CoreMetrics::inc(&self.caller.core.metrics().logins_ok);
                // Moving, the user's core finishes the login.
                if let Err(grant) = self.move_to_owner(req_id, grant, &request.device_type) {
                    self.finish_login(req_id, grant, &request.device_type).await;
                }
                true
            }
            Err(error) => {
                CoreMetrics::inc(&self.caller.core.metrics().logins_failed);
                self.login_failures += 1;
                let response = refusal_for(&Body::Login(request))(error);
                if self.login_failures >= MAX_LOGIN_FAILURES {
                    let last = encode_frame(&Envelope::new(req_id, response));
                    self.outbox.close_with(Some(last));
                    return false;
                }
                self.reply(req_id, response);
                true
            }
        }
    }

    /// Puts a granted login into effect on this connection: the device's
    /// row, its registration with the user's core, the answer.
    async fn finish_login(&mut self, req_id: u32, grant: LoginGrant, device_type: &str) {
        self.caller.touch_device(&grant, device_type).await;
        self.begin_session(grant.session()).await;
        self.reply(req_id, grant.response(&self.caller.core));
    }

    /// Registers this connection as the session's device with the user's
    /// owner core, and waits for it: once the login is answered, pushes
    /// reach this device.
    async fn begin_session(&mut self, session: Session) {
        let core = &self.caller.core;
        let (done, registered) = oneshot::channel();
        let owner = core.owner_of_user(session.user_id);
        let online = CoreMsg::Online {
            user_id: session.user_id,
            device_id: session.device_id.to_string(),
            conn_id: self.caller.conn_id,
            done,
        };
        core.route(owner, online).await;
        let _ = registered.await;
        self.outbox.set_logged_in();
        self.session = Some(session);
    }

    /// A send, pipelined: its answer is queued on this connection's outbox
    /// by whichever core sequences it (`Core::answer`), so one connection
    /// may have several in flight (up to `server.max_inflight_sends`; past
    /// it, this read loop waits here and the socket is not read). Order is
    /// kept: each is routed before the next frame is read.
    async fn send(&mut self, req_id: u32, session: &Session, request: pb::SendMessageRequest) {
        let received_at = std::time::Instant::now();
        self.outbox.begin_send(self.inflight_limit()).await;
        let reply_for = self.answer_to(req_id, received_at);
        if let Err(error) = self.caller.submit_send(session, request, reply_for).await {
            self.refuse_send(req_id, error);
        }
    }
}

/// The error a reply carries, if it is a refusal.
fn error_in(body: &Body) -> Option<&pb::Error> {
    match body {
        Body::Error(error) => Some(error),
        Body::SendResp(r) => r.error.as_ref(),
        Body::LoginResp(r) => r.error.as_ref(),
        Body::RegisterResp(r) => r.error.as_ref(),
        Body::CreateGroupResp(r) => r.error.as_ref(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use glommio::net::TcpStream;

    use super::*;

    fn future_size<A, B, C, D, F>(_: &impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A connection at work is one task holding this future: a local
    /// held across an await (an envelope did, 680 bytes of it) or a
    /// handler's state not boxed shows here first. An idle one is parked:
    /// its socket and a record of this size (in a box, in the lot).
    #[test]
    fn a_connection_is_one_small_future_and_parks_smaller() {
        // With glommio's 40-byte task header and its schedule closure, the
        // task stays in jemalloc's 1,024-byte class, whose slabs are one
        // page of four, and out of the 896-byte class, whose slabs are
        // seven pages: at 848 bytes (the task then 896) the few tasks still
        // live among parked connections pinned far more pages. Measured
        // idle at 5,000: 1,142-1,202 against 1,414-1,464 bytes per
        // connection (BENCHMARKS.md, "The cores stalled each other under
        // overload"; 16 unused bytes in `Connection` kept it there until
        // the writer's socket for direct writes took their room).
        let accept_size = future_size(&accept);
        assert!(accept_size <= 960, "accept's future is {accept_size} bytes");
        assert!(accept_size >= 856, "accept's future is {accept_size} bytes");
        fn read_loop_size<F>(
            _: &impl Fn(&'static mut Connection, Shared<'static, TcpStream>, &'static Outbox) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let reading = read_loop_size(&|conn, stream, outbox| conn.read_loop(stream, outbox));
        assert!(reading <= 200, "read_loop's future is {reading} bytes");
        let parked = std::mem::size_of::<Parked>();
        // 192 is the allocator's size class it is boxed in.
        assert!(
            parked <= 192,
            "a parked connection's record is {parked} bytes"
        );
        // With its two `Rc` counts, a 104-byte allocation (see `Outbox`).
        let outbox = std::mem::size_of::<Outbox>();
        assert!(outbox <= 88, "an outbox is {outbox} bytes");
    }
}
