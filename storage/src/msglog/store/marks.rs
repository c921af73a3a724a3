//! The high-water marks file: every conversation's last seq, whole and
//! checksummed, so that a log which lost acknowledged messages is caught
//! at open instead of handing their seqs out again.

use ourchat_protocol::ConversationId;

use crate::msglog::log::LogError;

/// "OCM1": the high-water marks file's first bytes.
const MARKS_MAGIC: &[u8; 4] = b"OCM1";

/// The marks file's bytes: each conversation's last seq, checksummed.
pub(super) fn encode_marks(last_seqs: impl Iterator<Item = (ConversationId, i64)>) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MARKS_MAGIC);
    let mut count = 0u32;
    bytes.extend_from_slice(&count.to_le_bytes());
    let mut id = String::new();
    for (conversation, last_seq) in last_seqs {
        id.clear();
        // Writing into a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{conversation}"));
        bytes.extend_from_slice(&(id.len() as u16).to_le_bytes());
        bytes.extend_from_slice(id.as_bytes());
        bytes.extend_from_slice(&last_seq.to_le_bytes());
        count += 1;
    }
    bytes[4..8].copy_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The marks file back to (conversation, last acknowledged seq) pairs.
pub(super) fn decode_marks(bytes: &[u8]) -> Result<Vec<(ConversationId, i64)>, LogError> {
    let bad = LogError::BadMarks;
    let (body, crc) = bytes.split_last_chunk::<4>().ok_or(bad("too short"))?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(bad("checksum"));
    }
    let rest = body
        .strip_prefix(MARKS_MAGIC)
        .ok_or(bad("not a marks file"))?;
    let (count, mut rest) = rest.split_first_chunk::<4>().ok_or(bad("too short"))?;
    let mut marks = Vec::with_capacity(u32::from_le_bytes(*count) as usize);
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<2>()
            .ok_or(bad("an entry is cut"))?;
        let len = u16::from_le_bytes(*len) as usize;
        let id = after.get(..len).ok_or(bad("an entry is cut"))?;
        let (seq, after) = after[len..]
            .split_first_chunk::<8>()
            .ok_or(bad("an entry is cut"))?;
        let conversation = std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.parse().ok())
            .ok_or(bad("an entry names no conversation"))?;
        marks.push((conversation, i64::from_le_bytes(*seq)));
        rest = after;
    }
    Ok(marks)
}
