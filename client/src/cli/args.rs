//! The command line: global options and every command with its arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ourchat-cli", version, about = "OurChat command-line client")]
pub(crate) struct Cli {
    /// Server address (host:port).
    #[arg(
        long,
        global = true,
        env = "OURCHAT_SERVER",
        default_value = "127.0.0.1:50003"
    )]
    pub server: String,
    /// Connect over TLS, trusting the CA certificates in this PEM file
    /// (`ourchat gen-cert` writes ca.pem).
    #[arg(long, global = true, env = "OURCHAT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name the server's certificate must carry (default: --server's host).
    #[arg(long, global = true)]
    pub tls_name: Option<String>,
    /// Where the session (token) is kept.
    #[arg(long, global = true, env = "OURCHAT_SESSION")]
    pub session: Option<PathBuf>,
    /// One JSON object per line instead of text. 64-bit ids (users,
    /// groups, server message ids) are strings, as in proto3's JSON mapping:
    /// they exceed what a JavaScript number holds exactly.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create an account.
    Register { username: String, password: String },
    /// Log in and keep the token for later commands.
    Login {
        username: String,
        password: String,
        /// Device id (default: one the server assigns, kept in the session).
        #[arg(long)]
        device: Option<String>,
    },
    /// Send a message: text, or media/location with the options below.
    Send {
        /// Recipient's username.
        #[arg(long)]
        to: String,
        /// Text, or the caption of a media message.
        #[arg(default_value = "")]
        text: String,
        /// image | voice | video | file (needs --url, --mime, --size).
        #[arg(long = "type", value_name = "KIND")]
        kind: Option<String>,
        /// Media URL.
        #[arg(long)]
        url: Option<String>,
        /// Media MIME type.
        #[arg(long)]
        mime: Option<String>,
        /// Media size in bytes.
        #[arg(long)]
        size: Option<u64>,
        /// Voice/video length in milliseconds.
        #[arg(long)]
        duration_ms: Option<u32>,
        /// Image/video width and height: WxH.
        #[arg(long)]
        dims: Option<String>,
        /// File name (file messages).
        #[arg(long)]
        file_name: Option<String>,
        /// Send a location: LAT,LON (title from TEXT).
        #[arg(long, allow_hyphen_values = true)]
        location: Option<String>,
    },
    /// Mark the conversation with a user read up to a seq (default: all).
    Read {
        /// The other user's username.
        #[arg(long)]
        with: String,
        /// Read up to this seq.
        #[arg(long)]
        seq: Option<i64>,
    },
    /// Recall one of my messages (within the server's recall window).
    Recall {
        /// The other user's username.
        #[arg(long)]
        with: String,
        /// The message's seq.
        #[arg(long)]
        seq: i64,
    },
    /// Friends: list, add, accept, reject, delete, block, unblock, search.
    Friends {
        #[command(subcommand)]
        action: Option<FriendsAction>,
    },
    /// Groups: list, create, info, members, add, remove, leave, admin,
    /// transfer, update, dissolve, send, history.
    Groups {
        #[command(subcommand)]
        action: Option<GroupsAction>,
    },
    /// Presence of friends (all of them, or the USERS named); --away or
    /// --online sets this device's own state first.
    Presence {
        users: Vec<String>,
        /// Mark this device away.
        #[arg(long)]
        away: bool,
    },
    /// My conversations, most recent first, with unread counts.
    Conversations {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Print missed messages, then incoming ones as they arrive.
    Listen {
        /// Stop after this many messages (default: run until interrupted).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Page backwards through the conversation with a user.
    History {
        /// The other user's username.
        #[arg(long)]
        with: String,
        /// Messages per page.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only messages before this seq.
        #[arg(long, default_value_t = 0)]
        before: i64,
    },
}

#[derive(Subcommand)]
pub(crate) enum FriendsAction {
    /// Friends (with online state), pending requests, blocked users (default).
    List,
    /// Ask USER to be friends.
    Add {
        user: String,
        /// A note shown with the request.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Accept USER's request.
    Accept { user: String },
    /// Reject USER's request.
    Reject { user: String },
    /// End the friendship with USER.
    Delete { user: String },
    /// Block USER: no messages or requests from them.
    Block { user: String },
    /// Unblock USER.
    Unblock { user: String },
    /// Users whose username, nickname, phone or email starts with PREFIX.
    Search { prefix: String },
}

#[derive(Subcommand)]
pub(crate) enum GroupsAction {
    /// My groups (default).
    List,
    /// Create a group with me as owner and these members (usernames).
    Create {
        name: String,
        members: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// A group's details.
    Info { group: i64 },
    /// A group's members with their roles.
    Members { group: i64 },
    /// Add members (owner or admin).
    Add { group: i64, users: Vec<String> },
    /// Remove members (owner, or admin removing members).
    Remove { group: i64, users: Vec<String> },
    /// Leave a group.
    Leave { group: i64 },
    /// Make USER an admin (--unset: a member again). Owner only.
    Admin {
        group: i64,
        user: String,
        #[arg(long)]
        unset: bool,
    },
    /// Hand the group to USER. Owner only.
    Transfer { group: i64, user: String },
    /// Change name, description or avatar (owner or admin).
    Update {
        group: i64,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        avatar_url: Option<String>,
    },
    /// End the group. Owner only.
    Dissolve { group: i64 },
    /// Send a text to the group.
    Send { group: i64, text: String },
    /// Page backwards through the group's conversation.
    History {
        group: i64,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}
