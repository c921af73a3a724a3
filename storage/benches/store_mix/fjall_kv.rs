//! An LSM tree (fjall): messages keyed by (conversation, seq), the dedupe
//! key (conversation, sender, client id) -> seq, cursors; one write batch
//! per store batch, synced to the journal.

use std::collections::HashMap;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::{decode, encode, Cursor, Engine, Msg};

struct FjallKv {
    db: Database,
    msgs: Keyspace,
    dedupe: Keyspace,
    cursors: Keyspace,
    last_seq: HashMap<u32, i64>,
}

pub fn open(dir: &Path) -> Box<dyn Engine> {
    let db = Database::builder(dir.join("fjall")).open().expect("open");
    let keyspace = |name| {
        db.keyspace(name, KeyspaceCreateOptions::default)
            .expect("keyspace")
    };
    Box::new(FjallKv {
        msgs: keyspace("msgs"),
        dedupe: keyspace("dedupe"),
        cursors: keyspace("cursors"),
        db,
        last_seq: HashMap::new(),
    })
}

fn msg_key(conv: u32, seq: i64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&conv.to_be_bytes());
    key[4..].copy_from_slice(&(seq as u64).to_be_bytes());
    key
}

fn dedupe_key(msg: &Msg) -> [u8; 20] {
    let mut key = [0; 20];
    key[..4].copy_from_slice(&msg.conv.to_be_bytes());
    key[4..12].copy_from_slice(&msg.sender.to_be_bytes());
    key[12..].copy_from_slice(&msg.client_message_id.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> i64 {
    let mut seq = [0; 8];
    seq.copy_from_slice(&key[4..12]);
    u64::from_be_bytes(seq) as i64
}

impl FjallKv {
    fn last(&mut self, conv: u32) -> i64 {
        if let Some(last) = self.last_seq.get(&conv) {
            return *last;
        }
        let last = self
            .msgs
            .prefix(conv.to_be_bytes())
            .next_back()
            .map_or(0, |guard| seq_of(&guard.key().expect("key")));
        self.last_seq.insert(conv, last);
        last
    }
}

impl Engine for FjallKv {
    fn write_batch(&mut self, msgs: &[Msg], cursors: &[Cursor]) -> Vec<i64> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut seqs = Vec::with_capacity(msgs.len());
        let mut given: HashMap<[u8; 20], i64> = HashMap::new();
        for msg in msgs {
            let dedupe = dedupe_key(msg);
            let known = given.get(&dedupe).copied().or_else(|| {
                self.dedupe.get(dedupe).expect("get").map(|v| {
                    let mut seq = [0; 8];
                    seq.copy_from_slice(&v);
                    i64::from_be_bytes(seq)
                })
            });
            if let Some(seq) = known {
                seqs.push(seq);
                continue;
            }
            let seq = self.last(msg.conv) + 1;
            self.last_seq.insert(msg.conv, seq);
            batch.insert(&self.msgs, msg_key(msg.conv, seq), encode(msg, seq));
            batch.insert(&self.dedupe, dedupe, seq.to_be_bytes());
            given.insert(dedupe, seq);
            seqs.push(seq);
        }
        for c in cursors {
            let mut key = [0; 16];
            key[..8].copy_from_slice(&c.user.to_be_bytes());
            key[8..12].copy_from_slice(&c.device.to_be_bytes());
            key[12..].copy_from_slice(&c.conv.to_be_bytes());
            batch.insert(&self.cursors, key, c.seq.to_be_bytes());
        }
        batch.commit().expect("commit");
        seqs
    }

    fn history(&mut self, conv: &Msg, before: i64, limit: usize) -> usize {
        let before = if before <= 0 { i64::MAX } else { before };
        self.msgs
            .range(msg_key(conv.conv, 0)..msg_key(conv.conv, before))
            .rev()
            .take(limit)
            .map(|guard| decode(&guard.value().expect("value")))
            .filter(|m| m.seq > 0)
            .count()
    }

    fn after(&mut self, conv: &Msg, after: i64, limit: usize) -> usize {
        self.msgs
            .range(msg_key(conv.conv, after + 1)..msg_key(conv.conv, i64::MAX))
            .take(limit)
            .map(|guard| decode(&guard.value().expect("value")))
            .filter(|m| m.seq > 0)
            .count()
    }
}
