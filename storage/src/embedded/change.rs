//! A group change as the message log keeps it next to its event: the log
//! is the record of what happened, and SQLite's group tables are brought
//! up to it at start when a crash fell between the two.

use prost::Message;

use crate::{GroupChange, GroupRole, NewGroup};

/// The change's fields; which are used depends on `kind`.
#[derive(Clone, PartialEq, prost::Message)]
struct ChangeRecord {
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(int64, repeated, tag = "2")]
    users: Vec<i64>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    description: Option<String>,
    #[prost(string, optional, tag = "5")]
    avatar_url: Option<String>,
    #[prost(int64, tag = "6")]
    group_id: i64,
    #[prost(int64, tag = "7")]
    owner_id: i64,
    #[prost(int64, tag = "8")]
    created_at_ms: i64,
    #[prost(int32, tag = "9")]
    role: i32,
}

const CREATE: i32 = 1;
const UPDATE: i32 = 2;
const JOIN: i32 = 3;
const LEAVE: i32 = 4;
const SET_ROLE: i32 = 5;
const TRANSFER_OWNER: i32 = 6;
const DISSOLVE: i32 = 7;

/// The change's bytes.
pub(crate) fn encode(change: &GroupChange) -> Vec<u8> {
    let mut record = ChangeRecord::default();
    match change {
        GroupChange::Create { group, members } => {
            record.kind = CREATE;
            record.users = members.clone();
            record.name = Some(group.name.clone());
            record.description = Some(group.description.clone());
            record.avatar_url = Some(group.avatar_url.clone());
            record.group_id = group.group_id;
            record.owner_id = group.owner_id;
            record.created_at_ms = group.created_at_ms;
        }
        GroupChange::Update {
            name,
            description,
            avatar_url,
        } => {
            record.kind = UPDATE;
            record.name = name.clone();
            record.description = description.clone();
            record.avatar_url = avatar_url.clone();
        }
        GroupChange::Join(users) => {
            record.kind = JOIN;
            record.users = users.clone();
        }
        GroupChange::Leave(users) => {
            record.kind = LEAVE;
            record.users = users.clone();
        }
        GroupChange::SetRole { user_id, role } => {
            record.kind = SET_ROLE;
            record.users = vec![*user_id];
            record.role = *role as i32;
        }
        GroupChange::TransferOwner { from, to } => {
            record.kind = TRANSFER_OWNER;
            record.users = vec![*from, *to];
        }
        GroupChange::Dissolve => record.kind = DISSOLVE,
    }
    record.encode_to_vec()
}

/// The change back from its bytes (`None`: they are not one).
pub(crate) fn decode(bytes: &[u8]) -> Option<GroupChange> {
    let record = ChangeRecord::decode(bytes).ok()?;
    Some(match record.kind {
        CREATE => GroupChange::Create {
            group: NewGroup {
                group_id: record.group_id,
                name: record.name.unwrap_or_default(),
                description: record.description.unwrap_or_default(),
                avatar_url: record.avatar_url.unwrap_or_default(),
                owner_id: record.owner_id,
                created_at_ms: record.created_at_ms,
            },
            members: record.users,
        },
        UPDATE => GroupChange::Update {
            name: record.name,
            description: record.description,
            avatar_url: record.avatar_url,
        },
        JOIN => GroupChange::Join(record.users),
        LEAVE => GroupChange::Leave(record.users),
        SET_ROLE => GroupChange::SetRole {
            user_id: *record.users.first()?,
            role: GroupRole::from_i32(record.role),
        },
        TRANSFER_OWNER => GroupChange::TransferOwner {
            from: *record.users.first()?,
            to: *record.users.get(1)?,
        },
        DISSOLVE => GroupChange::Dissolve,
        _ => return None,
    })
}

/// The users a change adds: their read mark moves to its event (their own
/// join is not unread).
pub(crate) fn joined(change: &GroupChange) -> Vec<i64> {
    match change {
        GroupChange::Create { group, members } => std::iter::once(group.owner_id)
            .chain(members.iter().copied())
            .collect(),
        GroupChange::Join(users) => users.clone(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_reads_back_as_written() {
        let changes = [
            GroupChange::Create {
                group: NewGroup {
                    group_id: 7,
                    name: "g".into(),
                    description: "d".into(),
                    avatar_url: "a".into(),
                    owner_id: 1,
                    created_at_ms: 10,
                },
                members: vec![2, 3],
            },
            GroupChange::Update {
                name: Some("n".into()),
                description: None,
                avatar_url: Some(String::new()),
            },
            GroupChange::Join(vec![4]),
            GroupChange::Leave(vec![2, 3]),
            GroupChange::SetRole {
                user_id: 4,
                role: GroupRole::Admin,
            },
            GroupChange::TransferOwner { from: 1, to: 4 },
            GroupChange::Dissolve,
        ];
        for change in changes {
            assert_eq!(decode(&encode(&change)), Some(change));
        }
        assert_eq!(decode(b"\xff\xff"), None);
    }
}
