//! The in-memory indexes of the message log, rebuilt from its records at
//! start and moved forward by the writer once a batch is durable: where
//! each message of a conversation is (12 bytes a seq), who sent which
//! client id, delivery cursors, read marks, recalls, and each user's 1:1
//! conversations. Readers share it behind a lock and read message bytes
//! from the segments themselves.
//!
//! One function per kind of change (`put_message`, `move_cursor`, …) serves
//! both replay and the live writer, so what a restart rebuilds is what the
//! running node had.

use std::collections::HashMap;

use ourchat_protocol::ConversationId;

use super::disk::Disk;
use super::log::{LogError, Placed};
use super::records::{self, Record};
use crate::ChatMessage;

/// The indexes' maps: foldhash, seeded per process (client ids are keys, so
/// collisions must not be choosable), several times cheaper than SipHash
/// on these small keys.
pub(super) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Where a record is: segment, offset and length of its bytes; length 0
/// is a seq never stored (only given seqs, from cluster replays, can skip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    segment: u32,
    offset: u32,
    len: u32,
}

const HOLE: Location = Location {
    segment: 0,
    offset: 0,
    len: 0,
};

impl Location {
    pub(super) fn of(placed: Placed, range: std::ops::Range<usize>) -> Self {
        Location {
            segment: placed.segment as u32,
            offset: (placed.body_at + range.start as u64) as u32,
            len: (range.end - range.start) as u32,
        }
    }
}

#[derive(Default)]
struct Conversation {
    /// Seq `i + 1` is at `locations[i]`.
    locations: Vec<Location>,
    /// (sender, client id) -> seq.
    sends: Map<(i64, i64), i64>,
    /// Send time of the newest message.
    last_at_ms: i64,
    /// Recalled seqs (few).
    recalled: Vec<i64>,
}

/// The indexes.
#[derive(Default)]
pub struct Index {
    conversations: Map<ConversationId, Conversation>,
    /// Device ids, each stored once: cursor lookups then allocate nothing.
    devices: Map<Box<str>, u32>,
    /// (user, device number, conversation) -> delivered seq.
    cursors: Map<(i64, u32, ConversationId), i64>,
    reads: Map<(i64, ConversationId), i64>,
    /// Each user's 1:1 conversations with at least one message.
    direct: Map<i64, Vec<ConversationId>>,
}

impl Index {
    /// Applies one replayed batch.
    pub(super) fn replay(
        &mut self,
        placed: Placed,
        body: &[u8],
        mut on_group: impl FnMut(&ChatMessage, &[u8]),
    ) -> Result<(), &'static str> {
        for record in records::records(body) {
            let (range, record) = record?;
            match record {
                Record::Message(message) => {
                    self.put_message(&message, message.seq, Location::of(placed, range))?
                }
                Record::Group {
                    event,
                    readers,
                    change,
                } => {
                    self.put_message(&event, event.seq, Location::of(placed, range))?;
                    let conversation = parse(&event)?;
                    for reader in readers {
                        self.mark_read(reader, conversation, event.seq);
                    }
                    on_group(&event, change);
                }
                Record::Cursor {
                    user_id,
                    device_id,
                    conversation,
                    seq,
                } => self.move_cursor(user_id, device_id, conversation, seq),
                Record::Read {
                    user_id,
                    conversation,
                    seq,
                } => self.mark_read(user_id, conversation, seq),
                Record::Recall { conversation, seq } => self.recall(conversation, seq),
            }
        }
        Ok(())
    }

    /// Indexes a durable message under `seq`; its sender has read up to it.
    pub(super) fn put_message(
        &mut self,
        message: &ChatMessage,
        seq: i64,
        at: Location,
    ) -> Result<(), &'static str> {
        let conversation = parse(message)?;
        let index = usize::try_from(seq - 1).map_err(|_| "a message record has no seq")?;
        let entry = match self.conversations.entry(conversation) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                if let ConversationId::Direct { low, high } = conversation {
                    self.direct.entry(low).or_default().push(conversation);
                    self.direct.entry(high).or_default().push(conversation);
                }
                entry.insert(Conversation::default())
            }
        };
        match entry.locations.get_mut(index) {
            Some(slot) if *slot != HOLE => return Err("a conversation's seq is stored twice"),
            Some(slot) => *slot = at,
            None => {
                entry.locations.resize(index, HOLE);
                entry.locations.push(at);
                entry.last_at_ms = message.sent_at_ms;
            }
        }
        entry
            .sends
            .insert((message.sender_id, message.client_message_id), seq);
        self.mark_read(message.sender_id, conversation, seq);
        Ok(())
    }

    /// Moves a device's delivery cursor forward (never back).
    pub(super) fn move_cursor(
        &mut self,
        user_id: i64,
        device_id: &str,
        conversation: ConversationId,
        seq: i64,
    ) {
        let next = self.devices.len() as u32;
        let device = match self.devices.get(device_id) {
            Some(&device) => device,
            None => *self.devices.entry(device_id.into()).or_insert(next),
        };
        let cursor = self
            .cursors
            .entry((user_id, device, conversation))
            .or_insert(0);
        *cursor = (*cursor).max(seq);
    }

    /// Moves a user's read mark forward (never back).
    pub(super) fn mark_read(&mut self, user_id: i64, conversation: ConversationId, seq: i64) {
        let read = self.reads.entry((user_id, conversation)).or_insert(0);
        *read = (*read).max(seq);
    }

    /// Marks a message recalled.
    pub(super) fn recall(&mut self, conversation: ConversationId, seq: i64) {
        if let Some(entry) = self.conversations.get_mut(&conversation) {
            if !entry.recalled.contains(&seq) {
                entry.recalled.push(seq);
            }
        }
    }

    /// The conversation's newest seq (0: none).
    pub fn last_seq(&self, conversation: ConversationId) -> i64 {
        self.conversations
            .get(&conversation)
            .map_or(0, |c| c.locations.len() as i64)
    }

    /// When the conversation's newest message was sent (0: none).
    pub fn last_at_ms(&self, conversation: ConversationId) -> i64 {
        self.conversations
            .get(&conversation)
            .map_or(0, |c| c.last_at_ms)
    }

    /// Every conversation's last seq.
    pub(super) fn last_seqs(&self) -> impl Iterator<Item = (ConversationId, i64)> + '_ {
        self.conversations
            .iter()
            .map(|(id, c)| (*id, c.locations.len() as i64))
    }

    /// Whether `seq` of the conversation is stored.
    pub fn holds(&self, conversation: ConversationId, seq: i64) -> bool {
        self.location(conversation, seq).is_some()
    }

    /// The seq under which `sender` sent `client_message_id` here.
    pub fn sent(&self, conversation: ConversationId, sender: i64, client_id: i64) -> Option<i64> {
        self.conversations
            .get(&conversation)?
            .sends
            .get(&(sender, client_id))
            .copied()
    }

    /// Whether the message is recalled.
    pub fn is_recalled(&self, conversation: ConversationId, seq: i64) -> bool {
        self.conversations
            .get(&conversation)
            .is_some_and(|c| c.recalled.contains(&seq))
    }

    /// A device's delivery cursor (0: none).
    pub fn cursor(&self, user_id: i64, device_id: &str, conversation: ConversationId) -> i64 {
        self.devices
            .get(device_id)
            .and_then(|device| self.cursors.get(&(user_id, *device, conversation)))
            .copied()
            .unwrap_or(0)
    }

    /// A user's read mark (0: none).
    pub fn read_seq(&self, user_id: i64, conversation: ConversationId) -> i64 {
        self.reads
            .get(&(user_id, conversation))
            .copied()
            .unwrap_or(0)
    }

    /// The user's 1:1 conversations that hold a message.
    pub fn direct_conversations(&self, user_id: i64) -> &[ConversationId] {
        self.direct.get(&user_id).map_or(&[], Vec::as_slice)
    }

    fn location(&self, conversation: ConversationId, seq: i64) -> Option<Location> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.conversations
            .get(&conversation)?
            .locations
            .get(index)
            .copied()
            .filter(|at| *at != HOLE)
    }

    /// One message, as clients see it (a recalled one without content).
    pub fn message(
        &self,
        disk: &impl Disk,
        conversation: ConversationId,
        seq: i64,
    ) -> Result<Option<ChatMessage>, LogError> {
        match self.location(conversation, seq) {
            Some(at) => self.read(disk, conversation, at).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` messages before `before` (0: the newest), newest first.
    pub fn history(
        &self,
        disk: &impl Disk,
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
        entry.locations[..end]
            .iter()
            .rev()
            .filter(|at| **at != HOLE)
            .take(limit)
            .map(|at| self.read(disk, conversation, *at))
            .collect()
    }

    /// Up to `limit` messages after `after`, oldest first.
    pub fn after(
        &self,
        disk: &impl Disk,
        conversation: ConversationId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, LogError> {
        let Some(entry) = self.conversations.get(&conversation) else {
            return Ok(Vec::new());
        };
        let start = (after.max(0) as usize).min(entry.locations.len());
        entry.locations[start..]
            .iter()
            .filter(|at| **at != HOLE)
            .take(limit)
            .map(|at| self.read(disk, conversation, *at))
            .collect()
    }

    fn read(
        &self,
        disk: &impl Disk,
        conversation: ConversationId,
        at: Location,
    ) -> Result<ChatMessage, LogError> {
        let segment = u64::from(at.segment);
        let mut bytes = vec![0; at.len as usize];
        disk.read_at(segment, u64::from(at.offset), &mut bytes)
            .map_err(|source| LogError::Io { segment, source })?;
        let mut message = records::message_at(&bytes).ok_or_else(|| LogError::Damaged {
            segment,
            offset: u64::from(at.offset),
            why: "an index entry points at no message".into(),
        })?;
        if self.is_recalled(conversation, message.seq) {
            message.recalled = true;
            message.content.clear();
            message.media = None;
            message.location = None;
        }
        Ok(message)
    }
}

fn parse(message: &ChatMessage) -> Result<ConversationId, &'static str> {
    message
        .conversation_id
        .parse()
        .map_err(|_| "a message record names no conversation")
}
