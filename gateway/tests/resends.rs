//! A resend of any acked message, however old, gets the first send's seq
//! and id back and stores nothing, before and after `kill -9`; the same id
//! with another payload is refused, not retryable; resends take no seq, so
//! the conversation stays gapless.

use futures::future::join_all;
use ourchat_client::{Client, ErrorCode, SendAck};
use ourchat_protocol::pb::MessageType;
use ourchat_testkit::{device_of, start_node, user_on};

const SENDS: i64 = 1_000;

async fn resend(alice: &Client, bob: i64, cmid: i64) -> SendAck {
    alice
        .send_message(bob, MessageType::Text, &format!("text {cmid}"), cmid)
        .await
        .unwrap_or_else(|e| panic!("resend of {cmid}: {e}"))
}

/// The first (1), a middle and the last client id get their first acks
/// back; another payload under an old and under a recent id is refused.
async fn check_resends(alice: &Client, bob: i64, first_acks: &[SendAck]) {
    for cmid in [1, SENDS / 2, SENDS] {
        let again = resend(alice, bob, cmid).await;
        assert_eq!(again, first_acks[cmid as usize - 1], "client id {cmid}");
    }
    for cmid in [1, SENDS] {
        let reused = alice
            .send_message(bob, MessageType::Text, "something else", cmid)
            .await
            .unwrap_err();
        assert_eq!(reused.code(), Some(ErrorCode::Conflict), "{reused}");
        let ourchat_client::ClientError::Server(error) = &reused else {
            panic!("{reused}")
        };
        assert!(!error.retryable, "a reused id must not be retried as is");
        assert!(error.message.contains("new id"), "{}", error.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_of_any_acked_message_gets_its_first_seq_before_and_after_kill_9() {
    let mut server = start_node!(2,
        "limits.user_sends_per_sec" => 100_000,
        "limits.user_send_burst" => 100_000,
        "limits.frames_per_sec" => 100_000,
        "limits.frame_burst" => 100_000,
    );
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (_bob, bob) = user_on(server.addr, "bob", "d").await;
    let bob = bob.user_id;
    let mut first_acks = Vec::new();
    for chunk in (1..=SENDS).collect::<Vec<_>>().chunks(100) {
        let acks = join_all(chunk.iter().map(|&cmid| {
            let alice = &alice;
            async move {
                let text = format!("text {cmid}");
                alice
                    .send_message(bob, MessageType::Text, &text, cmid)
                    .await
            }
        }))
        .await;
        first_acks.extend(acks.into_iter().map(Result::unwrap));
    }
    let seqs: Vec<i64> = first_acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (1..=SENDS).collect::<Vec<_>>());

    check_resends(&alice, bob, &first_acks).await;
    let next = alice.send_text(bob, "new").await.unwrap();
    assert_eq!(next.seq, SENDS + 1, "resends took no seq");

    server.kill9();
    server.restart();
    let alice = device_of(server.addr, "alice", "d").await;
    check_resends(&alice, bob, &first_acks).await;
    let next = alice.send_text(bob, "new after restart").await.unwrap();
    assert_eq!(next.seq, SENDS + 2);

    // Stored once each, gapless.
    let mut stored = Vec::new();
    let mut before = 0;
    loop {
        let page = alice.history(bob, before, 100).await.unwrap();
        stored.extend(page.messages.iter().map(|m| m.seq));
        before = page.messages.last().map_or(0, |m| m.seq);
        if !page.has_more {
            break;
        }
    }
    stored.reverse();
    assert_eq!(stored, (1..=SENDS + 2).collect::<Vec<_>>());
}
