//! Two gateway nodes in cluster mode on one machine, on the real engines
//! `make test` starts (MariaDB with two shard databases, Redis, tansu):
//! users on different nodes chat 1:1 and in a group, order per
//! conversation holds with senders on both nodes, and after kill -9 of a
//! node its users reconnect to the other and sync every acked message,
//! none twice, no seq reused.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ourchat_client::{Client, Push, SeqTracker};
use ourchat_protocol::pb::{self, ChatMessage};
use ourchat_testkit::{device_of, push_where, user_on, Engines, SendLoop, ServerProcess};

const WAIT: Duration = Duration::from_secs(10);

fn cluster_node(engines: &Engines, shards: &[String], node_id: u16) -> ServerProcess {
    engines.cluster_node(
        Path::new(env!("CARGO_BIN_EXE_ourchat")),
        shards,
        node_id,
        &[],
    )
}

/// Waits until every node's feeder reads every partition of the log: the
/// state a running cluster is in.
async fn feeders_settled(nodes: &[&ServerProcess], partitions: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: Vec<f64> = nodes
            .iter()
            .map(|n| n.metric("ourchat_feeder_partitions"))
            .collect();
        if held.iter().all(|&h| h == partitions) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "feeder group never formed: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The next pushed chat message, skipping other pushes.
async fn next_message(client: &Client) -> ChatMessage {
    push_where(client, WAIT, "message", |push| match push {
        Push::Message(m) => Some(*m),
        _ => None,
    })
    .await
}

/// Messages of a conversation as the store has them, once it has at least
/// `count` (the log reaches MySQL a moment after the acks).
async fn history_with(client: &Client, conversation_id: &str, count: usize) -> Vec<ChatMessage> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = client
            .history_of(pb::HistoryRequest {
                conversation_id: conversation_id.into(),
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.messages.len() >= count || Instant::now() > deadline {
            let mut messages = page.messages;
            messages.sort_by_key(|m| m.seq);
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_chat_one_to_one_and_in_groups_in_order() {
    let Some(engines) = Engines::from_env("cluster chat") else {
        return;
    };
    let shards = engines.fresh_shards("cluster", 2);
    let a = cluster_node(&engines, &shards, 1);
    let b = cluster_node(&engines, &shards, 2);
    let (alice, sa) = user_on(a.addr, "alice", "d").await;
    let (bob, sb) = user_on(b.addr, "bob", "d").await;
    let (carol, sc) = user_on(b.addr, "carol", "d").await;

    // 1:1 across nodes, both ways.
    let ack = alice.send_text(sb.user_id, "hello from a").await.unwrap();
    let got = next_message(&bob).await;
    assert_eq!((got.content.as_str(), got.seq), ("hello from a", ack.seq));
    bob.send_text(sa.user_id, "hello from b").await.unwrap();
    assert_eq!(next_message(&alice).await.content, "hello from b");

    // A group created on node A, a member on node B speaks.
    let group = alice
        .create_group("across", &[sb.user_id, sc.user_id], "")
        .await
        .unwrap();
    carol.send_group_text(group, "carol here").await.unwrap();
    for client in [&alice, &bob] {
        loop {
            let m = next_message(client).await;
            if m.content == "carol here" {
                break;
            }
        }
    }

    // Senders on both nodes in one conversation at once.
    let conversation = ack.conversation_id.clone();
    let sends = 40;
    let alice = Arc::new(alice);
    let bob = Arc::new(bob);
    let spawn_sender = |client: Arc<Client>, to: i64, tag: &'static str| {
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..sends {
                let ack = client.send_text(to, &format!("{tag}{i}")).await.unwrap();
                seqs.push(ack.seq);
            }
            seqs
        })
    };
    let from_a = spawn_sender(alice.clone(), sb.user_id, "a");
    let from_b = spawn_sender(bob.clone(), sa.user_id, "b");
    let (seqs_a, seqs_b) = (from_a.await.unwrap(), from_b.await.unwrap());
    // Each sender's messages got increasing seqs, and no seq twice.
    assert!(seqs_a.windows(2).all(|w| w[0] < w[1]), "{seqs_a:?}");
    assert!(seqs_b.windows(2).all(|w| w[0] < w[1]), "{seqs_b:?}");
    let all: HashSet<i64> = seqs_a.iter().chain(&seqs_b).copied().collect();
    assert_eq!(all.len(), 2 * sends);
    // Each side receives every message of the other, each sender's in order.
    for (client, tag) in [(&bob, "a"), (&alice, "b")] {
        let mut received = Vec::new();
        while received.len() < sends {
            let m = next_message(client).await;
            if m.content.starts_with(tag) {
                received.push(m.content.clone());
            }
        }
        let expected: Vec<String> = (0..sends).map(|i| format!("{tag}{i}")).collect();
        assert_eq!(received, expected);
    }
    // The stored conversation: every message once, in seq order, in the
    // order each sender sent.
    let history = history_with(&alice, &conversation, 2 * sends + 2).await;
    assert_eq!(history.len(), 2 * sends + 2);
    let seqs: Vec<i64> = history.iter().map(|m| m.seq).collect();
    let distinct: HashSet<i64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), seqs.len());
    for tag in ["a", "b"] {
        let in_seq_order: Vec<&str> = history
            .iter()
            .map(|m| m.content.as_str())
            .filter(|c| c.starts_with(tag) && c.len() <= 3)
            .collect();
        let expected: Vec<String> = (0..sends).map(|i| format!("{tag}{i}")).collect();
        assert_eq!(in_seq_order, expected);
    }
    // The machinery shows in /metrics.
    for node in [&a, &b] {
        assert!(node.metric("ourchat_remote_messages_total") > 0.0);
        assert!(node.metric("ourchat_seq_requests_total") > 0.0);
        assert!(
            node.metric("ourchat_seq_sends_total") >= node.metric("ourchat_seq_requests_total")
        );
    }
    let stored =
        a.metric("ourchat_feeder_records_total") + b.metric("ourchat_feeder_records_total");
    assert!(stored >= (2 * sends) as f64, "feeders stored {stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_users_move_to_the_other_node_and_lose_nothing() {
    let Some(engines) = Engines::from_env("cluster kill") else {
        return;
    };
    let shards = engines.fresh_shards("failover", 2);
    let mut a = cluster_node(&engines, &shards, 3);
    let b = cluster_node(&engines, &shards, 4);
    feeders_settled(&[&a, &b], 4.0).await;
    let (bob, sb) = user_on(b.addr, "bob", "phone").await;
    drop(bob);
    let (alice, _) = user_on(a.addr, "alice", "d").await;
    let sends = SendLoop::start(Arc::new(alice), sb.user_id);
    sends.wait_for(50, Duration::from_secs(30)).await;
    a.kill9();
    let acked = sends.acked().await;
    assert!(
        acked.len() >= 50,
        "too few sends before the kill: {}",
        acked.len()
    );

    // Alice reconnects to node B and goes on; no seq is reused.
    let alice = device_of(b.addr, "alice", "d").await;
    let next = alice.send_text(sb.user_id, "after failover").await.unwrap();
    let last_acked = acked.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
    assert!(
        next.seq > last_acked,
        "seq {} reused (last acked {last_acked})",
        next.seq
    );

    // Bob syncs from node B: every acked message, none twice after dedupe.
    // Node B's feeder writes the whole log too, so what A had not stored
    // yet reaches MySQL without A.
    let bob = device_of(b.addr, "bob", "phone").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tracker = SeqTracker::default();
    let mut synced: Vec<ChatMessage> = Vec::new();
    loop {
        synced.extend(bob.sync_all(&mut tracker).await.unwrap());
        let have: HashSet<i64> = synced.iter().map(|m| m.seq).collect();
        let missing = acked.iter().filter(|(seq, _)| !have.contains(seq)).count();
        if missing == 0 || Instant::now() > deadline {
            assert_eq!(missing, 0, "acked messages missing after failover");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (seq, text) in &acked {
        let copies: Vec<&ChatMessage> = synced.iter().filter(|m| m.seq == *seq).collect();
        assert_eq!(copies.len(), 1, "seq {seq} synced {} times", copies.len());
        assert_eq!(&copies[0].content, text);
    }
}

/// Waits for a presence push saying `user_id` is now `state` (an earlier
/// change may still be on its way: the log is read asynchronously).
async fn presence_becomes(client: &Client, user_id: i64, state: pb::PresenceState) {
    push_where(client, WAIT, "presence push", |push| match push {
        Push::Presence(info) if info.user_id == user_id && info.state == state as i32 => Some(()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friends_presence_on_the_other_node_is_pushed() {
    let Some(engines) = Engines::from_env("cluster presence") else {
        return;
    };
    let shards = engines.fresh_shards("presence", 2);
    let a = cluster_node(&engines, &shards, 5);
    let b = cluster_node(&engines, &shards, 6);
    let (alice, sa) = user_on(a.addr, "alice", "d").await;
    let (bob, sb) = user_on(b.addr, "bob", "d").await;
    bob.request_friend(sa.user_id, "hi").await.unwrap();
    alice.answer_friend(sb.user_id, true).await.unwrap();

    bob.set_presence(pb::PresenceState::Away).await.unwrap();
    presence_becomes(&alice, sb.user_id, pb::PresenceState::Away).await;
    drop(bob);
    presence_becomes(&alice, sb.user_id, pb::PresenceState::Offline).await;
    let _bob = device_of(b.addr, "bob", "d").await;
    presence_becomes(&alice, sb.user_id, pb::PresenceState::Online).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_one_node_stops_sends_on_the_other() {
    let Some(engines) = Engines::from_env("cluster block") else {
        return;
    };
    let shards = engines.fresh_shards("block", 2);
    let a = cluster_node(&engines, &shards, 9);
    let b = cluster_node(&engines, &shards, 10);
    let (alice, sa) = user_on(a.addr, "alice", "d").await;
    let (bob, sb) = user_on(b.addr, "bob", "d").await;
    // Node B sequences bob's sends and keeps the conversation's state.
    bob.send_text(sa.user_id, "hi").await.unwrap();
    alice.block(sb.user_id, true).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match bob.send_text(sa.user_id, "still there?").await {
            Err(e) if e.code() == Some(ourchat_client::ErrorCode::Forbidden) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("the block never reached node B: {other:?}"),
        }
    }
    alice.block(sb.user_id, false).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match bob.send_text(sa.user_id, "friends again?").await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some(ourchat_client::ErrorCode::Forbidden), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the unblock never reached node B: {e}"),
        }
    }
}

/// `user_id`'s presence as `client` asks for it.
async fn presence_of(client: &Client, user_id: i64) -> pb::PresenceInfo {
    let answer = client.presence(&[user_id]).await.unwrap();
    answer.into_iter().next().expect("one answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_queries_see_devices_on_other_nodes() {
    let Some(engines) = Engines::from_env("cluster presence queries") else {
        return;
    };
    let shards = engines.fresh_shards("query", 2);
    let a = cluster_node(&engines, &shards, 11);
    let b = cluster_node(&engines, &shards, 12);
    let (alice, sa) = user_on(a.addr, "alice", "d").await;
    let (bob, sb) = user_on(b.addr, "bob", "phone").await;
    bob.request_friend(sa.user_id, "hi").await.unwrap();
    alice.answer_friend(sb.user_id, true).await.unwrap();

    // The directory is written off the reactors: allow it a moment.
    let became = |want: pb::PresenceState| {
        let alice = &alice;
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let info = presence_of(alice, sb.user_id).await;
                if info.state == want as i32 {
                    return info;
                }
                assert!(Instant::now() < deadline, "never {want:?}: {info:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let online = became(pb::PresenceState::Online).await;
    assert_eq!(online.devices_online, 1);
    bob.set_presence(pb::PresenceState::Away).await.unwrap();
    became(pb::PresenceState::Away).await;
    // A second device on node A: online wins over away, both counted.
    let _tablet = device_of(a.addr, "bob", "tablet").await;
    let both = became(pb::PresenceState::Online).await;
    assert_eq!(both.devices_online, 2);
    drop(_tablet);
    drop(bob);
    became(pb::PresenceState::Offline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_send_rate_holds_across_nodes() {
    let Some(engines) = Engines::from_env("cluster send rate") else {
        return;
    };
    let shards = engines.fresh_shards("sendrate", 2);
    // One send per second after a burst of ten, per user, cluster-wide.
    let limits = [
        ("limits.user_sends_per_sec", "1"),
        ("limits.user_send_burst", "10"),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_ourchat"));
    let a = engines.cluster_node(binary, &shards, 13, &limits);
    let b = engines.cluster_node(binary, &shards, 14, &limits);
    let (bob, sb) = user_on(a.addr, "bob", "d").await;
    let (phone, _) = user_on(a.addr, "alice", "phone").await;
    let laptop = device_of(b.addr, "alice", "laptop").await;
    let started = Instant::now();
    let (mut accepted, mut refused) = (Vec::new(), 0);
    // Each node's own bucket would let each device send ten.
    for (device, client) in [("phone", &phone), ("laptop", &laptop)] {
        for i in 0..8 {
            match client.send_text(sb.user_id, &format!("{device}{i}")).await {
                Ok(ack) => accepted.push(ack.seq),
                Err(e) => {
                    assert_eq!(
                        e.code(),
                        Some(ourchat_client::ErrorCode::RateLimited),
                        "{e}"
                    );
                    assert!(e.to_string().contains("slow down"), "{e}");
                    refused += 1;
                }
            }
        }
    }
    let allowed = 10.0 + started.elapsed().as_secs_f64() + 1.0;
    assert!(
        refused > 0,
        "16 sends in {:?}, none refused",
        started.elapsed()
    );
    assert!(
        (accepted.len() as f64) <= allowed,
        "{} accepted, at most {allowed} allowed",
        accepted.len()
    );
    // Refused sends took no seq and store nothing: the seqs run unbroken
    // and bob's history holds exactly the accepted ones.
    accepted.sort_unstable();
    assert!(
        accepted.windows(2).all(|w| w[1] == w[0] + 1),
        "{accepted:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = laptop.send_text(sb.user_id, "after a pause").await.unwrap();
    assert_eq!(later.seq, accepted.last().copied().unwrap_or(0) + 1);
    let history = history_with(&bob, &later.conversation_id, accepted.len() + 1).await;
    assert_eq!(history.len(), accepted.len() + 1);
    assert!(a.metric("ourchat_limited_total") + b.metric("ourchat_limited_total") > 0.0);
}

/// Waits for the server to close `client`'s connection, with its reason.
async fn kicked(client: &Client) -> String {
    push_where(client, WAIT, "Kicked before the close", |push| match push {
        Push::Kicked(reason) => Some(reason),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_outs_reach_the_node_holding_the_device() {
    let Some(engines) = Engines::from_env("cluster sign-out") else {
        return;
    };
    let shards = engines.fresh_shards("signout", 2);
    let a = cluster_node(&engines, &shards, 15);
    let b = cluster_node(&engines, &shards, 16);
    let (phone, sa) = user_on(a.addr, "alice", "phone").await;
    let (bob, sb) = user_on(a.addr, "bob", "d").await;
    bob.request_friend(sa.user_id, "hi").await.unwrap();
    phone.answer_friend(sb.user_id, true).await.unwrap();

    // A device that logs in again on another node: its old connection is
    // closed, the new one works, and the old one's goodbye leaves the
    // directory saying where the device is now.
    let old_tablet = device_of(a.addr, "alice", "tablet").await;
    let tablet = device_of(b.addr, "alice", "tablet").await;
    assert_eq!(
        kicked(&old_tablet).await,
        "this device logged in again elsewhere"
    );
    tablet
        .send_text(sb.user_id, "from the tablet")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(presence_of(&bob, sa.user_id).await.devices_online, 2);

    // Kicked from node A, the laptop on node B is closed and its token is
    // dead on both nodes.
    let laptop_client = Client::connect(b.addr).await.unwrap();
    let laptop = laptop_client
        .login("alice", ourchat_testkit::TEST_PASSWORD, "laptop")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(phone.kick_device("laptop").await.unwrap(), "online on B");
    assert_eq!(
        kicked(&laptop_client).await,
        "signed out from another device"
    );
    for node in [&a, &b] {
        let again = Client::connect(node.addr).await.unwrap();
        let refused = again.login_token(&laptop.token).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Some(ourchat_client::ErrorCode::Unauthenticated),
            "{refused}"
        );
    }

    // A password change on node A signs the tablet on node B out.
    let signed_out = phone
        .change_password(ourchat_testkit::TEST_PASSWORD, "a-new-password-123")
        .await
        .unwrap();
    assert_eq!(signed_out, 1, "only the tablet was still signed in");
    assert_eq!(kicked(&tablet).await, "signed out: password changed");
    // The device that changed it stays.
    phone.send_text(sb.user_id, "still here").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_older_than_redis_remembers_gets_its_first_seq_on_either_node() {
    let Some(engines) = Engines::from_env("cluster old resends") else {
        return;
    };
    let shards = engines.fresh_shards("cluster_resend", 2);
    // Redis forgets a send after a second and the cores keep no window of
    // recent sends, so only the store can recognise these resends.
    let forgetful = [
        ("cluster.dedupe_ttl_secs", "1"),
        ("storage.dedupe_window", "0"),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_ourchat"));
    let a = engines.cluster_node(binary, &shards, 1, &forgetful);
    let b = engines.cluster_node(binary, &shards, 2, &forgetful);
    let (alice, _) = user_on(a.addr, "alice", "d").await;
    let (bob, sb) = user_on(b.addr, "bob", "d").await;
    let text = pb::MessageType::Text;
    let mut first = Vec::new();
    for cmid in 1..=5 {
        first.push(
            alice
                .send_message(sb.user_id, text, &format!("t{cmid}"), cmid)
                .await
                .unwrap(),
        );
    }
    let conv = first[0].conversation_id.clone();
    // While Redis remembers, from the other node (whose core has seen
    // nothing of this conversation, so only Redis can tell): another
    // payload under a used id is refused, the same one gets its first ack.
    let alice_on_b = device_of(b.addr, "alice", "laptop").await;
    let reused = alice_on_b
        .send_message(sb.user_id, text, "not t4", 4)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Some(ourchat_client::ErrorCode::Conflict));
    let again = alice_on_b
        .send_message(sb.user_id, text, "t4", 4)
        .await
        .unwrap();
    assert_eq!(again, first[3]);
    // In MySQL (fed from the log), and forgotten by Redis.
    history_with(&bob, &conv, 5).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    for (client, cmid) in [(&alice, 1), (&alice_on_b, 3), (&alice, 5)] {
        let again = client
            .send_message(sb.user_id, text, &format!("t{cmid}"), cmid)
            .await
            .unwrap();
        assert_eq!(again.seq, first[cmid as usize - 1].seq, "client id {cmid}");
        assert_eq!(again.server_msg_id, first[cmid as usize - 1].server_msg_id);
    }
    let reused = alice
        .send_message(sb.user_id, text, "another payload", 2)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Some(ourchat_client::ErrorCode::Conflict));
    // Stored once each: a new send lands after them, nothing doubled.
    let next = alice.send_text(sb.user_id, "new").await.unwrap();
    let stored = history_with(&bob, &conv, 6).await;
    let contents: Vec<&str> = stored.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["t1", "t2", "t3", "t4", "t5", "new"]);
    assert_eq!(stored.last().map(|m| m.seq), Some(next.seq));
}
