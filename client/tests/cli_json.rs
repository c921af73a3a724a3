//! `ourchat-cli --json` as a script or a browser-side program reads it:
//! every 64-bit id (user, group, server message id) is a JSON string, as
//! in proto3's JSON mapping, because ids (~3.9e17) exceed what a JSON
//! number holds exactly in JavaScript (2^53). Small counters (seqs, times)
//! stay numbers.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ourchat_gateway::Config;
use ourchat_testkit::free_port;

/// Runs the CLI with `args` against `server`, session in `dir`; its JSON lines.
fn cli(server: &str, dir: &Path, session: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_ourchat-cli"))
        .args(["--json", "--server", server, "--session"])
        .arg(dir.join(session))
        .args(args)
        .output()
        .expect("run ourchat-cli");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn is_id_string(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .and_then(|text| text.parse::<i64>().ok())
        .is_some_and(|id| id > 0)
}

#[test]
fn ids_are_strings_and_counters_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let overrides = [
        ("server.listen", listen.clone()),
        ("server.admin_listen", format!("127.0.0.1:{}", free_port())),
        ("server.grpc_listen", format!("127.0.0.1:{}", free_port())),
        ("server.cores", "1".into()),
        ("server.pin_cores", "false".into()),
        ("storage.data_dir", dir.path().display().to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let config = Config::load(None, [], &overrides).unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flag = shutdown.clone();
    let node = std::thread::spawn(move || {
        ourchat_gateway::serve(config, flag, |_| {
            let _ = ready_tx.send(());
        })
        .unwrap();
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("node did not start");

    let registered = cli(
        &listen,
        dir.path(),
        "a",
        &["register", "alice", "password123"],
    );
    assert!(is_id_string(&registered[0]["user_id"]), "{registered:?}");
    cli(
        &listen,
        dir.path(),
        "b",
        &["register", "bob", "password123"],
    );
    let login = cli(&listen, dir.path(), "a", &["login", "alice", "password123"]);
    assert!(is_id_string(&login[0]["user_id"]), "{login:?}");
    cli(&listen, dir.path(), "b", &["login", "bob", "password123"]);
    let sent = cli(&listen, dir.path(), "a", &["send", "--to", "bob", "hi"]);
    assert!(is_id_string(&sent[0]["server_msg_id"]), "{sent:?}");
    assert!(sent[0]["seq"].is_i64(), "{sent:?}");
    let history = cli(&listen, dir.path(), "b", &["history", "--with", "alice"]);
    let message = history
        .iter()
        .find(|line| line["event"] == "message")
        .expect("the message");
    assert!(is_id_string(&message["sender_id"]), "{message:?}");
    assert!(message["sent_at_ms"].is_i64());

    shutdown.store(true, Ordering::SeqCst);
    let _ = node.join();
}
