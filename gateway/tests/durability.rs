//! An ack means durable: kill -9 right after acks arrive, restart on the
//! same data directory, and every acked message is in history and syncs.
//! And a graceful SIGTERM flushes and exits cleanly.

use std::time::Duration;

use ourchat_testkit::{acked_messages_survive_kill_9_of, device_of, start_node, user_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9() {
    let mut server = start_node!(2);
    acked_messages_survive_kill_9_of(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let mut server = start_node!(2);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    for i in 0..50 {
        alice.send_text(sb.user_id, &format!("m{i}")).await.unwrap();
    }
    let status = server.terminate().expect("server was running");
    assert!(status.success(), "exit status {status}");
    // Connected clients were told and closed.
    let mut kicked = false;
    while let Some(push) = bob.next_push(Duration::from_secs(5)).await {
        match push {
            ourchat_client::Push::Kicked(reason) => kicked = reason.contains("shutting down"),
            ourchat_client::Push::Closed => break,
            _ => {}
        }
    }
    assert!(kicked, "clients were not told about the shutdown");

    server.restart();
    let bob = device_of(server.addr, "bob", "d").await;
    let history = bob.history(alice.user_id(), 0, 100).await.unwrap();
    assert_eq!(history.messages.len(), 50);
}
