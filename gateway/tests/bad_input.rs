//! Hostile and broken input: each case gets a clear error or a clean close,
//! and the server keeps serving everyone else.

use std::path::Path;
use std::time::Duration;

use ourchat_client::{Client, ErrorCode, Push};
use ourchat_gateway::auth::Claims;
use ourchat_protocol::codec;
use ourchat_protocol::pb;
use ourchat_protocol::{Body, Envelope};
use ourchat_testkit::{raw_session, user_on, ServerOptions, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "test-secret-0123456789";
const WAIT: Duration = Duration::from_secs(5);

fn server() -> ServerProcess {
    ServerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_ourchat")),
        ServerOptions {
            cores: 2,
            set: vec![
                ("server.max_frame_bytes".into(), "4096".into()),
                ("server.max_content_bytes".into(), "1024".into()),
                // Long enough for the healthy pair's register + login (two
                // argon2 hashes) on a loaded two-core machine: at 500 ms a
                // make test run once closed one mid-register.
                ("server.login_timeout_ms".into(), "2000".into()),
                ("server.heartbeat_secs".into(), "1".into()),
                ("server.idle_timeout_secs".into(), "2".into()),
            ],
            env: vec![("OURCHAT_AUTH__JWT_SECRET".into(), SECRET.into())],
            ..Default::default()
        },
    )
}

/// Reads frames until the server closes; returns them.
async fn frames_until_close(stream: &mut TcpStream) -> Vec<Envelope> {
    ourchat_testkit::frames_until_close(stream, WAIT).await
}

fn error_code(envelope: &Envelope) -> Option<ErrorCode> {
    match &envelope.body {
        Some(Body::Error(e)) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

/// A healthy pair that must keep working through every abuse.
async fn assert_still_serving(addr: std::net::SocketAddr, tag: &str) {
    let (a, _) = user_on(addr, &format!("ok_a_{tag}"), "d").await;
    let (b, sb) = user_on(addr, &format!("ok_b_{tag}"), "d").await;
    a.send_text(sb.user_id, "still fine").await.unwrap();
    assert_eq!(b.next_message(WAIT).await.unwrap().content, "still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_and_a_close() {
    let server = server();
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "garbage",
            b"\x00\x00\x00\x08\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
            ErrorCode::Protocol,
        ),
        (
            "oversized",
            1_000_000u32.to_be_bytes().to_vec(),
            ErrorCode::FrameTooLarge,
        ),
        (
            "empty frame",
            0u32.to_be_bytes().to_vec(),
            ErrorCode::Protocol,
        ),
        (
            "frame before login",
            codec::encode_to_vec(&Envelope::new(1, Body::Heartbeat(pb::Heartbeat {}))),
            ErrorCode::Unauthenticated,
        ),
        (
            "no body",
            codec::encode_to_vec(&Envelope {
                req_id: 5,
                body: None,
            }),
            ErrorCode::Protocol,
        ),
    ];
    for (name, bytes, expected) in cases {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let frames = frames_until_close(&mut stream).await;
        assert_eq!(frames.len(), 1, "{name}: {frames:?}");
        assert_eq!(error_code(&frames[0]), Some(expected), "{name}");
    }
    assert_still_serving(server.addr, "frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_that_keeps_sending_is_cut_off_after_its_reason() {
    // A closing connection reads and drops what its peer still sends, so
    // the peer gets to read the reason (`limits.rs`,
    // `a_flood_close_reaches_a_client_that_reads_later`); a peer that
    // never stops is cut off all the same.
    let server = server();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
    let (mut reading, mut writing) = stream.into_split();
    let sender = tokio::spawn(async move {
        let junk = [0x5au8; 4096];
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if writing.write_all(&junk).await.is_err() {
                return Some(started.elapsed());
            }
        }
        None
    });
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(WAIT, reading.read_to_end(&mut bytes)).await;
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let decoder = codec::FrameDecoder::new(1 << 20);
    let first = decoder.decode(&mut buf).unwrap().expect("the reason");
    assert_eq!(error_code(&first), Some(ErrorCode::FrameTooLarge));
    let cut_off = sender.await.unwrap().expect("cut off while still sending");
    assert!(cut_off < Duration::from_secs(20), "{cut_off:?}");
    assert_still_serving(server.addr, "linger").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_close_and_silence_are_survived() {
    let server = server();
    // Half a header, half a body, then hang up.
    for bytes in [&b"\x00\x00"[..], &b"\x00\x00\x00\x10\x08\x01"[..]] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        drop(stream);
    }
    // Slowloris: connect, say nothing; closed at the login deadline.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let frames = frames_until_close(&mut silent).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::LoginTimeout));
    assert_still_serving(server.addr, "trunc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_clearly() {
    let server = server();
    let (alice, session) = user_on(server.addr, "alice", "phone").await;
    drop(alice);

    let client = Client::connect(server.addr).await.unwrap();
    let wrong = client
        .login("alice", "not-the-password", "")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some(ErrorCode::Unauthenticated));
    let nobody = client
        .login("nobody", "whatever-pass", "")
        .await
        .unwrap_err();
    assert_eq!(nobody.code(), Some(ErrorCode::Unauthenticated));
    // Same message for both: a login does not reveal which usernames exist.
    assert_eq!(wrong.to_string(), nobody.to_string());

    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(session.user_id, 3600),
        &jsonwebtoken::EncodingKey::from_secret(b"someone-elses-secret"),
    )
    .unwrap();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(session.user_id, -3600),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let client = Client::connect(server.addr).await.unwrap();
    let err = client.login_token(&forged).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    let err = client.login_token(&expired).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TokenExpired));
    // Third failure on one connection: refused and closed.
    let err = client.login_token("not.a.token").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    assert!(matches!(client.next_push(WAIT).await, Some(Push::Closed)));

    // The real token still works.
    let client = Client::connect(server.addr).await.unwrap();
    assert_eq!(
        client.login_token(&session.token).await.unwrap().user_id,
        session.user_id
    );
    assert_still_serving(server.addr, "creds").await;
}

fn claims(user_id: i64, expires_in: i64) -> Claims {
    let now = (ourchat_protocol::ids::now_ms() / 1000) as i64;
    Claims {
        sub: user_id.to_string(),
        dev: "phone".into(),
        exp: (now + expires_in) as u64,
        iat: (now - 7200) as u64,
        nbf: (now - 7200) as u64,
        ep: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_and_the_connection_stays() {
    let server = server();
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (_bob, sb) = user_on(server.addr, "bob", "d").await;
    let text = pb::MessageType::Text;
    let cases = [
        (sb.user_id, "x".repeat(2000), 1, ErrorCode::BadRequest),
        (sb.user_id, String::new(), 2, ErrorCode::BadRequest),
        (sb.user_id, "no id".into(), 0, ErrorCode::BadRequest),
        (sb.user_id, "negative id".into(), -5, ErrorCode::BadRequest),
        (sa.user_id, "to myself".into(), 3, ErrorCode::BadRequest),
        (987_654_321, "nobody".into(), 4, ErrorCode::NotFound),
    ];
    for (to, content, cmid, code) in cases {
        let err = alice
            .send_message(to, text, &content, cmid)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code), "{content:.20}");
    }
    // Forged sender, unknown type, other people's conversations.
    let forged = alice
        .request(Body::Send(pb::SendMessageRequest {
            sender_id: sb.user_id,
            receiver_id: sb.user_id,
            message_type: 0,
            content: "as bob".into(),
            client_message_id: 9,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(matches!(forged, Body::SendResp(ref r) if !r.success
        && r.error.as_ref().is_some_and(|e| e.code == ErrorCode::Forbidden as i32)));
    let err = alice
        .send_message(sb.user_id, text, "x", 5)
        .await
        .map(|_| ())
        .and(
            alice
                .request(Body::Send(pb::SendMessageRequest {
                    receiver_id: sb.user_id,
                    message_type: 42,
                    content: "?".into(),
                    client_message_id: 6,
                    ..Default::default()
                }))
                .await
                .map(|_| ()),
        );
    assert!(err.is_ok(), "connection must survive refused requests");
    let foreign = alice
        .history_of(pb::HistoryRequest {
            conversation_id: "si_1_2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Some(ErrorCode::Forbidden));
    // A negative before_seq is refused, not read as "from the newest".
    let negative = alice
        .history_of(pb::HistoryRequest {
            peer_id: sb.user_id,
            before_seq: -5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Some(ErrorCode::BadRequest));
    let bogus = alice
        .sync_page(&[("garbage".to_string(), 1)], 10)
        .await
        .unwrap_err();
    assert_eq!(bogus.code(), Some(ErrorCode::BadRequest));
    assert!(alice.heartbeat().await.is_ok());
}

/// Delivery acks are handled in line (no future of their own): a bad one
/// is still answered with its own request id, and moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_delivery_acks_are_refused_and_good_ones_move_the_cursor() {
    let server = server();
    let (alice, _) = user_on(server.addr, "ack_alice", "d").await;
    let (bob, sb) = user_on(server.addr, "ack_bob", "d").await;
    let sent = alice.send_text(sb.user_id, "ack me").await.unwrap();
    assert_eq!(bob.next_message(WAIT).await.unwrap().content, "ack me");
    let conv = sent.conversation_id;
    let unseen = || async {
        let page = bob.sync_page(&[], 100).await.unwrap();
        page.messages
            .iter()
            .filter(|m| m.conversation_id == conv)
            .count()
    };
    let cases = [
        ("garbage", 1, ErrorCode::BadRequest),
        ("si_1_2", 1, ErrorCode::Forbidden),
        (conv.as_str(), 0, ErrorCode::BadRequest),
        (conv.as_str(), -3, ErrorCode::BadRequest),
    ];
    for (conversation_id, seq, code) in cases {
        let ack = pb::DeliveryAck {
            conversation_id: conversation_id.into(),
            seq,
        };
        let refused = bob.request(Body::DeliveryAck(ack)).await.unwrap_err();
        assert_eq!(refused.code(), Some(code), "{conversation_id} at {seq}");
    }
    assert_eq!(unseen().await, 1, "a refused ack moved the cursor");
    bob.ack(&conv, sent.seq).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while unseen().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ack was not stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(bob.heartbeat().await.is_ok(), "the connection stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_heartbeating_ones_kept() {
    let server = server();
    let (quiet, _) = user_on(server.addr, "quiet", "d").await;
    let (chatty, _) = user_on(server.addr, "chatty", "d").await;
    let beat = tokio::spawn(async move {
        for _ in 0..8 {
            chatty
                .heartbeat()
                .await
                .expect("heartbeating connection stays open");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    match quiet.next_push(Duration::from_secs(6)).await {
        Some(Push::Kicked(reason)) => assert!(reason.contains("idle"), "{reason}"),
        other => panic!("expected an idle kick, got {other:?}"),
    }
    beat.await.unwrap();
}

/// A client may end its stream right after its last request (a
/// half-close) and still read the answers: the node writes what is queued,
/// then closes in order. A peer that ended is closed without draining it
/// (`close_gracefully`), so this holds that the shortcut loses nothing and
/// ends in an end of stream, not a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ends_its_stream_after_a_send_reads_the_ack_then_the_end() {
    let server = server();
    let (_alice, sa) = user_on(server.addr, "halfclose_a", "d").await;
    let (bob, sb) = user_on(server.addr, "halfclose_b", "d").await;
    let mut stream = raw_session(server.addr, &sa.token).await;
    let send = Envelope::new(
        7,
        Body::Send(pb::SendMessageRequest {
            receiver_id: sb.user_id,
            content: "last words".into(),
            client_message_id: 1,
            ..Default::default()
        }),
    );
    stream
        .write_all(&codec::encode_to_vec(&send))
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "an end of stream, not a reset: {read:?}"
    );
    let decoder = codec::FrameDecoder::new(1 << 20);
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let mut acks = Vec::new();
    while let Ok(Some(envelope)) = decoder.decode(&mut buf) {
        if let Some(Body::SendResp(ack)) = envelope.body {
            acks.push((envelope.req_id, ack.success, ack.seq));
        }
    }
    assert_eq!(acks, vec![(7, true, 1)]);
    assert_eq!(bob.next_message(WAIT).await.unwrap().content, "last words");
    assert_still_serving(server.addr, "halfclose").await;
}

/// The envelope fuzzer's first finding (`fuzz/regressions/`): a header
/// announcing 1,282 bytes followed by only a few. The node rightly waits for
/// the rest of the frame; what it must not do is wait for ever. A peer that
/// hangs up mid-frame is closed at once; one that dribbles bytes without
/// completing a frame is closed at the idle timeout, since only whole
/// frames count as activity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_never_completed_ends_in_a_close() {
    let server = server();
    let (_owner, session) = user_on(server.addr, "halfway", "d").await;
    let incomplete = b"\x00\x00\x05\x02\x10\x0a";

    let mut hangs_up = raw_session(server.addr, &session.token).await;
    hangs_up.write_all(incomplete).await.unwrap();
    hangs_up.shutdown().await.unwrap();
    let started = std::time::Instant::now();
    let frames = frames_until_close(&mut hangs_up).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed promptly"
    );

    // Timed from before the login: the idle clock starts when the node
    // logs the session in, which a loaded machine may report to this
    // client well after.
    let started = std::time::Instant::now();
    let mut dribbles = raw_session(server.addr, &session.token).await;
    dribbles.write_all(incomplete).await.unwrap();
    let closed = async {
        let mut byte = [0u8; 1];
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if dribbles.write_all(b"\x00").await.is_err() {
                return;
            }
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), dribbles.read(&mut byte)).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(8), closed)
        .await
        .expect("a dribbling peer is closed at the idle timeout");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_still_serving(server.addr, "halfway").await;
}
