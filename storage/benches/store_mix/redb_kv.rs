//! A copy-on-write B-tree (redb): the same tables as the LSM candidate,
//! one write transaction per store batch with immediate durability.

use std::collections::HashMap;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{decode, encode, Cursor, Engine, Msg};

const MSGS: TableDefinition<'_, (u32, u64), &[u8]> = TableDefinition::new("msgs");
const DEDUPE: TableDefinition<'_, (u32, i64, i64), u64> = TableDefinition::new("dedupe");
const CURSORS: TableDefinition<'_, (i64, u32, u32), i64> = TableDefinition::new("cursors");

struct RedbKv {
    db: Database,
    last_seq: HashMap<u32, u64>,
}

pub fn open(dir: &Path) -> Box<dyn Engine> {
    let db = Database::create(dir.join("redb")).expect("open");
    let tx = db.begin_write().expect("tx");
    tx.open_table(MSGS).expect("msgs");
    tx.open_table(DEDUPE).expect("dedupe");
    tx.open_table(CURSORS).expect("cursors");
    tx.commit().expect("commit");
    Box::new(RedbKv {
        db,
        last_seq: HashMap::new(),
    })
}

impl Engine for RedbKv {
    fn write_batch(&mut self, msgs: &[Msg], cursors: &[Cursor]) -> Vec<i64> {
        let mut tx = self.db.begin_write().expect("tx");
        tx.set_durability(Durability::Immediate)
            .expect("durability");
        let mut seqs = Vec::with_capacity(msgs.len());
        {
            let mut messages = tx.open_table(MSGS).expect("msgs");
            let mut dedupe = tx.open_table(DEDUPE).expect("dedupe");
            let mut cursor_table = tx.open_table(CURSORS).expect("cursors");
            for msg in msgs {
                let key = (msg.conv, msg.sender, msg.client_message_id);
                if let Some(seq) = dedupe.get(key).expect("get") {
                    seqs.push(seq.value() as i64);
                    continue;
                }
                let last = match self.last_seq.get(&msg.conv) {
                    Some(last) => *last,
                    None => messages
                        .range((msg.conv, 0)..(msg.conv, u64::MAX))
                        .expect("range")
                        .next_back()
                        .map_or(0, |entry| entry.expect("entry").0.value().1),
                };
                let seq = last + 1;
                messages
                    .insert((msg.conv, seq), encode(msg, seq as i64).as_slice())
                    .expect("insert");
                dedupe.insert(key, seq).expect("insert");
                self.last_seq.insert(msg.conv, seq);
                seqs.push(seq as i64);
            }
            for c in cursors {
                cursor_table
                    .insert((c.user, c.device, c.conv), c.seq)
                    .expect("cursor");
            }
        }
        tx.commit().expect("commit");
        seqs
    }

    fn history(&mut self, conv: &Msg, before: i64, limit: usize) -> usize {
        let before = if before <= 0 { u64::MAX } else { before as u64 };
        let tx = self.db.begin_read().expect("read");
        let messages = tx.open_table(MSGS).expect("msgs");
        messages
            .range((conv.conv, 0)..(conv.conv, before))
            .expect("range")
            .rev()
            .take(limit)
            .map(|entry| decode(entry.expect("entry").1.value()))
            .filter(|m| m.seq > 0)
            .count()
    }

    fn after(&mut self, conv: &Msg, after: i64, limit: usize) -> usize {
        let tx = self.db.begin_read().expect("read");
        let messages = tx.open_table(MSGS).expect("msgs");
        messages
            .range((conv.conv, after as u64 + 1)..(conv.conv, u64::MAX))
            .expect("range")
            .take(limit)
            .map(|entry| decode(entry.expect("entry").1.value()))
            .filter(|m| m.seq > 0)
            .count()
    }
}
