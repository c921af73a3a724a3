//! The message store's operation mix against candidate engines, so the
//! embedded store is chosen by numbers: appends spread over 10,000
//! conversations (1:1 and groups) with store-given seqs and a dedupe check
//! per message, coalesced delivery-cursor advances, one fsync per batch;
//! history pages from a conversation of 100,000 messages; sync after a gap;
//! recovery after `kill -9`; bytes on disk per message.
//!
//! `cargo bench -p ourchat-storage --bench store_mix` (`make bench-store`).
//! `STORE_BENCH_ENGINES=seglog,fjall` picks engines, `STORE_BENCH_SCALE=0.1`
//! shrinks every count (a smoke run), `STORE_BENCH_RECOVERY=N` sets the
//! messages written before the kill. A measurement, not a test.

mod fjall_kv;
mod msglog;
mod redb_kv;
mod seglog;
mod sqlite_int;
mod sqlite_now;

use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Conversations the appends spread over.
const CONVERSATIONS: usize = 10_000;
/// Of them, 1:1 (the rest are groups of `GROUP_SIZE`).
const DIRECT: usize = 9_000;
const USERS: i64 = 10_000;
const GROUP_SIZE: usize = 20;
/// Members of a group whose devices ack each message (online ones).
const GROUP_ACKERS: usize = 5;
/// The conversation history pages are read from holds this many messages.
const HOT_MESSAGES: usize = 100_000;
const PAGE: usize = 50;
const CONTENT: &str = "forty bytes of chat text, a typical line";

/// One message about to be stored (its seq is the engine's to give).
#[derive(Clone, Debug)]
pub struct Msg {
    /// Dense conversation number (engines may key by it).
    pub conv: u32,
    /// Its text id, as the node names it.
    pub conv_id: String,
    pub sender: i64,
    pub receiver: i64,
    pub group_id: i64,
    pub client_message_id: i64,
    pub server_msg_id: i64,
    pub sent_at_ms: i64,
    pub content: String,
}

/// A device's delivery cursor moving to `seq` in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub user: i64,
    pub device: u32,
    pub conv: u32,
    pub seq: i64,
}

/// What every candidate must do: the node's message path.
pub trait Engine {
    /// Stores `msgs` in order under each conversation's next seq (a
    /// `(sender, client id)` the conversation holds is answered with its
    /// seq and not stored), then moves `cursors` forward, all made durable
    /// by one fsync. Returns each message's seq.
    fn write_batch(&mut self, msgs: &[Msg], cursors: &[Cursor]) -> Vec<i64>;
    /// Up to `limit` messages before `before` (0: the newest), newest first;
    /// returns how many were read and decoded.
    fn history(&mut self, conv: &Msg, before: i64, limit: usize) -> usize;
    /// Up to `limit` messages after `after`, oldest first.
    fn after(&mut self, conv: &Msg, after: i64, limit: usize) -> usize;
}

type Open = fn(&Path) -> Box<dyn Engine>;

const ENGINES: &[(&str, &str, Open)] = &[
    (
        "sqlite-now",
        "today's SqliteBackend, unchanged",
        sqlite_now::open,
    ),
    (
        "sqlite-int",
        "SQLite redesigned: integer keys, WITHOUT ROWID, one blob",
        sqlite_int::open,
    ),
    ("fjall", "LSM tree (fjall 3)", fjall_kv::open),
    ("redb", "copy-on-write B-tree (redb 4)", redb_kv::open),
    (
        "seglog",
        "append-only segment log, in-memory index",
        seglog::open,
    ),
    (
        "msglog",
        "the store being built on that choice (storage::msglog)",
        msglog::open,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--write-then-abort") {
        return write_then_abort(&args[pos + 1], Path::new(&args[pos + 2]), &args[pos + 3]);
    }
    // `--open ENGINE DIR`: time one open of a store another run left (to
    // profile a start: `perf record -g -- store_mix --open msglog DIR`).
    if let Some(pos) = args.iter().position(|a| a == "--open") {
        let started = Instant::now();
        let mut engine = engine_named(&args[pos + 1])(Path::new(&args[pos + 2]));
        let newest = engine.history(&Mix::new(0).message(0), 0, PAGE);
        println!(
            "opened in {:.0} ms ({newest} newest)",
            started.elapsed().as_secs_f64() * 1e3
        );
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let scale: f64 = env_or("STORE_BENCH_SCALE", 1.0);
    let recovery_messages: usize = env_or("STORE_BENCH_RECOVERY", 300_000.0 * scale) as usize;
    let picked = std::env::var("STORE_BENCH_ENGINES").unwrap_or_default();
    let root = tempfile::Builder::new()
        .prefix("store-bench")
        .tempdir_in(std::env::var("STORE_BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .expect("bench dir");
    println!(
        "store_mix: {CONVERSATIONS} conversations ({DIRECT} 1:1, the rest groups of {GROUP_SIZE}), \
         {}-byte texts, one fsync per batch; load average {}",
        CONTENT.len(),
        load_average()
    );
    let mut rows = Vec::new();
    for (name, what, open) in ENGINES {
        if !picked.is_empty() && !picked.split(',').any(|p| p == *name) {
            continue;
        }
        eprintln!("{name}: {what}");
        rows.push(run_engine(
            name,
            *open,
            root.path(),
            scale,
            recovery_messages,
        ));
    }
    print_table(&rows, recovery_messages);
}

fn env_or(key: &str, default: f64) -> f64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    name: &'static str,
    /// (batch size, µs of process CPU per message, messages per second).
    appends: Vec<(usize, f64, f64)>,
    history_p50_us: f64,
    history_p99_us: f64,
    sync_p50_us: f64,
    recovery_ms: f64,
    bytes_per_message: f64,
}

fn run_engine(name: &'static str, open: Open, root: &Path, scale: f64, recovery: usize) -> Row {
    let mut appends = Vec::new();
    let mut bytes_per_message = 0.0;
    for (batch, messages) in [(1, 2_000.0), (32, 64_000.0), (256, 256_000.0)] {
        let dir = root.join(format!("{name}-{batch}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let messages = ((messages * scale) as usize).max(batch * 4);
        let mut engine = open(&dir);
        let mut mix = Mix::new(batch as u64);
        let cpu_before = process_cpu();
        let started = Instant::now();
        let mut written = 0;
        while written < messages {
            let (msgs, cursors) = mix.batch(batch);
            let seqs = engine.write_batch(&msgs, &cursors);
            assert_eq!(seqs.len(), msgs.len());
            mix.learn(&msgs, &seqs);
            written += msgs.len();
        }
        let cpu = process_cpu() - cpu_before;
        let wall = started.elapsed();
        // Resends of the oldest sends must find their first seq.
        let resent = mix.resends();
        let seqs = engine.write_batch(&resent, &[]);
        assert_eq!(
            seqs,
            mix.first_seqs(&resent),
            "{name}: a resend got a new seq"
        );
        drop(engine);
        let per_message = cpu.as_secs_f64() * 1e6 / written as f64;
        let rate = written as f64 / wall.as_secs_f64();
        eprintln!("  batch {batch:>3}: {per_message:>7.2} µs CPU/msg, {rate:>9.0} msg/s");
        appends.push((batch, per_message, rate));
        if batch == 256 {
            bytes_per_message = dir_bytes(&dir) as f64 / written as f64;
        }
    }
    let (history_p50_us, history_p99_us, sync_p50_us) =
        reads(open, &root.join(format!("{name}-reads")), scale);
    let recovery_ms = recover(name, root, recovery);
    Row {
        name,
        appends,
        history_p50_us,
        history_p99_us,
        sync_p50_us,
        recovery_ms,
        bytes_per_message,
    }
}

/// History pages from one long conversation and syncs after a gap:
/// (history p50, history p99, sync p50), µs.
fn reads(open: Open, dir: &Path, scale: f64) -> (f64, f64, f64) {
    std::fs::create_dir_all(dir).expect("dir");
    let mut engine = open(dir);
    let hot_count = ((HOT_MESSAGES as f64 * scale) as usize).max(1_000);
    let mut mix = Mix::new(7);
    let hot = mix.message(0);
    let mut written = 0;
    while written < hot_count {
        let msgs: Vec<Msg> = (0..256).map(|_| mix.again(&hot)).collect();
        engine.write_batch(&msgs, &[]);
        written += msgs.len();
    }
    // A user away while 50 messages arrived in each of 20 conversations.
    let gap: Vec<Msg> = (1..=20).map(|c| mix.message(c)).collect();
    for _ in 0..50 {
        let msgs: Vec<Msg> = gap.iter().map(|m| mix.again(m)).collect();
        engine.write_batch(&msgs, &[]);
    }
    let mut rng = StdRng::seed_from_u64(11);
    let mut pages = Vec::new();
    for _ in 0..1_000 {
        let before = rng.gen_range(PAGE as i64..=written as i64);
        let started = Instant::now();
        let read = engine.history(&hot, before, PAGE);
        pages.push(started.elapsed());
        assert_eq!(read, PAGE);
    }
    let mut syncs = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let read: usize = gap.iter().map(|conv| engine.after(conv, 0, 100)).sum();
        syncs.push(started.elapsed());
        assert_eq!(read, 20 * 50);
    }
    (
        percentile(&mut pages, 0.5),
        percentile(&mut pages, 0.99),
        percentile(&mut syncs, 0.5),
    )
}

/// Writes `messages` in a child that aborts without closing anything,
/// then times opening the store and reading its newest page.
fn recover(name: &str, root: &Path, messages: usize) -> f64 {
    let dir = root.join(format!("{name}-recovery"));
    std::fs::create_dir_all(&dir).expect("dir");
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--write-then-abort", name])
        .arg(&dir)
        .arg(messages.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("child");
    assert!(!status.success(), "the child must die by abort");
    let open = engine_named(name);
    let started = Instant::now();
    let mut engine = open(&dir);
    let newest = engine.history(&Mix::new(0).message(0), 0, PAGE);
    let elapsed = started.elapsed();
    assert!(newest > 0, "{name}: nothing recovered");
    elapsed.as_secs_f64() * 1e3
}

fn engine_named(name: &str) -> Open {
    ENGINES
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(.., open)| *open)
        .expect("engine")
}

fn write_then_abort(name: &str, dir: &Path, messages: &str) {
    let messages: usize = messages.parse().expect("count");
    let open = engine_named(name);
    let mut engine = open(dir);
    let mut mix = Mix::new(3);
    let mut written = 0;
    while written < messages {
        let (msgs, cursors) = mix.batch(256);
        engine.write_batch(&msgs, &cursors);
        written += msgs.len();
    }
    std::process::abort();
}

/// The workload: which conversation each message goes to, its sender and
/// recipients, which devices ack it.
struct Mix {
    rng: StdRng,
    next_id: i64,
    /// The first sends, to resend later: (message, its seq).
    first: Vec<(Msg, i64)>,
}

impl Mix {
    fn new(seed: u64) -> Mix {
        Mix {
            rng: StdRng::seed_from_u64(seed),
            next_id: 1,
            first: Vec::new(),
        }
    }

    /// A fresh message in conversation `conv`.
    fn message(&mut self, conv: usize) -> Msg {
        let (conv_id, sender, receiver, group_id) = if conv < DIRECT {
            let a = (conv as i64 * 7_919) % USERS + 1;
            let b = (a + 1 + conv as i64 % 97) % USERS + 1;
            let (low, high) = (a.min(b), a.max(b));
            let (sender, receiver) = if self.rng.gen_bool(0.5) {
                (low, high)
            } else {
                (high, low)
            };
            (format!("si_{low}_{high}"), sender, receiver, 0)
        } else {
            let group = conv as i64;
            let sender = self.rng.gen_range(1..=USERS);
            (format!("sg_{group}"), sender, 0, group)
        };
        let id = self.next_id;
        self.next_id += 1;
        Msg {
            conv: conv as u32,
            conv_id,
            sender,
            receiver,
            group_id,
            client_message_id: id,
            server_msg_id: 1_000_000 + id,
            sent_at_ms: 1_700_000_000_000 + id,
            content: CONTENT.to_string(),
        }
    }

    /// Another message in `like`'s conversation, from the same sender.
    fn again(&mut self, like: &Msg) -> Msg {
        let mut msg = self.message(like.conv as usize);
        msg.conv_id = like.conv_id.clone();
        msg.sender = like.sender;
        msg.receiver = like.receiver;
        msg
    }

    /// `size` messages to random conversations and the cursor advances of
    /// the devices that receive them, one per device and conversation.
    fn batch(&mut self, size: usize) -> (Vec<Msg>, Vec<Cursor>) {
        let msgs: Vec<Msg> = (0..size)
            .map(|_| {
                let conv = self.rng.gen_range(0..CONVERSATIONS);
                self.message(conv)
            })
            .collect();
        // Acks of earlier pushes, coalesced to one advance per device and
        // conversation (their seqs stand in: the cost does not depend on it).
        let mut cursors = std::collections::HashMap::new();
        for msg in &msgs {
            let seq = msg.client_message_id;
            if msg.group_id == 0 {
                cursors.insert((msg.receiver, msg.conv), seq);
            } else {
                for _ in 0..GROUP_ACKERS {
                    cursors.insert((self.rng.gen_range(1..=USERS), msg.conv), seq);
                }
            }
        }
        let cursors = cursors
            .into_iter()
            .map(|((user, conv), seq)| Cursor {
                user,
                device: 0,
                conv,
                seq,
            })
            .collect();
        (msgs, cursors)
    }

    fn learn(&mut self, msgs: &[Msg], seqs: &[i64]) {
        if self.first.len() < 3 {
            self.first
                .extend(msgs.iter().cloned().zip(seqs.iter().copied()));
            self.first.truncate(3);
        }
    }

    fn resends(&self) -> Vec<Msg> {
        self.first.iter().map(|(m, _)| m.clone()).collect()
    }

    fn first_seqs(&self, msgs: &[Msg]) -> Vec<i64> {
        msgs.iter()
            .map(|m| {
                self.first
                    .iter()
                    .find(|(f, _)| f.client_message_id == m.client_message_id)
                    .map_or(-1, |(_, seq)| *seq)
            })
            .collect()
    }
}

/// The wire form every engine stores (the node's `ChatMessage`).
pub fn encode(msg: &Msg, seq: i64) -> Vec<u8> {
    use prost::Message;
    chat_message(msg, seq).encode_to_vec()
}

/// The node's form of a message.
pub fn chat_message(msg: &Msg, seq: i64) -> ourchat_storage::ChatMessage {
    ourchat_storage::ChatMessage {
        conversation_id: msg.conv_id.clone(),
        seq,
        server_msg_id: msg.server_msg_id,
        sender_id: msg.sender,
        receiver_id: msg.receiver,
        content: msg.content.clone(),
        client_message_id: msg.client_message_id,
        sent_at_ms: msg.sent_at_ms,
        sender_device: "phone".into(),
        group_id: msg.group_id,
        ..Default::default()
    }
}

/// Decodes a stored message (what a read costs a reader).
pub fn decode(bytes: &[u8]) -> ourchat_storage::ChatMessage {
    use prost::Message;
    ourchat_storage::ChatMessage::decode(bytes).expect("stored message decodes")
}

fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => {
                        use std::os::unix::fs::MetadataExt;
                        m.blocks() * 512
                    }
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn print_table(rows: &[Row], recovery: usize) {
    println!();
    println!(
        "| engine | CPU µs/msg, batch 1 | batch 32 | batch 256 | msg/s at 256 | history page of {PAGE} p50 / p99 | sync 20×50 p50 | recovery, {recovery} msgs | bytes/msg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let cpu = |b: usize| {
            row.appends
                .iter()
                .find(|(batch, ..)| *batch == b)
                .map_or("-".into(), |(_, us, _)| format!("{us:.1}"))
        };
        let rate = row.appends.last().map_or(0.0, |(.., rate)| *rate);
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} / {:.0} µs | {:.0} µs | {:.0} ms | {:.0} |",
            row.name,
            cpu(1),
            cpu(32),
            cpu(256),
            rate,
            row.history_p50_us,
            row.history_p99_us,
            row.sync_p50_us,
            row.recovery_ms,
            row.bytes_per_message
        );
    }
}
