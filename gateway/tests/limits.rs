//! Every abuse limit against a real node, each set low: modest excess is
//! answered RATE_LIMITED and the connection lives on; a flood is closed;
//! a user's sends beyond their rate are refused and not stored; failed
//! logins back off per username (even the right password waits); an
//! address's registrations and concurrent connections are capped; each
//! refusal shows in `/metrics`.

use std::time::Duration;

use futures::future::join_all;
use ourchat_client::{Client, ClientError, ErrorCode, Push};
use ourchat_protocol::{codec, pb, Body, Envelope};
use ourchat_testkit::{start_node, user_on, TEST_PASSWORD};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);

fn limited(server: &ourchat_testkit::ServerProcess, limit: &str) -> f64 {
    server.metric(&format!("ourchat_limited_total{{limit=\"{limit}\"}}"))
}

/// `count` heartbeat frames back to back, to write in one go.
fn heartbeats(count: usize) -> Vec<u8> {
    let frame = codec::encode_to_vec(&Envelope::new(0, Body::Heartbeat(Default::default())));
    frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * count)
        .collect()
}

/// A raw connection logged in with `token` whose receive buffer is small,
/// so that what the server sends it backs up in the server's send queue.
async fn small_window_login(addr: std::net::SocketAddr, token: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    ourchat_testkit::raw_login(stream, token).await
}

fn is_rate_limited(result: &Result<impl Sized, ClientError>) -> bool {
    matches!(result, Err(e) if e.code() == Some(ErrorCode::RateLimited))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_rate_refuses_then_a_flood_disconnects() {
    let server = start_node!(1,
        "limits.frames_per_sec" => 20,
        "limits.frame_burst" => 20,
        "limits.flood_refusals_per_sec" => 200,
    );
    let (alice, _) = user_on(server.addr, "alice", "d").await;

    // 60 requests at once: about 20 answered, the rest refused, and the
    // connection stays usable.
    let results = join_all((0..60).map(|_| alice.heartbeat())).await;
    let refused = results.iter().filter(|r| is_rate_limited(r)).count();
    let answered = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(refused + answered, 60, "{results:?}");
    assert!((15..=30).contains(&answered), "answered {answered}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice
        .heartbeat()
        .await
        .expect("served again once the bucket refills");
    assert!(limited(&server, "frame_rate") >= 30.0);

    // A flood: far more frames than the refusal budget in one write.
    let (flooder, _) = user_on(server.addr, "flooder", "d").await;
    let flood = heartbeats(1000);
    flooder.send_raw(&flood).await.unwrap();
    let mut reason = None;
    while let Some(push) = flooder.next_push(WAIT).await {
        match push {
            Push::Error(e) if e.message.contains("flooding") => reason = Some(e),
            Push::Closed => break,
            _ => {}
        }
    }
    let reason = reason.expect("told why before the close");
    assert_eq!(reason.code, ErrorCode::RateLimited as i32);
    assert_eq!(limited(&server, "flood_disconnect"), 1.0);
    // Nobody else noticed.
    alice.heartbeat().await.expect("others unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_close_reaches_a_client_that_reads_later() {
    // The flood's answers (20 acks, then 200 refusals of ~100 bytes) are
    // more than this client's small receive window, so the last of them
    // and the reason for the close wait in the server's send queue, and
    // frames behind the flood wait unread in its receive queue. Closed
    // with bytes unread, a socket resets, and a reset throws away its
    // send queue: the client used to read a cut stream and a reset, never
    // the reason. (This is how `a_flood_close_acks_every_message_it_stored_first`
    // failed once in CI.)
    let server = start_node!(1,
        "limits.frames_per_sec" => 20,
        "limits.frame_burst" => 20,
        "limits.flood_refusals_per_sec" => 200,
    );
    let (_, session) = user_on(server.addr, "flooder", "raw").await;
    let mut raw = small_window_login(server.addr, &session.token).await;
    let flood = heartbeats(20_000);
    // The server stops reading at the flood: the rest may not all go.
    let _ = tokio::time::timeout(Duration::from_millis(500), raw.write_all(&flood)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frames = ourchat_testkit::frames_until_close(&mut raw, WAIT).await;
    let last = frames.last().expect("frames before the close");
    assert!(
        matches!(&last.body, Some(Body::Error(e)) if e.message.contains("flooding")),
        "{} frames, the last {last:?}",
        frames.len()
    );
    let answered = frames.iter().filter(|f| f.req_id == 0).count();
    assert!(answered >= 200, "{answered} answers before the reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_its_connection_freed() {
    // Pushes to a client that reads nothing fill its socket, then its
    // outbox: it is closed as a slow reader. Its writer, stuck on the full
    // socket, must still let go of the connection.
    let server = start_node!(1,
        "server.outbound_queue_frames" => 64,
        "limits.frames_per_sec" => 100_000,
        "limits.frame_burst" => 100_000,
        "limits.user_sends_per_sec" => 100_000,
        "limits.user_send_burst" => 100_000,
    );
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (_, bob) = user_on(server.addr, "bob", "d").await;
    let (_, deaf) = user_on(server.addr, "bob", "deaf").await;
    let _deaf = small_window_login(server.addr, &deaf.token).await;
    let open = server.metric("ourchat_connections");
    let text = "x".repeat(8000);
    for _ in 0..40 {
        if server.metric("ourchat_slow_reader_closes_total") > 0.0 {
            break;
        }
        let sends = (0..32).map(|_| alice.send_text(bob.user_id, &text));
        for sent in join_all(sends).await {
            sent.unwrap();
        }
    }
    assert_eq!(server.metric("ourchat_slow_reader_closes_total"), 1.0);
    let deadline = std::time::Instant::now() + WAIT;
    while server.metric("ourchat_connections") >= open {
        assert!(
            std::time::Instant::now() < deadline,
            "the deaf connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alice.heartbeat().await.expect("others unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_sends_beyond_the_rate_are_refused_and_not_stored() {
    let server = start_node!(2,
        "limits.user_sends_per_sec" => 1,
        "limits.user_send_burst" => 5,
    );
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (_bob, bob) = user_on(server.addr, "bob", "d").await;
    let texts: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    let results = join_all(texts.iter().map(|text| alice.send_text(bob.user_id, text))).await;
    let acked: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!((5..=6).contains(&acked.len()), "acked {}", acked.len());
    assert!(results.iter().all(|r| r.is_ok() || is_rate_limited(r)));
    let stored = alice.history(bob.user_id, 0, 100).await.unwrap();
    assert_eq!(
        stored.messages.len(),
        acked.len(),
        "refused sends not stored"
    );
    assert!(limited(&server, "user_send_rate") >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_per_username() {
    let server = start_node!(2,
        "limits.login_failures_per_user" => 2,
        "limits.login_backoff_max_secs" => 2,
    );
    let (_victim, _) = user_on(server.addr, "victim", "d").await;
    let guess = |password: &'static str| async move {
        let client = Client::connect(server.addr).await.unwrap();
        client.login("victim", password, "attacker").await
    };
    for _ in 0..3 {
        let result = guess("wrong-password").await;
        assert_eq!(result.unwrap_err().code(), Some(ErrorCode::Unauthenticated));
    }
    // Backing off now: even the right password waits, with a clear reason.
    let refused = guess(TEST_PASSWORD).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited));
    assert!(refused.to_string().contains("retry in"), "{refused}");
    assert!(limited(&server, "login_backoff") >= 1.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    guess(TEST_PASSWORD)
        .await
        .expect("allowed after the back-off");
    // And that success cleared the username's record.
    assert_eq!(
        guess("wrong-password").await.unwrap_err().code(),
        Some(ErrorCode::Unauthenticated)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_is_capped_on_registrations_and_connections() {
    let server = start_node!(2,
        "limits.registration_burst" => 3,
        "limits.registrations_per_ip_per_hour" => 1,
        "limits.max_connections_per_ip" => 4,
    );
    let client = Client::connect(server.addr).await.unwrap();
    for name in ["reg-a", "reg-b", "reg-c"] {
        client
            .register(name, TEST_PASSWORD)
            .await
            .expect("within the burst");
    }
    let refused = client.register("reg-d", TEST_PASSWORD).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited));
    assert_eq!(limited(&server, "registration_rate"), 1.0);

    // `client` holds one connection; three more fit, the fifth is refused.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect(server.addr).await.unwrap());
    }
    let devices = ["d1", "d2", "d3"];
    join_all(
        held.iter()
            .zip(devices)
            .map(|(c, d)| c.login("reg-a", TEST_PASSWORD, d)),
    )
    .await;
    let extra = Client::connect(server.addr).await.unwrap();
    match extra.next_push(WAIT).await {
        Some(Push::Error(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited as i32);
            assert!(e.message.contains("too many connections"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(extra.next_push(WAIT).await, Some(Push::Closed));
    assert_eq!(limited(&server, "connections_per_ip"), 1.0);
    // Closing one frees its place.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = Client::connect(server.addr).await.unwrap();
    again
        .login("reg-b", TEST_PASSWORD, "d")
        .await
        .expect("a freed place is usable");
}

/// `count` sends from one raw socket in one write: request ids 2.., client
/// ids 1.., contents `m<cmid>`.
fn send_burst(to: i64, count: i64) -> Vec<u8> {
    (1..=count)
        .flat_map(|cmid| {
            let send = pb::SendMessageRequest {
                receiver_id: to,
                content: format!("m{cmid}"),
                client_message_id: cmid,
                ..Default::default()
            };
            codec::encode_to_vec(&Envelope::new(cmid as u32 + 1, Body::Send(send)))
        })
        .collect()
}

/// Reads answers (frames with a request id) until `count` arrived, the
/// connection closed, or `wait` passed without a frame.
async fn answers(stream: &mut tokio::net::TcpStream, count: usize) -> Vec<Envelope> {
    use tokio::io::AsyncReadExt;
    let decoder = codec::FrameDecoder::new(1 << 20);
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    while out.len() < count {
        while let Ok(Some(envelope)) = decoder.decode(&mut buf) {
            if envelope.req_id != 0 {
                out.push(envelope);
            }
        }
        if out.len() >= count {
            break;
        }
        match tokio::time::timeout(WAIT, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    out
}

/// The request ids answered with a successful SendResp.
fn acked_request_ids(frames: &[Envelope]) -> std::collections::BTreeSet<u32> {
    frames
        .iter()
        .filter(|f| matches!(&f.body, Some(Body::SendResp(r)) if r.success))
        .map(|f| f.req_id)
        .collect()
}

/// Request ids of the messages alice's conversation with bob holds.
async fn stored_request_ids(alice: &Client, bob: i64) -> std::collections::BTreeSet<u32> {
    let mut ids = std::collections::BTreeSet::new();
    let mut before = 0;
    loop {
        let page = alice.history(bob, before, 100).await.unwrap();
        for m in &page.messages {
            ids.insert(m.client_message_id as u32 + 1);
            before = m.seq;
        }
        if !page.has_more {
            return ids;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_frame_is_answered_once_and_never_carried_out() {
    let server = start_node!(2,
        "limits.frames_per_sec" => 50,
        "limits.frame_burst" => 50,
        "limits.flood_refusals_per_sec" => 1_000_000,
        "limits.user_sends_per_sec" => 100_000,
        "limits.user_send_burst" => 100_000,
    );
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (_bob, bob) = user_on(server.addr, "bob", "d").await;
    // Another device of alice's: a login on "d" would close `alice`.
    let (_, burst_device) = user_on(server.addr, "alice", "burst").await;
    let mut raw = ourchat_testkit::raw_session(server.addr, &burst_device.token).await;
    raw.write_all(&send_burst(bob.user_id, 200)).await.unwrap();
    let frames = answers(&mut raw, 200).await;

    // Exactly one answer per request, each naming its request.
    let mut per_request = std::collections::BTreeMap::<u32, usize>::new();
    for frame in &frames {
        *per_request.entry(frame.req_id).or_default() += 1;
    }
    assert_eq!(per_request.len(), 200, "every request answered");
    assert!(per_request.values().all(|&n| n == 1), "{per_request:?}");
    let refused: Vec<&Envelope> = frames
        .iter()
        .filter(
            |f| matches!(&f.body, Some(Body::Error(e)) if e.code == ErrorCode::RateLimited as i32),
        )
        .collect();
    assert!(
        refused.len() >= 100,
        "most of a 200 burst over 50 refused: {}",
        refused.len()
    );
    for frame in &refused {
        let Some(Body::Error(e)) = &frame.body else {
            unreachable!()
        };
        assert!(e.retryable);
        assert!(
            e.message.contains(&format!("request {}", frame.req_id)),
            "{}",
            e.message
        );
    }
    let acked = acked_request_ids(&frames);
    assert_eq!(acked.len() + refused.len(), 200);
    // What was refused was not stored; what was acked was.
    assert_eq!(stored_request_ids(&alice, bob.user_id).await, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_close_acks_every_message_it_stored_first() {
    // Default limits: a 600-send burst stores the user's send burst and is
    // then closed as a flood.
    let server = start_node!(2);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (_bob, bob) = user_on(server.addr, "bob", "d").await;
    // Another device of alice's: a login on "d" would close `alice`.
    let (_, burst_device) = user_on(server.addr, "alice", "burst").await;
    let mut raw = ourchat_testkit::raw_session(server.addr, &burst_device.token).await;
    raw.write_all(&send_burst(bob.user_id, 600)).await.unwrap();
    let frames = ourchat_testkit::frames_until_close(&mut raw, WAIT).await;
    let last = frames.last().expect("told why before the close");
    assert!(
        matches!(&last.body, Some(Body::Error(e)) if e.message.contains("flooding")),
        "{last:?}"
    );
    let acked = acked_request_ids(&frames);
    let stored = stored_request_ids(&alice, bob.user_id).await;
    assert!(!stored.is_empty());
    assert_eq!(stored, acked, "every stored message acked before the close");

    // Resending after the reconnect gets the original seqs.
    let seq_of: std::collections::BTreeMap<u32, i64> = frames
        .iter()
        .filter_map(|f| match &f.body {
            Some(Body::SendResp(r)) if r.success => Some((f.req_id, r.seq)),
            _ => None,
        })
        .collect();
    // The burst spent the user's send budget: let it refill first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for req_id in [*acked.first().unwrap(), *acked.last().unwrap()] {
        let cmid = i64::from(req_id) - 1;
        let again = alice
            .send_message(
                bob.user_id,
                pb::MessageType::Text,
                &format!("m{cmid}"),
                cmid,
            )
            .await
            .unwrap();
        assert_eq!(again.seq, seq_of[&req_id]);
    }
}
