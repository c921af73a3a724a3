//! An append-only log of our own: each batch is one write and one
//! fdatasync; records carry a fixed header (length, CRC-32 of the rest,
//! kind, conversation, seq, sender, client id) before the message's bytes,
//! so recovery rebuilds the indexes from headers without decoding bodies.
//! The indexes live in memory: per conversation a dense vector of record
//! locations (seqs are gapless), the dedupe key -> seq, cursors. A
//! prototype to measure against: one file, no segments or snapshots yet.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{decode, encode, Cursor, Engine, Msg};

/// len u32, crc u32, kind u8, conv u32, seq i64, sender i64, cmid i64.
const HEADER: usize = 4 + 4 + 1 + 4 + 8 + 8 + 8;
const MESSAGE: u8 = 1;
const CURSOR: u8 = 2;

struct SegLog {
    file: File,
    end: u64,
    /// Per conversation, where seq `i + 1` is: offset << 24 | length.
    index: HashMap<u32, Vec<u64>>,
    dedupe: HashMap<(u32, i64, i64), i64>,
    cursors: HashMap<(i64, u32, u32), i64>,
    buffer: Vec<u8>,
}

pub fn open(dir: &Path) -> Box<dyn Engine> {
    let path = dir.join("messages.log");
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .expect("open");
    let mut log = SegLog {
        end: 0,
        index: HashMap::new(),
        dedupe: HashMap::new(),
        cursors: HashMap::new(),
        buffer: Vec::new(),
        file: file.try_clone().expect("clone"),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("read");
    log.recover(&bytes);
    Box::new(log)
}

impl SegLog {
    /// Rebuilds the indexes from every whole record with a good checksum;
    /// a torn tail ends the scan (a real store also proves it torn).
    fn recover(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while at + HEADER <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4"));
            if len < HEADER || at + len > bytes.len() || crc32(&bytes[at + 8..at + len]) != crc {
                break;
            }
            let field = |from: usize| {
                i64::from_le_bytes(bytes[at + from..at + from + 8].try_into().expect("8"))
            };
            let conv = u32::from_le_bytes(bytes[at + 9..at + 13].try_into().expect("4"));
            let (seq, sender, cmid) = (field(13), field(21), field(29));
            match bytes[at + 8] {
                MESSAGE => {
                    self.index
                        .entry(conv)
                        .or_default()
                        .push(((at as u64) << 24) | len as u64);
                    self.dedupe.insert((conv, sender, cmid), seq);
                }
                _ => {
                    self.cursors.insert((sender, cmid as u32, conv), seq);
                }
            }
            at += len;
        }
        self.end = at as u64;
    }

    fn record(&mut self, kind: u8, conv: u32, seq: i64, a: i64, b: i64, body: &[u8]) -> u64 {
        let start = self.buffer.len();
        let len = HEADER + body.len();
        self.buffer.extend_from_slice(&(len as u32).to_le_bytes());
        self.buffer.extend_from_slice(&[0; 4]);
        self.buffer.push(kind);
        self.buffer.extend_from_slice(&conv.to_le_bytes());
        for field in [seq, a, b] {
            self.buffer.extend_from_slice(&field.to_le_bytes());
        }
        self.buffer.extend_from_slice(body);
        let crc = crc32(&self.buffer[start + 8..]);
        self.buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        ((self.end + start as u64) << 24) | len as u64
    }

    fn read(&self, location: u64) -> Vec<u8> {
        let (offset, len) = (location >> 24, (location & 0xff_ffff) as usize);
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, offset).expect("read");
        bytes.drain(..HEADER);
        bytes
    }
}

impl Engine for SegLog {
    fn write_batch(&mut self, msgs: &[Msg], cursors: &[Cursor]) -> Vec<i64> {
        self.buffer.clear();
        let mut seqs = Vec::with_capacity(msgs.len());
        let mut placed = Vec::with_capacity(msgs.len());
        let mut given: HashMap<u32, i64> = HashMap::new();
        let mut new_keys: HashMap<(u32, i64, i64), i64> = HashMap::new();
        for msg in msgs {
            let key = (msg.conv, msg.sender, msg.client_message_id);
            if let Some(seq) = self.dedupe.get(&key).or(new_keys.get(&key)) {
                seqs.push(*seq);
                continue;
            }
            let last = given
                .get(&msg.conv)
                .copied()
                .unwrap_or_else(|| self.index.get(&msg.conv).map_or(0, |v| v.len() as i64));
            let seq = last + 1;
            let location = self.record(
                MESSAGE,
                msg.conv,
                seq,
                msg.sender,
                msg.client_message_id,
                &encode(msg, seq),
            );
            given.insert(msg.conv, seq);
            new_keys.insert(key, seq);
            placed.push((msg.conv, location));
            seqs.push(seq);
        }
        for c in cursors {
            self.record(CURSOR, c.conv, c.seq, c.user, i64::from(c.device), &[]);
        }
        self.file.write_all(&self.buffer).expect("write");
        self.file.sync_data().expect("fdatasync");
        self.end += self.buffer.len() as u64;
        for (conv, location) in placed {
            self.index.entry(conv).or_default().push(location);
        }
        self.dedupe.extend(new_keys);
        for c in cursors {
            let seq = self.cursors.entry((c.user, c.device, c.conv)).or_insert(0);
            *seq = (*seq).max(c.seq);
        }
        seqs
    }

    fn history(&mut self, conv: &Msg, before: i64, limit: usize) -> usize {
        let Some(locations) = self.index.get(&conv.conv) else {
            return 0;
        };
        let end = if before <= 0 {
            locations.len()
        } else {
            (before as usize - 1).min(locations.len())
        };
        locations[end.saturating_sub(limit)..end]
            .iter()
            .rev()
            .map(|&location| decode(&self.read(location)))
            .filter(|m| m.seq > 0)
            .count()
    }

    fn after(&mut self, conv: &Msg, after: i64, limit: usize) -> usize {
        let Some(locations) = self.index.get(&conv.conv) else {
            return 0;
        };
        let start = (after.max(0) as usize).min(locations.len());
        locations[start..(start + limit).min(locations.len())]
            .iter()
            .map(|&location| decode(&self.read(location)))
            .filter(|m| m.seq > 0)
            .count()
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}
