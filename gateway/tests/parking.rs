//! Parked connections against a real node: an idle plain-TCP connection
//! parks (no task, its socket in the core's epoll set) and everything that
//! can happen to a connection still happens to it: its requests are
//! answered (a lone heartbeat without resuming it), pushes reach it, a
//! kick, an idle timeout and the peer hanging up close it, split, large
//! and broken frames are read as a task would, and a node stops promptly
//! with connections parked.

use std::time::{Duration, Instant};

use ourchat_client::{Client, Push};
use ourchat_protocol::{codec, pb, Body, Envelope};
use ourchat_testkit::{
    device_of, frames_until_close, push_where, raw_session, start_node, user_on, ServerProcess,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Waits until `/metrics` shows `count` parked connections.
async fn parked(server: &ServerProcess, count: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = server.metric("ourchat_connections_parked");
        if now == count {
            return;
        }
        assert!(Instant::now() < deadline, "{now} parked, expected {count}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kicked(client: &Client, why: &str) {
    let reason = push_where(client, WAIT, "a kick", |push| match push {
        Push::Kicked(reason) => Some(reason),
        _ => None,
    })
    .await;
    assert!(
        reason.contains(why),
        "kicked for {reason:?}, expected {why:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_served_pushed_to_and_kicked() {
    let server = start_node!(2, "server.park_after_ms" => "300");
    let (alice, sa) = user_on(server.addr, "alice", "phone").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    parked(&server, 2.0).await;

    // A lone heartbeat is answered while parked: the connection stays
    // parked and its idle clock restarts.
    for _ in 0..3 {
        bob.heartbeat().await.unwrap();
    }
    assert_eq!(server.metric("ourchat_parked_heartbeats_total"), 3.0);
    assert_eq!(server.metric("ourchat_connections_parked"), 2.0);
    // Two frames at once are the task's to read: it is resumed for them.
    let (first, second) = tokio::join!(bob.heartbeat(), bob.heartbeat());
    first.unwrap();
    second.unwrap();
    parked(&server, 2.0).await;

    // Bob's request wakes his socket; the message wakes Alice's outbox.
    let ack = bob.send_text(sa.user_id, "are you there?").await.unwrap();
    let got = alice
        .next_message(WAIT)
        .await
        .expect("pushed to a parked connection");
    assert_eq!((got.seq, got.content.as_str()), (ack.seq, "are you there?"));
    alice.send_text(sb.user_id, "yes").await.unwrap();
    let back = bob.next_message(WAIT).await.expect("and back");
    assert_eq!(back.content, "yes");
    parked(&server, 2.0).await;

    // Many wake-ups in a row, nothing lost or repeated.
    for i in 0..20 {
        bob.send_text(sa.user_id, &format!("n{i}")).await.unwrap();
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    for i in 0..20 {
        let m = alice.next_message(WAIT).await.expect("every message");
        assert_eq!(m.content, format!("n{i}"));
    }

    // A kick reaches a parked device.
    let laptop = device_of(server.addr, "alice", "laptop").await;
    parked(&server, 3.0).await;
    assert!(alice.kick_device("laptop").await.unwrap());
    kicked(&laptop, "signed out").await;
    assert!(matches!(laptop.next_push(WAIT).await, Some(Push::Closed)));

    // A peer that hangs up while parked is closed and forgotten.
    parked(&server, 2.0).await;
    let open = server.metric("ourchat_connections");
    drop(bob);
    let deadline = Instant::now() + WAIT;
    while server.metric("ourchat_connections") != open - 1.0 {
        assert!(Instant::now() < deadline, "the hung-up connection stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    parked(&server, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_times_out_and_a_node_stops_with_some_parked() {
    let mut server = start_node!(1,
        "server.park_after_ms" => "200",
        "server.heartbeat_secs" => "1",
        "server.idle_timeout_secs" => "2",
    );
    let (silent, _) = user_on(server.addr, "silent", "d").await;
    parked(&server, 1.0).await;
    kicked(&silent, "idle timeout").await;
    parked(&server, 0.0).await;

    // Heartbeats answered while parked keep a connection alive.
    let (beating, _) = user_on(server.addr, "beating", "d").await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        beating
            .heartbeat()
            .await
            .expect("alive past the idle timeout");
    }
    assert!(server.metric("ourchat_parked_heartbeats_total") >= 4.0);
    drop(beating);
    parked(&server, 0.0).await;

    let mut others = Vec::new();
    for i in 0..10 {
        others.push(user_on(server.addr, &format!("user{i}"), "d").await.0);
    }
    parked(&server, 10.0).await;
    let started = Instant::now();
    let status = server.terminate().expect("was running");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    for client in &others {
        kicked(client, "shutting down").await;
    }
}

/// The next frame the server writes on a raw socket.
async fn next_frame(stream: &mut TcpStream) -> Envelope {
    let mut header = [0u8; codec::HEADER_LEN];
    tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .expect("a frame in time")
        .unwrap();
    let mut body = vec![0u8; codec::body_len(header, 1 << 20).unwrap()];
    stream.read_exact(&mut body).await.unwrap();
    codec::decode_body(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_reads_split_large_and_broken_frames_as_a_task_would() {
    let server = start_node!(1, "server.park_after_ms" => "300");
    let (client, session) = user_on(server.addr, "carol", "d").await;
    // The same device logging in again takes over from the client.
    let mut raw = raw_session(server.addr, &session.token).await;
    drop(client);
    parked(&server, 1.0).await;

    // Half a heartbeat's header, then the rest: not answerable from the
    // lot, so the task is resumed and reads the frame whole.
    let heartbeat = codec::encode_to_vec(&Envelope::new(7, Body::Heartbeat(pb::Heartbeat {})));
    raw.write_all(&heartbeat[..2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.write_all(&heartbeat[2..]).await.unwrap();
    let ack = next_frame(&mut raw).await;
    assert_eq!(ack.req_id, 7);
    assert!(matches!(ack.body, Some(Body::HeartbeatAck(_))), "{ack:?}");
    parked(&server, 1.0).await;

    // A frame larger than the lot ever peeks at.
    let search = Envelope::new(
        8,
        Body::SearchUsers(pb::SearchUsersRequest {
            query: "c".repeat(200),
            limit: 5,
            after_user_id: 0,
        }),
    );
    raw.write_all(&codec::encode_to_vec(&search)).await.unwrap();
    let reply = next_frame(&mut raw).await;
    assert_eq!(reply.req_id, 8, "{reply:?}");
    parked(&server, 1.0).await;

    // A broken frame gets the same error and close as on a busy socket.
    raw.write_all(b"\x00\x00\x00\x08\xff\xff\xff\xff\xff\xff\xff\xff")
        .await
        .unwrap();
    let frames = frames_until_close(&mut raw, WAIT).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(
        matches!(&frames[0].body, Some(Body::Error(e)) if e.code == pb::ErrorCode::Protocol as i32),
        "{frames:?}"
    );
    parked(&server, 0.0).await;
    assert_eq!(server.metric("ourchat_connections"), 0.0);
}

#[test]
fn a_park_delay_not_below_the_heartbeat_interval_is_warned_about() {
    let server = start_node!(1,
        "server.park_after_ms" => "5000",
        "server.heartbeat_secs" => "5",
        "server.idle_timeout_secs" => "20",
    );
    let printed = server.printed();
    let warning = "park_after_ms is not below the heartbeat interval";
    // With OURCHAT_TEST_LOG the node's log goes to the test's output.
    if std::env::var_os("OURCHAT_TEST_LOG").is_none() {
        assert!(printed.contains(warning), "{printed}");
    }
    let quiet = start_node!(1, "server.park_after_ms" => "4999", "server.heartbeat_secs" => "5");
    assert!(!quiet.printed().contains(warning));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_can_be_turned_off() {
    let server = start_node!(1, "server.park_after_ms" => "0");
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.metric("ourchat_connections_parked"), 0.0);
    alice.heartbeat().await.unwrap();
}
