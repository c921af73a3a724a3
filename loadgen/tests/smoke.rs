//! A short loadgen run against a real node (in this process): proves the
//! loadgen speaks the protocol, spreads over processes, and that every
//! acked message is delivered exactly once and in order, to one peer or to
//! every other member of a group, over TCP, TLS and WebSocket. Figures are not
//! asserted: benchmarks are commands (`make bench`), not timed tests.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ourchat_gateway::Config;
use ourchat_testkit::free_port;

struct Node {
    shutdown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    client: String,
    /// The TLS listener, and the CA file its certificate chains to.
    tls: String,
    /// The WebSocket listener.
    ws: String,
    ca_file: std::path::PathBuf,
    admin: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start_node(data_dir: &Path) -> Node {
    let client = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let tls = format!("127.0.0.1:{}", free_port());
    let ws = format!("127.0.0.1:{}", free_port());
    let certs =
        ourchat_gateway::tls::generate_dev_pair(&data_dir.join("tls"), &["localhost".into()])
            .unwrap();
    let overrides = [
        ("tls.listen", tls.as_str()),
        ("tls.cert_file", certs.cert.to_str().unwrap()),
        ("tls.key_file", certs.key.to_str().unwrap()),
        ("server.listen", client.as_str()),
        ("server.admin_listen", admin.as_str()),
        ("server.grpc_listen", grpc.as_str()),
        ("server.ws_listen", ws.as_str()),
        ("server.cores", "2"),
        ("server.pin_cores", "false"),
        ("storage.data_dir", data_dir.to_str().unwrap()),
        ("auth.jwt_secret", "loadgen-smoke-secret"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let config = Config::load(None, [], &overrides).unwrap();
    let mut tokens = Vec::new();
    ourchat_gateway::admin::provision(&config, "smoke", 300, "smoke-password", &mut tokens)
        .unwrap();
    std::fs::write(data_dir.join("tokens"), tokens).unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flag = shutdown.clone();
    let thread = std::thread::spawn(move || {
        ourchat_gateway::serve(config, flag, |_| {
            let _ = ready_tx.send(());
        })
        .unwrap();
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("node did not start");
    Node {
        shutdown,
        thread: Some(thread),
        client,
        tls,
        ws,
        ca_file: certs.ca_cert,
        admin,
    }
}

fn loadgen(node: &Node, dir: &Path, args: &[&str]) -> serde_json::Value {
    run_loadgen(node, dir, &node.client, args)
}

fn run_loadgen(node: &Node, dir: &Path, target: &str, args: &[&str]) -> serde_json::Value {
    let json = dir.join(format!("{}-{}.json", args[0], target.replace(':', "_")));
    let status = Command::new(env!("CARGO_BIN_EXE_ourchat-loadgen"))
        .args(args)
        .args(["--targets", target, "--admin", &node.admin])
        .arg("--tokens")
        .arg(dir.join("tokens"))
        .arg("--json")
        .arg(&json)
        .status()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(status.success(), "loadgen reported a problem: {report:#}");
    report
}

/// Every user logged in, more than 500 sends, each acked and delivered
/// once, in order.
fn assert_p2p_clean(report: &serde_json::Value) {
    let counters = &report["counters"];
    assert_eq!(counters["logins"], 300, "{report:#}");
    assert!(counters["acked"].as_u64().unwrap() > 500, "{report:#}");
    assert_eq!(counters["acked"], counters["sent"], "{report:#}");
    assert_eq!(counters["delivered"], counters["acked"], "{report:#}");
    assert_eq!(report["lost"], 0);
    assert_eq!(counters["duplicates"], 0);
    assert_eq!(counters["out_of_order"], 0);
}

#[test]
fn p2p_and_storm_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path());

    // The same open-loop p2p over plain TCP, then over TLS trusting the
    // node's CA: every ack delivered once, in order.
    let p2p_args = [
        "p2p",
        "--procs",
        "2",
        "--rate",
        "600",
        "--duration",
        "2",
        "--drain",
        "2",
    ];
    let p2p = loadgen(&node, dir.path(), &p2p_args);
    assert_p2p_clean(&p2p);
    assert!(p2p["server_bytes_per_connection"].as_f64().is_some());
    let ca_file = node.ca_file.display().to_string();
    let tls_args: Vec<&str> = p2p_args
        .iter()
        .copied()
        .chain(["--ca-file", &ca_file])
        .collect();
    let tls = run_loadgen(&node, dir.path(), &node.tls.clone(), &tls_args);
    assert_p2p_clean(&tls);
    assert_eq!(tls["counters"]["connect_errors"], 0);
    // And over WebSocket.
    let ws_args: Vec<&str> = p2p_args.iter().copied().chain(["--ws"]).collect();
    let ws = run_loadgen(&node, dir.path(), &node.ws.clone(), &ws_args);
    assert_p2p_clean(&ws);
    assert_eq!(ws["counters"]["connect_errors"], 0);

    let storm = loadgen(
        &node,
        dir.path(),
        &["storm", "--procs", "2", "--duration", "10", "--drain", "0"],
    );
    // Every user logged in once, then again after the storm.
    assert_eq!(storm["counters"]["logins"], 600, "{storm:#}");
    assert_eq!(storm["counters"]["connect_errors"], 0);
    // The storm's latencies are its 300 reconnects, each timed from the
    // drop, and its phase ends with the slowest of them.
    assert_eq!(storm["login_us"]["count"], 300, "{storm:#}");
    let slowest_us = storm["login_us"]["max"].as_f64().unwrap();
    let phase_us = storm["phase_secs"].as_f64().unwrap() * 1e6;
    assert!(
        slowest_us > 0.0 && (phase_us - slowest_us).abs() <= slowest_us * 0.002,
        "{storm:#}"
    );

    // Groups of 100: each acked send owes 99 deliveries, all of them made.
    let group = loadgen(
        &node,
        dir.path(),
        &[
            "group",
            "--procs",
            "2",
            "--group-size",
            "100",
            "--rate",
            "30",
            "--duration",
            "2",
            "--drain",
            "2",
        ],
    );
    let counters = &group["counters"];
    let acked = counters["acked"].as_u64().unwrap();
    assert!(acked > 30, "{group:#}");
    assert_eq!(counters["expected"].as_u64().unwrap(), acked * 99);
    assert_eq!(counters["delivered"], counters["expected"]);
    assert_eq!(group["lost"], 0);
    assert_eq!(counters["duplicates"], 0);
    assert_eq!(counters["out_of_order"], 0);
}
