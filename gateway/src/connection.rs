//! One client connection, from accept to close: read a frame, check the
//! session state allows it, handle it, reply. The first frame must be
//! Register or Login within the login deadline; after login the connection
//! must stay chatty (any frame, usually Heartbeat) within the idle timeout.
//! Both deadlines are enforced by the core's sweeper, not by a timer per
//! read. Replies and pushes go through the connection's [`Outbox`],
//! written by a sibling task, so a slow peer never stalls the core; that
//! task also ends the connection by shutting the socket down.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use ourchat_protocol::codec::FrameError;
use ourchat_protocol::ids::now_ms;
use ourchat_protocol::payload;
use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_protocol::{Body, ConversationId, Envelope, ErrorCode};
use ourchat_storage::{NewAccount, Visibility, WriteOp, WriteOutcome};
use ourchat_workers::password;

use crate::auth::TokenError;
use crate::core::{encode_frame, pool_error, Core, CoreMsg, SendJob};
use crate::limits::{FrameLimiter, IpSlot, Limit, Verdict};
use crate::metrics::CoreMetrics;
use crate::outbox::{Next, Outbox, Parking};

mod framing;
mod parked;
use framing::{FrameReader, ReadEnd};
use parked::serve_plain;
pub use parked::{resume_parked, Lot, Parked};

/// Largest page a History or Sync reply carries.
const MAX_PAGE: usize = 500;
/// Page size when the client does not ask for one.
const DEFAULT_PAGE: usize = 100;
/// Failed logins tolerated on one connection before it is closed.
const MAX_LOGIN_FAILURES: u32 = 3;

/// Who the connection belongs to, once logged in.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) user_id: i64,
    pub(crate) device_id: String,
}

/// A successful authentication.
struct LoginGrant {
    user_id: i64,
    device_id: String,
    token: String,
    expire_at: u64,
    /// First login on this device: its row must exist before the reply.
    new_device: bool,
}

/// Where a connection's answers go: framed into its socket's outbox, or
/// (one gRPC call) handed to the caller as they are, never encoded.
#[derive(Clone)]
enum Answers {
    Socket(Rc<Outbox>),
    Call(Rc<CallAnswer>),
}

impl Answers {
    /// Queues an answer; a socket whose queue is full is closed (the client
    /// reconnects and syncs).
    fn answer(&self, req_id: u32, body: Body) {
        match self {
            Answers::Socket(outbox) => {
                if outbox
                    .push(encode_frame(&Envelope::new(req_id, body)))
                    .is_err()
                {
                    outbox.close_with(Some(crate::core::kicked_frame(
                        "outbound queue full: reconnect and sync",
                    )));
                }
            }
            Answers::Call(call) => call.set(body),
        }
    }

    /// Ends the exchange after a last answer.
    fn close_with(&self, req_id: u32, last: Option<Body>) {
        match self {
            Answers::Socket(outbox) => {
                outbox.close_with(last.map(|body| encode_frame(&Envelope::new(req_id, body))))
            }
            Answers::Call(call) => {
                if let Some(body) = last {
                    call.set(body);
                }
            }
        }
    }
}

/// The answer a gRPC call waits for: the first one given.
#[derive(Default)]
struct CallAnswer {
    body: RefCell<Option<Body>>,
    given: Cell<bool>,
    waiter: Cell<Option<std::task::Waker>>,
}

impl CallAnswer {
    fn set(&self, body: Body) {
        if self.given.replace(true) {
            return;
        }
        *self.body.borrow_mut() = Some(body);
        if let Some(waiter) = self.waiter.take() {
            waiter.wake();
        }
    }

    async fn wait(&self) -> Body {
        std::future::poll_fn(|cx| match self.body.borrow_mut().take() {
            Some(body) => Poll::Ready(body),
            None => {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
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

/// A socket over the per-address connection limit (counted).
pub(crate) struct OverLimit;

/// An accepted socket's fd and peer, with Nagle off, and its place under
/// its address's connection limit.
pub(crate) fn admit(
    core: &Core,
    stream: &TcpStream,
) -> Result<(RawFd, Option<IpAddr>, Option<IpSlot>), OverLimit> {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok().map(|addr| addr.ip());
    let slot = match peer {
        Some(ip) => match core.shared.limits.open_connection(ip) {
            Some(slot) => Some(slot),
            None => {
                core.metrics().limited(Limit::ConnectionsPerIp);
                return Err(OverLimit);
            }
        },
        None => None,
    };
    Ok((stream.as_raw_fd(), peer, slot))
}

/// Takes one accepted socket: plain, or TLS once its handshake completes.
/// The handshake runs in this task, interleaved with every other task of
/// the core, and must finish within the login deadline (a peer that stalls
/// it holds nothing but its socket meanwhile).
pub async fn accept(
    core: Rc<Core>,
    mut stream: Box<TcpStream>,
    tls: Option<futures_rustls::TlsAcceptor>,
    lot: Option<Rc<Lot>>,
) {
    let Ok((fd, peer, slot)) = admit(&core, &stream) else {
        if tls.is_none() {
            let refusal = encode_frame(&Envelope::error(
                0,
                ErrorCode::RateLimited,
                "too many connections from your address",
            ));
            let _ = stream.write_all(&refusal).await;
        }
        return;
    };
    let Some(acceptor) = tls else {
        let conn = Connection::open(core, peer, lot.is_some());
        return serve_plain(conn, *stream, slot, lot).await;
    };
    // Boxed: this function's future is as large as its largest state, and
    // the handshake's timer and TLS session are large; unboxed, every plain
    // connection would carry room for them.
    Box::pin(handshake_then_serve(core, stream, acceptor, fd, peer, slot)).await
}

/// Takes a connection a gRPC `Subscribe` stream opened to this core over
/// its local socket: from here it is a client connection like a TCP one
/// (same handlers, limits, deadlines, metrics and presence). Per-address
/// limits were not applied: the gRPC server owns the peer.
pub async fn accept_local(core: Rc<Core>, stream: Box<glommio::net::UnixStream>) {
    let fd = stream.as_raw_fd();
    serve(core, stream, fd, None, None).await
}

/// The TLS path of [`accept`]: the handshake under the login deadline, then
/// the connection.
async fn handshake_then_serve(
    core: Rc<Core>,
    stream: Box<TcpStream>,
    acceptor: futures_rustls::TlsAcceptor,
    fd: RawFd,
    peer: Option<IpAddr>,
    slot: Option<IpSlot>,
) {
    if let Some(stream) = tls_handshake(&core, *stream, acceptor).await {
        Box::pin(serve(core, Box::new(stream), fd, peer, slot)).await
    }
}

/// A server-side TLS handshake under the login deadline (a peer that
/// stalls it holds nothing but its socket meanwhile); `None`: it failed or
/// ran out of time (counted).
pub(crate) async fn tls_handshake(
    core: &Core,
    stream: TcpStream,
    acceptor: futures_rustls::TlsAcceptor,
) -> Option<futures_rustls::server::TlsStream<TcpStream>> {
    let deadline = std::time::Duration::from_millis(core.shared.config.server.login_timeout_ms);
    // Boxed: its TLS session in the making is kilobytes, and the caller's
    // future lives as long as the connection; the box goes with the
    // handshake.
    let handshake = Box::pin(async {
        acceptor
            .accept(stream)
            .await
            .map_err(glommio::GlommioError::IoError)
    });
    match glommio::timer::timeout(deadline, handshake).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            CoreMetrics::inc(&core.metrics().tls_handshake_failures);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Serves one connection that never parks (TLS, WebSocket, a gRPC
/// stream) until it closes. `fd` is its socket, under whatever `stream`
/// wraps it in; `_slot` counts it against its address until it ends.
pub(crate) async fn serve<S>(
    core: Rc<Core>,
    stream: Box<S>,
    fd: RawFd,
    peer: Option<IpAddr>,
    _slot: Option<IpSlot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut conn = Connection::open(core, peer, false);
    let stream = RefCell::new(*stream);
    let ended = conn.run(&stream, fd).await;
    debug_assert_eq!(
        ended,
        Ended::Closed,
        "only a parkable outbox is asked to park"
    );
    conn.core.remove_connection(conn.conn_id);
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

/// A connection's stream as its reading and its writing half each see it:
/// borrowed for one poll at a time, never across an await.
struct Shared<'a, S>(&'a RefCell<S>);

impl<S: AsyncRead + Unpin> AsyncRead for Shared<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shared<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Writes whatever is queued, in batches, until the outbox closes (then
/// shuts the socket down in both directions, which ends the reader's
/// pending read) or the connection is to park. `fd` is the connection's
/// socket, open for as long as this task holds its write half.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    fd: RawFd,
    outbox: Rc<Outbox>,
    core: Rc<Core>,
) -> Ended {
    let mut batch: Vec<Bytes> = Vec::new();
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        match outbox.take_batch(&mut batch).await {
            Next::Write => {}
            Next::Park => return Ended::Parked,
            Next::Close => break,
        }
        core.metrics()
            .frames_out
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let result = if batch.len() == 1 {
            writer.write_all(&batch[0]).await
        } else {
            buffer.clear();
            for frame in &batch {
                buffer.extend_from_slice(frame);
            }
            writer.write_all(&buffer).await
        };
        // TLS keeps records it could not write yet in its own buffer (the
        // socket said "later"); only a flush pushes them out. Plain TCP
        // has nothing to flush.
        let result = match result {
            Ok(()) => writer.flush().await,
            error => error,
        };
        batch.clear();
        if buffer.capacity() > 64 * 1024 {
            buffer = Vec::new();
        }
        if result.is_err() {
            outbox.close_with(None);
            break;
        }
    }
    let _ = writer.flush().await;
    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    let _ = writer.close().await;
    Ended::Closed
}

/// One client connection's state: its core, its session, its limits and
/// where its answers go.
pub struct Connection {
    pub(crate) core: Rc<Core>,
    pub(crate) conn_id: u64,
    /// Where answers go: the socket's outbox, or a gRPC call's caller.
    answers: Answers,
    session: Option<Session>,
    login_failures: u32,
    /// Bounds sends awaiting their ack; made on the first send so idle
    /// connections do not carry it.
    inflight: Option<Rc<Semaphore>>,
    /// The peer's address, for per-address limits.
    peer: Option<IpAddr>,
    /// This connection's frame rate.
    frames: FrameLimiter,
}

impl Connection {
    /// A new socket's connection, registered with its core; `parkable`
    /// when it may be parked while idle.
    fn open(core: Rc<Core>, peer: Option<IpAddr>, parkable: bool) -> Connection {
        let outbox = Rc::new(Outbox::new(
            core.shared.config.server.outbound_queue_frames,
            parkable,
        ));
        let conn_id = core.add_connection(outbox.clone());
        let frame_rate = core.shared.config.limits.frame_rate();
        Connection {
            conn_id,
            answers: Answers::Socket(outbox),
            session: None,
            login_failures: 0,
            inflight: None,
            peer,
            frames: FrameLimiter::new(frame_rate, std::time::Instant::now()),
            core,
        }
    }

    /// The socket's outbox (a socket's connection always has one).
    fn outbox(&self) -> Rc<Outbox> {
        match &self.answers {
            Answers::Socket(outbox) => outbox.clone(),
            // Only `handle_detached` makes a call's connection, and it
            // never runs one.
            Answers::Call(_) => Rc::new(Outbox::new(1, false)),
        }
    }

    /// Reads and writes `stream` in one task until the connection closes
    /// or parks. Its halves share the stream (each borrows it only inside
    /// one poll), so a connection is one task and one allocation, with no
    /// lock between its halves.
    async fn run<S>(&mut self, stream: &RefCell<S>, fd: RawFd) -> Ended
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let outbox = self.outbox();
        loop {
            let core = self.core.clone();
            let reading = async {
                let ended = self.read_loop(Shared(stream), &outbox).await;
                if ended == Ended::Closed {
                    Box::pin(self.sign_off()).await;
                    outbox.close_with(None);
                }
                ended
            };
            let writing = write_loop(Shared(stream), fd, outbox.clone(), core.clone());
            match futures::future::join(reading, writing).await {
                (Ended::Parked, Ended::Parked) if outbox.may_park() => return Ended::Parked,
                // Something was queued after the writer stopped: serve it.
                (Ended::Parked, Ended::Parked) => continue,
                // The writer shut the socket down (a close, a failed write).
                (Ended::Parked, Ended::Closed) => Box::pin(self.sign_off()).await,
                // The writer had stopped to park: it flushes and shuts down.
                // (Boxed: rare, and this future lives as long as the task.)
                (Ended::Closed, Ended::Parked) => {
                    Box::pin(write_loop(Shared(stream), fd, outbox.clone(), core)).await;
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
            let owner = self.core.owner_of_user(session.user_id);
            let offline = CoreMsg::Offline {
                user_id: session.user_id,
                device_id: session.device_id,
                conn_id: self.conn_id,
            };
            self.core.route(owner, offline).await;
        }
    }

    /// Reads and handles frames until the connection ends or, at a frame
    /// boundary, finds itself asked to park.
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut reader: R, outbox: &Outbox) -> Ended {
        let max_frame = self.core.shared.config.server.max_frame_bytes;
        let mut frames = FrameReader::default();
        let asked_to_park = || outbox.parking() == Parking::Asked;
        loop {
            // The frame goes straight into a plain function that boxes
            // what must be awaited: an envelope (hundreds of bytes) then
            // never has a slot in this future, which every idle connection
            // carries (it was 840 bytes, mostly that slot).
            let step = {
                let read = frames.next(&mut reader, max_frame, asked_to_park).await;
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
        if let Answers::Socket(outbox) = &self.answers {
            outbox.touch();
        }
        match self.frame_verdict() {
            Verdict::Allow => Step::Handle(Box::pin(self.handle(envelope))),
            // Refused frames are answered and never carried out.
            Verdict::Refuse => {
                self.refuse_frame(envelope.req_id);
                Step::Next
            }
            Verdict::Disconnect => {
                self.core.metrics().limited(Limit::Flood);
                Step::Close(Box::pin(self.close_after_inflight(
                    envelope.req_id,
                    ErrorCode::RateLimited,
                    "flooding: connection closed",
                )))
            }
        }
    }

    /// Runs one request outside any socket (a gRPC call) through the same
    /// handlers as a client frame: `token` authenticates it (revocation
    /// included) unless it is Register or Login. The reply body, or the
    /// refusal it carries.
    pub(crate) async fn handle_detached(
        core: Rc<Core>,
        token: Option<String>,
        peer: Option<IpAddr>,
        body: Body,
    ) -> Result<Body, pb::Error> {
        let call = Rc::new(CallAnswer::default());
        let frame_rate = core.shared.config.limits.frame_rate();
        let mut conn = Connection {
            conn_id: core.new_conn_id(),
            frames: FrameLimiter::new(frame_rate, std::time::Instant::now()),
            peer,
            core,
            answers: Answers::Call(call.clone()),
            session: None,
            login_failures: 0,
            inflight: None,
        };
        match token {
            Some(token) => {
                let grant = conn
                    .authenticate(&pb::LoginRequest {
                        token,
                        ..Default::default()
                    })
                    .await?;
                conn.session = Some(Session {
                    user_id: grant.user_id,
                    device_id: grant.device_id,
                });
            }
            None if matches!(body, Body::Register(_) | Body::Login(_)) => {}
            None => {
                return Err(pb::Error::new(
                    ErrorCode::Unauthenticated,
                    "a bearer token is required",
                ))
            }
        }
        conn.handle(Envelope::new(1, body)).await;
        match call.wait().await {
            // Logout revokes the device and closes "the connection".
            Body::Kicked(_) => Ok(Body::Done(pb::Done {})),
            body => match error_in(&body) {
                Some(error) => Err(error.clone()),
                None => Ok(body),
            },
        }
    }

    /// No socket: one gRPC call. It is never registered as an online
    /// device, so it gets no pushes and changes no presence.
    fn detached(&self) -> bool {
        matches!(self.answers, Answers::Call(_))
    }

    pub(crate) fn reply(&self, req_id: u32, body: Body) {
        if let Some(error) = error_in(&body) {
            self.core.metrics().error(error.code);
        }
        self.answers.answer(req_id, body);
    }

    pub(crate) fn reply_error(&self, req_id: u32, error: pb::Error) {
        self.reply(req_id, Body::Error(error));
    }

    fn close_with_error(&self, req_id: u32, code: ErrorCode, message: &str) {
        self.core.metrics().error(code as i32);
        let error = Body::Error(pb::Error::new(code, message));
        self.answers.close_with(req_id, Some(error));
    }

    /// Takes a token from this connection's frame bucket.
    fn frame_verdict(&mut self) -> Verdict {
        let limits = &self.core.shared.config.limits;
        self.frames.check(
            limits.frame_rate(),
            limits.flood_refusals_per_sec,
            std::time::Instant::now(),
        )
    }

    /// The one answer a frame over the rate gets, naming its request.
    fn refuse_frame(&self, req_id: u32) {
        self.core.metrics().limited(Limit::FrameRate);
        let message = format!(
            "slow down: {} frames per second allowed; request {req_id} was not carried out",
            self.core.shared.config.limits.frames_per_sec
        );
        self.reply_error(req_id, pb::Error::new(ErrorCode::RateLimited, message));
    }

    /// Closes with a reason once every send this connection has in flight
    /// is answered: a message stored before the close is acked before it.
    async fn close_after_inflight(&self, req_id: u32, code: ErrorCode, message: &str) {
        if let Some(inflight) = &self.inflight {
            let limit = self.core.shared.config.server.max_inflight_sends as u64;
            // Every permit back means every ack is queued; the semaphore is
            // never closed, so an error here only skips the wait.
            let _ = inflight.acquire(limit).await;
        }
        self.close_with_error(req_id, code, message);
    }

    /// Handles one frame; `false` closes the connection.
    async fn handle(&mut self, envelope: Envelope) -> bool {
        CoreMetrics::inc(&self.core.metrics().frames_in);
        let req_id = envelope.req_id;
        let Some(body) = envelope.body else {
            self.close_after_inflight(req_id, ErrorCode::Protocol, "frame has no body")
                .await;
            return false;
        };
        let Some(session) = self.session.clone() else {
            return match body {
                Body::Register(request) => {
                    self.register(req_id, request).await;
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
                self.core.touch_directory(session.user_id);
                self.reply(
                    req_id,
                    Body::HeartbeatAck(pb::HeartbeatAck {
                        server_time_ms: now_ms() as i64,
                    }),
                )
            }
            Body::Send(request) => self.send(req_id, &session, request).await,
            Body::DeliveryAck(ack) => self.delivery_ack(req_id, &session, ack).await,
            Body::Sync(request) => self.sync(req_id, &session, request).await,
            Body::History(request) => self.history(req_id, &session, request).await,
            Body::GetUser(request) => self.get_user(req_id, &session, request).await,
            Body::MarkRead(request) => self.mark_read(req_id, &session, request).await,
            Body::Conversations(request) => self.conversations(req_id, &session, request).await,
            Body::Recall(request) => self.recall(req_id, &session, request).await,
            Body::Typing(request) => self.typing(req_id, &session, request).await,
            Body::Logout(_) => {
                // Logging out revokes this device's token, then closes.
                if let Err(error) = self
                    .sign_out_device(session.user_id, &session.device_id, "logged out")
                    .await
                {
                    tracing::warn!(code = error.code, "logout could not revoke the token");
                }
                // Say why here: the directory's kick may arrive after we close.
                let reason = "logged out".to_string();
                self.answers
                    .close_with(0, Some(Body::Kicked(pb::Kicked { reason })));
                return false;
            }
            Body::UpdateProfile(request) => self.update_profile(req_id, &session, request).await,
            Body::ChangePassword(request) => self.change_password(req_id, &session, request).await,
            Body::RefreshToken(_) => self.refresh_token(req_id, &session).await,
            Body::ListDevices(_) => self.list_devices(req_id, &session).await,
            Body::KickDevice(request) => self.kick_device(req_id, &session, request).await,
            Body::FriendRequest(request) => self.request_friend(req_id, &session, request).await,
            Body::RespondFriend(request) => self.respond_friend(req_id, &session, request).await,
            Body::DeleteFriend(request) => self.delete_friend(req_id, &session, request).await,
            Body::Block(request) => self.block(req_id, &session, request).await,
            Body::Friends(_) => self.friends(req_id, &session).await,
            Body::SearchUsers(request) => self.search_users(req_id, &session, request).await,
            Body::SetPresence(request) => self.set_presence(req_id, &session, request).await,
            Body::PresenceQuery(request) => self.presence_query(req_id, &session, request).await,
            Body::CreateGroup(request) => self.create_group(req_id, &session, request).await,
            Body::GetGroup(request) => self.get_group(req_id, &session, request).await,
            Body::UpdateGroup(request) => self.update_group(req_id, &session, request).await,
            Body::AddMembers(request) => self.add_members(req_id, &session, request).await,
            Body::RemoveMembers(request) => self.remove_members(req_id, &session, request).await,
            Body::LeaveGroup(request) => self.leave_group(req_id, &session, request).await,
            Body::TransferOwner(request) => self.transfer_owner(req_id, &session, request).await,
            Body::SetAdmin(request) => self.set_admin(req_id, &session, request).await,
            Body::DissolveGroup(request) => self.dissolve_group(req_id, &session, request).await,
            Body::GroupMembers(request) => self.group_members(req_id, &session, request).await,
            Body::MyGroups(request) => self.my_groups(req_id, &session, request).await,
            Body::Login(_) | Body::Register(_) => self.reply_error(
                req_id,
                pb::Error::new(
                    ErrorCode::BadRequest,
                    "already logged in on this connection",
                ),
            ),
            _ => self.reply_error(
                req_id,
                pb::Error::new(ErrorCode::BadRequest, "not a client request"),
            ),
        }
        true
    }

    async fn register(&self, req_id: u32, request: pb::RegisterRequest) {
        let fail = |error: pb::Error| {
            self.reply(
                req_id,
                Body::RegisterResp(pb::RegisterResponse {
                    success: false,
                    error: Some(error),
                    user_id: 0,
                }),
            )
        };
        if let Err(error) = validate_registration(&request) {
            return fail(error);
        }
        let now = std::time::Instant::now();
        if let Err(wait) = self.core.shared.limits.registration_allowed(self.peer, now) {
            self.core.metrics().limited(Limit::Registration);
            return fail(pb::Error::new(
                ErrorCode::RateLimited,
                format!(
                    "too many registrations from your address: retry in {} s",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let pb::RegisterRequest {
            username,
            password,
            phone,
            email,
            nickname,
        } = request;
        let hash = match self
            .core
            .hash(move || password::hash_password(&password))
            .await
        {
            Ok(Ok(hash)) => hash,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "password hashing failed");
                return fail(pb::Error::new(
                    ErrorCode::Internal,
                    "could not hash password",
                ));
            }
            Err(error) => return fail(error),
        };
        let user_id = self.core.next_id();
        let nickname = if nickname.is_empty() {
            username.clone()
        } else {
            nickname
        };
        let op = WriteOp::CreateAccount(NewAccount {
            user_id,
            username,
            password_hash: hash,
            phone,
            email,
            nickname,
            created_at_ms: now_ms() as i64,
        });
        match self.core.commit(op).await {
            Ok(WriteOutcome::Done) => {
                CoreMetrics::inc(&self.core.metrics().registrations);
                self.reply(
                    req_id,
                    Body::RegisterResp(pb::RegisterResponse {
                        success: true,
                        error: None,
                        user_id,
                    }),
                )
            }
            Ok(_) => fail(pb::Error::new(ErrorCode::Conflict, "username is taken")),
            Err(error) => fail(error),
        }
    }

    /// Logs in by token or password; `false` closes the connection.
    async fn login(&mut self, req_id: u32, request: pb::LoginRequest) -> bool {
        match self.authenticate(&request).await {
            Ok(LoginGrant {
                user_id,
                device_id,
                token,
                expire_at,
                new_device,
            }) => {
                CoreMetrics::inc(&self.core.metrics().logins_ok);
                self.begin_session(user_id, device_id.clone(), &request.device_type, new_device)
                    .await;
                self.reply(
                    req_id,
                    Body::LoginResp(pb::LoginResponse {
                        success: true,
                        user_id,
                        token,
                        expire_at: expire_at as i64,
                        error: None,
                        device_id,
                        heartbeat_secs: self.core.shared.config.server.heartbeat_secs,
                    }),
                );
                true
            }
            Err(error) => {
                CoreMetrics::inc(&self.core.metrics().logins_failed);
                self.login_failures += 1;
                let response = Body::LoginResp(pb::LoginResponse {
                    success: false,
                    error: Some(error),
                    ..Default::default()
                });
                if self.login_failures >= MAX_LOGIN_FAILURES {
                    self.answers.close_with(req_id, Some(response));
                    return false;
                }
                self.reply(req_id, response);
                true
            }
        }
    }

    /// Checks credentials and, for a password login, issues a token.
    async fn authenticate(&self, request: &pb::LoginRequest) -> Result<LoginGrant, pb::Error> {
        let tokens = &self.core.shared.tokens;
        if !request.token.is_empty() {
            let verified = tokens.verify(&request.token).map_err(|e| match e {
                TokenError::Expired => {
                    pb::Error::new(ErrorCode::TokenExpired, "token expired: log in again")
                }
                TokenError::Invalid => pb::Error::new(ErrorCode::Unauthenticated, "invalid token"),
            })?;
            if !request.device_id.is_empty() && request.device_id != verified.device_id {
                return Err(pb::Error::new(
                    ErrorCode::Unauthenticated,
                    "token was issued to another device",
                ));
            }
            let (user_id, device) = (verified.user_id, verified.device_id.clone());
            let stored = self
                .core
                .read(move |store| {
                    if store.account_by_id(user_id)?.is_none() {
                        return Ok(None);
                    }
                    store.device(user_id, &device)
                })
                .await?;
            // A revoked device (logout, kick, password change) has a newer epoch.
            if stored.is_none_or(|d| d.token_epoch != verified.epoch) {
                return Err(pb::Error::new(
                    ErrorCode::Unauthenticated,
                    "token revoked: log in with your password",
                ));
            }
            return Ok(LoginGrant {
                user_id,
                device_id: verified.device_id,
                token: request.token.clone(),
                expire_at: verified.expire_at,
                new_device: false,
            });
        }
        let wrong = || pb::Error::new(ErrorCode::Unauthenticated, "wrong username or password");
        if request.username.is_empty() || request.password.len() > MAX_PASSWORD_BYTES {
            return Err(wrong());
        }
        validate_device(&request.device_id, &request.device_type)?;
        let limits = &self.core.shared.limits;
        if let Err(wait) =
            limits.login_allowed(&request.username, self.peer, std::time::Instant::now())
        {
            self.core.metrics().limited(Limit::LoginBackoff);
            return Err(pb::Error::new(
                ErrorCode::RateLimited,
                format!(
                    "too many failed logins for this account or address: retry in {} s",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let username = request.username.clone();
        let account = self
            .core
            .read(move |store| store.account_by_username(&username))
            .await?;
        let password = request.password.clone();
        let (user_id, ok) = match account {
            Some(account) => {
                let hash = account.password_hash;
                let ok = self
                    .core
                    .hash(move || password::verify_password(&password, &hash))
                    .await?;
                (account.user_id, ok)
            }
            None => {
                self.core
                    .hash(move || password::verify_against_dummy(&password))
                    .await?;
                (0, false)
            }
        };
        if !ok {
            limits.login_failed(&request.username, self.peer, std::time::Instant::now());
            return Err(wrong());
        }
        limits.login_succeeded(&request.username);
        let device_id = if request.device_id.is_empty() {
            format!("dev-{}", self.core.next_id())
        } else {
            request.device_id.clone()
        };
        let devices = self.core.read(move |store| store.devices(user_id)).await?;
        let known = devices.iter().find(|d| d.device_id == device_id);
        let epoch = known.map_or(0, |d| d.token_epoch);
        // A signed-out device logging in again is new to the cap.
        let new_device = known.is_none_or(|d| d.signed_out);
        let devices: Vec<_> = devices.into_iter().filter(|d| !d.signed_out).collect();
        let cap = self.core.shared.config.auth.max_devices_per_user;
        if new_device && devices.len() >= cap {
            // Sign out an offline device if there is one, the stalest first
            // (devices are listed most recently seen first); only when all
            // are online does the stalest online one go.
            let online = self.core.online_devices(user_id).await;
            let victim = devices
                .iter()
                .rev()
                .find(|d| !online.contains(&d.device_id))
                .or(devices.last());
            if let Some(victim) = victim {
                self.sign_out_device(user_id, &victim.device_id, "signed out: too many devices")
                    .await?;
            }
        }
        let (token, expire_at) = tokens
            .issue(user_id, &device_id, epoch)
            .map_err(|_| pb::Error::new(ErrorCode::Internal, "could not issue token"))?;
        Ok(LoginGrant {
            user_id,
            device_id,
            token,
            expire_at,
            new_device,
        })
    }

    /// Revokes a device's tokens (durably) and closes it if online.
    pub(crate) async fn sign_out_device(
        &self,
        user_id: i64,
        device_id: &str,
        reason: &str,
    ) -> Result<bool, pb::Error> {
        let op = WriteOp::RevokeDevice {
            user_id,
            device_id: device_id.to_string(),
        };
        if self.core.commit(op).await? != WriteOutcome::Done {
            return Err(pb::Error::new(ErrorCode::NotFound, "no such device"));
        }
        Ok(self
            .core
            .kick_device(user_id, device_id.to_string(), reason)
            .await)
    }

    async fn begin_session(
        &mut self,
        user_id: i64,
        device_id: String,
        device_type: &str,
        new_device: bool,
    ) {
        let device_type = if device_type.is_empty() {
            "unknown".to_string()
        } else {
            device_type.to_string()
        };
        let touch = WriteOp::TouchDevice {
            user_id,
            device_id: device_id.clone(),
            device_type,
            seen_at_ms: now_ms() as i64,
        };
        if new_device {
            // The token just issued is only valid once its device row exists.
            if let Ok(done) = self.core.write(touch).await {
                let _ = done.await;
            }
        } else {
            // Last-seen bookkeeping is best effort: a full queue must not fail a login.
            let _ = self.core.shared.writer.try_submit(touch);
        }
        if self.detached() {
            return;
        }
        let (done, registered) = oneshot::channel();
        let owner = self.core.owner_of_user(user_id);
        self.core
            .route(
                owner,
                CoreMsg::Online {
                    user_id,
                    device_id: device_id.clone(),
                    conn_id: self.conn_id,
                    done,
                },
            )
            .await;
        let _ = registered.await;
        if let Answers::Socket(outbox) = &self.answers {
            outbox.set_logged_in();
        }
        self.session = Some(Session { user_id, device_id });
    }

    async fn send(&mut self, req_id: u32, session: &Session, request: pb::SendMessageRequest) {
        let received_at = std::time::Instant::now();
        let refuse = |error: pb::Error| {
            self.reply(
                req_id,
                Body::SendResp(pb::SendMessageResponse {
                    success: false,
                    error: Some(error),
                    ..Default::default()
                }),
            )
        };
        if !self.core.take_send(session.user_id) {
            return refuse(self.core.slow_down());
        }
        let server = &self.core.shared.config.server;
        let limits = payload::Limits {
            max_content_bytes: server.max_content_bytes,
            max_media_bytes: server.max_media_bytes,
        };
        let conv = match validate_send(&request, session.user_id, &limits) {
            Ok(conv) => conv,
            Err(error) => return refuse(error),
        };
        // A group's membership is checked where its messages are sequenced.
        if request.group_id == 0 {
            match self.core.user_exists(request.receiver_id).await {
                Ok(true) => {}
                Ok(false) => {
                    return refuse(pb::Error::new(ErrorCode::NotFound, "no such receiver"))
                }
                Err(error) => return refuse(error),
            }
        }
        if let Err(error) = self.core.wait_for_writer_room().await {
            return refuse(error);
        }
        // Bounds the acks one connection may await; past it, this read
        // loop waits here and the socket is not read.
        let limit = self.core.shared.config.server.max_inflight_sends as u64;
        let inflight = self
            .inflight
            .get_or_insert_with(|| Rc::new(Semaphore::new(limit)))
            .clone();
        let Ok(permit) = inflight.acquire_static_permit(1).await else {
            return;
        };
        let message = ChatMessage {
            conversation_id: conv.to_string(),
            seq: 0,
            server_msg_id: 0,
            sender_id: session.user_id,
            receiver_id: request.receiver_id,
            message_type: request.message_type,
            content: request.content,
            client_message_id: request.client_message_id,
            sent_at_ms: 0,
            sender_device: session.device_id.clone(),
            media: request.media,
            location: request.location,
            recalled: false,
            group_id: request.group_id,
            group_event: None,
        };
        let (reply, answer) = oneshot::channel();
        let job = SendJob {
            message,
            origin_conn: self.conn_id,
            command: None,
            reply,
        };
        let owner = self.core.owner_of_conversation(&conv);
        self.core
            .route(owner, CoreMsg::Sequence(Box::new(job)))
            .await;
        let answers = self.answers.clone();
        let core = self.core.clone();
        let conversation_id = conv.to_string();
        // The ack is awaited off the read loop so one connection can
        // pipeline sends; order is kept because Sequence was routed above.
        glommio::spawn_local(async move {
            let response = match answer.await {
                Ok(Ok(accepted)) => pb::SendMessageResponse {
                    success: true,
                    error: None,
                    server_msg_id: accepted.server_msg_id,
                    conversation_id,
                    seq: accepted.seq,
                    sent_at_ms: accepted.sent_at_ms,
                },
                Ok(Err(error)) => pb::SendMessageResponse {
                    success: false,
                    error: Some(error),
                    ..Default::default()
                },
                Err(_) => pb::SendMessageResponse {
                    success: false,
                    error: Some(pool_error(ourchat_workers::PoolError::Closed)),
                    ..Default::default()
                },
            };
            let metrics = core.metrics();
            match &response.error {
                Some(error) => metrics.error(error.code),
                None => metrics
                    .send_ack_us
                    .record(received_at.elapsed().as_micros() as u64),
            }
            answers.answer(req_id, Body::SendResp(response));
            // Released only once the ack is queued: a close waits for it.
            drop(permit);
        })
        .detach();
    }

    async fn delivery_ack(&self, req_id: u32, session: &Session, ack: pb::DeliveryAck) {
        let conv = match self.acked(&ack.conversation_id, session.user_id).await {
            Ok(conv) => conv,
            Err(error) => return self.reply_error(req_id, error),
        };
        if ack.seq <= 0 {
            return self.reply_error(
                req_id,
                pb::Error::new(ErrorCode::BadRequest, "seq must be positive"),
            );
        }
        // Cursors only move forward and a lost one costs a re-sync: the ack
        // joins the core's others and is not waited for.
        let first = self.core.acks.add(
            session.user_id,
            &session.device_id,
            conv.to_string(),
            ack.seq,
        );
        if first {
            let core = self.core.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(crate::acks::ACK_DELAY).await;
                for op in core.acks.take() {
                    if let Err(error) = core.write(op).await {
                        tracing::debug!(?error, "a delivery ack was not stored");
                    }
                }
            })
            .detach();
        }
    }

    async fn sync(&self, req_id: u32, session: &Session, request: pb::SyncRequest) {
        let mut since = std::collections::HashMap::new();
        for cursor in request.since {
            // Group membership is checked below: only the user's own
            // conversations are walked, each clamped to what they may see.
            let conv = match cursor.conversation_id.parse::<ConversationId>() {
                Ok(conv @ ConversationId::Group(_)) => Ok(conv),
                _ => member_conversation(&cursor.conversation_id, session.user_id),
            };
            match conv {
                Ok(conv) => {
                    since.insert(conv.to_string(), cursor.seq.max(0));
                }
                Err(error) => return self.reply_error(req_id, error),
            }
        }
        let limit = page_size(request.limit);
        let user_id = session.user_id;
        let device_id = session.device_id.clone();
        let result = self
            .core
            .read(move |store| {
                let mut messages = Vec::new();
                let mut has_more = false;
                for cursor in store.conversation_cursors(user_id, &device_id)? {
                    let from = since
                        .get(&cursor.conversation_id)
                        .copied()
                        .unwrap_or(cursor.delivered_seq)
                        .max(cursor.visible.from_seq - 1);
                    let last = cursor
                        .visible
                        .to_seq
                        .map_or(cursor.last_seq, |to| to.min(cursor.last_seq));
                    if last <= from {
                        continue;
                    }
                    let room = limit - messages.len();
                    if room == 0 {
                        has_more = true;
                        break;
                    }
                    let mut page = store.messages_after(&cursor.conversation_id, from, room)?;
                    page.retain(|m| m.seq <= last);
                    if page.last().is_some_and(|m| m.seq < last) {
                        has_more = true;
                    }
                    messages.extend(page);
                }
                Ok(pb::SyncResponse { messages, has_more })
            })
            .await;
        match result {
            Ok(response) => self.reply(req_id, Body::SyncResp(response)),
            Err(error) => self.reply_error(req_id, error),
        }
    }

    async fn history(&self, req_id: u32, session: &Session, request: pb::HistoryRequest) {
        if request.before_seq < 0 {
            return self.reply_error(
                req_id,
                pb::Error::new(
                    ErrorCode::BadRequest,
                    "before_seq must be 0 (from the newest) or a positive seq",
                ),
            );
        }
        let conv = if request.conversation_id.is_empty() {
            match ConversationId::direct(session.user_id, request.peer_id) {
                Some(conv) if request.peer_id > 0 => Ok((conv, Visibility::default())),
                _ => Err(pb::Error::new(
                    ErrorCode::BadRequest,
                    "name a conversation_id or another user's peer_id",
                )),
            }
        } else {
            self.visible(&request.conversation_id, session.user_id)
                .await
        };
        let (conv, visible) = match conv {
            Ok(found) => found,
            Err(error) => return self.reply_error(req_id, error),
        };
        let limit = page_size(request.limit);
        let id = conv.to_string();
        let result = self
            .core
            .read(move |store| {
                // Pages stop at the window: after a user left, nothing
                // newer; before they joined, nothing older.
                let mut before = request.before_seq;
                if let Some(to) = visible.to_seq {
                    if before <= 0 || before > to {
                        before = to + 1;
                    }
                }
                let mut messages = store.history(&id, before, limit + 1)?;
                messages.retain(|m| m.seq >= visible.from_seq);
                Ok(messages)
            })
            .await;
        match result {
            Ok(mut messages) => {
                let has_more = messages.len() > limit;
                messages.truncate(limit);
                self.reply(
                    req_id,
                    Body::HistoryResp(pb::HistoryResponse {
                        conversation_id: conv.to_string(),
                        messages,
                        has_more,
                    }),
                );
            }
            Err(error) => self.reply_error(req_id, error),
        }
    }

    async fn get_user(&self, req_id: u32, session: &Session, request: pb::GetUserRequest) {
        let username = request.username;
        let user_id = request.user_id;
        if username.is_empty() == (user_id == 0) {
            return self.reply_error(
                req_id,
                pb::Error::new(
                    ErrorCode::BadRequest,
                    "give exactly one of user_id or username",
                ),
            );
        }
        let result = self
            .core
            .read(move |store| {
                if username.is_empty() {
                    store.account_by_id(user_id)
                } else {
                    store.account_by_username(&username)
                }
            })
            .await;
        match result {
            Ok(Some(account)) => self.reply(
                req_id,
                Body::UserProfile(profile_of(account, session.user_id)),
            ),
            Ok(None) => {
                self.reply_error(req_id, pb::Error::new(ErrorCode::NotFound, "no such user"))
            }
            Err(error) => self.reply_error(req_id, error),
        }
    }
}

/// A user's profile as `viewer` may see it: contact fields are private.
pub(crate) fn profile_of(account: ourchat_storage::Account, viewer: i64) -> pb::UserProfile {
    let own = account.user_id == viewer;
    pb::UserProfile {
        user_id: account.user_id,
        username: account.username,
        nickname: account.nickname,
        avatar_url: account.avatar_url,
        signature: account.signature,
        phone: if own { account.phone } else { String::new() },
        email: if own { account.email } else { String::new() },
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

const MAX_USERNAME_CHARS: usize = 32;
pub(crate) const MIN_PASSWORD_BYTES: usize = 8;
/// Argon2 accepts long inputs, but nobody types 1 KiB passwords.
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;
const MAX_PROFILE_FIELD_CHARS: usize = 64;
const MAX_DEVICE_FIELD_CHARS: usize = 64;

pub(crate) fn bad(message: &str) -> pb::Error {
    pb::Error::new(ErrorCode::BadRequest, message)
}

pub(crate) fn validate_registration(request: &pb::RegisterRequest) -> Result<(), pb::Error> {
    let name = &request.username;
    let name_ok = (3..=MAX_USERNAME_CHARS).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(bad(
            "username must be 3-32 characters of letters, digits, '_', '.', '-'",
        ));
    }
    if !(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&request.password.len()) {
        return Err(bad("password must be 8-1024 bytes"));
    }
    for (field, value) in [
        ("phone", &request.phone),
        ("email", &request.email),
        ("nickname", &request.nickname),
    ] {
        if value.chars().count() > MAX_PROFILE_FIELD_CHARS || value.chars().any(char::is_control) {
            return Err(bad(&format!(
                "{field} must be at most 64 characters, no control characters"
            )));
        }
    }
    Ok(())
}

fn validate_device(device_id: &str, device_type: &str) -> Result<(), pb::Error> {
    for value in [device_id, device_type] {
        if value.chars().count() > MAX_DEVICE_FIELD_CHARS || value.chars().any(char::is_control) {
            return Err(bad(
                "device_id and device_type must be at most 64 characters, no control characters",
            ));
        }
    }
    Ok(())
}

/// Checks a send and returns its conversation. The sender is always the
/// session's user; a `sender_id` field naming someone else is refused.
fn validate_send(
    request: &pb::SendMessageRequest,
    sender: i64,
    limits: &payload::Limits,
) -> Result<ConversationId, pb::Error> {
    if request.sender_id != 0 && request.sender_id != sender {
        return Err(pb::Error::new(
            ErrorCode::Forbidden,
            "sender_id must be your own user id (or 0)",
        ));
    }
    let conv = match (request.receiver_id, request.group_id) {
        (0, group_id) if group_id > 0 => ConversationId::Group(group_id),
        (receiver_id, 0) if receiver_id > 0 => ConversationId::direct(sender, receiver_id)
            .ok_or_else(|| bad("cannot send a message to yourself"))?,
        _ => return Err(bad("give exactly one of receiver_id or group_id")),
    };
    if request.client_message_id <= 0 {
        return Err(bad(
            "client_message_id must be a positive number (it makes resends safe)",
        ));
    }
    payload::validate(request, limits).map_err(|e| bad(&e))?;
    Ok(conv)
}

impl Connection {
    /// Parses a conversation id and checks `user_id` may see it: a side of
    /// a 1:1, or a present or past member of a group (with the seqs they
    /// may see). Anything else is refused without saying whether it exists.
    pub(crate) async fn visible(
        &self,
        id: &str,
        user_id: i64,
    ) -> Result<(ConversationId, Visibility), pb::Error> {
        let conv: ConversationId = id.parse().map_err(|_| bad("invalid conversation_id"))?;
        if let ConversationId::Group(_) = conv {
            let id = conv.to_string();
            return match self
                .core
                .read(move |store| store.visibility(user_id, &id))
                .await?
            {
                Some(visible) => Ok((conv, visible)),
                None => Err(not_member()),
            };
        }
        if !conv.is_direct_member(user_id) {
            return Err(not_member());
        }
        Ok((conv, Visibility::default()))
    }

    /// The conversation a delivery ack names, when the user may see it.
    /// Every member acks every group message: a group's visibility is
    /// read from the store once per user and core, then remembered (a
    /// past member keeps what they could see, so it never goes stale).
    async fn acked(&self, id: &str, user_id: i64) -> Result<ConversationId, pb::Error> {
        let group_viewers = &self.core.group_viewers;
        if let Ok(conv @ ConversationId::Group(_)) = id.parse() {
            if group_viewers.contains(&(user_id, conv)) {
                return Ok(conv);
            }
        }
        let (conv, _) = self.visible(id, user_id).await?;
        if let ConversationId::Group(_) = conv {
            group_viewers.insert((user_id, conv));
        }
        Ok(conv)
    }
}

fn not_member() -> pb::Error {
    pb::Error::new(ErrorCode::Forbidden, "not a member of this conversation")
}

/// Parses a conversation id the user belongs to; anything else is refused
/// without saying whether it exists.
pub(crate) fn member_conversation(id: &str, user_id: i64) -> Result<ConversationId, pb::Error> {
    let conv: ConversationId = id.parse().map_err(|_| bad("invalid conversation_id"))?;
    if !conv.is_direct_member(user_id) {
        return Err(not_member());
    }
    Ok(conv)
}

pub(crate) fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

#[cfg(test)]
mod tests {
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
        let accept_size = future_size(&accept);
        assert!(accept_size <= 900, "accept's future is {accept_size} bytes");
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
        // With its two `Rc` counts, a 96-byte allocation (see `Outbox`).
        let outbox = std::mem::size_of::<Outbox>();
        assert!(outbox <= 80, "an outbox is {outbox} bytes");
    }

    fn send(sender: i64, receiver: i64, content: &str, cmid: i64) -> pb::SendMessageRequest {
        pb::SendMessageRequest {
            sender_id: sender,
            receiver_id: receiver,
            message_type: 0,
            content: content.into(),
            client_message_id: cmid,
            ..Default::default()
        }
    }

    const LIMITS: payload::Limits = payload::Limits {
        max_content_bytes: 10,
        max_media_bytes: 100,
    };

    #[test]
    fn sends_are_validated() {
        assert!(validate_send(&send(0, 2, "hi", 1), 1, &LIMITS).is_ok());
        assert!(validate_send(&send(1, 2, "hi", 1), 1, &LIMITS).is_ok());
        let forged = validate_send(&send(3, 2, "hi", 1), 1, &LIMITS).unwrap_err();
        assert_eq!(forged.code, ErrorCode::Forbidden as i32);
        for bad in [
            send(0, 1, "hi", 1),
            send(0, 0, "hi", 1),
            send(0, 2, "", 1),
            send(0, 2, "hi", 0),
            send(0, 2, "this is too long", 1),
        ] {
            assert_eq!(
                validate_send(&bad, 1, &LIMITS).unwrap_err().code,
                ErrorCode::BadRequest as i32
            );
        }
        let mut unknown = send(0, 2, "hi", 1);
        unknown.message_type = 99;
        assert!(validate_send(&unknown, 1, &LIMITS).is_err());
    }

    #[test]
    fn registrations_are_validated() {
        let ok = pb::RegisterRequest {
            username: "alice_1".into(),
            password: "password1".into(),
            ..Default::default()
        };
        assert!(validate_registration(&ok).is_ok());
        for (name, pass) in [
            ("al", "password1"),
            ("bad name", "password1"),
            ("alice", "short"),
        ] {
            let request = pb::RegisterRequest {
                username: name.into(),
                password: pass.into(),
                ..Default::default()
            };
            assert!(validate_registration(&request).is_err(), "{name}");
        }
    }

    #[test]
    fn only_members_name_a_conversation() {
        assert!(member_conversation("si_1_2", 1).is_ok());
        assert_eq!(
            member_conversation("si_1_2", 3).unwrap_err().code,
            ErrorCode::Forbidden as i32
        );
        assert_eq!(
            member_conversation("nonsense", 1).unwrap_err().code,
            ErrorCode::BadRequest as i32
        );
    }
}
