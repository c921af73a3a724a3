//! The Rust SDK's `Resilient` client survives a node killed with -9 under
//! it: a sender and a receiver keep going through the restart without code
//! of their own, every message arrives exactly once and in order, and the
//! seqs stay gapless (a send cut off mid-flight is resent under the same
//! client id and answered with its first seq).

use std::time::Duration;

use ourchat_client::{Backoff, Resilient};
use ourchat_testkit::{start_node, user_on};

const MESSAGES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sdk_rides_through_a_kill_9_and_loses_nothing() {
    let mut server = start_node!(2);
    let (_, alice) = user_on(server.addr, "alice", "phone").await;
    let (_, bob) = user_on(server.addr, "bob", "phone").await;
    let endpoints = vec![server.addr.to_string()];
    let backoff = Backoff {
        first: Duration::from_millis(50),
        max: Duration::from_millis(500),
        give_up_after: Duration::from_secs(60),
    };
    let sender = Resilient::connect(endpoints.clone(), None, alice.token, backoff.clone())
        .await
        .unwrap();
    let receiver = Resilient::connect(endpoints, None, bob.token, backoff)
        .await
        .unwrap();

    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let receiving = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < MESSAGES {
            match receiver.next_message(Duration::from_secs(60)).await {
                Ok(Some(message)) => {
                    got.push((message.seq, message.content));
                    let _ = progress_tx.send(got.len());
                }
                Ok(None) => break,
                Err(error) => panic!("receiver gave up: {error}"),
            }
        }
        got
    });
    let bob_id = bob.user_id;
    let sending = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 0..MESSAGES {
            let ack = sender.send_text(bob_id, &format!("m{i}")).await;
            seqs.push(ack.unwrap_or_else(|e| panic!("send {i}: {e}")).seq);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seqs
    });

    // Kill the node once about half has arrived, with sends in flight.
    while let Some(count) = progress.recv().await {
        if count >= MESSAGES / 2 {
            break;
        }
    }
    server.restart();

    let seqs = tokio::time::timeout(Duration::from_secs(90), sending)
        .await
        .expect("the sender finished")
        .unwrap();
    assert_eq!(
        seqs,
        (1..=MESSAGES as i64).collect::<Vec<_>>(),
        "gapless, once each"
    );
    let got = tokio::time::timeout(Duration::from_secs(90), receiving)
        .await
        .expect("the receiver finished")
        .unwrap();
    let expected: Vec<(i64, String)> = (0..MESSAGES)
        .map(|i| (i as i64 + 1, format!("m{i}")))
        .collect();
    assert_eq!(got, expected, "every message once, in order");
}
