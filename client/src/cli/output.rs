//! What the CLI prints: a line of text for people, or one JSON object per
//! line for scripts (`--json`).

use std::collections::HashMap;

use ourchat_client::Client;
use ourchat_protocol::pb::{self, ChatMessage, MessageType};
use serde_json::json;

pub(crate) struct Output {
    pub(crate) json: bool,
}

impl Output {
    pub(crate) fn line(&self, json: serde_json::Value, text: String) {
        if self.json {
            println!("{json}");
        } else {
            println!("{text}");
        }
    }

    pub(crate) fn message(&self, message: &ChatMessage, from: &str) {
        let kind = MessageType::try_from(message.message_type)
            .map(|t| t.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "unknown".into());
        self.line(
            json!({"event": "message", "conversation_id": message.conversation_id,
                   "seq": message.seq, "from": from, "sender_id": message.sender_id.to_string(),
                   "type": kind, "content": message.content,
                   "sent_at_ms": message.sent_at_ms}),
            format!(
                "[{}#{}] {from}: {}",
                message.conversation_id,
                message.seq,
                describe(message)
            ),
        );
    }
}

/// One line for a message of any type.
pub(crate) fn describe(message: &ChatMessage) -> String {
    if message.recalled {
        return "(recalled)".into();
    }
    if let Some(event) = &message.group_event {
        let kind = pb::group_event::Kind::try_from(event.kind)
            .map(|k| k.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "event".into());
        return format!("({kind} {:?} by {})", event.user_ids, event.actor_id);
    }
    match (&message.media, &message.location) {
        (Some(m), _) => format!(
            "[{} {} {} B] {}",
            m.mime, m.url, m.size_bytes, message.content
        ),
        (_, Some(l)) => format!(
            "[location {:.5},{:.5}] {}",
            l.latitude, l.longitude, l.title
        ),
        _ => message.content.clone(),
    }
}

/// A user's name for printing, asked of the server once per user.
pub(crate) async fn name_of(
    client: &Client,
    names: &mut HashMap<i64, String>,
    user_id: i64,
) -> String {
    if let Some(name) = names.get(&user_id) {
        return name.clone();
    }
    let name = client
        .user(user_id)
        .await
        .map(|p| p.username)
        .unwrap_or_else(|_| user_id.to_string());
    names.insert(user_id, name.clone());
    name
}
