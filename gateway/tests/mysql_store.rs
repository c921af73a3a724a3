//! A node on the sharded MySQL store (two fresh databases on the MariaDB
//! that `make test` starts): the client-visible behaviour is the embedded
//! store's — chat, groups, friends, search, the conversation list — and an
//! ack is as durable: kill -9 mid-traffic, restart, and every acked message
//! syncs, gapless, with sequencing continuing after it.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ourchat_client::{Push, SeqTracker};
use ourchat_testkit::{device_of, user_on, Engines, ServerOptions, ServerProcess};

const WAIT: Duration = Duration::from_secs(5);

fn node_on(shards: &[String]) -> ServerProcess {
    ServerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_ourchat")),
        ServerOptions {
            cores: 2,
            set: Engines::mysql_store(shards),
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_groups_and_friends_work_on_mysql_shards() {
    let Some(engines) = Engines::from_env("chat_groups_and_friends_work_on_mysql_shards") else {
        return;
    };
    let server = node_on(&engines.fresh_shards("chat", 2));
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    let (carol, sc) = user_on(server.addr, "carol", "d").await;

    bob.request_friend(sa.user_id, "hi").await.unwrap();
    alice.answer_friend(sb.user_id, true).await.unwrap();
    let friends = alice.friends().await.unwrap();
    assert_eq!(friends.friends.len(), 1, "{friends:?}");

    for i in 1..=3 {
        let ack = bob.send_text(sa.user_id, &format!("b{i}")).await.unwrap();
        assert_eq!(ack.seq, i);
    }
    let mut pushed = Vec::new();
    while pushed.len() < 3 {
        match alice.next_push(WAIT).await {
            Some(Push::Message(m)) => pushed.push(m.content.clone()),
            Some(Push::Friend(_)) => {}
            other => panic!("expected messages, got {other:?}"),
        }
    }
    assert_eq!(pushed, ["b1", "b2", "b3"]);
    let conv = alice.conversations(10, None).await.unwrap();
    assert_eq!(conv.conversations.len(), 1);
    assert_eq!(conv.conversations[0].unread, 3);

    let group = alice
        .create_group("shards", &[sb.user_id, sc.user_id], "")
        .await
        .unwrap();
    carol.send_group_text(group, "hello all").await.unwrap();
    let history = bob
        .history_of(ourchat_protocol::pb::HistoryRequest {
            conversation_id: format!("sg_{group}"),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        history.messages.iter().any(|m| m.content == "hello all"),
        "{history:?}"
    );
    let mine = carol.my_groups(0, 10).await.unwrap();
    assert_eq!(mine.groups.len(), 1);
    let found = carol.search_users("ali", 10, 0).await.unwrap();
    assert_eq!(found.users.len(), 1);
    assert_eq!(found.users[0].user_id, sa.user_id);
    // Usernames are unique across shards.
    let again = ourchat_client::Client::connect(server.addr).await.unwrap();
    let taken = again
        .register("alice", "another-password")
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Some(ourchat_client::ErrorCode::Conflict));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9_on_mysql() {
    let Some(engines) = Engines::from_env("acked_messages_survive_kill_9_on_mysql") else {
        return;
    };
    let mut server = node_on(&engines.fresh_shards("kill", 2));
    let (bob, sb) = user_on(server.addr, "bob", "phone").await;
    drop(bob);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let alice = Arc::new(alice);
    let count = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (alice, count) = (alice.clone(), count.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                match alice.send_text(sb.user_id, &format!("m{i}")).await {
                    Ok(ack) => acked.push((ack.seq, format!("m{i}"))),
                    Err(_) => break,
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            acked
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::Relaxed) < 50 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    let acked = sender.await.unwrap();
    assert!(acked.len() > 10, "too few sends: {}", acked.len());

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
    let seqs: Vec<i64> = synced.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let alice = device_of(server.addr, "alice", "d").await;
    let next = alice.send_text(sb.user_id, "after restart").await.unwrap();
    assert_eq!(next.seq, seqs.len() as i64 + 1);
}
