//! One batch's messages as the writer numbers them: each gets its
//! conversation's next seq (or keeps the one it was given, if free) unless
//! its sender's client id was seen before, in the index or earlier in the
//! same batch, and is encoded into the batch body to be indexed once the
//! batch is durable.

use ourchat_protocol::ConversationId;

use super::Appended;
use crate::msglog::disk::Disk;
use crate::msglog::index::{Index, Map};
use crate::msglog::log::LogError;
use crate::msglog::records;
use crate::sharded::Set;
use crate::{fingerprint_of, ChatMessage, SentBefore};

/// A message of the batch being written, indexed once it is durable.
pub(super) struct Pending<'a> {
    pub(super) message: &'a ChatMessage,
    pub(super) conversation: ConversationId,
    pub(super) seq: i64,
    pub(super) readers: &'a [i64],
    /// A group event (its change is handed back at a start).
    pub(super) group: bool,
    /// Its record's bytes in the batch body.
    pub(super) range: std::ops::Range<usize>,
}

/// The messages of the batch being written, and how to find one of them:
/// a resend, or a seq given twice, meets an earlier message of its batch
/// as it would one already indexed. Looking back through the batch for
/// each message instead was quadratic in the batch: 10% of a node's CPU
/// at 30,000/s, where a slow fsync leaves batches of thousands
/// (BENCHMARKS.md, "A batch's messages found by key").
pub(super) struct Batched<'a, 'k> {
    pub(super) pending: Vec<Pending<'a>>,
    keys: &'k mut BatchKeys,
}

/// [`Batched`]'s maps, kept by the store from batch to batch so that a
/// batch allocates none once they have grown (to the largest batch's
/// messages at most, which the writer bounds).
#[derive(Default)]
pub(super) struct BatchKeys {
    /// Each conversation's newest seq in the batch.
    newest: Map<ConversationId, i64>,
    /// Which pending a (conversation, sender, client id) is.
    sent: Map<(ConversationId, i64, i64), usize>,
    /// Every (conversation, seq) in the batch.
    seqs: Set<(ConversationId, i64)>,
}

impl<'a, 'k> Batched<'a, 'k> {
    pub(super) fn new(keys: &'k mut BatchKeys) -> Self {
        keys.newest.clear();
        keys.sent.clear();
        keys.seqs.clear();
        Batched {
            pending: Vec::new(),
            keys,
        }
    }

    /// The earlier message of the batch `sender` sent as `client_id`.
    fn sent_before(&self, key: (ConversationId, i64, i64)) -> Option<&Pending<'a>> {
        self.keys.sent.get(&key).map(|&at| &self.pending[at])
    }

    fn holds(&self, conversation: ConversationId, seq: i64) -> bool {
        self.keys.seqs.contains(&(conversation, seq))
    }

    fn newest(&self, conversation: ConversationId) -> i64 {
        self.keys.newest.get(&conversation).copied().unwrap_or(0)
    }

    fn push(&mut self, pending: Pending<'a>) {
        let (conversation, seq) = (pending.conversation, pending.seq);
        let key = (
            conversation,
            pending.message.sender_id,
            pending.message.client_message_id,
        );
        self.keys.sent.insert(key, self.pending.len());
        self.keys.seqs.insert((conversation, seq));
        let newest = self.keys.newest.entry(conversation).or_insert(seq);
        *newest = (*newest).max(seq);
        self.pending.push(pending);
    }
}

/// Numbers (or checks the given seq of) one message of the batch and
/// encodes it, or says why it is not written.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare_message<'a, D: Disk>(
    index: &Index,
    disk: &D,
    body: &mut Vec<u8>,
    message: &'a ChatMessage,
    readers: &'a [i64],
    change: Option<&[u8]>,
    stored: &mut Batched<'a, '_>,
) -> Result<Appended, LogError> {
    let Ok(conversation) = message.conversation_id.parse::<ConversationId>() else {
        return Ok(Appended::Refused);
    };
    let (sender, client_id) = (message.sender_id, message.client_message_id);
    let resent = |seq: i64, first: &ChatMessage| {
        if message.seq > 0 {
            Appended::SeqTaken
        } else {
            Appended::SentBefore(sent_before(seq, first, message))
        }
    };
    let (sent, mut newest) = index.sent_and_last_seq(conversation, sender, client_id);
    if let Some(seq) = sent {
        let first = index
            .message(disk, conversation, seq)?
            .ok_or_else(|| LogError::Damaged {
                segment: 0,
                offset: 0,
                why: format!("{conversation} has no seq {seq} in its index"),
            })?;
        return Ok(resent(seq, &first));
    }
    if let Some(earlier) = stored.sent_before((conversation, sender, client_id)) {
        return Ok(resent(earlier.seq, earlier.message));
    }
    newest = newest.max(stored.newest(conversation));
    let seq = match message.seq {
        given
            if given > 0
                && (index.holds(conversation, given) || stored.holds(conversation, given)) =>
        {
            return Ok(Appended::SeqTaken)
        }
        given if given > 0 => given,
        _ => newest + 1,
    };
    let start = body.len();
    match change {
        Some(change) => records::encode_group(seq, message, readers, change, body),
        None => records::encode_message(seq, message, body),
    }
    stored.push(Pending {
        message,
        conversation,
        seq,
        readers,
        group: change.is_some(),
        range: start..body.len(),
    });
    Ok(Appended::Stored(seq))
}

/// What a resend of `first` (stored under `seq`) is answered.
fn sent_before(seq: i64, first: &ChatMessage, resent: &ChatMessage) -> SentBefore {
    SentBefore {
        seq,
        server_msg_id: first.server_msg_id,
        sent_at_ms: first.sent_at_ms,
        same_content: fingerprint_of(first) == fingerprint_of(resent),
    }
}
