//! The store contract, checked on every backend: the embedded SQLite
//! store always, and the sharded MySQL store over two fresh databases
//! whenever `OURCHAT_TEST_MYSQL` names a server (`make test` starts one;
//! with `OURCHAT_REQUIRE_ENGINES=1` its absence is a failure, not a skip).
//! MySQL-only properties (rows spread over shards, a conversation on one
//! shard, reconnecting after a lost connection) follow.

use std::sync::atomic::{AtomicUsize, Ordering};

use mysql_async::prelude::Queryable;
use ourchat_storage::embedded::EmbeddedBackend;
use ourchat_storage::mysql::{MysqlBackend, Placement};
use ourchat_storage::sqlite::{Durability, SqliteBackend};
use ourchat_storage::{
    Backend, ChatMessage, ConversationCursor, GroupChange, GroupRole, NewAccount, NewGroup,
    SentBefore, StoreError, Visibility, WriteOp, WriteOutcome,
};

/// Fresh MySQL shard URLs (databases created on connect), or `None` when
/// no server is configured.
fn fresh_mysql_shards(tag: &str, count: usize) -> Option<Vec<String>> {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let Ok(urls) = std::env::var("OURCHAT_TEST_MYSQL") else {
        assert!(
            std::env::var("OURCHAT_REQUIRE_ENGINES").is_err(),
            "OURCHAT_TEST_MYSQL is not set but OURCHAT_REQUIRE_ENGINES is"
        );
        eprintln!("OURCHAT_TEST_MYSQL not set: MySQL half of {tag} skipped");
        return None;
    };
    let first = urls.split(',').next().unwrap_or_default();
    let server = &first[..first.rfind('/').unwrap()];
    let run = RUN.fetch_add(1, Ordering::SeqCst);
    Some(
        (0..count)
            .map(|i| format!("{server}/ourchat_t{}_{tag}_{run}_{i}", std::process::id()))
            .collect(),
    )
}

fn each_backend(tag: &str, scenario: fn(&dyn Backend)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteBackend::open(dir.path(), Durability::Normal).unwrap();
    scenario(&sqlite);
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedBackend::open(dir.path(), Durability::Normal).unwrap();
    scenario(&embedded);
    if let Some(shards) = fresh_mysql_shards(tag, 2) {
        let mysql = MysqlBackend::connect(&shards, &[]).unwrap();
        scenario(&mysql);
    }
}

/// Runs SQL straight on one shard database (to look behind the backend).
fn on_shard<T>(
    url: &str,
    work: impl for<'a> FnOnce(
        &'a mut mysql_async::Conn,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(url).unwrap())
            .await
            .unwrap();
        work(&mut conn).await
    })
}

fn message(conv: &str, seq: i64, sender: i64, cmid: i64) -> ChatMessage {
    ChatMessage {
        conversation_id: conv.into(),
        seq,
        server_msg_id: 1000 + seq,
        sender_id: sender,
        receiver_id: if sender == 1 { 2 } else { 1 },
        message_type: 0,
        content: format!("m{seq}"),
        client_message_id: cmid,
        sent_at_ms: 10 * seq,
        sender_device: "d".into(),
        ..Default::default()
    }
}

fn account(id: i64, name: &str) -> WriteOp {
    WriteOp::CreateAccount(NewAccount {
        user_id: id,
        username: name.into(),
        password_hash: "h".into(),
        phone: String::new(),
        email: String::new(),
        nickname: name.into(),
        created_at_ms: 0,
    })
}

#[test]
fn batch_reports_each_outcome_and_reads_back() {
    each_backend("batch_", batch_reports_each_outcome_and_reads_back_on);
}

fn batch_reports_each_outcome_and_reads_back_on(backend: &dyn Backend) {
    let mut writer = backend.writer().unwrap();
    let outcomes = writer
        .apply_batch(&[
            account(1, "alice"),
            account(2, "alice"),
            WriteOp::AppendMessage(Box::new(message("si_1_2", 1, 1, 7))),
            WriteOp::AppendMessage(Box::new(message("si_1_2", 2, 2, 7))),
            WriteOp::AppendMessage(Box::new(message("si_1_2", 3, 1, 7))),
            WriteOp::AdvanceCursor {
                user_id: 2,
                device_id: "d".into(),
                conversation: "si_1_2".parse().unwrap(),
                seq: 2,
            },
            WriteOp::AdvanceCursor {
                user_id: 2,
                device_id: "d".into(),
                conversation: "si_1_2".parse().unwrap(),
                seq: 1,
            },
        ])
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Done,
            WriteOutcome::UsernameTaken,
            WriteOutcome::Done,
            WriteOutcome::Done,
            WriteOutcome::Duplicate,
            WriteOutcome::Done,
            WriteOutcome::Done,
        ]
    );
    let mut reader = backend.reader().unwrap();
    assert_eq!(
        reader
            .account_by_username("alice")
            .unwrap()
            .unwrap()
            .user_id,
        1
    );
    assert!(reader.account_by_id(2).unwrap().is_none());
    let head = reader.conversation_head("si_1_2", 10).unwrap();
    assert_eq!(head.last_seq, 2);
    assert_eq!(head.recent.len(), 2);
    assert_eq!(head.recent[0].seq, 2);
    let history = reader.history("si_1_2", 0, 10).unwrap();
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(reader.history("si_1_2", 2, 10).unwrap().len(), 1);
    let after = reader.messages_after("si_1_2", 1, 10).unwrap();
    assert_eq!(after, vec![message("si_1_2", 2, 2, 7)]);
    let cursors = reader.conversation_cursors(2, "d").unwrap();
    assert_eq!(
        cursors,
        vec![ConversationCursor {
            conversation_id: "si_1_2".into(),
            last_seq: 2,
            delivered_seq: 2,
            visible: Visibility::default(),
        }]
    );
    assert_eq!(
        reader.conversation_cursors(1, "other").unwrap()[0].delivered_seq,
        0
    );
}

/// The friends of many users read at once (presence after a burst of
/// logins) are each user's own list, in the order asked, repeats and
/// users with none included.
#[test]
fn friends_of_each_user_read_together_match_one_by_one() {
    each_backend(
        "friends_",
        friends_of_each_user_read_together_match_one_by_one_on,
    );
}

fn friends_of_each_user_read_together_match_one_by_one_on(backend: &dyn Backend) {
    let mut writer = backend.writer().unwrap();
    let mut ops: Vec<WriteOp> = (1..=4).map(|id| account(id, &format!("f{id}"))).collect();
    for (from, to) in [(1, 2), (1, 3), (4, 2)] {
        ops.push(WriteOp::RequestFriend {
            from,
            to,
            note: String::new(),
            at_ms: 10 * from + to,
        });
        ops.push(WriteOp::AnswerFriend {
            from,
            to,
            accept: true,
            at_ms: 100 + 10 * from + to,
        });
    }
    assert!(writer
        .apply_batch(&ops)
        .unwrap()
        .iter()
        .all(|outcome| *outcome == WriteOutcome::Done));
    let mut reader = backend.reader().unwrap();
    let asked = [2, 1, 3, 2, 99, 4];
    let together = reader.friends_of_each(&asked).unwrap();
    let one_by_one: Vec<_> = asked.iter().map(|u| reader.friends(*u).unwrap()).collect();
    assert_eq!(together, one_by_one);
    let ids = |list: &Vec<(i64, i64)>| list.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    assert_eq!(ids(&together[0]), [1, 4]);
    assert_eq!(ids(&together[1]), [2, 3]);
    assert!(together[4].is_empty(), "no such user, no friends");
    assert!(reader.friends_of_each(&[]).unwrap().is_empty());
}

#[test]
fn the_store_gives_seqs_and_knows_every_client_id_however_old() {
    each_backend(
        "seqs",
        the_store_gives_seqs_and_knows_every_client_id_however_old_on,
    );
}

fn the_store_gives_seqs_and_knows_every_client_id_however_old_on(backend: &dyn Backend) {
    let mut writer = backend.writer().unwrap();
    let conv = "si_1_2";
    let ask = |cmid: i64, content: &str| {
        let mut m = message(conv, 0, 1, cmid);
        m.content = content.into();
        WriteOp::AppendMessage(Box::new(m))
    };
    // 300 sends over several batches: seqs 1..=300 in op order.
    let mut next = 1;
    for chunk in (1..=300).collect::<Vec<i64>>().chunks(70) {
        let ops: Vec<WriteOp> = chunk.iter().map(|&c| ask(c, &format!("c{c}"))).collect();
        for outcome in writer.apply_batch(&ops).unwrap() {
            assert_eq!(outcome, WriteOutcome::Appended { seq: next });
            next += 1;
        }
    }
    // The first, a middle and the last again, with a new send among them:
    // the resends take no seq, so the new one gets 301 (no gap).
    let outcomes = writer
        .apply_batch(&[
            ask(1, "c1"),
            ask(150, "c150"),
            ask(9_999, "new"),
            ask(300, "c300"),
        ])
        .unwrap();
    let first_of = |cmid: i64| {
        let seq = cmid;
        WriteOutcome::SentBefore(SentBefore {
            seq,
            server_msg_id: 1000,
            sent_at_ms: 0,
            same_content: true,
        })
    };
    assert_eq!(outcomes[0], first_of(1));
    assert_eq!(outcomes[1], first_of(150));
    assert_eq!(outcomes[2], WriteOutcome::Appended { seq: 301 });
    assert_eq!(outcomes[3], first_of(300));
    // Another payload under a used id is told apart, and stores nothing.
    let outcomes = writer.apply_batch(&[ask(7, "something else")]).unwrap();
    assert!(
        matches!(
            outcomes[0],
            WriteOutcome::SentBefore(SentBefore {
                seq: 7,
                same_content: false,
                ..
            })
        ),
        "{outcomes:?}"
    );
    // Another sender may use the same id.
    let mut bob = message(conv, 0, 2, 1);
    bob.content = "bob".into();
    let outcomes = writer
        .apply_batch(&[WriteOp::AppendMessage(Box::new(bob))])
        .unwrap();
    assert_eq!(outcomes[0], WriteOutcome::Appended { seq: 302 });
    let mut reader = backend.reader().unwrap();
    let head = reader.conversation_head(conv, 0).unwrap();
    assert_eq!(head.last_seq, 302);
    // What cluster mode asks when Redis has forgotten a send.
    let found = reader
        .sends_among(conv, &[(1, 1), (1, 150), (1, 9_999_999), (2, 1)])
        .unwrap();
    let seqs: Vec<i64> = found.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, [1, 150, 302]);
    assert_ne!(
        found[0].fingerprint, found[2].fingerprint,
        "payloads told apart"
    );
    let page = reader.history(conv, 0, 400).unwrap();
    assert_eq!(page.len(), 302, "every seq once, nothing else");
    assert!(page.windows(2).all(|w| w[0].seq == w[1].seq + 1), "gapless");
}

#[test]
fn payloads_read_cursors_recall_and_the_conversation_list() {
    each_backend(
        "payloa",
        payloads_read_cursors_recall_and_the_conversation_list_on,
    );
}

fn payloads_read_cursors_recall_and_the_conversation_list_on(backend: &dyn Backend) {
    let mut writer = backend.writer().unwrap();
    let mut image = message("si_1_2", 1, 1, 1);
    image.message_type = 1;
    image.media = Some(Box::new(ourchat_protocol::pb::MediaPayload {
        url: "https://cdn/x.png".into(),
        size_bytes: 10,
        mime: "image/png".into(),
        width: 3,
        height: 4,
        ..Default::default()
    }));
    let mut later = message("si_1_3", 1, 1, 2);
    later.receiver_id = 3;
    later.sent_at_ms = 1_000;
    writer
        .apply_batch(&[
            WriteOp::AppendMessage(Box::new(image.clone())),
            WriteOp::AppendMessage(Box::new(message("si_1_2", 2, 2, 1))),
            WriteOp::AppendMessage(Box::new(message("si_1_2", 3, 2, 2))),
            WriteOp::AppendMessage(Box::new(later)),
        ])
        .unwrap();
    let mut reader = backend.reader().unwrap();
    assert_eq!(reader.message("si_1_2", 1).unwrap(), Some(image));
    // Senders have read what they sent.
    assert_eq!(reader.read_seq(1, "si_1_2").unwrap(), 1);
    assert_eq!(reader.read_seq(2, "si_1_2").unwrap(), 3);
    let outcomes = writer
        .apply_batch(&[
            WriteOp::MarkRead {
                user_id: 1,
                conversation_id: "si_1_2".into(),
                seq: 2,
            },
            WriteOp::MarkRead {
                user_id: 1,
                conversation_id: "si_1_2".into(),
                seq: 1,
            },
            // Not the sender; too old; fine; already recalled.
            WriteOp::Recall {
                conversation_id: "si_1_2".into(),
                seq: 2,
                sender_id: 1,
                not_before_ms: 0,
            },
            WriteOp::Recall {
                conversation_id: "si_1_2".into(),
                seq: 2,
                sender_id: 2,
                not_before_ms: 21,
            },
            WriteOp::Recall {
                conversation_id: "si_1_2".into(),
                seq: 2,
                sender_id: 2,
                not_before_ms: 0,
            },
            WriteOp::Recall {
                conversation_id: "si_1_2".into(),
                seq: 2,
                sender_id: 2,
                not_before_ms: 0,
            },
        ])
        .unwrap();
    use WriteOutcome::{Done, Refused};
    assert_eq!(outcomes, vec![Done, Done, Refused, Refused, Done, Refused]);
    assert_eq!(reader.read_seq(1, "si_1_2").unwrap(), 2);
    let recalled = reader.message("si_1_2", 2).unwrap().unwrap();
    assert!(recalled.recalled && recalled.content.is_empty());

    let all = reader.conversations(1, None, 10).unwrap();
    let ids: Vec<&str> = all.iter().map(|c| c.conversation_id.as_str()).collect();
    assert_eq!(ids, vec!["si_1_3", "si_1_2"], "most recent first");
    assert_eq!((all[1].last_seq, all[1].read_seq), (3, 2));
    let first = reader.conversations(1, None, 1).unwrap();
    let key = (first[0].last_at_ms, first[0].conversation_id.as_str());
    let second = reader.conversations(1, Some(key), 1).unwrap();
    assert_eq!(second[0].conversation_id, "si_1_2");
    let key = (second[0].last_at_ms, second[0].conversation_id.as_str());
    assert!(reader.conversations(1, Some(key), 1).unwrap().is_empty());
}

fn event(group: i64, seq: i64, actor: i64) -> ChatMessage {
    ChatMessage {
        conversation_id: format!("sg_{group}"),
        seq,
        server_msg_id: 5000 + seq,
        sender_id: actor,
        message_type: 6,
        client_message_id: 9000 + seq,
        sent_at_ms: 10 * seq,
        group_id: group,
        ..Default::default()
    }
}

#[test]
fn group_changes_apply_with_their_event_and_bound_visibility() {
    each_backend(
        "group_",
        group_changes_apply_with_their_event_and_bound_visibility_on,
    );
}

fn group_changes_apply_with_their_event_and_bound_visibility_on(backend: &dyn Backend) {
    let mut writer = backend.writer().unwrap();
    let create = WriteOp::GroupChange {
        event: Box::new(event(7, 1, 1)),
        change: GroupChange::Create {
            group: NewGroup {
                group_id: 7,
                name: "g".into(),
                description: String::new(),
                avatar_url: String::new(),
                owner_id: 1,
                created_at_ms: 10,
            },
            members: vec![2],
        },
    };
    let mut text = message("sg_7", 2, 2, 1);
    text.receiver_id = 0;
    text.group_id = 7;
    let outcomes = writer
        .apply_batch(&[
            create.clone(),
            WriteOp::AppendMessage(Box::new(text)),
            WriteOp::GroupChange {
                event: Box::new(event(7, 3, 1)),
                change: GroupChange::Join(vec![3]),
            },
            WriteOp::GroupChange {
                event: Box::new(event(7, 4, 1)),
                change: GroupChange::Leave(vec![2]),
            },
        ])
        .unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Done; 4]);
    // A replayed event changes nothing.
    assert_eq!(
        writer.apply_batch(&[create]).unwrap(),
        vec![WriteOutcome::Duplicate]
    );
    let mut reader = backend.reader().unwrap();
    let head = reader.conversation_head("sg_7", 10).unwrap();
    assert_eq!(head.last_seq, 4);
    let roster = head.group.unwrap();
    let mut members = roster.members.clone();
    members.sort_by_key(|(id, _)| *id);
    assert_eq!(members, vec![(1, GroupRole::Owner), (3, GroupRole::Member)]);
    let late = reader.visibility(3, "sg_7").unwrap().unwrap();
    assert_eq!((late.from_seq, late.to_seq), (3, None));
    let gone = reader.visibility(2, "sg_7").unwrap().unwrap();
    assert_eq!((gone.from_seq, gone.to_seq), (1, Some(4)));
    assert!(reader.visibility(9, "sg_7").unwrap().is_none());
    // The list stops at what a departed member may see.
    let rows = reader.conversations(2, None, 10).unwrap();
    assert_eq!(rows[0].last_seq, 4);
    assert_eq!(reader.read_seq(3, "sg_7").unwrap(), 3, "own join is read");
    let group = reader.group(7, 3).unwrap().unwrap();
    assert_eq!(
        (group.member_count, group.viewer_role),
        (2, Some(GroupRole::Member))
    );
    assert_eq!(reader.my_groups(2, 0, 10).unwrap(), vec![]);
    let stored = reader.message("sg_7", 3).unwrap().unwrap();
    assert_eq!((stored.group_id, stored.group_event.is_none()), (7, true));
    assert_eq!(
        reader.existing_users(&[1, 2, 99]).unwrap(),
        Vec::<i64>::new()
    );
}

#[test]
fn mysql_rows_spread_over_shards_and_each_conversation_stays_on_one() {
    let Some(shards) = fresh_mysql_shards("spread", 2) else {
        return;
    };
    let backend = MysqlBackend::connect(&shards, &[]).unwrap();
    let mut writer = backend.writer().unwrap();
    let users: Vec<i64> = (1..=40).map(|i| (i << 22) | 1).collect();
    let accounts: Vec<WriteOp> = users
        .iter()
        .map(|&id| account(id, &format!("user{id}")))
        .collect();
    assert_eq!(
        writer.apply_batch(&accounts).unwrap(),
        vec![WriteOutcome::Done; users.len()]
    );
    let mut messages = Vec::new();
    let mut conversations = Vec::new();
    for pair in users.chunks(2) {
        let (low, high) = (pair[0], pair[1]);
        let conv = format!("si_{low}_{high}");
        for seq in 1..=3 {
            let mut msg = message(&conv, seq, low, seq);
            msg.receiver_id = high;
            messages.push(WriteOp::AppendMessage(Box::new(msg)));
        }
        conversations.push(conv);
    }
    writer.apply_batch(&messages).unwrap();

    let count = |url: &str, sql: String| -> i64 {
        on_shard(url, move |conn| {
            Box::pin(async move { conn.query_first::<i64, _>(sql).await.unwrap().unwrap() })
        })
    };
    let users_per_shard: Vec<i64> = shards
        .iter()
        .map(|url| count(url, "SELECT COUNT(*) FROM users".into()))
        .collect();
    assert!(
        users_per_shard.iter().all(|&n| n > 0),
        "{users_per_shard:?}"
    );
    assert_eq!(users_per_shard.iter().sum::<i64>(), 40);
    let placement = Placement::new(2);
    let mut messages_per_shard = [0i64; 2];
    for conv in &conversations {
        let found: Vec<i64> = shards
            .iter()
            .map(|url| {
                count(
                    url,
                    format!("SELECT COUNT(*) FROM messages WHERE conversation_id = '{conv}'"),
                )
            })
            .collect();
        let home = placement.conversation(conv);
        assert_eq!(found[home], 3, "{conv}: {found:?}");
        assert_eq!(found[1 - home], 0, "{conv}: {found:?}");
        messages_per_shard[home] += 3;
    }
    assert!(
        messages_per_shard.iter().all(|&n| n > 0),
        "{messages_per_shard:?}"
    );
    // Every user still finds their conversation, wherever it lives.
    let mut reader = backend.reader().unwrap();
    for pair in users.chunks(2) {
        let rows = reader.conversations(pair[1], None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].last_seq, 3);
        let name = format!("user{}", pair[1]);
        assert_eq!(
            reader.account_by_username(&name).unwrap().unwrap().user_id,
            pair[1]
        );
    }
    assert_eq!(reader.search_users("user", 0, 100).unwrap().len(), 40);
    let page = reader.search_users("user", users[4], 3).unwrap();
    assert_eq!(
        page.iter().map(|a| a.user_id).collect::<Vec<_>>(),
        users[5..8].to_vec()
    );
}

#[test]
fn mysql_schema_newer_than_the_build_is_refused() {
    let Some(shards) = fresh_mysql_shards("newer", 1) else {
        return;
    };
    MysqlBackend::connect(&shards, &[]).unwrap();
    on_shard(&shards[0], |conn| {
        Box::pin(async move {
            conn.query_drop("UPDATE ourchat_schema SET version = 99")
                .await
                .unwrap()
        })
    });
    assert!(matches!(
        MysqlBackend::connect(&shards, &[]),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn mysql_connections_lost_are_redialled_and_a_failed_batch_writes_nothing() {
    let Some(shards) = fresh_mysql_shards("redial", 2) else {
        return;
    };
    let backend = MysqlBackend::connect(&shards, &[]).unwrap();
    let mut writer = backend.writer().unwrap();
    let mut reader = backend.reader().unwrap();
    writer.apply_batch(&[account(11, "eleven")]).unwrap();
    assert!(reader.account_by_id(11).unwrap().is_some());
    // Kill the backend's connections to these shards, as a MySQL restart
    // would (other tests' databases are left alone).
    let databases: Vec<String> = shards
        .iter()
        .map(|url| format!("'{}'", &url[url.rfind('/').unwrap() + 1..]))
        .collect();
    let find = format!(
        "SELECT id FROM information_schema.processlist WHERE db IN ({}) AND id != CONNECTION_ID()",
        databases.join(", ")
    );
    on_shard(&shards[0], move |conn| {
        Box::pin(async move {
            let ids: Vec<u64> = conn.query(find).await.unwrap();
            assert!(!ids.is_empty());
            for id in ids {
                let _ = conn.query_drop(format!("KILL {id}")).await;
            }
        })
    });
    // The first call after the loss may fail, retryably; then it works.
    if let Err(error) = writer.apply_batch(&[account(12, "twelve")]) {
        assert!(error.is_retryable(), "{error}");
        writer.apply_batch(&[account(12, "twelve")]).unwrap();
    }
    match reader.account_by_id(12) {
        Ok(found) => assert!(found.is_some()),
        Err(error) => {
            assert!(error.is_retryable(), "{error}");
            assert!(reader.account_by_id(12).unwrap().is_some());
        }
    }
    // A batch with a failing statement (a username too long for its
    // column) writes nothing on any shard, though its first op was fine.
    let too_long = "x".repeat(300);
    let failed = writer.apply_batch(&[account(13, "thirteen"), account(14, &too_long)]);
    assert!(failed.is_err(), "{failed:?}");
    assert!(reader.account_by_id(13).unwrap().is_none());
    assert!(reader.account_by_username("thirteen").unwrap().is_none());
}

#[test]
fn log_replays_store_each_message_once() {
    each_backend("replay", log_replays_store_each_message_once_on);
}

fn log_replays_store_each_message_once_on(backend: &dyn Backend) {
    let mut writer = backend.writer().unwrap();
    let log: Vec<ChatMessage> = (1..=5).map(|seq| message("si_1_2", seq, 1, seq)).collect();
    writer.append_log(&log[..3]).unwrap();
    // A replay overlapping what is stored, out of order, with a repeat.
    let replay = vec![
        log[4].clone(),
        log[1].clone(),
        log[3].clone(),
        log[3].clone(),
    ];
    writer.append_log(&replay).unwrap();
    let mut reader = backend.reader().unwrap();
    let history = reader.history("si_1_2", 0, 10).unwrap();
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    assert_eq!(reader.conversation_head("si_1_2", 0).unwrap().last_seq, 5);
    assert_eq!(reader.conversations(2, None, 10).unwrap()[0].last_seq, 5);
    assert_eq!(reader.read_seq(1, "si_1_2").unwrap(), 5);
}
