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
//! The same call first takes each chat send from its sender's token bucket,
//! so a user's send rate holds across every node at no extra round trip.

use redis::{Commands, Script};

use crate::StoreError;

/// How long a resend is recognised across nodes.
pub const DEFAULT_DEDUPE_TTL_SECS: u64 = 86_400;

/// Gives each send in `ARGV[5..]` (sender, client id, server id, time,
/// payload fingerprint, budget key index) the counter's next value unless it
/// was seen: then what
/// it got before. A send with a budget key (`KEYS[i]`, i > 1: its sender's
/// token bucket, `ARGV[3]` per second, at most `ARGV[4]`) first takes a
/// token, or is refused (`l`) and takes no seq; resends cost nothing.
/// Redis's clock refills the buckets, so nodes' clocks need not agree, and a
/// bucket's key expires once it would be full again. One call, one round
/// trip, for the seqs and the budgets of a whole batch. (The buckets are
/// keyed by user, so on Redis Cluster they would cross slots: one Redis.)
const ALLOCATE: &str = r"
local counter = KEYS[1]
if redis.call('EXISTS', counter) == 0 then
  redis.call('SET', counter, ARGV[1])
end
local ttl = tonumber(ARGV[2])
local rate = math.max(tonumber(ARGV[3]), 0.001)
local burst = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local tokens = {}
local function take(bucket)
  if tokens[bucket] == nil then
    local left, at = burst, now
    local saved = redis.call('GET', KEYS[bucket])
    local split = saved and string.find(saved, ':', 1, true)
    if split then
      left = tonumber(string.sub(saved, 1, split - 1)) or burst
      at = tonumber(string.sub(saved, split + 1)) or now
    end
    if now > at then
      left = math.min(burst, left + (now - at) * rate / 1000)
    end
    tokens[bucket] = left
  end
  if tokens[bucket] < 1 then
    return false
  end
  tokens[bucket] = tokens[bucket] - 1
  return true
end
local out = {}
for i = 5, #ARGV, 6 do
  local seen = counter .. ':sent:' .. ARGV[i] .. ':' .. ARGV[i + 1]
  local before = redis.call('GET', seen)
  local bucket = tonumber(ARGV[i + 5])
  if before then
    out[#out + 1] = 'r:' .. before
  elseif bucket > 1 and not take(bucket) then
    out[#out + 1] = 'l'
  else
    local seq = redis.call('INCR', counter)
    local value = seq .. ':' .. ARGV[i + 2] .. ':' .. ARGV[i + 3] .. ':' .. ARGV[i + 4]
    redis.call('SET', seen, value, 'EX', ttl)
    out[#out + 1] = 'n:' .. value
  end
end
for bucket, left in pairs(tokens) do
  local full_in = math.ceil((burst - left) / rate * 1000) + 1000
  redis.call('SET', KEYS[bucket], tostring(left) .. ':' .. tostring(now), 'PX', full_in)
end
return out
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
    /// Of its payload, so a resend carrying another under the same id is
    /// told apart.
    pub fingerprint: u64,
    /// It draws on its sender's send budget (a chat message; not a group
    /// change).
    pub budgeted: bool,
}

/// Each user's send rate across every node: a token bucket per user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendBudget {
    /// Sends per second.
    pub per_sec: f64,
    /// Sends after a quiet spell.
    pub burst: f64,
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
        /// Its payload's fingerprint (`None`: recorded before they were).
        fingerprint: Option<u64>,
    },
    /// Over its sender's send budget: refused, no seq taken.
    Limited,
}

/// One Redis connection for sequencing (one per worker thread).
pub struct RedisSeq {
    client: redis::Client,
    conn: Option<redis::Connection>,
    scripts: Scripts,
    dedupe_ttl_secs: u64,
}

/// The Lua scripts, loaded into Redis on first use (and again after a
/// Redis restart: `invoke` handles `NOSCRIPT`).
struct Scripts {
    allocate: Script,
    put_device: Script,
    remove_device: Script,
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
            scripts: Scripts {
                allocate: Script::new(ALLOCATE),
                put_device: Script::new(PUT_DEVICE),
                remove_device: Script::new(REMOVE_DEVICE),
            },
            dedupe_ttl_secs: dedupe_ttl_secs.max(1),
        })
    }

    /// Checks that Redis answers.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.with_conn(|conn, _| redis::cmd("PING").query::<String>(conn).map(|_| ()))
    }

    /// Runs `call` on the connection, dialled on first use; a call that
    /// fails drops it, so the next one dials again (a sync connection that
    /// lost its socket never recovers by itself).
    fn with_conn<T>(
        &mut self,
        call: impl FnOnce(&mut redis::Connection, &Scripts) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            empty => {
                let timeout = Some(std::time::Duration::from_secs(2));
                let conn = self
                    .client
                    .get_connection_with_timeout(std::time::Duration::from_secs(2))?;
                conn.set_read_timeout(timeout)?;
                conn.set_write_timeout(timeout)?;
                empty.insert(conn)
            }
        };
        let result = call(conn, &self.scripts);
        if result.is_err() {
            self.conn = None;
        }
        result.map_err(StoreError::from)
    }

    /// Seqs for `requests` in `conversation_id`, in order; `floor` is the
    /// store's last seq, the counter's start when Redis has none. Budgeted
    /// requests first take a token from their sender's `budget`.
    pub fn allocate(
        &mut self,
        conversation_id: &str,
        floor: i64,
        requests: &[SeqRequest],
        budget: SendBudget,
    ) -> Result<Vec<SeqGrant>, StoreError> {
        let key = format!("ourchat:seq:{{{conversation_id}}}");
        let ttl = self.dedupe_ttl_secs;
        let replies: Vec<String> = self.with_conn(|conn, scripts| {
            let mut invocation = scripts.allocate.key(key);
            invocation
                .arg(floor)
                .arg(ttl)
                .arg(budget.per_sec)
                .arg(budget.burst);
            // KEYS[1] is the counter; each budgeted sender's bucket follows once.
            let mut buckets: Vec<i64> = Vec::new();
            for request in requests {
                let bucket = if request.budgeted {
                    let index = match buckets.iter().position(|u| *u == request.sender_id) {
                        Some(index) => index,
                        None => {
                            buckets.push(request.sender_id);
                            invocation.key(format!("ourchat:sends:{{{}}}", request.sender_id));
                            buckets.len() - 1
                        }
                    };
                    index + 2
                } else {
                    0
                };
                invocation
                    .arg(request.sender_id)
                    .arg(request.client_message_id)
                    .arg(request.server_msg_id)
                    .arg(request.sent_at_ms)
                    .arg(request.fingerprint)
                    .arg(bucket);
            }
            invocation.invoke(conn)
        })?;
        if replies.len() != requests.len() {
            return Err(StoreError::Corrupt(format!(
                "redis answered {} grants for {} sends",
                replies.len(),
                requests.len()
            )));
        }
        replies.iter().map(|reply| parse_grant(reply)).collect()
    }

    /// The counter's current value (0: none), for tests and tools.
    pub fn current(&mut self, conversation_id: &str) -> Result<i64, StoreError> {
        let key = format!("ourchat:seq:{{{conversation_id}}}");
        let value: Option<i64> = self.with_conn(|conn, _| conn.get(key))?;
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
        let before: Option<String> = self.with_conn(|conn, scripts| {
            scripts
                .put_device
                .key(directory_key(user_id))
                .arg(device_id)
                .arg(value)
                .arg(ttl_secs)
                .invoke(conn)
        })?;
        Ok(before
            .and_then(|before| parse_entry(&before))
            .map(|(node, _)| node)
            .filter(|node| *node != node_id))
    }

    /// Keeps the user's entry alive (a heartbeat of one of their devices).
    pub fn touch_user(&mut self, user_id: i64, ttl_secs: u64) -> Result<(), StoreError> {
        self.with_conn(|conn, _| {
            conn.expire::<_, bool>(directory_key(user_id), ttl_secs as i64)
                .map(|_| ())
        })
    }

    /// Forgets `device_id` of `user_id` (it disconnected from `node_id`),
    /// unless it is online on another node by now.
    pub fn remove_device(
        &mut self,
        user_id: i64,
        device_id: &str,
        node_id: u16,
    ) -> Result<(), StoreError> {
        self.with_conn(|conn, scripts| {
            scripts
                .remove_device
                .key(directory_key(user_id))
                .arg(device_id)
                .arg(format!("{node_id}:"))
                .invoke::<i64>(conn)
                .map(|_| ())
        })
    }

    /// The user's devices online on any node.
    pub fn online_devices(&mut self, user_id: i64) -> Result<Vec<OnlineDevice>, StoreError> {
        let entries: Vec<(String, String)> =
            self.with_conn(|conn, _| conn.hgetall(directory_key(user_id)))?;
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
    if reply == "l" {
        return Ok(SeqGrant::Limited);
    }
    let (kind, rest) = reply.split_once(':').ok_or_else(bad)?;
    let mut parts = rest.split(':');
    let mut number = || parts.next().map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (seq, server_msg_id, sent_at_ms) = match (number(), number(), number()) {
        (Some(a), Some(b), Some(c)) => (a?, b?, c?),
        _ => return Err(bad()),
    };
    let fingerprint = match parts.next() {
        Some(p) => Some(p.parse::<u64>().map_err(|_| bad())?),
        None => None,
    };
    match kind {
        "n" => Ok(SeqGrant::New { seq }),
        "r" => Ok(SeqGrant::Resend {
            seq,
            server_msg_id,
            sent_at_ms,
            fingerprint,
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
        assert_eq!(parse_grant("l").unwrap(), SeqGrant::Limited);
        assert_eq!(
            parse_grant("r:4:70:8").unwrap(),
            SeqGrant::Resend {
                seq: 4,
                server_msg_id: 70,
                sent_at_ms: 8,
                fingerprint: None,
            }
        );
        assert_eq!(
            parse_grant("r:4:70:8:18446744073709551615").unwrap(),
            SeqGrant::Resend {
                seq: 4,
                server_msg_id: 70,
                sent_at_ms: 8,
                fingerprint: Some(u64::MAX),
            }
        );
        for garbage in ["", "n", "l:1", "n:1:2", "x:1:2:3", "n:a:2:3", "r:1:2:3:x"] {
            assert!(parse_grant(garbage).is_err(), "{garbage}");
        }
    }
}
