//! Groups against a real node: roles decide who may change what, events are
//! pushed and stored, members see the conversation only from their join to
//! their removal, and one message to 1,000 members spread over both cores
//! reaches every online device exactly once while offline members sync it.

use std::collections::HashMap;
use std::time::Duration;

use ourchat_client::{Client, ErrorCode, Push, SeqTracker};
use ourchat_protocol::pb::{self, group_event::Kind, ChatMessage, MessageType};
use ourchat_protocol::Body;
use ourchat_testkit::{start_node, user_on};

const WAIT: Duration = Duration::from_secs(10);

/// The next pushed message in a group conversation (skipping other pushes).
async fn group_push(client: &Client, conversation: &str) -> ChatMessage {
    loop {
        match client.next_message(WAIT).await {
            Some(m) if m.conversation_id == conversation => return m,
            Some(_) => continue,
            None => panic!("no message in {conversation}"),
        }
    }
}

fn kind_of(message: &ChatMessage) -> Kind {
    let event = message.group_event.as_ref().expect("a group event");
    Kind::try_from(event.kind).expect("known kind")
}

fn code<T: std::fmt::Debug>(result: Result<T, ourchat_client::ClientError>) -> ErrorCode {
    result.unwrap_err().code().expect("a server error")
}

async fn history(client: &Client, conversation: &str) -> Result<Vec<i64>, ErrorCode> {
    let request = pb::HistoryRequest {
        conversation_id: conversation.into(),
        limit: 100,
        ..Default::default()
    };
    match client.history_of(request).await {
        Ok(page) => Ok(page.messages.iter().rev().map(|m| m.seq).collect()),
        Err(e) => Err(e.code().expect("a server error")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_events_and_visibility() {
    let server = start_node!(2);
    let (alice, sa) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    let (carol, sc) = user_on(server.addr, "carol", "d").await;
    let (dave, sd) = user_on(server.addr, "dave", "d").await;
    let (eve, _) = user_on(server.addr, "eve", "d").await;

    // The seed's request: owner_id must be the caller.
    let forged = pb::CreateGroupRequest {
        owner_id: sb.user_id,
        group_name: "forged".into(),
        ..Default::default()
    };
    match alice
        .request(ourchat_protocol::Body::CreateGroup(forged))
        .await
    {
        Ok(ourchat_protocol::Body::CreateGroupResp(r)) => {
            assert!(!r.success);
            assert_eq!(r.error.unwrap().code, ErrorCode::Forbidden as i32);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        code(alice.create_group("ghosts", &[987_654_321], "").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(alice.create_group("", &[sb.user_id], "").await),
        ErrorCode::BadRequest
    );

    let group = alice
        .create_group("friends", &[sb.user_id, sc.user_id], "our group")
        .await
        .unwrap();
    let conv = format!("sg_{group}");
    let created = group_push(&bob, &conv).await;
    assert_eq!((created.seq, kind_of(&created)), (1, Kind::Created));
    assert_eq!(created.group_event.as_ref().unwrap().name, "friends");
    group_push(&carol, &conv).await;
    let info = bob.group(group).await.unwrap();
    assert_eq!((info.member_count, info.owner_id), (3, sa.user_id));
    assert_eq!(info.my_role, pb::GroupRole::Member as i32);

    // Outsiders can neither send, read, nor look.
    assert_eq!(
        code(eve.send_group_text(group, "hi").await),
        ErrorCode::Forbidden
    );
    assert_eq!(history(&eve, &conv).await, Err(ErrorCode::Forbidden));
    assert_eq!(
        code(eve.group_members(group, 0, 10).await),
        ErrorCode::Forbidden
    );
    assert_eq!(code(eve.group(group).await), ErrorCode::Forbidden);
    assert_eq!(code(eve.leave_group(group).await), ErrorCode::Forbidden);
    assert_eq!(
        code(eve.send_group_text(group + 1, "x").await),
        ErrorCode::NotFound
    );

    // A message reaches every other member once, and the sender's ack
    // carries the group's seq.
    let ack = bob.send_group_text(group, "hello group").await.unwrap();
    assert_eq!((ack.conversation_id.as_str(), ack.seq), (conv.as_str(), 2));
    for member in [&alice, &carol] {
        let m = group_push(member, &conv).await;
        assert_eq!(
            (m.seq, m.content.as_str(), m.group_id),
            (2, "hello group", group)
        );
    }
    // Delivery acks: a non-member's is refused every time; a member's
    // first is checked against the store, the next from the core's
    // memory, and both move the cursor.
    for _ in 0..2 {
        let ack = pb::DeliveryAck {
            conversation_id: conv.clone(),
            seq: 2,
        };
        let refused = tokio::time::timeout(WAIT, eve.request(Body::DeliveryAck(ack)))
            .await
            .expect("an answer");
        assert_eq!(code(refused), ErrorCode::Forbidden);
    }
    let unseen = || async {
        let page = alice.sync_page(&[], 100).await.unwrap();
        page.messages
            .iter()
            .filter(|m| m.conversation_id == conv)
            .count()
    };
    assert_eq!(unseen().await, 2, "seqs 1 and 2 not acked yet");
    alice.ack(&conv, 1).await.unwrap();
    alice.ack(&conv, 2).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while unseen().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "acks not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Roles: members cannot manage; admins manage members only.
    assert_eq!(
        code(carol.add_members(group, &[sd.user_id]).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(bob.set_admin(group, sc.user_id, true).await),
        ErrorCode::Forbidden
    );
    alice.set_admin(group, sb.user_id, true).await.unwrap();
    let join_seq = bob.add_members(group, &[sd.user_id]).await.unwrap();
    let joined = group_push(&dave, &conv).await;
    assert_eq!((joined.seq, kind_of(&joined)), (join_seq, Kind::Joined));
    // Dave sees the conversation from his join on, not before.
    assert_eq!(history(&dave, &conv).await, Ok(vec![join_seq]));
    assert_eq!(
        code(bob.remove_members(group, &[sa.user_id]).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(carol.remove_members(group, &[sd.user_id]).await),
        ErrorCode::Forbidden
    );
    assert_eq!(code(alice.leave_group(group).await), ErrorCode::Forbidden);

    // Removing carol: she is told, cannot send, and keeps what she saw.
    let removed_seq = bob.remove_members(group, &[sc.user_id]).await.unwrap();
    loop {
        let m = group_push(&carol, &conv).await;
        if m.seq == removed_seq {
            assert_eq!(kind_of(&m), Kind::Removed);
            break;
        }
    }
    assert_eq!(
        code(carol.send_group_text(group, "still here?").await),
        ErrorCode::Forbidden
    );
    dave.send_group_text(group, "after carol").await.unwrap();
    let carol_sees = history(&carol, &conv).await.unwrap();
    assert_eq!(
        carol_sees.last(),
        Some(&removed_seq),
        "nothing after her removal"
    );
    assert!(carol.my_groups(0, 10).await.unwrap().groups.is_empty());
    assert_eq!(bob.my_groups(0, 10).await.unwrap().groups.len(), 1);

    // Members list, paged.
    let first = alice.group_members(group, 0, 2).await.unwrap();
    assert!(first.has_more);
    let rest = alice
        .group_members(group, first.members[1].user_id, 2)
        .await
        .unwrap();
    assert_eq!(first.members.len() + rest.members.len(), 3);
    let roles: HashMap<i64, i32> = first
        .members
        .iter()
        .chain(&rest.members)
        .map(|m| (m.user_id, m.role))
        .collect();
    assert_eq!(roles[&sa.user_id], pb::GroupRole::Owner as i32);
    assert_eq!(roles[&sb.user_id], pb::GroupRole::Admin as i32);

    // Edit, recall, read receipts and unread counts.
    let update = pb::UpdateGroupRequest {
        group_id: group,
        name: Some("renamed".into()),
        ..Default::default()
    };
    bob.group_change(ourchat_protocol::Body::UpdateGroup(update))
        .await
        .unwrap();
    assert_eq!(dave.group(group).await.unwrap().name, "renamed");
    let sent = dave.send_group_text(group, "oops").await.unwrap();
    assert_eq!(
        code(alice.recall(&conv, sent.seq).await),
        ErrorCode::Forbidden
    );
    assert_eq!(code(dave.recall(&conv, 1).await), ErrorCode::Forbidden);
    dave.recall(&conv, sent.seq).await.unwrap();
    let summary = alice.conversations(10, None).await.unwrap().conversations;
    let row = summary.iter().find(|c| c.conversation_id == conv).unwrap();
    assert_eq!(row.group_id, group);
    assert!(row.unread > 0);
    let read = alice.mark_read(&conv, row.last_seq).await.unwrap();
    assert_eq!(read.unread, 0);
    assert_eq!(code(eve.mark_read(&conv, 1).await), ErrorCode::Forbidden);

    // Ownership moves; the old owner may then leave; the new one dissolves.
    assert_eq!(
        code(bob.transfer_owner(group, sd.user_id).await),
        ErrorCode::Forbidden
    );
    alice.transfer_owner(group, sb.user_id).await.unwrap();
    assert_eq!(
        code(alice.dissolve_group(group).await),
        ErrorCode::Forbidden
    );
    alice.leave_group(group).await.unwrap();
    let dissolved_seq = bob.dissolve_group(group).await.unwrap();
    loop {
        let m = group_push(&dave, &conv).await;
        if m.seq == dissolved_seq {
            assert_eq!(kind_of(&m), Kind::Dissolved);
            break;
        }
    }
    assert_eq!(
        code(dave.send_group_text(group, "anyone?").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(bob.add_members(group, &[sa.user_id]).await),
        ErrorCode::NotFound
    );
    assert!(dave.my_groups(0, 10).await.unwrap().groups.is_empty());
    // History stays readable up to the end.
    assert_eq!(
        history(&dave, &conv).await.unwrap().last(),
        Some(&dissolved_seq)
    );

    // Clients cannot forge events.
    let forged_event = pb::SendMessageRequest {
        receiver_id: sa.user_id,
        message_type: MessageType::GroupEvent as i32,
        client_message_id: 1,
        ..Default::default()
    };
    assert_eq!(
        code(bob.send_request(forged_event).await),
        ErrorCode::BadRequest
    );
    let both = pb::SendMessageRequest {
        receiver_id: sa.user_id,
        group_id: group,
        content: "x".into(),
        client_message_id: 2,
        ..Default::default()
    };
    assert_eq!(code(bob.send_request(both).await), ErrorCode::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_members_fan_out_once() {
    const MEMBERS: usize = 1_000;
    const OFFLINE: usize = 200;
    let server = start_node!(2);
    let members = server.provision("member", MEMBERS);
    assert_eq!(members.len(), MEMBERS);
    // Everyone but the last OFFLINE members connects; the owner is member 0.
    let mut online = Vec::new();
    for (user_id, token) in &members[..MEMBERS - OFFLINE] {
        let client = Client::connect(server.addr).await.unwrap();
        client.login_token(token).await.unwrap();
        online.push((*user_id, client));
    }
    let owner = &online[0].1;
    let others: Vec<i64> = members[1..].iter().map(|(id, _)| *id).collect();
    let group = owner.create_group("town hall", &others, "").await.unwrap();
    let conv = format!("sg_{group}");
    assert_eq!(
        owner.group(group).await.unwrap().member_count,
        MEMBERS as u32
    );

    let ack = owner.send_group_text(group, "welcome, all").await.unwrap();
    assert_eq!(ack.seq, 2);
    // Every online member other than the owner's own connection gets the
    // event and the message, once each, in order.
    let receivers = online.iter().skip(1);
    let conv_ref = conv.as_str();
    let checks = receivers.map(|(user_id, client)| async move {
        let conv = conv_ref;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match client.next_push(WAIT).await {
                Some(Push::Message(m)) if m.conversation_id == conv => seen.push(m.seq),
                Some(Push::Message(_)) | Some(Push::Presence(_)) => {}
                other => panic!("member {user_id}: expected the message, got {other:?}"),
            }
        }
        assert_eq!(seen, vec![1, 2], "member {user_id}");
        // Nothing arrives twice.
        if let Some(Push::Message(m)) = client.next_push(Duration::from_millis(200)).await {
            assert_ne!(m.conversation_id, conv, "member {user_id} got a duplicate");
        }
    });
    futures::future::join_all(checks).await;
    assert!(owner
        .next_message(Duration::from_millis(200))
        .await
        .is_none());

    // Offline members log in later and sync both, once, with one unread.
    for (user_id, token) in &members[MEMBERS - OFFLINE..] {
        let client = Client::connect(server.addr).await.unwrap();
        client.login_token(token).await.unwrap();
        let mut tracker = SeqTracker::default();
        let synced = client.sync_all(&mut tracker).await.unwrap();
        let seqs: Vec<i64> = synced
            .iter()
            .filter(|m| m.conversation_id == conv)
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2], "offline member {user_id}");
        let row = client.conversations(10, None).await.unwrap().conversations;
        let row = row.iter().find(|c| c.conversation_id == conv).unwrap();
        assert_eq!(
            (row.last_seq, row.unread),
            (2, 1),
            "offline member {user_id}"
        );
    }
    let owner_row = owner.conversations(10, None).await.unwrap().conversations;
    assert_eq!(
        owner_row[0].unread, 0,
        "the sender has read their own message"
    );
}
