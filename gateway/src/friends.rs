//! Friends, requests, blocking and user search. Requests and answers are
//! durable before anyone is told; both sides' devices (not the one that
//! acted) get a `FriendEvent`. Blocking is enforced where sends are
//! sequenced: the conversation's owner core is told, so refusing a blocked
//! user's message costs no store read.

use ourchat_protocol::ids::now_ms;
use ourchat_protocol::pb::{self, FriendEventKind};
use ourchat_protocol::{Body, ConversationId, Envelope, ErrorCode};
use ourchat_storage::{WriteOp, WriteOutcome};

use crate::core::{encode_frame, CoreMsg};
use crate::handlers::{bad, profile_of, Caller, Session};

/// Longest note on a friend request.
const MAX_NOTE_CHARS: usize = 256;
/// Most users one search page returns.
const MAX_SEARCH_PAGE: usize = 50;
/// Shortest and longest search prefix.
const SEARCH_PREFIX_CHARS: std::ops::RangeInclusive<usize> = 1..=64;

impl Caller {
    /// Tells `other`'s devices and my other devices.
    async fn announce(&self, me: i64, other: i64, event: pb::FriendEvent) {
        let frame = encode_frame(&Envelope::new(0, Body::FriendEvent(event)));
        self.core.push_to_user(other, frame.clone(), 0).await;
        self.core.push_to_user(me, frame, self.conn_id).await;
    }

    /// `other` must be someone else who exists.
    async fn other_user(&self, me: i64, other: i64) -> Result<(), pb::Error> {
        if other <= 0 || other == me {
            return Err(bad("user_id must be another user"));
        }
        if !self.core.user_exists(other).await? {
            return Err(pb::Error::new(ErrorCode::NotFound, "no such user"));
        }
        Ok(())
    }

    pub(crate) async fn request_friend(
        &self,
        session: &Session,
        request: pb::FriendRequestRequest,
    ) -> Result<Body, pb::Error> {
        let result = self.request_friend_inner(session.user_id, request).await;
        result.map(|()| done())
    }

    async fn request_friend_inner(
        &self,
        me: i64,
        request: pb::FriendRequestRequest,
    ) -> Result<(), pb::Error> {
        let other = request.user_id;
        self.other_user(me, other).await?;
        if request.note.chars().count() > MAX_NOTE_CHARS
            || request.note.chars().any(char::is_control)
        {
            return Err(bad(
                "note must be at most 256 characters, no control characters",
            ));
        }
        let relation = self
            .core
            .read(move |store| store.relation(me, other))
            .await?;
        if relation.a_blocked_b {
            return Err(pb::Error::new(
                ErrorCode::Forbidden,
                "you blocked this user: unblock first",
            ));
        }
        if relation.b_blocked_a {
            return Err(pb::Error::new(
                ErrorCode::Forbidden,
                "this user does not accept your requests",
            ));
        }
        if relation.friends {
            return Err(pb::Error::new(ErrorCode::Conflict, "already friends"));
        }
        let at_ms = now_ms() as i64;
        if relation.b_requested_a {
            // They asked first: asking back is accepting.
            self.check_friend_room(me, other).await?;
            self.core
                .commit(WriteOp::AnswerFriend {
                    from: other,
                    to: me,
                    accept: true,
                    at_ms,
                })
                .await?;
            let event = pb::FriendEvent {
                kind: FriendEventKind::FriendAccepted as i32,
                from_user_id: other,
                to_user_id: me,
                note: String::new(),
            };
            self.announce(me, other, event).await;
            return Ok(());
        }
        self.core
            .commit(WriteOp::RequestFriend {
                from: me,
                to: other,
                note: request.note.clone(),
                at_ms,
            })
            .await?;
        let event = pb::FriendEvent {
            kind: FriendEventKind::FriendRequested as i32,
            from_user_id: me,
            to_user_id: other,
            note: request.note,
        };
        self.announce(me, other, event).await;
        Ok(())
    }

    /// Refuses a new friendship when either side is at `auth.max_friends`.
    async fn check_friend_room(&self, a: i64, b: i64) -> Result<(), pb::Error> {
        let cap = self.core.shared.config.auth.max_friends;
        let (count_a, count_b) = self
            .core
            .read(move |store| Ok((store.friends(a)?.len(), store.friends(b)?.len())))
            .await?;
        if count_a >= cap || count_b >= cap {
            return Err(pb::Error::new(
                ErrorCode::Conflict,
                format!("friend limit of {cap} reached"),
            ));
        }
        Ok(())
    }

    pub(crate) async fn respond_friend(
        &self,
        session: &Session,
        request: pb::RespondFriendRequest,
    ) -> Result<Body, pb::Error> {
        let me = session.user_id;
        let from = request.from_user_id;
        let result = async {
            if request.accept {
                self.check_friend_room(me, from).await?;
            }
            let op = WriteOp::AnswerFriend {
                from,
                to: me,
                accept: request.accept,
                at_ms: now_ms() as i64,
            };
            if self.core.commit(op).await? != WriteOutcome::Done {
                return Err(pb::Error::new(
                    ErrorCode::NotFound,
                    "no pending request from this user",
                ));
            }
            let kind = if request.accept {
                FriendEventKind::FriendAccepted
            } else {
                FriendEventKind::FriendRejected
            };
            let event = pb::FriendEvent {
                kind: kind as i32,
                from_user_id: from,
                to_user_id: me,
                note: String::new(),
            };
            self.announce(me, from, event).await;
            Ok(())
        }
        .await;
        result.map(|()| done())
    }

    pub(crate) async fn delete_friend(
        &self,
        session: &Session,
        request: pb::DeleteFriendRequest,
    ) -> Result<Body, pb::Error> {
        let (me, other) = (session.user_id, request.user_id);
        let result = async {
            if self
                .core
                .commit(WriteOp::Unfriend { a: me, b: other })
                .await?
                != WriteOutcome::Done
            {
                return Err(pb::Error::new(ErrorCode::NotFound, "not friends"));
            }
            let event = pb::FriendEvent {
                kind: FriendEventKind::FriendDeleted as i32,
                from_user_id: me,
                to_user_id: other,
                note: String::new(),
            };
            self.announce(me, other, event).await;
            Ok(())
        }
        .await;
        result.map(|()| done())
    }

    pub(crate) async fn block(
        &self,
        session: &Session,
        request: pb::BlockRequest,
    ) -> Result<Body, pb::Error> {
        let (me, other) = (session.user_id, request.user_id);
        let result = async {
            self.other_user(me, other).await?;
            let op = WriteOp::Block {
                user_id: me,
                blocked_id: other,
                block: request.block,
                at_ms: now_ms() as i64,
            };
            if self.core.commit(op).await? != WriteOutcome::Done {
                return Err(pb::Error::new(
                    ErrorCode::NotFound,
                    "this user is not blocked",
                ));
            }
            // Either side may still block the other after an unblock.
            let relation = self
                .core
                .read(move |store| store.relation(me, other))
                .await?;
            if let Some(conversation) = ConversationId::direct(me, other) {
                let owner = self.core.owner_of_conversation(&conversation);
                let blocked = relation.a_blocked_b || relation.b_blocked_a;
                let (done, applied) = futures::channel::oneshot::channel();
                let set = CoreMsg::SetBlocked {
                    conversation,
                    blocked,
                    done,
                };
                self.core.route(owner, set).await;
                let _ = applied.await;
                self.core.announce_change(conversation);
            }
            Ok(())
        }
        .await;
        result.map(|()| done())
    }

    pub(crate) async fn friends(&self, session: &Session) -> Result<Body, pb::Error> {
        let me = session.user_id;
        let listed = self
            .core
            .read(move |store| {
                let mut friends = Vec::new();
                for (friend_id, since_ms) in store.friends(me)? {
                    if let Some(account) = store.account_by_id(friend_id)? {
                        friends.push(pb::Friend {
                            user_id: friend_id,
                            username: account.username,
                            nickname: account.nickname,
                            online: false,
                            since_ms,
                        });
                    }
                }
                let (incoming, outgoing): (Vec<_>, Vec<_>) = store
                    .friend_requests(me)?
                    .into_iter()
                    .map(|r| pb::PendingFriendRequest {
                        from_user_id: r.from,
                        to_user_id: r.to,
                        note: r.note,
                        created_at_ms: r.created_at_ms,
                    })
                    .partition(|r| r.to_user_id == me);
                Ok(pb::FriendsResponse {
                    friends,
                    incoming,
                    outgoing,
                    blocked: store.blocked_by(me)?,
                })
            })
            .await;
        let mut response = listed?;
        for friend in &mut response.friends {
            friend.online = !self.core.online_devices(friend.user_id).await.is_empty();
        }
        Ok(Body::FriendsResp(response))
    }

    pub(crate) async fn search_users(
        &self,
        session: &Session,
        request: pb::SearchUsersRequest,
    ) -> Result<Body, pb::Error> {
        let query = request.query.trim().to_string();
        if !SEARCH_PREFIX_CHARS.contains(&query.chars().count()) {
            return Err(bad("query must be 1-64 characters"));
        }
        let limit = (request.limit as usize).clamp(1, MAX_SEARCH_PAGE);
        let after = request.after_user_id;
        let me = session.user_id;
        let found = self
            .core
            .read(move |store| store.search_users(&query, after, limit + 1))
            .await;
        let mut accounts = found?;
        let has_more = accounts.len() > limit;
        accounts.truncate(limit);
        let users = accounts.into_iter().map(|a| profile_of(a, me)).collect();
        Ok(Body::SearchUsersResp(pb::SearchUsersResponse {
            users,
            has_more,
        }))
    }
}

/// The reply to a request that only says it was done.
fn done() -> Body {
    Body::Done(pb::Done {})
}
