//! The store's writer against a disk in memory: numbering, resends of any
//! age, given seqs, lost segments caught by the marks, cursors, summaries
//! against records, and random crashes that must lose no acked message.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::msglog::testing::MemDisk;

const SEGMENT: u64 = 32 << 10;

fn message(conversation: &str, sender: i64, cmid: i64, content: &str) -> ChatMessage {
    ChatMessage {
        conversation_id: conversation.into(),
        sender_id: sender,
        client_message_id: cmid,
        server_msg_id: 1_000 + cmid,
        sent_at_ms: 10 * cmid,
        content: content.into(),
        ..Default::default()
    }
}

/// Appends `messages` as one batch.
fn append(
    store: &mut MessageStore<MemDisk>,
    messages: &[ChatMessage],
) -> Result<Vec<Appended>, LogError> {
    let appends: Vec<Append<'_>> = messages.iter().map(Append::Message).collect();
    store.append(&appends).map(|o| o.appended)
}

/// The reads the tests check, on the writer's own disk.
trait Reads {
    fn last_seq(&self, conversation: ConversationId) -> i64;
    fn cursor(&self, user_id: i64, device_id: &str, conversation: ConversationId) -> i64;
    fn history(
        &self,
        conversation: ConversationId,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, LogError>;
    fn after(
        &self,
        conversation: ConversationId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, LogError>;
}

impl Reads for MessageStore<MemDisk> {
    fn last_seq(&self, conversation: ConversationId) -> i64 {
        self.with(|index, _| index.last_seq(conversation))
    }
    fn cursor(&self, user_id: i64, device_id: &str, conversation: ConversationId) -> i64 {
        self.with(|index, _| index.cursor(user_id, device_id, conversation))
    }
    fn history(
        &self,
        conversation: ConversationId,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, LogError> {
        self.with(|index, disk| index.history(disk, conversation, before, limit))
    }
    fn after(
        &self,
        conversation: ConversationId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, LogError> {
        self.with(|index, disk| index.after(disk, conversation, after, limit))
    }
}

fn conv(id: &str) -> ConversationId {
    id.parse().unwrap()
}

#[test]
fn seqs_are_given_in_order_and_a_resend_of_any_age_gets_the_first() {
    let disk = MemDisk::default();
    let mut store = MessageStore::open(disk.clone(), SEGMENT).unwrap();
    let batch: Vec<ChatMessage> = (1..=300)
        .map(|i| {
            message(
                if i % 3 == 0 { "sg_9" } else { "si_1_2" },
                1,
                i,
                &format!("m{i}"),
            )
        })
        .collect();
    let outcomes = append(&mut store, &batch).unwrap();
    assert_eq!(outcomes[0], Appended::Stored(1));
    assert_eq!(outcomes[2], Appended::Stored(1), "the group's own seqs");
    assert_eq!(store.last_seq(conv("si_1_2")), 200);
    assert_eq!(store.last_seq(conv("sg_9")), 100);
    let again = append(
        &mut store,
        &[
            message("si_1_2", 1, 1, "m1"),
            message("si_1_2", 1, 1_000, "new"),
            message("si_1_2", 1, 2, "not m2"),
            message("si_1_2", 1, 1_000, "new"),
            message("nonsense", 1, 5, "x"),
        ],
    )
    .unwrap();
    let first = |seq, same_content| {
        Appended::SentBefore(SentBefore {
            seq,
            server_msg_id: 1_001,
            sent_at_ms: 10,
            same_content,
        })
    };
    assert_eq!(again[0], first(1, true));
    assert_eq!(again[1], Appended::Stored(201), "resends took no seq");
    assert!(matches!(
        again[2],
        Appended::SentBefore(SentBefore {
            seq: 2,
            same_content: false,
            ..
        })
    ));
    assert!(
        matches!(
            again[3],
            Appended::SentBefore(SentBefore {
                seq: 201,
                same_content: true,
                ..
            })
        ),
        "twice in one batch"
    );
    assert_eq!(again[4], Appended::Refused);

    let newest: Vec<i64> = store
        .history(conv("si_1_2"), 0, 3)
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(newest, [201, 200, 199]);
    let page: Vec<i64> = store
        .history(conv("si_1_2"), 50, 2)
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(page, [49, 48]);
    let after: Vec<String> = store
        .after(conv("si_1_2"), 199, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(after, ["m299", "new"]);

    // All of it again after a reopen, and numbering goes on.
    drop(store);
    let mut store = MessageStore::open(disk, SEGMENT).unwrap();
    assert_eq!(store.last_seq(conv("si_1_2")), 201);
    assert_eq!(
        append(&mut store, &[message("si_1_2", 1, 1, "m1")]).unwrap()[0],
        first(1, true)
    );
    assert_eq!(
        append(&mut store, &[message("si_1_2", 2, 1, "bob's 1")]).unwrap()[0],
        Appended::Stored(202)
    );
}

#[test]
fn a_given_seq_is_taken_once_whether_indexed_or_earlier_in_its_batch() {
    let mut store = MessageStore::open(MemDisk::default(), SEGMENT).unwrap();
    let given = |seq, sender, cmid| ChatMessage {
        seq,
        ..message("si_1_2", sender, cmid, "x")
    };
    assert_eq!(
        append(&mut store, &[given(3, 1, 1)]).unwrap(),
        [Appended::Stored(3)]
    );
    let outcomes = append(
        &mut store,
        &[
            given(5, 1, 2),
            given(5, 2, 1),
            given(3, 2, 2),
            given(7, 1, 2),
            message("si_1_2", 2, 3, "unnumbered"),
            given(4, 2, 4),
            message("si_1_3", 1, 9, "another conversation's seqs are its own"),
        ],
    )
    .unwrap();
    assert_eq!(
        outcomes,
        [
            Appended::Stored(5),
            Appended::SeqTaken,
            Appended::SeqTaken,
            Appended::SeqTaken,
            Appended::Stored(6),
            Appended::Stored(4),
            Appended::Stored(1),
        ],
        "a seq taken earlier in the batch or before it, a resend with a seq, the newest + 1"
    );
    assert_eq!(store.last_seq(conv("si_1_2")), 6);
}

#[test]
fn a_log_that_lost_acked_messages_refuses_to_open() {
    let disk = MemDisk::default();
    let mut store = MessageStore::open(disk.clone(), 4 << 10).unwrap();
    for i in 1..=60 {
        append(&mut store, &[message("si_1_2", 1, i, &"x".repeat(200))]).unwrap();
    }
    store.checkpoint().unwrap();
    drop(store);
    let image = disk.image();
    assert!(image.len() > 3, "several segments: {}", image.len());
    // The newest segment gone (the log alone would not notice).
    let mut lost = image.clone();
    lost.pop_last();
    disk.set_image(lost);
    let refused = |disk: &MemDisk| {
        MessageStore::open(disk.clone(), 4 << 10)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let cut = refused(&disk);
    assert!(cut.contains("but batch 60 was acknowledged"), "{cut}");
    // Without the log-end file, the marks still catch it.
    disk.0.borrow_mut().end.clear();
    let lost = refused(&disk);
    assert!(lost.contains("but seq 60 was acknowledged"), "{lost}");
    // A garbled marks file is refused too.
    disk.set_image(image);
    let garbled = disk.0.borrow().marks.clone().map(|mut m| {
        m[6] ^= 1;
        m
    });
    disk.0.borrow_mut().marks = garbled;
    assert!(matches!(
        MessageStore::open(disk.clone(), 4 << 10),
        Err(LogError::BadMarks("checksum"))
    ));
}

/// On segment files, where the marks of a batch that opens a segment
/// are written on a thread of their own: they still catch a lost
/// segment, without the log-end file's help.
#[test]
fn marks_written_off_the_writer_still_catch_a_lost_segment() {
    use crate::msglog::disk::FileDisk;
    let dir = tempfile::tempdir().unwrap();
    let open = || MessageStore::open(FileDisk::new(dir.path()).unwrap(), 4 << 10);
    let mut store = open().unwrap();
    for i in 1..=60 {
        let conversation = format!("si_{}_{}", 1 + i % 5, 100);
        let batch = [message(&conversation, 1 + i % 5, i, &"x".repeat(200))];
        let appends: Vec<Append<'_>> = batch.iter().map(Append::Message).collect();
        store.append(&appends).unwrap();
    }
    // Dropping the store waits for the marks still being written.
    drop(store);
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    assert!(segments.len() > 3, "several segments: {segments:?}");
    let marks = std::fs::read(dir.path().join("marks")).unwrap();
    assert!(marks.len() > 12, "marks of several conversations");
    assert!(open().is_ok());

    // Two segments gone: the marks, written when the newer of them
    // was opened, name a seq that is no longer there.
    for lost in &segments[segments.len() - 2..] {
        std::fs::remove_file(lost).unwrap();
    }
    std::fs::remove_file(dir.path().join("end")).unwrap();
    let refused = open().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("was acknowledged"), "{refused}");
}

#[test]
fn cursors_only_move_forward_and_survive_reopening() {
    let disk = MemDisk::default();
    let mut store = MessageStore::open(disk.clone(), SEGMENT).unwrap();
    let cursor = |seq| Append::Cursor {
        user_id: 7,
        device_id: "phone",
        conversation: conv("si_1_7"),
        seq,
    };
    store.append(&[cursor(5), cursor(3)]).unwrap();
    store.append(&[cursor(4)]).unwrap();
    assert_eq!(store.cursor(7, "phone", conv("si_1_7")), 5);
    assert_eq!(store.cursor(7, "laptop", conv("si_1_7")), 0);
    drop(store);
    let store = MessageStore::open(disk, SEGMENT).unwrap();
    assert_eq!(store.cursor(7, "phone", conv("si_1_7")), 5);
}

/// Summaries of sealed segments rebuild the very index the records
/// do; a damaged summary, or a whole one that does not match its
/// segment, is ignored and the index is still right.
#[test]
fn an_index_from_summaries_is_the_index_from_records() {
    let disk = MemDisk::default();
    let mut store = MessageStore::open(disk.clone(), 4 << 10).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..200i64 {
        let conversation = ["si_1_2", "si_1_3", "sg_4", "si_2_3"][rng.gen_range(0..4)];
        let sent = message(
            conversation,
            1 + round % 3,
            round,
            &"y".repeat(rng.gen_range(1..200)),
        );
        let event = message("sg_4", 1, 10_000 + round, "joined");
        let mut appends = vec![Append::Message(&sent)];
        match round % 5 {
            0 => appends.push(Append::Group {
                event: &event,
                readers: &[5, 6],
                change: b"change",
            }),
            1 => appends.push(Append::Read {
                user_id: 2,
                conversation: conv(conversation),
                seq: rng.gen_range(1..10),
            }),
            2 => appends.push(Append::Recall {
                conversation: conv("si_1_2"),
                seq: 1,
                sender_id: 1,
                not_before_ms: 0,
            }),
            _ => {}
        }
        appends.push(Append::Cursor {
            user_id: 3,
            device_id: ["phone", "laptop"][rng.gen_range(0..2)],
            conversation: conv(conversation),
            seq: rng.gen_range(0..50),
        });
        store.append(&appends).unwrap();
    }
    let expected = store.with(|index, _| index.canonical());
    drop(store);
    let summaries = disk.0.borrow().summaries.len() as u64;
    let segments = disk.0.borrow().visible.len() as u64;
    assert!(
        summaries >= 5 && summaries == segments - 1,
        "{summaries} of {segments}: {:?}",
        disk.0.borrow().summaries.keys().collect::<Vec<_>>()
    );
    let reopened = |disk: &MemDisk| {
        let mut groups = 0;
        let store =
            MessageStore::open_replaying(disk.clone(), 4 << 10, true, |event, change, _| {
                assert_eq!((event.content.as_str(), change), ("joined", &b"change"[..]));
                groups += 1;
            })
            .unwrap();
        (store.with(|index, _| index.canonical()), groups)
    };
    assert_eq!(reopened(&disk), (expected.clone(), 40));
    // Damaged: that segment is read record by record (and summarized
    // again).
    let damaged = {
        let summaries = &mut disk.0.borrow_mut().summaries;
        let summary = summaries.get_mut(&2).unwrap();
        summary[40] ^= 1;
        summary.clone()
    };
    assert_eq!(reopened(&disk), (expected.clone(), 40));
    assert_ne!(disk.0.borrow().summaries[&2], damaged, "written again");
    // Whole but of other batches: segment 3's summary under 2's name.
    let mut state = disk.0.borrow_mut();
    let third = state.summaries[&3].clone();
    let forged = crate::msglog::summary::renumbered(&third, 2);
    state.summaries.insert(2, forged);
    drop(state);
    assert_eq!(reopened(&disk), (expected, 40));
}

/// Crashes at random points: every acked message is back under its
/// seq, seqs stay gapless, a resend of an acked one gets its first seq,
/// cursors are at least where they were acked.
#[test]
fn crashes_lose_no_acked_message_and_never_renumber() {
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let disk = MemDisk::default();
        let mut acked: BTreeMap<(String, i64), (i64, String)> = BTreeMap::new();
        let mut acked_cursor = 0;
        let mut pending_cursor;
        let mut next_cmid = 1;
        for round in 0..rng.gen_range(1..4) {
            let mut store = MessageStore::open(disk.clone(), SEGMENT)
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            for ((conversation, cmid), (seq, content)) in &acked {
                let page = store.history(conv(conversation), seq + 1, 1).unwrap();
                assert_eq!(
                    page[0].content, *content,
                    "seed {seed}: {conversation} {cmid}"
                );
                let last = store.last_seq(conv(conversation));
                assert_eq!(
                    store
                        .history(conv(conversation), 0, usize::MAX)
                        .unwrap()
                        .len() as i64,
                    last
                );
            }
            assert!(
                store.cursor(3, "d", conv("si_1_3")) >= acked_cursor,
                "seed {seed}"
            );
            // What was only written before the crash may be gone.
            pending_cursor = acked_cursor;
            for _ in 0..rng.gen_range(1..30) {
                if rng.gen_range(0..25) == 0 {
                    disk.0.borrow_mut().fail_next_sync = true;
                }
                let mut batch = Vec::new();
                // A quarter of the batches are cursor moves alone (not
                // fsynced: durable with the next batch that is).
                let messages_in_batch = match rng.gen_range(0..4) {
                    0 => 0,
                    _ => rng.gen_range(1..20),
                };
                for _ in 0..messages_in_batch {
                    let conversation = ["si_1_2", "si_1_3", "sg_4"][rng.gen_range(0..3)];
                    let cmid = match (rng.gen_range(0..5), acked.keys().next()) {
                        (0, Some((_, old))) => *old,
                        _ => {
                            next_cmid += 1;
                            next_cmid
                        }
                    };
                    let content = "x".repeat(rng.gen_range(1..400));
                    batch.push((conversation, cmid, content));
                }
                let cursor_seq = rng.gen_range(0..1_000);
                let messages: Vec<ChatMessage> = batch
                    .iter()
                    .map(|(c, cmid, content)| message(c, 1, *cmid, content))
                    .collect();
                let mut appends: Vec<Append<'_>> = messages.iter().map(Append::Message).collect();
                appends.push(Append::Cursor {
                    user_id: 3,
                    device_id: "d",
                    conversation: conv("si_1_3"),
                    seq: cursor_seq,
                });
                let Ok(outcomes) = store.append(&appends).map(|o| o.appended) else {
                    break;
                };
                pending_cursor = pending_cursor.max(cursor_seq);
                if outcomes.iter().any(|o| matches!(o, Appended::Stored(_))) {
                    acked_cursor = acked_cursor.max(pending_cursor);
                }
                for ((conversation, cmid, content), outcome) in batch.into_iter().zip(outcomes) {
                    let key = (conversation.to_string(), cmid);
                    match outcome {
                        Appended::Stored(seq) => {
                            assert!(
                                acked.insert(key, (seq, content)).is_none(),
                                "seed {seed}: stored twice"
                            );
                        }
                        Appended::SentBefore(first) => {
                            if let Some((seq, _)) = acked.get(&key) {
                                assert_eq!(first.seq, *seq, "seed {seed}: a resend renumbered");
                            }
                        }
                        other => panic!("seed {seed}: {other:?}"),
                    }
                }
            }
            drop(store);
            disk.crash(&mut rng);
        }
    }
}
