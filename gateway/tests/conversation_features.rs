//! Message types with structured payloads, read receipts and unread
//! counts, the conversation list, recall and typing, against a real node:
//! happy paths and the authorization negatives (nobody marks read, recalls
//! or lists on behalf of someone else).

use std::time::Duration;

use ourchat_client::{ErrorCode, Push};
use ourchat_protocol::pb::{self, MessageType};
use ourchat_testkit::{device_of, start_node, user_on};

const WAIT: Duration = Duration::from_secs(10);

/// The next push that is not a message.
async fn next_event(client: &ourchat_client::Client) -> Push {
    loop {
        match client.next_push(WAIT).await {
            Some(Push::Message(_)) => continue,
            Some(other) => return other,
            None => panic!("no push within {WAIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_round_trips_with_its_payload() {
    let server = start_node!(2);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    let media = |url: &str, mime: &str| pb::MediaPayload {
        url: url.into(),
        size_bytes: 1234,
        mime: mime.into(),
        ..Default::default()
    };
    let image = pb::MediaPayload {
        width: 640,
        height: 480,
        ..media("https://cdn/a.png", "image/png")
    };
    let voice = pb::MediaPayload {
        duration_ms: 4200,
        ..media("https://cdn/a.ogg", "audio/ogg")
    };
    let video = pb::MediaPayload {
        duration_ms: 9000,
        width: 1280,
        height: 720,
        ..media("https://cdn/a.mp4", "video/mp4")
    };
    let file = pb::MediaPayload {
        file_name: "notes.pdf".into(),
        ..media("https://cdn/n", "application/pdf")
    };
    alice.send_text(sb.user_id, "hello").await.unwrap();
    for (kind, payload) in [
        (MessageType::Image, image.clone()),
        (MessageType::Voice, voice.clone()),
        (MessageType::Video, video.clone()),
        (MessageType::File, file.clone()),
    ] {
        alice
            .send_media(sb.user_id, kind, payload, "caption")
            .await
            .unwrap();
    }
    let here = pb::LocationPayload {
        latitude: 31.23,
        longitude: 121.47,
        title: "Bund".into(),
    };
    alice.send_location(sb.user_id, here.clone()).await.unwrap();

    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(bob.next_message(WAIT).await.expect("push"));
    }
    let kinds: Vec<i32> = got.iter().map(|m| m.message_type).collect();
    assert_eq!(kinds, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(got[1].media.as_deref(), Some(&image));
    assert_eq!(got[2].media.as_deref(), Some(&voice));
    assert_eq!(got[3].media.as_deref(), Some(&video));
    assert_eq!(got[4].media.as_deref(), Some(&file));
    assert_eq!(got[5].location.as_deref(), Some(&here));
    // Stored, not just relayed: history has the same payloads.
    let history = bob.history(alice.user_id(), 0, 10).await.unwrap();
    assert_eq!(history.messages[0].location.as_deref(), Some(&here));
    assert_eq!(history.messages[4].media.as_deref(), Some(&image));

    // Malformed payloads are refused with the field named, and nothing is stored.
    let bad = [
        (
            MessageType::Image,
            media("https://cdn/a.png", "image/png"),
            "media.width",
        ),
        (
            MessageType::Voice,
            media("https://cdn/a.ogg", "video/mp4"),
            "media.mime",
        ),
        (
            MessageType::File,
            media("javascript:alert(1)", "text/plain"),
            "media.url",
        ),
    ];
    for (kind, payload, field) in bad {
        let err = alice
            .send_media(sb.user_id, kind, payload, "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest));
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
    let nowhere = pb::LocationPayload {
        latitude: 123.0,
        longitude: 0.0,
        title: String::new(),
    };
    let err = alice.send_location(sb.user_id, nowhere).await.unwrap_err();
    assert!(err.to_string().contains("location.latitude"), "{err}");
    assert_eq!(
        bob.history(alice.user_id(), 0, 50)
            .await
            .unwrap()
            .messages
            .len(),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_unread_counts_and_the_conversation_list() {
    let server = start_node!(2);
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "phone").await;
    let bob_tablet = device_of(server.addr, "bob", "tablet").await;
    let (carol, _) = user_on(server.addr, "carol", "d").await;
    let mut last = None;
    for i in 0..5 {
        last = Some(alice.send_text(sb.user_id, &format!("a{i}")).await.unwrap());
    }
    let conv = last.unwrap().conversation_id;
    carol.send_text(sb.user_id, "newest").await.unwrap();

    let list = bob.conversations(10, None).await.unwrap();
    assert_eq!(list.conversations.len(), 2);
    assert_eq!(
        list.conversations[0].peer_id,
        carol.user_id(),
        "most recent first"
    );
    let with_alice = &list.conversations[1];
    assert_eq!(
        (with_alice.conversation_id.as_str(), with_alice.unread),
        (conv.as_str(), 5)
    );
    assert_eq!(with_alice.last_message.as_ref().unwrap().content, "a4");
    assert_eq!(with_alice.peer_read_seq, 5, "alice has read what she sent");
    // Paging: one at a time, then nothing.
    let first = bob.conversations(1, None).await.unwrap();
    assert!(first.has_more);
    let second = bob
        .conversations(1, first.conversations.last())
        .await
        .unwrap();
    assert_eq!(second.conversations[0].conversation_id, conv);
    assert!(!second.has_more);

    let read = bob.mark_read(&conv, 3).await.unwrap();
    assert_eq!((read.read_seq, read.unread), (3, 2));
    for device in [&alice, &bob_tablet] {
        match next_event(device).await {
            Push::ReadReceipt(r) => assert_eq!((r.reader_id, r.seq), (sb.user_id, 3)),
            other => panic!("expected a read receipt, got {other:?}"),
        }
    }
    // Never backwards, and never beyond the last message.
    assert_eq!(bob.mark_read(&conv, 1).await.unwrap().read_seq, 3);
    let beyond = bob.mark_read(&conv, 99).await.unwrap_err();
    assert_eq!(beyond.code(), Some(ErrorCode::BadRequest));
    let list = alice.conversations(10, None).await.unwrap();
    assert_eq!(list.conversations[0].peer_read_seq, 3);

    // Nobody reads on someone else's behalf.
    let foreign = carol.mark_read(&conv, 1).await.unwrap_err();
    assert_eq!(foreign.code(), Some(ErrorCode::Forbidden));
    assert!(carol
        .conversations(10, None)
        .await
        .unwrap()
        .conversations
        .iter()
        .all(|c| c.conversation_id != conv));
    let _ = sa;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_is_the_senders_within_the_window() {
    let server = start_node!(2, "server.recall_window_secs" => "2");
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let alice_laptop = device_of(server.addr, "alice", "laptop").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    let oops = alice.send_text(sb.user_id, "oops").await.unwrap();
    let fine = alice.send_text(sb.user_id, "fine").await.unwrap();
    let conv = oops.conversation_id.clone();

    let err = bob.recall(&conv, oops.seq).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "not the sender");
    let err = alice.recall(&conv, 999).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = alice.recall("si_1_2", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "not a member");

    alice.recall(&conv, oops.seq).await.unwrap();
    for device in [&bob, &alice_laptop] {
        match next_event(device).await {
            Push::Recalled(r) => assert_eq!((r.seq, r.recalled_by), (oops.seq, alice.user_id())),
            other => panic!("expected a recall, got {other:?}"),
        }
    }
    alice
        .recall(&conv, oops.seq)
        .await
        .expect("recalling twice is not an error");
    let history = bob.history(alice.user_id(), 0, 10).await.unwrap();
    let recalled = history.messages.iter().find(|m| m.seq == oops.seq).unwrap();
    assert!(recalled.recalled && recalled.content.is_empty());
    // Offline devices learn it by sync too.
    let bob_later = device_of(server.addr, "bob", "later").await;
    let synced = bob_later.sync_page(&[], 10).await.unwrap();
    assert!(synced
        .messages
        .iter()
        .any(|m| m.seq == oops.seq && m.recalled));

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let err = alice.recall(&conv, fine.seq).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::Forbidden),
        "window passed: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_peer_and_is_never_stored() {
    let server = start_node!(2);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    alice.typing(sb.user_id, true).await.unwrap();
    match next_event(&bob).await {
        Push::Typing(t) => assert_eq!((t.user_id, t.typing), (alice.user_id(), true)),
        other => panic!("expected typing, got {other:?}"),
    }
    alice.typing(sb.user_id, false).await.unwrap();
    assert!(matches!(next_event(&bob).await, Push::Typing(t) if !t.typing));
    assert!(bob
        .history(alice.user_id(), 0, 10)
        .await
        .unwrap()
        .messages
        .is_empty());
    assert!(bob
        .conversations(10, None)
        .await
        .unwrap()
        .conversations
        .is_empty());
    // Typing at nobody is refused.
    let err = alice
        .request(ourchat_protocol::Body::Typing(pb::Typing {
            peer_id: 424242,
            typing: true,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}
