//! What the embedded store answers from memory alone, for a reactor that
//! must not wait on a reader thread: the head of a 1:1 conversation that
//! holds no message yet (every first send between two users), who blocked
//! whom, whether an account exists and a device's token epoch (`accounts`:
//! every token login and every send's recipient check). Blocks are few
//! rows, kept here so that no conversation head reads SQLite for them; the
//! writer applies each committed block and unblock.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock, TryLockError};

use ourchat_protocol::ConversationId;
use rusqlite::Connection;

use super::accounts::Accounts;
use crate::msglog::store::SharedIndex;
use crate::{ConversationHead, MemoryReads, StoreError, WriteOp, WriteOutcome};

/// Every (blocker, blocked) pair.
#[derive(Default)]
pub(crate) struct Blocks {
    pairs: RwLock<HashSet<(i64, i64)>>,
}

impl Blocks {
    pub(crate) fn load(conn: &Connection) -> Result<Blocks, StoreError> {
        let pairs = conn
            .prepare("SELECT user_id, blocked_id FROM blocks")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<HashSet<_>, _>>()?;
        Ok(Blocks {
            pairs: RwLock::new(pairs),
        })
    }

    /// One of the two blocked the other.
    pub(crate) fn between(&self, a: i64, b: i64) -> bool {
        let pairs = self.pairs.read().unwrap_or_else(PoisonError::into_inner);
        pairs.contains(&(a, b)) || pairs.contains(&(b, a))
    }

    /// Takes in the blocks and unblocks of a committed batch.
    pub(crate) fn apply(&self, ops: &[WriteOp], outcomes: &[WriteOutcome]) {
        let mut changes = ops
            .iter()
            .zip(outcomes)
            .filter_map(|(op, outcome)| match (op, outcome) {
                (
                    WriteOp::Block {
                        user_id,
                        blocked_id,
                        block,
                        ..
                    },
                    WriteOutcome::Done,
                ) => Some(((*user_id, *blocked_id), *block)),
                _ => None,
            })
            .peekable();
        if changes.peek().is_none() {
            return;
        }
        let mut pairs = self.pairs.write().unwrap_or_else(PoisonError::into_inner);
        for (pair, block) in changes {
            if block {
                pairs.insert(pair);
            } else {
                pairs.remove(&pair);
            }
        }
    }
}

/// The embedded store's [`MemoryReads`].
pub(crate) struct EmbeddedMemory {
    pub(crate) index: SharedIndex,
    pub(crate) blocks: Arc<Blocks>,
    pub(crate) accounts: Arc<Accounts>,
}

impl MemoryReads for EmbeddedMemory {
    fn account_known(&self, user_id: i64) -> bool {
        self.accounts.knows(user_id)
    }

    fn token_epoch(&self, user_id: i64, device_id: &str) -> Option<i64> {
        self.accounts.token_epoch(user_id, device_id)
    }

    fn empty_direct_head(&self, conversation: ConversationId) -> Option<ConversationHead> {
        let ConversationId::Direct { low, high } = conversation else {
            return None;
        };
        // Never waited for on a reactor: a reader thread holds the index
        // while it reads a history page from disk, and a writer queued
        // behind it holds off new readers; then a reader thread answers.
        let index = match self.index.try_read() {
            Ok(index) => index,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        if index.last_seq(conversation) != 0 {
            return None;
        }
        drop(index);
        Some(ConversationHead {
            last_seq: 0,
            recent: Vec::new(),
            blocked: self.blocks.between(low, high),
            group: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(user_id: i64, blocked_id: i64, block: bool) -> WriteOp {
        WriteOp::Block {
            user_id,
            blocked_id,
            block,
            at_ms: 0,
        }
    }

    #[test]
    fn a_busy_index_is_left_to_a_reader_thread() {
        let memory = EmbeddedMemory {
            index: SharedIndex::default(),
            blocks: Arc::default(),
            accounts: Arc::default(),
        };
        let conversation = ConversationId::Direct { low: 1, high: 2 };
        assert!(memory.empty_direct_head(conversation).is_some());
        let held = memory.index.write().unwrap();
        assert!(memory.empty_direct_head(conversation).is_none());
        drop(held);
        assert!(memory.empty_direct_head(conversation).is_some());
    }

    #[test]
    fn only_committed_blocks_and_unblocks_are_taken_in() {
        let blocks = Blocks::default();
        blocks.apply(
            &[
                block(1, 2, true),
                block(3, 4, true),
                WriteOp::Unfriend { a: 5, b: 6 },
            ],
            &[
                WriteOutcome::Done,
                WriteOutcome::Refused,
                WriteOutcome::Done,
            ],
        );
        assert!(blocks.between(1, 2) && blocks.between(2, 1));
        assert!(!blocks.between(3, 4));
        assert!(!blocks.between(5, 6));
        blocks.apply(&[block(2, 1, true)], &[WriteOutcome::Done]);
        blocks.apply(&[block(1, 2, false)], &[WriteOutcome::Done]);
        assert!(blocks.between(1, 2), "2 still blocks 1");
        blocks.apply(&[block(2, 1, false)], &[WriteOutcome::Done]);
        assert!(!blocks.between(1, 2));
    }
}
