//! Messages and delivery cursors on the log: what a batch's records are,
//! and the in-memory indexes rebuilt from them at start. It gives each
//! message the conversation's next seq (gapless) unless its sender's client
//! id is already there, however old (then the first send is the answer and
//! nothing is written), moves cursors only forward, and reads pages of a
//! conversation by seq. One batch of the node's writer is one log batch:
//! one write, one fsync.
//!
//! In memory, per conversation: where each seq's record is (12 bytes a
//! message) and its senders' client ids (a hash map: the next step keeps
//! them per segment on disk behind a filter).
//!
//! High-water marks: every conversation's last seq, written to a file of
//! their own (whole, durably) whenever the log starts a new segment and on
//! `checkpoint`. At open the log must reach every mark: a log that lost
//! acknowledged messages (a segment deleted or cut) refuses to start
//! instead of handing their seqs out again.

use std::collections::HashMap;

/// The indexes' maps: foldhash, seeded per process (client ids are keys, so
/// collisions must not be choosable), several times cheaper than SipHash
/// on these small keys.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use ourchat_protocol::ConversationId;
use prost::Message;

use super::disk::Disk;
use super::log::{Log, LogError, Placed};
use crate::{fingerprint_of, ChatMessage, SentBefore};

const MESSAGE: u8 = 1;
const CURSOR: u8 = 2;

/// One write of a store batch (borrowed from the writer's ops).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Append<'a> {
    /// A message, numbered by the store (its `seq` is ignored).
    Message(&'a ChatMessage),
    /// A device's delivery cursor moves to `seq` (never back).
    Cursor {
        /// Whose.
        user_id: i64,
        /// Which device.
        device_id: &'a str,
        /// Where.
        conversation: ConversationId,
        /// Up to which seq it has the messages.
        seq: i64,
    },
}

/// A message of the batch being written, indexed once it is durable.
struct Pending {
    conversation: ConversationId,
    seq: i64,
    /// (sender, client id).
    key: (i64, i64),
    /// Its record's bytes in the batch body.
    start: usize,
    end: usize,
    /// Its append's place in the batch.
    index: usize,
}

/// What became of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this seq.
    Stored(i64),
    /// The sender's client id was there: nothing written.
    SentBefore(SentBefore),
    /// A cursor moved (or was already further).
    Cursor,
    /// Not a message the store can keep (its conversation id does not
    /// parse): nothing written.
    Refused,
}

/// Where a record is: segment, offset and length of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    segment: u32,
    offset: u32,
    len: u32,
}

#[derive(Default)]
struct Conversation {
    /// Seq `i + 1` is at `locations[i]`.
    locations: Vec<Location>,
    /// (sender, client id) -> seq.
    sends: Map<(i64, i64), i64>,
}

/// The message store on a log.
pub struct MessageStore<D: Disk> {
    log: Log<D>,
    /// The segment the marks were last written for.
    marked_segment: u64,
    conversations: Map<ConversationId, Conversation>,
    cursors: Map<(i64, Box<str>, ConversationId), i64>,
    body: Vec<u8>,
}

impl<D: Disk> MessageStore<D> {
    /// Opens the store on `disk`, rebuilding the indexes from every record.
    pub fn open(disk: D, segment_bytes: u64) -> Result<Self, LogError> {
        let mut conversations: Map<ConversationId, Conversation> = Map::default();
        let mut cursors = Map::default();
        let mut broken = None;
        let log = Log::open(disk, segment_bytes, |placed, body| {
            let replayed = replay(placed, body, &mut conversations, &mut cursors);
            if let (Err(why), None) = (replayed, &broken) {
                broken = Some((placed, why));
            }
        })?;
        if let Some((placed, why)) = broken {
            return Err(LogError::Damaged {
                segment: placed.segment,
                offset: placed.body_at,
                why: why.into(),
            });
        }
        let mut store = MessageStore {
            log,
            marked_segment: 0,
            conversations,
            cursors,
            body: Vec::new(),
        };
        if let Some(bytes) = store.log.read_marks()? {
            for (conversation, acked) in decode_marks(&bytes)? {
                let stored = store.last_seq(conversation);
                if stored < acked {
                    return Err(LogError::Lost {
                        conversation: conversation.to_string(),
                        stored,
                        acked,
                    });
                }
            }
        }
        Ok(store)
    }

    /// Writes every conversation's last seq to the high-water marks file.
    pub fn checkpoint(&mut self) -> Result<(), LogError> {
        let mut bytes = Vec::with_capacity(8 + self.conversations.len() * 32);
        bytes.extend_from_slice(MARKS_MAGIC);
        bytes.extend_from_slice(&(self.conversations.len() as u32).to_le_bytes());
        for (conversation, entry) in &self.conversations {
            let id = conversation.to_string();
            bytes.extend_from_slice(&(id.len() as u16).to_le_bytes());
            bytes.extend_from_slice(id.as_bytes());
            bytes.extend_from_slice(&(entry.locations.len() as i64).to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        self.log.write_marks(&bytes)
    }

    /// Writes `appends` as one durable batch and says what became of each.
    /// Messages are numbered here (their `seq` is ignored): the
    /// conversation's next seq, in order, gapless.
    pub fn append(&mut self, appends: &[Append<'_>]) -> Result<Vec<Appended>, LogError> {
        self.body.clear();
        let mut outcomes = Vec::with_capacity(appends.len());
        // What this batch adds, applied to the indexes once it is durable.
        let mut stored: Vec<Pending> = Vec::new();
        let mut moved: Vec<(i64, &str, ConversationId, i64)> = Vec::new();
        for (index, append) in appends.iter().enumerate() {
            match append {
                Append::Message(message) => {
                    let Ok(conversation) = message.conversation_id.parse::<ConversationId>() else {
                        outcomes.push(Appended::Refused);
                        continue;
                    };
                    let key = (message.sender_id, message.client_message_id);
                    let known = self
                        .conversations
                        .get(&conversation)
                        .and_then(|c| c.sends.get(&key));
                    if let Some(&seq) = known {
                        let first = self.read_seq(conversation, seq)?;
                        outcomes.push(Appended::SentBefore(sent_before(seq, &first, message)));
                        continue;
                    }
                    let earlier = stored
                        .iter()
                        .find(|p| p.conversation == conversation && p.key == key);
                    if let Some(earlier) = earlier {
                        if let Append::Message(first) = appends[earlier.index] {
                            let first = sent_before(earlier.seq, first, message);
                            outcomes.push(Appended::SentBefore(first));
                        }
                        continue;
                    }
                    let seq = stored
                        .iter()
                        .rev()
                        .find(|p| p.conversation == conversation)
                        .map_or_else(|| self.last_seq(conversation), |p| p.seq)
                        + 1;
                    let start = self.body.len();
                    encode_message(seq, message, &mut self.body);
                    stored.push(Pending {
                        conversation,
                        seq,
                        key,
                        start,
                        end: self.body.len(),
                        index,
                    });
                    outcomes.push(Appended::Stored(seq));
                }
                Append::Cursor {
                    user_id,
                    device_id,
                    conversation,
                    seq,
                } => {
                    encode_cursor(*user_id, device_id, *conversation, *seq, &mut self.body);
                    moved.push((*user_id, *device_id, *conversation, *seq));
                    outcomes.push(Appended::Cursor);
                }
            }
        }
        let records = (stored.len() + moved.len()) as u32;
        if records == 0 {
            return Ok(outcomes);
        }
        let placed = self.log.append(records, &self.body)?;
        let new_segment = placed.segment != self.marked_segment;
        for pending in stored {
            let entry = self.conversations.entry(pending.conversation).or_default();
            entry
                .locations
                .push(location(placed, pending.start, pending.end));
            entry.sends.insert(pending.key, pending.seq);
        }
        for (user_id, device_id, conversation, seq) in moved {
            let cursor = self
                .cursors
                .entry((user_id, device_id.into(), conversation))
                .or_insert(0);
            *cursor = (*cursor).max(seq);
        }
        if new_segment {
            // Marks lag the log by at most a segment: enough to catch a
            // lost segment, and rare enough to cost nothing per batch.
            self.checkpoint()?;
            self.marked_segment = placed.segment;
        }
        Ok(outcomes)
    }

    /// The conversation's newest seq (0: none).
    pub fn last_seq(&self, conversation: ConversationId) -> i64 {
        self.conversations
            .get(&conversation)
            .map_or(0, |c| c.locations.len() as i64)
    }

    /// Up to `limit` messages before `before` (0: the newest), newest first.
    pub fn history(
        &self,
        conversation: ConversationId,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, LogError> {
        let Some(entry) = self.conversations.get(&conversation) else {
            return Ok(Vec::new());
        };
        let end = match before {
            b if b <= 0 => entry.locations.len(),
            b => (b as usize - 1).min(entry.locations.len()),
        };
        entry.locations[end.saturating_sub(limit)..end]
            .iter()
            .rev()
            .map(|at| self.read(*at))
            .collect()
    }

    /// Up to `limit` messages after `after`, oldest first.
    pub fn after(
        &self,
        conversation: ConversationId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, LogError> {
        let Some(entry) = self.conversations.get(&conversation) else {
            return Ok(Vec::new());
        };
        let start = (after.max(0) as usize).min(entry.locations.len());
        let end = start.saturating_add(limit).min(entry.locations.len());
        entry.locations[start..end]
            .iter()
            .map(|at| self.read(*at))
            .collect()
    }

    /// A device's delivery cursor in a conversation (0: none).
    pub fn cursor(&self, user_id: i64, device_id: &str, conversation: ConversationId) -> i64 {
        self.cursors
            .get(&(user_id, device_id.into(), conversation))
            .copied()
            .unwrap_or(0)
    }

    fn read_seq(&self, conversation: ConversationId, seq: i64) -> Result<ChatMessage, LogError> {
        let at = self
            .conversations
            .get(&conversation)
            .and_then(|c| c.locations.get((seq - 1) as usize))
            .copied()
            .ok_or(LogError::Damaged {
                segment: 0,
                offset: 0,
                why: format!("{conversation} has no seq {seq} in its index"),
            })?;
        self.read(at)
    }

    fn read(&self, at: Location) -> Result<ChatMessage, LogError> {
        let mut bytes = vec![0; at.len as usize];
        self.log
            .read(u64::from(at.segment), u64::from(at.offset), &mut bytes)?;
        let damaged = |why: &str| LogError::Damaged {
            segment: u64::from(at.segment),
            offset: u64::from(at.offset),
            why: why.into(),
        };
        match bytes.split_first() {
            Some((&MESSAGE, rest)) => rest
                .get(4..)
                .and_then(decode_message)
                .ok_or_else(|| damaged("a message record does not decode")),
            _ => Err(damaged("an index entry points at no message")),
        }
    }
}

/// "OCM1": the high-water marks file's first bytes.
const MARKS_MAGIC: &[u8; 4] = b"OCM1";

/// The marks file back to (conversation, last acknowledged seq) pairs.
fn decode_marks(bytes: &[u8]) -> Result<Vec<(ConversationId, i64)>, LogError> {
    let bad = LogError::BadMarks;
    let (body, crc) = bytes.split_last_chunk::<4>().ok_or(bad("too short"))?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(bad("checksum"));
    }
    let rest = body
        .strip_prefix(MARKS_MAGIC)
        .ok_or(bad("not a marks file"))?;
    let (count, mut rest) = rest.split_first_chunk::<4>().ok_or(bad("too short"))?;
    let mut marks = Vec::with_capacity(u32::from_le_bytes(*count) as usize);
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<2>()
            .ok_or(bad("an entry is cut"))?;
        let len = u16::from_le_bytes(*len) as usize;
        let id = after.get(..len).ok_or(bad("an entry is cut"))?;
        let (seq, after) = after[len..]
            .split_first_chunk::<8>()
            .ok_or(bad("an entry is cut"))?;
        let conversation = std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.parse().ok())
            .ok_or(bad("an entry names no conversation"))?;
        marks.push((conversation, i64::from_le_bytes(*seq)));
        rest = after;
    }
    Ok(marks)
}

/// What a resend of `first` (stored under `seq`) is answered.
fn sent_before(seq: i64, first: &ChatMessage, resent: &ChatMessage) -> SentBefore {
    SentBefore {
        seq,
        server_msg_id: first.server_msg_id,
        sent_at_ms: first.sent_at_ms,
        same_content: fingerprint_of(first) == fingerprint_of(resent),
    }
}

fn location(placed: Placed, start: usize, end: usize) -> Location {
    Location {
        segment: placed.segment as u32,
        offset: (placed.body_at + start as u64) as u32,
        len: (end - start) as u32,
    }
}

/// kind u8, length u32 of what follows, seq i64, the message's protobuf
/// (the seq goes in the header so the message need not be copied to
/// carry it).
fn encode_message(seq: i64, message: &ChatMessage, out: &mut Vec<u8>) {
    out.push(MESSAGE);
    out.extend_from_slice(&((8 + message.encoded_len()) as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    message.encode_raw(out);
}

/// A message record's payload (after kind and length) back to the message.
fn decode_message(payload: &[u8]) -> Option<ChatMessage> {
    let (seq, proto) = payload.split_first_chunk::<8>()?;
    let mut message = ChatMessage::decode(proto).ok()?;
    message.seq = i64::from_le_bytes(*seq);
    Some(message)
}

/// kind u8, length u32, user i64, seq i64, conversation id length u16 and
/// text, device id text.
fn encode_cursor(
    user_id: i64,
    device_id: &str,
    conversation: ConversationId,
    seq: i64,
    out: &mut Vec<u8>,
) {
    let conversation = conversation.to_string();
    let len = 8 + 8 + 2 + conversation.len() + device_id.len();
    out.push(CURSOR);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&user_id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(conversation.len() as u16).to_le_bytes());
    out.extend_from_slice(conversation.as_bytes());
    out.extend_from_slice(device_id.as_bytes());
}

/// Rebuilds the indexes from one batch's records.
fn replay(
    placed: Placed,
    body: &[u8],
    conversations: &mut Map<ConversationId, Conversation>,
    cursors: &mut Map<(i64, Box<str>, ConversationId), i64>,
) -> Result<(), &'static str> {
    let mut at = 0;
    while at < body.len() {
        let kind = body[at];
        let len = body
            .get(at + 1..at + 5)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("a record header runs past its batch")?;
        let payload = body
            .get(at + 5..at + 5 + len)
            .ok_or("a record runs past its batch")?;
        match kind {
            MESSAGE => {
                let message = decode_message(payload).ok_or("a message record does not decode")?;
                let conversation = message
                    .conversation_id
                    .parse::<ConversationId>()
                    .map_err(|_| "a message record names no conversation")?;
                let entry = conversations.entry(conversation).or_default();
                if message.seq != entry.locations.len() as i64 + 1 {
                    return Err("a conversation's seqs skip or repeat");
                }
                entry.locations.push(location(placed, at, at + 5 + len));
                entry
                    .sends
                    .insert((message.sender_id, message.client_message_id), message.seq);
            }
            CURSOR => {
                let field = |from: usize| {
                    payload.get(from..from + 8).map(|b| {
                        i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                    })
                };
                let (Some(user_id), Some(seq)) = (field(0), field(8)) else {
                    return Err("a cursor record is short");
                };
                let conv_len = payload
                    .get(16..18)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                    .ok_or("a cursor record is short")?;
                let text = |range: std::ops::Range<usize>| {
                    payload
                        .get(range)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .ok_or("a cursor record does not decode")
                };
                let conversation = text(18..18 + conv_len)?
                    .parse::<ConversationId>()
                    .map_err(|_| "a cursor record names no conversation")?;
                let device_id = text(18 + conv_len..payload.len())?;
                let cursor = cursors
                    .entry((user_id, device_id.into(), conversation))
                    .or_insert(0);
                *cursor = (*cursor).max(seq);
            }
            _ => return Err("a record of an unknown kind"),
        }
        at += 5 + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::msglog::testing::MemDisk;

    const SEGMENT: u64 = 32 << 10;

    fn message(conversation: &str, sender: i64, cmid: i64, content: &str) -> ChatMessage {
        ChatMessage {
            conversation_id: conversation.into(),
            sender_id: sender,
            client_message_id: cmid,
            server_msg_id: 1_000 + cmid,
            sent_at_ms: 10 * cmid,
            content: content.into(),
            ..Default::default()
        }
    }

    /// Appends `messages` as one batch.
    fn append(
        store: &mut MessageStore<MemDisk>,
        messages: &[ChatMessage],
    ) -> Result<Vec<Appended>, LogError> {
        let appends: Vec<Append<'_>> = messages.iter().map(Append::Message).collect();
        store.append(&appends)
    }

    fn conv(id: &str) -> ConversationId {
        id.parse().unwrap()
    }

    #[test]
    fn seqs_are_given_in_order_and_a_resend_of_any_age_gets_the_first() {
        let disk = MemDisk::default();
        let mut store = MessageStore::open(disk.clone(), SEGMENT).unwrap();
        let batch: Vec<ChatMessage> = (1..=300)
            .map(|i| {
                message(
                    if i % 3 == 0 { "sg_9" } else { "si_1_2" },
                    1,
                    i,
                    &format!("m{i}"),
                )
            })
            .collect();
        let outcomes = append(&mut store, &batch).unwrap();
        assert_eq!(outcomes[0], Appended::Stored(1));
        assert_eq!(outcomes[2], Appended::Stored(1), "the group's own seqs");
        assert_eq!(store.last_seq(conv("si_1_2")), 200);
        assert_eq!(store.last_seq(conv("sg_9")), 100);
        let again = append(
            &mut store,
            &[
                message("si_1_2", 1, 1, "m1"),
                message("si_1_2", 1, 1_000, "new"),
                message("si_1_2", 1, 2, "not m2"),
                message("si_1_2", 1, 1_000, "new"),
                message("nonsense", 1, 5, "x"),
            ],
        )
        .unwrap();
        let first = |seq, same_content| {
            Appended::SentBefore(SentBefore {
                seq,
                server_msg_id: 1_001,
                sent_at_ms: 10,
                same_content,
            })
        };
        assert_eq!(again[0], first(1, true));
        assert_eq!(again[1], Appended::Stored(201), "resends took no seq");
        assert!(matches!(
            again[2],
            Appended::SentBefore(SentBefore {
                seq: 2,
                same_content: false,
                ..
            })
        ));
        assert!(
            matches!(
                again[3],
                Appended::SentBefore(SentBefore {
                    seq: 201,
                    same_content: true,
                    ..
                })
            ),
            "twice in one batch"
        );
        assert_eq!(again[4], Appended::Refused);

        let newest: Vec<i64> = store
            .history(conv("si_1_2"), 0, 3)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(newest, [201, 200, 199]);
        let page: Vec<i64> = store
            .history(conv("si_1_2"), 50, 2)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(page, [49, 48]);
        let after: Vec<String> = store
            .after(conv("si_1_2"), 199, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(after, ["m299", "new"]);

        // All of it again after a reopen, and numbering goes on.
        drop(store);
        let mut store = MessageStore::open(disk, SEGMENT).unwrap();
        assert_eq!(store.last_seq(conv("si_1_2")), 201);
        assert_eq!(
            append(&mut store, &[message("si_1_2", 1, 1, "m1")]).unwrap()[0],
            first(1, true)
        );
        assert_eq!(
            append(&mut store, &[message("si_1_2", 2, 1, "bob's 1")]).unwrap()[0],
            Appended::Stored(202)
        );
    }

    #[test]
    fn a_log_that_lost_acked_messages_refuses_to_open() {
        let disk = MemDisk::default();
        let mut store = MessageStore::open(disk.clone(), 4 << 10).unwrap();
        for i in 1..=60 {
            append(&mut store, &[message("si_1_2", 1, i, &"x".repeat(200))]).unwrap();
        }
        store.checkpoint().unwrap();
        drop(store);
        let image = disk.image();
        assert!(image.len() > 3, "several segments: {}", image.len());
        // The newest segment gone (the log alone would not notice).
        let mut lost = image.clone();
        lost.pop_last();
        disk.set_image(lost);
        let refused = MessageStore::open(disk.clone(), 4 << 10)
            .err()
            .map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("but seq 60 was acknowledged")),
            "{refused:?}"
        );
        // A garbled marks file is refused too.
        disk.set_image(image);
        let garbled = disk.0.borrow().marks.clone().map(|mut m| {
            m[6] ^= 1;
            m
        });
        disk.0.borrow_mut().marks = garbled;
        assert!(matches!(
            MessageStore::open(disk.clone(), 4 << 10),
            Err(LogError::BadMarks("checksum"))
        ));
    }

    #[test]
    fn cursors_only_move_forward_and_survive_reopening() {
        let disk = MemDisk::default();
        let mut store = MessageStore::open(disk.clone(), SEGMENT).unwrap();
        let cursor = |seq| Append::Cursor {
            user_id: 7,
            device_id: "phone",
            conversation: conv("si_1_7"),
            seq,
        };
        store.append(&[cursor(5), cursor(3)]).unwrap();
        store.append(&[cursor(4)]).unwrap();
        assert_eq!(store.cursor(7, "phone", conv("si_1_7")), 5);
        assert_eq!(store.cursor(7, "laptop", conv("si_1_7")), 0);
        drop(store);
        let store = MessageStore::open(disk, SEGMENT).unwrap();
        assert_eq!(store.cursor(7, "phone", conv("si_1_7")), 5);
    }

    /// Crashes at random points: every acked message is back under its
    /// seq, seqs stay gapless, a resend of an acked one gets its first seq,
    /// cursors are at least where they were acked.
    #[test]
    fn crashes_lose_no_acked_message_and_never_renumber() {
        for seed in 0..300 {
            let mut rng = StdRng::seed_from_u64(seed);
            let disk = MemDisk::default();
            let mut acked: BTreeMap<(String, i64), (i64, String)> = BTreeMap::new();
            let mut acked_cursor = 0;
            let mut next_cmid = 1;
            for round in 0..rng.gen_range(1..4) {
                let mut store = MessageStore::open(disk.clone(), SEGMENT)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
                for ((conversation, cmid), (seq, content)) in &acked {
                    let page = store.history(conv(conversation), seq + 1, 1).unwrap();
                    assert_eq!(
                        page[0].content, *content,
                        "seed {seed}: {conversation} {cmid}"
                    );
                    let last = store.last_seq(conv(conversation));
                    assert_eq!(
                        store
                            .history(conv(conversation), 0, usize::MAX)
                            .unwrap()
                            .len() as i64,
                        last
                    );
                }
                assert!(
                    store.cursor(3, "d", conv("si_1_3")) >= acked_cursor,
                    "seed {seed}"
                );
                for _ in 0..rng.gen_range(1..30) {
                    if rng.gen_range(0..25) == 0 {
                        disk.0.borrow_mut().fail_next_sync = true;
                    }
                    let mut batch = Vec::new();
                    for _ in 0..rng.gen_range(1..20) {
                        let conversation = ["si_1_2", "si_1_3", "sg_4"][rng.gen_range(0..3)];
                        let cmid = match (rng.gen_range(0..5), acked.keys().next()) {
                            (0, Some((_, old))) => *old,
                            _ => {
                                next_cmid += 1;
                                next_cmid
                            }
                        };
                        let content = "x".repeat(rng.gen_range(1..400));
                        batch.push((conversation, cmid, content));
                    }
                    let cursor_seq = rng.gen_range(0..1_000);
                    let messages: Vec<ChatMessage> = batch
                        .iter()
                        .map(|(c, cmid, content)| message(c, 1, *cmid, content))
                        .collect();
                    let mut appends: Vec<Append<'_>> =
                        messages.iter().map(Append::Message).collect();
                    appends.push(Append::Cursor {
                        user_id: 3,
                        device_id: "d",
                        conversation: conv("si_1_3"),
                        seq: cursor_seq,
                    });
                    let Ok(outcomes) = store.append(&appends) else {
                        break;
                    };
                    for ((conversation, cmid, content), outcome) in batch.into_iter().zip(outcomes)
                    {
                        let key = (conversation.to_string(), cmid);
                        match outcome {
                            Appended::Stored(seq) => {
                                assert!(
                                    acked.insert(key, (seq, content)).is_none(),
                                    "seed {seed}: stored twice"
                                );
                            }
                            Appended::SentBefore(first) => {
                                if let Some((seq, _)) = acked.get(&key) {
                                    assert_eq!(first.seq, *seq, "seed {seed}: a resend renumbered");
                                }
                            }
                            other => panic!("seed {seed}: {other:?}"),
                        }
                    }
                    acked_cursor = acked_cursor.max(cursor_seq);
                }
                drop(store);
                disk.crash(&mut rng);
            }
        }
    }
}
