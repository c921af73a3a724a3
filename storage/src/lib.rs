//! The store behind OurChat: the operations the gateway needs (accounts and
//! devices, messages by conversation and seq, dedupe by sender and
//! client_message_id, per-device delivery cursors) as two blocking traits,
//! and their backends. Stores are blocking on purpose: they only ever run on
//! worker threads, never on a reactor.
//!
//! Writes are batches: [`WriteStore::apply_batch`] commits every op of a
//! batch in one transaction and reports one [`WriteOutcome`] per op, so a
//! client fault in one op (a taken username) never fails its neighbours.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
// Input must never reach a panic: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod embedded;
mod error;
pub mod few;
pub mod kafka;
pub mod msglog;
pub mod mysql;
pub mod redis;
pub mod sharded;
pub mod slotted;
pub mod sqlite;
mod upkeep;

pub use error::StoreError;
pub use ourchat_protocol::pb::ChatMessage;

use std::sync::Arc;

use ourchat_protocol::ConversationId;

/// A new account, its password already hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    /// Snowflake id minted by the gateway.
    pub user_id: i64,
    /// Unique login name.
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    /// Optional contact fields from the seed's RegisterRequest.
    pub phone: String,
    /// Optional.
    pub email: String,
    /// Display name; defaults to the username.
    pub nickname: String,
    /// Creation time.
    pub created_at_ms: i64,
}

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Id.
    pub user_id: i64,
    /// Login name.
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    /// Display name.
    pub nickname: String,
    /// Contact, private.
    pub phone: String,
    /// Contact, private.
    pub email: String,
    /// Avatar image URL.
    pub avatar_url: String,
    /// One-line status text.
    pub signature: String,
}

/// A device a user has logged in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Client-chosen id.
    pub device_id: String,
    /// ios/android/web/...
    pub device_type: String,
    /// Last login.
    pub last_seen_ms: i64,
    /// Tokens carry the epoch they were issued in; bumping it revokes them.
    pub token_epoch: i64,
    /// Revoked (logout, kick, password change) and not logged in since.
    pub signed_out: bool,
}

/// Profile fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    /// Display name.
    pub nickname: Option<String>,
    /// Avatar image URL.
    pub avatar_url: Option<String>,
    /// Status line.
    pub signature: Option<String>,
    /// Contact.
    pub phone: Option<String>,
    /// Contact.
    pub email: Option<String>,
}

/// A member's role in a group (the numbers of the protocol's `GroupRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupRole {
    /// Sends and reads.
    Member = 0,
    /// Also adds and removes members, and edits the group.
    Admin = 1,
    /// The one owner: also dissolves, transfers, appoints admins.
    Owner = 2,
}

impl GroupRole {
    /// The role stored as `value`; unknown values are members.
    pub fn from_i32(value: i32) -> Self {
        match value {
            2 => GroupRole::Owner,
            1 => GroupRole::Admin,
            _ => GroupRole::Member,
        }
    }
}

/// A new group's descriptive fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    /// Snowflake id minted by the gateway.
    pub group_id: i64,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Avatar image URL.
    pub avatar_url: String,
    /// Creator and first owner.
    pub owner_id: i64,
    /// When.
    pub created_at_ms: i64,
}

/// What a group event changes, applied in the same transaction as the
/// event message that records it (whose seq is the change's seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// The group is created with its owner and these members.
    Create {
        /// The group.
        group: NewGroup,
        /// Initial members besides the owner.
        members: Vec<i64>,
    },
    /// Name, description or avatar change; `None` leaves a field.
    Update {
        /// Display name.
        name: Option<String>,
        /// Free text.
        description: Option<String>,
        /// Avatar image URL.
        avatar_url: Option<String>,
    },
    /// These users join as members, seeing the conversation from this seq.
    Join(Vec<i64>),
    /// These users leave (or are removed); they keep what they saw up to
    /// this seq.
    Leave(Vec<i64>),
    /// A member's role changes (not to or from owner).
    SetRole {
        /// Whose.
        user_id: i64,
        /// New role.
        role: GroupRole,
    },
    /// Ownership moves; the old owner becomes an admin.
    TransferOwner {
        /// Old owner.
        from: i64,
        /// New owner.
        to: i64,
    },
    /// The group ends; every member keeps what they saw up to this seq.
    Dissolve,
}

/// One write in a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Create an account; [`WriteOutcome::UsernameTaken`] if the name exists.
    CreateAccount(NewAccount),
    /// Record that a device logged in (created on first sight).
    TouchDevice {
        /// Owner.
        user_id: i64,
        /// Client-chosen device id.
        device_id: String,
        /// ios/android/web/...
        device_type: String,
        /// Login time.
        seen_at_ms: i64,
    },
    /// Append a message. With `seq` 0 the store gives it the
    /// conversation's next seq ([`WriteOutcome::Appended`]; gapless, in op
    /// order) unless the conversation already holds this sender's
    /// `client_message_id`, however old ([`WriteOutcome::SentBefore`]:
    /// nothing written, no seq taken). With a seq given (cluster mode:
    /// Redis gave it) [`WriteOutcome::Done`], or
    /// [`WriteOutcome::Duplicate`] if that seq or client id is stored.
    /// Boxed, as `GroupChange`'s event: an op is moved into the writer's
    /// queue, out of it, into its caller's completions and out again, and
    /// a message inline made every op 504 bytes (144 boxed).
    AppendMessage(Box<ChatMessage>),
    /// Change profile fields ([`WriteOutcome::Refused`]: no such user).
    UpdateProfile {
        /// Whose.
        user_id: i64,
        /// What.
        update: ProfileUpdate,
    },
    /// Replace the password hash and revoke every device's tokens but
    /// `keep_device`'s.
    SetPassword {
        /// Whose.
        user_id: i64,
        /// New PHC string.
        password_hash: String,
        /// The device that asked: stays signed in.
        keep_device: String,
    },
    /// Revoke a device's tokens ([`WriteOutcome::Refused`]: no such device).
    RevokeDevice {
        /// Owner.
        user_id: i64,
        /// Device.
        device_id: String,
    },
    /// Ask `to` to be friends (replaces an earlier note).
    RequestFriend {
        /// Asking.
        from: i64,
        /// Asked.
        to: i64,
        /// Shown to `to`.
        note: String,
        /// When.
        at_ms: i64,
    },
    /// `to` answers `from`'s request ([`WriteOutcome::Refused`]: none pending).
    AnswerFriend {
        /// Who asked.
        from: i64,
        /// Who answers.
        to: i64,
        /// Accept (befriend both ways) or reject.
        accept: bool,
        /// When.
        at_ms: i64,
    },
    /// End a friendship, both directions ([`WriteOutcome::Refused`]: none).
    Unfriend {
        /// One side.
        a: i64,
        /// The other.
        b: i64,
    },
    /// Block (ending friendship and pending requests) or unblock.
    Block {
        /// Who blocks.
        user_id: i64,
        /// Who is blocked.
        blocked_id: i64,
        /// false: unblock ([`WriteOutcome::Refused`] when not blocked).
        block: bool,
        /// When.
        at_ms: i64,
    },
    /// Move a user's read cursor forward (never backwards).
    MarkRead {
        /// Reader.
        user_id: i64,
        /// Conversation id, text form.
        conversation_id: String,
        /// Highest seq read.
        seq: i64,
    },
    /// Recall a message: clear its content and payload and mark it
    /// recalled, only if `sender_id` sent it at or after `not_before_ms` and
    /// it is not recalled yet ([`WriteOutcome::Refused`] otherwise).
    Recall {
        /// Conversation id, text form.
        conversation_id: String,
        /// The message.
        seq: i64,
        /// Who asks; must be the sender.
        sender_id: i64,
        /// Oldest send time still inside the recall window.
        not_before_ms: i64,
    },
    /// Append a group's event message and apply its change, atomically
    /// ([`WriteOutcome::Duplicate`] if the seq is taken: nothing changes).
    /// Permissions are the sequencer's job: it owns the group's order.
    GroupChange {
        /// The GROUP_EVENT message, sequenced in the group conversation.
        event: Box<ChatMessage>,
        /// What it does to the group.
        change: GroupChange,
    },
    /// Move a device's delivery cursor forward (never backwards).
    AdvanceCursor {
        /// Owner of the device.
        user_id: i64,
        /// Device (shared with the session that acked: no copy per ack).
        device_id: Arc<str>,
        /// Conversation.
        conversation: ConversationId,
        /// Highest seq the device has.
        seq: i64,
    },
}

impl WriteOp {
    /// The message this op stores, if it stores one.
    pub fn message(&self) -> Option<&ChatMessage> {
        match self {
            WriteOp::AppendMessage(message) | WriteOp::GroupChange { event: message, .. } => {
                Some(message)
            }
            _ => None,
        }
    }

    /// [`WriteOp::message`], taken out of the op.
    pub fn into_message(self) -> Option<Box<ChatMessage>> {
        match self {
            WriteOp::AppendMessage(message) | WriteOp::GroupChange { event: message, .. } => {
                Some(message)
            }
            _ => None,
        }
    }
}

/// What became of one op of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written.
    Done,
    /// `CreateAccount` refused: the username exists.
    UsernameTaken,
    /// `AppendMessage` refused: already stored (a replay); nothing written.
    Duplicate,
    /// A conditional op's condition did not hold (`Recall`: no such message
    /// of this sender inside the window, or already recalled).
    Refused,
    /// An append that asked for a seq (seq 0) was stored under this one.
    Appended {
        /// The seq the store gave it.
        seq: i64,
    },
    /// An append that asked for a seq names a `client_message_id` its
    /// sender already used in this conversation: nothing written.
    SentBefore(SentBefore),
}

/// What an append found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Written under this seq.
    At(i64),
    /// The given seq is taken (a replay): nothing written.
    SeqTaken,
    /// The sender's client id is taken: nothing written.
    SentBefore(SentBefore),
}

impl Stored {
    pub(crate) fn seq(self) -> Option<i64> {
        match self {
            Stored::At(seq) => Some(seq),
            _ => None,
        }
    }

    /// The op's outcome: a given seq is `Done`, a store-given one is
    /// reported back.
    pub(crate) fn outcome(self, msg: &ChatMessage) -> WriteOutcome {
        match self {
            Stored::At(_) if msg.seq > 0 => WriteOutcome::Done,
            Stored::At(seq) => WriteOutcome::Appended { seq },
            Stored::SeqTaken => WriteOutcome::Duplicate,
            Stored::SentBefore(_) if msg.seq > 0 => WriteOutcome::Duplicate,
            Stored::SentBefore(first) => WriteOutcome::SentBefore(first),
        }
    }
}

/// The stored first send of a `(sender, client_message_id)` that was sent
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentBefore {
    /// Its seq.
    pub seq: i64,
    /// Its server id.
    pub server_msg_id: i64,
    /// When it was accepted.
    pub sent_at_ms: i64,
    /// Whether the resend carries the same type and payload (a client
    /// retrying) or different ones (a client reusing an id by mistake).
    pub same_content: bool,
}

/// One conversation in a user's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    /// Conversation id, text form.
    pub conversation_id: String,
    /// Highest stored seq.
    pub last_seq: i64,
    /// Time of the newest message.
    pub last_at_ms: i64,
    /// The user's read cursor.
    pub read_seq: i64,
}

/// The last seq of a conversation and its most recent sends, which the
/// sequencer needs to continue the seq and to recognise resends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationHead {
    /// Highest stored seq (0 when empty).
    pub last_seq: i64,
    /// Newest first, at most the requested window.
    pub recent: Vec<RecentSend>,
    /// For a 1:1 conversation: one side has blocked the other.
    pub blocked: bool,
    /// For a group conversation: the group as the sequencer needs it
    /// (`None` when no such group was ever created).
    pub group: Option<GroupRoster>,
}

/// Who is in a group and with what role: what the sequencer checks sends
/// and changes against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupRoster {
    /// Current owner.
    pub owner_id: i64,
    /// Dissolved: nothing more is accepted.
    pub dissolved: bool,
    /// Every current member with their role.
    pub members: Vec<(i64, GroupRole)>,
}

/// A group as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// Id.
    pub group_id: i64,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Avatar image URL.
    pub avatar_url: String,
    /// Current owner.
    pub owner_id: i64,
    /// Members now.
    pub member_count: u32,
    /// When.
    pub created_at_ms: i64,
    /// Dissolved groups are kept for their history.
    pub dissolved: bool,
    /// The viewer's role, if a member.
    pub viewer_role: Option<GroupRole>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberRow {
    /// Who.
    pub user_id: i64,
    /// Role.
    pub role: GroupRole,
    /// The first seq they see.
    pub join_seq: i64,
    /// When they joined.
    pub joined_at_ms: i64,
}

/// Which seqs of a conversation a user may see: from `from_seq` on (0: all)
/// and, once they left a group, up to `to_seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Visibility {
    /// First visible seq.
    pub from_seq: i64,
    /// Last visible seq; `None` while still a member.
    pub to_seq: Option<i64>,
}

impl Visibility {
    /// Whether `seq` is inside the window.
    pub fn contains(&self, seq: i64) -> bool {
        seq >= self.from_seq && self.to_seq.is_none_or(|to| seq <= to)
    }
}

/// A pending friend request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRequestRow {
    /// Who asked.
    pub from: i64,
    /// Who is asked.
    pub to: i64,
    /// Their note.
    pub note: String,
    /// When.
    pub created_at_ms: i64,
}

/// How two users stand, seen from `a`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relation {
    /// Friends (both directions are stored together).
    pub friends: bool,
    /// `a` blocked `b`.
    pub a_blocked_b: bool,
    /// `b` blocked `a`.
    pub b_blocked_a: bool,
    /// `b` has a pending request to `a`.
    pub b_requested_a: bool,
}

/// Enough of a stored message to answer a resend of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentSend {
    /// Sender.
    pub sender_id: i64,
    /// Sender's dedupe key.
    pub client_message_id: i64,
    /// Assigned seq.
    pub seq: i64,
    /// Assigned id.
    pub server_msg_id: i64,
    /// Assigned time.
    pub sent_at_ms: i64,
    /// [`content_fingerprint`] of what was sent, so a resend carrying
    /// something else under the same id is told apart.
    pub fingerprint: u64,
}

/// What answering a resend needs of a stored message, as both SQL stores
/// select it (`RecentSend`'s fields, then what its fingerprint is of).
pub(crate) const SEND_COLUMNS: &str = "sender_id, client_message_id, seq, server_msg_id, \
     sent_at_ms, message_type, content, media, location";

/// A hash of a message's type and payload, as stored (`media` and
/// `location` in their protobuf encoding). Deterministic within a build.
pub fn content_fingerprint(
    message_type: i32,
    content: &str,
    media: Option<&[u8]>,
    location: Option<&[u8]>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (message_type, content, media, location).hash(&mut hasher);
    hasher.finish()
}

/// [`content_fingerprint`] of a message about to be sent.
pub fn fingerprint_of(msg: &ChatMessage) -> u64 {
    use prost::Message;
    let media = msg.media.as_ref().map(Message::encode_to_vec);
    let location = msg.location.as_ref().map(Message::encode_to_vec);
    content_fingerprint(
        msg.message_type,
        &msg.content,
        media.as_deref(),
        location.as_deref(),
    )
}

/// A conversation of a user with messages a device may not have yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationCursor {
    /// Conversation id, text form.
    pub conversation_id: String,
    /// Highest stored seq.
    pub last_seq: i64,
    /// The device's delivery cursor (0 when never acked).
    pub delivered_seq: i64,
    /// The seqs this user may see.
    pub visible: Visibility,
}

/// A `LIKE` pattern (backslash escapes) matching what starts with
/// `prefix`: its own `%` and `_` match only themselves.
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Batched writes; one writer per backend connection, on a worker thread.
pub trait WriteStore: Send {
    /// Commits every op in one transaction and reports one outcome per op,
    /// in order. On `Err` nothing of the batch is written.
    fn apply_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// Stores messages read back from the message log, in one transaction;
    /// any already stored are skipped (replays are normal). A backend may
    /// do this faster than one `AppendMessage` per message.
    fn append_log(&mut self, messages: &[ChatMessage]) -> Result<(), StoreError> {
        let ops: Vec<WriteOp> = messages
            .iter()
            .map(|message| WriteOp::AppendMessage(Box::new(message.clone())))
            .collect();
        self.apply_batch(&ops).map(|_| ())
    }
}

/// Reads; one reader per backend connection, on a worker thread.
pub trait ReadStore: Send {
    /// Reads a little of every table and index (their root pages), so a
    /// damaged store is found by a probe rather than by the first client
    /// whose request touches the damage.
    fn check_health(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The account with this username.
    fn account_by_username(&mut self, username: &str) -> Result<Option<Account>, StoreError>;
    /// The account with this id.
    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError>;
    /// Those of `sends` (sender, client message id) that `conversation_id`
    /// holds, as stored: how cluster mode recognises a resend older than
    /// the sequencer's window (the embedded store checks while writing).
    fn sends_among(
        &mut self,
        conversation_id: &str,
        sends: &[(i64, i64)],
    ) -> Result<Vec<RecentSend>, StoreError>;
    /// Last seq and up to `window` most recent sends of a conversation.
    fn conversation_head(
        &mut self,
        conversation_id: &str,
        window: usize,
    ) -> Result<ConversationHead, StoreError>;
    /// Up to `limit` messages with seq < `before_seq` (all when 0), newest first.
    fn history(
        &mut self,
        conversation_id: &str,
        before_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// Up to `limit` messages with seq > `after_seq`, oldest first.
    fn messages_after(
        &mut self,
        conversation_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// A user's friends and since when.
    fn friends(&mut self, user_id: i64) -> Result<Vec<(i64, i64)>, StoreError>;
    /// [`ReadStore::friends`] of each of `user_ids`, in their order (the
    /// presence changes of a burst of logins: a store may read them all in
    /// one transaction).
    fn friends_of_each(&mut self, user_ids: &[i64]) -> Result<Vec<Vec<(i64, i64)>>, StoreError> {
        user_ids
            .iter()
            .map(|user_id| self.friends(*user_id))
            .collect()
    }
    /// Pending requests to or from a user, oldest first.
    fn friend_requests(&mut self, user_id: i64) -> Result<Vec<FriendRequestRow>, StoreError>;
    /// How `a` and `b` stand.
    fn relation(&mut self, a: i64, b: i64) -> Result<Relation, StoreError>;
    /// Users `user_id` has blocked.
    fn blocked_by(&mut self, user_id: i64) -> Result<Vec<i64>, StoreError>;
    /// Users whose username, nickname, phone or email starts with `prefix`,
    /// by id, after `after_user_id`.
    fn search_users(
        &mut self,
        prefix: &str,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError>;
    /// Every device of a user, most recently seen first.
    fn devices(&mut self, user_id: i64) -> Result<Vec<Device>, StoreError>;
    /// One device of a user.
    fn device(&mut self, user_id: i64, device_id: &str) -> Result<Option<Device>, StoreError>;
    /// One message.
    fn message(
        &mut self,
        conversation_id: &str,
        seq: i64,
    ) -> Result<Option<ChatMessage>, StoreError>;
    /// A user's read cursor in a conversation (0 when never read).
    fn read_seq(&mut self, user_id: i64, conversation_id: &str) -> Result<i64, StoreError>;
    /// Up to `limit` of a user's conversations, most recently active first,
    /// strictly after the page key `before` = (last_at_ms, conversation_id).
    fn conversations(
        &mut self,
        user_id: i64,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<ConversationRow>, StoreError>;
    /// A group with `viewer`'s role in it.
    fn group(&mut self, group_id: i64, viewer: i64) -> Result<Option<GroupRow>, StoreError>;
    /// Up to `limit` members by user id, after `after_user_id`.
    fn group_members(
        &mut self,
        group_id: i64,
        after_user_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupMemberRow>, StoreError>;
    /// Up to `limit` of the groups `user_id` is in, by id, after `after_group_id`.
    fn my_groups(
        &mut self,
        user_id: i64,
        after_group_id: i64,
        limit: usize,
    ) -> Result<Vec<GroupRow>, StoreError>;
    /// Which seqs of a conversation `user_id` may see (`None`: none; for a
    /// 1:1 conversation, only once a message was stored).
    fn visibility(
        &mut self,
        user_id: i64,
        conversation_id: &str,
    ) -> Result<Option<Visibility>, StoreError>;
    /// Which of `user_ids` are accounts.
    fn existing_users(&mut self, user_ids: &[i64]) -> Result<Vec<i64>, StoreError>;
    /// Every conversation of `user_id`, with the device's delivery cursor.
    fn conversation_cursors(
        &mut self,
        user_id: i64,
        device_id: &str,
    ) -> Result<Vec<ConversationCursor>, StoreError>;
}

/// Opens connections to one store; each worker thread takes its own.
pub trait Backend: Send + Sync {
    /// A connection for the batched writer.
    fn writer(&self) -> Result<Box<dyn WriteStore>, StoreError>;
    /// A connection for a reader thread.
    fn reader(&self) -> Result<Box<dyn ReadStore>, StoreError>;
    /// What the store can answer from memory, without a reader thread
    /// (`None`: nothing).
    fn memory_reads(&self) -> Option<std::sync::Arc<dyn MemoryReads>> {
        None
    }
}

/// Reads a store answers from memory alone, quickly enough for a reactor
/// thread to make them itself; `None` means "ask a reader".
pub trait MemoryReads: Send + Sync {
    /// The head of a 1:1 conversation that holds no message yet.
    fn empty_direct_head(
        &self,
        conversation: ourchat_protocol::ConversationId,
    ) -> Option<ConversationHead>;

    /// True: the account exists. False: not known here; ask the store.
    fn account_known(&self, user_id: i64) -> bool;

    /// The device's current token epoch (0 for a device never revoked),
    /// or `None` when the account is not known here: ask the store.
    fn token_epoch(&self, user_id: i64, device_id: &str) -> Option<i64>;
}
