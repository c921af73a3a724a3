//! MySQL's group writes: what a stored group event changes in the group
//! and member tables.

use super::shards::Shards;
use super::writer::advance_read_cursor;
use crate::{ChatMessage, GroupChange, GroupRole, StoreError};

/// Applies a group change whose event message `event` was just stored.
pub(super) async fn apply_group_change(
    s: &mut Shards,
    event: &ChatMessage,
    seq: i64,
    change: &GroupChange,
) -> Result<(), StoreError> {
    let group_id = event.group_id;
    let group_shard = s.placement.group(group_id);
    let conversation_id = event.conversation_id.as_str();
    match change {
        GroupChange::Create { group, members } => {
            s.exec(
                group_shard,
                "INSERT INTO chat_groups (group_id, name, description, avatar_url, owner_id,
                     created_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    group.group_id,
                    &group.name,
                    &group.description,
                    &group.avatar_url,
                    group.owner_id,
                    group.created_at_ms,
                ),
            )
            .await?;
            join_group(s, event, group.owner_id, GroupRole::Owner).await?;
            for member in members {
                join_group(s, event, *member, GroupRole::Member).await?;
            }
        }
        GroupChange::Update {
            name,
            description,
            avatar_url,
        } => {
            s.exec(
                group_shard,
                "UPDATE chat_groups SET name = COALESCE(?, name),
                     description = COALESCE(?, description), avatar_url = COALESCE(?, avatar_url)
                 WHERE group_id = ?",
                (name, description, avatar_url, group_id),
            )
            .await?;
        }
        GroupChange::Join(users) => {
            for user in users {
                join_group(s, event, *user, GroupRole::Member).await?;
            }
        }
        GroupChange::Leave(users) => {
            for user in users {
                s.exec(
                    group_shard,
                    "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
                    (group_id, user),
                )
                .await?;
                close_window(s, *user, conversation_id, seq).await?;
            }
        }
        GroupChange::SetRole { user_id, role } => {
            set_role(s, group_id, *user_id, *role).await?;
        }
        GroupChange::TransferOwner { from, to } => {
            set_role(s, group_id, *from, GroupRole::Admin).await?;
            set_role(s, group_id, *to, GroupRole::Owner).await?;
            s.exec(
                group_shard,
                "UPDATE chat_groups SET owner_id = ? WHERE group_id = ?",
                (to, group_id),
            )
            .await?;
        }
        GroupChange::Dissolve => {
            s.exec(
                group_shard,
                "UPDATE chat_groups SET dissolved = 1 WHERE group_id = ?",
                (group_id,),
            )
            .await?;
            let members: Vec<i64> = s
                .rows(
                    group_shard,
                    "SELECT user_id FROM group_members WHERE group_id = ? FOR UPDATE",
                    (group_id,),
                )
                .await?;
            for member in members {
                close_window(s, member, conversation_id, seq).await?;
            }
            s.exec(
                group_shard,
                "DELETE FROM group_members WHERE group_id = ?",
                (group_id,),
            )
            .await?;
        }
    }
    Ok(())
}

/// A member joins at the event's seq: a rejoin starts a new window, and the
/// join event itself does not count as unread.
pub(super) async fn join_group(
    s: &mut Shards,
    event: &ChatMessage,
    user_id: i64,
    role: GroupRole,
) -> Result<(), StoreError> {
    let group_shard = s.placement.group(event.group_id);
    s.exec(
        group_shard,
        "INSERT INTO group_members (group_id, user_id, role, join_seq, joined_at_ms)
         VALUES (?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE role = VALUES(role), join_seq = VALUES(join_seq),
             joined_at_ms = VALUES(joined_at_ms)",
        (
            event.group_id,
            user_id,
            role as i32,
            event.seq,
            event.sent_at_ms,
        ),
    )
    .await?;
    let user_shard = s.placement.user(user_id);
    s.exec(
        user_shard,
        "INSERT INTO user_conversations (user_id, conversation_id, from_seq, to_seq)
         VALUES (?, ?, ?, NULL)
         ON DUPLICATE KEY UPDATE from_seq = VALUES(from_seq), to_seq = NULL",
        (user_id, &event.conversation_id, event.seq),
    )
    .await?;
    advance_read_cursor(s, user_id, &event.conversation_id, event.seq).await
}

/// A member's visible window ends at `seq`.
pub(super) async fn close_window(
    s: &mut Shards,
    user_id: i64,
    conversation_id: &str,
    seq: i64,
) -> Result<(), StoreError> {
    let shard = s.placement.user(user_id);
    s.exec(
        shard,
        "UPDATE user_conversations SET to_seq = ?
         WHERE user_id = ? AND conversation_id = ? AND to_seq IS NULL",
        (seq, user_id, conversation_id),
    )
    .await?;
    Ok(())
}

pub(super) async fn set_role(
    s: &mut Shards,
    group_id: i64,
    user_id: i64,
    role: GroupRole,
) -> Result<(), StoreError> {
    let shard = s.placement.group(group_id);
    s.exec(
        shard,
        "UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?",
        (role as i32, group_id, user_id),
    )
    .await?;
    Ok(())
}
