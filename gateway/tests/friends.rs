//! Friends against a real node: requests are pushed and listed, answered
//! both ways, crossed requests befriend, deletion is mutual, search finds by
//! prefix without leaking contact fields, and blocking refuses a user's
//! messages and requests until unblocked.

use std::time::Duration;

use ourchat_client::{Client, ErrorCode, Push};
use ourchat_protocol::pb::{self, FriendEventKind};
use ourchat_testkit::{start_node, user_on};

const WAIT: Duration = Duration::from_secs(10);

async fn friend_event(client: &Client) -> pb::FriendEvent {
    loop {
        match client.next_push(WAIT).await {
            Some(Push::Friend(event)) => return event,
            Some(Push::Closed) | None => panic!("no friend event"),
            Some(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_answers_crossing_and_deletion() {
    let server = start_node!(2);
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    let (carol, sc) = user_on(server.addr, "carol", "d").await;

    alice
        .request_friend(sb.user_id, "hi, it's alice")
        .await
        .unwrap();
    let event = friend_event(&bob).await;
    assert_eq!(event.kind, FriendEventKind::FriendRequested as i32);
    assert_eq!(
        (event.from_user_id, event.note.as_str()),
        (sa.user_id, "hi, it's alice")
    );
    let listed = bob.friends().await.unwrap();
    assert_eq!(listed.incoming.len(), 1);
    assert_eq!(alice.friends().await.unwrap().outgoing.len(), 1);

    bob.answer_friend(sa.user_id, true).await.unwrap();
    assert_eq!(
        friend_event(&alice).await.kind,
        FriendEventKind::FriendAccepted as i32
    );
    let friends = alice.friends().await.unwrap();
    assert_eq!(friends.friends.len(), 1);
    assert_eq!(friends.friends[0].username, "bob");
    assert!(friends.friends[0].online, "bob is connected");
    assert!(friends.incoming.is_empty() && friends.outgoing.is_empty());
    let err = alice.request_friend(sb.user_id, "").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict));

    // Rejection, and answering what nobody asked.
    carol.request_friend(sa.user_id, "").await.unwrap();
    alice.answer_friend(sc.user_id, false).await.unwrap();
    assert_eq!(
        friend_event(&carol).await.kind,
        FriendEventKind::FriendRejected as i32
    );
    let err = alice.answer_friend(sc.user_id, true).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::NotFound),
        "nothing pending any more"
    );
    let err = bob.answer_friend(sc.user_id, true).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::NotFound),
        "carol never asked bob"
    );

    // Crossed requests: asking someone who already asked you befriends.
    carol.request_friend(sb.user_id, "").await.unwrap();
    bob.request_friend(sc.user_id, "").await.unwrap();
    assert!(bob
        .friends()
        .await
        .unwrap()
        .friends
        .iter()
        .any(|f| f.user_id == sc.user_id));

    // Deletion is mutual and announced.
    bob.delete_friend(sa.user_id).await.unwrap();
    loop {
        let event = friend_event(&alice).await;
        if event.kind == FriendEventKind::FriendDeleted as i32 {
            break;
        }
    }
    assert!(alice.friends().await.unwrap().friends.is_empty());
    assert_eq!(
        bob.delete_friend(sa.user_id).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        alice
            .request_friend(alice.user_id(), "")
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        alice.request_friend(987654, "").await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_refuses_messages_and_requests_until_unblocked() {
    let server = start_node!(2);
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    alice.request_friend(sb.user_id, "").await.unwrap();
    bob.answer_friend(sa.user_id, true).await.unwrap();
    // The conversation is live on its owner core before the block.
    alice.send_text(sb.user_id, "before").await.unwrap();

    bob.block(sa.user_id, true).await.unwrap();
    let err = alice.send_text(sb.user_id, "after").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = bob.send_text(sa.user_id, "me neither").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::Forbidden),
        "a block stops both directions"
    );
    let err = alice
        .request_friend(sb.user_id, "please")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert!(
        alice.friends().await.unwrap().friends.is_empty(),
        "blocking ends the friendship"
    );
    assert_eq!(bob.friends().await.unwrap().blocked, vec![sa.user_id]);

    // The block survives a restart of the sequencer state: a fresh node.
    drop(alice);
    drop(bob);
    let mut server = server;
    server.restart();
    let alice = ourchat_testkit::device_of(server.addr, "alice", "d").await;
    let bob = ourchat_testkit::device_of(server.addr, "bob", "d").await;
    let err = alice
        .send_text(sb.user_id, "after restart")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));

    bob.block(sa.user_id, false).await.unwrap();
    alice.send_text(sb.user_id, "friends again?").await.unwrap();
    assert_eq!(
        bob.block(sa.user_id, false).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    let history = bob.history(sa.user_id, 0, 10).await.unwrap();
    let texts: Vec<&str> = history
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(
        texts,
        vec!["friends again?", "before"],
        "nothing sent while blocked was stored"
    );
}

/// A conversation with no message yet has its head answered from the
/// store's memory, blocks included: the first send after a block is
/// refused, before and after a restart, and goes through once unblocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_before_any_message_refuses_the_first_send() {
    let mut server = start_node!(2);
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    bob.block(sa.user_id, true).await.unwrap();
    let err = alice.send_text(sb.user_id, "first").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    drop((alice, bob));
    server.restart();
    let alice = ourchat_testkit::device_of(server.addr, "alice", "d").await;
    let bob = ourchat_testkit::device_of(server.addr, "bob", "d").await;
    let err = bob.send_text(sa.user_id, "first").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    bob.block(sa.user_id, false).await.unwrap();
    alice.send_text(sb.user_id, "hello").await.unwrap();
    let history = bob.history(sa.user_id, 0, 10).await.unwrap();
    assert_eq!(
        history.messages.len(),
        1,
        "nothing sent while blocked was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_friend_limit_is_enforced_on_both_sides() {
    let server = start_node!(2, "auth.max_friends" => "1");
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    let (carol, sc) = user_on(server.addr, "carol", "d").await;
    alice.request_friend(sb.user_id, "").await.unwrap();
    bob.answer_friend(sa.user_id, true).await.unwrap();
    // Alice is full: carol's request may wait, but cannot be accepted,
    // whoever accepts and however (answer or crossed request).
    carol.request_friend(sa.user_id, "").await.unwrap();
    let err = alice.answer_friend(sc.user_id, true).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict));
    assert!(err.to_string().contains("friend limit"), "{err}");
    let err = alice.request_friend(sc.user_id, "").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict));
    assert_eq!(carol.friends().await.unwrap().friends.len(), 0);
    // Rejecting is always possible.
    alice.answer_friend(sc.user_id, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_is_by_prefix_paged_and_keeps_contacts_private() {
    let server = start_node!(2);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    for name in ["zed_one", "zed_two", "zed_three", "zebra"] {
        let (client, _) = user_on(server.addr, name, "d").await;
        if name == "zebra" {
            client
                .update_profile(pb::UpdateProfileRequest {
                    phone: Some("+1555123".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    let page = alice.search_users("zed_", 2, 0).await.unwrap();
    assert_eq!(page.users.len(), 2);
    assert!(page.has_more);
    let rest = alice
        .search_users("zed_", 2, page.users[1].user_id)
        .await
        .unwrap();
    assert_eq!(rest.users.len(), 1);
    assert!(!rest.has_more);
    // By phone, without showing the phone; LIKE wildcards are literal.
    let by_phone = alice.search_users("+1555", 10, 0).await.unwrap();
    assert_eq!(by_phone.users.len(), 1);
    assert_eq!(by_phone.users[0].username, "zebra");
    assert!(by_phone.users[0].phone.is_empty());
    assert!(alice
        .search_users("%", 10, 0)
        .await
        .unwrap()
        .users
        .is_empty());
    assert_eq!(
        alice.search_users("  ", 10, 0).await.unwrap_err().code(),
        Some(ErrorCode::BadRequest)
    );
}
