//! Redis sequencing and the Kafka log against the real engines
//! (`make test` starts Redis and tansu; see `scripts/engines.sh`).

use std::time::{Duration, Instant};

use ourchat_storage::kafka::{self, MessageLog};
use ourchat_storage::redis::{RedisSeq, SendBudget, SeqGrant, SeqRequest};
use ourchat_storage::ChatMessage;
use rdkafka::consumer::Consumer;

fn engine(name: &str, test: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var("OURCHAT_REQUIRE_ENGINES").is_err(),
                "{test}: {name} is not set but OURCHAT_REQUIRE_ENGINES is"
            );
            eprintln!("{test}: {name} not set; skipped");
            None
        }
    }
}

fn request(sender_id: i64, client_message_id: i64) -> SeqRequest {
    SeqRequest {
        sender_id,
        client_message_id,
        server_msg_id: 1000 + client_message_id,
        sent_at_ms: 77,
        fingerprint: 5,
        budgeted: false,
    }
}

/// Budgets generous enough never to refuse.
const UNLIMITED: SendBudget = SendBudget {
    per_sec: 1e9,
    burst: 1e9,
};

#[test]
fn redis_hands_out_each_seq_once_and_answers_resends_with_the_first() {
    let Some(url) = engine("OURCHAT_TEST_REDIS", "redis_seq") else {
        return;
    };
    let conv = format!("si_1_{}", std::process::id());
    let mut seq = RedisSeq::new(&url, 60).unwrap();
    seq.ping().unwrap();
    // The store's last seq is the floor of a counter Redis does not have.
    let grants = seq
        .allocate(
            &conv,
            10,
            &[request(1, 1), request(1, 2), request(1, 1)],
            UNLIMITED,
        )
        .unwrap();
    assert_eq!(grants[0], SeqGrant::New { seq: 11 });
    assert_eq!(grants[1], SeqGrant::New { seq: 12 });
    assert_eq!(
        grants[2],
        SeqGrant::Resend {
            seq: 11,
            server_msg_id: 1001,
            sent_at_ms: 77,
            fingerprint: Some(5),
        }
    );
    // A floor never moves an existing counter back.
    assert_eq!(
        seq.allocate(&conv, 0, &[request(2, 1)], UNLIMITED).unwrap(),
        vec![SeqGrant::New { seq: 13 }]
    );
    // Four "nodes" racing on one conversation: every seq once, no gaps.
    let threads: Vec<_> = (0..4)
        .map(|node| {
            let (url, conv) = (url.clone(), conv.clone());
            std::thread::spawn(move || {
                let mut seq = RedisSeq::new(&url, 60).unwrap();
                let mut got = Vec::new();
                for i in 0..50 {
                    let batch = [request(10 + node, 2 * i), request(10 + node, 2 * i + 1)];
                    for grant in seq.allocate(&conv, 0, &batch, UNLIMITED).unwrap() {
                        match grant {
                            SeqGrant::New { seq } => got.push(seq),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                got
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (14..14 + 400).collect::<Vec<_>>());
    assert_eq!(seq.current(&conv).unwrap(), 413);
}

#[test]
fn kafka_log_keeps_messages_with_their_origin() {
    let Some(brokers) = engine("OURCHAT_TEST_KAFKA", "kafka_log") else {
        return;
    };
    let topics = kafka::Topics::with_prefix(&format!("t{}-", std::process::id()));
    kafka::ensure_topics(&brokers, &topics, 4).unwrap();
    kafka::ensure_topics(&brokers, &topics, 4).unwrap();
    let tail = kafka::tail_consumer(&brokers, &[&topics.messages]).unwrap();
    let log = MessageLog::connect(&brokers, topics.clone(), 7, Duration::from_secs(5)).unwrap();
    let conv = format!("si_2_{}", std::process::id());
    let messages: Vec<ChatMessage> = (1..=3)
        .map(|seq| ChatMessage {
            conversation_id: conv.clone(),
            seq,
            content: format!("m{seq}"),
            ..Default::default()
        })
        .collect();
    // The tail starts at the ends it saw; give the assignment a moment.
    let _ = tail.poll(Duration::from_millis(500));
    log.append(&messages).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Some(Ok(record)) = tail.poll(Duration::from_millis(200)) {
            if let Some(record) = kafka::decode_record(&record) {
                if record.message.conversation_id == conv {
                    assert_eq!(record.origin, Some(7));
                    seen.push(record.message);
                }
            }
        }
    }
    assert_eq!(seen, messages, "in order, one partition per conversation");
    let _ = tail.unassign();
}

#[test]
fn redis_directory_holds_each_device_until_it_leaves_or_expires() {
    let Some(url) = engine("OURCHAT_TEST_REDIS", "redis_directory") else {
        return;
    };
    let mut redis = RedisSeq::new(&url, 60).unwrap();
    let user = 9_000_000 + i64::from(std::process::id());
    assert_eq!(redis.put_device(user, "phone", 1, false, 60).unwrap(), None);
    assert_eq!(redis.put_device(user, "tablet", 2, true, 60).unwrap(), None);
    // The same node again (away, back) is no move.
    assert_eq!(
        redis.put_device(user, "tablet", 2, false, 60).unwrap(),
        None
    );
    assert_eq!(redis.put_device(user, "tablet", 2, true, 60).unwrap(), None);
    let mut devices = redis.online_devices(user).unwrap();
    devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    assert_eq!(devices.len(), 2);
    assert_eq!(
        (
            devices[0].device_id.as_str(),
            devices[0].node_id,
            devices[0].away
        ),
        ("phone", 1, false)
    );
    assert_eq!(
        (
            devices[1].device_id.as_str(),
            devices[1].node_id,
            devices[1].away
        ),
        ("tablet", 2, true)
    );
    // The phone logs in again on node 3: node 1 hears where it was; node
    // 1's late goodbye for its old connection leaves the new entry alone.
    assert_eq!(
        redis.put_device(user, "phone", 3, false, 60).unwrap(),
        Some(1)
    );
    redis.remove_device(user, "phone", 1).unwrap();
    assert_eq!(redis.online_devices(user).unwrap().len(), 2);
    redis.remove_device(user, "phone", 3).unwrap();
    assert_eq!(redis.online_devices(user).unwrap().len(), 1);
    // Nobody refreshes it: the entry runs out.
    redis.touch_user(user, 1).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert!(redis.online_devices(user).unwrap().is_empty());
}

#[test]
fn redis_send_budgets_are_shared_by_every_node_and_refill() {
    let Some(url) = engine("OURCHAT_TEST_REDIS", "redis_send_budget") else {
        return;
    };
    let pid = i64::from(std::process::id());
    let (user, other) = (8_000_000 + 2 * pid, 8_000_001 + 2 * pid);
    let conv = format!("si_{user}_{other}");
    let budget = SendBudget {
        per_sec: 20.0,
        burst: 5.0,
    };
    let mut next_id = 0;
    let mut sends = |sender_id: i64, count: usize| -> Vec<SeqRequest> {
        (0..count)
            .map(|_| {
                next_id += 1;
                SeqRequest {
                    budgeted: true,
                    ..request(sender_id, next_id)
                }
            })
            .collect()
    };
    let kinds = |grants: &[SeqGrant]| -> String {
        grants
            .iter()
            .map(|g| match g {
                SeqGrant::New { .. } => 'n',
                SeqGrant::Resend { .. } => 'r',
                SeqGrant::Limited => 'l',
            })
            .collect()
    };
    let mut node_a = RedisSeq::new(&url, 60).unwrap();
    let mut node_b = RedisSeq::new(&url, 60).unwrap();
    // Two "nodes" draw from one bucket: 3 + 2 fit the burst of 5, then
    // nothing; the other user's bucket is their own. Refused sends take
    // no seq: the seqs run 1..=9 without a gap.
    let first = node_a.allocate(&conv, 0, &sends(user, 3), budget).unwrap();
    assert_eq!(kinds(&first), "nnn");
    let mut batch = sends(user, 4);
    batch.extend(sends(other, 4));
    let second = node_b.allocate(&conv, 0, &batch, budget).unwrap();
    assert_eq!(kinds(&second), "nnllnnnn");
    let seqs: Vec<i64> = first
        .iter()
        .chain(&second)
        .filter_map(|g| match g {
            SeqGrant::New { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    // A resend of an accepted message costs nothing, even out of budget;
    // a group change (not budgeted) passes too.
    let resend = request(user, 1);
    let change = request(user, 10_000);
    let third = node_a
        .allocate(&conv, 0, &[resend, change], budget)
        .unwrap();
    assert_eq!(kinds(&third), "rn");
    assert_eq!(
        kinds(&node_a.allocate(&conv, 0, &sends(user, 1), budget).unwrap()),
        "l"
    );
    // 20 per second: about 4 tokens after 220 ms, never more than the burst.
    std::thread::sleep(Duration::from_millis(220));
    let refilled = node_b.allocate(&conv, 0, &sends(user, 10), budget).unwrap();
    let admitted = kinds(&refilled).matches('n').count();
    assert!((4..=5).contains(&admitted), "refilled {}", kinds(&refilled));
    // A Redis that forgot its scripts (restart, SCRIPT FLUSH) still answers.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_connection().unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after_flush = node_a.allocate(&conv, 0, &sends(user, 1), budget).unwrap();
    assert_eq!(kinds(&after_flush), "n");
    // The bucket expires once it would be full again.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("ourchat:sends:{{{user}}}"))
        .query(&mut raw)
        .unwrap();
    assert!(ttl > 0 && ttl <= 1_300, "ttl {ttl} ms");
}

#[test]
fn a_redis_connection_lost_under_any_call_is_dialled_again() {
    let Some(url) = engine("OURCHAT_TEST_REDIS", "redis_redial") else {
        return;
    };
    let user = 7_000_000 + i64::from(std::process::id());
    let mut redis = RedisSeq::new(&url, 60).unwrap();
    redis.put_device(user, "phone", 1, false, 60).unwrap();
    // Redis drops every client (a restart or failover looks the same).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_connection().unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query(&mut admin)
        .unwrap();
    // The call that finds the dead socket fails; the next one dials again.
    let first = redis.online_devices(user);
    let second = redis.online_devices(user).unwrap();
    assert!(first.is_err() || first.as_ref().is_ok_and(|d| d == &second));
    assert_eq!(second.len(), 1);
    redis.touch_user(user, 60).unwrap();
}
