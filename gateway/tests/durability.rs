//! An ack means durable: kill -9 right after acks arrive, restart on the
//! same data directory, and every acked message is in history and syncs.
//! And a graceful SIGTERM flushes and exits cleanly.

use std::sync::Arc;
use std::time::Duration;

use ourchat_client::SeqTracker;
use ourchat_testkit::{device_of, start_node, user_on, SendLoop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9() {
    let mut server = start_node!(2);
    let (_bob, sb) = user_on(server.addr, "bob", "phone").await;
    drop(_bob);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let sends = SendLoop::start(Arc::new(alice), sb.user_id);
    // Kill mid-traffic: once some acks are in (however loaded the machine),
    // and before the per-user send burst (200) could run out.
    sends.wait_for(50, Duration::from_secs(20)).await;
    server.kill9();
    let acked = sends.acked().await;
    assert!(
        acked.len() > 10,
        "too few sends before the kill: {}",
        acked.len()
    );

    server.restart();
    let bob = device_of(server.addr, "bob", "phone").await;
    let mut tracker = SeqTracker::default();
    let synced = bob.sync_all(&mut tracker).await.unwrap();
    for (seq, text) in &acked {
        let found = synced.iter().find(|m| m.seq == *seq);
        assert_eq!(
            found.map(|m| &m.content),
            Some(text),
            "acked seq {seq} lost"
        );
    }
    // Gapless from 1, nothing twice.
    let seqs: Vec<i64> = synced.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());

    // Sequencing continues after the last stored seq, never reusing one.
    let alice = device_of(server.addr, "alice", "d").await;
    let next = alice.send_text(sb.user_id, "after restart").await.unwrap();
    assert_eq!(next.seq, seqs.len() as i64 + 1);
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
