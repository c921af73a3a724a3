//! Shared helpers for OurChat's integration tests: start a real `ourchat`
//! server process on a free loopback port with its own data directory,
//! wait until it accepts, stop it gracefully or with `kill -9`, and restart
//! it on the same data.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a started node has to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1, never one this process handed out before.
///
/// The kernel may give a released port to the next `bind(0)` at once, and
/// the nodes' client listeners bind with SO_REUSEPORT, which the kernel
/// grants to a second process of the same user: two tests starting nodes at
/// the same moment on one port would split each other's connections (CI
/// once saw users of one test land on the other test's node, which knew
/// no such user). A node now refuses to start when it finds another
/// process's listener beside its own once bound (`shared_port`), which
/// turns that into a failed start; remembering what was handed out avoids
/// it.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::{Mutex, PoisonError};
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free loopback port");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A running server process. Killed on drop.
pub struct ServerProcess {
    binary: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    /// Client address.
    pub addr: SocketAddr,
    /// Admin HTTP address (/metrics, /healthz, /readyz).
    pub admin: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stderr goes (unless `OURCHAT_TEST_LOG` is set).
    stderr: tempfile::NamedTempFile,
    _temp: Option<tempfile::TempDir>,
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Reactor cores (`--cores`); 0 = the binary's default.
    pub cores: usize,
    /// Extra `--set key=value` overrides.
    pub set: Vec<(String, String)>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Reuse this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
}

impl ServerProcess {
    /// Starts `binary serve` with `options` and waits until it accepts.
    pub fn start(binary: &Path, options: ServerOptions) -> ServerProcess {
        let (temp, data_dir) = match options.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir().expect("temp dir");
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let mut args = vec![
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            // Tests share the machine's cores with their clients.
            "--set".to_string(),
            "server.pin_cores=false".to_string(),
            // Every test user registers from 127.0.0.1; tests of the
            // registration limit set their own.
            "--set".to_string(),
            "limits.registration_burst=100000".to_string(),
        ];
        if options.cores > 0 {
            args.push("--cores".into());
            args.push(options.cores.to_string());
        }
        for (key, value) in &options.set {
            args.push("--set".into());
            args.push(format!("{key}={value}"));
        }
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = ServerProcess {
            binary: binary.to_path_buf(),
            args,
            envs: options.env,
            child: None,
            addr: loopback(free_port()),
            admin: loopback(free_port()),
            grpc: loopback(free_port()),
            data_dir,
            stderr: tempfile::NamedTempFile::new().expect("stderr file"),
            _temp: temp,
        };
        // A port found free can be taken before the node binds it (by any
        // process's outgoing connection): then start again on other ports.
        for attempt in 1.. {
            match server.try_spawn() {
                Ok(()) => break,
                Err(status) if attempt < 5 && server.printed().contains("in use") => {
                    eprintln!("a test port was taken ({status}); starting on others");
                    server.addr = loopback(free_port());
                    server.admin = loopback(free_port());
                    server.grpc = loopback(free_port());
                }
                Err(status) => panic!(
                    "server exited during start-up: {status}\n{}",
                    server.printed()
                ),
            }
        }
        server
    }

    fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!(
                "server exited during start-up: {status}\n{}",
                self.printed()
            );
        }
    }

    /// Starts the process and waits until it is ready; how it exited if it
    /// did not get there.
    fn try_spawn(&mut self) -> Result<(), ExitStatus> {
        let log = std::env::var("OURCHAT_TEST_LOG").is_ok();
        let stderr = match log {
            true => Stdio::inherit(),
            false => std::fs::OpenOptions::new()
                .append(true)
                .open(self.stderr.path())
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        };
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--set")
            .arg(format!("server.admin_listen={}", self.admin))
            .arg("--set")
            .arg(format!("server.grpc_listen={}", self.grpc))
            .args(&self.args)
            .envs(self.envs.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(stderr);
        let child = command.spawn().expect("cannot start the ourchat binary");
        self.child = Some(child);
        self.wait_ready()
    }

    /// What the node wrote to stderr (empty with `OURCHAT_TEST_LOG`, which
    /// sends it to the test's own output).
    pub fn printed(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Ready means `/readyz` says every core listens: a port that accepts
    /// is not enough (see [`ServerProcess::kill9`]). Readiness includes a
    /// probe of the store: a cluster node (MySQL shards) started while the
    /// whole suite ran was once not ready within 30 s, the bound before.
    fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if matches!(self.admin_get("/readyz"), Ok((200, _))) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(status);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "server did not listen on {} within {READY_WITHIN:?}",
            self.addr
        );
    }

    /// `kill -9`: no shutdown code runs. Returns once the client port
    /// refuses connections: the kernel tears a dead process's io_uring down
    /// asynchronously, and until then its listening socket stays in the
    /// SO_REUSEPORT group, accepting connections it will reset.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.wait_port_closed();
        }
    }

    fn wait_port_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for the process to exit and returns its status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(exited)) = child.try_wait() {
                status = Some(exited);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if status.is_none() {
            let _ = child.kill();
            status = child.wait().ok();
        }
        self.wait_port_closed();
        status
    }

    /// Starts the server again with the same port, data and options.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Creates `count` users `<prefix>0..` with `ourchat admin provision`
    /// (one argon2 hash for all, password [`TEST_PASSWORD`]) on this
    /// node's store; returns their (user_id, token) pairs.
    pub fn provision(&self, prefix: &str, count: usize) -> Vec<(i64, String)> {
        let out = self.data_dir.join(format!("{prefix}.tokens"));
        let status = Command::new(&self.binary)
            .args(["admin", "provision", "--prefix", prefix, "--password"])
            .arg(TEST_PASSWORD)
            .arg("--count")
            .arg(count.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--out")
            .arg(&out)
            .status()
            .expect("run ourchat admin provision");
        assert!(status.success(), "provision failed: {status}");
        std::fs::read_to_string(&out)
            .expect("token file")
            .lines()
            .map(|line| {
                let (id, token) = line.split_once(' ').expect("user_id token");
                (id.parse().expect("user id"), token.to_string())
            })
            .collect()
    }

    /// GETs an admin path; returns the status code and body.
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect_timeout(&self.admin, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The value of one un-labelled (or summed) metric from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").unwrap_or_default();
        body.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Password every test user gets.
pub const TEST_PASSWORD: &str = "test-password-1";

/// Registers `username` (unless it exists) and logs in on `device`;
/// returns the connected client and its session.
pub async fn user_on(
    addr: SocketAddr,
    username: &str,
    device: &str,
) -> (ourchat_client::Client, ourchat_client::Session) {
    let client = ourchat_client::Client::connect(addr)
        .await
        .expect("connect to test server");
    match client.register(username, TEST_PASSWORD).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ourchat_client::ErrorCode::Conflict) => {}
        Err(e) => panic!("register {username}: {e}"),
    }
    let session = client
        .login(username, TEST_PASSWORD, device)
        .await
        .unwrap_or_else(|e| panic!("login {username}: {e}"));
    (client, session)
}

/// The first push within `wait` that `pick` takes, skipping the others;
/// panics, naming `what`, if the connection closes or nothing comes.
pub async fn push_where<T>(
    client: &ourchat_client::Client,
    wait: Duration,
    what: &str,
    mut pick: impl FnMut(ourchat_client::Push) -> Option<T>,
) -> T {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_push(left).await {
            Some(ourchat_client::Push::Closed) | None => panic!("no {what} within {wait:?}"),
            Some(push) => {
                if let Some(found) = pick(push) {
                    return found;
                }
            }
        }
    }
}

/// A second connection of an existing user, logged in on `device`.
pub async fn device_of(addr: SocketAddr, username: &str, device: &str) -> ourchat_client::Client {
    let client = ourchat_client::Client::connect(addr)
        .await
        .expect("connect to test server");
    client
        .login(username, TEST_PASSWORD, device)
        .await
        .unwrap_or_else(|e| panic!("login {username}/{device}: {e}"));
    client
}

/// Starts the calling test crate's `ourchat` binary on `cores` cores with
/// `key => value` config overrides: `start_node!(2, "server.recall_window_secs" => "2")`.
/// A macro so that `CARGO_BIN_EXE_ourchat` is read in the test crate, the
/// only place Cargo defines it.
#[macro_export]
macro_rules! start_node {
    ($cores:expr $(, $key:expr => $value:expr)* $(,)?) => {
        $crate::ServerProcess::start(
            ::std::path::Path::new(env!("CARGO_BIN_EXE_ourchat")),
            $crate::ServerOptions {
                cores: $cores,
                set: vec![$(($key.to_string(), $value.to_string())),*],
                ..Default::default()
            },
        )
    };
}

/// The cluster engines `scripts/engines.sh` started (`make test` does),
/// read from its environment variables.
#[derive(Debug, Clone)]
pub struct Engines {
    /// The MySQL server, `mysql://user:password@host:port` (no database).
    pub mysql_server: String,
    /// `redis://host:port`.
    pub redis: String,
    /// Kafka bootstrap `host:port`.
    pub kafka: String,
    /// A read replica of `mysql_server` (same databases), when started.
    pub mysql_replica: Option<String>,
}

impl Engines {
    /// The running engines, or `None` (with a note on stderr) when none are
    /// configured; under `OURCHAT_REQUIRE_ENGINES` their absence panics, so
    /// `make test` cannot skip what it is meant to check.
    pub fn from_env(test: &str) -> Option<Engines> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (
            var("OURCHAT_TEST_MYSQL"),
            var("OURCHAT_TEST_REDIS"),
            var("OURCHAT_TEST_KAFKA"),
        ) {
            (Some(mysql), Some(redis), Some(kafka)) => {
                let first = mysql.split(',').next().unwrap_or_default();
                let server = first.rsplit_once('/').map_or(first, |(server, _)| server);
                Some(Engines {
                    mysql_server: server.to_string(),
                    redis,
                    kafka,
                    mysql_replica: var("OURCHAT_TEST_MYSQL_REPLICA"),
                })
            }
            _ => {
                assert!(
                    std::env::var("OURCHAT_REQUIRE_ENGINES").is_err(),
                    "{test}: OURCHAT_REQUIRE_ENGINES is set but the engines' variables are not \
                     (run through `make test`, or source target/engines/env)"
                );
                eprintln!("{test}: no cluster engines configured (see `make engines`); skipped");
                None
            }
        }
    }

    /// URLs of `count` fresh shard databases (the node creates them),
    /// unique to this process and `tag`.
    pub fn fresh_shards(&self, tag: &str, count: usize) -> Vec<String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let run = RUN.fetch_add(1, Ordering::SeqCst);
        (0..count)
            .map(|i| {
                format!(
                    "{}/ourchat_t{}_{tag}_{run}_{i}",
                    self.mysql_server,
                    std::process::id()
                )
            })
            .collect()
    }

    /// The replica's URLs of `shards` (same databases, replica server);
    /// under `OURCHAT_REQUIRE_ENGINES`, a missing replica panics.
    pub fn replicas_of(&self, shards: &[String]) -> Option<Vec<String>> {
        let Some(replica) = &self.mysql_replica else {
            assert!(
                std::env::var("OURCHAT_REQUIRE_ENGINES").is_err(),
                "OURCHAT_TEST_MYSQL_REPLICA is not set but OURCHAT_REQUIRE_ENGINES is"
            );
            eprintln!("no MySQL replica configured; skipped");
            return None;
        };
        Some(
            shards
                .iter()
                .map(|url| url.replace(&self.mysql_server, replica))
                .collect(),
        )
    }

    /// Runs `sql` on the replica with the `mariadb` client (as the test
    /// user, who may stop and start replication there).
    pub fn on_replica(&self, sql: &str) {
        let replica = self.mysql_replica.as_deref().expect("a replica");
        let port = replica.rsplit(':').next().expect("replica port");
        let status = std::process::Command::new("mariadb")
            .args(["--no-defaults", "-h127.0.0.1", "-uourchat", "-pourchat"])
            .arg(format!("-P{port}"))
            .args(["-e", sql])
            .status()
            .expect("run the mariadb client");
        assert!(status.success(), "{sql} on the replica: {status}");
    }

    /// `--set` overrides that put a node's store on `shards`.
    pub fn mysql_store(shards: &[String]) -> Vec<(String, String)> {
        let list = shards
            .iter()
            .map(|url| format!("\"{url}\""))
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            ("storage.backend".into(), "mysql".into()),
            ("storage.mysql_shards".into(), format!("[{list}]")),
        ]
    }
}

impl Engines {
    /// Starts node `node_id` of the cluster whose MySQL shards are `shards`
    /// (their names also keep its Kafka topics apart from other tests'),
    /// with `extra` overrides.
    pub fn cluster_node(
        &self,
        binary: &Path,
        shards: &[String],
        node_id: u16,
        extra: &[(&str, &str)],
    ) -> ServerProcess {
        let mut set = Engines::mysql_store(shards);
        let deployment = shards
            .first()
            .and_then(|url| url.rsplit('/').next())
            .unwrap_or("x");
        set.extend([
            ("cluster.topic_prefix".into(), format!("{deployment}-")),
            ("cluster.enabled".into(), "true".into()),
            ("cluster.redis".into(), self.redis.clone()),
            ("cluster.kafka".into(), self.kafka.clone()),
            ("cluster.partitions".into(), "4".into()),
            ("server.node_id".into(), node_id.to_string()),
        ]);
        set.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ServerProcess::start(
            binary,
            ServerOptions {
                cores: 2,
                set,
                env: vec![(
                    "OURCHAT_AUTH__JWT_SECRET".into(),
                    "cluster-test-secret-0123".into(),
                )],
                ..Default::default()
            },
        )
    }
}

/// Texts `m0, m1, ...` sent one after another from a client to a user
/// until a send fails (its server was killed, say), remembering each ack.
pub struct SendLoop {
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<(i64, String)>>,
}

impl SendLoop {
    /// Starts sending from `client` to `to`.
    pub fn start(client: std::sync::Arc<ourchat_client::Client>, to: i64) -> SendLoop {
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = acked.clone();
        let task = tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..100_000 {
                let text = format!("m{i}");
                match client.send_text(to, &text).await {
                    Ok(ack) => acks.push((ack.seq, text)),
                    Err(_) => break,
                }
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            acks
        });
        SendLoop { acked, task }
    }

    /// Waits until `acks` sends were acked (at most `within`): mid-traffic
    /// on a machine however loaded.
    pub async fn wait_for(&self, acks: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acked.load(std::sync::atomic::Ordering::Relaxed) < acks
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every `(seq, text)` acked before the loop stopped.
    pub async fn acked(self) -> Vec<(i64, String)> {
        self.task.await.expect("send loop panicked")
    }
}

/// An ack means durable, on whatever store `server` runs: bob is offline,
/// alice sends until the node is killed with `kill -9` mid-traffic; after a
/// restart bob syncs every acked message, seqs gapless from 1, and the next
/// send continues after the last stored seq.
pub async fn acked_messages_survive_kill_9_of(server: &mut ServerProcess) {
    use std::sync::Arc;
    let (_bob, sb) = user_on(server.addr, "bob", "phone").await;
    drop(_bob);
    let (alice, _) = user_on(server.addr, "alice", "d").await;
    let sends = SendLoop::start(Arc::new(alice), sb.user_id);
    // Kill mid-traffic: once some acks are in (however loaded the machine),
    // and before the per-user send burst (200) could run out.
    sends.wait_for(50, Duration::from_secs(20)).await;
    server.kill9();
    let acked = sends.acked().await;
    assert!(
        acked.len() > 10,
        "too few sends before the kill: {}",
        acked.len()
    );

    server.restart();
    let bob = device_of(server.addr, "bob", "phone").await;
    let mut tracker = ourchat_client::SeqTracker::default();
    let synced = bob.sync_all(&mut tracker).await.unwrap();
    for (seq, text) in &acked {
        let found = synced.iter().find(|m| m.seq == *seq);
        assert_eq!(
            found.map(|m| &m.content),
            Some(text),
            "acked seq {seq} lost"
        );
    }
    // Gapless from 1, nothing twice.
    let seqs: Vec<i64> = synced.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());

    // Sequencing continues after the last stored seq, never reusing one.
    let alice = device_of(server.addr, "alice", "d").await;
    let next = alice.send_text(sb.user_id, "after restart").await.unwrap();
    assert_eq!(next.seq, seqs.len() as i64 + 1);
}

/// A socket logged in with `token` by hand, for tests that write what the
/// SDK never would (bursts of frames in one write, floods, damage).
pub async fn raw_session(addr: SocketAddr, token: &str) -> tokio::net::TcpStream {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw_login(stream, token).await
}

/// [`raw_session`] on a socket the caller connected (with its own socket
/// options).
pub async fn raw_login(mut stream: tokio::net::TcpStream, token: &str) -> tokio::net::TcpStream {
    use ourchat_protocol::{codec, pb, Body, Envelope};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let login = pb::LoginRequest {
        token: token.into(),
        ..Default::default()
    };
    stream
        .write_all(&codec::encode_to_vec(&Envelope::new(1, Body::Login(login))))
        .await
        .unwrap();
    let mut header = [0u8; codec::HEADER_LEN];
    stream.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; codec::body_len(header, 1 << 20).unwrap()];
    stream.read_exact(&mut body).await.unwrap();
    match codec::decode_body(&body).unwrap().body {
        Some(Body::LoginResp(reply)) => assert!(reply.success, "{reply:?}"),
        other => panic!("token login: {other:?}"),
    }
    stream
}

/// Every frame the server writes until it closes the connection, or until
/// `wait` passes.
pub async fn frames_until_close(
    stream: &mut tokio::net::TcpStream,
    wait: Duration,
) -> Vec<ourchat_protocol::Envelope> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut bytes)).await;
    let decoder = ourchat_protocol::codec::FrameDecoder::new(1 << 20);
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let mut out = Vec::new();
    while let Ok(Some(envelope)) = decoder.decode(&mut buf) {
        out.push(envelope);
    }
    out
}
