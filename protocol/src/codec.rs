//! The client frame: a 4-byte big-endian length, then that many bytes of a
//! protobuf `Envelope`. "Need more bytes" is a normal outcome (`Ok(None)`),
//! not an error; a frame over the configured maximum is.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

use crate::pb::Envelope;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Largest frame body accepted by default: a chat message with a generous
/// text and metadata fits many times over, while a hostile length prefix
/// cannot make the server reserve more than this per connection.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The body is not a valid `Envelope`.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A zero-length frame carries no envelope body and is never valid.
    #[error("empty frame")]
    Empty,
}

/// Reads the body length from a frame header, refusing lengths over `max`.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(len)
}

/// Decodes one envelope body (the bytes after the header).
pub fn decode_body(body: &[u8]) -> Result<Envelope, FrameError> {
    Ok(Envelope::decode(body)?)
}

/// Appends one framed envelope to `dst`.
pub fn encode(envelope: &Envelope, dst: &mut BytesMut) {
    let len = envelope.encoded_len();
    dst.reserve(HEADER_LEN + len);
    put_frame(envelope, len, dst);
}

/// Encodes one framed envelope into a fresh buffer of exactly its size:
/// one allocation, and a `Bytes` made from it takes it over as it is.
pub fn encode_to_vec(envelope: &Envelope) -> Vec<u8> {
    let len = envelope.encoded_len();
    let mut buf = Vec::with_capacity(HEADER_LEN + len);
    put_frame(envelope, len, &mut buf);
    buf
}

/// The header and body of a frame whose body is `len` bytes, into room
/// the caller has made.
fn put_frame(envelope: &Envelope, len: usize, dst: &mut impl BufMut) {
    dst.put_u32(len as u32);
    // Cannot fail: the room for it was made.
    let _ = envelope.encode(dst);
}

/// Splits a byte stream into envelopes, for readers that read in chunks.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame }
    }

    /// Takes one envelope off the front of `src`, or `Ok(None)` when `src`
    /// does not hold a whole frame yet.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Envelope>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = [src[0], src[1], src[2], src[3]];
        let len = body_len(header, self.max_frame)?;
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len);
        decode_body(&body).map(Some)
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{self, envelope::Body};

    fn sample() -> Envelope {
        Envelope::new(
            7,
            Body::Send(pb::SendMessageRequest {
                sender_id: 0,
                receiver_id: 42,
                message_type: pb::MessageType::Text as i32,
                content: "hello".into(),
                client_message_id: 9,
                ..Default::default()
            }),
        )
    }

    #[test]
    fn a_frame_is_encoded_into_a_buffer_of_exactly_its_size() {
        let frame = encode_to_vec(&sample());
        assert_eq!(frame.len(), frame.capacity(), "no spare room to copy away");
        let mut again = BytesMut::new();
        encode(&sample(), &mut again);
        assert_eq!(frame, again.to_vec());
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let bytes = encode_to_vec(&sample());
        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.put_u8(*b);
            let got = decoder.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none(), "frame decoded early at byte {i}");
            } else {
                assert_eq!(got, Some(sample()));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn two_frames_in_one_read() {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf);
        encode(
            &Envelope::error(1, pb::ErrorCode::BadRequest, "x"),
            &mut buf,
        );
        let decoder = FrameDecoder::default();
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(sample()));
        let second = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(second.req_id, 1);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn oversized_and_empty_frames_are_refused() {
        let decoder = FrameDecoder::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 17][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        let mut empty = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decoder.decode(&mut empty), Err(FrameError::Empty));
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(FrameError::Decode(_))
        ));
    }
}
