//! SQLite's writes: a batch of ops in one transaction, each op applied by
//! [`apply_one`], group changes by [`apply_group_change`] (the embedded
//! store's writer runs both inside its own transaction).

use std::collections::HashMap;

use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{
    ChatMessage, GroupChange, GroupRole, SentBefore, StoreError, Stored, WriteOp, WriteOutcome,
    WriteStore,
};
use ourchat_protocol::ConversationId;

pub(super) struct SqliteWriter {
    pub(super) conn: Connection,
}

impl WriteStore for SqliteWriter {
    fn apply_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(ops.len());
        // Conversation heads are written once per batch, not per message:
        // under load one batch holds many messages of the same conversations.
        // They also give the next seq of a conversation already appended to.
        let mut heads: HashMap<&str, Head<'_>> = HashMap::new();
        // A sender has read their own conversation up to what they sent.
        let mut own_reads: HashMap<(i64, &str), i64> = HashMap::new();
        for op in ops {
            let (outcome, appended) = match op {
                WriteOp::AppendMessage(msg) => {
                    let stored = append_message(&tx, msg, &heads)?;
                    (stored.outcome(msg), stored.seq().map(|seq| (msg, seq)))
                }
                WriteOp::GroupChange { event, change } => {
                    let stored = append_message(&tx, event, &heads)?;
                    let seq = stored.seq();
                    if let Some(seq) = seq {
                        apply_group_change(&tx, event, seq, change)?;
                    }
                    (stored.outcome(event), seq.map(|seq| (event, seq)))
                }
                other => (apply_one(&tx, other)?, None),
            };
            if let Some((msg, seq)) = appended {
                let head = heads
                    .entry(&msg.conversation_id)
                    .or_insert(Head { msg, seq });
                if seq >= head.seq {
                    *head = Head { msg, seq };
                }
                let read = own_reads
                    .entry((msg.sender_id, &msg.conversation_id))
                    .or_insert(seq);
                *read = (*read).max(seq);
            }
            outcomes.push(outcome);
        }
        for head in heads.into_values() {
            record_conversation_head(&tx, head.msg, head.seq)?;
        }
        for ((user_id, conversation_id), seq) in own_reads {
            advance_read_cursor(&tx, user_id, conversation_id, seq)?;
        }
        tx.commit()?;
        Ok(outcomes)
    }
}

/// The newest message a batch appended to one conversation, and its seq.
struct Head<'a> {
    msg: &'a ChatMessage,
    seq: i64,
}

fn advance_read_cursor(
    tx: &rusqlite::Transaction<'_>,
    user_id: i64,
    conversation_id: &str,
    seq: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO read_cursors (user_id, conversation_id, read_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id, conversation_id) DO UPDATE
             SET read_seq = MAX(read_seq, excluded.read_seq)",
    )?
    .execute(params![user_id, conversation_id, seq])?;
    Ok(())
}

/// Moves a conversation's head to `msg`; the first time a 1:1 conversation
/// is seen, also lists it for both users (that is what Sync walks). Group
/// members are listed when they join.
fn record_conversation_head(
    tx: &rusqlite::Transaction<'_>,
    msg: &ChatMessage,
    seq: i64,
) -> Result<(), StoreError> {
    let created = tx
        .prepare_cached(
            "INSERT INTO conversations (conversation_id, last_seq, last_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (conversation_id) DO NOTHING",
        )?
        .execute(params![msg.conversation_id, seq, msg.sent_at_ms])?;
    let direct = matches!(
        msg.conversation_id.parse::<ConversationId>(),
        Ok(ConversationId::Direct { .. })
    );
    if created == 1 && direct {
        let mut link = tx.prepare_cached(
            "INSERT INTO user_conversations (user_id, conversation_id) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
        )?;
        link.execute(params![msg.sender_id, msg.conversation_id])?;
        link.execute(params![msg.receiver_id, msg.conversation_id])?;
    } else if created == 0 {
        tx.prepare_cached(
            "UPDATE conversations SET last_seq = MAX(last_seq, ?2), last_at_ms = ?3
             WHERE conversation_id = ?1",
        )?
        .execute(params![msg.conversation_id, seq, msg.sent_at_ms])?;
    }
    Ok(())
}

pub(crate) fn apply_one(
    tx: &rusqlite::Transaction<'_>,
    op: &WriteOp,
) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::CreateAccount(account) => {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO users (user_id, username, password_hash, phone, email, nickname, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    account.user_id,
                    account.username,
                    account.password_hash,
                    account.phone,
                    account.email,
                    account.nickname,
                    account.created_at_ms
                ])?;
            Ok(if inserted == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::UsernameTaken
            })
        }
        WriteOp::TouchDevice {
            user_id,
            device_id,
            device_type,
            seen_at_ms,
        } => {
            tx.prepare_cached(
                "INSERT INTO devices (user_id, device_id, device_type, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET device_type = excluded.device_type,
                     last_seen_ms = excluded.last_seen_ms, signed_out = 0",
            )?
            .execute(params![user_id, device_id, device_type, seen_at_ms])?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::UpdateProfile { user_id, update } => {
            let changed = tx
                .prepare_cached(
                    "UPDATE users SET nickname = COALESCE(?2, nickname),
                         avatar_url = COALESCE(?3, avatar_url), signature = COALESCE(?4, signature),
                         phone = COALESCE(?5, phone), email = COALESCE(?6, email)
                     WHERE user_id = ?1",
                )?
                .execute(params![
                    user_id,
                    update.nickname,
                    update.avatar_url,
                    update.signature,
                    update.phone,
                    update.email
                ])?;
            Ok(if changed == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::SetPassword {
            user_id,
            password_hash,
            keep_device,
        } => {
            let changed = tx
                .prepare_cached("UPDATE users SET password_hash = ?2 WHERE user_id = ?1")?
                .execute(params![user_id, password_hash])?;
            tx.prepare_cached(
                "UPDATE devices SET token_epoch = token_epoch + 1, signed_out = 1
                 WHERE user_id = ?1 AND device_id != ?2",
            )?
            .execute(params![user_id, keep_device])?;
            Ok(if changed == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::RevokeDevice { user_id, device_id } => {
            let changed = tx
                .prepare_cached(
                    "UPDATE devices SET token_epoch = token_epoch + 1, signed_out = 1
                     WHERE user_id = ?1 AND device_id = ?2",
                )?
                .execute(params![user_id, device_id])?;
            Ok(if changed == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::RequestFriend {
            from,
            to,
            note,
            at_ms,
        } => {
            tx.prepare_cached(
                "INSERT INTO friend_requests (from_user, to_user, note, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (from_user, to_user) DO UPDATE
                     SET note = excluded.note, created_at_ms = excluded.created_at_ms",
            )?
            .execute(params![from, to, note, at_ms])?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::AnswerFriend {
            from,
            to,
            accept,
            at_ms,
        } => {
            let answered = tx
                .prepare_cached(
                    "DELETE FROM friend_requests WHERE from_user = ?1 AND to_user = ?2",
                )?
                .execute(params![from, to])?;
            if answered == 0 {
                return Ok(WriteOutcome::Refused);
            }
            if *accept {
                let mut befriend = tx.prepare_cached(
                    "INSERT INTO friends (user_id, friend_id, since_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?;
                befriend.execute(params![from, to, at_ms])?;
                befriend.execute(params![to, from, at_ms])?;
                // A crossed request the other way is answered by this too.
                tx.prepare_cached(
                    "DELETE FROM friend_requests WHERE from_user = ?1 AND to_user = ?2",
                )?
                .execute(params![to, from])?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::Unfriend { a, b } => {
            let removed = tx
                .prepare_cached(
                    "DELETE FROM friends WHERE (user_id = ?1 AND friend_id = ?2)
                        OR (user_id = ?2 AND friend_id = ?1)",
                )?
                .execute(params![a, b])?;
            Ok(if removed > 0 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::Block {
            user_id,
            blocked_id,
            block,
            at_ms,
        } => {
            if *block {
                tx.prepare_cached(
                    "INSERT INTO blocks (user_id, blocked_id, since_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![user_id, blocked_id, at_ms])?;
                tx.prepare_cached(
                    "DELETE FROM friends WHERE (user_id = ?1 AND friend_id = ?2)
                        OR (user_id = ?2 AND friend_id = ?1)",
                )?
                .execute(params![user_id, blocked_id])?;
                tx.prepare_cached(
                    "DELETE FROM friend_requests WHERE (from_user = ?1 AND to_user = ?2)
                        OR (from_user = ?2 AND to_user = ?1)",
                )?
                .execute(params![user_id, blocked_id])?;
                Ok(WriteOutcome::Done)
            } else {
                let removed = tx
                    .prepare_cached("DELETE FROM blocks WHERE user_id = ?1 AND blocked_id = ?2")?
                    .execute(params![user_id, blocked_id])?;
                Ok(if removed == 1 {
                    WriteOutcome::Done
                } else {
                    WriteOutcome::Refused
                })
            }
        }
        WriteOp::MarkRead {
            user_id,
            conversation_id,
            seq,
        } => {
            advance_read_cursor(tx, *user_id, conversation_id, *seq)?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::Recall {
            conversation_id,
            seq,
            sender_id,
            not_before_ms,
        } => {
            // One conditional statement: sender, window and "not yet
            // recalled" are checked where the row is changed, so a race
            // cannot recall twice or recall someone else's message.
            let changed = tx
                .prepare_cached(
                    "UPDATE messages SET recalled = 1, content = '', media = NULL, location = NULL
                     WHERE conversation_id = ?1 AND seq = ?2 AND sender_id = ?3
                       AND sent_at_ms >= ?4 AND recalled = 0",
                )?
                .execute(params![conversation_id, seq, sender_id, not_before_ms])?;
            Ok(if changed == 1 {
                WriteOutcome::Done
            } else {
                WriteOutcome::Refused
            })
        }
        WriteOp::AppendMessage(_) | WriteOp::GroupChange { .. } => Err(StoreError::Corrupt(
            "appends are applied by the batch, not one by one".into(),
        )),
        WriteOp::AdvanceCursor {
            user_id,
            device_id,
            conversation,
            seq,
        } => {
            let (device_id, conversation_id) = (device_id.as_ref(), conversation.to_string());
            tx.prepare_cached(
                "INSERT INTO device_cursors (user_id, device_id, conversation_id, delivered_seq)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, device_id, conversation_id) DO UPDATE
                     SET delivered_seq = MAX(delivered_seq, excluded.delivered_seq)",
            )?
            .execute(params![user_id, device_id, conversation_id, seq])?;
            Ok(WriteOutcome::Done)
        }
    }
}

/// Applies a group change whose event message `event` was just stored.
pub(crate) fn apply_group_change(
    tx: &rusqlite::Transaction<'_>,
    event: &ChatMessage,
    seq: i64,
    change: &GroupChange,
) -> Result<(), StoreError> {
    let group_id = event.group_id;
    let conversation_id = &event.conversation_id;
    let join = |user_id: i64, role: GroupRole| -> Result<(), StoreError> {
        tx.prepare_cached(
            "INSERT INTO group_members (group_id, user_id, role, join_seq, joined_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role,
                 join_seq = excluded.join_seq, joined_at_ms = excluded.joined_at_ms",
        )?
        .execute(params![
            group_id,
            user_id,
            role as i32,
            seq,
            event.sent_at_ms
        ])?;
        // A rejoin starts a new window: what was said while away stays unseen.
        tx.prepare_cached(
            "INSERT INTO user_conversations (user_id, conversation_id, from_seq, to_seq)
             VALUES (?1, ?2, ?3, NULL)
             ON CONFLICT (user_id, conversation_id) DO UPDATE
                 SET from_seq = excluded.from_seq, to_seq = NULL",
        )?
        .execute(params![user_id, conversation_id, seq])?;
        // The join event is theirs: it does not count as unread.
        advance_read_cursor(tx, user_id, conversation_id, seq)
    };
    let leave = |user_id: i64| -> Result<(), StoreError> {
        tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
            .execute(params![group_id, user_id])?;
        tx.prepare_cached(
            "UPDATE user_conversations SET to_seq = ?3 WHERE user_id = ?1 AND conversation_id = ?2",
        )?
        .execute(params![user_id, conversation_id, seq])?;
        Ok(())
    };
    let set_role = |user_id: i64, role: GroupRole| -> Result<(), StoreError> {
        tx.prepare_cached(
            "UPDATE group_members SET role = ?3 WHERE group_id = ?1 AND user_id = ?2",
        )?
        .execute(params![group_id, user_id, role as i32])?;
        Ok(())
    };
    match change {
        GroupChange::Create { group, members } => {
            tx.prepare_cached(
                "INSERT INTO chat_groups (group_id, name, description, avatar_url, owner_id, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                group.group_id,
                group.name,
                group.description,
                group.avatar_url,
                group.owner_id,
                group.created_at_ms
            ])?;
            join(group.owner_id, GroupRole::Owner)?;
            for member in members {
                join(*member, GroupRole::Member)?;
            }
        }
        GroupChange::Update {
            name,
            description,
            avatar_url,
        } => {
            tx.prepare_cached(
                "UPDATE chat_groups SET name = COALESCE(?2, name),
                     description = COALESCE(?3, description), avatar_url = COALESCE(?4, avatar_url)
                 WHERE group_id = ?1",
            )?
            .execute(params![group_id, name, description, avatar_url])?;
        }
        GroupChange::Join(users) => {
            for user in users {
                join(*user, GroupRole::Member)?;
            }
        }
        GroupChange::Leave(users) => {
            for user in users {
                leave(*user)?;
            }
        }
        GroupChange::SetRole { user_id, role } => set_role(*user_id, *role)?,
        GroupChange::TransferOwner { from, to } => {
            set_role(*from, GroupRole::Admin)?;
            set_role(*to, GroupRole::Owner)?;
            tx.prepare_cached("UPDATE chat_groups SET owner_id = ?2 WHERE group_id = ?1")?
                .execute(params![group_id, to])?;
        }
        GroupChange::Dissolve => {
            tx.prepare_cached("UPDATE chat_groups SET dissolved = 1 WHERE group_id = ?1")?
                .execute([group_id])?;
            tx.prepare_cached(
                "UPDATE user_conversations SET to_seq = ?2
                 WHERE conversation_id = ?1 AND to_seq IS NULL",
            )?
            .execute(params![conversation_id, seq])?;
            tx.prepare_cached("DELETE FROM group_members WHERE group_id = ?1")?
                .execute([group_id])?;
        }
    }
    Ok(())
}

/// Appends `msg` under its given seq, or (seq 0) under the conversation's
/// next one; `heads` knows the newest seq this batch gave each
/// conversation so far.
fn append_message(
    tx: &rusqlite::Transaction<'_>,
    msg: &ChatMessage,
    heads: &HashMap<&str, Head<'_>>,
) -> Result<Stored, StoreError> {
    let seq = match msg.seq {
        0 => match heads.get(msg.conversation_id.as_str()) {
            Some(head) => head.seq + 1,
            None => {
                tx.prepare_cached(
                    "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?1",
                )?
                .query_row([&msg.conversation_id], |row| row.get::<_, i64>(0))?
                    + 1
            }
        },
        given => given,
    };
    let media = msg.media.as_ref().map(Message::encode_to_vec);
    let location = msg.location.as_ref().map(Message::encode_to_vec);
    let inserted = tx
        .prepare_cached(
            "INSERT INTO messages (conversation_id, seq, server_msg_id, sender_id, receiver_id,
                 message_type, content, client_message_id, sent_at_ms, sender_device, media, location,
                 group_event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            msg.conversation_id,
            seq,
            msg.server_msg_id,
            msg.sender_id,
            msg.receiver_id,
            msg.message_type,
            msg.content,
            msg.client_message_id,
            msg.sent_at_ms,
            msg.sender_device,
            media,
            location,
            msg.group_event.as_ref().map(Message::encode_to_vec),
        ])?;
    if inserted == 1 {
        return Ok(Stored::At(seq));
    }
    // Nothing written: the client id is taken (a resend, however old), or
    // a given seq is (a replay).
    let first = tx
        .prepare_cached(
            "SELECT seq, server_msg_id, sent_at_ms, message_type, content, media, location
             FROM messages
             WHERE conversation_id = ?1 AND sender_id = ?2 AND client_message_id = ?3",
        )?
        .query_row(
            params![msg.conversation_id, msg.sender_id, msg.client_message_id],
            |row| {
                Ok(SentBefore {
                    seq: row.get(0)?,
                    server_msg_id: row.get(1)?,
                    sent_at_ms: row.get(2)?,
                    same_content: row.get::<_, i32>(3)? == msg.message_type
                        && row.get::<_, String>(4)? == msg.content
                        && row.get::<_, Option<Vec<u8>>>(5)? == media
                        && row.get::<_, Option<Vec<u8>>>(6)? == location,
                })
            },
        )
        .optional()?;
    Ok(match first {
        Some(first) => Stored::SentBefore(first),
        None => Stored::SeqTaken,
    })
}
