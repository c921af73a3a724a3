//! The store's reads on MySQL, each gathered from the shards that hold it.

use std::collections::BTreeMap;

use mysql_async::{Params, Row, Value};

use super::reader::{
    account_by_id, exists, group_roster, heads_of, messages, recent_send, MysqlReader, SendRow,
};
use super::rows::{
    account_from, device_from, group_from, message_from_row, placeholders, AccountTuple,
    GroupTuple, ACCOUNT_COLUMNS, DEVICE_COLUMNS, GROUP_SELECT, MESSAGE_COLUMNS,
};
use super::IN_CHUNK;
use crate::{
    Account, ChatMessage, ConversationCursor, ConversationHead, ConversationRow, Device,
    FriendRequestRow, GroupMemberRow, GroupRole, GroupRow, ReadStore, RecentSend, Relation,
    StoreError, Visibility, SEND_COLUMNS,
};
use ourchat_protocol::ConversationId;

impl ReadStore for MysqlReader {
    fn account_by_username(&mut self, username: &str) -> Result<Option<Account>, StoreError> {
        let username = username.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.username(&username);
                let Some(user_id) = s
                    .first::<i64>(
                        shard,
                        "SELECT user_id FROM usernames WHERE username = ?",
                        (&username,),
                    )
                    .await?
                else {
                    return Ok(None);
                };
                Ok(account_by_id(s, user_id)
                    .await?
                    .filter(|account| account.username == username))
            })
        })
    }

    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError> {
        self.run(|s| Box::pin(account_by_id(s, user_id)))
    }

    fn sends_among(
        &mut self,
        conversation_id: &str,
        sends: &[(i64, i64)],
    ) -> Result<Vec<RecentSend>, StoreError> {
        let conversation_id = conversation_id.to_string();
        let sends = sends.to_vec();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.conversation(&conversation_id);
                let sql = format!(
                    "SELECT {SEND_COLUMNS} FROM messages
                     WHERE conversation_id = ? AND sender_id = ? AND client_message_id = ?"
                );
                let mut found = Vec::new();
                for (sender, client_message_id) in sends {
                    let row: Option<SendRow> = s
                        .first(shard, &sql, (&conversation_id, sender, client_message_id))
                        .await?;
                    found.extend(row.map(recent_send));
                }
                Ok(found)
            })
        })
    }

    fn conversation_head(
        &mut self,
        conversation_id: &str,
        window: usize,
    ) -> Result<ConversationHead, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.conversation(&conversation_id);
                let recent: Vec<RecentSend> = s
                    .rows::<SendRow>(
                        shard,
                        &format!(
                            "SELECT {SEND_COLUMNS} FROM messages WHERE conversation_id = ?
                             ORDER BY seq DESC LIMIT ?"
                        ),
                        (&conversation_id, window as u64),
                    )
                    .await?
                    .into_iter()
                    .map(recent_send)
                    .collect();
                let last_seq = match recent.first() {
                    Some(newest) => newest.seq,
                    None => s
                        .first::<i64>(
                            shard,
                            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?",
                            (&conversation_id,),
                        )
                        .await?
                        .unwrap_or(0),
                };
                let (blocked, group) = match conversation_id.parse::<ConversationId>() {
                    Ok(ConversationId::Direct { low, high }) => {
                        let mut blocked = false;
                        for (a, b) in [(low, high), (high, low)] {
                            let shard = s.placement.user(a);
                            blocked |= exists(
                                s,
                                shard,
                                "SELECT COUNT(*) FROM blocks WHERE user_id = ? AND blocked_id = ?",
                                (a, b),
                            )
                            .await?;
                        }
                        (blocked, None)
                    }
                    Ok(ConversationId::Group(group_id)) => {
                        (false, group_roster(s, group_id).await?)
                    }
                    Err(_) => (false, None),
                };
                Ok(ConversationHead {
                    last_seq,
                    recent,
                    blocked,
                    group,
                })
            })
        })
    }

    fn history(
        &mut self,
        conversation_id: &str,
        before_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let conversation_id = conversation_id.to_string();
        let before = if before_seq <= 0 {
            i64::MAX
        } else {
            before_seq
        };
        self.run_on_replica(|s| {
            let conversation_id = conversation_id.clone();
            Box::pin(async move {
                messages(
                    s,
                    &conversation_id,
                    "seq < ? ORDER BY seq DESC LIMIT ?",
                    before,
                    limit,
                )
                .await
            })
        })
    }

    fn messages_after(
        &mut self,
        conversation_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                messages(
                    s,
                    &conversation_id,
                    "seq > ? ORDER BY seq ASC LIMIT ?",
                    after_seq,
                    limit,
                )
                .await
            })
        })
    }

    fn friends(&mut self, user_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                s.rows(
                    shard,
                    "SELECT friend_id, since_ms FROM friends WHERE user_id = ? ORDER BY friend_id",
                    (user_id,),
                )
                .await
            })
        })
    }

    fn friend_requests(&mut self, user_id: i64) -> Result<Vec<FriendRequestRow>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                Ok(s.rows::<(i64, i64, String, i64)>(
                    shard,
                    "SELECT from_user, to_user, note, created_at_ms FROM friend_requests
                         WHERE from_user = ? OR to_user = ? ORDER BY created_at_ms, from_user",
                    (user_id, user_id),
                )
                .await?
                .into_iter()
                .map(|r| FriendRequestRow {
                    from: r.0,
                    to: r.1,
                    note: r.2,
                    created_at_ms: r.3,
                })
                .collect())
            })
        })
    }

    fn relation(&mut self, a: i64, b: i64) -> Result<Relation, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let (shard_a, shard_b) = (s.placement.user(a), s.placement.user(b));
                Ok(Relation {
                    friends: exists(
                        s,
                        shard_a,
                        "SELECT COUNT(*) FROM friends WHERE user_id = ? AND friend_id = ?",
                        (a, b),
                    )
                    .await?,
                    a_blocked_b: exists(
                        s,
                        shard_a,
                        "SELECT COUNT(*) FROM blocks WHERE user_id = ? AND blocked_id = ?",
                        (a, b),
                    )
                    .await?,
                    b_blocked_a: exists(
                        s,
                        shard_b,
                        "SELECT COUNT(*) FROM blocks WHERE user_id = ? AND blocked_id = ?",
                        (b, a),
                    )
                    .await?,
                    b_requested_a: exists(
                        s,
                        shard_a,
                        "SELECT COUNT(*) FROM friend_requests WHERE from_user = ? AND to_user = ?",
                        (b, a),
                    )
                    .await?,
                })
            })
        })
    }

    fn blocked_by(&mut self, user_id: i64) -> Result<Vec<i64>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                s.rows(
                    shard,
                    "SELECT blocked_id FROM blocks WHERE user_id = ? ORDER BY blocked_id",
                    (user_id,),
                )
                .await
            })
        })
    }

    fn search_users(
        &mut self,
        prefix: &str,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        let pattern = crate::like_prefix(prefix);
        self.run_on_replica(|s| {
            let pattern = pattern.clone();
            Box::pin(async move {
                let sql = format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM users
                     WHERE user_id > ? AND (username LIKE ? OR nickname LIKE ?
                        OR phone LIKE ? OR email LIKE ?)
                     ORDER BY user_id LIMIT ?"
                );
                // Every shard's first `limit`, merged by id: the global
                // first `limit` are among them.
                let mut found = Vec::new();
                for shard in 0..s.placement.count {
                    let rows = s
                        .rows::<AccountTuple>(
                            shard,
                            &sql,
                            (
                                after_user_id,
                                &pattern,
                                &pattern,
                                &pattern,
                                &pattern,
                                limit as u64,
                            ),
                        )
                        .await?;
                    found.extend(rows.into_iter().map(account_from));
                }
                found.sort_by_key(|a| a.user_id);
                found.truncate(limit);
                Ok(found)
            })
        })
    }

    fn devices(&mut self, user_id: i64) -> Result<Vec<Device>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                let sql = format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ?
                     ORDER BY last_seen_ms DESC, device_id"
                );
                Ok(s.rows(shard, &sql, (user_id,))
                    .await?
                    .into_iter()
                    .map(device_from)
                    .collect())
            })
        })
    }

    fn device(&mut self, user_id: i64, device_id: &str) -> Result<Option<Device>, StoreError> {
        let device_id = device_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                let sql = format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND device_id = ?"
                );
                Ok(s.first(shard, &sql, (user_id, &device_id))
                    .await?
                    .map(device_from))
            })
        })
    }

    fn message(
        &mut self,
        conversation_id: &str,
        seq: i64,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.conversation(&conversation_id);
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND seq = ?"
                );
                s.first::<Row>(shard, &sql, (&conversation_id, seq))
                    .await?
                    .map(message_from_row)
                    .transpose()
            })
        })
    }

    fn read_seq(&mut self, user_id: i64, conversation_id: &str) -> Result<i64, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                Ok(s.first::<i64>(
                    shard,
                    "SELECT read_seq FROM read_cursors WHERE user_id = ? AND conversation_id = ?",
                    (user_id, &conversation_id),
                )
                .await?
                .unwrap_or(0))
            })
        })
    }

    fn conversations(
        &mut self,
        user_id: i64,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let (before_at, before_id) = before
            .map(|(at, id)| (at, id.to_string()))
            .unwrap_or((i64::MAX, String::new()));
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                let listed = s
                    .rows::<(String, Option<i64>, i64)>(
                        shard,
                        "SELECT uc.conversation_id, uc.to_seq, COALESCE(r.read_seq, 0)
                         FROM user_conversations uc
                         LEFT JOIN read_cursors r ON r.user_id = uc.user_id
                              AND r.conversation_id = uc.conversation_id
                         WHERE uc.user_id = ?",
                        (user_id,),
                    )
                    .await?;
                let ids: Vec<String> = listed.iter().map(|row| row.0.clone()).collect();
                let heads = heads_of(s, &ids).await?;
                let mut rows: Vec<ConversationRow> = listed
                    .into_iter()
                    .filter_map(|(id, to_seq, read_seq)| {
                        let (last_seq, last_at_ms) = *heads.get(&id)?;
                        Some(ConversationRow {
                            last_seq: to_seq.map_or(last_seq, |to| to.min(last_seq)),
                            last_at_ms,
                            read_seq,
                            conversation_id: id,
                        })
                    })
                    .filter(|row| {
                        row.last_at_ms < before_at
                            || (row.last_at_ms == before_at
                                && row.conversation_id.as_str() < before_id.as_str())
                    })
                    .collect();
                rows.sort_by(|x, y| {
                    (y.last_at_ms, &y.conversation_id).cmp(&(x.last_at_ms, &x.conversation_id))
                });
                rows.truncate(limit);
                Ok(rows)
            })
        })
    }

    fn group(&mut self, group_id: i64, viewer: i64) -> Result<Option<GroupRow>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.group(group_id);
                Ok(
                    s.first::<GroupTuple>(shard, GROUP_SELECT, (viewer, group_id))
                        .await?
                        .map(group_from),
                )
            })
        })
    }

    fn group_members(
        &mut self,
        group_id: i64,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupMemberRow>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.group(group_id);
                Ok(s.rows::<(i64, i32, i64, i64)>(
                    shard,
                    "SELECT user_id, role, join_seq, joined_at_ms FROM group_members
                         WHERE group_id = ? AND user_id > ? ORDER BY user_id LIMIT ?",
                    (group_id, after_user_id, limit.min(i64::MAX as usize) as u64),
                )
                .await?
                .into_iter()
                .map(|r| GroupMemberRow {
                    user_id: r.0,
                    role: GroupRole::from_i32(r.1),
                    join_seq: r.2,
                    joined_at_ms: r.3,
                })
                .collect())
            })
        })
    }

    fn my_groups(
        &mut self,
        user_id: i64,
        after_group_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupRow>, StoreError> {
        self.run(|s| {
            Box::pin(async move {
                // A member's window of a group conversation is open: the
                // user's own shard knows their groups without asking others.
                let shard = s.placement.user(user_id);
                let listed: Vec<String> = s
                    .rows(
                        shard,
                        "SELECT conversation_id FROM user_conversations
                         WHERE user_id = ? AND to_seq IS NULL AND conversation_id LIKE 'sg\\_%'",
                        (user_id,),
                    )
                    .await?;
                let mut group_ids: Vec<i64> = listed
                    .iter()
                    .filter_map(|id| match id.parse::<ConversationId>() {
                        Ok(ConversationId::Group(group_id)) if group_id > after_group_id => {
                            Some(group_id)
                        }
                        _ => None,
                    })
                    .collect();
                group_ids.sort_unstable();
                let mut groups = Vec::new();
                for group_id in group_ids {
                    if groups.len() >= limit {
                        break;
                    }
                    let shard = s.placement.group(group_id);
                    if let Some(row) = s
                        .first::<GroupTuple>(shard, GROUP_SELECT, (user_id, group_id))
                        .await?
                    {
                        groups.push(group_from(row));
                    }
                }
                Ok(groups)
            })
        })
    }

    fn visibility(
        &mut self,
        user_id: i64,
        conversation_id: &str,
    ) -> Result<Option<Visibility>, StoreError> {
        let conversation_id = conversation_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                Ok(s.first::<(i64, Option<i64>)>(
                    shard,
                    "SELECT from_seq, to_seq FROM user_conversations
                         WHERE user_id = ? AND conversation_id = ?",
                    (user_id, &conversation_id),
                )
                .await?
                .map(|(from_seq, to_seq)| Visibility { from_seq, to_seq }))
            })
        })
    }

    fn existing_users(&mut self, user_ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let user_ids = user_ids.to_vec();
        self.run(|s| {
            Box::pin(async move {
                let mut by_shard: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
                for &id in &user_ids {
                    by_shard.entry(s.placement.user(id)).or_default().push(id);
                }
                let mut found = std::collections::HashSet::new();
                for (shard, ids) in by_shard {
                    for chunk in ids.chunks(IN_CHUNK) {
                        let sql = format!(
                            "SELECT user_id FROM users WHERE user_id IN ({})",
                            placeholders(chunk.len())
                        );
                        let params: Vec<Value> = chunk.iter().map(|id| Value::from(*id)).collect();
                        found.extend(
                            s.rows::<i64>(shard, &sql, Params::Positional(params))
                                .await?,
                        );
                    }
                }
                Ok(user_ids
                    .into_iter()
                    .filter(|id| found.contains(id))
                    .collect())
            })
        })
    }

    fn conversation_cursors(
        &mut self,
        user_id: i64,
        device_id: &str,
    ) -> Result<Vec<ConversationCursor>, StoreError> {
        let device_id = device_id.to_string();
        self.run(|s| {
            Box::pin(async move {
                let shard = s.placement.user(user_id);
                let listed = s
                    .rows::<(String, i64, i64, Option<i64>)>(
                        shard,
                        "SELECT uc.conversation_id, COALESCE(dc.delivered_seq, 0), uc.from_seq,
                             uc.to_seq
                         FROM user_conversations uc
                         LEFT JOIN device_cursors dc ON dc.user_id = uc.user_id
                              AND dc.device_id = ? AND dc.conversation_id = uc.conversation_id
                         WHERE uc.user_id = ?
                         ORDER BY uc.conversation_id",
                        (&device_id, user_id),
                    )
                    .await?;
                let ids: Vec<String> = listed.iter().map(|row| row.0.clone()).collect();
                let heads = heads_of(s, &ids).await?;
                Ok(listed
                    .into_iter()
                    .filter_map(|(id, delivered_seq, from_seq, to_seq)| {
                        let (last_seq, _) = *heads.get(&id)?;
                        Some(ConversationCursor {
                            conversation_id: id,
                            last_seq,
                            delivered_seq,
                            visible: Visibility { from_seq, to_seq },
                        })
                    })
                    .collect())
            })
        })
    }
}
