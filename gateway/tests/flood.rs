//! One client floods while 1,000 well-behaved clients chat: the flooder is
//! answered RATE_LIMITED and then disconnected (again and again as it
//! reconnects); the others are never refused nor disconnected, every one
//! of their messages is acked and delivered exactly once, and their
//! send→ack latency is reported for a quiet phase and a flooded phase
//! (printed, not asserted: CI never fails on a timing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ourchat_client::{Client, Push};
use ourchat_protocol::pb;
use ourchat_protocol::{codec, Body, Envelope};
use ourchat_testkit::start_node;

const CLIENTS: usize = 1_000;
const PHASE: Duration = Duration::from_secs(4);
/// Each well-behaved client sends one message per second.
const PERIOD: Duration = Duration::from_secs(1);

/// Sends one message a second to its partner until `stop`; returns the
/// send→ack latencies and whether any send was refused.
async fn chat(client: Arc<Client>, partner: i64, stop: Arc<AtomicBool>) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::new();
    let mut refused = 0;
    let mut next = Instant::now() + PERIOD.mul_f64(rand_unit(partner));
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next.into()).await;
        let scheduled = next;
        next += PERIOD;
        match client.send_text(partner, "hi").await {
            // From the scheduled time: a stall shows, it is not hidden.
            Ok(_) => latencies.push(scheduled.elapsed()),
            Err(_) => refused += 1,
        }
    }
    (latencies, refused)
}

fn rand_unit(seed: i64) -> f64 {
    (seed.wrapping_mul(2_654_435_761) as u64 % 1000) as f64 / 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs one phase of chatting; returns (latencies, refused sends) and
/// adds each client's acked sends to `acked`.
async fn phase(clients: &[(i64, Arc<Client>)], acked: &mut [usize]) -> (Vec<Duration>, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, (_, client))| {
            let partner = clients[i ^ 1].0;
            tokio::spawn(chat(client.clone(), partner, stop.clone()))
        })
        .collect();
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut refused = 0;
    for (index, task) in tasks.into_iter().enumerate() {
        let (mine, no) = task.await.expect("chat task");
        acked[index] += mine.len();
        latencies.extend(mine);
        refused += no;
    }
    latencies.sort_unstable();
    (latencies, refused)
}

fn report(name: &str, latencies: &[Duration]) {
    println!(
        "{name}: {} sends acked, send→ack p50 {:?} p99 {:?} max {:?}",
        latencies.len(),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
}

/// Floods until `stop`: connects, logs in, writes Send frames as fast as
/// the socket takes them; reconnects when closed. Returns disconnections.
async fn flood(
    addr: std::net::SocketAddr,
    token: String,
    victim: i64,
    stop: Arc<AtomicBool>,
) -> u64 {
    let disconnects = AtomicU64::new(0);
    let mut batch = Vec::new();
    for req_id in 1..=200u32 {
        let send = pb::SendMessageRequest {
            receiver_id: victim,
            content: "spam".into(),
            client_message_id: i64::from(req_id),
            ..Default::default()
        };
        batch.extend(codec::encode_to_vec(&Envelope::new(
            req_id,
            Body::Send(send),
        )));
    }
    while !stop.load(Ordering::Relaxed) {
        let Ok(client) = Client::connect(addr).await else {
            continue;
        };
        if client.login_token(&token).await.is_err() {
            continue;
        }
        // Until the server, judging this a flood, closes the socket.
        while !stop.load(Ordering::Relaxed) && client.send_raw(&batch).await.is_ok() {}
        disconnects.fetch_add(1, Ordering::Relaxed);
    }
    disconnects.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_is_cut_off_while_a_thousand_clients_chat_on() {
    let server = start_node!(2, "limits.max_connections_per_ip" => 2_000);
    let users = server.provision("chatter", CLIENTS + 1);
    let flooder_token = users[CLIENTS].1.clone();
    let mut clients = Vec::new();
    for (user_id, token) in &users[..CLIENTS] {
        let client = Client::connect(server.addr).await.expect("connect");
        client.login_token(token).await.expect("login");
        clients.push((*user_id, Arc::new(client)));
    }

    let mut acked = vec![0; CLIENTS];
    let (quiet, refused_quiet) = phase(&clients, &mut acked).await;
    report("1,000 clients, quiet", &quiet);

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = tokio::spawn(flood(
        server.addr,
        flooder_token,
        clients[0].0,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (flooded, refused_flooded) = phase(&clients, &mut acked).await;
    stop.store(true, Ordering::Relaxed);
    let disconnects = flooder.await.expect("flooder");
    report("1,000 clients, one flooding", &flooded);
    println!("flooder disconnected {disconnects} times");

    assert_eq!(
        (refused_quiet, refused_flooded),
        (0, 0),
        "well-behaved sends refused"
    );
    let expected = CLIENTS as f64 * PHASE.as_secs_f64() / PERIOD.as_secs_f64();
    assert!(
        quiet.len() as f64 >= expected * 0.9,
        "quiet sends {}",
        quiet.len()
    );
    assert!(
        flooded.len() as f64 >= expected * 0.9,
        "flooded sends {}",
        flooded.len()
    );
    assert!(server.metric("ourchat_limited_total{limit=\"flood_disconnect\"}") >= 1.0);
    assert!(disconnects >= 1);

    // Nobody well-behaved was kicked or closed, and each got every
    // message its partner sent, once (the flooder's victim gets spam too).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, (_, client)) in clients.iter().enumerate() {
        let partner = clients[i ^ 1].0;
        let mut from_partner = 0;
        while let Some(push) = client.next_push(Duration::from_millis(1)).await {
            match push {
                Push::Message(m) if m.sender_id == partner => from_partner += 1,
                Push::Message(_) => {}
                Push::Kicked(reason) => panic!("client {i} kicked: {reason}"),
                Push::Closed => panic!("client {i} disconnected"),
                _ => {}
            }
        }
        assert_eq!(
            from_partner,
            acked[i ^ 1],
            "client {i}: deliveries from its partner"
        );
        client.heartbeat().await.expect("still connected");
    }
}
