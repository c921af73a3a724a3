//! The embedded store's reads: messages, cursors, read marks and each
//! user's conversation list from the message log's index (and segments);
//! everything relational from SQLite.

use std::collections::HashMap;
use std::sync::Arc;

use ourchat_protocol::ConversationId;

use super::log_error;
use super::memory::Blocks;
use crate::msglog::disk::FileDisk;
use crate::msglog::index::Index;
use crate::msglog::store::MessageReader;
use crate::sqlite::SqliteReader;
use crate::{
    fingerprint_of, Account, ChatMessage, ConversationCursor, ConversationHead, ConversationRow,
    Device, FriendRequestRow, GroupMemberRow, GroupRow, ReadStore, RecentSend, Relation,
    StoreError, Visibility,
};

pub(crate) struct EmbeddedReader {
    pub(crate) sql: SqliteReader,
    pub(crate) log: MessageReader<FileDisk>,
    pub(crate) blocks: Arc<Blocks>,
}

fn recent_send(message: &ChatMessage) -> RecentSend {
    RecentSend {
        sender_id: message.sender_id,
        client_message_id: message.client_message_id,
        seq: message.seq,
        server_msg_id: message.server_msg_id,
        sent_at_ms: message.sent_at_ms,
        fingerprint: fingerprint_of(message),
    }
}

/// One conversation of a user's list.
struct Listed {
    id: ConversationId,
    text: String,
    visible: Visibility,
}

impl EmbeddedReader {
    /// Every conversation of `user_id` that holds a message, with what
    /// the user may see of it, by id.
    fn listed(&mut self, user_id: i64) -> Result<Vec<Listed>, StoreError> {
        let mut listed: HashMap<ConversationId, Visibility> = HashMap::new();
        for (text, visible) in self.sql.listed(user_id)? {
            if let Ok(id) = text.parse() {
                listed.insert(id, visible);
            }
        }
        self.log.with(|index, _| {
            for id in index.direct_conversations(user_id) {
                listed.entry(*id).or_default();
            }
            listed.retain(|id, _| index.last_seq(*id) > 0);
        });
        let mut listed: Vec<Listed> = listed
            .into_iter()
            .map(|(id, visible)| Listed {
                text: id.to_string(),
                id,
                visible,
            })
            .collect();
        listed.sort_unstable_by(|a, b| a.text.cmp(&b.text));
        Ok(listed)
    }

    fn read<T>(
        &self,
        conversation_id: &str,
        empty: T,
        work: impl FnOnce(&Index, &FileDisk, ConversationId) -> Result<T, crate::msglog::log::LogError>,
    ) -> Result<T, StoreError> {
        let Ok(conversation) = conversation_id.parse() else {
            return Ok(empty);
        };
        self.log
            .with(|index, disk| work(index, disk, conversation))
            .map_err(log_error)
    }
}

impl ReadStore for EmbeddedReader {
    fn check_health(&mut self) -> Result<(), StoreError> {
        self.sql.check_health()
    }

    fn account_by_username(&mut self, username: &str) -> Result<Option<Account>, StoreError> {
        self.sql.account_by_username(username)
    }

    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError> {
        self.sql.account_by_id(user_id)
    }

    fn sends_among(
        &mut self,
        conversation_id: &str,
        sends: &[(i64, i64)],
    ) -> Result<Vec<RecentSend>, StoreError> {
        self.read(conversation_id, Vec::new(), |index, disk, conversation| {
            let mut found = Vec::new();
            for &(sender, client_id) in sends {
                if let Some(seq) = index.sent(conversation, sender, client_id) {
                    if let Some(message) = index.message(disk, conversation, seq)? {
                        found.push(recent_send(&message));
                    }
                }
            }
            Ok(found)
        })
    }

    fn conversation_head(
        &mut self,
        conversation_id: &str,
        window: usize,
    ) -> Result<ConversationHead, StoreError> {
        // Blocks are in memory, the group's roster SQLite's, the messages
        // the log's.
        let (blocked, group) = match conversation_id.parse() {
            Ok(ConversationId::Direct { low, high }) => (self.blocks.between(low, high), None),
            _ => self.sql.standing(conversation_id)?,
        };
        let (last_seq, recent) = self.read(
            conversation_id,
            (0, Vec::new()),
            |index, disk, conversation| {
                let recent = index.history(disk, conversation, 0, window)?;
                Ok((
                    index.last_seq(conversation),
                    recent.iter().map(recent_send).collect(),
                ))
            },
        )?;
        Ok(ConversationHead {
            last_seq,
            recent,
            blocked,
            group,
        })
    }

    fn history(
        &mut self,
        conversation_id: &str,
        before_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.read(conversation_id, Vec::new(), |index, disk, conversation| {
            index.history(disk, conversation, before_seq, limit)
        })
    }

    fn messages_after(
        &mut self,
        conversation_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.read(conversation_id, Vec::new(), |index, disk, conversation| {
            index.after(disk, conversation, after_seq, limit)
        })
    }

    fn friends(&mut self, user_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.sql.friends(user_id)
    }

    fn friends_of_each(&mut self, user_ids: &[i64]) -> Result<Vec<Vec<(i64, i64)>>, StoreError> {
        self.sql.friends_of_each(user_ids)
    }

    fn friend_requests(&mut self, user_id: i64) -> Result<Vec<FriendRequestRow>, StoreError> {
        self.sql.friend_requests(user_id)
    }

    fn relation(&mut self, a: i64, b: i64) -> Result<Relation, StoreError> {
        self.sql.relation(a, b)
    }

    fn blocked_by(&mut self, user_id: i64) -> Result<Vec<i64>, StoreError> {
        self.sql.blocked_by(user_id)
    }

    fn search_users(
        &mut self,
        prefix: &str,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        self.sql.search_users(prefix, after_user_id, limit)
    }

    fn devices(&mut self, user_id: i64) -> Result<Vec<Device>, StoreError> {
        self.sql.devices(user_id)
    }

    fn device(&mut self, user_id: i64, device_id: &str) -> Result<Option<Device>, StoreError> {
        self.sql.device(user_id, device_id)
    }

    fn message(
        &mut self,
        conversation_id: &str,
        seq: i64,
    ) -> Result<Option<ChatMessage>, StoreError> {
        self.read(conversation_id, None, |index, disk, conversation| {
            index.message(disk, conversation, seq)
        })
    }

    fn read_seq(&mut self, user_id: i64, conversation_id: &str) -> Result<i64, StoreError> {
        self.read(conversation_id, 0, |index, _, conversation| {
            Ok(index.read_seq(user_id, conversation))
        })
    }

    fn conversations(
        &mut self,
        user_id: i64,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let listed = self.listed(user_id)?;
        let mut rows: Vec<ConversationRow> = self.log.with(|index, _| {
            listed
                .into_iter()
                .map(|c| {
                    let last_seq = index.last_seq(c.id);
                    ConversationRow {
                        last_seq: c.visible.to_seq.map_or(last_seq, |to| to.min(last_seq)),
                        last_at_ms: index.last_at_ms(c.id),
                        read_seq: index.read_seq(user_id, c.id),
                        conversation_id: c.text,
                    }
                })
                .collect()
        });
        // Most recent first; (last_at_ms, conversation_id) is the page key.
        let key = |row: &ConversationRow| (row.last_at_ms, row.conversation_id.clone());
        if let Some((at, id)) = before {
            rows.retain(|row| key(row) < (at, id.to_string()));
        }
        rows.sort_unstable_by_key(|row| std::cmp::Reverse(key(row)));
        rows.truncate(limit);
        Ok(rows)
    }

    fn group(&mut self, group_id: i64, viewer: i64) -> Result<Option<GroupRow>, StoreError> {
        self.sql.group(group_id, viewer)
    }

    fn group_members(
        &mut self,
        group_id: i64,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupMemberRow>, StoreError> {
        self.sql.group_members(group_id, after_user_id, limit)
    }

    fn my_groups(
        &mut self,
        user_id: i64,
        after_group_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupRow>, StoreError> {
        self.sql.my_groups(user_id, after_group_id, limit)
    }

    fn visibility(
        &mut self,
        user_id: i64,
        conversation_id: &str,
    ) -> Result<Option<Visibility>, StoreError> {
        match conversation_id.parse::<ConversationId>() {
            Ok(conversation @ ConversationId::Direct { .. }) => {
                let stored = self.log.with(|index, _| index.last_seq(conversation) > 0);
                Ok((stored && conversation.is_direct_member(user_id)).then(Visibility::default))
            }
            _ => self.sql.visibility(user_id, conversation_id),
        }
    }

    fn existing_users(&mut self, user_ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        self.sql.existing_users(user_ids)
    }

    fn conversation_cursors(
        &mut self,
        user_id: i64,
        device_id: &str,
    ) -> Result<Vec<ConversationCursor>, StoreError> {
        let listed = self.listed(user_id)?;
        Ok(self.log.with(|index, _| {
            listed
                .into_iter()
                .map(|c| ConversationCursor {
                    last_seq: index.last_seq(c.id),
                    delivered_seq: index.cursor(user_id, device_id, c.id),
                    visible: c.visible,
                    conversation_id: c.text,
                })
                .collect()
        }))
    }
}
