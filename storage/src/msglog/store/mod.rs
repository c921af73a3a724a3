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
//!
//! `batched` numbers and encodes one batch's messages, `opening` rebuilds
//! the index at open, `marks` is the high-water marks file.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ourchat_protocol::ConversationId;

use super::disk::Disk;
use super::index::{Index, Location, Map};
use super::log::{Log, LogError};
use super::records;
use super::summary::SegmentNotes;
use crate::{ChatMessage, SentBefore};

mod batched;
mod marks;
mod opening;
#[cfg(test)]
mod tests;

use batched::{prepare_message, BatchKeys, Batched};
use marks::{decode_marks, encode_marks};
use opening::{open_index, Opened};

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
