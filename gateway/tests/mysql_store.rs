//! A node on the sharded MySQL store (two fresh databases on the MariaDB
//! that `make test` starts): the client-visible behaviour is the embedded
//! store's — chat, groups, friends, search, the conversation list — and an
//! ack is as durable: kill -9 mid-traffic, restart, and every acked message
//! syncs, gapless, with sequencing continuing after it.

use std::path::Path;
use std::time::Duration;

use ourchat_client::Push;
use ourchat_testkit::{
    acked_messages_survive_kill_9_of, user_on, Engines, ServerOptions, ServerProcess,
};

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
    acked_messages_survive_kill_9_of(&mut server).await;
}

/// `storage.mysql_replicas` overrides naming `replicas`.
fn with_replicas(shards: &[String], replicas: &[String]) -> Vec<(String, String)> {
    let mut set = Engines::mysql_store(shards);
    let list: Vec<String> = replicas.iter().map(|url| format!("\"{url}\"")).collect();
    set.push((
        "storage.mysql_replicas".into(),
        format!("[{}]", list.join(", ")),
    ));
    set
}

fn node_with(set: Vec<(String, String)>) -> ServerProcess {
    ServerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_ourchat")),
        ServerOptions {
            cores: 2,
            set,
            ..Default::default()
        },
    )
}

/// How many messages `client`'s history of its chat with `peer` shows once
/// it shows `want` (or the deadline passes: then what it shows).
async fn history_count(client: &ourchat_client::Client, peer: i64, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let shown = client.history(peer, 0, 100).await.unwrap().messages.len();
        if shown >= want || std::time::Instant::now() > deadline {
            return shown;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_search_read_the_replica_and_outlive_it() {
    let Some(engines) = Engines::from_env("history_and_search_read_the_replica") else {
        return;
    };
    let shards = engines.fresh_shards("replica", 2);
    let Some(replicas) = engines.replicas_of(&shards) else {
        return;
    };
    let server = node_with(with_replicas(&shards, &replicas));
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    for i in 1..=3 {
        bob.send_text(sa.user_id, &format!("b{i}")).await.unwrap();
    }
    // The replica catches up: history and search read it.
    assert_eq!(history_count(&alice, sb.user_id, 3).await, 3);
    let found = alice.search_users("bo", 10, 0).await.unwrap();
    assert_eq!(found.users.len(), 1, "{found:?}");

    // With replication paused, a new message is in sync (the primary) at
    // once but not in history (the replica) until replication resumes:
    // the reads really go where the config says.
    engines.on_replica("STOP SLAVE");
    let fourth = bob.send_text(sa.user_id, "b4").await.unwrap();
    let mut tracker = ourchat_client::SeqTracker::default();
    let synced = alice.sync_all(&mut tracker).await.unwrap();
    assert!(
        synced.iter().any(|m| m.seq == fourth.seq),
        "sync reads the primary"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = alice
        .history(sb.user_id, 0, 100)
        .await
        .unwrap()
        .messages
        .len();
    engines.on_replica("START SLAVE");
    assert_eq!(stale, 3, "history came from the paused replica");
    assert_eq!(history_count(&alice, sb.user_id, 4).await, 4);

    // A node whose replicas are gone still answers history and search,
    // from the primaries.
    drop(server);
    let dead: Vec<String> = shards
        .iter()
        .map(|url| {
            url.replace(
                &engines.mysql_server,
                &format!(
                    "mysql://ourchat:ourchat@127.0.0.1:{}",
                    ourchat_testkit::free_port()
                ),
            )
        })
        .collect();
    let server = node_with(with_replicas(&shards, &dead));
    let alice = ourchat_testkit::device_of(server.addr, "alice", "d").await;
    assert_eq!(
        alice
            .history(sb.user_id, 0, 100)
            .await
            .unwrap()
            .messages
            .len(),
        4
    );
    let found = alice.search_users("bo", 10, 0).await.unwrap();
    assert_eq!(found.users.len(), 1, "{found:?}");
}
