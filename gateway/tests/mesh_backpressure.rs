//! The cores' mesh under more traffic than it holds: with room for two
//! messages between each pair of cores, 200 clients on both cores send
//! bursts of 1:1 messages across them. Each core's inbox handles what the
//! other sends while routing deliveries and answers back; were an inbox
//! to wait for room in a full channel, the two would wait on each other
//! for ever. Every send must be answered and every message delivered once.

use std::sync::Arc;
use std::time::Duration;

use ourchat_client::{Client, Push};
use ourchat_testkit::start_node;

const CLIENTS: usize = 200;
const BURST: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mesh_slows_senders_down_and_never_stalls_the_cores() {
    let server = start_node!(2, "server.mesh_capacity" => 2);
    let users = server.provision("meshed", CLIENTS);
    let mut clients = Vec::new();
    for (user_id, token) in &users {
        let client = Client::connect(server.addr).await.expect("connect");
        client.login_token(token).await.expect("login");
        clients.push((*user_id, Arc::new(client)));
    }
    let mut sends = Vec::new();
    for (i, (_, client)) in clients.iter().enumerate() {
        let partner = clients[(i + CLIENTS / 2) % CLIENTS].0;
        for n in 0..BURST {
            let client = client.clone();
            sends.push(tokio::spawn(async move {
                client.send_text(partner, &format!("burst {n}")).await
            }));
        }
    }
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        let mut acked = 0;
        for send in sends {
            match send.await.expect("send task") {
                Ok(_) => acked += 1,
                Err(error) => panic!("a send failed: {error}"),
            }
        }
        acked
    })
    .await
    .expect("every send answered within a minute: the cores did not stall");
    assert_eq!(answered, CLIENTS * BURST, "every send acked");
    assert!(
        server.metric("ourchat_mesh_overflows_total") > 0.0,
        "the mesh was full at times (else this tests nothing)"
    );

    for (i, (_, client)) in clients.iter().enumerate() {
        let partner = clients[(i + CLIENTS / 2) % CLIENTS].0;
        let mut from_partner = 0;
        while from_partner < BURST {
            match client.next_push(Duration::from_secs(10)).await {
                Some(Push::Message(m)) if m.sender_id == partner => from_partner += 1,
                Some(Push::Message(m)) => panic!("client {i}: a message from {}", m.sender_id),
                Some(Push::Closed) | None => {
                    panic!("client {i}: {from_partner} of {BURST} delivered")
                }
                Some(_) => {}
            }
        }
    }
    // Nothing more: no message was pushed twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, (_, client)) in clients.iter().enumerate() {
        while let Some(push) = client.next_push(Duration::from_millis(1)).await {
            if let Push::Message(m) = push {
                panic!("client {i}: pushed twice: seq {}", m.seq);
            }
        }
    }
}
