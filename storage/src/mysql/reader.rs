//! A MySQL reader: its runtime, its connections to the primaries and to
//! the replicas (rested for a while after one fails), and the lookups
//! several reads share.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use mysql_async::{Params, Row, Value};

use super::rows::{
    account_from, message_from_row, placeholders, AccountTuple, ACCOUNT_COLUMNS, MESSAGE_COLUMNS,
};
use super::shards::Shards;
use super::IN_CHUNK;
use crate::{
    content_fingerprint, Account, ChatMessage, GroupRole, GroupRoster, RecentSend, StoreError,
};

pub(super) struct MysqlReader {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) primary: Shards,
    /// History and search go here when replicas are configured.
    pub(super) replica: Option<Shards>,
    /// After a replica fails, reads go to the primaries until then.
    pub(super) replica_resting_until: Option<Instant>,
}

/// How long reads avoid replicas after one failed: a dead replica must not
/// cost every read a failed dial first.
pub(super) const REPLICA_REST: Duration = Duration::from_secs(5);

pub(super) type ShardRead<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + 'a>>;

pub(super) type SendRow = (
    i64,
    i64,
    i64,
    i64,
    i64,
    i32,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

pub(super) fn recent_send(r: SendRow) -> RecentSend {
    RecentSend {
        sender_id: r.0,
        client_message_id: r.1,
        seq: r.2,
        server_msg_id: r.3,
        sent_at_ms: r.4,
        fingerprint: content_fingerprint(r.5, &r.6, r.7.as_deref(), r.8.as_deref()),
    }
}

impl MysqlReader {
    /// Runs `read` on the primaries, dropping failed connections so the
    /// next read dials again.
    pub(super) fn run<T>(
        &mut self,
        read: impl for<'a> FnOnce(&'a mut Shards) -> ShardRead<'a, T>,
    ) -> Result<T, StoreError> {
        let result = self.runtime.block_on(read(&mut self.primary));
        if let Err(error) = &result {
            self.primary.after_error(error);
        }
        result
    }

    /// Runs `read` on the replicas when there are any and they answer,
    /// else on the primaries: a replica that is down or refuses costs
    /// freshness of history and search, never the answer.
    pub(super) fn run_on_replica<T>(
        &mut self,
        read: impl for<'a> Fn(&'a mut Shards) -> ShardRead<'a, T>,
    ) -> Result<T, StoreError> {
        let resting = self
            .replica_resting_until
            .is_some_and(|until| Instant::now() < until);
        let Some(replicas) = self.replica.as_mut().filter(|_| !resting) else {
            return self.run(read);
        };
        match self.runtime.block_on(read(replicas)) {
            Err(error @ StoreError::Unavailable { .. }) => {
                replicas.after_error(&error);
                tracing::warn!(%error, "replica read failed; reading the primaries for a while");
                self.replica_resting_until = Some(Instant::now() + REPLICA_REST);
                self.run(read)
            }
            answered => answered,
        }
    }
}

pub(super) async fn account_by_id(
    s: &mut Shards,
    user_id: i64,
) -> Result<Option<Account>, StoreError> {
    let shard = s.placement.user(user_id);
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM users WHERE user_id = ?");
    Ok(s.first::<AccountTuple>(shard, &sql, (user_id,))
        .await?
        .map(account_from))
}

pub(super) async fn exists(
    s: &mut Shards,
    shard: usize,
    sql: &str,
    params: impl Into<Params> + Send,
) -> Result<bool, StoreError> {
    Ok(s.first::<i64>(shard, sql, params).await?.unwrap_or(0) != 0)
}

pub(super) async fn group_roster(
    s: &mut Shards,
    group_id: i64,
) -> Result<Option<GroupRoster>, StoreError> {
    let shard = s.placement.group(group_id);
    let Some((owner_id, dissolved)) = s
        .first::<(i64, bool)>(
            shard,
            "SELECT owner_id, dissolved FROM chat_groups WHERE group_id = ?",
            (group_id,),
        )
        .await?
    else {
        return Ok(None);
    };
    let members = s
        .rows::<(i64, i32)>(
            shard,
            "SELECT user_id, role FROM group_members WHERE group_id = ?",
            (group_id,),
        )
        .await?
        .into_iter()
        .map(|(user_id, role)| (user_id, GroupRole::from_i32(role)))
        .collect();
    Ok(Some(GroupRoster {
        owner_id,
        dissolved,
        members,
    }))
}

/// Heads (last_seq, last_at_ms) of the given conversations, gathered from
/// their shards.
pub(super) async fn heads_of(
    s: &mut Shards,
    conversation_ids: &[String],
) -> Result<HashMap<String, (i64, i64)>, StoreError> {
    let mut by_shard: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for id in conversation_ids {
        by_shard
            .entry(s.placement.conversation(id))
            .or_default()
            .push(id);
    }
    let mut heads = HashMap::with_capacity(conversation_ids.len());
    for (shard, ids) in by_shard {
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT conversation_id, last_seq, last_at_ms FROM conversations
                 WHERE conversation_id IN ({})",
                placeholders(chunk.len())
            );
            let params: Vec<Value> = chunk.iter().map(|id| Value::from(*id)).collect();
            for (id, last_seq, last_at) in s
                .rows::<(String, i64, i64)>(shard, &sql, Params::Positional(params))
                .await?
            {
                heads.insert(id, (last_seq, last_at));
            }
        }
    }
    Ok(heads)
}

pub(super) async fn messages(
    s: &mut Shards,
    conversation_id: &str,
    condition: &str,
    seq: i64,
    limit: usize,
) -> Result<Vec<ChatMessage>, StoreError> {
    let shard = s.placement.conversation(conversation_id);
    let sql =
        format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND {condition}");
    s.rows::<Row>(shard, &sql, (conversation_id, seq, limit as u64))
        .await?
        .into_iter()
        .map(message_from_row)
        .collect()
}
