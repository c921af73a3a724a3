//! Properties of the frame codec: any envelope survives encode → decode;
//! any stream of frames decodes to the same envelopes however the bytes
//! are split into reads; arbitrary bytes never panic the decoder, and it
//! never accepts a frame over its maximum.

use bytes::BytesMut;
use ourchat_protocol::codec::{self, FrameDecoder, FrameError};
use ourchat_protocol::pb::{self, envelope::Body, Envelope};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect())
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            any::<i64>(),
            any::<i64>(),
            0..8i32,
            text(),
            any::<i64>(),
            any::<i64>()
        )
            .prop_map(
                |(sender_id, receiver_id, message_type, content, client_message_id, group_id)| {
                    Body::Send(pb::SendMessageRequest {
                        sender_id,
                        receiver_id,
                        message_type,
                        content,
                        client_message_id,
                        group_id,
                        ..Default::default()
                    })
                }
            ),
        (text(), text(), text()).prop_map(|(username, password, token)| Body::Login(
            pb::LoginRequest {
                username,
                password,
                token,
                ..Default::default()
            }
        )),
        (text(), any::<i64>()).prop_map(|(conversation_id, seq)| Body::DeliveryAck(
            pb::DeliveryAck {
                conversation_id,
                seq
            }
        )),
        (text(), any::<i64>(), any::<i64>(), any::<u32>()).prop_map(
            |(conversation_id, peer_id, before_seq, limit)| Body::History(pb::HistoryRequest {
                conversation_id,
                peer_id,
                before_seq,
                limit,
            })
        ),
        (0..20i32, text()).prop_map(|(code, message)| Body::Error(pb::Error {
            code,
            message,
            retryable: code % 2 == 0,
        })),
        Just(Body::Heartbeat(pb::Heartbeat::default())),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (any::<u32>(), body()).prop_map(|(req_id, body)| Envelope::new(req_id, body))
}

proptest! {
    #[test]
    fn an_envelope_round_trips(envelope in envelope()) {
        let bytes = codec::encode_to_vec(&envelope);
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = FrameDecoder::new(1 << 20).decode(&mut buf);
        prop_assert_eq!(decoded, Ok(Some(envelope)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn any_split_of_a_stream_decodes_the_same_frames(
        envelopes in proptest::collection::vec(envelope(), 1..20),
        cuts in proptest::collection::vec(1usize..64, 1..50),
    ) {
        let mut stream = Vec::new();
        for envelope in &envelopes {
            stream.extend(codec::encode_to_vec(envelope));
        }
        let decoder = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut rest = &stream[..];
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let take = (*cut.next().unwrap_or(&1)).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            while let Some(envelope) = decoder.decode(&mut buf).expect("valid stream") {
                decoded.push(envelope);
            }
        }
        prop_assert_eq!(decoded, envelopes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_exceed_the_maximum(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        max in 1usize..256,
    ) {
        let decoder = FrameDecoder::new(max);
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => prop_assert!(before - buf.len() <= codec::HEADER_LEN + max),
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max: m }) => {
                    prop_assert!(len > m);
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// The frame_decoder fuzzer's first crasher: a frame whose body is only
/// unknown fields decodes to an envelope with no body (the connection
/// refuses it: "frame has no body"), and that envelope encodes to the
/// empty frame, which the decoder refuses. Neither side panics.
#[test]
fn a_frame_of_unknown_fields_is_a_bodyless_envelope() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 4, b'H', b'H', b'H', b'H'][..]);
    let decoded = FrameDecoder::new(1024).decode(&mut buf);
    assert_eq!(
        decoded,
        Ok(Some(Envelope {
            req_id: 0,
            body: None
        }))
    );
    let again = codec::encode_to_vec(&Envelope {
        req_id: 0,
        body: None,
    });
    let mut reread = BytesMut::from(&again[..]);
    assert_eq!(
        FrameDecoder::new(1024).decode(&mut reread),
        Err(FrameError::Empty)
    );
}
