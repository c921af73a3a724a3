//! Cluster mode's Redis: sequence numbers, each user's send budget across
//! every node, and the directory of devices online on each node (for
//! presence and sign-outs across nodes).
//!
//! Sequence numbers: one atomic script call
//! hands a batch of sends their seqs (`INCR` on the conversation's counter)
//! and records each `(sender, client_message_id)` with what it got, so a
//! resend — on this node or, after a failover, on another — gets the same
//! seq instead of a new one. A seq is never handed out twice, even when
//! the node that asked dies before using it (that leaves a gap, never a
//! reuse). Redis must persist (`appendonly yes`) for this to survive a
//! Redis restart; a missing counter restarts from the store's last seq.

use redis::{Commands, Script};

use crate::StoreError;

/// How long a resend is recognised across nodes.
pub const DEFAULT_DEDUPE_TTL_SECS: u64 = 86_400;

/// Gives each send in `ARGV[3..]` (sender, client id, server id, time) the
/// counter's next value unless it was seen: then what it got before.
/// Every key shares the conversation's hash tag, so this also runs on
/// Redis Cluster.
const ALLOCATE: &str = r"
local counter = KEYS[1]
if redis.call('EXISTS', counter) == 0 then
  redis.call('SET', counter, ARGV[1])
end
local ttl = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 4 do
  local seen = counter .. ':sent:' .. ARGV[i] .. ':' .. ARGV[i + 1]
  local before = redis.call('GET', seen)
  if before then
    out[#out + 1] = 'r:' .. before
  else
    local seq = redis.call('INCR', counter)
    local value = seq .. ':' .. ARGV[i + 2] .. ':' .. ARGV[i + 3]
    redis.call('SET', seen, value, 'EX', ttl)
    out[#out + 1] = 'n:' .. value
  end
end
return out
";

/// Takes up to `ARGV[3]` sends from the user's token bucket (`ARGV[1]`
/// per second, at most `ARGV[2]`); answers how many it took. Redis's own
/// clock refills it, so nodes' clocks need not agree. The key expires once
/// the bucket would be full again: idle users cost nothing.
const TAKE_SENDS: &str = r"
local rate = math.max(tonumber(ARGV[1]), 0.001)
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1]) or burst
local at = tonumber(saved[2]) or now
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
end
local taken = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - taken
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return taken
";

/// Sets a device's directory entry (`ARGV`: device, `node:away`, ttl) and
/// answers what it was.
const PUT_DEVICE: &str = r"
local before = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return before
";

/// Removes a device's entry only if it still names this node (`ARGV[2]`,
/// `node:`): a device that moved to another node stays listed there.
const REMOVE_DEVICE: &str = r"
local before = redis.call('HGET', KEYS[1], ARGV[1])
if before and string.sub(before, 1, #ARGV[2]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

/// One send asking for a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRequest {
    /// Sender.
    pub sender_id: i64,
    /// The sender's dedupe key.
    pub client_message_id: i64,
    /// The id this node minted for it.
    pub server_msg_id: i64,
    /// The time this node gave it.
    pub sent_at_ms: i64,
}

/// What a send got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqGrant {
    /// A fresh seq: store the message under it.
    New {
        /// The seq.
        seq: i64,
    },
    /// A resend: it was accepted before with these; store nothing.
    Resend {
        /// Its seq.
        seq: i64,
        /// Its id.
        server_msg_id: i64,
        /// Its time.
        sent_at_ms: i64,
    },
}

/// One Redis connection for sequencing (one per worker thread).
pub struct RedisSeq {
    client: redis::Client,
    conn: Option<redis::Connection>,
    script: Script,
    take_sends: Script,
    put_device: Script,
    remove_device: Script,
    dedupe_ttl_secs: u64,
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        StoreError::Unavailable {
            retryable: err.is_io_error() || err.is_timeout() || err.is_connection_dropped(),
            message: format!("redis: {err}"),
        }
    }
}

impl RedisSeq {
    /// A sequencer on `url` (`redis://host:port`); connects on first use.
    pub fn new(url: &str, dedupe_ttl_secs: u64) -> Result<Self, StoreError> {
        Ok(RedisSeq {
            client: redis::Client::open(url)?,
            conn: None,
            script: Script::new(ALLOCATE),
            take_sends: Script::new(TAKE_SENDS),
            put_device: Script::new(PUT_DEVICE),
            remove_device: Script::new(REMOVE_DEVICE),
            dedupe_ttl_secs: dedupe_ttl_secs.max(1),
        })
    }

    /// Checks that Redis answers.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let _: String = redis::cmd("PING").query(conn)?;
        Ok(())
    }

    fn conn(&mut self) -> Result<&mut redis::Connection, StoreError> {
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(std::time::Duration::from_secs(2))?;
            conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
            conn.set_write_timeout(Some(std::time::Duration::from_secs(2)))?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("redis connection vanished".into()))
    }

    /// Seqs for `requests` in `conversation_id`, in order; `floor` is the
    /// store's last seq, the counter's start when Redis has none.
    pub fn allocate(
        &mut self,
        conversation_id: &str,
        floor: i64,
        requests: &[SeqRequest],
    ) -> Result<Vec<SeqGrant>, StoreError> {
        let key = format!("ourchat:seq:{{{conversation_id}}}");
        let ttl = self.dedupe_ttl_secs;
        self.conn()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Corrupt("redis connection vanished".into()));
        };
        let mut invocation = self.script.key(key);
        invocation.arg(floor).arg(ttl);
        for request in requests {
            invocation
                .arg(request.sender_id)
                .arg(request.client_message_id)
                .arg(request.server_msg_id)
                .arg(request.sent_at_ms);
        }
        let replies: Result<Vec<String>, _> = invocation.invoke(conn);
        let replies = match replies {
            Ok(replies) => replies,
            Err(error) => {
                self.conn = None;
                return Err(error.into());
            }
        };
        if replies.len() != requests.len() {
            return Err(StoreError::Corrupt(format!(
                "redis answered {} grants for {} sends",
                replies.len(),
                requests.len()
            )));
        }
        replies.iter().map(|reply| parse_grant(reply)).collect()
    }

    /// Takes each user's sends from their budget, shared by every node
    /// (`per_sec` refill, at most `burst`): how many of `wants[i].1` sends
    /// user `wants[i].0` may make now. One round trip for the lot.
    pub fn take_sends(
        &mut self,
        wants: &[(i64, u32)],
        per_sec: f64,
        burst: f64,
    ) -> Result<Vec<u32>, StoreError> {
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        // Pipelined EVALSHA, one key each (a bucket per user); a Redis that
        // lost its scripts (restart, SCRIPT FLUSH) gets it once more.
        let mut pipe = redis::pipe();
        for (user_id, count) in wants {
            pipe.cmd("EVALSHA")
                .arg(self.take_sends.get_hash())
                .arg(1)
                .arg(format!("ourchat:sends:{{{user_id}}}"))
                .arg(per_sec)
                .arg(burst)
                .arg(*count);
        }
        self.conn()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Corrupt("redis connection vanished".into()));
        };
        let mut answered: redis::RedisResult<Vec<u32>> = pipe.query(conn);
        if matches!(&answered, Err(e) if e.kind() == redis::ErrorKind::NoScriptError) {
            answered = self
                .take_sends
                .prepare_invoke()
                .load(conn)
                .and_then(|_| pipe.query(conn));
        }
        match answered {
            Ok(taken) if taken.len() == wants.len() => Ok(taken),
            Ok(taken) => Err(StoreError::Corrupt(format!(
                "redis answered {} budgets for {} users",
                taken.len(),
                wants.len()
            ))),
            Err(error) => {
                self.conn = None;
                Err(error.into())
            }
        }
    }

    /// The counter's current value (0: none), for tests and tools.
    pub fn current(&mut self, conversation_id: &str) -> Result<i64, StoreError> {
        let key = format!("ourchat:seq:{{{conversation_id}}}");
        let value: Option<i64> = self.conn()?.get(key)?;
        Ok(value.unwrap_or(0))
    }
}

/// One device online on some node, as the directory holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineDevice {
    /// The device.
    pub device_id: String,
    /// The node its connection is on.
    pub node_id: u16,
    /// The device said it is away.
    pub away: bool,
}

fn directory_key(user_id: i64) -> String {
    format!("ourchat:online:{{{user_id}}}")
}

impl RedisSeq {
    /// Records `device_id` of `user_id` as online on `node_id`; the user's
    /// whole entry expires `ttl_secs` after its last write or touch, so a
    /// dead node's devices fade out once nobody refreshes them. Answers the
    /// node the device was on before, if another: it logged in again here,
    /// and that node should close its old connection.
    pub fn put_device(
        &mut self,
        user_id: i64,
        device_id: &str,
        node_id: u16,
        away: bool,
        ttl_secs: u64,
    ) -> Result<Option<u16>, StoreError> {
        let value = format!("{node_id}:{}", u8::from(away));
        self.conn()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Corrupt("redis connection vanished".into()));
        };
        let before: Option<String> = self
            .put_device
            .key(directory_key(user_id))
            .arg(device_id)
            .arg(value)
            .arg(ttl_secs)
            .invoke(conn)?;
        Ok(before
            .and_then(|before| parse_entry(&before))
            .map(|(node, _)| node)
            .filter(|node| *node != node_id))
    }

    /// Keeps the user's entry alive (a heartbeat of one of their devices).
    pub fn touch_user(&mut self, user_id: i64, ttl_secs: u64) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let _: bool = conn.expire(directory_key(user_id), ttl_secs as i64)?;
        Ok(())
    }

    /// Forgets `device_id` of `user_id` (it disconnected from `node_id`),
    /// unless it is online on another node by now.
    pub fn remove_device(
        &mut self,
        user_id: i64,
        device_id: &str,
        node_id: u16,
    ) -> Result<(), StoreError> {
        self.conn()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Corrupt("redis connection vanished".into()));
        };
        let _: i64 = self
            .remove_device
            .key(directory_key(user_id))
            .arg(device_id)
            .arg(format!("{node_id}:"))
            .invoke(conn)?;
        Ok(())
    }

    /// The user's devices online on any node.
    pub fn online_devices(&mut self, user_id: i64) -> Result<Vec<OnlineDevice>, StoreError> {
        let conn = self.conn()?;
        let entries: Vec<(String, String)> = conn.hgetall(directory_key(user_id))?;
        Ok(entries
            .into_iter()
            .filter_map(|(device_id, value)| {
                let (node_id, away) = parse_entry(&value)?;
                Some(OnlineDevice {
                    device_id,
                    node_id,
                    away,
                })
            })
            .collect())
    }
}

/// A directory entry: `node:away`.
fn parse_entry(value: &str) -> Option<(u16, bool)> {
    let (node, away) = value.split_once(':')?;
    Some((node.parse().ok()?, away == "1"))
}

fn parse_grant(reply: &str) -> Result<SeqGrant, StoreError> {
    let bad = || StoreError::Corrupt(format!("unexpected seq grant {reply:?}"));
    let (kind, rest) = reply.split_once(':').ok_or_else(bad)?;
    let mut parts = rest.split(':').map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (seq, server_msg_id, sent_at_ms) = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(c)) => (a?, b?, c?),
        _ => return Err(bad()),
    };
    match kind {
        "n" => Ok(SeqGrant::New { seq }),
        "r" => Ok(SeqGrant::Resend {
            seq,
            server_msg_id,
            sent_at_ms,
        }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_garbage_is_refused() {
        assert_eq!(parse_grant("n:5:77:9").unwrap(), SeqGrant::New { seq: 5 });
        assert_eq!(
            parse_grant("r:4:70:8").unwrap(),
            SeqGrant::Resend {
                seq: 4,
                server_msg_id: 70,
                sent_at_ms: 8
            }
        );
        for garbage in ["", "n", "n:1:2", "x:1:2:3", "n:a:2:3"] {
            assert!(parse_grant(garbage).is_err(), "{garbage}");
        }
    }
}
