//! Group requests from a session: create, edit, membership and roles,
//! dissolve, and the member and group lists. A change is validated here
//! (field sizes, that the named users exist), then sent as a GROUP_EVENT
//! message to the core that sequences the group's conversation, which
//! checks the actor's role against the group as it is at that point in the
//! conversation (see [`crate::group_state`]), stores the event and the
//! change in one write, and fans the event out to the members.

use futures::channel::oneshot;
use ourchat_protocol::pb::{self, ChatMessage, MessageType};
use ourchat_protocol::{Body, ConversationId, ErrorCode};
use ourchat_storage::{GroupRow, NewGroup};

use crate::core::{pool_error, CoreMsg, Reply, SendJob};
use crate::group_state::GroupCommand;
use crate::handlers::{bad, page_size, Caller, Session};

const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 512;
const MAX_AVATAR_URL_CHARS: usize = 2048;

impl Caller {
    pub(crate) async fn create_group(
        &self,
        session: &Session,
        request: pb::CreateGroupRequest,
    ) -> Result<Body, pb::Error> {
        let group_id = self.create_group_inner(session, request).await?;
        Ok(Body::CreateGroupResp(pb::CreateGroupResponse {
            success: true,
            error: None,
            group_id,
            conversation_id: ConversationId::Group(group_id).to_string(),
        }))
    }

    async fn create_group_inner(
        &self,
        session: &Session,
        request: pb::CreateGroupRequest,
    ) -> Result<i64, pb::Error> {
        let me = session.user_id;
        if request.owner_id != 0 && request.owner_id != me {
            return Err(pb::Error::new(
                ErrorCode::Forbidden,
                "owner_id must be your own user id (or 0)",
            ));
        }
        if request.group_name.trim().is_empty() {
            return Err(bad("group_name is required"));
        }
        check_text("group_name", &request.group_name, MAX_NAME_CHARS)?;
        check_text("description", &request.description, MAX_DESCRIPTION_CHARS)?;
        check_text("avatar_url", &request.avatar_url, MAX_AVATAR_URL_CHARS)?;
        let mut members = request.member_ids;
        members.retain(|m| *m != me);
        self.check_users_exist(&mut members).await?;
        let group_id = self.core.next_id();
        let group = NewGroup {
            group_id,
            name: request.group_name,
            description: request.description,
            avatar_url: request.avatar_url,
            owner_id: me,
            created_at_ms: ourchat_protocol::ids::now_ms() as i64,
        };
        self.change(session, group_id, GroupCommand::Create { group, members })
            .await?;
        Ok(group_id)
    }

    /// Sends a change to the group's core and waits until it is stored;
    /// the seq of its event.
    async fn change(
        &self,
        session: &Session,
        group_id: i64,
        command: GroupCommand,
    ) -> Result<i64, pb::Error> {
        if group_id <= 0 {
            return Err(bad("group_id is required"));
        }
        let conv = ConversationId::Group(group_id);
        let event = ChatMessage {
            conversation_id: conv.to_string(),
            sender_id: session.user_id,
            message_type: MessageType::GroupEvent as i32,
            // Events are never resent by a client: a fresh id cannot collide.
            client_message_id: self.core.next_id(),
            sender_device: String::from(&*session.device_id),
            group_id,
            ..Default::default()
        };
        self.core.wait_for_writer_room().await?;
        let (reply, answer) = oneshot::channel();
        let job = SendJob {
            conv,
            message: Box::new(event),
            origin_conn: self.conn_id,
            command: Some(command),
            reply: Reply::Waiting(reply),
        };
        let owner = self.core.owner_of_conversation(&conv);
        self.core
            .route(owner, CoreMsg::Sequence(Box::new(job)))
            .await;
        match answer.await {
            Ok(Ok(accepted)) => Ok(accepted.seq),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(pool_error(ourchat_workers::PoolError::Closed)),
        }
    }

    /// Replies to a change with its event's seq, or the refusal.
    async fn reply_change(
        &self,
        session: &Session,
        group_id: i64,
        command: Result<GroupCommand, pb::Error>,
    ) -> Result<Body, pb::Error> {
        let seq = self.change(session, group_id, command?).await?;
        Ok(Body::GroupChangeResp(pb::GroupChangeResponse {
            group_id,
            seq,
        }))
    }

    pub(crate) async fn update_group(
        &self,
        session: &Session,
        request: pb::UpdateGroupRequest,
    ) -> Result<Body, pb::Error> {
        let command = (|| {
            if request.name.is_none()
                && request.description.is_none()
                && request.avatar_url.is_none()
            {
                return Err(bad("nothing to update"));
            }
            if let Some(name) = &request.name {
                if name.trim().is_empty() {
                    return Err(bad("name cannot be empty"));
                }
                check_text("name", name, MAX_NAME_CHARS)?;
            }
            if let Some(description) = &request.description {
                check_text("description", description, MAX_DESCRIPTION_CHARS)?;
            }
            if let Some(avatar_url) = &request.avatar_url {
                check_text("avatar_url", avatar_url, MAX_AVATAR_URL_CHARS)?;
            }
            Ok(GroupCommand::Update {
                name: request.name.clone(),
                description: request.description.clone(),
                avatar_url: request.avatar_url.clone(),
            })
        })();
        self.reply_change(session, request.group_id, command).await
    }

    pub(crate) async fn add_members(
        &self,
        session: &Session,
        request: pb::AddMembersRequest,
    ) -> Result<Body, pb::Error> {
        let mut users = request.user_ids;
        let command = match self.check_users_exist(&mut users).await {
            Ok(()) if users.is_empty() => Err(bad("name whom to add")),
            Ok(()) => Ok(GroupCommand::Add(users)),
            Err(error) => Err(error),
        };
        self.reply_change(session, request.group_id, command).await
    }

    pub(crate) async fn remove_members(
        &self,
        session: &Session,
        request: pb::RemoveMembersRequest,
    ) -> Result<Body, pb::Error> {
        let command = self.bounded(request.user_ids).map(GroupCommand::Remove);
        self.reply_change(session, request.group_id, command).await
    }

    pub(crate) async fn leave_group(
        &self,
        session: &Session,
        request: pb::LeaveGroupRequest,
    ) -> Result<Body, pb::Error> {
        self.reply_change(session, request.group_id, Ok(GroupCommand::Leave))
            .await
    }

    pub(crate) async fn transfer_owner(
        &self,
        session: &Session,
        request: pb::TransferOwnerRequest,
    ) -> Result<Body, pb::Error> {
        let command = Ok(GroupCommand::TransferOwner(request.new_owner_id));
        self.reply_change(session, request.group_id, command).await
    }

    pub(crate) async fn set_admin(
        &self,
        session: &Session,
        request: pb::SetAdminRequest,
    ) -> Result<Body, pb::Error> {
        let command = Ok(GroupCommand::SetAdmin {
            user_id: request.user_id,
            admin: request.admin,
        });
        self.reply_change(session, request.group_id, command).await
    }

    pub(crate) async fn dissolve_group(
        &self,
        session: &Session,
        request: pb::DissolveGroupRequest,
    ) -> Result<Body, pb::Error> {
        self.reply_change(session, request.group_id, Ok(GroupCommand::Dissolve))
            .await
    }

    pub(crate) async fn get_group(
        &self,
        session: &Session,
        request: pb::GetGroupRequest,
    ) -> Result<Body, pb::Error> {
        let group = self.member_view(session.user_id, request.group_id).await?;
        Ok(Body::GroupInfo(group_info(group)))
    }

    pub(crate) async fn group_members(
        &self,
        session: &Session,
        request: pb::GroupMembersRequest,
    ) -> Result<Body, pb::Error> {
        let result = async {
            self.member_view(session.user_id, request.group_id).await?;
            let limit = page_size(request.limit);
            let (group_id, after) = (request.group_id, request.after_user_id);
            let mut rows = self
                .core
                .read(move |store| store.group_members(group_id, after, limit + 1))
                .await?;
            let has_more = rows.len() > limit;
            rows.truncate(limit);
            let members = rows
                .into_iter()
                .map(|m| pb::GroupMember {
                    user_id: m.user_id,
                    role: m.role as i32,
                    joined_at_ms: m.joined_at_ms,
                    join_seq: m.join_seq,
                })
                .collect();
            Ok::<_, pb::Error>(pb::GroupMembersResponse {
                group_id,
                members,
                has_more,
            })
        }
        .await;
        result.map(Body::GroupMembersResp)
    }

    pub(crate) async fn my_groups(
        &self,
        session: &Session,
        request: pb::MyGroupsRequest,
    ) -> Result<Body, pb::Error> {
        let limit = page_size(request.limit);
        let (me, after) = (session.user_id, request.after_group_id);
        let result = self
            .core
            .read(move |store| store.my_groups(me, after, limit + 1))
            .await;
        let mut rows = result?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let groups = rows.into_iter().map(group_info).collect();
        Ok(Body::MyGroupsResp(pb::MyGroupsResponse {
            groups,
            has_more,
        }))
    }

    /// The group, if `user_id` is a member of it; members only may look.
    async fn member_view(&self, user_id: i64, group_id: i64) -> Result<GroupRow, pb::Error> {
        if group_id <= 0 {
            return Err(bad("group_id is required"));
        }
        let group = self
            .core
            .read(move |store| store.group(group_id, user_id))
            .await?;
        match group {
            Some(group) if group.viewer_role.is_some() => Ok(group),
            Some(group) if group.dissolved => Err(pb::Error::new(
                ErrorCode::NotFound,
                "the group was dissolved",
            )),
            _ => Err(pb::Error::new(
                ErrorCode::Forbidden,
                "not a member of this group",
            )),
        }
    }

    /// Refuses a list of users longer than a group may be.
    fn within_group_size(&self, users: &[i64]) -> Result<(), pb::Error> {
        let max = self.core.shared.config.server.max_group_members;
        if users.len() > max {
            return Err(bad(&format!("a group holds at most {max} members")));
        }
        Ok(())
    }

    /// A non-empty list of user ids no longer than a group may be.
    fn bounded(&self, users: Vec<i64>) -> Result<Vec<i64>, pb::Error> {
        self.within_group_size(&users)?;
        if users.is_empty() {
            return Err(bad("name at least one user"));
        }
        Ok(users)
    }

    /// Dedupes `users` and checks each is an account.
    async fn check_users_exist(&self, users: &mut Vec<i64>) -> Result<(), pb::Error> {
        self.within_group_size(users)?;
        users.sort_unstable();
        users.dedup();
        if users.is_empty() {
            return Ok(());
        }
        let asked = users.clone();
        let found = self
            .core
            .read(move |store| store.existing_users(&asked))
            .await?;
        if found.len() != users.len() {
            let missing: Vec<String> = users
                .iter()
                .filter(|u| !found.contains(u))
                .take(5)
                .map(|u| u.to_string())
                .collect();
            return Err(pb::Error::new(
                ErrorCode::NotFound,
                format!("no such user: {}", missing.join(", ")),
            ));
        }
        Ok(())
    }
}

fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), pb::Error> {
    if value.chars().count() > max_chars || value.chars().any(char::is_control) {
        return Err(bad(&format!(
            "{field} must be at most {max_chars} characters, no control characters"
        )));
    }
    Ok(())
}

fn group_info(group: GroupRow) -> pb::GroupInfo {
    pb::GroupInfo {
        group_id: group.group_id,
        name: group.name,
        description: group.description,
        avatar_url: group.avatar_url,
        owner_id: group.owner_id,
        member_count: group.member_count,
        created_at_ms: group.created_at_ms,
        my_role: group.viewer_role.map_or(0, |r| r as i32),
    }
}
