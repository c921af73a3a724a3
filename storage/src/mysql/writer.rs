//! MySQL's writes: a batch of ops in one transaction per shard it touches,
//! each op written so that applying it again changes nothing more.

use std::collections::{BTreeMap, HashMap};

use mysql_async::{Params, Value};
use prost::Message;

use super::groups::apply_group_change;
use super::shards::Shards;
use crate::{ChatMessage, SentBefore, StoreError, Stored, WriteOp, WriteOutcome, WriteStore};
use ourchat_protocol::ConversationId;

pub(super) struct MysqlWriter {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) shards: Shards,
}

/// What one writer transaction does.
pub(super) enum Work<'o> {
    Batch(&'o [WriteOp]),
    Log(&'o [ChatMessage]),
}

impl MysqlWriter {
    /// Runs `work` in one transaction per shard it touches: all commit, or
    /// (on an error before the commits) all roll back.
    pub(super) fn transaction(&mut self, work: Work<'_>) -> Result<Vec<WriteOutcome>, StoreError> {
        let shards = &mut self.shards;
        self.runtime.block_on(async {
            shards.transactional = true;
            let done = match work {
                Work::Batch(ops) => apply_batch(shards, ops).await,
                Work::Log(messages) => append_log(shards, messages).await.map(|()| Vec::new()),
            };
            let result = match done {
                Ok(value) => shards.commit_all().await.map(|()| value),
                Err(error) => Err(error),
            };
            if let Err(error) = &result {
                shards.rollback_all().await;
                shards.after_error(error);
            }
            shards.transactional = false;
            result
        })
    }
}

impl WriteStore for MysqlWriter {
    fn apply_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.transaction(Work::Batch(ops))
    }

    fn append_log(&mut self, messages: &[ChatMessage]) -> Result<(), StoreError> {
        self.transaction(Work::Log(messages)).map(|_| ())
    }
}

/// Rows per multi-row INSERT of log records.
pub(super) const LOG_ROWS_PER_INSERT: usize = 200;

/// The feeder's path: messages from the log in multi-row inserts per
/// shard; a row already there (a replay, or a group event stored with its
/// change) is left as it is.
pub(super) async fn append_log(s: &mut Shards, messages: &[ChatMessage]) -> Result<(), StoreError> {
    let mut by_shard: BTreeMap<usize, Vec<&ChatMessage>> = BTreeMap::new();
    for message in messages {
        by_shard
            .entry(s.placement.conversation(&message.conversation_id))
            .or_default()
            .push(message);
    }
    for (shard, rows) in by_shard {
        for chunk in rows.chunks(LOG_ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO messages (conversation_id, seq, server_msg_id, sender_id,
                     receiver_id, message_type, content, client_message_id, sent_at_ms,
                     sender_device, media, location, group_event)
                 VALUES {}
                 ON DUPLICATE KEY UPDATE seq = seq",
                vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            let values: Vec<Value> = chunk
                .iter()
                .flat_map(|msg| message_values(msg, msg.seq))
                .collect();
            s.exec(shard, &sql, Params::Positional(values)).await?;
        }
    }
    let mut heads: HashMap<&str, &ChatMessage> = HashMap::new();
    let mut own_reads: HashMap<(i64, &str), i64> = HashMap::new();
    for msg in messages {
        let head = heads.entry(&msg.conversation_id).or_insert(msg);
        if msg.seq >= head.seq {
            *head = msg;
        }
        let read = own_reads
            .entry((msg.sender_id, &msg.conversation_id))
            .or_insert(msg.seq);
        *read = (*read).max(msg.seq);
    }
    for msg in heads.into_values() {
        record_conversation_head(s, msg, msg.seq).await?;
    }
    for ((user_id, conversation_id), seq) in own_reads {
        advance_read_cursor(s, user_id, conversation_id, seq).await?;
    }
    Ok(())
}

/// A message's column values, in `messages` insert order.
pub(super) fn message_values(msg: &ChatMessage, seq: i64) -> Vec<Value> {
    vec![
        msg.conversation_id.as_str().into(),
        seq.into(),
        msg.server_msg_id.into(),
        msg.sender_id.into(),
        msg.receiver_id.into(),
        msg.message_type.into(),
        msg.content.as_str().into(),
        msg.client_message_id.into(),
        msg.sent_at_ms.into(),
        msg.sender_device.as_str().into(),
        msg.media.as_ref().map(Message::encode_to_vec).into(),
        msg.location.as_ref().map(Message::encode_to_vec).into(),
        msg.group_event.as_ref().map(Message::encode_to_vec).into(),
    ]
}

pub(super) async fn apply_batch(
    s: &mut Shards,
    ops: &[WriteOp],
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(ops.len());
    // Heads and the senders' own read cursors are written once per batch,
    // as in the embedded store; the heads also give the next seq of a
    // conversation this batch already appended to.
    let mut heads: HashMap<&str, (&ChatMessage, i64)> = HashMap::new();
    let mut own_reads: HashMap<(i64, &str), i64> = HashMap::new();
    for op in ops {
        let (outcome, appended) = match op {
            WriteOp::AppendMessage(msg) => {
                let stored = append_message(s, msg, &heads).await?;
                (stored.outcome(msg), stored.seq().map(|seq| (msg, seq)))
            }
            WriteOp::GroupChange { event, change } => {
                let stored = append_message(s, event, &heads).await?;
                if let Some(seq) = stored.seq() {
                    apply_group_change(s, event, seq, change).await?;
                }
                (stored.outcome(event), stored.seq().map(|seq| (event, seq)))
            }
            other => (apply_one(s, other).await?, None),
        };
        if let Some((msg, seq)) = appended {
            let head = heads.entry(&msg.conversation_id).or_insert((msg, seq));
            if seq >= head.1 {
                *head = (msg, seq);
            }
            let read = own_reads
                .entry((msg.sender_id, &msg.conversation_id))
                .or_insert(seq);
            *read = (*read).max(seq);
        }
        outcomes.push(outcome);
    }
    for (msg, seq) in heads.into_values() {
        record_conversation_head(s, msg, seq).await?;
    }
    for ((user_id, conversation_id), seq) in own_reads {
        advance_read_cursor(s, user_id, conversation_id, seq).await?;
    }
    Ok(outcomes)
}

pub(super) async fn advance_read_cursor(
    s: &mut Shards,
    user_id: i64,
    conversation_id: &str,
    seq: i64,
) -> Result<(), StoreError> {
    let shard = s.placement.user(user_id);
    s.exec(
        shard,
        "INSERT INTO read_cursors (user_id, conversation_id, read_seq) VALUES (?, ?, ?)
         ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
        (user_id, conversation_id, seq),
    )
    .await?;
    Ok(())
}

/// Moves a conversation's head to `msg` and, for a 1:1 conversation, lists
/// it for both users every time (idempotent: a replay after a half-applied
/// batch completes the listing).
pub(super) async fn record_conversation_head(
    s: &mut Shards,
    msg: &ChatMessage,
    seq: i64,
) -> Result<(), StoreError> {
    let shard = s.placement.conversation(&msg.conversation_id);
    s.exec(
        shard,
        "INSERT INTO conversations (conversation_id, last_seq, last_at_ms) VALUES (?, ?, ?)
         ON DUPLICATE KEY UPDATE last_seq = GREATEST(last_seq, VALUES(last_seq)),
             last_at_ms = GREATEST(last_at_ms, VALUES(last_at_ms))",
        (&msg.conversation_id, seq, msg.sent_at_ms),
    )
    .await?;
    if let Ok(ConversationId::Direct { low, high }) = msg.conversation_id.parse() {
        for user_id in [low, high] {
            let shard = s.placement.user(user_id);
            s.exec(
                shard,
                "INSERT IGNORE INTO user_conversations (user_id, conversation_id) VALUES (?, ?)",
                (user_id, &msg.conversation_id),
            )
            .await?;
        }
    }
    Ok(())
}

pub(super) fn done_if(condition: bool) -> WriteOutcome {
    if condition {
        WriteOutcome::Done
    } else {
        WriteOutcome::Refused
    }
}

/// The distinct shards of two users (one when they share it).
pub(super) fn both(s: &Shards, a: i64, b: i64) -> Vec<usize> {
    let (sa, sb) = (s.placement.user(a), s.placement.user(b));
    if sa == sb {
        vec![sa]
    } else {
        vec![sa, sb]
    }
}

pub(super) async fn apply_one(s: &mut Shards, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::CreateAccount(account) => {
            // The name index decides: its primary key is the uniqueness.
            let name_shard = s.placement.username(&account.username);
            let claimed = s
                .insert_new(
                    name_shard,
                    "INSERT INTO usernames (username, user_id) VALUES (?, ?)",
                    (&account.username, account.user_id),
                )
                .await?;
            if !claimed {
                return Ok(WriteOutcome::UsernameTaken);
            }
            let shard = s.placement.user(account.user_id);
            let inserted = s
                .insert_new(
                    shard,
                    "INSERT INTO users (user_id, username, password_hash, phone, email,
                         nickname, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        account.user_id,
                        &account.username,
                        &account.password_hash,
                        &account.phone,
                        &account.email,
                        &account.nickname,
                        account.created_at_ms,
                    ),
                )
                .await?;
            Ok(if inserted {
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
            let shard = s.placement.user(*user_id);
            s.exec(
                shard,
                "INSERT INTO devices (user_id, device_id, device_type, last_seen_ms)
                 VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE device_type = VALUES(device_type),
                     last_seen_ms = VALUES(last_seen_ms), signed_out = 0",
                (user_id, device_id, device_type, seen_at_ms),
            )
            .await?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::UpdateProfile { user_id, update } => {
            let shard = s.placement.user(*user_id);
            let matched = s
                .exec(
                    shard,
                    "UPDATE users SET nickname = COALESCE(?, nickname),
                         avatar_url = COALESCE(?, avatar_url), signature = COALESCE(?, signature),
                         phone = COALESCE(?, phone), email = COALESCE(?, email)
                     WHERE user_id = ?",
                    (
                        &update.nickname,
                        &update.avatar_url,
                        &update.signature,
                        &update.phone,
                        &update.email,
                        user_id,
                    ),
                )
                .await?;
            Ok(done_if(matched == 1))
        }
        WriteOp::SetPassword {
            user_id,
            password_hash,
            keep_device,
        } => {
            let shard = s.placement.user(*user_id);
            let matched = s
                .exec(
                    shard,
                    "UPDATE users SET password_hash = ? WHERE user_id = ?",
                    (password_hash, user_id),
                )
                .await?;
            s.exec(
                shard,
                "UPDATE devices SET token_epoch = token_epoch + 1, signed_out = 1
                 WHERE user_id = ? AND device_id != ?",
                (user_id, keep_device),
            )
            .await?;
            Ok(done_if(matched == 1))
        }
        WriteOp::RevokeDevice { user_id, device_id } => {
            let shard = s.placement.user(*user_id);
            let matched = s
                .exec(
                    shard,
                    "UPDATE devices SET token_epoch = token_epoch + 1, signed_out = 1
                     WHERE user_id = ? AND device_id = ?",
                    (user_id, device_id),
                )
                .await?;
            Ok(done_if(matched == 1))
        }
        WriteOp::RequestFriend {
            from,
            to,
            note,
            at_ms,
        } => {
            for shard in both(s, *from, *to) {
                s.exec(
                    shard,
                    "INSERT INTO friend_requests (from_user, to_user, note, created_at_ms)
                     VALUES (?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE note = VALUES(note),
                         created_at_ms = VALUES(created_at_ms)",
                    (from, to, note, at_ms),
                )
                .await?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::AnswerFriend {
            from,
            to,
            accept,
            at_ms,
        } => {
            // The asked user's copy decides whether there is a request.
            let deciding = s.placement.user(*to);
            let answered = s
                .exec(
                    deciding,
                    "DELETE FROM friend_requests WHERE from_user = ? AND to_user = ?",
                    (from, to),
                )
                .await?;
            if answered == 0 {
                return Ok(WriteOutcome::Refused);
            }
            let shards = both(s, *from, *to);
            for &shard in &shards {
                s.exec(
                    shard,
                    "DELETE FROM friend_requests WHERE from_user = ? AND to_user = ?",
                    (from, to),
                )
                .await?;
            }
            if *accept {
                for (a, b) in [(*from, *to), (*to, *from)] {
                    let shard = s.placement.user(a);
                    s.exec(
                        shard,
                        "INSERT IGNORE INTO friends (user_id, friend_id, since_ms) VALUES (?, ?, ?)",
                        (a, b, at_ms),
                    )
                    .await?;
                }
                // A crossed request the other way is answered by this too.
                for &shard in &shards {
                    s.exec(
                        shard,
                        "DELETE FROM friend_requests WHERE from_user = ? AND to_user = ?",
                        (to, from),
                    )
                    .await?;
                }
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::Unfriend { a, b } => {
            let removed = unfriend(s, *a, *b).await?;
            Ok(done_if(removed > 0))
        }
        WriteOp::Block {
            user_id,
            blocked_id,
            block,
            at_ms,
        } => {
            let shard = s.placement.user(*user_id);
            if !*block {
                let removed = s
                    .exec(
                        shard,
                        "DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?",
                        (user_id, blocked_id),
                    )
                    .await?;
                return Ok(done_if(removed == 1));
            }
            s.exec(
                shard,
                "INSERT IGNORE INTO blocks (user_id, blocked_id, since_ms) VALUES (?, ?, ?)",
                (user_id, blocked_id, at_ms),
            )
            .await?;
            unfriend(s, *user_id, *blocked_id).await?;
            for shard in both(s, *user_id, *blocked_id) {
                s.exec(
                    shard,
                    "DELETE FROM friend_requests WHERE (from_user = ? AND to_user = ?)
                        OR (from_user = ? AND to_user = ?)",
                    (user_id, blocked_id, blocked_id, user_id),
                )
                .await?;
            }
            Ok(WriteOutcome::Done)
        }
        WriteOp::MarkRead {
            user_id,
            conversation_id,
            seq,
        } => {
            advance_read_cursor(s, *user_id, conversation_id, *seq).await?;
            Ok(WriteOutcome::Done)
        }
        WriteOp::Recall {
            conversation_id,
            seq,
            sender_id,
            not_before_ms,
        } => {
            // One conditional statement, as in the embedded store: sender,
            // window and "not yet recalled" are checked where the row changes.
            let shard = s.placement.conversation(conversation_id);
            let matched = s
                .exec(
                    shard,
                    "UPDATE messages SET recalled = 1, content = '', media = NULL, location = NULL
                     WHERE conversation_id = ? AND seq = ? AND sender_id = ?
                       AND sent_at_ms >= ? AND recalled = 0",
                    (conversation_id, seq, sender_id, not_before_ms),
                )
                .await?;
            Ok(done_if(matched == 1))
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
            let shard = s.placement.user(*user_id);
            s.exec(
                shard,
                "INSERT INTO device_cursors (user_id, device_id, conversation_id, delivered_seq)
                 VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE delivered_seq = GREATEST(delivered_seq, VALUES(delivered_seq))",
                (user_id, device_id, conversation_id, seq),
            )
            .await?;
            Ok(WriteOutcome::Done)
        }
    }
}

/// Removes both directions of a friendship; rows removed.
pub(super) async fn unfriend(s: &mut Shards, a: i64, b: i64) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (x, y) in [(a, b), (b, a)] {
        let shard = s.placement.user(x);
        removed += s
            .exec(
                shard,
                "DELETE FROM friends WHERE user_id = ? AND friend_id = ?",
                (x, y),
            )
            .await?;
    }
    Ok(removed)
}

/// Appends `msg` under its given seq, or (seq 0) under the conversation's
/// next one; `heads` knows the newest seq this batch gave each
/// conversation so far.
pub(super) async fn append_message(
    s: &mut Shards,
    msg: &ChatMessage,
    heads: &HashMap<&str, (&ChatMessage, i64)>,
) -> Result<Stored, StoreError> {
    let shard = s.placement.conversation(&msg.conversation_id);
    let seq = match msg.seq {
        0 => match heads.get(msg.conversation_id.as_str()) {
            Some((_, seq)) => seq + 1,
            None => {
                let last: Option<i64> = s
                    .first(
                        shard,
                        "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?",
                        (&msg.conversation_id,),
                    )
                    .await?;
                last.unwrap_or(0) + 1
            }
        },
        given => given,
    };
    let inserted = s
        .insert_new(
            shard,
            "INSERT INTO messages (conversation_id, seq, server_msg_id, sender_id,
                 receiver_id, message_type, content, client_message_id, sent_at_ms, sender_device,
                 media, location, group_event)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            Params::Positional(message_values(msg, seq)),
        )
        .await?;
    if inserted {
        return Ok(Stored::At(seq));
    }
    // Nothing written: the client id is taken (a resend, however old), or
    // a given seq is (a replay).
    type FirstSend = (i64, i64, i64, i32, String, Option<Vec<u8>>, Option<Vec<u8>>);
    let first: Option<FirstSend> = s
        .first(
            shard,
            "SELECT seq, server_msg_id, sent_at_ms, message_type, content, media, location
             FROM messages
             WHERE conversation_id = ? AND sender_id = ? AND client_message_id = ?",
            (&msg.conversation_id, msg.sender_id, msg.client_message_id),
        )
        .await?;
    Ok(match first {
        Some((seq, server_msg_id, sent_at_ms, message_type, content, media, location)) => {
            Stored::SentBefore(SentBefore {
                seq,
                server_msg_id,
                sent_at_ms,
                same_content: message_type == msg.message_type
                    && content == msg.content
                    && media == msg.media.as_ref().map(Message::encode_to_vec)
                    && location == msg.location.as_ref().map(Message::encode_to_vec),
            })
        }
        None => Stored::SeqTaken,
    })
}
