//! The embedded store as an operator meets it: a data directory written by
//! the SQLite-only store is moved into the message log at first open (and
//! only once), damage to the log refuses to start naming the file, a lost
//! log is not taken for an empty one, a crash between the log and SQLite
//! is caught up, and a second process cannot open the same directory.

use ourchat_storage::embedded::{EmbeddedBackend, LOG_DIR};
use ourchat_storage::sqlite::{Durability, SqliteBackend};
use ourchat_storage::{
    Backend, ChatMessage, GroupChange, GroupRole, NewGroup, StoreError, WriteOp, WriteOutcome,
};

fn text(conv: &str, sender: i64, cmid: i64, at: i64) -> ChatMessage {
    ChatMessage {
        conversation_id: conv.into(),
        server_msg_id: 1_000 + cmid,
        sender_id: sender,
        receiver_id: if sender == 1 { 2 } else { 1 },
        content: format!("m{cmid}"),
        client_message_id: cmid,
        sent_at_ms: at,
        sender_device: "d".into(),
        ..Default::default()
    }
}

fn open(dir: &std::path::Path) -> Result<EmbeddedBackend, StoreError> {
    EmbeddedBackend::open(dir, Durability::Normal)
}

fn group_create(group: i64, owner: i64, members: Vec<i64>) -> WriteOp {
    WriteOp::GroupChange {
        event: Box::new(ChatMessage {
            conversation_id: format!("sg_{group}"),
            server_msg_id: 77,
            sender_id: owner,
            message_type: 6,
            client_message_id: 500,
            sent_at_ms: 5,
            group_id: group,
            ..Default::default()
        }),
        change: GroupChange::Create {
            group: NewGroup {
                group_id: group,
                name: "g".into(),
                description: String::new(),
                avatar_url: String::new(),
                owner_id: owner,
                created_at_ms: 5,
            },
            members,
        },
    }
}

#[test]
fn a_store_written_before_the_log_is_moved_into_it_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let old = SqliteBackend::open(dir.path(), Durability::Normal).unwrap();
        let mut writer = old.writer().unwrap();
        let mut ops: Vec<WriteOp> = (1..=300)
            .map(|i| WriteOp::AppendMessage(Box::new(text("si_1_2", 1 + i % 2, i, i))))
            .collect();
        ops.push(WriteOp::AppendMessage(Box::new(text(
            "si_1_3", 3, 1, 1_000,
        ))));
        ops.push(group_create(9, 1, vec![2]));
        writer.apply_batch(&ops).unwrap();
        writer
            .apply_batch(&[
                WriteOp::AdvanceCursor {
                    user_id: 2,
                    device_id: "phone".into(),
                    conversation: "si_1_2".parse().unwrap(),
                    seq: 250,
                },
                WriteOp::MarkRead {
                    user_id: 2,
                    conversation_id: "si_1_2".into(),
                    seq: 240,
                },
                WriteOp::Recall {
                    conversation_id: "si_1_2".into(),
                    seq: 7,
                    sender_id: 2,
                    not_before_ms: 0,
                },
            ])
            .unwrap();
    }
    for round in 0..2 {
        let store = open(dir.path()).unwrap();
        let mut reader = store.reader().unwrap();
        let history = reader.history("si_1_2", 0, 1_000).unwrap();
        // Round 1 also sees round 0's new message.
        assert_eq!(history.len() as i64, 300 + round, "round {round}");
        assert_eq!(history[0].seq, 300 + round);
        assert_eq!(history.last().unwrap().content, "m1");
        let recalled = reader.message("si_1_2", 7).unwrap().unwrap();
        assert!(recalled.recalled && recalled.content.is_empty());
        assert_eq!(reader.read_seq(2, "si_1_2").unwrap(), 299, "own sends");
        assert_eq!(reader.read_seq(1, "sg_9").unwrap(), 1, "own join");
        let cursors = reader.conversation_cursors(2, "phone").unwrap();
        let direct = cursors
            .iter()
            .find(|c| c.conversation_id == "si_1_2")
            .unwrap();
        assert_eq!((direct.last_seq, direct.delivered_seq), (300 + round, 250));
        assert!(cursors.iter().any(|c| c.conversation_id == "sg_9"));
        let list = reader.conversations(1, None, 10).unwrap();
        let ids: Vec<&str> = list.iter().map(|c| c.conversation_id.as_str()).collect();
        assert_eq!(ids, ["si_1_3", "si_1_2", "sg_9"], "round {round}");
        assert!(reader.conversation_head("sg_9", 5).unwrap().group.is_some());
        let mut writer = store.writer().unwrap();
        // An old client id is still known; numbering goes on.
        let outcomes = writer
            .apply_batch(&[
                WriteOp::AppendMessage(Box::new(text("si_1_2", 1, 2, 2))),
                WriteOp::AppendMessage(Box::new(text("si_1_2", 1, 10_000 + round, 9))),
                // Recalled before the move: not again.
                WriteOp::Recall {
                    conversation_id: "si_1_2".into(),
                    seq: 7,
                    sender_id: 2,
                    not_before_ms: 0,
                },
            ])
            .unwrap();
        assert_eq!(outcomes[2], WriteOutcome::Refused);
        assert!(
            matches!(&outcomes[0], WriteOutcome::SentBefore(first) if first.seq == 2),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[1], WriteOutcome::Appended { seq: 301 + round });
    }
    // SQLite no longer holds the messages.
    let conn = rusqlite::Connection::open(dir.path().join("ourchat.db")).unwrap();
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

fn segment(dir: &std::path::Path, n: u64) -> std::path::PathBuf {
    dir.join(LOG_DIR).join(format!("{n:012}.seg"))
}

#[test]
fn damage_to_acked_messages_refuses_to_start_naming_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment(dir.path(), 1);
    let written_end = || {
        let bytes = std::fs::read(&path).unwrap();
        bytes.iter().rposition(|b| *b != 0).unwrap() + 1
    };
    let mut halfway = 0;
    for half in 0..2 {
        let store = open(dir.path()).unwrap();
        let mut writer = store.writer().unwrap();
        for i in 1..=10 {
            let cmid = half * 10 + i;
            writer
                .apply_batch(&[WriteOp::AppendMessage(Box::new(text(
                    "si_1_2", 1, cmid, cmid,
                )))])
                .unwrap();
        }
        drop(writer);
        drop(store);
        if half == 0 {
            halfway = written_end();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let pristine = bytes.clone();
    let written = written_end();
    bytes[written / 2] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let refused = open(dir.path()).err().map(|e| e.to_string()).unwrap();
    assert!(refused.contains(LOG_DIR), "{refused}");
    assert!(
        refused.contains("segment 1 is damaged at byte"),
        "{refused}"
    );
    assert!(refused.contains("restore"), "{refused}");

    // The newest half zeroed (what a lost tail looks like): the log-end
    // file knows more was acknowledged.
    let mut zeroed = pristine.clone();
    zeroed[halfway..].fill(0);
    std::fs::write(&path, &zeroed).unwrap();
    let refused = open(dir.path()).err().map(|e| e.to_string()).unwrap();
    assert!(
        refused.contains("but batch 20 was acknowledged"),
        "{refused}"
    );

    // A segment cut short is damage too, never an empty log.
    std::fs::write(&path, &pristine[..written / 2]).unwrap();
    let refused = open(dir.path()).err().map(|e| e.to_string()).unwrap();
    assert!(refused.contains("truncated"), "{refused}");

    // The whole log gone: refused, not started empty.
    std::fs::remove_dir_all(dir.path().join(LOG_DIR)).unwrap();
    let refused = open(dir.path()).err().map(|e| e.to_string()).unwrap();
    assert!(refused.contains("missing or empty"), "{refused}");
}

#[test]
fn group_tables_catch_up_with_the_log_after_a_crash_between_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        let mut writer = store.writer().unwrap();
        let outcomes = writer
            .apply_batch(&[group_create(4, 1, vec![2, 3])])
            .unwrap();
        assert_eq!(outcomes, [WriteOutcome::Appended { seq: 1 }]);
    }
    // As if SQLite's commit never reached the disk.
    let conn = rusqlite::Connection::open(dir.path().join("ourchat.db")).unwrap();
    conn.execute_batch(
        "DELETE FROM chat_groups; DELETE FROM group_members; DELETE FROM user_conversations;
         UPDATE message_log SET applied_batch = 0;",
    )
    .unwrap();
    drop(conn);
    let store = open(dir.path()).unwrap();
    let mut reader = store.reader().unwrap();
    let roster = reader.conversation_head("sg_4", 0).unwrap().group.unwrap();
    let mut members = roster.members;
    members.sort_by_key(|(id, _)| *id);
    assert_eq!(
        members,
        [
            (1, GroupRole::Owner),
            (2, GroupRole::Member),
            (3, GroupRole::Member)
        ]
    );
    assert_eq!(reader.visibility(3, "sg_4").unwrap().unwrap().from_seq, 1);
    drop(reader);
    drop(store);
    // Applied once: a second open changes nothing.
    let store = open(dir.path()).unwrap();
    let mut reader = store.reader().unwrap();
    assert_eq!(reader.group(4, 1).unwrap().unwrap().member_count, 3);
}

#[test]
fn one_process_at_a_time_and_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let second = open(dir.path()).err().map(|e| e.to_string()).unwrap();
    assert!(
        second.contains("in use by another ourchat process"),
        "{second}"
    );
    let _writer = store.writer().unwrap();
    assert!(store.writer().is_err());
    drop(_writer);
    drop(store);
    assert!(open(dir.path()).is_ok(), "the lock goes with the store");
}

#[test]
fn a_writer_batch_bigger_than_a_segment_is_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let mut writer = store.writer().unwrap();
    // 1,200 messages of 60 KB: 72 MB, more than one 64 MiB segment holds.
    let big = "x".repeat(60_000);
    let ops: Vec<WriteOp> = (1..=1_200)
        .map(|i| {
            let mut message = text("si_1_2", 1, i, i);
            message.content = big.clone();
            WriteOp::AppendMessage(Box::new(message))
        })
        .collect();
    let outcomes = writer.apply_batch(&ops).unwrap();
    assert_eq!(outcomes.len(), 1_200);
    assert_eq!(outcomes[1_199], WriteOutcome::Appended { seq: 1_200 });
    drop(writer);
    drop(store);
    let store = open(dir.path()).unwrap();
    let mut reader = store.reader().unwrap();
    assert_eq!(
        reader.conversation_head("si_1_2", 0).unwrap().last_seq,
        1_200
    );
    assert_eq!(
        reader.history("si_1_2", 0, 1).unwrap()[0].content.len(),
        60_000
    );
}

#[test]
fn a_first_send_s_head_is_known_from_memory_and_follows_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let conv: ourchat_protocol::ConversationId = "si_1_2".parse().unwrap();
    let block = |block| WriteOp::Block {
        user_id: 2,
        blocked_id: 1,
        block,
        at_ms: 1,
    };
    {
        let store = open(dir.path()).unwrap();
        let memory = store.memory_reads().unwrap();
        let mut writer = store.writer().unwrap();
        let mut reader = store.reader().unwrap();
        let head = memory.empty_direct_head(conv).unwrap();
        assert_eq!((head.last_seq, head.blocked), (0, false));
        assert!(head.recent.is_empty());
        assert_eq!(head, reader.conversation_head("si_1_2", 16).unwrap());
        // Groups are never answered from memory: their roster is SQLite's.
        assert!(memory.empty_direct_head("sg_9".parse().unwrap()).is_none());

        assert_eq!(
            writer.apply_batch(&[block(true)]).unwrap(),
            [WriteOutcome::Done]
        );
        assert!(memory.empty_direct_head(conv).unwrap().blocked);
        assert!(reader.conversation_head("si_1_2", 16).unwrap().blocked);
        assert_eq!(
            writer.apply_batch(&[block(false)]).unwrap(),
            [WriteOutcome::Done]
        );
        assert!(!memory.empty_direct_head(conv).unwrap().blocked);
        // An unblock of what is not blocked changes nothing.
        assert_eq!(
            writer.apply_batch(&[block(false)]).unwrap(),
            [WriteOutcome::Refused]
        );
        writer.apply_batch(&[block(true)]).unwrap();

        // Once the conversation holds a message, a reader loads its head.
        writer
            .apply_batch(&[WriteOp::AppendMessage(Box::new(text("si_1_2", 1, 1, 1)))])
            .unwrap();
        assert!(memory.empty_direct_head(conv).is_none());
        let head = reader.conversation_head("si_1_2", 16).unwrap();
        assert_eq!(
            (head.last_seq, head.recent.len(), head.blocked),
            (1, 1, true)
        );
    }
    // Blocks are read back at open.
    let store = open(dir.path()).unwrap();
    let memory = store.memory_reads().unwrap();
    assert!(memory
        .empty_direct_head("si_2_3".parse().unwrap())
        .is_some());
    assert!(
        store
            .reader()
            .unwrap()
            .conversation_head("si_1_2", 16)
            .unwrap()
            .blocked
    );
}

#[test]
fn accounts_and_revoked_devices_are_known_from_memory_as_the_store_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let account = |user_id, username: &str| {
        WriteOp::CreateAccount(ourchat_storage::NewAccount {
            user_id,
            username: username.into(),
            password_hash: "h".into(),
            phone: String::new(),
            email: String::new(),
            nickname: String::new(),
            created_at_ms: 1,
        })
    };
    let touch = |user_id, device: &str| WriteOp::TouchDevice {
        user_id,
        device_id: device.into(),
        device_type: "test".into(),
        seen_at_ms: 1,
    };
    let revoke = |user_id, device: &str| WriteOp::RevokeDevice {
        user_id,
        device_id: device.into(),
    };
    {
        let store = open(dir.path()).unwrap();
        let memory = store.memory_reads().unwrap();
        let mut writer = store.writer().unwrap();
        assert!(!memory.account_known(1));
        assert_eq!(memory.token_epoch(1, "a"), None, "unknown: ask the store");
        let outcomes = writer
            .apply_batch(&[
                account(1, "ann"),
                account(2, "ann"),
                touch(1, "a"),
                touch(1, "b"),
                touch(1, "c"),
            ])
            .unwrap();
        assert_eq!(outcomes[1], WriteOutcome::UsernameTaken);
        assert!(memory.account_known(1));
        assert!(!memory.account_known(2), "a refused account is not known");
        assert_eq!(memory.token_epoch(1, "a"), Some(0));

        // A revocation is known before the writer answers it; a refused
        // one (no such device) changes nothing.
        let outcomes = writer
            .apply_batch(&[revoke(1, "a"), revoke(1, "nope")])
            .unwrap();
        assert_eq!(outcomes, [WriteOutcome::Done, WriteOutcome::Refused]);
        assert_eq!(memory.token_epoch(1, "a"), Some(1));
        assert_eq!(memory.token_epoch(1, "b"), Some(0));
        // A password change revokes every device but the one that asked.
        writer
            .apply_batch(&[WriteOp::SetPassword {
                user_id: 1,
                password_hash: "h2".into(),
                keep_device: "b".into(),
            }])
            .unwrap();
        let epochs = ["a", "b", "c"].map(|d| memory.token_epoch(1, d));
        assert_eq!(epochs, [Some(2), Some(0), Some(1)]);

        // The same as SQLite holds.
        let mut reader = store.reader().unwrap();
        let stored = |reader: &mut Box<dyn ourchat_storage::ReadStore>, d| {
            reader.device(1, d).unwrap().map(|d| d.token_epoch)
        };
        assert_eq!(stored(&mut reader, "a"), Some(2));
        assert_eq!(stored(&mut reader, "c"), Some(1));
    }
    // Read back at open.
    let store = open(dir.path()).unwrap();
    let memory = store.memory_reads().unwrap();
    assert!(memory.account_known(1) && !memory.account_known(2));
    let epochs = ["a", "b", "c", "never-seen"].map(|d| memory.token_epoch(1, d));
    assert_eq!(epochs, [Some(2), Some(0), Some(1), Some(0)]);
}
