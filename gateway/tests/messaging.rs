//! 1:1 messaging end to end against a real `ourchat` process: delivery
//! across cores in both directions, order under concurrent senders,
//! resend dedupe, offline sync, multi-device fan-out and device kicks.

use std::collections::HashMap;
use std::time::Duration;

use ourchat_client::{Push, SeqTracker};
use ourchat_testkit::{device_of, start_node, user_on};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_spread_over_both_cores_chat_both_ways() {
    let server = start_node!(2);
    // 16 pairs = 32 connections: the kernel's SO_REUSEPORT hash puts them
    // on both cores (all on one has odds of 2^-31), and users and
    // conversations hash to both cores' partitions.
    let mut pairs = Vec::new();
    for i in 0..16 {
        let (a, sa) = user_on(server.addr, &format!("left{i}"), "d").await;
        let (b, sb) = user_on(server.addr, &format!("right{i}"), "d").await;
        pairs.push((a, sa, b, sb));
    }
    for (i, (a, sa, b, sb)) in pairs.iter().enumerate() {
        let there = a.send_text(sb.user_id, &format!("ping {i}")).await.unwrap();
        let back = b.send_text(sa.user_id, &format!("pong {i}")).await.unwrap();
        assert_eq!(there.conversation_id, back.conversation_id);
        assert_eq!((there.seq, back.seq), (1, 2));
        let got = b.next_message(WAIT).await.expect("push to b");
        assert_eq!(
            (got.content.as_str(), got.sender_id),
            (format!("ping {i}").as_str(), sa.user_id)
        );
        let got = a.next_message(WAIT).await.expect("push to a");
        assert_eq!(
            (got.content.as_str(), got.seq),
            (format!("pong {i}").as_str(), 2)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_keep_one_gapless_order() {
    let server = start_node!(2);
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    const EACH: usize = 150;
    let alice = std::sync::Arc::new(alice);
    let bob = std::sync::Arc::new(bob);
    let send_all = |from: std::sync::Arc<ourchat_client::Client>, to: i64, tag: &'static str| {
        tokio::spawn(async move {
            // Pipelined: every send is in flight before the first ack.
            let sends = (0..EACH).map(|i| {
                let from = from.clone();
                async move { from.send_text(to, &format!("{tag}{i}")).await }
            });
            futures::future::join_all(sends).await
        })
    };
    let (ra, rb) = tokio::join!(
        send_all(alice.clone(), sb.user_id, "a"),
        send_all(bob.clone(), sa.user_id, "b")
    );
    let mut seqs: Vec<i64> = ra
        .unwrap()
        .into_iter()
        .chain(rb.unwrap())
        .map(|r| r.expect("send acked").seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=2 * EACH as i64).collect::<Vec<_>>(),
        "seqs gapless and unique"
    );

    // Each side's pushes arrive in increasing seq order.
    for (client, count) in [(&alice, EACH), (&bob, EACH)] {
        let mut last = 0;
        for _ in 0..count {
            let m = client.next_message(WAIT).await.expect("push");
            assert!(m.seq > last, "push out of order: {} after {last}", m.seq);
            last = m.seq;
        }
    }

    // History holds all, and each sender's messages in the order sent.
    let mut all = Vec::new();
    let mut before = 0;
    loop {
        let page = alice.history(sb.user_id, before, 100).await.unwrap();
        all.extend(page.messages.iter().cloned());
        if !page.has_more {
            break;
        }
        before = page.messages.last().unwrap().seq;
    }
    all.reverse();
    assert_eq!(all.len(), 2 * EACH);
    for tag in ["a", "b"] {
        let order: Vec<usize> = all
            .iter()
            .filter_map(|m| m.content.strip_prefix(tag).and_then(|n| n.parse().ok()))
            .collect();
        assert_eq!(
            order,
            (0..EACH).collect::<Vec<_>>(),
            "sender {tag} reordered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_returns_the_same_seq_and_stores_once() {
    let server = start_node!(2);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    let text = ourchat_protocol::pb::MessageType::Text;
    let first = alice
        .send_message(sb.user_id, text, "once", 777)
        .await
        .unwrap();
    let again = alice
        .send_message(sb.user_id, text, "once", 777)
        .await
        .unwrap();
    assert_eq!(first, again);
    // Concurrent resends of one new id: all answered alike, stored once.
    let (x, y, z) = tokio::join!(
        alice.send_message(sb.user_id, text, "twice", 778),
        alice.send_message(sb.user_id, text, "twice", 778),
        alice.send_message(sb.user_id, text, "twice", 778)
    );
    let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
    assert_eq!((&x, &x), (&y, &z));
    assert_eq!(x.seq, first.seq + 1);
    let history = bob.history(alice.user_id(), 0, 50).await.unwrap();
    assert_eq!(history.messages.len(), 2);
    // Bob got one push per stored message.
    assert_eq!(bob.next_message(WAIT).await.unwrap().seq, 1);
    assert_eq!(bob.next_message(WAIT).await.unwrap().seq, 2);
    assert!(bob.next_message(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_syncs_everything_once_in_order() {
    let server = start_node!(2);
    let (_bob, sb) = user_on(server.addr, "bob", "phone").await;
    drop(_bob);
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (carol, _) = user_on(server.addr, "carol", "d").await;
    for i in 0..120 {
        alice.send_text(sb.user_id, &format!("a{i}")).await.unwrap();
        if i % 3 == 0 {
            carol.send_text(sb.user_id, &format!("c{i}")).await.unwrap();
        }
    }
    let bob = device_of(server.addr, "bob", "phone").await;
    let mut tracker = SeqTracker::default();
    // Small pages force several Sync round trips.
    let mut got = Vec::new();
    loop {
        let page = bob.sync_page(&tracker.cursors(), 25).await.unwrap();
        got.extend(page.messages.into_iter().filter(|m| tracker.accept(m)));
        if !page.has_more {
            break;
        }
    }
    let mut by_conv: HashMap<String, Vec<i64>> = HashMap::new();
    for m in &got {
        by_conv
            .entry(m.conversation_id.clone())
            .or_default()
            .push(m.seq);
    }
    assert_eq!(by_conv.len(), 2);
    let from_alice = by_conv
        .values()
        .find(|v| v.len() == 120)
        .expect("alice's 120");
    assert_eq!(*from_alice, (1..=120).collect::<Vec<_>>());
    assert!(by_conv.values().any(|v| *v == (1..=40).collect::<Vec<_>>()));
    let first = got.iter().find(|m| m.sender_id == sa.user_id).unwrap();
    assert_eq!(first.content, "a0");

    // Ack, reconnect: nothing left to sync on this device.
    for (conv, seq) in tracker.cursors() {
        bob.ack(&conv, seq).await.unwrap();
    }
    bob.heartbeat().await.unwrap();
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bob = device_of(server.addr, "bob", "phone").await;
    let page = bob.sync_page(&[], 100).await.unwrap();
    assert!(page.messages.is_empty(), "acked messages synced again");
    // Another device of bob's starts from zero.
    let tablet = device_of(server.addr, "bob", "tablet").await;
    let page = tablet.sync_page(&[], 500).await.unwrap();
    assert_eq!(page.messages.len(), 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_gets_it_including_the_senders_other_device() {
    let server = start_node!(2);
    let (alice_phone, _) = user_on(server.addr, "alice", "phone").await;
    let alice_laptop = device_of(server.addr, "alice", "laptop").await;
    let (bob_phone, sb) = user_on(server.addr, "bob", "phone").await;
    let bob_laptop = device_of(server.addr, "bob", "laptop").await;
    let ack = alice_phone
        .send_text(sb.user_id, "to all of you")
        .await
        .unwrap();
    for device in [&bob_phone, &bob_laptop, &alice_laptop] {
        let m = device
            .next_message(WAIT)
            .await
            .expect("every device gets it");
        assert_eq!((m.seq, m.content.as_str()), (ack.seq, "to all of you"));
        assert_eq!(m.sender_device, "phone");
    }
    // Not echoed to the sending device itself.
    assert!(alice_phone
        .next_message(Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_device_logging_in_again_kicks_the_old_connection() {
    let server = start_node!(2);
    let (old, sa) = user_on(server.addr, "alice", "phone").await;
    let new = device_of(server.addr, "alice", "phone").await;
    match old.next_push(WAIT).await {
        Some(Push::Kicked(reason)) => assert!(reason.contains("logged in again"), "{reason}"),
        other => panic!("expected a kick, got {other:?}"),
    }
    assert!(matches!(old.next_push(WAIT).await, Some(Push::Closed)));
    // The new connection is the one that receives.
    let (bob, _) = user_on(server.addr, "bob", "d").await;
    bob.send_text(sa.user_id, "still there?").await.unwrap();
    assert_eq!(
        new.next_message(WAIT).await.unwrap().content,
        "still there?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_login_resumes_the_session() {
    let server = start_node!(1);
    let (alice, session) = user_on(server.addr, "alice", "phone").await;
    drop(alice);
    let again = ourchat_client::Client::connect(server.addr).await.unwrap();
    let resumed = again.login_token(&session.token).await.unwrap();
    assert_eq!(
        (resumed.user_id, resumed.device_id.as_str()),
        (session.user_id, "phone")
    );
    assert!(again.heartbeat().await.unwrap() > 0);
}

/// Most sends are handed on by the reader itself; a send that must wait
/// (for an answer's room under the in-flight limit, or for the store to
/// say whether its receiver exists) takes the long way. Interleaved, the
/// two ways keep the order sent and answer each send once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_that_must_wait_keep_their_place_among_those_that_need_not() {
    let server = start_node!(1, "server.max_inflight_sends" => "2");
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    const SENDS: usize = 60;
    // Every third send goes to an id nobody has: refused, never sequenced.
    let nobody = sb.user_id + 1_000_000;
    let sends = (0..SENDS).map(|i| {
        let to = if i % 3 == 2 { nobody } else { sb.user_id };
        let alice = &alice;
        async move { (i, alice.send_text(to, &format!("m{i}")).await) }
    });
    let mut next_seq = 1;
    for (i, answer) in futures::future::join_all(sends).await {
        match answer {
            Ok(ack) if i % 3 != 2 => {
                assert_eq!(ack.seq, next_seq, "send {i} out of order");
                next_seq += 1;
            }
            Err(e) if i % 3 == 2 => {
                assert_eq!(e.code(), Some(ourchat_client::ErrorCode::NotFound), "{e}");
                assert!(e.to_string().contains("no such receiver"), "{e}");
            }
            other => panic!("send {i}: {other:?}"),
        }
    }
    let mut last = 0;
    for _ in 0..SENDS * 2 / 3 {
        let pushed = bob.next_message(WAIT).await.expect("push to bob");
        assert_eq!(pushed.seq, last + 1, "pushes in order, once each");
        assert_eq!(
            pushed.content,
            format!("m{}", (pushed.seq - 1) / 2 * 3 + (pushed.seq - 1) % 2)
        );
        last = pushed.seq;
    }
}
