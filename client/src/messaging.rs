//! A client's message calls: sends of every kind, delivery acks, offline
//! sync, history, read marks, the conversation list, recalls and typing.

use ourchat_protocol::pb::{self, ChatMessage, MessageType};
use ourchat_protocol::Body;

use crate::{new_client_message_id, refused, unexpected, Client, ClientError, SendAck, SeqTracker};

impl Client {
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
}
