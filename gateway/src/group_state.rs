//! A group as its sequencing core holds it: who is in it with which role,
//! and the rules for changing that. Every change to a group is checked and
//! applied here, on the one core that owns the group's conversation, in the
//! same order as the group's messages; so a message sent right after a
//! removal is refused, and two admins racing cannot both win. Pure code:
//! no I/O, unit-tested below.

use std::collections::HashMap;
use std::rc::Rc;

use ourchat_protocol::pb::{self, group_event::Kind};
use ourchat_protocol::ErrorCode;
use ourchat_storage::{GroupChange, GroupRole, GroupRoster, NewGroup};

/// A change someone asks of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCommand {
    /// Create it, the actor as owner.
    Create {
        /// Fields.
        group: NewGroup,
        /// Initial members besides the owner (validated as accounts).
        members: Vec<i64>,
    },
    /// Edit name, description or avatar.
    Update {
        /// New name.
        name: Option<String>,
        /// New description.
        description: Option<String>,
        /// New avatar URL.
        avatar_url: Option<String>,
    },
    /// Add members (validated as accounts).
    Add(Vec<i64>),
    /// Remove members.
    Remove(Vec<i64>),
    /// The actor leaves.
    Leave,
    /// Make this member the owner.
    TransferOwner(i64),
    /// Make a member an admin, or an admin a member.
    SetAdmin {
        /// Whom.
        user_id: i64,
        /// Admin or member.
        admin: bool,
    },
    /// End the group.
    Dissolve,
}

/// One group's membership, as the sequencer checks it.
#[derive(Debug, Clone)]
pub struct GroupState {
    owner_id: i64,
    dissolved: bool,
    roles: HashMap<i64, GroupRole>,
    /// Every member, shared with in-flight messages for their fan-out;
    /// rebuilt only when membership changes.
    members: Rc<[i64]>,
}

/// A change that passed the rules and is applied to the state.
#[derive(Debug)]
pub struct Applied {
    /// What the store must do.
    pub change: GroupChange,
    /// What the event message records.
    pub event: pb::GroupEvent,
    /// Who is told: the members after the change, and anyone it removed.
    pub recipients: Rc<[i64]>,
}

fn forbidden(message: &str) -> pb::Error {
    pb::Error::new(ErrorCode::Forbidden, message)
}

fn not_found(message: &str) -> pb::Error {
    pb::Error::new(ErrorCode::NotFound, message)
}

impl GroupState {
    /// The state a stored roster describes.
    pub fn from_roster(roster: GroupRoster) -> Self {
        let roles: HashMap<i64, GroupRole> = roster.members.into_iter().collect();
        let members = roles.keys().copied().collect();
        GroupState {
            owner_id: roster.owner_id,
            dissolved: roster.dissolved,
            roles,
            members,
        }
    }

    /// Members to fan a message out to.
    pub fn members(&self) -> Rc<[i64]> {
        self.members.clone()
    }

    /// Whether `user` may post a message now.
    pub fn check_send(&self, user: i64) -> Result<(), pb::Error> {
        if self.dissolved {
            return Err(not_found("the group was dissolved"));
        }
        if !self.roles.contains_key(&user) {
            return Err(forbidden("not a member of this group"));
        }
        Ok(())
    }

    fn role_of(&self, user: i64) -> Result<GroupRole, pb::Error> {
        self.roles
            .get(&user)
            .copied()
            .ok_or_else(|| forbidden("not a member of this group"))
    }

    fn rebuild_members(&mut self) {
        self.members = self.roles.keys().copied().collect();
    }
}

/// Checks `command` by `actor` against `group` (`None`: no such group) and,
/// if it is allowed, applies it to `group`.
pub fn apply(
    group: &mut Option<GroupState>,
    actor: i64,
    command: GroupCommand,
    max_members: usize,
) -> Result<Applied, pb::Error> {
    let event = |kind: Kind, user_ids: Vec<i64>| pb::GroupEvent {
        kind: kind as i32,
        actor_id: actor,
        user_ids,
        ..Default::default()
    };
    if let GroupCommand::Create {
        group: fields,
        members,
    } = command
    {
        if group.is_some() {
            return Err(pb::Error::new(ErrorCode::Conflict, "the group exists"));
        }
        let mut everyone = vec![actor];
        everyone.extend(members.iter().copied().filter(|m| *m != actor));
        everyone.sort_unstable();
        everyone.dedup();
        if everyone.len() > max_members {
            return Err(too_many(max_members));
        }
        let mut roles: HashMap<i64, GroupRole> =
            everyone.iter().map(|m| (*m, GroupRole::Member)).collect();
        roles.insert(actor, GroupRole::Owner);
        let state = GroupState {
            owner_id: actor,
            dissolved: false,
            members: everyone.iter().copied().collect(),
            roles,
        };
        let recipients = state.members();
        *group = Some(state);
        let mut created = event(Kind::Created, everyone.clone());
        created.name = fields.name.clone();
        created.description = fields.description.clone();
        created.avatar_url = fields.avatar_url.clone();
        let others = everyone.into_iter().filter(|m| *m != actor).collect();
        return Ok(Applied {
            change: GroupChange::Create {
                group: fields,
                members: others,
            },
            event: created,
            recipients,
        });
    }
    let state = group.as_mut().ok_or_else(|| not_found("no such group"))?;
    if state.dissolved {
        return Err(not_found("the group was dissolved"));
    }
    let actor_role = state.role_of(actor)?;
    let managing = matches!(actor_role, GroupRole::Owner | GroupRole::Admin);
    let owner = actor_role == GroupRole::Owner;
    match command {
        GroupCommand::Create { .. } => Err(pb::Error::new(ErrorCode::Internal, "unreachable")),
        GroupCommand::Update {
            name,
            description,
            avatar_url,
        } => {
            if !managing {
                return Err(forbidden("only the owner or an admin can edit the group"));
            }
            let mut updated = event(Kind::Updated, Vec::new());
            updated.name = name.clone().unwrap_or_default();
            updated.description = description.clone().unwrap_or_default();
            updated.avatar_url = avatar_url.clone().unwrap_or_default();
            Ok(Applied {
                change: GroupChange::Update {
                    name,
                    description,
                    avatar_url,
                },
                event: updated,
                recipients: state.members(),
            })
        }
        GroupCommand::Add(users) => {
            if !managing {
                return Err(forbidden("only the owner or an admin can add members"));
            }
            let mut new: Vec<i64> = users
                .into_iter()
                .filter(|u| !state.roles.contains_key(u))
                .collect();
            new.sort_unstable();
            new.dedup();
            if new.is_empty() {
                return Err(pb::Error::new(ErrorCode::Conflict, "already members"));
            }
            if state.roles.len() + new.len() > max_members {
                return Err(too_many(max_members));
            }
            for user in &new {
                state.roles.insert(*user, GroupRole::Member);
            }
            state.rebuild_members();
            Ok(Applied {
                change: GroupChange::Join(new.clone()),
                event: event(Kind::Joined, new),
                recipients: state.members(),
            })
        }
        GroupCommand::Remove(mut users) => {
            if !managing {
                return Err(forbidden("only the owner or an admin can remove members"));
            }
            users.sort_unstable();
            users.dedup();
            if users.is_empty() {
                return Err(pb::Error::new(ErrorCode::BadRequest, "name whom to remove"));
            }
            for user in &users {
                let role = state
                    .roles
                    .get(user)
                    .ok_or_else(|| not_found("not a member of this group"))?;
                if *user == actor {
                    return Err(pb::Error::new(
                        ErrorCode::BadRequest,
                        "to remove yourself, leave the group",
                    ));
                }
                match role {
                    GroupRole::Owner => return Err(forbidden("the owner cannot be removed")),
                    GroupRole::Admin if !owner => {
                        return Err(forbidden("only the owner can remove an admin"))
                    }
                    _ => {}
                }
            }
            Ok(leave(state, users, event(Kind::Removed, Vec::new())))
        }
        GroupCommand::Leave => {
            if owner {
                return Err(forbidden(
                    "the owner cannot leave: transfer ownership or dissolve the group",
                ));
            }
            Ok(leave(state, vec![actor], event(Kind::Left, Vec::new())))
        }
        GroupCommand::TransferOwner(to) => {
            if !owner {
                return Err(forbidden("only the owner can transfer ownership"));
            }
            if to == actor {
                return Err(pb::Error::new(ErrorCode::BadRequest, "you are the owner"));
            }
            if !state.roles.contains_key(&to) {
                return Err(not_found("the new owner must be a member"));
            }
            state.roles.insert(actor, GroupRole::Admin);
            state.roles.insert(to, GroupRole::Owner);
            state.owner_id = to;
            let mut changed = event(Kind::OwnerChanged, vec![to]);
            changed.role = pb::GroupRole::Owner as i32;
            Ok(Applied {
                change: GroupChange::TransferOwner { from: actor, to },
                event: changed,
                recipients: state.members(),
            })
        }
        GroupCommand::SetAdmin { user_id, admin } => {
            if !owner {
                return Err(forbidden("only the owner can appoint admins"));
            }
            match state.roles.get(&user_id) {
                None => return Err(not_found("not a member of this group")),
                Some(GroupRole::Owner) => {
                    return Err(pb::Error::new(
                        ErrorCode::BadRequest,
                        "the owner's role changes by transfer",
                    ))
                }
                Some(_) => {}
            }
            let role = if admin {
                GroupRole::Admin
            } else {
                GroupRole::Member
            };
            state.roles.insert(user_id, role);
            let mut changed = event(Kind::RoleChanged, vec![user_id]);
            changed.role = role as i32;
            Ok(Applied {
                change: GroupChange::SetRole { user_id, role },
                event: changed,
                recipients: state.members(),
            })
        }
        GroupCommand::Dissolve => {
            if !owner {
                return Err(forbidden("only the owner can dissolve the group"));
            }
            let recipients = state.members();
            state.dissolved = true;
            state.roles.clear();
            state.rebuild_members();
            Ok(Applied {
                change: GroupChange::Dissolve,
                event: event(Kind::Dissolved, Vec::new()),
                recipients,
            })
        }
    }
}

/// Removes `users`; the event goes to them as well as to those who stay.
fn leave(state: &mut GroupState, users: Vec<i64>, mut event: pb::GroupEvent) -> Applied {
    let recipients = state.members();
    for user in &users {
        state.roles.remove(user);
    }
    state.rebuild_members();
    event.user_ids = users.clone();
    Applied {
        change: GroupChange::Leave(users),
        event,
        recipients,
    }
}

fn too_many(max_members: usize) -> pb::Error {
    pb::Error::new(
        ErrorCode::BadRequest,
        format!("a group holds at most {max_members} members"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: i64 = 1;
    const ADMIN: i64 = 2;
    const MEMBER: i64 = 3;
    const OUTSIDER: i64 = 9;

    fn group() -> Option<GroupState> {
        let mut group = None;
        let create = GroupCommand::Create {
            group: NewGroup {
                group_id: 100,
                name: "g".into(),
                description: String::new(),
                avatar_url: String::new(),
                owner_id: OWNER,
                created_at_ms: 0,
            },
            members: vec![ADMIN, MEMBER, 4, 4, OWNER],
        };
        let applied = apply(&mut group, OWNER, create, 10).unwrap();
        assert_eq!(applied.event.user_ids, vec![OWNER, ADMIN, MEMBER, 4]);
        apply(
            &mut group,
            OWNER,
            GroupCommand::SetAdmin {
                user_id: ADMIN,
                admin: true,
            },
            10,
        )
        .unwrap();
        group
    }

    fn code(result: Result<Applied, pb::Error>) -> ErrorCode {
        ErrorCode::try_from(result.unwrap_err().code).unwrap()
    }

    #[test]
    fn roles_decide_who_may_do_what() {
        let mut g = group();
        let remove = |u| GroupCommand::Remove(vec![u]);
        assert_eq!(
            code(apply(&mut g, ADMIN, remove(OWNER), 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(apply(&mut g, MEMBER, remove(4), 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(apply(&mut g, OUTSIDER, GroupCommand::Leave, 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(apply(&mut g, OWNER, GroupCommand::Leave, 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(apply(&mut g, ADMIN, GroupCommand::Dissolve, 10)),
            ErrorCode::Forbidden
        );
        let transfer = GroupCommand::TransferOwner(MEMBER);
        assert_eq!(
            code(apply(&mut g, ADMIN, transfer, 10)),
            ErrorCode::Forbidden
        );
        // An admin removes a member, who is told and can no longer send.
        let applied = apply(&mut g, ADMIN, remove(4), 10).unwrap();
        assert!(applied.recipients.contains(&4));
        assert_eq!(applied.change, GroupChange::Leave(vec![4]));
        let state = g.as_ref().unwrap();
        assert_eq!(
            ErrorCode::try_from(state.check_send(4).unwrap_err().code).unwrap(),
            ErrorCode::Forbidden
        );
        assert!(state.check_send(MEMBER).is_ok());
    }

    #[test]
    fn size_cap_transfer_and_dissolve() {
        let mut g = group();
        let add = GroupCommand::Add((10..20).collect());
        assert_eq!(code(apply(&mut g, OWNER, add, 10)), ErrorCode::BadRequest);
        let add_again = GroupCommand::Add(vec![MEMBER]);
        assert_eq!(
            code(apply(&mut g, ADMIN, add_again, 10)),
            ErrorCode::Conflict
        );
        apply(&mut g, OWNER, GroupCommand::TransferOwner(MEMBER), 10).unwrap();
        // The old owner is an admin now and may leave.
        apply(&mut g, OWNER, GroupCommand::Leave, 10).unwrap();
        let applied = apply(&mut g, MEMBER, GroupCommand::Dissolve, 10).unwrap();
        assert_eq!(applied.recipients.len(), 3);
        assert_eq!(
            code(apply(&mut g, MEMBER, GroupCommand::Leave, 10)),
            ErrorCode::NotFound
        );
        assert!(g.as_ref().unwrap().check_send(MEMBER).is_err());
    }
}
