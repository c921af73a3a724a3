//! A client's friends and presence calls: requests and answers, deletes
//! and blocks, the friend list, user search, and presence set and read.

use ourchat_protocol::pb;
use ourchat_protocol::Body;

use crate::{unexpected, Client, ClientError};

impl Client {
    async fn expect_done(&self, body: Body) -> Result<(), ClientError> {
        match self.request(body).await? {
            Body::Done(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Asks `user_id` to be friends (accepts, if they asked first).
    pub async fn request_friend(&self, user_id: i64, note: &str) -> Result<(), ClientError> {
        self.expect_done(Body::FriendRequest(pb::FriendRequestRequest {
            user_id,
            note: note.into(),
        }))
        .await
    }

    /// Accepts or rejects `from`'s friend request.
    pub async fn answer_friend(&self, from: i64, accept: bool) -> Result<(), ClientError> {
        self.expect_done(Body::RespondFriend(pb::RespondFriendRequest {
            from_user_id: from,
            accept,
        }))
        .await
    }

    /// Ends a friendship.
    pub async fn delete_friend(&self, user_id: i64) -> Result<(), ClientError> {
        self.expect_done(Body::DeleteFriend(pb::DeleteFriendRequest { user_id }))
            .await
    }

    /// Blocks (or, with `false`, unblocks) a user.
    pub async fn block(&self, user_id: i64, block: bool) -> Result<(), ClientError> {
        self.expect_done(Body::Block(pb::BlockRequest { user_id, block }))
            .await
    }

    /// My friends (with online state), pending requests and blocked users.
    pub async fn friends(&self) -> Result<pb::FriendsResponse, ClientError> {
        match self.request(Body::Friends(pb::FriendsRequest {})).await? {
            Body::FriendsResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Users whose username, nickname, phone or email starts with `query`.
    pub async fn search_users(
        &self,
        query: &str,
        limit: u32,
        after_user_id: i64,
    ) -> Result<pb::SearchUsersResponse, ClientError> {
        let request = pb::SearchUsersRequest {
            query: query.into(),
            limit,
            after_user_id,
        };
        match self.request(Body::SearchUsers(request)).await? {
            Body::SearchUsersResp(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Marks this device away (or back online).
    pub async fn set_presence(&self, state: pb::PresenceState) -> Result<(), ClientError> {
        self.expect_done(Body::SetPresence(pb::SetPresenceRequest {
            state: state as i32,
        }))
        .await
    }

    /// Presence of these users (only friends and myself are answered).
    pub async fn presence(&self, user_ids: &[i64]) -> Result<Vec<pb::PresenceInfo>, ClientError> {
        let query = pb::PresenceQuery {
            user_ids: user_ids.to_vec(),
        };
        match self.request(Body::PresenceQuery(query)).await? {
            Body::PresenceList(list) => Ok(list.users),
            other => Err(unexpected(other)),
        }
    }
}
