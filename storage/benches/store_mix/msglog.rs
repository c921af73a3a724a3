//! The store being built (`ourchat_storage::msglog::store`) on real
//! segment files: what the prototype promised, with segments, a torn-tail
//! proof and records that carry the node's messages and cursors.

use std::path::Path;

use ourchat_protocol::ConversationId;
use ourchat_storage::msglog::disk::FileDisk;
use ourchat_storage::msglog::store::{Append, Appended, MessageStore};

use crate::{chat_message, Cursor, Engine, Msg};

/// 64 MiB segments, as the node will use.
const SEGMENT: u64 = 64 << 20;

struct MsgLog {
    store: MessageStore<FileDisk>,
}

pub fn open(dir: &Path) -> Box<dyn Engine> {
    let disk = FileDisk::new(dir.join("log")).expect("disk");
    Box::new(MsgLog {
        store: MessageStore::open(disk, SEGMENT).expect("open"),
    })
}

fn conversation(msg: &Msg) -> ConversationId {
    msg.conv_id.parse().expect("conversation id")
}

impl Engine for MsgLog {
    fn write_batch(&mut self, msgs: &[Msg], cursors: &[Cursor]) -> Vec<i64> {
        let messages: Vec<_> = msgs.iter().map(|m| chat_message(m, 0)).collect();
        let conversations: std::collections::HashMap<u32, ConversationId> =
            msgs.iter().map(|m| (m.conv, conversation(m))).collect();
        let of = |conv: u32| conversations[&conv];
        let mut appends: Vec<Append<'_>> = messages.iter().map(Append::Message).collect();
        appends.extend(cursors.iter().map(|c| Append::Cursor {
            user_id: c.user,
            device_id: "phone",
            conversation: of(c.conv),
            seq: c.seq,
        }));
        let outcomes = self.store.append(&appends).expect("append").appended;
        outcomes[..msgs.len()]
            .iter()
            .map(|o| match o {
                Appended::Stored(seq) => *seq,
                Appended::SentBefore(first) => first.seq,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn history(&mut self, conv: &Msg, before: i64, limit: usize) -> usize {
        self.store
            .with(|index, disk| index.history(disk, conversation(conv), before, limit))
            .expect("history")
            .len()
    }

    fn after(&mut self, conv: &Msg, after: i64, limit: usize) -> usize {
        self.store
            .with(|index, disk| index.after(disk, conversation(conv), after, limit))
            .expect("after")
            .len()
    }
}
