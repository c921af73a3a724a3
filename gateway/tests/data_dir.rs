//! A node refuses to start, naming the file and the way out, on a data
//! directory that lost or swapped its store, on damaged key files and on a
//! damaged store page; a taken port names its listener and address. None
//! of these print a backtrace: they are operator errors, not bugs. A fresh
//! directory still initialises, and one written before markers is adopted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ourchat_testkit::{device_of, free_port, user_on, ServerOptions, ServerProcess};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ourchat"))
}

/// A node on `dir` with one user, stopped cleanly (its WAL folded in).
async fn used_dir(dir: &Path) -> ServerProcess {
    let mut server = ServerProcess::start(
        binary(),
        ServerOptions {
            cores: 1,
            data_dir: Some(dir.to_path_buf()),
            ..Default::default()
        },
    );
    user_on(server.addr, "alice", "d").await;
    server.terminate();
    server
}

/// Runs `ourchat serve` on `dir` (with `extra` settings), expecting it to
/// exit with an error; returns what it printed.
fn start_fails(dir: &Path, extra: &[(&str, String)]) -> String {
    let mut command = Command::new(binary());
    command
        .args(["serve", "--cores", "1", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut settings = vec![
        ("server.admin_listen", format!("127.0.0.1:{}", free_port())),
        ("server.grpc_listen", format!("127.0.0.1:{}", free_port())),
        ("server.pin_cores", "false".to_string()),
    ];
    settings.extend(extra.iter().cloned());
    for (key, value) in settings {
        command.arg("--set").arg(format!("{key}={value}"));
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node started on {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!status.success(), "{printed}");
    assert!(!printed.contains("panicked"), "{printed}");
    assert!(!printed.to_lowercase().contains("backtrace"), "{printed}");
    printed
}

fn db_files(dir: &Path) -> [PathBuf; 3] {
    ["ourchat.db", "ourchat.db-wal", "ourchat.db-shm"].map(|f| dir.join(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_without_its_store_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = used_dir(dir.path()).await;
    let db = dir.path().join("ourchat.db");
    let kept = std::fs::read(&db).unwrap();

    for file in db_files(dir.path()) {
        let _ = std::fs::remove_file(file);
    }
    let missing = start_fails(dir.path(), &[]);
    assert!(missing.contains("ourchat.db is missing"), "{missing}");
    assert!(missing.contains("ourchat.id"), "{missing}");
    assert!(missing.contains("restore"), "{missing}");
    assert!(!db.exists(), "no empty store left behind");

    std::fs::write(&db, b"").unwrap();
    let empty = start_fails(dir.path(), &[]);
    assert!(empty.contains("ourchat.db is empty"), "{empty}");

    // Another node's store in its place.
    let other = tempfile::tempdir().unwrap();
    used_dir(other.path()).await;
    std::fs::copy(other.path().join("ourchat.db"), &db).unwrap();
    let swapped = start_fails(dir.path(), &[]);
    assert!(swapped.contains("ourchat.db is store"), "{swapped}");

    // The right one back: everything is there.
    std::fs::write(&db, &kept).unwrap();
    server.restart();
    device_of(server.addr, "alice", "d").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_key_files_and_store_pages_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = used_dir(dir.path()).await;
    for key in ["jwt.secret", "admin.token"] {
        let path = dir.path().join(key);
        let kept = std::fs::read(&path).unwrap();
        for damage in [&b""[..], &[0x9c; 64][..]] {
            std::fs::write(&path, damage).unwrap();
            let printed = start_fails(dir.path(), &[]);
            assert!(printed.contains(&format!("{key} is damaged")), "{printed}");
            assert_eq!(std::fs::read(&path).unwrap(), damage, "not replaced");
        }
        std::fs::write(&path, kept).unwrap();
    }

    // Page 2 (the accounts table's root) garbled.
    let db = dir.path().join("ourchat.db");
    let kept = std::fs::read(&db).unwrap();
    let mut garbled = kept.clone();
    garbled[4096..8192].fill(0xA5);
    std::fs::write(&db, &garbled).unwrap();
    let printed = start_fails(dir.path(), &[]);
    assert!(printed.contains("ourchat.db is damaged"), "{printed}");
    assert!(printed.contains("restore it from a backup"), "{printed}");

    std::fs::write(&db, &kept).unwrap();
    server.restart();
    device_of(server.addr, "alice", "d").await;
    let (status, body) = server.admin_get("/readyz").unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_from_before_markers_is_adopted_and_keys_alone_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = used_dir(dir.path()).await;
    let marker = dir.path().join("ourchat.id");
    let identity = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(identity.trim().len(), 32);

    // As written by a node before markers: adopted, same identity.
    std::fs::remove_file(&marker).unwrap();
    server.restart();
    device_of(server.addr, "alice", "d").await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), identity);
    server.terminate();

    // Keys but no store and no marker: refused too.
    std::fs::remove_file(&marker).unwrap();
    for file in db_files(dir.path()) {
        let _ = std::fs::remove_file(file);
    }
    let printed = start_fails(dir.path(), &[]);
    assert!(printed.contains("jwt.secret shows"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_names_its_listener_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (setting, name) in [
        (
            "server.admin_listen",
            "admin HTTP endpoint (server.admin_listen)",
        ),
        ("server.grpc_listen", "gRPC (server.grpc_listen)"),
    ] {
        let printed = start_fails(dir.path(), &[(setting, addr.clone())]);
        assert!(printed.contains(name), "{printed}");
        assert!(printed.contains(&addr), "{printed}");
        assert!(printed.contains("in use"), "{printed}");
    }
}

/// A directory written by the SQLite-only store (as every node before the
/// message log wrote it) is moved into the log at the first start of the
/// embedded store: history, cursors and old client ids all carry over,
/// and the old store then refuses the moved directory instead of starting
/// without its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_the_sqlite_store_moves_into_the_message_log() {
    let dir = tempfile::tempdir().unwrap();
    let options = |backend: &str| ServerOptions {
        cores: 1,
        data_dir: Some(dir.path().to_path_buf()),
        set: vec![("storage.backend".into(), backend.into())],
        ..Default::default()
    };
    let mut old = ServerProcess::start(binary(), options("sqlite"));
    let (alice, _) = user_on(old.addr, "alice", "d").await;
    let (_bob, sb) = user_on(old.addr, "bob", "d").await;
    for i in 0..30 {
        alice.send_text(sb.user_id, &format!("m{i}")).await.unwrap();
    }
    old.terminate();
    assert!(
        !dir.path().join("messages").exists(),
        "the old store has no log"
    );

    let mut server = ServerProcess::start(binary(), options("embedded"));
    let bob = device_of(server.addr, "bob", "d").await;
    let history = bob.history(alice.user_id(), 0, 100).await.unwrap();
    let seqs: Vec<i64> = history.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=30).rev().collect::<Vec<i64>>());
    assert_eq!(history.messages[29].content, "m0");
    let alice = device_of(server.addr, "alice", "d").await;
    let next = alice
        .send_text(bob.user_id(), "after the move")
        .await
        .unwrap();
    assert_eq!(next.seq, 31, "numbering goes on");
    server.terminate();

    let printed = start_fails(dir.path(), &[("storage.backend", "sqlite".to_string())]);
    assert!(printed.contains("are in its message log"), "{printed}");
    assert!(
        printed.contains("storage.backend = \"embedded\""),
        "{printed}"
    );
}

/// The newest half of the message log zeroed after kill -9 (as the
/// truncated WAL of the SQLite store once lost 97 of 200 acked messages
/// without a word): the node refuses to start, naming the log; with the
/// log restored every acked message is there and numbering goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_lost_its_newest_acked_batches_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        binary(),
        ServerOptions {
            cores: 1,
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        },
    );
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let (_bob, sb) = user_on(server.addr, "bob", "d").await;
    for i in 0..200 {
        if i == 100 {
            // Past the log-end file's interval: the next batch notes it.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
        alice.send_text(sb.user_id, &format!("m{i}")).await.unwrap();
    }
    server.kill9();
    let segment = dir.path().join("messages").join("000000000001.seg");
    let kept = std::fs::read(&segment).unwrap();
    let written = kept.iter().rposition(|b| *b != 0).unwrap() + 1;
    let mut zeroed = kept.clone();
    zeroed[written / 2..].fill(0);
    std::fs::write(&segment, &zeroed).unwrap();
    let printed = start_fails(dir.path(), &[]);
    assert!(printed.contains("messages is damaged"), "{printed}");
    assert!(printed.contains("restore"), "{printed}");

    std::fs::write(&segment, &kept).unwrap();
    server.restart();
    let bob = device_of(server.addr, "bob", "d").await;
    let history = bob.history(alice.user_id(), 0, 500).await.unwrap();
    assert_eq!(history.messages.len(), 200);
    let alice = device_of(server.addr, "alice", "d").await;
    assert_eq!(alice.send_text(bob.user_id(), "on").await.unwrap().seq, 201);
}
