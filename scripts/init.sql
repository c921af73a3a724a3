-- OurChat schema for one MySQL 8 / MariaDB 10.11 shard. Every shard holds
-- every table; which rows a shard holds is decided by the server (users,
-- devices, cursors, friends and blocks by user id; messages and heads by
-- conversation; groups and members by group id; the username index by the
-- username). Safe to run again: nothing is dropped.
--
--   mysql -u ourchat -p ourchat_db < scripts/init.sql
--
-- The server runs these same statements at start on each configured shard.

CREATE TABLE IF NOT EXISTS ourchat_schema (
    id      TINYINT PRIMARY KEY,
    version INT NOT NULL
) ENGINE=InnoDB;

INSERT IGNORE INTO ourchat_schema (id, version) VALUES (1, 1);

CREATE TABLE IF NOT EXISTS usernames (
    username VARCHAR(64) NOT NULL PRIMARY KEY,
    user_id  BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS users (
    user_id       BIGINT NOT NULL PRIMARY KEY,
    username      VARCHAR(64) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    phone         VARCHAR(255) NOT NULL DEFAULT '',
    email         VARCHAR(255) NOT NULL DEFAULT '',
    nickname      VARCHAR(255) NOT NULL DEFAULT '',
    avatar_url    VARCHAR(2048) NOT NULL DEFAULT '',
    signature     VARCHAR(2048) NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    KEY users_username (username),
    KEY users_nickname (nickname),
    KEY users_phone (phone),
    KEY users_email (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS devices (
    user_id      BIGINT NOT NULL,
    device_id    VARCHAR(255) NOT NULL,
    device_type  VARCHAR(255) NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    token_epoch  BIGINT NOT NULL DEFAULT 0,
    signed_out   TINYINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS messages (
    conversation_id   VARCHAR(64) NOT NULL,
    seq               BIGINT NOT NULL,
    server_msg_id     BIGINT NOT NULL,
    sender_id         BIGINT NOT NULL,
    receiver_id       BIGINT NOT NULL,
    message_type      INT NOT NULL,
    content           MEDIUMTEXT NOT NULL,
    client_message_id BIGINT NOT NULL,
    sent_at_ms        BIGINT NOT NULL,
    sender_device     VARCHAR(255) NOT NULL,
    media             BLOB NULL,
    location          BLOB NULL,
    recalled          TINYINT NOT NULL DEFAULT 0,
    group_event       MEDIUMBLOB NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE KEY messages_dedupe (conversation_id, sender_id, client_message_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS conversations (
    conversation_id VARCHAR(64) NOT NULL PRIMARY KEY,
    last_seq        BIGINT NOT NULL,
    last_at_ms      BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS user_conversations (
    user_id         BIGINT NOT NULL,
    conversation_id VARCHAR(64) NOT NULL,
    from_seq        BIGINT NOT NULL DEFAULT 0,
    to_seq          BIGINT NULL,
    PRIMARY KEY (user_id, conversation_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS device_cursors (
    user_id         BIGINT NOT NULL,
    device_id       VARCHAR(255) NOT NULL,
    conversation_id VARCHAR(64) NOT NULL,
    delivered_seq   BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, conversation_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS read_cursors (
    user_id         BIGINT NOT NULL,
    conversation_id VARCHAR(64) NOT NULL,
    read_seq        BIGINT NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A pending request is stored on both users' shards.
CREATE TABLE IF NOT EXISTS friend_requests (
    from_user     BIGINT NOT NULL,
    to_user       BIGINT NOT NULL,
    note          VARCHAR(1024) NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (from_user, to_user),
    KEY friend_requests_to (to_user)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS friends (
    user_id   BIGINT NOT NULL,
    friend_id BIGINT NOT NULL,
    since_ms  BIGINT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS blocks (
    user_id    BIGINT NOT NULL,
    blocked_id BIGINT NOT NULL,
    since_ms   BIGINT NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS chat_groups (
    group_id      BIGINT NOT NULL PRIMARY KEY,
    name          VARCHAR(255) NOT NULL,
    description   VARCHAR(2048) NOT NULL,
    avatar_url    VARCHAR(2048) NOT NULL,
    owner_id      BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    dissolved     TINYINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS group_members (
    group_id     BIGINT NOT NULL,
    user_id      BIGINT NOT NULL,
    role         INT NOT NULL,
    join_seq     BIGINT NOT NULL,
    joined_at_ms BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
) ENGINE=InnoDB;
