//! A client's group calls: group sends, create, members and roles,
//! leave, transfer, dissolve, and the group reads.

use ourchat_protocol::pb::{self, MessageType};
use ourchat_protocol::Body;

use crate::{new_client_message_id, refused, unexpected, Client, ClientError, SendAck};

impl Client {
    /// Sends a text to a group I am in, with a fresh id.
    pub async fn send_group_text(&self, group_id: i64, text: &str) -> Result<SendAck, ClientError> {
        self.send_request(pb::SendMessageRequest {
            group_id,
            message_type: MessageType::Text as i32,
            content: text.into(),
            client_message_id: new_client_message_id(),
            ..Default::default()
        })
        .await
    }

    /// Creates a group with me as owner; returns its id.
    pub async fn create_group(
        &self,
        name: &str,
        member_ids: &[i64],
        description: &str,
    ) -> Result<i64, ClientError> {
        let request = pb::CreateGroupRequest {
            owner_id: 0,
            group_name: name.into(),
            member_ids: member_ids.to_vec(),
            description: description.into(),
            avatar_url: String::new(),
        };
        match self.request(Body::CreateGroup(request)).await? {
            Body::CreateGroupResp(r) if r.success => Ok(r.group_id),
            Body::CreateGroupResp(r) => Err(refused(r.error)),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a group change; returns the seq of the event it stored.
    pub async fn group_change(&self, body: Body) -> Result<i64, ClientError> {
        match self.request(body).await? {
            Body::GroupChangeResp(r) => Ok(r.seq),
            other => Err(unexpected(other)),
        }
    }

    /// Adds members (owner or admin).
    pub async fn add_members(&self, group_id: i64, user_ids: &[i64]) -> Result<i64, ClientError> {
        self.group_change(Body::AddMembers(pb::AddMembersRequest {
            group_id,
            user_ids: user_ids.to_vec(),
        }))
        .await
    }

    /// Removes members (owner, or admin removing members).
    pub async fn remove_members(
        &self,
        group_id: i64,
        user_ids: &[i64],
    ) -> Result<i64, ClientError> {
        self.group_change(Body::RemoveMembers(pb::RemoveMembersRequest {
            group_id,
            user_ids: user_ids.to_vec(),
        }))
        .await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group_id: i64) -> Result<i64, ClientError> {
        self.group_change(Body::LeaveGroup(pb::LeaveGroupRequest { group_id }))
            .await
    }

    /// Makes `user_id` (not) an admin (owner only).
    pub async fn set_admin(
        &self,
        group_id: i64,
        user_id: i64,
        admin: bool,
    ) -> Result<i64, ClientError> {
        self.group_change(Body::SetAdmin(pb::SetAdminRequest {
            group_id,
            user_id,
            admin,
        }))
        .await
    }

    /// Hands the group to another member (owner only).
    pub async fn transfer_owner(
        &self,
        group_id: i64,
        new_owner_id: i64,
    ) -> Result<i64, ClientError> {
        self.group_change(Body::TransferOwner(pb::TransferOwnerRequest {
            group_id,
            new_owner_id,
        }))
        .await
    }

    /// Ends the group (owner only).
    pub async fn dissolve_group(&self, group_id: i64) -> Result<i64, ClientError> {
        self.group_change(Body::DissolveGroup(pb::DissolveGroupRequest { group_id }))
            .await
    }

    /// A group I am in.
    pub async fn group(&self, group_id: i64) -> Result<pb::GroupInfo, ClientError> {
        match self
            .request(Body::GetGroup(pb::GetGroupRequest { group_id }))
            .await?
        {
            Body::GroupInfo(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// One page of a group's members, by user id after `after_user_id`.
    pub async fn group_members(
        &self,
        group_id: i64,
        after_user_id: i64,
        limit: u32,
    ) -> Result<pb::GroupMembersResponse, ClientError> {
        let request = pb::GroupMembersRequest {
            group_id,
            after_user_id,
            limit,
        };
        match self.request(Body::GroupMembers(request)).await? {
            Body::GroupMembersResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// One page of my groups, by id after `after_group_id`.
    pub async fn my_groups(
        &self,
        after_group_id: i64,
        limit: u32,
    ) -> Result<pb::MyGroupsResponse, ClientError> {
        let request = pb::MyGroupsRequest {
            after_group_id,
            limit,
        };
        match self.request(Body::MyGroups(request)).await? {
            Body::MyGroupsResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}
