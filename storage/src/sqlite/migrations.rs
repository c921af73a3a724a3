//! The SQLite schema's history: each entry upgrades the file by one
//! version, counted in `PRAGMA user_version`.

/// Migrations in order; entry `i` upgrades the schema from version `i` to
/// `i + 1`. Never edit a released entry: append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: accounts, devices, messages, conversations, cursors.
    "
    CREATE TABLE users (
        user_id       INTEGER PRIMARY KEY,
        username      TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        phone         TEXT NOT NULL DEFAULT '',
        email         TEXT NOT NULL DEFAULT '',
        nickname      TEXT NOT NULL DEFAULT '',
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE devices (
        user_id      INTEGER NOT NULL,
        device_id    TEXT NOT NULL,
        device_type  TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        conversation_id   TEXT NOT NULL,
        seq               INTEGER NOT NULL,
        server_msg_id     INTEGER NOT NULL,
        sender_id         INTEGER NOT NULL,
        receiver_id       INTEGER NOT NULL,
        message_type      INTEGER NOT NULL,
        content           TEXT NOT NULL,
        client_message_id INTEGER NOT NULL,
        sent_at_ms        INTEGER NOT NULL,
        sender_device     TEXT NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_dedupe
        ON messages (conversation_id, sender_id, client_message_id);
    CREATE TABLE conversations (
        conversation_id TEXT PRIMARY KEY,
        last_seq        INTEGER NOT NULL,
        last_at_ms      INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE user_conversations (
        user_id         INTEGER NOT NULL,
        conversation_id TEXT NOT NULL,
        PRIMARY KEY (user_id, conversation_id)
    ) WITHOUT ROWID;
    CREATE TABLE device_cursors (
        user_id         INTEGER NOT NULL,
        device_id       TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        delivered_seq   INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id, conversation_id)
    ) WITHOUT ROWID;
    ",
    // 2: structured payloads, recall, read cursors.
    "
    ALTER TABLE messages ADD COLUMN media BLOB;
    ALTER TABLE messages ADD COLUMN location BLOB;
    ALTER TABLE messages ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE read_cursors (
        user_id         INTEGER NOT NULL,
        conversation_id TEXT NOT NULL,
        read_seq        INTEGER NOT NULL,
        PRIMARY KEY (user_id, conversation_id)
    ) WITHOUT ROWID;
    ",
    // 3: profiles, per-device token epochs (revocation).
    "
    ALTER TABLE users ADD COLUMN avatar_url TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN signature TEXT NOT NULL DEFAULT '';
    ALTER TABLE devices ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN signed_out INTEGER NOT NULL DEFAULT 0;
    ",
    // 4: friends, pending requests, blocks; search indexes.
    "
    CREATE TABLE friend_requests (
        from_user     INTEGER NOT NULL,
        to_user       INTEGER NOT NULL,
        note          TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (from_user, to_user)
    ) WITHOUT ROWID;
    CREATE INDEX friend_requests_to ON friend_requests (to_user);
    CREATE TABLE friends (
        user_id   INTEGER NOT NULL,
        friend_id INTEGER NOT NULL,
        since_ms  INTEGER NOT NULL,
        PRIMARY KEY (user_id, friend_id)
    ) WITHOUT ROWID;
    CREATE TABLE blocks (
        user_id    INTEGER NOT NULL,
        blocked_id INTEGER NOT NULL,
        since_ms   INTEGER NOT NULL,
        PRIMARY KEY (user_id, blocked_id)
    ) WITHOUT ROWID;
    CREATE INDEX users_nickname ON users (nickname);
    CREATE INDEX users_phone ON users (phone);
    CREATE INDEX users_email ON users (email);
    ",
    // 5: groups; per-user visibility windows; group event payloads.
    "
    CREATE TABLE chat_groups (
        group_id      INTEGER PRIMARY KEY,
        name          TEXT NOT NULL,
        description   TEXT NOT NULL,
        avatar_url    TEXT NOT NULL,
        owner_id      INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        dissolved     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE group_members (
        group_id     INTEGER NOT NULL,
        user_id      INTEGER NOT NULL,
        role         INTEGER NOT NULL,
        join_seq     INTEGER NOT NULL,
        joined_at_ms INTEGER NOT NULL,
        PRIMARY KEY (group_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_user ON group_members (user_id, group_id);
    ALTER TABLE user_conversations ADD COLUMN from_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE user_conversations ADD COLUMN to_seq INTEGER;
    ALTER TABLE messages ADD COLUMN group_event BLOB;
    ",
    // 6: the store's identity, so a data directory can tell its own store
    // from a missing, empty or swapped one.
    "
    CREATE TABLE store_identity (id TEXT NOT NULL);
    INSERT INTO store_identity (id) VALUES (lower(hex(randomblob(16))));
    ",
    // 7: messages and cursors move to the message log (`embedded`): how far
    // the group tables have caught up with it, and whether this store's
    // old message tables were moved into it.
    "
    CREATE TABLE message_log (applied_batch INTEGER NOT NULL, migrated INTEGER NOT NULL);
    INSERT INTO message_log (applied_batch, migrated) VALUES (0, 0);
    ",
];
