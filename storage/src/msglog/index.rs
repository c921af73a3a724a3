//! The in-memory indexes of the message log, rebuilt from its records at
//! start and moved forward by the writer once a batch is durable: where
//! each message of a conversation is (12 bytes a seq), who sent which
//! client id, delivery cursors, read marks, recalls, and each user's 1:1
//! conversations. Readers share it behind a lock and read message bytes
//! from the segments themselves.
//!
//! One function per kind of change (`put_message`, `move_cursor`, …) serves
//! both replay and the live writer, so what a restart rebuilds is what the
//! running node had. Each also notes the change for the newest segment's
//! summary (`summary`), which a later start loads instead of the records.

use ourchat_protocol::ConversationId;

use super::batch;
use super::disk::Disk;
use super::log::{LogError, Placed};
use super::records::{self, Record};
use super::summary::{self, Covers, Load, Noted, SegmentNotes};
use crate::few::Few;
/// The indexes' maps (client ids are keys: see [`Map`] on hashing).
pub(super) use crate::sharded::Map;
use crate::sharded::{Growing, Sharded};
use crate::ChatMessage;

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

#[derive(Default, Debug, PartialEq)]
struct Conversation {
    /// Seq `i + 1` is at `locations[i]`.
    locations: Vec<Location>,
    /// (sender, client id) -> seq.
    sends: Growing<(i64, i64), i64>,
    /// Send time of the newest message.
    last_at_ms: i64,
    /// Recalled seqs (few).
    recalled: Vec<i64>,
    /// (user, device number) -> delivered seq. Kept with the conversation
    /// (not in one map for all) so a start loading a summary touches one
    /// small map per conversation, not a big one at random; a 1:1
    /// conversation's are in the entry itself.
    cursors: Few<(i64, u32), i64>,
    /// User -> read seq.
    reads: Few<i64, i64>,
}

/// The indexes.
#[derive(Default)]
pub struct Index {
    conversations: Sharded<ConversationId, Conversation>,
    /// Device ids, each stored once: cursor lookups then allocate nothing.
    devices: Map<Box<str>, u32>,
    /// Device numbers back to ids.
    device_ids: Vec<Box<str>>,
    /// Each user's 1:1 conversations with at least one message.
    direct: Sharded<i64, Vec<ConversationId>>,
    /// The newest segment's changes, for its summary (`None` while in a
    /// segment that was loaded from its summary or joined midway).
    notes: Option<SegmentNotes>,
}

impl Conversation {
    /// Puts a durable message under `seq`.
    fn put(
        &mut self,
        seq: i64,
        at: Location,
        sender: i64,
        client_id: i64,
        sent_at_ms: i64,
    ) -> Result<(), &'static str> {
        let index = usize::try_from(seq - 1).map_err(|_| "a message record has no seq")?;
        match self.locations.get_mut(index) {
            Some(slot) if *slot != HOLE => return Err("a conversation's seq is stored twice"),
            Some(slot) => *slot = at,
            None => {
                self.locations.resize(index, HOLE);
                self.locations.push(at);
                self.last_at_ms = sent_at_ms;
            }
        }
        self.sends.insert((sender, client_id), seq);
        Ok(())
    }

    fn raise_read(&mut self, user_id: i64, seq: i64) {
        let read = self.reads.get_or_insert(user_id, 0);
        *read = (*read).max(seq);
    }

    fn raise_cursor(&mut self, user_id: i64, device: u32, seq: i64) {
        let cursor = self.cursors.get_or_insert((user_id, device), 0);
        *cursor = (*cursor).max(seq);
    }
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
                Record::Message(message) => self.put_message(
                    parse(&message)?,
                    &message,
                    message.seq,
                    Location::of(placed, range),
                )?,
                Record::Group {
                    event,
                    readers,
                    change,
                } => {
                    let conversation = parse(&event)?;
                    let at = Location::of(placed, range.clone());
                    self.put_message(conversation, &event, event.seq, at)?;
                    self.note_group(placed.batch_no, range);
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
                } => self.move_cursor(user_id, device_id, None, conversation, seq),
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

    /// Starts taking the batch `placed`; when it opens a new segment, the
    /// notes of the one before are complete and handed back, for its summary.
    pub(super) fn begin_batch(&mut self, placed: Placed) -> Option<SegmentNotes> {
        match &mut self.notes {
            Some(notes) if notes.segment == placed.segment => {
                notes.last_no = placed.batch_no;
                None
            }
            Some(_) => self
                .notes
                .replace(SegmentNotes::new(placed.segment, placed.batch_no)),
            None => {
                // A segment entered at its first batch is noted whole; one
                // joined midway (only a summarized segment that is last)
                // never gets a summary.
                if placed.body_at == batch::HEADER as u64 {
                    self.notes = Some(SegmentNotes::new(placed.segment, placed.batch_no));
                }
                None
            }
        }
    }

    /// The notes taken so far, complete if the log has left their segment.
    pub(super) fn seal(&mut self) -> Option<SegmentNotes> {
        self.notes.take()
    }

    /// Loads the summary of `segment` in place of its records (`None`: it
    /// is not a whole summary of that segment, nothing loaded). On an error
    /// the index may be half-loaded: rebuild it without summaries.
    pub(super) fn load_summary(
        &mut self,
        segment: u64,
        bytes: &[u8],
    ) -> Result<Option<Covers>, &'static str> {
        self.notes = None;
        summary::load(
            bytes,
            segment,
            &mut Summarized {
                index: self,
                segment,
                devices: Vec::new(),
            },
        )
    }

    /// The conversation's entry, created if new.
    fn conversation_mut(&mut self, conversation: ConversationId) -> &mut Conversation {
        self.conversations.entry(conversation).or_default()
    }

    /// Puts messages into a conversation, listing it for its users when
    /// they are its first.
    fn put_into(
        &mut self,
        conversation: ConversationId,
        put: impl FnOnce(&mut Conversation) -> Result<(), &'static str>,
    ) -> Result<(), &'static str> {
        let entry = self.conversation_mut(conversation);
        let was_empty = entry.locations.is_empty();
        put(entry)?;
        let first = was_empty && !entry.locations.is_empty();
        if let (true, ConversationId::Direct { low, high }) = (first, conversation) {
            self.direct.entry(low).or_default().push(conversation);
            self.direct.entry(high).or_default().push(conversation);
        }
        Ok(())
    }

    /// A device id's number, given one if new (`known`: its number, looked
    /// up earlier).
    fn device_no(&mut self, device_id: &str, known: Option<u32>) -> u32 {
        match known.or_else(|| self.devices.get(device_id).copied()) {
            Some(device) => device,
            None => {
                let next = self.device_ids.len() as u32;
                self.device_ids.push(device_id.into());
                self.devices.insert(device_id.into(), next);
                next
            }
        }
    }

    /// Indexes a durable message of `conversation` (the one it names)
    /// under `seq`; its sender has read up to it.
    pub(super) fn put_message(
        &mut self,
        conversation: ConversationId,
        message: &ChatMessage,
        seq: i64,
        at: Location,
    ) -> Result<(), &'static str> {
        let (sender, client_id, sent_at_ms) = (
            message.sender_id,
            message.client_message_id,
            message.sent_at_ms,
        );
        self.put_into(conversation, |entry| {
            entry.put(seq, at, sender, client_id, sent_at_ms)?;
            entry.raise_read(sender, seq);
            Ok(())
        })?;
        if let Some(notes) = &mut self.notes {
            notes.messages.push(Noted {
                conversation,
                seq,
                offset: at.offset,
                len: at.len,
                sender,
                client_id,
                sent_at_ms,
            });
        }
        Ok(())
    }

    /// Notes that the record at `range` of batch `batch_no` is a group
    /// event (a start hands its change to the caller again).
    pub(super) fn note_group(&mut self, batch_no: u64, range: std::ops::Range<usize>) {
        if let Some(notes) = &mut self.notes {
            notes.groups.push(summary::GroupAt {
                batch_no,
                start: range.start as u32,
                end: range.end as u32,
            });
        }
    }

    /// Moves a device's delivery cursor forward (never back); `device`:
    /// the device id's number, if [`Index::cursor_of_device`] found one.
    pub(super) fn move_cursor(
        &mut self,
        user_id: i64,
        device_id: &str,
        device: Option<u32>,
        conversation: ConversationId,
        seq: i64,
    ) {
        let device = self.device_no(device_id, device);
        self.conversation_mut(conversation)
            .raise_cursor(user_id, device, seq);
        if let Some(notes) = &mut self.notes {
            notes.cursor(user_id, device, device_id, conversation, seq);
        }
    }

    /// Moves a user's read mark forward (never back).
    pub(super) fn mark_read(&mut self, user_id: i64, conversation: ConversationId, seq: i64) {
        self.conversation_mut(conversation).raise_read(user_id, seq);
        if let Some(notes) = &mut self.notes {
            notes.reads.push((user_id, conversation, seq));
        }
    }

    /// Marks a message recalled.
    pub(super) fn recall(&mut self, conversation: ConversationId, seq: i64) {
        if let Some(entry) = self.conversations.get_mut(&conversation) {
            if !entry.recalled.contains(&seq) {
                entry.recalled.push(seq);
            }
        }
        if let Some(notes) = &mut self.notes {
            notes.recalls.push((conversation, seq));
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

    /// The last seqs of one shard of the conversations (`shard` below
    /// [`crate::sharded::SHARDS`]): [`Index::last_seqs`] a part at a time.
    pub(super) fn last_seqs_in_shard(
        &self,
        shard: usize,
    ) -> impl Iterator<Item = (ConversationId, i64)> + '_ {
        self.conversations
            .iter_shard(shard)
            .map(|(id, c)| (*id, c.locations.len() as i64))
    }

    /// Whether `seq` of the conversation is stored.
    pub fn holds(&self, conversation: ConversationId, seq: i64) -> bool {
        self.location(conversation, seq).is_some()
    }

    /// The seq under which `sender` sent `client_message_id` here.
    pub fn sent(&self, conversation: ConversationId, sender: i64, client_id: i64) -> Option<i64> {
        self.sent_and_last_seq(conversation, sender, client_id).0
    }

    /// [`Index::sent`] and [`Index::last_seq`] in one lookup (a writer
    /// asks both of every message it takes).
    pub fn sent_and_last_seq(
        &self,
        conversation: ConversationId,
        sender: i64,
        client_id: i64,
    ) -> (Option<i64>, i64) {
        self.conversations
            .get(&conversation)
            .map_or((None, 0), |c| {
                let sent = c.sends.get(&(sender, client_id)).copied();
                (sent, c.locations.len() as i64)
            })
    }

    /// Whether the message is recalled.
    pub fn is_recalled(&self, conversation: ConversationId, seq: i64) -> bool {
        self.conversations
            .get(&conversation)
            .is_some_and(|c| c.recalled.contains(&seq))
    }

    /// A device's delivery cursor (0: none).
    pub fn cursor(&self, user_id: i64, device_id: &str, conversation: ConversationId) -> i64 {
        self.cursor_of_device(user_id, device_id, conversation).0
    }

    /// [`Index::cursor`], and the device id's number if it has one: the
    /// writer moves the cursor with it, without hashing the id again.
    pub(super) fn cursor_of_device(
        &self,
        user_id: i64,
        device_id: &str,
        conversation: ConversationId,
    ) -> (i64, Option<u32>) {
        let Some(&device) = self.devices.get(device_id) else {
            return (0, None);
        };
        let cursor = self
            .conversations
            .get(&conversation)
            .and_then(|c| c.cursors.get(&(user_id, device)))
            .copied()
            .unwrap_or(0);
        (cursor, Some(device))
    }

    /// A user's read mark (0: none).
    pub fn read_seq(&self, user_id: i64, conversation: ConversationId) -> i64 {
        self.conversations
            .get(&conversation)
            .and_then(|c| c.reads.get(&user_id))
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

#[cfg(test)]
impl Index {
    /// Everything the index holds, in a stable order with device ids
    /// resolved: equal for equal indexes however they were built.
    pub(super) fn canonical(&self) -> String {
        use std::collections::BTreeMap;
        let conversations: BTreeMap<_, _> = self
            .conversations
            .iter()
            .map(|(id, c)| {
                let sends: BTreeMap<_, _> = c.sends.iter().collect();
                let cursors: BTreeMap<_, _> = c
                    .cursors
                    .iter()
                    .map(|((user, device), seq)| ((user, &self.device_ids[*device as usize]), seq))
                    .collect();
                let reads: BTreeMap<_, _> = c.reads.iter().collect();
                (
                    id,
                    (
                        &c.locations,
                        sends,
                        c.last_at_ms,
                        &c.recalled,
                        cursors,
                        reads,
                    ),
                )
            })
            .collect();
        let direct: BTreeMap<_, _> = self.direct.iter().collect();
        format!("{conversations:?}\n{direct:?}")
    }
}

/// The index taking one segment's summary.
struct Summarized<'a> {
    index: &'a mut Index,
    segment: u64,
    /// The summary's device numbers to the index's.
    devices: Vec<u32>,
}

impl Load for Summarized<'_> {
    fn devices(&mut self, device_ids: &[&str]) {
        self.devices = device_ids
            .iter()
            .map(|id| self.index.device_no(id, None))
            .collect();
    }

    fn conversation(
        &mut self,
        conversation: ConversationId,
        messages: &mut dyn Iterator<Item = Noted>,
        reads: &mut dyn Iterator<Item = (i64, i64)>,
        cursors: &mut dyn Iterator<Item = (i64, u32, i64)>,
    ) -> Result<(), &'static str> {
        let segment = self.segment as u32;
        let devices = &self.devices;
        self.index.put_into(conversation, |entry| {
            for noted in messages {
                let at = Location {
                    segment,
                    offset: noted.offset,
                    len: noted.len,
                };
                entry.put(
                    noted.seq,
                    at,
                    noted.sender,
                    noted.client_id,
                    noted.sent_at_ms,
                )?;
            }
            for (user_id, seq) in reads {
                entry.raise_read(user_id, seq);
            }
            for (user_id, device, seq) in cursors {
                let device = *devices.get(device as usize).ok_or("an unknown device")?;
                entry.raise_cursor(user_id, device, seq);
            }
            Ok(())
        })
    }

    fn recall(&mut self, conversation: ConversationId, seq: i64) {
        self.index.recall(conversation, seq);
    }
}

fn parse(message: &ChatMessage) -> Result<ConversationId, &'static str> {
    message
        .conversation_id
        .parse()
        .map_err(|_| "a message record names no conversation")
}
