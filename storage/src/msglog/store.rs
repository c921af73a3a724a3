//! Messages and delivery cursors on the log: the writer side. It gives
//! each message the conversation's next seq (gapless) unless its sender's
//! client id is already there, however old (then the first send is the
//! answer and nothing is written), moves cursors and read marks only
//! forward (at most one record per device and conversation a batch, none
//! when nothing moves), and checks recalls. One batch of the node's writer
//! is one log batch: one write, one fsync. Readers (`MessageReader`) share
//! the [`Index`] and read the segments on their own handles.
//!
//! High-water marks: every conversation's last seq, written to a file of
//! their own (whole, durably) whenever the log starts a new segment and on
//! `checkpoint`. At open the log must reach every mark: a log that lost
//! acknowledged messages (a segment deleted or cut) refuses to start
//! instead of handing their seqs out again.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ourchat_protocol::ConversationId;

use super::disk::Disk;
use super::index::{Index, Location, Map};
use super::log::{Log, LogError, Replayed};
use super::records::{self, Record};
use super::summary::{Covers, SegmentNotes};
use crate::sharded::Set;
use crate::{fingerprint_of, ChatMessage, SentBefore};

/// The index as the writer and readers share it.
pub type SharedIndex = Arc<RwLock<Index>>;

/// One write of a store batch (borrowed from the writer's ops).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Append<'a> {
    /// A message: with seq 0 numbered by the store, with a seq given
    /// (replays of cluster logs) stored under it unless it is taken.
    Message(&'a ChatMessage),
    /// A group's event message (numbered like a message), the users who
    /// have read it (those it adds), and its change, encoded by the
    /// caller and handed back by [`MessageStore::open`]'s replay.
    Group {
        /// The event.
        event: &'a ChatMessage,
        /// Users whose read mark moves to its seq.
        readers: &'a [i64],
        /// The change, opaque here.
        change: &'a [u8],
    },
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
    /// A user's read mark moves to `seq` (never back).
    Read {
        /// Whose.
        user_id: i64,
        /// Where.
        conversation: ConversationId,
        /// Up to which seq they read.
        seq: i64,
    },
    /// Recall `seq` if `sender_id` sent it at or after `not_before_ms` and
    /// it is not recalled yet.
    Recall {
        /// Where.
        conversation: ConversationId,
        /// Which message.
        seq: i64,
        /// Who asks: must be its sender.
        sender_id: i64,
        /// Oldest send time still inside the recall window.
        not_before_ms: i64,
    },
}

/// What became of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this seq.
    Stored(i64),
    /// The sender's client id was there: nothing written.
    SentBefore(SentBefore),
    /// The given seq is taken (a replay): nothing written.
    SeqTaken,
    /// A cursor or read mark moved (or was already further); a recall done.
    Done,
    /// Not a message the store can keep (its conversation id does not
    /// parse), or a recall whose condition does not hold: nothing written.
    Refused,
}

/// What a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// One per append, in order.
    pub appended: Vec<Appended>,
    /// The log batch written (`None`: nothing needed writing).
    pub batch_no: Option<u64>,
}

/// A message of the batch being written, indexed once it is durable.
struct Pending<'a> {
    message: &'a ChatMessage,
    conversation: ConversationId,
    seq: i64,
    readers: &'a [i64],
    /// A group event (its change is handed back at a start).
    group: bool,
    /// Its record's bytes in the batch body.
    range: std::ops::Range<usize>,
}

/// The messages of the batch being written, and how to find one of them:
/// a resend, or a seq given twice, meets an earlier message of its batch
/// as it would one already indexed. Looking back through the batch for
/// each message instead was quadratic in the batch: 10% of a node's CPU
/// at 30,000/s, where a slow fsync leaves batches of thousands
/// (BENCHMARKS.md, "A batch's messages found by key").
struct Batched<'a, 'k> {
    pending: Vec<Pending<'a>>,
    keys: &'k mut BatchKeys,
}

/// [`Batched`]'s maps, kept by the store from batch to batch so that a
/// batch allocates none once they have grown (to the largest batch's
/// messages at most, which the writer bounds).
#[derive(Default)]
struct BatchKeys {
    /// Each conversation's newest seq in the batch.
    newest: Map<ConversationId, i64>,
    /// Which pending a (conversation, sender, client id) is.
    sent: Map<(ConversationId, i64, i64), usize>,
    /// Every (conversation, seq) in the batch.
    seqs: Set<(ConversationId, i64)>,
}

impl<'a, 'k> Batched<'a, 'k> {
    fn new(keys: &'k mut BatchKeys) -> Self {
        keys.newest.clear();
        keys.sent.clear();
        keys.seqs.clear();
        Batched {
            pending: Vec::new(),
            keys,
        }
    }

    /// The earlier message of the batch `sender` sent as `client_id`.
    fn sent_before(&self, key: (ConversationId, i64, i64)) -> Option<&Pending<'a>> {
        self.keys.sent.get(&key).map(|&at| &self.pending[at])
    }

    fn holds(&self, conversation: ConversationId, seq: i64) -> bool {
        self.keys.seqs.contains(&(conversation, seq))
    }

    fn newest(&self, conversation: ConversationId) -> i64 {
        self.keys.newest.get(&conversation).copied().unwrap_or(0)
    }

    fn push(&mut self, pending: Pending<'a>) {
        let (conversation, seq) = (pending.conversation, pending.seq);
        let key = (
            conversation,
            pending.message.sender_id,
            pending.message.client_message_id,
        );
        self.keys.sent.insert(key, self.pending.len());
        self.keys.seqs.insert((conversation, seq));
        let newest = self.keys.newest.entry(conversation).or_insert(seq);
        *newest = (*newest).max(seq);
        self.pending.push(pending);
    }
}

/// The message store's writer on a log.
pub struct MessageStore<D: Disk> {
    log: Log<D>,
    index: SharedIndex,
    /// The segment the marks were last written for.
    marked_segment: u64,
    body: Vec<u8>,
    batch_keys: BatchKeys,
    /// When the log-end file was last written.
    end_noted: Instant,
}

/// How often the log-end file is brought up to date while batches come:
/// what a zeroed tail can take unnoticed is at most this much of the
/// newest batches (a clean stop notes the end exactly).
const NOTE_END_EVERY: Duration = Duration::from_secs(1);

impl<D: Disk> Drop for MessageStore<D> {
    fn drop(&mut self) {
        if let Err(err) = self.log.flush().and_then(|()| self.log.note_end()) {
            tracing::warn!(error = %err, "the log-end file was not written at close");
        }
    }
}

fn read(index: &SharedIndex) -> RwLockReadGuard<'_, Index> {
    // The index is only changed by whole inserts: a panic elsewhere leaves
    // it consistent.
    index.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(index: &SharedIndex) -> RwLockWriteGuard<'_, Index> {
    index.write().unwrap_or_else(PoisonError::into_inner)
}

impl<D: Disk> MessageStore<D> {
    /// Opens the store on `disk`, rebuilding the indexes from every record.
    pub fn open(disk: D, segment_bytes: u64) -> Result<Self, LogError> {
        Self::open_replaying(disk, segment_bytes, true, |_, _, _| {})
    }

    /// [`MessageStore::open`], handing every group event replayed to
    /// `on_group` with its change and its batch's number (so a caller that
    /// keeps group state elsewhere can catch up with the log). Without
    /// `sync` batches are not fsynced (they survive a process crash, not
    /// power loss).
    pub fn open_replaying(
        disk: D,
        segment_bytes: u64,
        sync: bool,
        mut on_group: impl FnMut(&ChatMessage, &[u8], u64),
    ) -> Result<Self, LogError> {
        let (log, index, groups) = match open_index(disk, segment_bytes, true)? {
            Opened::Whole(log, index, groups) => (log, index, groups),
            Opened::SummariesWrong(disk) => {
                tracing::warn!(
                    "a segment summary does not match its segment: reading every record"
                );
                match open_index(disk, segment_bytes, false)? {
                    Opened::Whole(log, index, groups) => (log, index, groups),
                    Opened::SummariesWrong(_) => unreachable!("no summary was used"),
                }
            }
        };
        for (event, change, batch_no) in &groups {
            on_group(event, change, *batch_no);
        }
        let mut log = log;
        log.sync_each_batch(sync);
        if let Some(bytes) = log.read_marks()? {
            for (conversation, acked) in decode_marks(&bytes)? {
                let stored = index.last_seq(conversation);
                if stored < acked {
                    return Err(LogError::Lost {
                        conversation: conversation.to_string(),
                        stored,
                        acked,
                    });
                }
            }
        }
        Ok(MessageStore {
            log,
            index: Arc::new(RwLock::new(*index)),
            marked_segment: 0,
            body: Vec::new(),
            batch_keys: BatchKeys::default(),
            // The first batch notes the end at once.
            end_noted: Instant::now()
                .checked_sub(NOTE_END_EVERY)
                .unwrap_or_else(Instant::now),
        })
    }

    /// The index, for readers.
    pub fn index(&self) -> SharedIndex {
        self.index.clone()
    }

    /// Runs `work` on the index, with the writer's disk to read messages.
    pub fn with<T>(&self, work: impl FnOnce(&Index, &D) -> T) -> T {
        work(&read(&self.index), self.log.disk())
    }

    /// Writes every conversation's last seq to the high-water marks file.
    pub fn checkpoint(&mut self) -> Result<(), LogError> {
        let bytes = encode_marks(read(&self.index).last_seqs());
        self.log.write_marks(&bytes)?;
        self.log.flush()?;
        self.log.note_end()
    }

    /// [`MessageStore::checkpoint`] for a batch that opened a segment: the
    /// marks are read from the index and written on a thread of their
    /// own, so the writer (and every send waiting on it) does not wait for
    /// them. That thread reads the index a 64th at a time, under the read
    /// lock only while it copies that part, so the writer waits for it no
    /// longer than that. Copying all of it on the writer held every send
    /// 25–72 ms at a million conversations, and writing it there a third
    /// of a second (BENCHMARKS.md, "The writer's long stalls"). A seq is in
    /// the index only once its batch is written (durable, at full
    /// durability), so marks read later claim nothing the log lacks.
    fn checkpoint_later(&mut self) -> Result<(), LogError> {
        let index = self.index.clone();
        self.log.write_marks_later(Box::new(move || {
            // Each shard copied out under the lock, encoded after it.
            encode_marks(
                (0..crate::sharded::SHARDS)
                    .flat_map(|shard| read(&index).last_seqs_in_shard(shard).collect::<Vec<_>>()),
            )
        }));
        self.log.flush()?;
        self.log.note_end()
    }

    /// Writes `appends` as one durable batch and says what became of each.
    pub fn append(&mut self, appends: &[Append<'_>]) -> Result<BatchOutcome, LogError> {
        self.body.clear();
        let mut appended = Vec::with_capacity(appends.len());
        let mut stored = Batched::new(&mut self.batch_keys);
        let mut cursors: Map<(i64, &str, ConversationId), i64> = Map::default();
        let mut reads: Map<(i64, ConversationId), i64> = Map::default();
        let mut recalls: Vec<(ConversationId, i64)> = Vec::new();
        let shared = self.index.clone();
        let index = read(&shared);
        let disk = self.log.disk();
        for append in appends {
            let outcome = match *append {
                Append::Message(message) => prepare_message(
                    &index,
                    disk,
                    &mut self.body,
                    message,
                    &[],
                    None,
                    &mut stored,
                )?,
                Append::Group {
                    event,
                    readers,
                    change,
                } => prepare_message(
                    &index,
                    disk,
                    &mut self.body,
                    event,
                    readers,
                    Some(change),
                    &mut stored,
                )?,
                Append::Cursor {
                    user_id,
                    device_id,
                    conversation,
                    seq,
                } => {
                    let cursor = cursors
                        .entry((user_id, device_id, conversation))
                        .or_insert(0);
                    *cursor = (*cursor).max(seq);
                    Appended::Done
                }
                Append::Read {
                    user_id,
                    conversation,
                    seq,
                } => {
                    let read = reads.entry((user_id, conversation)).or_insert(0);
                    *read = (*read).max(seq);
                    Appended::Done
                }
                Append::Recall {
                    conversation,
                    seq,
                    sender_id,
                    not_before_ms,
                } => {
                    let recallable = !recalls.contains(&(conversation, seq))
                        && !index.is_recalled(conversation, seq)
                        && index.message(disk, conversation, seq)?.is_some_and(|m| {
                            // A store moved from SQLite carries its recalls
                            // in the messages themselves.
                            !m.recalled && m.sender_id == sender_id && m.sent_at_ms >= not_before_ms
                        });
                    if recallable {
                        records::encode_recall(conversation, seq, &mut self.body);
                        recalls.push((conversation, seq));
                        Appended::Done
                    } else {
                        Appended::Refused
                    }
                }
            };
            appended.push(outcome);
        }
        // Only what moves is written: clients ack every push, and most acks
        // repeat or trail one already stored.
        let cursors: Vec<_> = cursors
            .into_iter()
            .filter_map(|((user_id, device_id, conversation), seq)| {
                let (stored, device) = index.cursor_of_device(user_id, device_id, conversation);
                (seq > stored).then_some((user_id, device_id, device, conversation, seq))
            })
            .collect();
        reads.retain(|&(user_id, conversation), seq| *seq > index.read_seq(user_id, conversation));
        drop(index);
        for &(user_id, device_id, _, conversation, seq) in &cursors {
            records::encode_cursor(user_id, device_id, conversation, seq, &mut self.body);
        }
        for (&(user_id, conversation), &seq) in &reads {
            records::encode_read(user_id, conversation, seq, &mut self.body);
        }
        let count = stored.pending.len() + recalls.len() + cursors.len() + reads.len();
        if count == 0 {
            return Ok(BatchOutcome {
                appended,
                batch_no: None,
            });
        }
        // Cursor moves alone are not worth an fsync: one lost in a crash
        // costs a re-delivery the client dedupes. They become durable with
        // the next batch that is.
        let durable = !stored.pending.is_empty() || !recalls.is_empty() || !reads.is_empty();
        let placed = self.log.append_with(count as u32, &self.body, durable)?;
        let sealed = {
            let mut index = write(&self.index);
            let sealed = index.begin_batch(placed);
            for pending in stored.pending {
                if pending.group {
                    index.note_group(placed.batch_no, pending.range.clone());
                }
                let at = Location::of(placed, pending.range);
                index
                    .put_message(pending.conversation, pending.message, pending.seq, at)
                    .map_err(|why| LogError::Damaged {
                        segment: placed.segment,
                        offset: placed.body_at,
                        why: why.into(),
                    })?;
                for &reader in pending.readers {
                    index.mark_read(reader, pending.conversation, pending.seq);
                }
            }
            for (user_id, device_id, device, conversation, seq) in cursors {
                index.move_cursor(user_id, device_id, device, conversation, seq);
            }
            for ((user_id, conversation), seq) in reads {
                index.mark_read(user_id, conversation, seq);
            }
            for (conversation, seq) in recalls {
                index.recall(conversation, seq);
            }
            sealed
        };
        if let Some(notes) = sealed {
            write_summary(self.log.disk(), notes);
        }
        if placed.segment != self.marked_segment {
            // Marks lag the log by at most a segment: enough to catch a
            // lost segment, and rare enough to cost nothing per batch.
            self.checkpoint_later()?;
            self.marked_segment = placed.segment;
        }
        if self.end_noted.elapsed() >= NOTE_END_EVERY {
            self.log.note_end()?;
            self.end_noted = Instant::now();
        }
        Ok(BatchOutcome {
            appended,
            batch_no: Some(placed.batch_no),
        })
    }
}

/// Numbers (or checks the given seq of) one message of the batch and
/// encodes it, or says why it is not written.
#[allow(clippy::too_many_arguments)]
fn prepare_message<'a, D: Disk>(
    index: &Index,
    disk: &D,
    body: &mut Vec<u8>,
    message: &'a ChatMessage,
    readers: &'a [i64],
    change: Option<&[u8]>,
    stored: &mut Batched<'a, '_>,
) -> Result<Appended, LogError> {
    let Ok(conversation) = message.conversation_id.parse::<ConversationId>() else {
        return Ok(Appended::Refused);
    };
    let (sender, client_id) = (message.sender_id, message.client_message_id);
    let resent = |seq: i64, first: &ChatMessage| {
        if message.seq > 0 {
            Appended::SeqTaken
        } else {
            Appended::SentBefore(sent_before(seq, first, message))
        }
    };
    let (sent, mut newest) = index.sent_and_last_seq(conversation, sender, client_id);
    if let Some(seq) = sent {
        let first = index
            .message(disk, conversation, seq)?
            .ok_or_else(|| LogError::Damaged {
                segment: 0,
                offset: 0,
                why: format!("{conversation} has no seq {seq} in its index"),
            })?;
        return Ok(resent(seq, &first));
    }
    if let Some(earlier) = stored.sent_before((conversation, sender, client_id)) {
        return Ok(resent(earlier.seq, earlier.message));
    }
    newest = newest.max(stored.newest(conversation));
    let seq = match message.seq {
        given
            if given > 0
                && (index.holds(conversation, given) || stored.holds(conversation, given)) =>
        {
            return Ok(Appended::SeqTaken)
        }
        given if given > 0 => given,
        _ => newest + 1,
    };
    let start = body.len();
    match change {
        Some(change) => records::encode_group(seq, message, readers, change, body),
        None => records::encode_message(seq, message, body),
    }
    stored.push(Pending {
        message,
        conversation,
        seq,
        readers,
        group: change.is_some(),
        range: start..body.len(),
    });
    Ok(Appended::Stored(seq))
}

/// A group event met while opening: the event, its change, its batch.
type GroupEvent = (ChatMessage, Vec<u8>, u64);

/// What one pass over the log at open gives.
enum Opened<D: Disk> {
    /// The log and the index it holds.
    Whole(Log<D>, Box<Index>, Vec<GroupEvent>),
    /// A summary did not match its segment: the index is wrong, open again
    /// without summaries.
    SummariesWrong(D),
}

/// A summarized segment being scanned: its batches must be the ones the
/// summary covers.
struct Covered {
    segment: u64,
    covers: Covers,
    next_no: u64,
}

impl Covered {
    fn matched(&self) -> bool {
        self.next_no == self.covers.last_no + 1
    }
}

/// Scans the log and rebuilds the index: from the summary of each sealed
/// segment that has a usable one (`use_summaries`), else from its records,
/// writing the summaries that were missing.
fn open_index<D: Disk>(
    disk: D,
    segment_bytes: u64,
    use_summaries: bool,
) -> Result<Opened<D>, LogError> {
    let mut index = Index::default();
    let mut groups: Vec<GroupEvent> = Vec::new();
    let mut broken = None;
    let mut wrong = false;
    let mut covered: Option<Covered> = None;
    let log = Log::open_replayed(disk, segment_bytes, |event| match event {
        Replayed::Segment {
            segment,
            last,
            disk,
        } => {
            // A new segment: the one before (if read record by record) is
            // noted whole.
            if let Some(notes) = index.seal() {
                write_summary(disk, notes);
            }
            wrong |= covered.take().is_some_and(|c| !c.matched());
            if !use_summaries || last || wrong || broken.is_some() {
                return;
            }
            let bytes = match disk.read_summary(segment) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(segment, error = %err, "a segment summary does not read");
                    return;
                }
            };
            match index.load_summary(segment, &bytes) {
                Ok(Some(covers)) => {
                    covered = Some(Covered {
                        segment,
                        next_no: covers.first_no,
                        covers,
                    })
                }
                Ok(None) => {}
                Err(_) => wrong = true,
            }
        }
        Replayed::Batch(placed, body) => {
            if broken.is_some() || wrong {
                return;
            }
            if let Some(covered) = covered.as_mut().filter(|c| c.segment == placed.segment) {
                if placed.batch_no != covered.next_no || placed.batch_no > covered.covers.last_no {
                    wrong = true;
                    return;
                }
                covered.next_no += 1;
                for at in covered
                    .covers
                    .groups
                    .iter()
                    .filter(|g| g.batch_no == placed.batch_no)
                {
                    let record = body
                        .get(at.start as usize..at.end as usize)
                        .and_then(|bytes| match records::records(bytes).next() {
                            Some(Ok((_, Record::Group { event, change, .. }))) => {
                                Some((event, change.to_vec()))
                            }
                            _ => None,
                        });
                    match record {
                        Some((event, change)) => groups.push((event, change, placed.batch_no)),
                        None => wrong = true,
                    }
                }
                return;
            }
            // Nothing to seal: that was done as the segment began.
            let _ = index.begin_batch(placed);
            let replayed = index.replay(placed, body, |event, change| {
                groups.push((event.clone(), change.to_vec(), placed.batch_no))
            });
            if let Err(why) = replayed {
                broken = Some((placed, why));
            }
        }
    })?;
    if let Some((placed, why)) = broken {
        return Err(LogError::Damaged {
            segment: placed.segment,
            offset: placed.body_at,
            why: why.into(),
        });
    }
    if wrong || covered.is_some_and(|c| !c.matched()) {
        return Ok(Opened::SummariesWrong(log.into_disk()));
    }
    Ok(Opened::Whole(log, Box::new(index), groups))
}

/// The marks file's bytes: each conversation's last seq, checksummed.
fn encode_marks(last_seqs: impl Iterator<Item = (ConversationId, i64)>) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MARKS_MAGIC);
    let mut count = 0u32;
    bytes.extend_from_slice(&count.to_le_bytes());
    let mut id = String::new();
    for (conversation, last_seq) in last_seqs {
        id.clear();
        // Writing into a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{conversation}"));
        bytes.extend_from_slice(&(id.len() as u16).to_le_bytes());
        bytes.extend_from_slice(id.as_bytes());
        bytes.extend_from_slice(&last_seq.to_le_bytes());
        count += 1;
    }
    bytes[4..8].copy_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Has the summary of a sealed segment written; a failure costs only a
/// slower start.
fn write_summary(disk: &impl Disk, notes: SegmentNotes) {
    disk.write_summary(notes.segment, Box::new(move || notes.encode()));
}

/// A reader of the store: the shared index and its own segment handles.
pub struct MessageReader<D: Disk> {
    disk: D,
    index: SharedIndex,
}

impl<D: Disk> MessageReader<D> {
    /// A reader of `index` reading segments through `disk`.
    pub fn new(disk: D, index: SharedIndex) -> Self {
        MessageReader { disk, index }
    }

    /// Runs `work` on the index, with the reader's disk to read messages.
    pub fn with<T>(&self, work: impl FnOnce(&Index, &D) -> T) -> T {
        work(&read(&self.index), &self.disk)
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
        store.append(&appends).map(|o| o.appended)
    }

    /// The reads the tests check, on the writer's own disk.
    trait Reads {
        fn last_seq(&self, conversation: ConversationId) -> i64;
        fn cursor(&self, user_id: i64, device_id: &str, conversation: ConversationId) -> i64;
        fn history(
            &self,
            conversation: ConversationId,
            before: i64,
            limit: usize,
        ) -> Result<Vec<ChatMessage>, LogError>;
        fn after(
            &self,
            conversation: ConversationId,
            after: i64,
            limit: usize,
        ) -> Result<Vec<ChatMessage>, LogError>;
    }

    impl Reads for MessageStore<MemDisk> {
        fn last_seq(&self, conversation: ConversationId) -> i64 {
            self.with(|index, _| index.last_seq(conversation))
        }
        fn cursor(&self, user_id: i64, device_id: &str, conversation: ConversationId) -> i64 {
            self.with(|index, _| index.cursor(user_id, device_id, conversation))
        }
        fn history(
            &self,
            conversation: ConversationId,
            before: i64,
            limit: usize,
        ) -> Result<Vec<ChatMessage>, LogError> {
            self.with(|index, disk| index.history(disk, conversation, before, limit))
        }
        fn after(
            &self,
            conversation: ConversationId,
            after: i64,
            limit: usize,
        ) -> Result<Vec<ChatMessage>, LogError> {
            self.with(|index, disk| index.after(disk, conversation, after, limit))
        }
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
    fn a_given_seq_is_taken_once_whether_indexed_or_earlier_in_its_batch() {
        let mut store = MessageStore::open(MemDisk::default(), SEGMENT).unwrap();
        let given = |seq, sender, cmid| ChatMessage {
            seq,
            ..message("si_1_2", sender, cmid, "x")
        };
        assert_eq!(
            append(&mut store, &[given(3, 1, 1)]).unwrap(),
            [Appended::Stored(3)]
        );
        let outcomes = append(
            &mut store,
            &[
                given(5, 1, 2),
                given(5, 2, 1),
                given(3, 2, 2),
                given(7, 1, 2),
                message("si_1_2", 2, 3, "unnumbered"),
                given(4, 2, 4),
                message("si_1_3", 1, 9, "another conversation's seqs are its own"),
            ],
        )
        .unwrap();
        assert_eq!(
            outcomes,
            [
                Appended::Stored(5),
                Appended::SeqTaken,
                Appended::SeqTaken,
                Appended::SeqTaken,
                Appended::Stored(6),
                Appended::Stored(4),
                Appended::Stored(1),
            ],
            "a seq taken earlier in the batch or before it, a resend with a seq, the newest + 1"
        );
        assert_eq!(store.last_seq(conv("si_1_2")), 6);
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
        let refused = |disk: &MemDisk| {
            MessageStore::open(disk.clone(), 4 << 10)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let cut = refused(&disk);
        assert!(cut.contains("but batch 60 was acknowledged"), "{cut}");
        // Without the log-end file, the marks still catch it.
        disk.0.borrow_mut().end.clear();
        let lost = refused(&disk);
        assert!(lost.contains("but seq 60 was acknowledged"), "{lost}");
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

    /// On segment files, where the marks of a batch that opens a segment
    /// are written on a thread of their own: they still catch a lost
    /// segment, without the log-end file's help.
    #[test]
    fn marks_written_off_the_writer_still_catch_a_lost_segment() {
        use crate::msglog::disk::FileDisk;
        let dir = tempfile::tempdir().unwrap();
        let open = || MessageStore::open(FileDisk::new(dir.path()).unwrap(), 4 << 10);
        let mut store = open().unwrap();
        for i in 1..=60 {
            let conversation = format!("si_{}_{}", 1 + i % 5, 100);
            let batch = [message(&conversation, 1 + i % 5, i, &"x".repeat(200))];
            let appends: Vec<Append<'_>> = batch.iter().map(Append::Message).collect();
            store.append(&appends).unwrap();
        }
        // Dropping the store waits for the marks still being written.
        drop(store);
        let mut segments: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
            .collect();
        segments.sort();
        assert!(segments.len() > 3, "several segments: {segments:?}");
        let marks = std::fs::read(dir.path().join("marks")).unwrap();
        assert!(marks.len() > 12, "marks of several conversations");
        assert!(open().is_ok());

        // Two segments gone: the marks, written when the newer of them
        // was opened, name a seq that is no longer there.
        for lost in &segments[segments.len() - 2..] {
            std::fs::remove_file(lost).unwrap();
        }
        std::fs::remove_file(dir.path().join("end")).unwrap();
        let refused = open().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("was acknowledged"), "{refused}");
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

    /// Summaries of sealed segments rebuild the very index the records
    /// do; a damaged summary, or a whole one that does not match its
    /// segment, is ignored and the index is still right.
    #[test]
    fn an_index_from_summaries_is_the_index_from_records() {
        let disk = MemDisk::default();
        let mut store = MessageStore::open(disk.clone(), 4 << 10).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..200i64 {
            let conversation = ["si_1_2", "si_1_3", "sg_4", "si_2_3"][rng.gen_range(0..4)];
            let sent = message(
                conversation,
                1 + round % 3,
                round,
                &"y".repeat(rng.gen_range(1..200)),
            );
            let event = message("sg_4", 1, 10_000 + round, "joined");
            let mut appends = vec![Append::Message(&sent)];
            match round % 5 {
                0 => appends.push(Append::Group {
                    event: &event,
                    readers: &[5, 6],
                    change: b"change",
                }),
                1 => appends.push(Append::Read {
                    user_id: 2,
                    conversation: conv(conversation),
                    seq: rng.gen_range(1..10),
                }),
                2 => appends.push(Append::Recall {
                    conversation: conv("si_1_2"),
                    seq: 1,
                    sender_id: 1,
                    not_before_ms: 0,
                }),
                _ => {}
            }
            appends.push(Append::Cursor {
                user_id: 3,
                device_id: ["phone", "laptop"][rng.gen_range(0..2)],
                conversation: conv(conversation),
                seq: rng.gen_range(0..50),
            });
            store.append(&appends).unwrap();
        }
        let expected = store.with(|index, _| index.canonical());
        drop(store);
        let summaries = disk.0.borrow().summaries.len() as u64;
        let segments = disk.0.borrow().visible.len() as u64;
        assert!(
            summaries >= 5 && summaries == segments - 1,
            "{summaries} of {segments}: {:?}",
            disk.0.borrow().summaries.keys().collect::<Vec<_>>()
        );
        let reopened = |disk: &MemDisk| {
            let mut groups = 0;
            let store =
                MessageStore::open_replaying(disk.clone(), 4 << 10, true, |event, change, _| {
                    assert_eq!((event.content.as_str(), change), ("joined", &b"change"[..]));
                    groups += 1;
                })
                .unwrap();
            (store.with(|index, _| index.canonical()), groups)
        };
        assert_eq!(reopened(&disk), (expected.clone(), 40));
        // Damaged: that segment is read record by record (and summarized
        // again).
        let damaged = {
            let summaries = &mut disk.0.borrow_mut().summaries;
            let summary = summaries.get_mut(&2).unwrap();
            summary[40] ^= 1;
            summary.clone()
        };
        assert_eq!(reopened(&disk), (expected.clone(), 40));
        assert_ne!(disk.0.borrow().summaries[&2], damaged, "written again");
        // Whole but of other batches: segment 3's summary under 2's name.
        let mut state = disk.0.borrow_mut();
        let third = state.summaries[&3].clone();
        let forged = crate::msglog::summary::renumbered(&third, 2);
        state.summaries.insert(2, forged);
        drop(state);
        assert_eq!(reopened(&disk), (expected, 40));
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
            let mut pending_cursor;
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
                // What was only written before the crash may be gone.
                pending_cursor = acked_cursor;
                for _ in 0..rng.gen_range(1..30) {
                    if rng.gen_range(0..25) == 0 {
                        disk.0.borrow_mut().fail_next_sync = true;
                    }
                    let mut batch = Vec::new();
                    // A quarter of the batches are cursor moves alone (not
                    // fsynced: durable with the next batch that is).
                    let messages_in_batch = match rng.gen_range(0..4) {
                        0 => 0,
                        _ => rng.gen_range(1..20),
                    };
                    for _ in 0..messages_in_batch {
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
                    let Ok(outcomes) = store.append(&appends).map(|o| o.appended) else {
                        break;
                    };
                    pending_cursor = pending_cursor.max(cursor_seq);
                    if outcomes.iter().any(|o| matches!(o, Appended::Stored(_))) {
                        acked_cursor = acked_cursor.max(pending_cursor);
                    }
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
                }
                drop(store);
                disk.crash(&mut rng);
            }
        }
    }
}
