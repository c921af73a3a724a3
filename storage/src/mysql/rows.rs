//! How MySQL rows become the store's values: the column lists the queries
//! select and the decoders that go with them.

use mysql_async::prelude::FromValue;
use mysql_async::Row;
use prost::Message;

use crate::{Account, ChatMessage, Device, GroupRole, GroupRow, StoreError};
use ourchat_protocol::ConversationId;

/// `?, ?, ?` for `n` values.
pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

pub(super) fn column<T: FromValue>(row: &mut Row, index: usize) -> Result<T, StoreError> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(StoreError::Corrupt(format!("column {index}: {e}"))),
        None => Err(StoreError::Corrupt(format!("column {index} missing"))),
    }
}

pub(super) fn payload<T: Message + Default>(
    row: &mut Row,
    index: usize,
) -> Result<Option<T>, StoreError> {
    let bytes: Option<Vec<u8>> = column(row, index)?;
    bytes
        .map(|b| {
            T::decode(b.as_slice())
                .map_err(|e| StoreError::Corrupt(format!("payload column {index}: {e}")))
        })
        .transpose()
}

pub(super) const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, server_msg_id, sender_id, receiver_id,
    message_type, content, client_message_id, sent_at_ms, sender_device, media, location, recalled,
    group_event";

pub(super) fn message_from_row(mut row: Row) -> Result<ChatMessage, StoreError> {
    let conversation_id: String = column(&mut row, 0)?;
    let group_id = match conversation_id.parse::<ConversationId>() {
        Ok(ConversationId::Group(group_id)) => group_id,
        _ => 0,
    };
    Ok(ChatMessage {
        group_id,
        seq: column(&mut row, 1)?,
        server_msg_id: column(&mut row, 2)?,
        sender_id: column(&mut row, 3)?,
        receiver_id: column(&mut row, 4)?,
        message_type: column(&mut row, 5)?,
        content: column(&mut row, 6)?,
        client_message_id: column(&mut row, 7)?,
        sent_at_ms: column(&mut row, 8)?,
        sender_device: column(&mut row, 9)?,
        media: payload(&mut row, 10)?,
        location: payload(&mut row, 11)?,
        recalled: column(&mut row, 12)?,
        group_event: payload(&mut row, 13)?,
        conversation_id,
    })
}

pub(super) const ACCOUNT_COLUMNS: &str =
    "user_id, username, password_hash, nickname, phone, email, avatar_url, signature";

pub(super) type AccountTuple = (i64, String, String, String, String, String, String, String);

pub(super) fn account_from(t: AccountTuple) -> Account {
    Account {
        user_id: t.0,
        username: t.1,
        password_hash: t.2,
        nickname: t.3,
        phone: t.4,
        email: t.5,
        avatar_url: t.6,
        signature: t.7,
    }
}

pub(super) const DEVICE_COLUMNS: &str =
    "device_id, device_type, last_seen_ms, token_epoch, signed_out";

pub(super) fn device_from(t: (String, String, i64, i64, bool)) -> Device {
    Device {
        device_id: t.0,
        device_type: t.1,
        last_seen_ms: t.2,
        token_epoch: t.3,
        signed_out: t.4,
    }
}

/// A group and the viewer's role: binds (viewer, group_id).
pub(super) const GROUP_SELECT: &str =
    "SELECT g.group_id, g.name, g.description, g.avatar_url, g.owner_id,
    (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.group_id), g.created_at_ms,
    g.dissolved, (SELECT role FROM group_members v WHERE v.group_id = g.group_id AND v.user_id = ?)
    FROM chat_groups g WHERE g.group_id = ?";

pub(super) type GroupTuple = (
    i64,
    String,
    String,
    String,
    i64,
    u32,
    i64,
    bool,
    Option<i32>,
);

pub(super) fn group_from(t: GroupTuple) -> GroupRow {
    GroupRow {
        group_id: t.0,
        name: t.1,
        description: t.2,
        avatar_url: t.3,
        owner_id: t.4,
        member_count: t.5,
        created_at_ms: t.6,
        dissolved: t.7,
        viewer_role: t.8.map(GroupRole::from_i32),
    }
}
