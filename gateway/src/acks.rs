//! Delivery acks of one core's connections, coalesced before the store:
//! every push is answered with a DeliveryAck, and each used to be its own
//! op to the writer thread (a wake-up each, and at low rates a batch
//! each). Acks now wait here up to `ACK_DELAY`, keeping the highest seq per
//! device and conversation, and go to the writer together. A crash loses
//! at most that window of cursor moves: the device gets those messages
//! again on its next sync and drops them by seq.

use foldhash::HashMap;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use ourchat_protocol::ConversationId;
use ourchat_storage::WriteOp;

/// How long an ack may wait for others.
pub const ACK_DELAY: Duration = Duration::from_millis(5);

/// (user, device, conversation), as the session has them: the device
/// shared, the conversation a number. The store takes them as they are, so
/// an ack costs no text.
type Key = (i64, Arc<str>, ConversationId);

/// The acks waiting on one core.
#[derive(Default)]
pub struct AckCoalescer {
    pending: RefCell<HashMap<Key, i64>>,
    flush_scheduled: Cell<bool>,
}

impl AckCoalescer {
    /// Records an ack; `true` when no flush is scheduled yet (the caller
    /// schedules one `ACK_DELAY` from now).
    pub fn add(
        &self,
        user_id: i64,
        device_id: &Arc<str>,
        conversation: ConversationId,
        seq: i64,
    ) -> bool {
        let mut pending = self.pending.borrow_mut();
        let cursor = pending
            .entry((user_id, device_id.clone(), conversation))
            .or_insert(0);
        *cursor = (*cursor).max(seq);
        !self.flush_scheduled.replace(true)
    }

    /// Everything waiting, as cursor moves for the writer.
    pub fn take(&self) -> Vec<WriteOp> {
        self.flush_scheduled.set(false);
        self.pending
            .borrow_mut()
            .drain()
            .map(
                |((user_id, device_id, conversation), seq)| WriteOp::AdvanceCursor {
                    user_id,
                    device_id,
                    conversation,
                    seq,
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_coalesce_to_the_highest_seq_per_device_and_conversation() {
        let acks = AckCoalescer::default();
        let (phone, tablet): (Arc<str>, Arc<str>) = ("phone".into(), "tablet".into());
        let conv = ConversationId::Direct { low: 1, high: 2 };
        assert!(acks.add(1, &phone, conv, 3), "first: schedule");
        assert!(!acks.add(1, &phone, conv, 5));
        assert!(!acks.add(1, &phone, conv, 4));
        assert!(!acks.add(1, &tablet, conv, 2));
        let mut ops = acks.take();
        ops.sort_by_key(|op| format!("{op:?}"));
        assert_eq!(
            ops,
            vec![
                WriteOp::AdvanceCursor {
                    user_id: 1,
                    device_id: "phone".into(),
                    conversation: conv,
                    seq: 5,
                },
                WriteOp::AdvanceCursor {
                    user_id: 1,
                    device_id: "tablet".into(),
                    conversation: conv,
                    seq: 2,
                },
            ]
        );
        assert!(acks.take().is_empty());
        assert!(
            acks.add(1, &phone, conv, 6),
            "after a flush: schedule again"
        );
    }
}
