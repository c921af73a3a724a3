//! Requests about messages: send (validated here, sequenced and stored
//! on the conversation's owner core), delivery acks (cursors, coalesced
//! per core), sync from cursors, and history pages. A send's answer comes
//! later than the request: the socket pipelines it, a gRPC call awaits it.

use std::time::Instant;

use futures::channel::oneshot;
use ourchat_protocol::payload;
use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_protocol::{Body, ConversationId, ErrorCode};
use ourchat_storage::Visibility;

use crate::core::{pool_error, CoreMsg, Reply, SendJob, SendResult};
use crate::handlers::{bad, member_conversation, page_size, refused_send, Caller, Session};

/// A send's answer as the client reads it.
pub(crate) fn send_response(conv: ConversationId, result: SendResult) -> pb::SendMessageResponse {
    match result {
        Ok(accepted) => pb::SendMessageResponse {
            success: true,
            error: None,
            server_msg_id: accepted.server_msg_id,
            conversation_id: conv.to_string(),
            seq: accepted.seq,
            sent_at_ms: accepted.sent_at_ms,
        },
        Err(error) => refused_send(error),
    }
}

/// What became of a send submitted without waiting.
pub(crate) enum SubmittedNow {
    /// Handed to its sequencing core: the answer comes from there.
    Routed,
    /// Refused before it was handed on; this is the answer.
    Refused(pb::Error),
    /// Admitted, but the channel to its sequencing core is full: route
    /// this to that core, waiting for room.
    MeshFull(usize, CoreMsg),
}

impl Caller {
    /// Validates a send and hands it to its conversation's owner core, with
    /// the reply `reply_for` makes for its conversation: the answer comes
    /// there once the message is stored (or refused there). A refusal
    /// returned here made no reply. Sends submitted in order are sequenced
    /// in order.
    pub(crate) async fn submit_send(
        &self,
        session: &Session,
        request: pb::SendMessageRequest,
        reply_for: impl FnOnce(ConversationId) -> Reply,
    ) -> Result<ConversationId, pb::Error> {
        // The receiver's account, like a group's membership, is checked
        // where the conversation is sequenced (when it is taken in).
        let conv = self.admit_send(session, &request, Instant::now())?;
        self.core.wait_for_writer_room().await?;
        let (owner, job) = self.sequence_job(session, request, conv, reply_for);
        self.core.route(owner, job).await;
        Ok(conv)
    }

    /// Whether [`Caller::submit_send_now`] may take a send: nothing in it
    /// has to wait, the writer's queue having room. Most sends are such,
    /// and a connection's reader then hands them on with no future boxed
    /// for them.
    pub(crate) fn send_needs_no_wait(&self) -> bool {
        self.core.writer_has_room()
    }

    /// [`Caller::submit_send`] without waiting, for a send
    /// [`Caller::send_needs_no_wait`] passed; `received_at`: when its
    /// frame was read (the sender's rate is counted from it, which saves
    /// a clock read a message).
    pub(crate) fn submit_send_now(
        &self,
        session: &Session,
        request: pb::SendMessageRequest,
        received_at: Instant,
        reply_for: impl FnOnce(ConversationId) -> Reply,
    ) -> SubmittedNow {
        let conv = match self.admit_send(session, &request, received_at) {
            Ok(conv) => conv,
            Err(refused) => return SubmittedNow::Refused(refused),
        };
        let (owner, job) = self.sequence_job(session, request, conv, reply_for);
        match self.core.try_route(owner, job) {
            Ok(()) => SubmittedNow::Routed,
            Err(job) => SubmittedNow::MeshFull(owner, job),
        }
    }

    /// The sender's rate (as of `now`) and the send's validity; its
    /// conversation.
    fn admit_send(
        &self,
        session: &Session,
        request: &pb::SendMessageRequest,
        now: Instant,
    ) -> Result<ConversationId, pb::Error> {
        if !self.core.take_send(session.user_id, now) {
            return Err(self.core.slow_down());
        }
        let server = &self.core.shared.config.server;
        let limits = payload::Limits {
            max_content_bytes: server.max_content_bytes,
            max_media_bytes: server.max_media_bytes,
        };
        validate_send(request, session.user_id, &limits)
    }

    /// An admitted send as its sequencing core takes it, and that core.
    fn sequence_job(
        &self,
        session: &Session,
        request: pb::SendMessageRequest,
        conv: ConversationId,
        reply_for: impl FnOnce(ConversationId) -> Reply,
    ) -> (usize, CoreMsg) {
        let message = Box::new(ChatMessage {
            conversation_id: conv.to_string(),
            seq: 0,
            server_msg_id: 0,
            sender_id: session.user_id,
            receiver_id: request.receiver_id,
            message_type: request.message_type,
            content: request.content,
            client_message_id: request.client_message_id,
            sent_at_ms: 0,
            sender_device: String::from(&*session.device_id),
            media: request.media,
            location: request.location,
            recalled: false,
            group_id: request.group_id,
            group_event: None,
        });
        let job = SendJob {
            conv,
            message,
            origin_conn: self.conn_id,
            command: None,
            reply: reply_for(conv),
        };
        let owner = self.core.owner_of_conversation(&conv);
        (owner, CoreMsg::Sequence(Box::new(job)))
    }

    /// Sends and waits until the message is stored: the whole answer.
    pub(crate) async fn send(
        &self,
        session: &Session,
        request: pb::SendMessageRequest,
    ) -> Result<Body, pb::Error> {
        let (reply, answer) = oneshot::channel();
        let conv = self
            .submit_send(session, request, |_| Reply::Waiting(reply))
            .await?;
        let result = answer
            .await
            .unwrap_or_else(|_| Err(pool_error(ourchat_workers::PoolError::Closed)));
        let response = send_response(conv, result);
        match response.error {
            Some(error) => Err(error),
            None => Ok(Body::SendResp(response)),
        }
    }

    /// Moves a device's delivery cursor; no answer when it works.
    pub(crate) async fn delivery_ack(
        &self,
        session: &Session,
        ack: pb::DeliveryAck,
    ) -> Result<(), pb::Error> {
        let conv = self.acked(&ack.conversation_id, session.user_id).await?;
        self.record_ack(session, conv, ack.seq)
    }

    /// The rest of a delivery ack once its conversation is known to be the
    /// user's: nothing in it waits, so a connection runs it in line.
    pub(crate) fn record_ack(
        &self,
        session: &Session,
        conv: ConversationId,
        seq: i64,
    ) -> Result<(), pb::Error> {
        if seq <= 0 {
            return Err(pb::Error::new(
                ErrorCode::BadRequest,
                "seq must be positive",
            ));
        }
        // Cursors only move forward and a lost one costs a re-sync: the ack
        // joins the core's others and is not waited for.
        let first = self
            .core
            .acks
            .add(session.user_id, &session.device_id, conv, seq);
        if first {
            let core = self.core.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(crate::acks::ACK_DELAY).await;
                for op in core.acks.take() {
                    if let Err(error) = core.write_detached(op).await {
                        tracing::debug!(?error, "a delivery ack was not stored");
                    }
                }
            })
            .detach();
        }
        Ok(())
    }

    pub(crate) async fn sync(
        &self,
        session: &Session,
        request: pb::SyncRequest,
    ) -> Result<Body, pb::Error> {
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
                Err(error) => return Err(error),
            }
        }
        let limit = page_size(request.limit);
        let user_id = session.user_id;
        let device_id = session.device_id.to_string();
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
        result.map(Body::SyncResp)
    }

    pub(crate) async fn history(
        &self,
        session: &Session,
        request: pb::HistoryRequest,
    ) -> Result<Body, pb::Error> {
        if request.before_seq < 0 {
            return Err(pb::Error::new(
                ErrorCode::BadRequest,
                "before_seq must be 0 (from the newest) or a positive seq",
            ));
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
            Err(error) => return Err(error),
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
        let mut messages = result?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        Ok(Body::HistoryResp(pb::HistoryResponse {
            conversation_id: conv.to_string(),
            messages,
            has_more,
        }))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
