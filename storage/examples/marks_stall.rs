//! How long the message log's writer stalls when a batch opens a new
//! segment, which has every conversation's last seq (the marks) written.
//! Fills `CONVERSATIONS` conversations (one message each, in batches of
//! 1,000, one fsync per batch) on 16 MiB segments, then prints every batch
//! that took over 20 ms with the conversations stored at the time, and the
//! batch times' median, maximum and sum. A measurement, not a test:
//!
//! `cargo run --release -p ourchat-storage --example marks_stall [CONVERSATIONS]`
//!
//! With `one` after the count, the messages all go to one group instead
//! (a conversation whose own tables grow with its messages):
//! `cargo run --release -p ourchat-storage --example marks_stall 4000000 one`

use std::time::{Duration, Instant};

use ourchat_storage::msglog::disk::FileDisk;
use ourchat_storage::msglog::store::{Append, MessageStore};
use ourchat_storage::ChatMessage;

/// The node's allocator: freeing and growing large maps is its work.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SEGMENT: u64 = 16 << 20;
const BATCH: i64 = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let conversations: i64 = match std::env::args().nth(1) {
        Some(count) => count.parse()?,
        None => 1_000_000,
    };
    let one_group = std::env::args().nth(2).as_deref() == Some("one");
    let dir = tempfile::tempdir()?;
    let mut store = MessageStore::open(FileDisk::new(dir.path())?, SEGMENT)?;
    let mut times = Vec::new();
    let mut batch = Vec::with_capacity(BATCH as usize);
    for first in (0..conversations).step_by(BATCH as usize) {
        batch.clear();
        batch.extend(
            (first..(first + BATCH).min(conversations)).map(|i| ChatMessage {
                conversation_id: if one_group {
                    "sg_42".to_string()
                } else {
                    format!("si_{}_{}", 1_000_000 + i, 5_000_000 + i)
                },
                // The group's 1,000 members take turns.
                sender_id: 1_000_000 + if one_group { i % 1_000 } else { i },
                client_message_id: i,
                server_msg_id: i,
                sent_at_ms: 1,
                content: "forty bytes of chat text, a typical line".into(),
                ..Default::default()
            }),
        );
        let appends: Vec<Append<'_>> = batch.iter().map(Append::Message).collect();
        let started = Instant::now();
        store.append(&appends)?;
        let took = started.elapsed();
        if took > Duration::from_millis(20) {
            println!("batch at {first} messages: {took:.1?}");
        }
        times.push(took);
    }
    let total: Duration = times.iter().sum();
    times.sort();
    println!(
        "{} batches: median {:.2?}, max {:.1?}, all {:.2?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        total
    );
    Ok(())
}
