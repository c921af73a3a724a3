//! Cluster mode while an engine is away (the engines `make test` starts;
//! one test, so nothing else in this binary runs while an engine is
//! frozen). An engine is stopped with SIGSTOP: it keeps its data but
//! answers nobody, like a host that hangs.
//!
//! - Kafka away: sends fail within the send timeout with a clear error and
//!   are not acked; once it is back, sends work again, no restart.
//! - MySQL away: acked messages still reach their recipients (they are in
//!   Kafka) and land in MySQL once it is back.
//! - Redis slow (frozen for a moment): a block made on one node while the
//!   other has a send in flight in that conversation still lands there once
//!   the send is answered.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ourchat_client::{Client, ErrorCode, Push};
use ourchat_protocol::pb;
use ourchat_testkit::{push_where, user_on, Engines, ServerProcess};

fn cluster_node(engines: &Engines, shards: &[String], node_id: u16) -> ServerProcess {
    engines.cluster_node(
        Path::new(env!("CARGO_BIN_EXE_ourchat")),
        shards,
        node_id,
        &[("cluster.send_timeout_ms", "2000")],
    )
}

/// Freezes an engine (SIGSTOP) until dropped (SIGCONT).
struct Frozen(i32);

impl Frozen {
    fn engine(pid_file: PathBuf) -> Frozen {
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .trim()
            .parse()
            .unwrap();
        signal(pid, "-STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: i32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

async fn next_text(client: &Client) -> String {
    push_where(
        client,
        Duration::from_secs(10),
        "message",
        |push| match push {
            Push::Message(m) => Some(m.content),
            _ => None,
        },
    )
    .await
}

/// Sends `text`, retrying the retryable refusals of a producer that is
/// still reconnecting to Kafka after an outage, for up to 30 s.
async fn send_once_kafka_is_back(client: &Client, to: i64, text: &str) -> ourchat_client::SendAck {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.send_text(to, text).await {
            Ok(ack) => return ack,
            Err(e)
                if Instant::now() < deadline && e.code() == Some(ErrorCode::StoreUnavailable) =>
            {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("sends still fail after Kafka came back: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_survive_kafka_and_mysql_outages() {
    let Some(engines) = Engines::from_env("cluster outages") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("OURCHAT_TEST_ENGINES_DIR").unwrap());
    let shards = engines.fresh_shards("outage", 2);
    let a = cluster_node(&engines, &shards, 7);
    let b = cluster_node(&engines, &shards, 8);
    let (alice, _) = user_on(a.addr, "alice", "d").await;
    let (bob, sb) = user_on(b.addr, "bob", "d").await;
    alice.send_text(sb.user_id, "before").await.unwrap();
    assert_eq!(next_text(&bob).await, "before");

    // Kafka away: a clear refusal within the send timeout, nothing acked.
    {
        let _kafka = Frozen::engine(dir.join("tansu.pid"));
        let started = Instant::now();
        let refused = alice.send_text(sb.user_id, "while kafka is away").await;
        let error = refused.expect_err("a send Kafka never took must not be acked");
        assert_eq!(error.code(), Some(ErrorCode::StoreUnavailable), "{error}");
        assert!(error.to_string().contains("Kafka"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    }
    // Back: sending works again without restarting anything.
    let after_kafka = send_once_kafka_is_back(&alice, sb.user_id, "kafka is back").await;
    loop {
        if next_text(&bob).await == "kafka is back" {
            break;
        }
    }

    // MySQL away: sends are acked and delivered all the same...
    let mut acked = Vec::new();
    {
        let _mysql = Frozen::engine(dir.join("mysql.pid"));
        for i in 0..5 {
            let text = format!("while mysql is away {i}");
            let ack = alice.send_text(sb.user_id, &text).await.unwrap();
            assert!(ack.seq > after_kafka.seq);
            assert_eq!(next_text(&bob).await, text);
            acked.push((ack.seq, text));
        }
    }
    // ...and land in MySQL once it is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = bob
            .history_of(pb::HistoryRequest {
                conversation_id: after_kafka.conversation_id.clone(),
                limit: 100,
                ..Default::default()
            })
            .await;
        let stored: Vec<(i64, String)> = match page {
            Ok(page) => page
                .messages
                .into_iter()
                .map(|m| (m.seq, m.content))
                .collect(),
            Err(_) => Vec::new(),
        };
        if acked.iter().all(|a| stored.contains(a)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acked messages never reached MySQL: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A block on node A while node B has a send of that conversation in
    // flight (its seq request waits on a frozen Redis): node B keeps the
    // notice and reads the conversation again once the send is answered,
    // so the very next send is refused.
    let (dave, sd) = user_on(a.addr, "dave", "d").await;
    let (carol, sc) = user_on(b.addr, "carol", "d").await;
    // Node B's producer may still be reconnecting after the freeze.
    send_once_kafka_is_back(&carol, sd.user_id, "hi dave").await;
    let carol = std::sync::Arc::new(carol);
    {
        let _redis = Frozen::engine(dir.join("redis.pid"));
        let in_flight = tokio::spawn({
            let carol = carol.clone();
            async move { carol.send_text(sd.user_id, "in flight").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        dave.block(sc.user_id, true).await.unwrap();
        // The notice reaches node B while the send still waits.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !in_flight.is_finished(),
            "the send was meant to wait on Redis"
        );
        drop(_redis);
        // Checked before the block: accepted, or refused by the timeout.
        let _ = in_flight.await.unwrap();
    }
    let refused = carol
        .send_text(sd.user_id, "after the block")
        .await
        .expect_err("the block must hold on node B");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");
}
