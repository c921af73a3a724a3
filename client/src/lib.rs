//! The OurChat Rust client SDK (tokio): connect, register, log in, send,
//! receive pushes, ack, sync and page history over the binary frame
//! protocol. Used by the integration tests, the loadgen and `ourchat-cli`.
//!
//! One background task reads frames: replies (non-zero `req_id`) complete
//! the request that is waiting for them, pushes (`req_id` 0) queue up for
//! [`Client::next_push`]. Clients dedupe deliveries by seq with
//! [`SeqTracker`] (delivery is at-least-once).

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use ourchat_protocol::codec::{self, FrameDecoder};
use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_protocol::{Body, Envelope};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

pub use ourchat_protocol::pb::ErrorCode;
pub use tls::{TlsError, TlsSettings};

mod account;
mod groups;
mod messaging;
mod resilient;
mod social;
pub mod tls;

pub use resilient::{Backoff, Resilient};

/// How long a request waits for its reply by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// No reply in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server refused the request.
    #[error("server error {code:?}: {message}", code = ErrorCode::try_from(.0.code).unwrap_or(ErrorCode::Unspecified), message = .0.message)]
    Server(pb::Error),
    /// TLS could not be set up.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The server answered something this request does not expect.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => ErrorCode::try_from(e.code).ok(),
            _ => None,
        }
    }
}

/// Something the server sent unasked.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// A new message in one of our conversations (boxed: it is by far the
    /// largest push).
    Message(Box<ChatMessage>),
    /// Someone (the peer, or me on another device) read up to a seq.
    ReadReceipt(pb::ReadReceipt),
    /// A message was recalled.
    Recalled(pb::MessageRecalled),
    /// The peer is (not) typing.
    Typing(pb::Typing),
    /// A friend request, answer or removal that concerns me.
    Friend(pb::FriendEvent),
    /// A friend's presence changed.
    Presence(pb::PresenceInfo),
    /// An operator's notice.
    Notice(pb::SystemNotice),
    /// The server is closing this connection, and why.
    Kicked(String),
    /// A connection-level error (the server usually closes after it).
    Error(pb::Error),
    /// The connection closed.
    Closed,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Our user id.
    pub user_id: i64,
    /// Token for later logins.
    pub token: String,
    /// Token expiry, unix seconds.
    pub expire_at: i64,
    /// Device the server registered.
    pub device_id: String,
}

/// Where a sent message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAck {
    /// Conversation id.
    pub conversation_id: String,
    /// Seq in it.
    pub seq: i64,
    /// Server id.
    pub server_msg_id: i64,
    /// Server time.
    pub sent_at_ms: i64,
}

type Waiters = Arc<Mutex<HashMap<u32, oneshot::Sender<Envelope>>>>;

/// A connection to an OurChat server.
pub struct Client {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    waiters: Waiters,
    pushes: tokio::sync::Mutex<mpsc::UnboundedReceiver<Push>>,
    next_req: AtomicU32,
    user_id: AtomicI64,
    timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects to `addr` over plain TCP.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Self::connect_with(addr, None).await
    }

    /// Connects to `addr`, over TLS when `tls` is given.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        tls: Option<&TlsSettings>,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        match tls {
            Some(tls) => Ok(Self::over(tls.wrap(stream).await?)),
            None => Ok(Self::over(stream)),
        }
    }

    /// A client speaking over an already connected stream.
    pub fn over<S>(stream: S) -> Client
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut read, write) = tokio::io::split(stream);
        let waiters: Waiters = Arc::default();
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let reader_waiters = waiters.clone();
        let reader = tokio::spawn(async move {
            let decoder = FrameDecoder::new(16 << 20);
            let mut buf = BytesMut::with_capacity(8192);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(envelope)) => {
                        dispatch(envelope, &reader_waiters, &push_tx);
                        continue;
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // Dropping the waiters fails every pending request with Closed.
            reader_waiters.lock().map(|mut w| w.clear()).ok();
            let _ = push_tx.send(Push::Closed);
        });
        Client {
            writer: tokio::sync::Mutex::new(Box::new(write)),
            waiters,
            pushes: tokio::sync::Mutex::new(push_rx),
            next_req: AtomicU32::new(1),
            user_id: AtomicI64::new(0),
            timeout: DEFAULT_TIMEOUT,
            reader,
        }
    }

    /// Our user id once logged in (0 before).
    pub fn user_id(&self) -> i64 {
        self.user_id.load(Ordering::Relaxed)
    }

    /// Writes raw bytes to the socket (for protocol tests).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut writer = self.writer.lock().await;
        writer.write_all(bytes).await?;
        // TLS buffers records until flushed; plain TCP makes this a no-op.
        writer.flush().await?;
        Ok(())
    }

    /// Sends a body with no reply expected (`req_id` 0).
    pub async fn notify(&self, body: Body) -> Result<(), ClientError> {
        self.send_raw(&codec::encode_to_vec(&Envelope::new(0, body)))
            .await
    }

    /// Sends a request and waits for its reply body; an `Error` reply
    /// becomes [`ClientError::Server`].
    pub async fn request(&self, body: Body) -> Result<Body, ClientError> {
        let req_id = self.next_req.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| ClientError::Closed)?
            .insert(req_id, tx);
        if let Err(e) = self
            .send_raw(&codec::encode_to_vec(&Envelope::new(req_id, body)))
            .await
        {
            self.forget(req_id);
            return Err(e);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(envelope)) => match envelope.body {
                Some(Body::Error(error)) => Err(ClientError::Server(error)),
                Some(body) => Ok(body),
                None => Err(ClientError::Unexpected("empty reply".into())),
            },
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.forget(req_id);
                Err(ClientError::Timeout)
            }
        }
    }

    fn forget(&self, req_id: u32) {
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.remove(&req_id);
        }
    }

    /// Keeps the session alive; returns the server's clock.
    pub async fn heartbeat(&self) -> Result<i64, ClientError> {
        match self.request(Body::Heartbeat(pb::Heartbeat {})).await? {
            Body::HeartbeatAck(a) => Ok(a.server_time_ms),
            other => Err(unexpected(other)),
        }
    }

    /// Ends the session; the server closes the connection.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.notify(Body::Logout(pb::LogoutRequest {})).await
    }

    /// The next push, or `None` if none arrives within `wait`.
    pub async fn next_push(&self, wait: Duration) -> Option<Push> {
        let mut pushes = self.pushes.lock().await;
        match tokio::time::timeout(wait, pushes.recv()).await {
            Ok(Some(push)) => Some(push),
            Ok(None) => Some(Push::Closed),
            Err(_) => None,
        }
    }

    /// The next pushed message, skipping other pushes; `None` on timeout
    /// or close.
    pub async fn next_message(&self, wait: Duration) -> Option<ChatMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_push(left).await? {
                Push::Message(m) => return Some(*m),
                Push::Closed => return None,
                _ => continue,
            }
        }
    }
}

fn dispatch(envelope: Envelope, waiters: &Waiters, pushes: &mpsc::UnboundedSender<Push>) {
    if envelope.req_id != 0 {
        let waiter = waiters
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&envelope.req_id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(envelope);
            return;
        }
    }
    let push = match envelope.body {
        Some(Body::PushMessage(m)) => Push::Message(Box::new(m)),
        Some(Body::Kicked(k)) => Push::Kicked(k.reason),
        Some(Body::ReadReceipt(r)) => Push::ReadReceipt(r),
        Some(Body::Recalled(r)) => Push::Recalled(r),
        Some(Body::TypingPush(t)) => Push::Typing(t),
        Some(Body::FriendEvent(e)) => Push::Friend(e),
        Some(Body::Presence(p)) => Push::Presence(p),
        Some(Body::SystemNotice(n)) => Push::Notice(n),
        Some(Body::Error(e)) => Push::Error(e),
        _ => return,
    };
    let _ = pushes.send(push);
}

fn refused(error: Option<pb::Error>) -> ClientError {
    ClientError::Server(
        error.unwrap_or_else(|| pb::Error::new(ErrorCode::Unspecified, "refused without a reason")),
    )
}

fn unexpected(body: Body) -> ClientError {
    let name = format!("{body:?}");
    ClientError::Unexpected(name.chars().take(80).collect())
}

/// A random positive client message id.
pub fn new_client_message_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process from the OS; mixing in a counter
    // and the clock makes ids distinct within a process too.
    static COUNTER: AtomicI64 = AtomicI64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u64(ourchat_protocol::ids::now_ms());
    (hasher.finish() >> 1) as i64 | 1
}

/// Client-side dedupe: the highest seq seen per conversation. Delivery is
/// at-least-once and in seq order per conversation, so anything at or
/// below the mark is a duplicate.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    seen: HashMap<String, i64>,
}

impl SeqTracker {
    /// Records `message`; `true` if it is new.
    pub fn accept(&mut self, message: &ChatMessage) -> bool {
        let mark = self
            .seen
            .entry(message.conversation_id.clone())
            .or_insert(0);
        if message.seq > *mark {
            *mark = message.seq;
            true
        } else {
            false
        }
    }

    /// Highest seq seen per conversation, as sync cursors.
    pub fn cursors(&self) -> Vec<(String, i64)> {
        let mut cursors: Vec<_> = self.seen.iter().map(|(c, s)| (c.clone(), *s)).collect();
        cursors.sort();
        cursors
    }

    /// Highest seq seen in one conversation.
    pub fn last_seq(&self, conversation_id: &str) -> i64 {
        self.seen.get(conversation_id).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_drops_duplicates_and_old_seqs() {
        let mut tracker = SeqTracker::default();
        let m = |seq| ChatMessage {
            conversation_id: "si_1_2".into(),
            seq,
            ..Default::default()
        };
        assert!(tracker.accept(&m(1)));
        assert!(tracker.accept(&m(2)));
        assert!(!tracker.accept(&m(2)));
        assert!(!tracker.accept(&m(1)));
        assert_eq!(tracker.cursors(), vec![("si_1_2".to_string(), 2)]);
    }

    #[test]
    fn client_message_ids_are_positive_and_distinct() {
        let ids: std::collections::HashSet<i64> =
            (0..10_000).map(|_| new_client_message_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| *id > 0));
    }
}
