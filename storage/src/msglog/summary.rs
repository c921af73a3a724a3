//! Summaries of sealed segments, without I/O: what one segment changed in
//! the index (where its messages are and who sent which client id, read
//! marks, cursors, recalls, where its group events are), noted while the
//! index takes the segment's batches and written once the log has left
//! it. A start loads a summary instead of decoding every record of the
//! segment: it is what brings a 10-million-message start under 3 s.
//!
//! A summary is only a cache. It is checksummed and names its segment and
//! the batches it covers; one that is missing, damaged or does not match
//! what the scan of its segment finds is ignored, and the segment is read
//! record by record again. The segments themselves are still scanned and
//! checksummed at every start, so damage in them refuses to start as before.

use ourchat_protocol::ConversationId;

use super::index::Map;

/// "OCS1": a summary's first bytes.
const MAGIC: &[u8; 4] = b"OCS1";
/// Bytes of one message entry: seq, offset, length, sender, client id,
/// send time.
const ENTRY: usize = 8 + 4 + 4 + 8 + 8 + 8;

/// A message as the summary keeps it (its segment is the summary's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Noted {
    pub(super) conversation: ConversationId,
    pub(super) seq: i64,
    pub(super) offset: u32,
    pub(super) len: u32,
    pub(super) sender: i64,
    pub(super) client_id: i64,
    pub(super) sent_at_ms: i64,
}

/// Where a group event's record is: its batch, and its bytes in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GroupAt {
    pub(super) batch_no: u64,
    pub(super) start: u32,
    pub(super) end: u32,
}

/// A device the notes do not name yet, in [`SegmentNotes`]' numbering.
const UNNAMED: u32 = u32::MAX;

/// What the index took from one segment so far, in the order it came.
#[derive(Debug, Default)]
pub(super) struct SegmentNotes {
    pub(super) segment: u64,
    pub(super) first_no: u64,
    pub(super) last_no: u64,
    pub(super) messages: Vec<Noted>,
    /// (user, conversation, seq): read marks other than a sender's own.
    pub(super) reads: Vec<(i64, ConversationId, i64)>,
    /// (user, device number in `device_ids`, conversation, seq).
    pub(super) cursors: Vec<(i64, u32, ConversationId, i64)>,
    /// The device ids the cursors name.
    pub(super) device_ids: Vec<Box<str>>,
    /// At the index's number of a device, its number in `device_ids`
    /// ([`UNNAMED`]: none yet). The index numbers devices densely from 0,
    /// so this is a vector: a map here cost a lookup per cursor move
    /// (2.6% of the writer's samples at 10,000 msg/s).
    device_numbers: Vec<u32>,
    pub(super) recalls: Vec<(ConversationId, i64)>,
    pub(super) groups: Vec<GroupAt>,
}

/// A summary's header: which segment and batches it covers, and where the
/// group events are (their changes are handed to the caller at a start,
/// from the batch bodies the scan reads anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Covers {
    pub(super) first_no: u64,
    pub(super) last_no: u64,
    pub(super) groups: Vec<GroupAt>,
}

/// What a summary is loaded into.
pub(super) trait Load {
    /// The device ids the summary's cursors name, by number.
    fn devices(&mut self, device_ids: &[&str]);
    /// One conversation's part of the segment: its messages in the order
    /// stored, read marks (user, max seq; senders' own included), delivery
    /// cursors (user, device number, max seq).
    fn conversation(
        &mut self,
        conversation: ConversationId,
        messages: &mut dyn Iterator<Item = Noted>,
        reads: &mut dyn Iterator<Item = (i64, i64)>,
        cursors: &mut dyn Iterator<Item = (i64, u32, i64)>,
    ) -> Result<(), &'static str>;
    /// A recall.
    fn recall(&mut self, conversation: ConversationId, seq: i64);
}

/// One conversation's part of a summary being encoded.
#[derive(Default)]
struct Block<'a> {
    messages: Vec<&'a Noted>,
    reads: Map<i64, i64>,
    cursors: Map<(i64, u32), i64>,
}

impl SegmentNotes {
    /// Notes for `segment`, starting at batch `first_no`.
    pub(super) fn new(segment: u64, first_no: u64) -> Self {
        SegmentNotes {
            segment,
            first_no,
            last_no: first_no,
            ..SegmentNotes::default()
        }
    }

    /// Notes a cursor move; `device` is the index's number for
    /// `device_id`.
    pub(super) fn cursor(
        &mut self,
        user_id: i64,
        device: u32,
        device_id: &str,
        conversation: ConversationId,
        seq: i64,
    ) {
        let at = device as usize;
        if self.device_numbers.len() <= at {
            self.device_numbers.resize(at + 1, UNNAMED);
        }
        let local = match self.device_numbers[at] {
            UNNAMED => {
                let next = self.device_ids.len() as u32;
                self.device_ids.push(device_id.into());
                self.device_numbers[at] = next;
                next
            }
            named => named,
        };
        self.cursors.push((user_id, local, conversation, seq));
    }

    /// The summary's bytes.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.messages.len() * (ENTRY + 4));
        out.extend_from_slice(MAGIC);
        for n in [self.segment, self.first_no, self.last_no] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        // Grouped by conversation, in order of first message (so a start
        // creates and lists conversations in the order a replay would),
        // and within one in the order stored: a start then looks each
        // conversation up once per segment, not once per message.
        let mut numbers: Map<ConversationId, usize> = Map::default();
        let mut blocks: Vec<(ConversationId, Block<'_>)> = Vec::new();
        let mut block = |conversation| {
            let at = *numbers.entry(conversation).or_insert_with(|| {
                blocks.push((conversation, Block::default()));
                blocks.len() - 1
            });
            at
        };
        let mut at_of = Vec::with_capacity(self.messages.len());
        for noted in &self.messages {
            at_of.push(block(noted.conversation));
        }
        let reads_at: Vec<_> = self.reads.iter().map(|r| block(r.1)).collect();
        let cursors_at: Vec<_> = self.cursors.iter().map(|c| block(c.2)).collect();
        for (noted, at) in self.messages.iter().zip(at_of) {
            let block = &mut blocks[at].1;
            block.messages.push(noted);
            raise(block.reads.entry(noted.sender).or_insert(0), noted.seq);
        }
        for (&(user_id, _, seq), at) in self.reads.iter().zip(reads_at) {
            raise(blocks[at].1.reads.entry(user_id).or_insert(0), seq);
        }
        for (&(user_id, device, _, seq), at) in self.cursors.iter().zip(cursors_at) {
            raise(
                blocks[at].1.cursors.entry((user_id, device)).or_insert(0),
                seq,
            );
        }
        put_u32(&mut out, self.device_ids.len());
        for device_id in &self.device_ids {
            let name = device_id.as_bytes();
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
        }
        put_u32(&mut out, blocks.len());
        for (conversation, block) in &blocks {
            put_conversation(&mut out, *conversation);
            put_u32(&mut out, block.messages.len());
            for noted in &block.messages {
                out.extend_from_slice(&noted.seq.to_le_bytes());
                out.extend_from_slice(&noted.offset.to_le_bytes());
                out.extend_from_slice(&noted.len.to_le_bytes());
                out.extend_from_slice(&noted.sender.to_le_bytes());
                out.extend_from_slice(&noted.client_id.to_le_bytes());
                out.extend_from_slice(&noted.sent_at_ms.to_le_bytes());
            }
            put_u32(&mut out, block.reads.len());
            for (user_id, seq) in &block.reads {
                out.extend_from_slice(&user_id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
            }
            put_u32(&mut out, block.cursors.len());
            for ((user_id, device), seq) in &block.cursors {
                out.extend_from_slice(&user_id.to_le_bytes());
                out.extend_from_slice(&device.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
            }
        }
        put_u32(&mut out, self.recalls.len());
        for &(conversation, seq) in &self.recalls {
            put_conversation(&mut out, conversation);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        put_u32(&mut out, self.groups.len());
        for group in &self.groups {
            out.extend_from_slice(&group.batch_no.to_le_bytes());
            out.extend_from_slice(&group.start.to_le_bytes());
            out.extend_from_slice(&group.end.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

fn raise(mark: &mut i64, seq: i64) {
    *mark = (*mark).max(seq);
}

/// Checks a summary of `segment` and loads it into `into`. `Ok(None)`:
/// the checksum, the magic or the segment is wrong, and nothing was
/// loaded. An error (a summary that checks but does not parse) leaves
/// `into` half-loaded: the caller must rebuild without summaries.
pub(super) fn load(
    bytes: &[u8],
    segment: u64,
    into: &mut impl Load,
) -> Result<Option<Covers>, &'static str> {
    let Some(mut at) = checked(bytes, segment) else {
        return Ok(None);
    };
    let (first_no, last_no) = (at.u64()?, at.u64()?);
    let mut device_ids = Vec::new();
    for _ in 0..at.u32()? {
        let len = at.u16()? as usize;
        device_ids.push(std::str::from_utf8(at.take(len)?).map_err(|_| "a device id is not text")?);
    }
    into.devices(&device_ids);
    for _ in 0..at.u32()? {
        let conversation = at.conversation()?;
        let count = at.u32()? as usize;
        let entries = at.take(count.checked_mul(ENTRY).ok_or("too long")?)?;
        let mut messages = entries.chunks_exact(ENTRY).map(|entry| {
            let mut entry = Bytes(entry);
            // In bounds: the chunk is exactly one entry.
            let mut next = || entry.i64().unwrap_or_default();
            let seq = next();
            let place = next() as u64;
            Noted {
                conversation,
                seq,
                offset: place as u32,
                len: (place >> 32) as u32,
                sender: next(),
                client_id: next(),
                sent_at_ms: next(),
            }
        });
        let count = at.u32()? as usize;
        let entries = at.take(count.checked_mul(16).ok_or("too long")?)?;
        let mut reads = entries.chunks_exact(16).map(|entry| {
            let mut entry = Bytes(entry);
            (
                entry.i64().unwrap_or_default(),
                entry.i64().unwrap_or_default(),
            )
        });
        let count = at.u32()? as usize;
        let entries = at.take(count.checked_mul(20).ok_or("too long")?)?;
        let mut cursors = entries.chunks_exact(20).map(|entry| {
            let mut entry = Bytes(entry);
            let user_id = entry.i64().unwrap_or_default();
            let device = entry.u32().unwrap_or_default();
            (user_id, device, entry.i64().unwrap_or_default())
        });
        into.conversation(conversation, &mut messages, &mut reads, &mut cursors)?;
    }
    for _ in 0..at.u32()? {
        let (conversation, seq) = (at.conversation()?, at.i64()?);
        into.recall(conversation, seq);
    }
    let mut groups = Vec::new();
    for _ in 0..at.u32()? {
        let batch_no = at.u64()?;
        let (start, end) = (at.u32()?, at.u32()?);
        groups.push(GroupAt {
            batch_no,
            start,
            end,
        });
    }
    if !at.0.is_empty() {
        return Err("bytes after the end");
    }
    Ok(Some(Covers {
        first_no,
        last_no,
        groups,
    }))
}

/// The summary's bytes after its segment number, if it is whole and of
/// `segment`.
fn checked(bytes: &[u8], segment: u64) -> Option<Bytes<'_>> {
    let (body, crc) = bytes.split_last_chunk::<4>()?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return None;
    }
    let mut at = Bytes(body.strip_prefix(MAGIC)?);
    (at.u64().ok()? == segment).then_some(at)
}

/// The summary claiming to be of `segment` (a forgery, for tests).
#[cfg(test)]
pub(super) fn renumbered(bytes: &[u8], segment: u64) -> Vec<u8> {
    let mut forged = bytes[..bytes.len() - 4].to_vec();
    forged[4..12].copy_from_slice(&segment.to_le_bytes());
    let crc = crc32fast::hash(&forged);
    forged.extend_from_slice(&crc.to_le_bytes());
    forged
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_conversation(out: &mut Vec<u8>, conversation: ConversationId) {
    let (tag, a, b) = match conversation {
        ConversationId::Direct { low, high } => (0u8, low, high),
        ConversationId::Group(id) => (1, id, 0),
    };
    out.push(tag);
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
}

/// A reader over a summary's bytes.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("cut short");
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            *self.take(8)?.first_chunk().ok_or("cut")?,
        ))
    }

    fn i64(&mut self) -> Result<i64, &'static str> {
        self.u64().map(|n| n as i64)
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_le_bytes(
            *self.take(2)?.first_chunk().ok_or("cut")?,
        ))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(
            *self.take(4)?.first_chunk().ok_or("cut")?,
        ))
    }

    fn conversation(&mut self) -> Result<ConversationId, &'static str> {
        let tag = self.take(1)?[0];
        let (a, b) = (self.i64()?, self.i64()?);
        match tag {
            0 if a < b => Ok(ConversationId::Direct { low: a, high: b }),
            1 => Ok(ConversationId::Group(a)),
            _ => Err("not a conversation"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Loaded {
        devices: Vec<String>,
        messages: Vec<Noted>,
        reads: Vec<(i64, ConversationId, i64)>,
        cursors: Vec<(i64, String, ConversationId, i64)>,
        recalls: Vec<(ConversationId, i64)>,
    }

    impl Load for Loaded {
        fn devices(&mut self, device_ids: &[&str]) {
            self.devices = device_ids.iter().map(|id| id.to_string()).collect();
        }
        fn conversation(
            &mut self,
            conversation: ConversationId,
            messages: &mut dyn Iterator<Item = Noted>,
            reads: &mut dyn Iterator<Item = (i64, i64)>,
            cursors: &mut dyn Iterator<Item = (i64, u32, i64)>,
        ) -> Result<(), &'static str> {
            self.messages.extend(messages);
            self.reads
                .extend(reads.map(|(user, seq)| (user, conversation, seq)));
            for (user, device, seq) in cursors {
                let device = self.devices[device as usize].clone();
                self.cursors.push((user, device, conversation, seq));
            }
            Ok(())
        }
        fn recall(&mut self, conversation: ConversationId, seq: i64) {
            self.recalls.push((conversation, seq));
        }
    }

    fn notes() -> SegmentNotes {
        let ab = ConversationId::Direct { low: 1, high: 2 };
        let group = ConversationId::Group(9);
        let message = |conversation, seq, sender| Noted {
            conversation,
            seq,
            offset: 100 * seq as u32,
            len: 60,
            sender,
            client_id: seq * 7,
            sent_at_ms: 1_000 + seq,
        };
        SegmentNotes {
            segment: 3,
            first_no: 10,
            last_no: 12,
            messages: vec![message(ab, 1, 1), message(group, 1, 5), message(ab, 2, 2)],
            reads: vec![(2, ab, 1), (7, group, 1)],
            cursors: vec![(2, 0, ab, 1), (2, 0, ab, 2), (1, 1, ab, 2)],
            device_ids: vec!["phone".into(), "laptop".into()],
            device_numbers: Vec::new(),
            recalls: vec![(ab, 1)],
            groups: vec![GroupAt {
                batch_no: 11,
                start: 5,
                end: 90,
            }],
        }
    }

    #[test]
    fn a_summary_loads_what_was_noted_grouped_by_conversation() {
        let notes = notes();
        let bytes = notes.encode();
        let mut loaded = Loaded::default();
        let covers = load(&bytes, 3, &mut loaded)
            .expect("parses")
            .expect("checks");
        assert_eq!((covers.first_no, covers.last_no), (10, 12));
        assert_eq!(covers.groups, notes.groups);
        let order: Vec<_> = loaded
            .messages
            .iter()
            .map(|m| (m.conversation, m.seq))
            .collect();
        let (ab, group) = (
            notes.messages[0].conversation,
            notes.messages[1].conversation,
        );
        assert_eq!(order, [(ab, 1), (ab, 2), (group, 1)]);
        assert_eq!(loaded.messages[1], notes.messages[2]);
        loaded.reads.sort_unstable_by_key(|r| (r.0, r.1));
        assert_eq!(loaded.devices, ["phone", "laptop"]);
        // Senders' own marks are folded in: user 2 sent seq 2 of ab.
        assert_eq!(
            loaded.reads,
            [(1, ab, 1), (2, ab, 2), (5, group, 1), (7, group, 1)]
        );
        loaded.cursors.sort_unstable();
        assert_eq!(
            loaded.cursors,
            [(1, "laptop".into(), ab, 2), (2, "phone".into(), ab, 2)]
        );
        assert_eq!(loaded.recalls, [(ab, 1)]);
    }

    #[test]
    fn a_damaged_or_foreign_summary_loads_nothing() {
        let bytes = notes().encode();
        for at in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1;
            let mut loaded = Loaded::default();
            assert_eq!(load(&flipped, 3, &mut loaded), Ok(None), "flip at {at}");
            assert_eq!(loaded, Loaded::default());
        }
        let mut loaded = Loaded::default();
        assert_eq!(load(&bytes, 4, &mut loaded), Ok(None), "another segment's");
        assert_eq!(load(&bytes[..bytes.len() - 9], 3, &mut loaded), Ok(None));
        assert_eq!(loaded, Loaded::default());
    }
}
