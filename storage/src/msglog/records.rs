//! The store's records inside a batch body, without I/O: how a message, a
//! group event, a cursor move, a read mark and a recall are written, and
//! read back. Each record is `kind u8, length u32` and then its payload, so
//! a reader can step over records it does not need to decode.

use ourchat_protocol::ConversationId;
use prost::Message;

use crate::ChatMessage;

const MESSAGE: u8 = 1;
const CURSOR: u8 = 2;
const READ: u8 = 3;
const RECALL: u8 = 4;
const GROUP: u8 = 5;

/// One decoded record.
#[derive(Debug, PartialEq)]
pub(super) enum Record<'a> {
    /// A message (its `seq` set from the record).
    Message(ChatMessage),
    /// A group's event message, the users who have read it (those it
    /// joins), and its change as the caller encoded it.
    Group {
        event: ChatMessage,
        readers: Vec<i64>,
        change: &'a [u8],
    },
    /// A device's delivery cursor.
    Cursor {
        user_id: i64,
        device_id: &'a str,
        conversation: ConversationId,
        seq: i64,
    },
    /// A user's read mark.
    Read {
        user_id: i64,
        conversation: ConversationId,
        seq: i64,
    },
    /// A message's content is gone.
    Recall {
        conversation: ConversationId,
        seq: i64,
    },
}

fn header(kind: u8, len: usize, out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// kind, length, seq i64, the message's protobuf (the seq goes in the
/// header so the message need not be copied to carry it).
pub(super) fn encode_message(seq: i64, message: &ChatMessage, out: &mut Vec<u8>) {
    header(MESSAGE, 8 + message.encoded_len(), out);
    out.extend_from_slice(&seq.to_le_bytes());
    message.encode_raw(out);
}

/// kind, length, seq i64, protobuf length u32 and protobuf, reader count
/// u32 and readers i64, then the change's bytes.
pub(super) fn encode_group(
    seq: i64,
    event: &ChatMessage,
    readers: &[i64],
    change: &[u8],
    out: &mut Vec<u8>,
) {
    let proto = event.encoded_len();
    header(
        GROUP,
        8 + 4 + proto + 4 + 8 * readers.len() + change.len(),
        out,
    );
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(proto as u32).to_le_bytes());
    event.encode_raw(out);
    out.extend_from_slice(&(readers.len() as u32).to_le_bytes());
    for reader in readers {
        out.extend_from_slice(&reader.to_le_bytes());
    }
    out.extend_from_slice(change);
}

/// kind, length, user i64, seq i64, conversation id length u16 and text,
/// device id text.
pub(super) fn encode_cursor(
    user_id: i64,
    device_id: &str,
    conversation: ConversationId,
    seq: i64,
    out: &mut Vec<u8>,
) {
    let conversation = conversation.text();
    header(
        CURSOR,
        8 + 8 + 2 + conversation.len() + device_id.len(),
        out,
    );
    out.extend_from_slice(&user_id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(conversation.len() as u16).to_le_bytes());
    out.extend_from_slice(conversation.as_bytes());
    out.extend_from_slice(device_id.as_bytes());
}

/// kind, length, user i64, seq i64, conversation id text.
pub(super) fn encode_read(user_id: i64, conversation: ConversationId, seq: i64, out: &mut Vec<u8>) {
    let conversation = conversation.text();
    header(READ, 16 + conversation.len(), out);
    out.extend_from_slice(&user_id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(conversation.as_bytes());
}

/// kind, length, seq i64, conversation id text.
pub(super) fn encode_recall(conversation: ConversationId, seq: i64, out: &mut Vec<u8>) {
    let conversation = conversation.text();
    header(RECALL, 8 + conversation.len(), out);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(conversation.as_bytes());
}

/// Every record of a batch body with the range of its bytes, in order;
/// the first that does not decode ends the walk with why.
pub(super) fn records(
    body: &[u8],
) -> impl Iterator<Item = Result<(std::ops::Range<usize>, Record<'_>), &'static str>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= body.len() {
            return None;
        }
        let start = at;
        let record = body
            .get(start + 1..start + 5)
            .map(|len| u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize)
            .ok_or("a record header runs past its batch")
            .and_then(|len| {
                body.get(start..start + 5 + len)
                    .ok_or("a record runs past its batch")
            })
            .and_then(decode);
        match record {
            Ok(record) => {
                let end = start + 5 + record.0;
                at = end;
                Some(Ok((start..end, record.1)))
            }
            Err(why) => {
                at = body.len();
                Some(Err(why))
            }
        }
    })
}

/// The message (or group event) a record's whole bytes hold.
pub(super) fn message_at(bytes: &[u8]) -> Option<ChatMessage> {
    match decode(bytes).ok()?.1 {
        Record::Message(message) | Record::Group { event: message, .. } => Some(message),
        _ => None,
    }
}

fn i64_at(bytes: &[u8], at: usize) -> Option<i64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(|b| u32::from_le_bytes(b) as usize)
}

fn conversation_in(bytes: &[u8]) -> Option<ConversationId> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// One record's whole bytes (kind, length, payload) back to the record and
/// its payload length.
fn decode(bytes: &[u8]) -> Result<(usize, Record<'_>), &'static str> {
    let (&kind, rest) = bytes.split_first().ok_or("an empty record")?;
    let payload = rest.get(4..).ok_or("a record header is cut")?;
    let seq_and_message = |payload: &[u8]| {
        let seq = i64_at(payload, 0)?;
        let mut message = ChatMessage::decode(payload.get(8..)?).ok()?;
        message.seq = seq;
        Some(message)
    };
    let record = match kind {
        MESSAGE => {
            Record::Message(seq_and_message(payload).ok_or("a message record does not decode")?)
        }
        GROUP => (|| {
            let seq = i64_at(payload, 0)?;
            let proto = u32_at(payload, 8)?;
            let mut event = ChatMessage::decode(payload.get(12..12 + proto)?).ok()?;
            event.seq = seq;
            let count = u32_at(payload, 12 + proto)?;
            let first = 16 + proto;
            let readers = (0..count)
                .map(|i| i64_at(payload, first + 8 * i))
                .collect::<Option<Vec<_>>>()?;
            let change = payload.get(first + 8 * count..)?;
            Some(Record::Group {
                event,
                readers,
                change,
            })
        })()
        .ok_or("a group event record does not decode")?,
        CURSOR => (|| {
            let conv_len = payload
                .get(16..18)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)?;
            Some(Record::Cursor {
                user_id: i64_at(payload, 0)?,
                seq: i64_at(payload, 8)?,
                conversation: conversation_in(payload.get(18..18 + conv_len)?)?,
                device_id: std::str::from_utf8(payload.get(18 + conv_len..)?).ok()?,
            })
        })()
        .ok_or("a cursor record does not decode")?,
        READ => (|| {
            Some(Record::Read {
                user_id: i64_at(payload, 0)?,
                seq: i64_at(payload, 8)?,
                conversation: conversation_in(payload.get(16..)?)?,
            })
        })()
        .ok_or("a read record does not decode")?,
        RECALL => (|| {
            Some(Record::Recall {
                seq: i64_at(payload, 0)?,
                conversation: conversation_in(payload.get(8..)?)?,
            })
        })()
        .ok_or("a recall record does not decode")?,
        _ => return Err("a record of an unknown kind"),
    };
    Ok((payload.len(), record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_as_written() {
        let conversation: ConversationId = "si_1_2".parse().unwrap();
        let group: ConversationId = "sg_9".parse().unwrap();
        let message = ChatMessage {
            conversation_id: "si_1_2".into(),
            sender_id: 1,
            content: "hi".into(),
            ..Default::default()
        };
        let event = ChatMessage {
            conversation_id: "sg_9".into(),
            group_id: 9,
            ..Default::default()
        };
        let mut body = Vec::new();
        encode_message(7, &message, &mut body);
        encode_group(3, &event, &[4, 5], b"change", &mut body);
        encode_cursor(2, "phone", conversation, 6, &mut body);
        encode_read(1, group, 3, &mut body);
        encode_recall(conversation, 7, &mut body);
        let read: Vec<Record<'_>> = records(&body).map(|r| r.unwrap().1).collect();
        let mut numbered = message.clone();
        numbered.seq = 7;
        let mut event = event;
        event.seq = 3;
        assert_eq!(
            read,
            vec![
                Record::Message(numbered.clone()),
                Record::Group {
                    event,
                    readers: vec![4, 5],
                    change: b"change",
                },
                Record::Cursor {
                    user_id: 2,
                    device_id: "phone",
                    conversation,
                    seq: 6,
                },
                Record::Read {
                    user_id: 1,
                    conversation: group,
                    seq: 3,
                },
                Record::Recall {
                    conversation,
                    seq: 7,
                },
            ]
        );
        let first = records(&body).next().unwrap().unwrap().0;
        assert_eq!(message_at(&body[first]), Some(numbered));
        // A cut record is named, not misread.
        let cut = &body[..body.len() - 3];
        assert!(records(cut).any(|r| r.is_err()));
    }
}
