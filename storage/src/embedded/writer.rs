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

use rusqlite::{params, Connection};

use super::{change, log_error};
use crate::msglog::disk::FileDisk;
use crate::msglog::store::{Append, Appended, MessageStore};
use crate::sqlite::{apply_group_change, apply_one};
use crate::{StoreError, WriteOp, WriteOutcome, WriteStore};

pub(crate) struct EmbeddedWriter {
    pub(crate) log: MessageStore<FileDisk>,
    pub(crate) conn: Connection,
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
                        conversation_id,
                        seq,
                    },
                    _,
                ) => conversation_id
                    .parse()
                    .ok()
                    .map(|conversation| Append::Cursor {
                        user_id: *user_id,
                        device_id,
                        conversation,
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
        let batch = self.log.append(&appends).map_err(log_error)?;
        // The log batch is durable: from here a failure stops the writer.
        let finished = (|| -> Result<(), StoreError> {
            let mut applied = false;
            for (index, (op, route)) in ops.iter().zip(&routes).enumerate() {
                let Route::Log(at) = *route else { continue };
                let appended = batch.appended[at];
                outcomes[index] = outcome(op, appended);
                if let (WriteOp::GroupChange { event, change }, Appended::Stored(seq), Some(tx)) =
                    (op, appended, &tx)
                {
                    apply_group_change(tx, event, seq, change)?;
                    applied = true;
                }
            }
            if let (Some(batch_no), true, Some(tx)) = (batch.batch_no, applied, &tx) {
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
        Ok(outcomes)
    }
}

/// A log append's outcome as the op's.
fn outcome(op: &WriteOp, appended: Appended) -> WriteOutcome {
    let given_seq = match op {
        WriteOp::AppendMessage(message) => message.seq > 0,
        WriteOp::GroupChange { event, .. } => event.seq > 0,
        _ => false,
    };
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
