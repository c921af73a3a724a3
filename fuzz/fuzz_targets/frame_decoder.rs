//! The frame decoder on arbitrary bytes: never a panic, never a frame over
//! the maximum, and whatever decodes re-encodes to a frame that decodes to
//! the same envelope.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ourchat_protocol::codec::{self, FrameDecoder};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let max = 1024;
    let decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(envelope)) = decoder.decode(&mut buf) {
        // A frame of only unknown fields decodes to an empty envelope,
        // whose encoding is the empty frame the decoder refuses (the first
        // crasher; kept in codec_properties.rs).
        if envelope.encoded_len() == 0 {
            continue;
        }
        let again = codec::encode_to_vec(&envelope);
        let mut reread = BytesMut::from(&again[..]);
        let decoded = FrameDecoder::new(usize::MAX >> 1).decode(&mut reread);
        assert_eq!(decoded.ok().flatten().as_ref(), Some(&envelope));
    }
    if data.len() >= codec::HEADER_LEN {
        let header = [data[0], data[1], data[2], data[3]];
        if let Ok(len) = codec::body_len(header, max) {
            assert!(len > 0 && len <= max);
        }
    }
});
