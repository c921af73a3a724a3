//! Presence against a real node: per-device online/away aggregated per user,
//! changes pushed to friends (only), a heartbeat timeout marks a device
//! offline, and queries answer only for friends and oneself.

use std::time::Duration;

use ourchat_client::{Client, Push};
use ourchat_protocol::pb::{self, PresenceState};
use ourchat_testkit::{device_of, start_node, user_on};

const WAIT: Duration = Duration::from_secs(10);

async fn presence_push(client: &Client, user_id: i64) -> PresenceState {
    loop {
        match client.next_push(WAIT).await {
            Some(Push::Presence(p)) if p.user_id == user_id => {
                return PresenceState::try_from(p.state).unwrap();
            }
            Some(Push::Closed) | None => panic!("no presence push"),
            Some(_) => continue,
        }
    }
}

async fn befriend(a: &Client, b: &Client) {
    a.request_friend(b.user_id(), "").await.unwrap();
    b.answer_friend(a.user_id(), true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_see_online_away_and_offline_aggregated_over_devices() {
    let server = start_node!(2);
    let (alice, sa) = user_on(server.addr, "alice", "phone").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    let (stranger, _) = user_on(server.addr, "stranger", "d").await;
    befriend(&alice, &bob).await;

    // Queries: friends and self only.
    let seen = bob
        .presence(&[sa.user_id, stranger.user_id(), sb.user_id])
        .await
        .unwrap();
    let ids: Vec<i64> = seen.iter().map(|p| p.user_id).collect();
    assert_eq!(
        ids,
        vec![sa.user_id, sb.user_id],
        "the stranger is left out"
    );
    assert_eq!(seen[0].state, PresenceState::Online as i32);

    // A second device keeps alice online when one goes away or leaves.
    let laptop = device_of(server.addr, "alice", "laptop").await;
    alice.set_presence(PresenceState::Away).await.unwrap();
    let now = bob.presence(&[sa.user_id]).await.unwrap();
    assert_eq!(
        (now[0].state, now[0].devices_online),
        (PresenceState::Online as i32, 2)
    );
    laptop.set_presence(PresenceState::Away).await.unwrap();
    assert_eq!(presence_push(&bob, sa.user_id).await, PresenceState::Away);
    laptop.set_presence(PresenceState::Online).await.unwrap();
    assert_eq!(presence_push(&bob, sa.user_id).await, PresenceState::Online);
    drop(laptop);
    drop(alice);
    // Depending on which disconnect lands first, an Away (only the away
    // phone left) may come before Offline.
    let mut state = presence_push(&bob, sa.user_id).await;
    if state == PresenceState::Away {
        state = presence_push(&bob, sa.user_id).await;
    }
    assert_eq!(state, PresenceState::Offline);
    let gone = bob.presence(&[sa.user_id]).await.unwrap();
    assert!(gone[0].last_seen_ms > 0, "last seen is kept");
    // Strangers are never told.
    assert!(stranger
        .next_push(Duration::from_millis(300))
        .await
        .is_none());
    // Back online is pushed too.
    let _alice = device_of(server.addr, "alice", "phone").await;
    assert_eq!(presence_push(&bob, sa.user_id).await, PresenceState::Online);
    let err = bob
        .request(ourchat_protocol::Body::SetPresence(
            pb::SetPresenceRequest {
                state: PresenceState::Offline as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ourchat_client::ErrorCode::BadRequest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_timeout_marks_the_device_offline() {
    let server = start_node!(
        2,
        "server.heartbeat_secs" => "1",
        "server.idle_timeout_secs" => "2",
    );
    let (silent, ss) = user_on(server.addr, "silent", "d").await;
    let (watcher, _) = user_on(server.addr, "watcher", "d").await;
    befriend(&silent, &watcher).await;
    let keep_alive = tokio::spawn(async move {
        for _ in 0..12 {
            if watcher.heartbeat().await.is_err() {
                break;
            }
            if let Some(Push::Presence(p)) = watcher.next_push(Duration::from_millis(400)).await {
                if p.user_id == ss.user_id && p.state == PresenceState::Offline as i32 {
                    return true;
                }
            }
        }
        false
    });
    assert!(
        keep_alive.await.unwrap(),
        "the silent device was not reported offline"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_hear_a_burst_of_changes_in_order() {
    let server = start_node!(2);
    let (alice, sa) = user_on(server.addr, "alice", "phone").await;
    let (bob, _) = user_on(server.addr, "bob", "d").await;
    befriend(&alice, &bob).await;
    // Pipelined: the node applies them in order, but the pushes they
    // cause race each other unless it keeps them in order too.
    let sets = (0..100).map(|round| {
        let state = if round % 2 == 0 {
            PresenceState::Away
        } else {
            PresenceState::Online
        };
        alice.set_presence(state)
    });
    for done in futures::future::join_all(sets).await {
        done.unwrap();
    }
    let mut heard = Vec::new();
    while let Some(push) = bob.next_push(Duration::from_millis(500)).await {
        if let Push::Presence(p) = push {
            if p.user_id == sa.user_id {
                heard.push(PresenceState::try_from(p.state).unwrap());
            }
        }
    }
    assert_eq!(heard.len(), 100, "every change is pushed once");
    let flips = heard.windows(2).filter(|pair| pair[0] == pair[1]).count();
    assert_eq!(flips, 0, "changes alternate as they were made: {heard:?}");
    assert_eq!(heard.last(), Some(&PresenceState::Online));
}
