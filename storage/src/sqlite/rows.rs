//! How SQLite rows become the store's values: the column lists the reads
//! select and the decoders that go with them.

use prost::Message;

use crate::{content_fingerprint, Account, ChatMessage, Device, GroupRole, GroupRow, RecentSend};
use ourchat_protocol::ConversationId;

pub(super) fn recent_send(row: &rusqlite::Row<'_>) -> rusqlite::Result<RecentSend> {
    Ok(RecentSend {
        sender_id: row.get(0)?,
        client_message_id: row.get(1)?,
        seq: row.get(2)?,
        server_msg_id: row.get(3)?,
        sent_at_ms: row.get(4)?,
        fingerprint: content_fingerprint(
            row.get(5)?,
            &row.get::<_, String>(6)?,
            row.get::<_, Option<Vec<u8>>>(7)?.as_deref(),
            row.get::<_, Option<Vec<u8>>>(8)?.as_deref(),
        ),
    })
}

pub(crate) const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, server_msg_id, sender_id, receiver_id,
    message_type, content, client_message_id, sent_at_ms, sender_device, media, location, recalled,
    group_event";

/// Decodes a stored payload column; bytes that do not decode are corrupt.
fn payload<T: Message + Default>(
    row: &rusqlite::Row<'_>,
    column: usize,
) -> rusqlite::Result<Option<T>> {
    let bytes: Option<Vec<u8>> = row.get(column)?;
    bytes
        .map(|b| {
            T::decode(b.as_slice()).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    column,
                    rusqlite::types::Type::Blob,
                    Box::new(e),
                )
            })
        })
        .transpose()
}

pub(crate) fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ChatMessage> {
    let conversation_id: String = row.get(0)?;
    let group_id = match conversation_id.parse::<ConversationId>() {
        Ok(ConversationId::Group(group_id)) => group_id,
        _ => 0,
    };
    Ok(ChatMessage {
        conversation_id,
        group_id,
        seq: row.get(1)?,
        server_msg_id: row.get(2)?,
        sender_id: row.get(3)?,
        receiver_id: row.get(4)?,
        message_type: row.get(5)?,
        content: row.get(6)?,
        client_message_id: row.get(7)?,
        sent_at_ms: row.get(8)?,
        sender_device: row.get(9)?,
        media: payload(row, 10)?,
        location: payload(row, 11)?,
        recalled: row.get(12)?,
        group_event: payload(row, 13)?,
    })
}

pub(super) const ACCOUNT_COLUMNS: &str =
    "user_id, username, password_hash, nickname, phone, email, avatar_url, signature";

pub(super) fn account_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        user_id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        nickname: row.get(3)?,
        phone: row.get(4)?,
        email: row.get(5)?,
        avatar_url: row.get(6)?,
        signature: row.get(7)?,
    })
}

pub(super) fn device_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        device_id: row.get(0)?,
        device_type: row.get(1)?,
        last_seen_ms: row.get(2)?,
        token_epoch: row.get(3)?,
        signed_out: row.get(4)?,
    })
}

/// A group and the viewer's role; `?2` binds the viewer.
pub(super) const GROUP_COLUMNS: &str = "g.group_id, g.name, g.description, g.avatar_url, g.owner_id,
    (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.group_id), g.created_at_ms,
    g.dissolved, (SELECT role FROM group_members v WHERE v.group_id = g.group_id AND v.user_id = ?2)";

pub(super) fn group_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRow> {
    Ok(GroupRow {
        group_id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        avatar_url: row.get(3)?,
        owner_id: row.get(4)?,
        member_count: row.get(5)?,
        created_at_ms: row.get(6)?,
        dissolved: row.get(7)?,
        viewer_role: row.get::<_, Option<i32>>(8)?.map(GroupRole::from_i32),
    })
}
