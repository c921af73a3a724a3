//! Requests about a conversation rather than one message: read receipts
//! (`MarkRead`), the conversation list with unread counts, recall, and
//! typing indicators. Reads run on reader threads, writes go through the
//! batched writer, and what the other side must see is pushed to every
//! online device of both users, or of every group member (never back to the
//! requesting connection). In a group, read receipts go only to the
//! reader's own devices: a receipt to 10,000 members per read would cost
//! more than the messages.

use ourchat_protocol::ids::now_ms;
use ourchat_protocol::pb;
use ourchat_protocol::{Body, ConversationId, Envelope, ErrorCode};
use ourchat_storage::{WriteOp, WriteOutcome};

use crate::core::encode_frame;
use crate::handlers::{bad, page_size, Caller, Session};

/// Most conversations one page of the list carries.
const MAX_CONVERSATION_PAGE: usize = 100;

impl Caller {
    /// Pushes `body` to every device of both sides of `conv` (of every
    /// member, for a group) but this one.
    async fn push_to_conversation(&self, conv: &ConversationId, me: i64, body: Body) {
        let frame = encode_frame(&Envelope::new(0, body));
        if let ConversationId::Group(group_id) = *conv {
            let members = self
                .core
                .read(move |store| store.group_members(group_id, 0, usize::MAX))
                .await;
            match members {
                Ok(members) => {
                    let user_ids: Vec<i64> = members.iter().map(|m| m.user_id).collect();
                    self.core
                        .deliver_to_users(&user_ids, frame, self.conn_id, None)
                        .await;
                }
                Err(error) => tracing::warn!(code = error.code, "group push skipped"),
            }
            return;
        }
        if let Some(peer) = conv.peer_of(me) {
            self.core.push_to_user(peer, frame.clone(), 0).await;
        }
        self.core.push_to_user(me, frame, self.conn_id).await;
    }

    pub(crate) async fn mark_read(
        &self,
        session: &Session,
        request: pb::MarkReadRequest,
    ) -> Result<Body, pb::Error> {
        let result = self.mark_read_inner(session, request).await;
        result.map(Body::MarkReadResp)
    }

    async fn mark_read_inner(
        &self,
        session: &Session,
        request: pb::MarkReadRequest,
    ) -> Result<pb::MarkReadResponse, pb::Error> {
        let (conv, visible) = self
            .visible(&request.conversation_id, session.user_id)
            .await?;
        if request.seq <= 0 {
            return Err(bad("seq must be positive"));
        }
        let (id, me) = (conv.to_string(), session.user_id);
        let (last_seq, read_before) = self
            .core
            .read(move |store| {
                let last = store.conversation_head(&id, 0)?.last_seq;
                Ok((last, store.read_seq(me, &id)?))
            })
            .await?;
        let last_seq = visible.to_seq.map_or(last_seq, |to| to.min(last_seq));
        if request.seq > last_seq {
            return Err(bad("seq is beyond the conversation's last message"));
        }
        let read_seq = read_before.max(request.seq);
        if read_seq > read_before {
            self.core
                .commit(WriteOp::MarkRead {
                    user_id: me,
                    conversation_id: conv.to_string(),
                    seq: read_seq,
                })
                .await?;
            let receipt = pb::ReadReceipt {
                conversation_id: conv.to_string(),
                reader_id: me,
                seq: read_seq,
            };
            if let ConversationId::Group(_) = conv {
                let frame = encode_frame(&Envelope::new(0, Body::ReadReceipt(receipt)));
                self.core.push_to_user(me, frame, self.conn_id).await;
            } else {
                self.push_to_conversation(&conv, me, Body::ReadReceipt(receipt))
                    .await;
            }
        }
        Ok(pb::MarkReadResponse {
            conversation_id: conv.to_string(),
            read_seq,
            unread: last_seq - read_seq,
        })
    }

    pub(crate) async fn conversations(
        &self,
        session: &Session,
        request: pb::ConversationsRequest,
    ) -> Result<Body, pb::Error> {
        let limit = page_size(request.limit).min(MAX_CONVERSATION_PAGE);
        let me = session.user_id;
        let before = (request.before_at_ms > 0 || !request.before_conversation_id.is_empty())
            .then_some((request.before_at_ms, request.before_conversation_id));
        let result = self
            .core
            .read(move |store| {
                let key = before.as_ref().map(|(at, id)| (*at, id.as_str()));
                let mut rows = store.conversations(me, key, limit + 1)?;
                let has_more = rows.len() > limit;
                rows.truncate(limit);
                let mut conversations = Vec::with_capacity(rows.len());
                for row in rows {
                    let conv = row.conversation_id.parse::<ConversationId>().ok();
                    let peer_id = conv.and_then(|c| c.peer_of(me)).unwrap_or(0);
                    let group_id = match conv {
                        Some(ConversationId::Group(group_id)) => group_id,
                        _ => 0,
                    };
                    let last_message = store.message(&row.conversation_id, row.last_seq)?;
                    let peer_read_seq = if peer_id > 0 {
                        store.read_seq(peer_id, &row.conversation_id)?
                    } else {
                        0
                    };
                    conversations.push(pb::ConversationSummary {
                        conversation_id: row.conversation_id,
                        peer_id,
                        last_message,
                        last_seq: row.last_seq,
                        read_seq: row.read_seq,
                        unread: (row.last_seq - row.read_seq).max(0),
                        peer_read_seq,
                        last_at_ms: row.last_at_ms,
                        group_id,
                    });
                }
                Ok(pb::ConversationsResponse {
                    conversations,
                    has_more,
                })
            })
            .await;
        result.map(Body::ConversationsResp)
    }

    pub(crate) async fn recall(
        &self,
        session: &Session,
        request: pb::RecallRequest,
    ) -> Result<Body, pb::Error> {
        let recalled = self.recall_inner(session, request).await?;
        Ok(Body::RecallResp(recalled))
    }

    async fn recall_inner(
        &self,
        session: &Session,
        request: pb::RecallRequest,
    ) -> Result<pb::MessageRecalled, pb::Error> {
        let (conv, visible) = self
            .visible(&request.conversation_id, session.user_id)
            .await?;
        if visible.to_seq.is_some() {
            return Err(pb::Error::new(
                ErrorCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        let me = session.user_id;
        let id = conv.to_string();
        let seq = request.seq;
        let message = self
            .core
            .read(move |store| store.message(&id, seq))
            .await?
            .ok_or_else(|| pb::Error::new(ErrorCode::NotFound, "no such message"))?;
        if message.message_type == pb::MessageType::GroupEvent as i32 {
            return Err(pb::Error::new(
                ErrorCode::Forbidden,
                "group events cannot be recalled",
            ));
        }
        if message.sender_id != me {
            return Err(pb::Error::new(
                ErrorCode::Forbidden,
                "only the sender can recall a message",
            ));
        }
        let recalled = pb::MessageRecalled {
            conversation_id: conv.to_string(),
            seq,
            recalled_by: me,
        };
        if message.recalled {
            // Recalling twice is not an error: the client may have missed
            // the first answer.
            return Ok(recalled);
        }
        let window_ms = self.core.shared.config.server.recall_window_secs as i64 * 1000;
        let not_before_ms = now_ms() as i64 - window_ms;
        if message.sent_at_ms < not_before_ms {
            return Err(pb::Error::new(
                ErrorCode::Forbidden,
                format!("the recall window of {} s has passed", window_ms / 1000),
            ));
        }
        let outcome = self
            .core
            .commit(WriteOp::Recall {
                conversation_id: conv.to_string(),
                seq,
                sender_id: me,
                not_before_ms,
            })
            .await?;
        if outcome != WriteOutcome::Done {
            // Lost a race with another recall or with the window's end.
            return Err(pb::Error::new(
                ErrorCode::Conflict,
                "the message can no longer be recalled",
            ));
        }
        self.push_to_conversation(&conv, me, Body::Recalled(recalled.clone()))
            .await;
        Ok(recalled)
    }

    pub(crate) async fn typing(
        &self,
        session: &Session,
        request: pb::Typing,
    ) -> Result<(), pb::Error> {
        let me = session.user_id;
        let conv = match ConversationId::direct(me, request.peer_id) {
            Some(conv) if request.peer_id > 0 => conv,
            _ => return Err(bad("peer_id must be another user")),
        };
        match self.core.user_exists(request.peer_id).await {
            Ok(true) => {}
            Ok(false) => return Err(pb::Error::new(ErrorCode::NotFound, "no such user")),
            Err(error) => return Err(error),
        }
        // Ephemeral: pushed to the peer's online devices, never stored.
        let push = pb::Typing {
            peer_id: request.peer_id,
            typing: request.typing,
            conversation_id: conv.to_string(),
            user_id: me,
        };
        let frame = encode_frame(&Envelope::new(0, Body::TypingPush(push)));
        self.core.push_to_user(request.peer_id, frame, 0).await;
        Ok(())
    }
}
