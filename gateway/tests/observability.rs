//! The admin endpoint: /healthz, /readyz and /metrics report what really
//! happened (counts asserted against the traffic this test generates).

use ourchat_protocol::pb::MessageType;
use ourchat_testkit::{start_node, user_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic() {
    let server = start_node!(2);
    assert_eq!(server.admin_get("/healthz").unwrap().0, 200);
    assert_eq!(server.admin_get("/readyz").unwrap().0, 200);
    assert_eq!(server.admin_get("/nope").unwrap().0, 404);

    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (bob, sb) = user_on(server.addr, "bob", "d").await;
    for i in 0..25 {
        alice.send_text(sb.user_id, &format!("m{i}")).await.unwrap();
    }
    for _ in 0..25 {
        bob.next_message(std::time::Duration::from_secs(5))
            .await
            .unwrap();
    }
    let refused = alice
        .send_message(sb.user_id, MessageType::Text, "", 1)
        .await;
    assert!(refused.is_err());

    assert_eq!(server.metric("ourchat_connections"), 2.0);
    assert_eq!(server.metric("ourchat_registrations_total"), 2.0);
    assert_eq!(server.metric("ourchat_logins_total"), 2.0);
    assert_eq!(server.metric("ourchat_messages_accepted_total"), 25.0);
    assert_eq!(server.metric("ourchat_messages_delivered_total"), 25.0);
    assert_eq!(server.metric("ourchat_send_ack_latency_us_count"), 25.0);
    assert_eq!(server.metric("ourchat_deliver_latency_us_count"), 25.0);
    assert!(server.metric("ourchat_store_ops_total") >= 25.0);
    assert!(server.metric("ourchat_store_commit_latency_us_count") >= 1.0);
    assert!(server.metric("process_resident_memory_bytes") > 1_000_000.0);
    let (_, body) = server.admin_get("/metrics").unwrap();
    assert!(
        body.contains("ourchat_errors_total{code=\"BAD_REQUEST\"} 1"),
        "{body}"
    );
    assert!(body.contains("# TYPE ourchat_store_batch_size histogram"));

    // Every metric the Grafana dashboard queries is exported.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/ourchat.json"
    ))
    .unwrap();
    let mut checked = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("ourchat_") || word.starts_with("process_") {
            assert!(
                body.contains(word),
                "dashboard queries {word}, which /metrics lacks"
            );
            checked += 1;
        }
    }
    assert!(checked > 10);

    drop(alice);
    drop(bob);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.metric("ourchat_connections") != 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(server.metric("ourchat_connections"), 0.0);
}
