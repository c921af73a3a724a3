//! The embedded store's writer: one batch of ops becomes at most one log
//! batch (messages, group events, cursors, read marks, recalls: one write,
//! one fsync) and at most one SQLite transaction (accounts, devices,
//! friends, and the group tables a group event changes). Hot batches —
//! messages and acks — never touch SQLite.
//!
//! Order: SQLite's ops run first inside an open transaction, then the log
//! batch is made durable, then the group changes (which need the seqs the
//! log gave) join the transaction, which commits with the log batch's
//! number. A failure before the log write leaves nothing written; after it
//! the messages are durable (a resend gets their seqs) and the writer stops
//! until a restart, whose replay brings the group tables up to the log.

use std::sync::Arc;

use rusqlite::{params, Connection};

use super::accounts::Accounts;
use super::memory::Blocks;
use super::{change, log_error};
use crate::msglog::disk::FileDisk;
use crate::msglog::store::{Append, Appended, MessageStore};
use crate::sqlite::{apply_group_change, apply_one};
use crate::{StoreError, WriteOp, WriteOutcome, WriteStore};

pub(crate) struct EmbeddedWriter {
    pub(crate) log: MessageStore<FileDisk>,
    pub(crate) conn: Connection,
    pub(crate) blocks: Arc<Blocks>,
    pub(crate) accounts: Arc<Accounts>,
    /// Why the writer stopped (SQLite failed after a durable log batch).
    pub(crate) stopped: Option<String>,
}

/// Where an op goes.
enum Route {
    /// The n-th append of the log batch.
    Log(usize),
    /// SQLite.
    Sql,
    /// Nowhere: its conversation id does not parse.
    Refused,
}

impl WriteStore for EmbeddedWriter {
    fn apply_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        if let Some(why) = &self.stopped {
            return Err(StoreError::Unavailable {
                message: format!("the store stopped ({why}); restart the node to recover"),
                retryable: false,
            });
        }
        // Group changes in the log's encoding, and who each adds.
        let encoded: Vec<Option<(Vec<u8>, Vec<i64>)>> = ops
            .iter()
            .map(|op| match op {
                WriteOp::GroupChange { change, .. } => {
                    Some((change::encode(change), change::joined(change)))
                }
                _ => None,
            })
            .collect();
        let mut appends: Vec<Append<'_>> = Vec::with_capacity(ops.len());
        let mut routes = Vec::with_capacity(ops.len());
        for (op, encoded) in ops.iter().zip(&encoded) {
            let append = match (op, encoded) {
                (WriteOp::AppendMessage(message), _) => Some(Append::Message(message)),
                (WriteOp::GroupChange { event, .. }, Some((change, readers))) => {
                    Some(Append::Group {
                        event,
                        readers,
                        change,
                    })
                }
                (
                    WriteOp::AdvanceCursor {
                        user_id,
                        device_id,
                        conversation,
                        seq,
                    },
                    _,
                ) => Some(Append::Cursor {
                    user_id: *user_id,
                    device_id,
                    conversation: *conversation,
                    seq: *seq,
                }),
                (
                    WriteOp::MarkRead {
                        user_id,
                        conversation_id,
                        seq,
                    },
                    _,
                ) => conversation_id
                    .parse()
                    .ok()
                    .map(|conversation| Append::Read {
                        user_id: *user_id,
                        conversation,
                        seq: *seq,
                    }),
                (
                    WriteOp::Recall {
                        conversation_id,
                        seq,
                        sender_id,
                        not_before_ms,
                    },
                    _,
                ) => conversation_id
                    .parse()
                    .ok()
                    .map(|conversation| Append::Recall {
                        conversation,
                        seq: *seq,
                        sender_id: *sender_id,
                        not_before_ms: *not_before_ms,
                    }),
                _ => {
                    routes.push(Route::Sql);
                    continue;
                }
            };
            routes.push(match append {
                Some(append) => {
                    appends.push(append);
                    Route::Log(appends.len() - 1)
                }
                None => Route::Refused,
            });
        }
        let relational =
            routes.iter().any(|r| matches!(r, Route::Sql)) || encoded.iter().any(Option::is_some);
        let mut tx = match relational {
            true => Some(self.conn.transaction()?),
            false => None,
        };
        let mut outcomes = Vec::with_capacity(ops.len());
        for (op, route) in ops.iter().zip(&routes) {
            outcomes.push(match (route, &tx) {
                (Route::Sql, Some(tx)) => apply_one(tx, op)?,
                _ => WriteOutcome::Refused,
            });
        }
        let account_changes = match &tx {
            Some(tx) => Accounts::changes(tx, ops, &outcomes)?,
            None => Default::default(),
        };
        let mut appended_all = Vec::with_capacity(appends.len());
        let mut batch_no = None;
        for chunk in log_batches(&appends) {
            match self.log.append(chunk) {
                Ok(batch) => {
                    appended_all.extend(batch.appended);
                    batch_no = batch.batch_no.or(batch_no);
                }
                Err(err) => {
                    if batch_no.is_some() {
                        // An earlier part is durable and its group changes
                        // are not in SQLite: only a restart catches up.
                        self.stopped = Some(err.to_string());
                    }
                    return Err(log_error(err));
                }
            }
        }
        // The log batch is durable: from here a failure stops the writer.
        let finished = (|| -> Result<(), StoreError> {
            let mut applied = false;
            for (index, (op, route)) in ops.iter().zip(&routes).enumerate() {
                let Route::Log(at) = *route else { continue };
                let appended = appended_all[at];
                outcomes[index] = outcome(op, appended);
                if let (WriteOp::GroupChange { event, change }, Appended::Stored(seq), Some(tx)) =
                    (op, appended, &tx)
                {
                    apply_group_change(tx, event, seq, change)?;
                    applied = true;
                }
            }
            if let (Some(batch_no), true, Some(tx)) = (batch_no, applied, &tx) {
                tx.execute(
                    "UPDATE message_log SET applied_batch = ?1",
                    params![batch_no as i64],
                )?;
            }
            if let Some(tx) = tx.take() {
                tx.commit()?;
            }
            Ok(())
        })();
        if let Err(err) = finished {
            self.stopped = Some(err.to_string());
            return Err(err);
        }
        self.blocks.apply(ops, &outcomes);
        self.accounts.apply(account_changes);
        Ok(outcomes)
    }
}

/// A log batch's body stays about this small: a segment is 64 MiB, and one
/// batch of the writer may hold thousands of 64 KiB messages.
const LOG_BATCH_BYTES: usize = 8 << 20;

/// Appends no bigger than this never need splitting (a frame is at most
/// 64 KiB).
const SMALL_APPEND_BYTES: usize = 64 << 10;

/// `appends` cut into log batches of at most about `LOG_BATCH_BYTES`.
fn log_batches<'s, 'a>(appends: &'s [Append<'a>]) -> impl Iterator<Item = &'s [Append<'a>]> {
    let whole = appends.len() * (SMALL_APPEND_BYTES + 64) <= LOG_BATCH_BYTES;
    let mut rest = appends;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len();
        if !whole {
            let mut bytes = 0;
            end = 0;
            while end < rest.len() && (end == 0 || bytes + size(&rest[end]) <= LOG_BATCH_BYTES) {
                bytes += size(&rest[end]);
                end += 1;
            }
        }
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

/// About how many bytes an append takes in a log batch.
fn size(append: &Append<'_>) -> usize {
    use prost::Message;
    match append {
        Append::Message(message) => message.encoded_len() + 32,
        Append::Group {
            event,
            readers,
            change,
        } => event.encoded_len() + 8 * readers.len() + change.len() + 48,
        _ => 64,
    }
}

/// A log append's outcome as the op's.
fn outcome(op: &WriteOp, appended: Appended) -> WriteOutcome {
    let given_seq = op.message().is_some_and(|message| message.seq > 0);
    match appended {
        Appended::Stored(_) if given_seq => WriteOutcome::Done,
        Appended::Stored(seq) => WriteOutcome::Appended { seq },
        Appended::SentBefore(_) | Appended::SeqTaken if given_seq => WriteOutcome::Duplicate,
        Appended::SentBefore(first) => WriteOutcome::SentBefore(first),
        Appended::SeqTaken => WriteOutcome::Duplicate,
        Appended::Done => WriteOutcome::Done,
        Appended::Refused => WriteOutcome::Refused,
    }
}
