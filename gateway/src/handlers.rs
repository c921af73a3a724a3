//! Request handling, apart from any socket: a [`Caller`] (the core a
//! request runs on, and the connection it came from, if any) carries out
//! one request for a session and returns its reply or its refusal. A
//! client connection frames what it returns (`connection.rs`); a gRPC call
//! hands it to its caller as it is (`grpc.rs`, through [`call`]). The
//! handlers live by subject: `messages.rs`, `account.rs`, `friends.rs`,
//! `groups.rs`, `conversations.rs`, `presence.rs`.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use ourchat_protocol::pb;
use ourchat_protocol::{Body, ConversationId, ErrorCode};
use ourchat_storage::Visibility;

use crate::core::Core;

/// Largest page a History or Sync reply carries.
const MAX_PAGE: usize = 500;
/// Page size when the client does not ask for one.
const DEFAULT_PAGE: usize = 100;

/// Who the connection belongs to, once logged in.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) user_id: i64,
    /// Shared: a connection hands its session to every request it serves.
    pub(crate) device_id: Arc<str>,
}

/// Where a request runs and where it came from: all a handler needs.
pub(crate) struct Caller {
    pub(crate) core: Rc<Core>,
    /// The requesting connection, never pushed to for its own actions (a
    /// gRPC call has a fresh id of its own, so nothing is skipped).
    pub(crate) conn_id: u64,
    pub(crate) peer: Option<IpAddr>,
}

impl Caller {
    /// Carries out one request of a logged-in session: the reply, nothing
    /// (a delivery ack or a typing indicator that worked), or the refusal.
    /// Requests about the connection itself (login, logout, heartbeat) are
    /// its own (`Connection::handle`, [`call`]).
    pub(crate) async fn handle(
        &self,
        session: &Session,
        body: Body,
    ) -> Result<Option<Body>, pb::Error> {
        let reply = match body {
            Body::Send(request) => self.send(session, request).await,
            Body::DeliveryAck(ack) => return self.delivery_ack(session, ack).await.map(|()| None),
            Body::Typing(request) => return self.typing(session, request).await.map(|()| None),
            Body::Sync(request) => self.sync(session, request).await,
            Body::History(request) => self.history(session, request).await,
            Body::GetUser(request) => self.get_user(session, request).await,
            Body::MarkRead(request) => self.mark_read(session, request).await,
            Body::Conversations(request) => self.conversations(session, request).await,
            Body::Recall(request) => self.recall(session, request).await,
            Body::UpdateProfile(request) => self.update_profile(session, request).await,
            Body::ChangePassword(request) => self.change_password(session, request).await,
            Body::RefreshToken(_) => self.refresh_token(session).await,
            Body::ListDevices(_) => self.list_devices(session).await,
            Body::KickDevice(request) => self.kick_device(session, request).await,
            Body::FriendRequest(request) => self.request_friend(session, request).await,
            Body::RespondFriend(request) => self.respond_friend(session, request).await,
            Body::DeleteFriend(request) => self.delete_friend(session, request).await,
            Body::Block(request) => self.block(session, request).await,
            Body::Friends(_) => self.friends(session).await,
            Body::SearchUsers(request) => self.search_users(session, request).await,
            Body::SetPresence(request) => self.set_presence(session, request).await,
            Body::PresenceQuery(request) => self.presence_query(session, request).await,
            Body::CreateGroup(request) => self.create_group(session, request).await,
            Body::GetGroup(request) => self.get_group(session, request).await,
            Body::UpdateGroup(request) => self.update_group(session, request).await,
            Body::AddMembers(request) => self.add_members(session, request).await,
            Body::RemoveMembers(request) => self.remove_members(session, request).await,
            Body::LeaveGroup(request) => self.leave_group(session, request).await,
            Body::TransferOwner(request) => self.transfer_owner(session, request).await,
            Body::SetAdmin(request) => self.set_admin(session, request).await,
            Body::DissolveGroup(request) => self.dissolve_group(session, request).await,
            Body::GroupMembers(request) => self.group_members(session, request).await,
            Body::MyGroups(request) => self.my_groups(session, request).await,
            Body::Login(_) | Body::Register(_) => Err(pb::Error::new(
                ErrorCode::BadRequest,
                "already logged in on this connection",
            )),
            _ => Err(pb::Error::new(
                ErrorCode::BadRequest,
                "not a client request",
            )),
        };
        reply.map(Some)
    }
}

/// How a refusal of `request` is answered: in the request's own reply
/// where the protocol gives it an error field, else as `Error`.
pub(crate) fn refusal_for(request: &Body) -> fn(pb::Error) -> Body {
    match request {
        Body::Send(_) => |error| Body::SendResp(refused_send(error)),
        Body::Login(_) => |error| {
            Body::LoginResp(pb::LoginResponse {
                success: false,
                error: Some(error),
                ..Default::default()
            })
        },
        Body::Register(_) => |error| {
            Body::RegisterResp(pb::RegisterResponse {
                success: false,
                error: Some(error),
                user_id: 0,
            })
        },
        Body::CreateGroup(_) => |error| {
            Body::CreateGroupResp(pb::CreateGroupResponse {
                success: false,
                error: Some(error),
                ..Default::default()
            })
        },
        _ => Body::Error,
    }
}

/// A send's refusal, as its own reply carries it.
pub(crate) fn refused_send(error: pb::Error) -> pb::SendMessageResponse {
    pb::SendMessageResponse {
        success: false,
        error: Some(error),
        ..Default::default()
    }
}

/// Runs one request outside any socket (a gRPC call) through the same
/// handlers as a client frame: `token` authenticates it (revocation
/// included) unless it is Register or Login. The reply, or the refusal.
/// A call is never an online device: it gets no pushes and changes no
/// presence.
pub(crate) async fn call(
    core: Rc<Core>,
    token: Option<String>,
    peer: Option<IpAddr>,
    body: Body,
) -> Result<Body, pb::Error> {
    let caller = Caller {
        conn_id: core.new_conn_id(),
        core,
        peer,
    };
    let result = caller.call(token, body).await;
    if let Err(error) = &result {
        caller.core.metrics().error(error.code);
    }
    result
}

impl Caller {
    async fn call(&self, token: Option<String>, body: Body) -> Result<Body, pb::Error> {
        let (session, body) = match (token, body) {
            (None, Body::Register(request)) => return self.register(request).await,
            (None, Body::Login(request)) => return self.login_without_connection(request).await,
            (None, _) => {
                return Err(pb::Error::new(
                    ErrorCode::Unauthenticated,
                    "a bearer token is required",
                ))
            }
            (Some(token), body) => {
                let grant = self
                    .authenticate(&pb::LoginRequest {
                        token,
                        ..Default::default()
                    })
                    .await?;
                (grant.session(), body)
            }
        };
        if let Body::Logout(_) = body {
            self.sign_out_device(session.user_id, &session.device_id, "logged out")
                .await?;
            return Ok(Body::Done(pb::Done {}));
        }
        let reply = self.handle(&session, body).await?;
        Ok(reply.unwrap_or(Body::Done(pb::Done {})))
    }
}

impl Caller {
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
    pub(crate) async fn acked(&self, id: &str, user_id: i64) -> Result<ConversationId, pb::Error> {
        if let Some(known) = self.acked_now(id, user_id) {
            return known;
        }
        let (conv, _) = self.visible(id, user_id).await?;
        if let ConversationId::Group(_) = conv {
            self.core.group_viewers.insert((user_id, conv));
        }
        Ok(conv)
    }

    /// [`Caller::acked`]'s answer when it needs no store read (an id that
    /// does not parse, a direct conversation, a group remembered here);
    /// `None` when it does.
    pub(crate) fn acked_now(
        &self,
        id: &str,
        user_id: i64,
    ) -> Option<Result<ConversationId, pb::Error>> {
        let Ok(conv) = id.parse::<ConversationId>() else {
            return Some(Err(bad("invalid conversation_id")));
        };
        match conv {
            ConversationId::Group(_) => self
                .core
                .group_viewers
                .contains(&(user_id, conv))
                .then_some(Ok(conv)),
            _ if conv.is_direct_member(user_id) => Some(Ok(conv)),
            _ => Some(Err(not_member())),
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

pub(crate) fn bad(message: &str) -> pb::Error {
    pb::Error::new(ErrorCode::BadRequest, message)
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

    #[test]
    fn a_refusal_goes_where_the_protocol_puts_it() {
        let refused = |request: Body| refusal_for(&request)(bad("no"));
        let in_own_reply = [
            refused(Body::Send(Default::default())),
            refused(Body::Login(Default::default())),
            refused(Body::Register(Default::default())),
            refused(Body::CreateGroup(Default::default())),
        ];
        for reply in &in_own_reply {
            let error = match reply {
                Body::SendResp(r) if !r.success => r.error.as_ref(),
                Body::LoginResp(r) if !r.success => r.error.as_ref(),
                Body::RegisterResp(r) if !r.success => r.error.as_ref(),
                Body::CreateGroupResp(r) if !r.success => r.error.as_ref(),
                _ => None,
            };
            assert_eq!(error.map(|e| e.message.as_str()), Some("no"), "{reply:?}");
        }
        assert!(matches!(
            refused(Body::Friends(Default::default())),
            Body::Error(error) if error.code == ErrorCode::BadRequest as i32
        ));
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
