//! Parked connections against a real node: an idle plain-TCP connection
//! parks (no task, its socket in the core's epoll set) and everything that
//! can happen to a connection still happens to it: its requests are
//! answered (a lone heartbeat without resuming it), pushes reach it, a
//! kick, an idle timeout and the peer hanging up close it, and a node
//! stops promptly with connections parked.

use std::time::{Duration, Instant};

use ourchat_client::{Client, Push};
use ourchat_testkit::{device_of, push_where, start_node, user_on, ServerProcess};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_can_be_turned_off() {
    let server = start_node!(1, "server.park_after_ms" => "0");
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.metric("ourchat_connections_parked"), 0.0);
    alice.heartbeat().await.unwrap();
}
