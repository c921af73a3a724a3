//! Connections moved to their user's core at login, against a real
//! two-core node: whichever core the kernel gave a connection, after its
//! login every message, push, second device and heartbeat reaches it, the
//! node counts it once, and logins with requests behind them in the same
//! write, or after a refused login, are served whole. The same with moves
//! turned off, so that both paths stay correct.

use std::time::Duration;

use ourchat_client::Client;
use ourchat_protocol::{codec, pb, Body, Envelope};
use ourchat_testkit::{device_of, start_node, user_on, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const USERS: usize = 24;

/// Logs `USERS` users in, each on its own connection, then has each send
/// to the next and checks every message arrives once, in order, and that
/// a second device gets its user's own sends and the sending one does not.
async fn everyone_reaches_everyone(server: &ServerProcess, prefix: &str) {
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(user_on(server.addr, &format!("{prefix}{i}"), "phone").await);
    }
    for round in 0..3 {
        for (i, (client, _)) in users.iter().enumerate() {
            let to = users[(i + 1) % USERS].1.user_id;
            client.send_text(to, &format!("{i}:{round}")).await.unwrap();
        }
    }
    for (i, (client, _)) in users.iter().enumerate() {
        let from = (i + USERS - 1) % USERS;
        for round in 0..3 {
            let got = client
                .next_message(WAIT)
                .await
                .expect("every message arrives");
            assert_eq!(got.content, format!("{from}:{round}"));
            assert_eq!(got.seq, round + 1, "in order, once");
        }
        client
            .heartbeat()
            .await
            .expect("a moved connection still answers");
    }

    // A second device hears its user's own sends; the sending one does not.
    let (phone, alice) = &users[0];
    let laptop: Client = device_of(server.addr, &format!("{prefix}0"), "laptop").await;
    let bob = users[1].1.user_id;
    phone.send_text(bob, "from the phone").await.unwrap();
    let echoed = laptop
        .next_message(WAIT)
        .await
        .expect("the other device hears it");
    assert_eq!(
        (echoed.content.as_str(), echoed.sender_id),
        ("from the phone", alice.user_id)
    );
    assert!(phone
        .next_message(Duration::from_millis(300))
        .await
        .is_none());
    let got = users[1].0.next_message(WAIT).await.expect("bob hears it");
    assert_eq!(got.content, "from the phone");

    let open = USERS + 1;
    assert_eq!(
        server.metric("ourchat_connections"),
        open as f64,
        "counted once"
    );
    assert_eq!(
        server.metric("ourchat_connections_accepted_total"),
        open as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_move_connections_to_their_users_cores_and_everything_still_reaches_them() {
    let server = start_node!(2);
    everyone_reaches_everyone(&server, "mover").await;
    // 25 connections on two cores: each landed on its user's core by
    // chance with odds of one half.
    assert!(server.metric("ourchat_connections_handed_over_total") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_moves_off_every_connection_stays_and_everything_still_reaches_it() {
    let server = start_node!(2, "server.move_to_user_core" => "false");
    everyone_reaches_everyone(&server, "stayer").await;
    assert_eq!(server.metric("ourchat_connections_handed_over_total"), 0.0);
}

fn frame(req_id: u32, body: Body) -> Vec<u8> {
    codec::encode_to_vec(&Envelope::new(req_id, body))
}

fn send_to(to: i64, text: &str, client_message_id: i64) -> Body {
    Body::Send(pb::SendMessageRequest {
        receiver_id: to,
        content: text.into(),
        client_message_id,
        ..Default::default()
    })
}

/// The next `count` frames the server writes.
async fn replies(stream: &mut TcpStream, count: usize) -> Vec<Envelope> {
    let decoder = codec::FrameDecoder::new(1 << 20);
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    while out.len() < count {
        while let Some(envelope) = decoder.decode(&mut buf).unwrap() {
            out.push(envelope);
        }
        if out.len() < count {
            let read = tokio::time::timeout(WAIT, stream.read_buf(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(n)) if n > 0),
                "{} of {count} replies",
                out.len()
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_written_with_the_login_and_logins_after_a_refusal_are_served_whole() {
    let server = start_node!(2);
    let tokens = server.provision("piped", 16);
    let (listener, listening) = user_on(server.addr, "listener", "d").await;

    // Half the sockets write a refused login, a good one and two sends in
    // one go; the other half wait for each answer before the next request
    // (so their good login, after a refusal, may move them). Wherever each
    // lands and whether it moves, both sends are answered with their seqs,
    // in order, after the login.
    for (n, (_, token)) in tokens.iter().enumerate() {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let bad = pb::LoginRequest {
            token: "not.a.token".into(),
            ..Default::default()
        };
        let good = pb::LoginRequest {
            token: token.clone(),
            ..Default::default()
        };
        let requests = [
            frame(1, Body::Login(bad)),
            frame(2, Body::Login(good)),
            frame(3, send_to(listening.user_id, &format!("{n}a"), 1)),
            frame(4, send_to(listening.user_id, &format!("{n}b"), 2)),
        ];
        let mut answers = Vec::new();
        if n % 2 == 0 {
            stream.write_all(&requests.concat()).await.unwrap();
            answers = replies(&mut stream, 4).await;
        } else {
            for request in &requests {
                stream.write_all(request).await.unwrap();
                answers.extend(replies(&mut stream, 1).await);
            }
        }
        let answered: Vec<_> = answers
            .iter()
            .map(|e| match &e.body {
                Some(Body::LoginResp(r)) => (e.req_id, r.success, 0),
                Some(Body::SendResp(r)) => (e.req_id, r.success, r.seq),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            answered,
            vec![(1, false, 0), (2, true, 0), (3, true, 1), (4, true, 2)],
            "socket {n}"
        );
    }
    for n in 0..tokens.len() {
        for part in ["a", "b"] {
            let got = listener
                .next_message(WAIT)
                .await
                .expect("every send arrives");
            assert_eq!(got.content, format!("{n}{part}"));
        }
    }
}
