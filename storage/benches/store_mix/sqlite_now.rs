//! Today's embedded store, through the node's own writer and reader.

use std::path::Path;

use ourchat_storage::sqlite::{Durability, SqliteBackend};
use ourchat_storage::{Backend, ReadStore, WriteOp, WriteOutcome, WriteStore};

use crate::{chat_message, Cursor, Engine, Msg};

struct SqliteNow {
    writer: Box<dyn WriteStore>,
    reader: Box<dyn ReadStore>,
    /// As on the node: the WAL is folded in every 500 ms off the writer.
    _checkpointer: ourchat_storage::sqlite::Checkpointer,
}

pub fn open(dir: &Path) -> Box<dyn Engine> {
    let backend = SqliteBackend::open(dir, Durability::Full).expect("open");
    Box::new(SqliteNow {
        writer: backend.writer().expect("writer"),
        reader: backend.reader().expect("reader"),
        _checkpointer: backend.start_checkpointer().expect("checkpointer"),
    })
}

impl Engine for SqliteNow {
    fn write_batch(&mut self, msgs: &[Msg], cursors: &[Cursor]) -> Vec<i64> {
        let mut ops: Vec<WriteOp> = msgs
            .iter()
            .map(|m| WriteOp::AppendMessage(Box::new(chat_message(m, 0))))
            .collect();
        let conversations: std::collections::HashMap<u32, &str> =
            msgs.iter().map(|m| (m.conv, m.conv_id.as_str())).collect();
        let conv_of = |conv: u32| conversations[&conv].parse().expect("a conversation id");
        ops.extend(cursors.iter().map(|c| WriteOp::AdvanceCursor {
            user_id: c.user,
            device_id: "phone".into(),
            conversation: conv_of(c.conv),
            seq: c.seq,
        }));
        let outcomes = self.writer.apply_batch(&ops).expect("batch");
        outcomes[..msgs.len()]
            .iter()
            .map(|o| match o {
                WriteOutcome::Appended { seq } => *seq,
                WriteOutcome::SentBefore(first) => first.seq,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn history(&mut self, conv: &Msg, before: i64, limit: usize) -> usize {
        self.reader
            .history(&conv.conv_id, before, limit)
            .expect("history")
            .len()
    }

    fn after(&mut self, conv: &Msg, after: i64, limit: usize) -> usize {
        self.reader
            .messages_after(&conv.conv_id, after, limit)
            .expect("after")
            .len()
    }
}
