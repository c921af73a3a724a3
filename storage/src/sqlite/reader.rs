//! SQLite's reads: one connection per reader thread, every query a cached
//! statement.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{
    account_from_row, device_from_row, group_from_row, message_from_row, recent_send,
    ACCOUNT_COLUMNS, GROUP_COLUMNS, MESSAGE_COLUMNS,
};
use crate::{
    Account, ChatMessage, ConversationCursor, ConversationHead, ConversationRow, Device,
    FriendRequestRow, GroupMemberRow, GroupRole, GroupRoster, GroupRow, ReadStore, RecentSend,
    Relation, StoreError, Visibility, SEND_COLUMNS,
};
use ourchat_protocol::ConversationId;

pub(crate) struct SqliteReader {
    pub(super) conn: Connection,
}

impl SqliteReader {
    /// The conversations listed for a user (groups from their join, and
    /// 1:1 conversations of stores written before the message log) with
    /// what the user may see of each.
    pub(crate) fn listed(&mut self, user_id: i64) -> Result<Vec<(String, Visibility)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT conversation_id, from_seq, to_seq FROM user_conversations
                 WHERE user_id = ?1",
            )?
            .query_map([user_id], |row| {
                Ok((
                    row.get(0)?,
                    Visibility {
                        from_seq: row.get(1)?,
                        to_seq: row.get(2)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// What the sequencer checks sends against, besides the messages: for
    /// a 1:1 conversation whether one side blocked the other, for a group
    /// its roster.
    pub(crate) fn standing(
        &mut self,
        conversation_id: &str,
    ) -> Result<(bool, Option<GroupRoster>), StoreError> {
        match conversation_id.parse::<ConversationId>() {
            Ok(ConversationId::Direct { low, high }) => {
                let blocked = self
                    .conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM blocks WHERE (user_id = ?1 AND blocked_id = ?2)
                            OR (user_id = ?2 AND blocked_id = ?1))",
                    )?
                    .query_row(params![low, high], |row| row.get(0))?;
                Ok((blocked, None))
            }
            Ok(ConversationId::Group(group_id)) => Ok((false, self.group_roster(group_id)?)),
            Err(_) => Ok((false, None)),
        }
    }

    fn group_roster(&mut self, group_id: i64) -> Result<Option<GroupRoster>, StoreError> {
        let Some((owner_id, dissolved)) = self
            .conn
            .prepare_cached("SELECT owner_id, dissolved FROM chat_groups WHERE group_id = ?1")?
            .query_row([group_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?
        else {
            return Ok(None);
        };
        let members = self
            .conn
            .prepare_cached("SELECT user_id, role FROM group_members WHERE group_id = ?1")?
            .query_map([group_id], |row| {
                Ok((row.get(0)?, GroupRole::from_i32(row.get(1)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(GroupRoster {
            owner_id,
            dissolved,
            members,
        }))
    }
}

/// SQLite takes LIMIT as i64; callers' limits are small, so saturate.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A user's friends and since when, by friend id.
const FRIENDS_OF_USER: &str =
    "SELECT friend_id, since_ms FROM friends WHERE user_id = ?1 ORDER BY friend_id";

/// [`FRIENDS_OF_USER`] run for `user_id` on its prepared statement.
fn friends_by(
    statement: &mut rusqlite::CachedStatement<'_>,
    user_id: i64,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    statement
        .query_map([user_id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect()
}

impl ReadStore for SqliteReader {
    fn check_health(&mut self) -> Result<(), StoreError> {
        let conn = &self.conn;
        conn.query_row("SELECT id FROM store_identity", [], |_| Ok(()))?;
        let objects = conn
            .prepare(
                "SELECT type, name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')",
            )?
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (kind, name, table) in objects {
            let probe = if kind == "table" {
                format!("SELECT * FROM \"{name}\" NOT INDEXED LIMIT 1")
            } else {
                let first_column: Option<String> = conn
                    .query_row(&format!("PRAGMA index_info(\"{name}\")"), [], |row| {
                        row.get(2)
                    })
                    .ok();
                let Some(column) = first_column else { continue };
                format!(
                    "SELECT 1 FROM \"{table}\" INDEXED BY \"{name}\" ORDER BY \"{column}\" LIMIT 1"
                )
            };
            // Only damage counts: a probe the planner cannot run is skipped.
            if let Err(err) = conn.query_row(&probe, [], |_| Ok(())).optional() {
                if let StoreError::Corrupt(message) = StoreError::from(err) {
                    return Err(StoreError::Corrupt(format!("{name}: {message}")));
                }
            }
        }
        Ok(())
    }

    fn account_by_username(&mut self, username: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM users WHERE username = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([username], account_from_row)
            .optional()?)
    }

    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM users WHERE user_id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([user_id], account_from_row)
            .optional()?)
    }

    fn friends(&mut self, user_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        Ok(friends_by(
            &mut self.conn.prepare_cached(FRIENDS_OF_USER)?,
            user_id,
        )?)
    }

    /// One read transaction for all: each statement alone would take and
    /// drop the database's locks (file locks, two system calls each way),
    /// and a reconnect storm asks for thousands a second.
    fn friends_of_each(&mut self, user_ids: &[i64]) -> Result<Vec<Vec<(i64, i64)>>, StoreError> {
        let read = self.conn.transaction()?;
        let mut statement = read.prepare_cached(FRIENDS_OF_USER)?;
        let lists = user_ids
            .iter()
            .map(|user_id| friends_by(&mut statement, *user_id))
            .collect::<Result<Vec<_>, _>>()?;
        drop(statement);
        read.commit()?;
        Ok(lists)
    }

    fn friend_requests(&mut self, user_id: i64) -> Result<Vec<FriendRequestRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT from_user, to_user, note, created_at_ms FROM friend_requests
                 WHERE from_user = ?1 OR to_user = ?1 ORDER BY created_at_ms, from_user",
            )?
            .query_map([user_id], |row| {
                Ok(FriendRequestRow {
                    from: row.get(0)?,
                    to: row.get(1)?,
                    note: row.get(2)?,
                    created_at_ms: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn relation(&mut self, a: i64, b: i64) -> Result<Relation, StoreError> {
        let exists = |conn: &Connection, sql: &str| -> Result<bool, StoreError> {
            Ok(conn
                .prepare_cached(sql)?
                .query_row(params![a, b], |row| row.get(0))?)
        };
        Ok(Relation {
            friends: exists(
                &self.conn,
                "SELECT EXISTS (SELECT 1 FROM friends WHERE user_id = ?1 AND friend_id = ?2)",
            )?,
            a_blocked_b: exists(
                &self.conn,
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE user_id = ?1 AND blocked_id = ?2)",
            )?,
            b_blocked_a: exists(
                &self.conn,
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE user_id = ?2 AND blocked_id = ?1)",
            )?,
            b_requested_a: exists(
                &self.conn,
                "SELECT EXISTS (SELECT 1 FROM friend_requests WHERE from_user = ?2 AND to_user = ?1)",
            )?,
        })
    }

    fn blocked_by(&mut self, user_id: i64) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT blocked_id FROM blocks WHERE user_id = ?1 ORDER BY blocked_id")?
            .query_map([user_id], |row| row.get(0))?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn search_users(
        &mut self,
        prefix: &str,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        let pattern = crate::like_prefix(prefix);
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM users
             WHERE user_id > ?2 AND (username LIKE ?1 ESCAPE '\\' OR nickname LIKE ?1 ESCAPE '\\'
                OR phone LIKE ?1 ESCAPE '\\' OR email LIKE ?1 ESCAPE '\\')
             ORDER BY user_id LIMIT ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![pattern, after_user_id, sql_limit(limit)],
                account_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn devices(&mut self, user_id: i64) -> Result<Vec<Device>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT device_id, device_type, last_seen_ms, token_epoch, signed_out FROM devices
                 WHERE user_id = ?1 ORDER BY last_seen_ms DESC, device_id",
            )?
            .query_map([user_id], device_from_row)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn device(&mut self, user_id: i64, device_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT device_id, device_type, last_seen_ms, token_epoch, signed_out FROM devices
                 WHERE user_id = ?1 AND device_id = ?2",
            )?
            .query_row(params![user_id, device_id], device_from_row)
            .optional()?)
    }

    fn sends_among(
        &mut self,
        conversation_id: &str,
        sends: &[(i64, i64)],
    ) -> Result<Vec<RecentSend>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {SEND_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND sender_id = ?2 AND client_message_id = ?3"
        ))?;
        let mut found = Vec::new();
        for (sender, client_message_id) in sends {
            let row = statement
                .query_row(
                    params![conversation_id, sender, client_message_id],
                    recent_send,
                )
                .optional()?;
            found.extend(row);
        }
        Ok(found)
    }

    fn conversation_head(
        &mut self,
        conversation_id: &str,
        window: usize,
    ) -> Result<ConversationHead, StoreError> {
        let recent = self
            .conn
            .prepare_cached(&format!(
                "SELECT {SEND_COLUMNS} FROM messages WHERE conversation_id = ?1
                     ORDER BY seq DESC LIMIT ?2"
            ))?
            .query_map(params![conversation_id, sql_limit(window)], recent_send)?
            .collect::<Result<Vec<_>, _>>()?;
        let (blocked, group) = self.standing(conversation_id)?;
        // The newest row is the head; with an empty window, ask for it alone.
        let last_seq = match recent.first() {
            Some(newest) => newest.seq,
            None => self
                .conn
                .prepare_cached(
                    "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?1",
                )?
                .query_row([conversation_id], |row| row.get(0))?,
        };
        Ok(ConversationHead {
            last_seq,
            recent,
            blocked,
            group,
        })
    }

    fn group(&mut self, group_id: i64, viewer: i64) -> Result<Option<GroupRow>, StoreError> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM chat_groups g WHERE g.group_id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![group_id, viewer], group_from_row)
            .optional()?)
    }

    fn group_members(
        &mut self,
        group_id: i64,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupMemberRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT user_id, role, join_seq, joined_at_ms FROM group_members
                 WHERE group_id = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3",
            )?
            .query_map(params![group_id, after_user_id, sql_limit(limit)], |row| {
                Ok(GroupMemberRow {
                    user_id: row.get(0)?,
                    role: GroupRole::from_i32(row.get(1)?),
                    join_seq: row.get(2)?,
                    joined_at_ms: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn my_groups(
        &mut self,
        user_id: i64,
        after_group_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupRow>, StoreError> {
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM group_members m JOIN chat_groups g ON g.group_id = m.group_id
             WHERE m.user_id = ?2 AND m.group_id > ?1 ORDER BY m.group_id LIMIT ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![after_group_id, user_id, sql_limit(limit)],
                group_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn visibility(
        &mut self,
        user_id: i64,
        conversation_id: &str,
    ) -> Result<Option<Visibility>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT from_seq, to_seq FROM user_conversations
                 WHERE user_id = ?1 AND conversation_id = ?2",
            )?
            .query_row(params![user_id, conversation_id], |row| {
                Ok(Visibility {
                    from_seq: row.get(0)?,
                    to_seq: row.get(1)?,
                })
            })
            .optional()?)
    }

    fn existing_users(&mut self, user_ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE user_id = ?1)")?;
        let mut found = Vec::with_capacity(user_ids.len());
        for &user_id in user_ids {
            if statement.query_row([user_id], |row| row.get::<_, bool>(0))? {
                found.push(user_id);
            }
        }
        Ok(found)
    }

    fn history(
        &mut self,
        conversation_id: &str,
        before_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let before = if before_seq <= 0 {
            i64::MAX
        } else {
            before_seq
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND seq < ?2
             ORDER BY seq DESC LIMIT ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![conversation_id, before, sql_limit(limit)],
                message_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn messages_after(
        &mut self,
        conversation_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND seq > ?2
             ORDER BY seq ASC LIMIT ?3"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_map(
                params![conversation_id, after_seq, sql_limit(limit)],
                message_from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn message(
        &mut self,
        conversation_id: &str,
        seq: i64,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND seq = ?2"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![conversation_id, seq], message_from_row)
            .optional()?)
    }

    fn read_seq(&mut self, user_id: i64, conversation_id: &str) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT read_seq FROM read_cursors WHERE user_id = ?1 AND conversation_id = ?2",
            )?
            .query_row(params![user_id, conversation_id], |row| row.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn conversations(
        &mut self,
        user_id: i64,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        // Most recent first; (last_at_ms, conversation_id) is the page key.
        let (before_at, before_id) = before.unwrap_or((i64::MAX, ""));
        Ok(self
            .conn
            .prepare_cached(
                "SELECT c.conversation_id, MIN(c.last_seq, COALESCE(uc.to_seq, c.last_seq)),
                     c.last_at_ms, COALESCE(r.read_seq, 0)
                 FROM user_conversations uc
                 JOIN conversations c ON c.conversation_id = uc.conversation_id
                 LEFT JOIN read_cursors r ON r.user_id = uc.user_id
                      AND r.conversation_id = uc.conversation_id
                 WHERE uc.user_id = ?1
                   AND (c.last_at_ms < ?2 OR (c.last_at_ms = ?2 AND c.conversation_id < ?3))
                 ORDER BY c.last_at_ms DESC, c.conversation_id DESC
                 LIMIT ?4",
            )?
            .query_map(
                params![user_id, before_at, before_id, sql_limit(limit)],
                |row| {
                    Ok(ConversationRow {
                        conversation_id: row.get(0)?,
                        last_seq: row.get(1)?,
                        last_at_ms: row.get(2)?,
                        read_seq: row.get(3)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn conversation_cursors(
        &mut self,
        user_id: i64,
        device_id: &str,
    ) -> Result<Vec<ConversationCursor>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT uc.conversation_id, c.last_seq, COALESCE(dc.delivered_seq, 0),
                     uc.from_seq, uc.to_seq
                 FROM user_conversations uc
                 JOIN conversations c ON c.conversation_id = uc.conversation_id
                 LEFT JOIN device_cursors dc ON dc.user_id = uc.user_id AND dc.device_id = ?2
                      AND dc.conversation_id = uc.conversation_id
                 WHERE uc.user_id = ?1
                 ORDER BY uc.conversation_id",
            )?
            .query_map(params![user_id, device_id], |row| {
                Ok(ConversationCursor {
                    conversation_id: row.get(0)?,
                    last_seq: row.get(1)?,
                    delivered_seq: row.get(2)?,
                    visible: Visibility {
                        from_seq: row.get(3)?,
                        to_seq: row.get(4)?,
                    },
                })
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }
}
