//! The sequencer's outside, faked for the seeded simulations (this
//! module's and `crate::simulation`'s): a store that numbers and dedupes
//! messages as the embedded store does, and a recorder of the effects the
//! sequencer asks for, carried out later by the simulation.

use std::collections::{HashMap, VecDeque};

use super::*;

/// A send's answer slot: its number in the run.
pub(crate) type ReplyId = usize;

/// One stored message (its seq is its place in the conversation + 1).
pub(crate) struct StoredMessage {
    pub(crate) sender: i64,
    pub(crate) client_id: i64,
    pub(crate) fingerprint: u64,
    pub(crate) accepted: Accepted,
}

/// Stored messages by conversation, and the groups there are.
#[derive(Default)]
pub(crate) struct FakeStore {
    pub(crate) convs: HashMap<ConversationId, Vec<StoredMessage>>,
    pub(crate) groups: HashMap<i64, ourchat_storage::GroupRoster>,
}

impl FakeStore {
    pub(crate) fn messages(&self, conv: &ConversationId) -> &[StoredMessage] {
        self.convs.get(conv).map_or(&[][..], |m| &m[..])
    }

    /// What a load reads: the last seq and the newest `window` sends.
    pub(crate) fn head(&self, conv: ConversationId, window: usize) -> ConversationHead {
        let messages = self.messages(&conv);
        let recent = messages
            .iter()
            .enumerate()
            .rev()
            .take(window)
            .map(|(i, stored)| StoredSend {
                sender_id: stored.sender,
                client_message_id: stored.client_id,
                seq: i as i64 + 1,
                server_msg_id: stored.accepted.server_msg_id,
                sent_at_ms: stored.accepted.sent_at_ms,
                fingerprint: stored.fingerprint,
            })
            .collect();
        let group = match conv {
            ConversationId::Group(group_id) => self.groups.get(&group_id).cloned(),
            _ => None,
        };
        ConversationHead {
            last_seq: messages.len() as i64,
            recent,
            blocked: false,
            group,
        }
    }

    /// Takes a message as the embedded store does: a (sender, client id)
    /// already there is answered with its first send (refused if the
    /// payload differs), else the message gets the next seq. Also says
    /// whether the store held it already.
    pub(crate) fn append(&mut self, message: &ChatMessage) -> (SendResult, bool) {
        let Ok(conv) = message.conversation_id.parse() else {
            return (Err(pb::Error::new(ErrorCode::BadRequest, "bad id")), false);
        };
        let stored = self.convs.entry(conv).or_default();
        let fingerprint = fingerprint_of(message);
        let key = (message.sender_id, message.client_message_id);
        if let Some((i, first)) = stored
            .iter()
            .enumerate()
            .find(|(_, s)| (s.sender, s.client_id) == key)
        {
            let result = match first.fingerprint == fingerprint {
                true => Ok(Accepted {
                    seq: i as i64 + 1,
                    ..first.accepted
                }),
                false => Err(reused_id(message.client_message_id)),
            };
            return (result, true);
        }
        let accepted = Accepted {
            seq: stored.len() as i64 + 1,
            server_msg_id: message.server_msg_id,
            sent_at_ms: message.sent_at_ms,
        };
        stored.push(StoredMessage {
            sender: key.0,
            client_id: key.1,
            fingerprint,
            accepted,
        });
        (Ok(accepted), false)
    }
}

/// The effects a sequencer asked for, kept for the simulation to carry
/// out (the embedded store's mode: no Redis, no budget).
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) loads: Vec<ConversationId>,
    pub(crate) writes: VecDeque<Write>,
    pub(crate) answers: HashMap<ReplyId, Vec<SendResult>>,
    pub(crate) next_id: i64,
    /// The next write is refused, as a full queue would.
    pub(crate) refuse_next_write: bool,
}

impl Effects<ReplyId> for Recorder {
    fn load(&mut self, conv: ConversationId) {
        self.loads.push(conv);
    }

    fn answer(&mut self, reply: ReplyId, result: SendResult) {
        self.answers.entry(reply).or_default().push(result);
    }

    fn write(&mut self, write: Write) -> Result<(), pb::Error> {
        if std::mem::take(&mut self.refuse_next_write) {
            return Err(pb::Error::new(ErrorCode::Busy, "writer queue full"));
        }
        self.writes.push_back(write);
        Ok(())
    }

    fn allocate(&mut self, _: ConversationId) {
        unreachable!("the simulations run the embedded store's mode");
    }

    fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn now_ms(&mut self) -> i64 {
        1_000_000 + self.next_id
    }

    fn over_budget(&mut self) -> pb::Error {
        unreachable!("no budget in the embedded store's mode");
    }
}
