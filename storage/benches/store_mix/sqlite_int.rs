//! SQLite redesigned for this path: integer conversation keys, tables
//! WITHOUT ROWID, the message as one protobuf blob, one secondary index
//! (the dedupe key), the conversation's last seq kept in memory.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{decode, encode, Cursor, Engine, Msg};

struct SqliteInt {
    conn: Connection,
    last_seq: HashMap<u32, i64>,
}

pub fn open(dir: &Path) -> Box<dyn Engine> {
    let conn = Connection::open(dir.join("int.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("sync");
    conn.pragma_update(None, "cache_size", -65_536)
        .expect("cache");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS msgs (conv INTEGER, seq INTEGER, body BLOB NOT NULL,
             sender INTEGER NOT NULL, cmid INTEGER NOT NULL, PRIMARY KEY (conv, seq)) WITHOUT ROWID;
         CREATE UNIQUE INDEX IF NOT EXISTS msgs_dedupe ON msgs (conv, sender, cmid);
         CREATE TABLE IF NOT EXISTS cursors (user INTEGER, device INTEGER, conv INTEGER,
             seq INTEGER NOT NULL, PRIMARY KEY (user, device, conv)) WITHOUT ROWID;",
    )
    .expect("schema");
    conn.set_prepared_statement_cache_capacity(16);
    Box::new(SqliteInt {
        conn,
        last_seq: HashMap::new(),
    })
}

impl Engine for SqliteInt {
    fn write_batch(&mut self, msgs: &[Msg], cursors: &[Cursor]) -> Vec<i64> {
        let tx = self.conn.transaction().expect("tx");
        let mut seqs = Vec::with_capacity(msgs.len());
        let mut given: HashMap<u32, i64> = HashMap::new();
        for msg in msgs {
            let known = tx
                .prepare_cached(
                    "SELECT seq FROM msgs WHERE conv = ?1 AND sender = ?2 AND cmid = ?3",
                )
                .expect("prepare")
                .query_row(params![msg.conv, msg.sender, msg.client_message_id], |r| {
                    r.get(0)
                })
                .optional()
                .expect("dedupe");
            if let Some(seq) = known {
                seqs.push(seq);
                continue;
            }
            let last = match given.get(&msg.conv).or(self.last_seq.get(&msg.conv)) {
                Some(last) => *last,
                None => tx
                    .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM msgs WHERE conv = ?1")
                    .expect("prepare")
                    .query_row([msg.conv], |r| r.get(0))
                    .expect("max"),
            };
            let seq = last + 1;
            tx.prepare_cached(
                "INSERT INTO msgs (conv, seq, body, sender, cmid) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .expect("prepare")
            .execute(params![
                msg.conv,
                seq,
                encode(msg, seq),
                msg.sender,
                msg.client_message_id
            ])
            .expect("insert");
            given.insert(msg.conv, seq);
            seqs.push(seq);
        }
        for c in cursors {
            tx.prepare_cached(
                "INSERT INTO cursors (user, device, conv, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET seq = MAX(seq, excluded.seq)",
            )
            .expect("prepare")
            .execute(params![c.user, c.device, c.conv, c.seq])
            .expect("cursor");
        }
        tx.commit().expect("commit");
        self.last_seq.extend(given);
        seqs
    }

    fn history(&mut self, conv: &Msg, before: i64, limit: usize) -> usize {
        let before = if before <= 0 { i64::MAX } else { before };
        self.read_page(
            "SELECT body FROM msgs WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
            conv.conv,
            before,
            limit,
        )
    }

    fn after(&mut self, conv: &Msg, after: i64, limit: usize) -> usize {
        self.read_page(
            "SELECT body FROM msgs WHERE conv = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            conv.conv,
            after,
            limit,
        )
    }
}

impl SqliteInt {
    /// Runs a page query (conversation, seq bound, limit); decoded rows.
    fn read_page(&mut self, sql: &str, conv: u32, seq: i64, limit: usize) -> usize {
        let mut statement = self.conn.prepare_cached(sql).expect("prepare");
        let rows = statement
            .query_map(params![conv, seq, limit as i64], |r| r.get::<_, Vec<u8>>(0))
            .expect("query");
        rows.map(|body| decode(&body.expect("row")))
            .filter(|m| m.seq > 0)
            .count()
    }
}
