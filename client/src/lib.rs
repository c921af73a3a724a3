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
use ourchat_protocol::pb::{self, ChatMessage, MessageType};
use ourchat_protocol::{Body, Envelope};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

pub use ourchat_protocol::pb::ErrorCode;
pub use tls::{TlsError, TlsSettings};

mod resilient;
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

    /// Creates an account; returns its user id.
    pub async fn register(&self, username: &str, password: &str) -> Result<i64, ClientError> {
        let request = pb::RegisterRequest {
            username: username.into(),
            password: password.into(),
            ..Default::default()
        };
        match self.request(Body::Register(request)).await? {
            Body::RegisterResp(r) if r.success => Ok(r.user_id),
            Body::RegisterResp(r) => Err(refused(r.error)),
            other => Err(unexpected(other)),
        }
    }

    /// Logs in with a password on `device_id` (empty: the server picks one).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_id: &str,
    ) -> Result<Session, ClientError> {
        self.login_with(pb::LoginRequest {
            username: username.into(),
            password: password.into(),
            device_id: device_id.into(),
            device_type: "sdk".into(),
            token: String::new(),
        })
        .await
    }

    /// Logs in with a token from an earlier login.
    pub async fn login_token(&self, token: &str) -> Result<Session, ClientError> {
        self.login_with(pb::LoginRequest {
            token: token.into(),
            device_type: "sdk".into(),
            ..Default::default()
        })
        .await
    }

    /// Logs in with a full request.
    pub async fn login_with(&self, request: pb::LoginRequest) -> Result<Session, ClientError> {
        match self.request(Body::Login(request)).await? {
            Body::LoginResp(r) if r.success => {
                self.user_id.store(r.user_id, Ordering::Relaxed);
                Ok(Session {
                    user_id: r.user_id,
                    token: r.token,
                    expire_at: r.expire_at,
                    device_id: r.device_id,
                })
            }
            Body::LoginResp(r) => Err(refused(r.error)),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a text message with a fresh client message id.
    pub async fn send_text(&self, receiver_id: i64, text: &str) -> Result<SendAck, ClientError> {
        self.send_message(
            receiver_id,
            MessageType::Text,
            text,
            new_client_message_id(),
        )
        .await
    }

    /// Sends a message; resending with the same `client_message_id` returns
    /// the first send's ack and stores nothing new.
    pub async fn send_message(
        &self,
        receiver_id: i64,
        message_type: MessageType,
        content: &str,
        client_message_id: i64,
    ) -> Result<SendAck, ClientError> {
        self.send_request(pb::SendMessageRequest {
            sender_id: 0,
            receiver_id,
            message_type: message_type as i32,
            content: content.into(),
            client_message_id,
            ..Default::default()
        })
        .await
    }

    /// Sends a media message (image, voice, video, file) with a fresh id.
    pub async fn send_media(
        &self,
        receiver_id: i64,
        message_type: MessageType,
        media: pb::MediaPayload,
        caption: &str,
    ) -> Result<SendAck, ClientError> {
        self.send_request(pb::SendMessageRequest {
            receiver_id,
            message_type: message_type as i32,
            content: caption.into(),
            client_message_id: new_client_message_id(),
            media: Some(Box::new(media)),
            ..Default::default()
        })
        .await
    }

    /// Sends a location with a fresh id.
    pub async fn send_location(
        &self,
        receiver_id: i64,
        location: pb::LocationPayload,
    ) -> Result<SendAck, ClientError> {
        self.send_request(pb::SendMessageRequest {
            receiver_id,
            message_type: MessageType::Location as i32,
            client_message_id: new_client_message_id(),
            location: Some(Box::new(location)),
            ..Default::default()
        })
        .await
    }

    /// Sends a full request.
    pub async fn send_request(
        &self,
        request: pb::SendMessageRequest,
    ) -> Result<SendAck, ClientError> {
        match self.request(Body::Send(request)).await? {
            Body::SendResp(r) if r.success => Ok(SendAck {
                conversation_id: r.conversation_id,
                seq: r.seq,
                server_msg_id: r.server_msg_id,
                sent_at_ms: r.sent_at_ms,
            }),
            Body::SendResp(r) => Err(refused(r.error)),
            other => Err(unexpected(other)),
        }
    }

    /// Tells the server this device has everything up to `seq`.
    pub async fn ack(&self, conversation_id: &str, seq: i64) -> Result<(), ClientError> {
        self.notify(Body::DeliveryAck(pb::DeliveryAck {
            conversation_id: conversation_id.into(),
            seq,
        }))
        .await
    }

    /// One page of what this device has not seen; `since` overrides the
    /// stored delivery cursor per conversation.
    pub async fn sync_page(
        &self,
        since: &[(String, i64)],
        limit: u32,
    ) -> Result<pb::SyncResponse, ClientError> {
        let request = pb::SyncRequest {
            since: since
                .iter()
                .map(|(conversation_id, seq)| pb::ConversationCursor {
                    conversation_id: conversation_id.clone(),
                    seq: *seq,
                })
                .collect(),
            limit,
        };
        match self.request(Body::Sync(request)).await? {
            Body::SyncResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Everything missed, page by page, deduped through `tracker`; acks
    /// the new high-water mark of each conversation.
    pub async fn sync_all(
        &self,
        tracker: &mut SeqTracker,
    ) -> Result<Vec<ChatMessage>, ClientError> {
        let mut fresh = Vec::new();
        loop {
            let page = self.sync_page(&tracker.cursors(), 0).await?;
            let more = page.has_more && !page.messages.is_empty();
            fresh.extend(page.messages.into_iter().filter(|m| tracker.accept(m)));
            if !more {
                break;
            }
        }
        for (conversation_id, seq) in tracker.cursors() {
            self.ack(&conversation_id, seq).await?;
        }
        Ok(fresh)
    }

    /// One page of the 1:1 conversation with `peer_id`, newest first,
    /// before `before_seq` (0: from the newest).
    pub async fn history(
        &self,
        peer_id: i64,
        before_seq: i64,
        limit: u32,
    ) -> Result<pb::HistoryResponse, ClientError> {
        self.history_of(pb::HistoryRequest {
            peer_id,
            before_seq,
            limit,
            ..Default::default()
        })
        .await
    }

    /// One page of history for a full request.
    pub async fn history_of(
        &self,
        request: pb::HistoryRequest,
    ) -> Result<pb::HistoryResponse, ClientError> {
        match self.request(Body::History(request)).await? {
            Body::HistoryResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Looks a user up by username.
    pub async fn find_user(&self, username: &str) -> Result<pb::UserProfile, ClientError> {
        let request = pb::GetUserRequest {
            username: username.into(),
            user_id: 0,
        };
        match self.request(Body::GetUser(request)).await? {
            Body::UserProfile(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Looks a user up by id.
    pub async fn user(&self, user_id: i64) -> Result<pb::UserProfile, ClientError> {
        let request = pb::GetUserRequest {
            username: String::new(),
            user_id,
        };
        match self.request(Body::GetUser(request)).await? {
            Body::UserProfile(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Marks the conversation read up to `seq`; returns my read cursor and
    /// what is still unread.
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        seq: i64,
    ) -> Result<pb::MarkReadResponse, ClientError> {
        let request = pb::MarkReadRequest {
            conversation_id: conversation_id.into(),
            seq,
        };
        match self.request(Body::MarkRead(request)).await? {
            Body::MarkReadResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// One page of my conversations, most recently active first; pass the
    /// last summary of a page as `after` for the next.
    pub async fn conversations(
        &self,
        limit: u32,
        after: Option<&pb::ConversationSummary>,
    ) -> Result<pb::ConversationsResponse, ClientError> {
        let request = pb::ConversationsRequest {
            limit,
            before_at_ms: after.map_or(0, |c| c.last_at_ms),
            before_conversation_id: after.map(|c| c.conversation_id.clone()).unwrap_or_default(),
        };
        match self.request(Body::Conversations(request)).await? {
            Body::ConversationsResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Recalls one of my messages (within the server's recall window).
    pub async fn recall(&self, conversation_id: &str, seq: i64) -> Result<(), ClientError> {
        let request = pb::RecallRequest {
            conversation_id: conversation_id.into(),
            seq,
        };
        match self.request(Body::Recall(request)).await? {
            Body::RecallResp(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Tells `peer_id` I am (not) typing. Fire and forget.
    pub async fn typing(&self, peer_id: i64, typing: bool) -> Result<(), ClientError> {
        self.notify(Body::Typing(pb::Typing {
            peer_id,
            typing,
            ..Default::default()
        }))
        .await
    }

    /// Changes the profile fields that are `Some`; returns the new profile.
    pub async fn update_profile(
        &self,
        update: pb::UpdateProfileRequest,
    ) -> Result<pb::UserProfile, ClientError> {
        match self.request(Body::UpdateProfile(update)).await? {
            Body::UserProfile(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Changes the password; every other device is signed out. Returns how
    /// many were.
    pub async fn change_password(&self, old: &str, new: &str) -> Result<u32, ClientError> {
        let request = pb::ChangePasswordRequest {
            old_password: old.into(),
            new_password: new.into(),
        };
        match self.request(Body::ChangePassword(request)).await? {
            Body::ChangePasswordResp(r) => Ok(r.devices_signed_out),
            other => Err(unexpected(other)),
        }
    }

    /// A fresh token for this device.
    pub async fn refresh_token(&self) -> Result<pb::RefreshTokenResponse, ClientError> {
        match self
            .request(Body::RefreshToken(pb::RefreshTokenRequest {}))
            .await?
        {
            Body::RefreshTokenResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// My devices, most recently seen first, with whether each is online.
    pub async fn devices(&self) -> Result<Vec<pb::DeviceInfo>, ClientError> {
        match self
            .request(Body::ListDevices(pb::ListDevicesRequest {}))
            .await?
        {
            Body::ListDevicesResp(r) => Ok(r.devices),
            other => Err(unexpected(other)),
        }
    }

    /// Signs one of my other devices out; returns whether it was online.
    pub async fn kick_device(&self, device_id: &str) -> Result<bool, ClientError> {
        let request = pb::KickDeviceRequest {
            device_id: device_id.into(),
        };
        match self.request(Body::KickDevice(request)).await? {
            Body::KickDeviceResp(r) => Ok(r.was_online),
            other => Err(unexpected(other)),
        }
    }

    async fn expect_done(&self, body: Body) -> Result<(), ClientError> {
        match self.request(body).await? {
            Body::Done(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Asks `user_id` to be friends (accepts, if they asked first).
    pub async fn request_friend(&self, user_id: i64, note: &str) -> Result<(), ClientError> {
        self.expect_done(Body::FriendRequest(pb::FriendRequestRequest {
            user_id,
            note: note.into(),
        }))
        .await
    }

    /// Accepts or rejects `from`'s friend request.
    pub async fn answer_friend(&self, from: i64, accept: bool) -> Result<(), ClientError> {
        self.expect_done(Body::RespondFriend(pb::RespondFriendRequest {
            from_user_id: from,
            accept,
        }))
        .await
    }

    /// Ends a friendship.
    pub async fn delete_friend(&self, user_id: i64) -> Result<(), ClientError> {
        self.expect_done(Body::DeleteFriend(pb::DeleteFriendRequest { user_id }))
            .await
    }

    /// Blocks (or, with `false`, unblocks) a user.
    pub async fn block(&self, user_id: i64, block: bool) -> Result<(), ClientError> {
        self.expect_done(Body::Block(pb::BlockRequest { user_id, block }))
            .await
    }

    /// My friends (with online state), pending requests and blocked users.
    pub async fn friends(&self) -> Result<pb::FriendsResponse, ClientError> {
        match self.request(Body::Friends(pb::FriendsRequest {})).await? {
            Body::FriendsResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Users whose username, nickname, phone or email starts with `query`.
    pub async fn search_users(
        &self,
        query: &str,
        limit: u32,
        after_user_id: i64,
    ) -> Result<pb::SearchUsersResponse, ClientError> {
        let request = pb::SearchUsersRequest {
            query: query.into(),
            limit,
            after_user_id,
        };
        match self.request(Body::SearchUsers(request)).await? {
            Body::SearchUsersResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Marks this device away (or back online).
    pub async fn set_presence(&self, state: pb::PresenceState) -> Result<(), ClientError> {
        self.expect_done(Body::SetPresence(pb::SetPresenceRequest {
            state: state as i32,
        }))
        .await
    }

    /// Presence of these users (only friends and myself are answered).
    pub async fn presence(&self, user_ids: &[i64]) -> Result<Vec<pb::PresenceInfo>, ClientError> {
        let query = pb::PresenceQuery {
            user_ids: user_ids.to_vec(),
        };
        match self.request(Body::PresenceQuery(query)).await? {
            Body::PresenceList(list) => Ok(list.users),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a text to a group I am in, with a fresh id.
    pub async fn send_group_text(&self, group_id: i64, text: &str) -> Result<SendAck, ClientError> {
        self.send_request(pb::SendMessageRequest {
            group_id,
            message_type: MessageType::Text as i32,
            content: text.into(),
            client_message_id: new_client_message_id(),
            ..Default::default()
        })
        .await
    }

    /// Creates a group with me as owner; returns its id.
    pub async fn create_group(
        &self,
        name: &str,
        member_ids: &[i64],
        description: &str,
    ) -> Result<i64, ClientError> {
        let request = pb::CreateGroupRequest {
            owner_id: 0,
            group_name: name.into(),
            member_ids: member_ids.to_vec(),
            description: description.into(),
            avatar_url: String::new(),
        };
        match self.request(Body::CreateGroup(request)).await? {
            Body::CreateGroupResp(r) if r.success => Ok(r.group_id),
            Body::CreateGroupResp(r) => Err(refused(r.error)),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a group change; returns the seq of the event it stored.
    pub async fn group_change(&self, body: Body) -> Result<i64, ClientError> {
        match self.request(body).await? {
            Body::GroupChangeResp(r) => Ok(r.seq),
            other => Err(unexpected(other)),
        }
    }

    /// Adds members (owner or admin).
    pub async fn add_members(&self, group_id: i64, user_ids: &[i64]) -> Result<i64, ClientError> {
        self.group_change(Body::AddMembers(pb::AddMembersRequest {
            group_id,
            user_ids: user_ids.to_vec(),
        }))
        .await
    }

    /// Removes members (owner, or admin removing members).
    pub async fn remove_members(
        &self,
        group_id: i64,
        user_ids: &[i64],
    ) -> Result<i64, ClientError> {
        self.group_change(Body::RemoveMembers(pb::RemoveMembersRequest {
            group_id,
            user_ids: user_ids.to_vec(),
        }))
        .await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group_id: i64) -> Result<i64, ClientError> {
        self.group_change(Body::LeaveGroup(pb::LeaveGroupRequest { group_id }))
            .await
    }

    /// Makes `user_id` (not) an admin (owner only).
    pub async fn set_admin(
        &self,
        group_id: i64,
        user_id: i64,
        admin: bool,
    ) -> Result<i64, ClientError> {
        self.group_change(Body::SetAdmin(pb::SetAdminRequest {
            group_id,
            user_id,
            admin,
        }))
        .await
    }

    /// Hands the group to another member (owner only).
    pub async fn transfer_owner(
        &self,
        group_id: i64,
        new_owner_id: i64,
    ) -> Result<i64, ClientError> {
        self.group_change(Body::TransferOwner(pb::TransferOwnerRequest {
            group_id,
            new_owner_id,
        }))
        .await
    }

    /// Ends the group (owner only).
    pub async fn dissolve_group(&self, group_id: i64) -> Result<i64, ClientError> {
        self.group_change(Body::DissolveGroup(pb::DissolveGroupRequest { group_id }))
            .await
    }

    /// A group I am in.
    pub async fn group(&self, group_id: i64) -> Result<pb::GroupInfo, ClientError> {
        match self
            .request(Body::GetGroup(pb::GetGroupRequest { group_id }))
            .await?
        {
            Body::GroupInfo(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// One page of a group's members, by user id after `after_user_id`.
    pub async fn group_members(
        &self,
        group_id: i64,
        after_user_id: i64,
        limit: u32,
    ) -> Result<pb::GroupMembersResponse, ClientError> {
        let request = pb::GroupMembersRequest {
            group_id,
            after_user_id,
            limit,
        };
        match self.request(Body::GroupMembers(request)).await? {
            Body::GroupMembersResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// One page of my groups, by id after `after_group_id`.
    pub async fn my_groups(
        &self,
        after_group_id: i64,
        limit: u32,
    ) -> Result<pb::MyGroupsResponse, ClientError> {
        let request = pb::MyGroupsRequest {
            after_group_id,
            limit,
        };
        match self.request(Body::MyGroups(request)).await? {
            Body::MyGroupsResp(r) => Ok(r),
            other => Err(unexpected(other)),
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
