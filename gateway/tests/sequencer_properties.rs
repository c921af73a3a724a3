//! The sequencer's promise as a property, against a real node: under any
//! interleaving of concurrent sends from both sides of a conversation,
//! resends of earlier messages (same client message id), and restarts
//! (kill -9 or graceful) in between, every distinct message gets exactly
//! one seq, a resend gets the seq of its first send, and the stored seqs
//! are exactly 1..=n with no gap and no reuse.

use std::collections::HashMap;

use ourchat_client::{new_client_message_id, Client};
use ourchat_protocol::pb::MessageType;
use ourchat_testkit::{start_node, TEST_PASSWORD};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Both sides send at once: `a` messages from alice, `b` from bob.
    Burst { a: usize, b: usize },
    /// Resend the message at this index (mod the count) of those acked.
    Resend(usize),
    /// Restart the node: kill -9, or SIGTERM when `graceful`.
    Restart { graceful: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..6, 0usize..6).prop_map(|(a, b)| Op::Burst { a, b }),
        3 => any::<usize>().prop_map(Op::Resend),
        1 => any::<bool>().prop_map(|graceful| Op::Restart { graceful }),
    ]
}

struct Sent {
    from: usize,
    cmid: i64,
    text: String,
    seq: i64,
}

async fn login(addr: std::net::SocketAddr, name: &str) -> Client {
    let client = Client::connect(addr).await.expect("connect");
    client.login(name, TEST_PASSWORD, "d").await.expect("login");
    client
}

async fn send(client: &Client, to: i64, cmid: i64, text: &str) -> i64 {
    client
        .send_message(to, MessageType::Text, text, cmid)
        .await
        .expect("send acked")
        .seq
}

fn check(ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut server = start_node!(2, "storage.durability" => "normal");
    runtime.block_on(async {
        let mut ids = [0i64; 2];
        for (slot, name) in ["alice", "bob"].iter().enumerate() {
            let client = Client::connect(server.addr).await.expect("connect");
            ids[slot] = client
                .register(name, TEST_PASSWORD)
                .await
                .expect("register");
        }
        let mut clients = [
            login(server.addr, "alice").await,
            login(server.addr, "bob").await,
        ];
        let mut sent: Vec<Sent> = Vec::new();
        let mut counter = 0;
        for op in ops {
            match op {
                Op::Burst { a, b } => {
                    let mut jobs = Vec::new();
                    for (from, count) in [(0usize, a), (1, b)] {
                        for _ in 0..count {
                            counter += 1;
                            jobs.push((from, new_client_message_id(), format!("m{counter}")));
                        }
                    }
                    let seqs = futures::future::join_all(jobs.iter().map(|(from, cmid, text)| {
                        send(&clients[*from], ids[1 - from], *cmid, text)
                    }))
                    .await;
                    for ((from, cmid, text), seq) in jobs.into_iter().zip(seqs) {
                        sent.push(Sent {
                            from,
                            cmid,
                            text,
                            seq,
                        });
                    }
                }
                Op::Resend(pick) if !sent.is_empty() => {
                    let first = &sent[pick % sent.len()];
                    let again = send(
                        &clients[first.from],
                        ids[1 - first.from],
                        first.cmid,
                        &first.text,
                    )
                    .await;
                    assert_eq!(again, first.seq, "a resend gets its first seq");
                }
                Op::Resend(_) => {}
                Op::Restart { graceful } => {
                    if graceful {
                        server.terminate();
                    }
                    server.restart();
                    clients = [
                        login(server.addr, "alice").await,
                        login(server.addr, "bob").await,
                    ];
                }
            }
        }
        // Unique seqs, gapless from 1, each holding its own message.
        let by_seq: HashMap<i64, &Sent> = sent.iter().map(|s| (s.seq, s)).collect();
        assert_eq!(by_seq.len(), sent.len(), "a seq was handed out twice");
        let mut stored = Vec::new();
        let mut before = 0;
        loop {
            let page = clients[0]
                .history(ids[1], before, 100)
                .await
                .expect("history");
            stored.extend(
                page.messages
                    .iter()
                    .map(|m| (m.seq, m.content.clone(), m.client_message_id)),
            );
            match (page.has_more, page.messages.last()) {
                (true, Some(last)) => before = last.seq,
                _ => break,
            }
        }
        stored.sort_unstable();
        let seqs: Vec<i64> = stored.iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(
            seqs,
            (1..=sent.len() as i64).collect::<Vec<_>>(),
            "gapless from 1"
        );
        for (seq, text, cmid) in stored {
            let mine = by_seq.get(&seq).expect("every stored seq was acked");
            assert_eq!((&text, cmid), (&mine.text, mine.cmid), "seq {seq}");
        }
    });
}

proptest! {
    // Each case starts a node and may restart it: a few cases, many ops.
    #![proptest_config(ProptestConfig { cases: 6, max_shrink_iters: 8, ..ProptestConfig::default() })]

    #[test]
    fn seqs_are_gapless_and_unique_under_sends_resends_and_restarts(
        ops in proptest::collection::vec(op(), 1..25)
    ) {
        check(ops);
    }
}
