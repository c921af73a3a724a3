//! `ourchat-cli`: a terminal client over the SDK. `login` keeps the session
//! token in a file so later commands (`send`, `listen`, `history`) log in
//! by token. `--json` prints one JSON object per line for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ourchat_client::{Client, Push, SeqTracker, TlsSettings};
use ourchat_protocol::pb::{self, ChatMessage, MessageType};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "ourchat-cli", version, about = "OurChat command-line client")]
struct Cli {
    /// Server address (host:port).
    #[arg(
        long,
        global = true,
        env = "OURCHAT_SERVER",
        default_value = "127.0.0.1:50003"
    )]
    server: String,
    /// Connect over TLS, trusting the CA certificates in this PEM file
    /// (`ourchat gen-cert` writes ca.pem).
    #[arg(long, global = true, env = "OURCHAT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Name the server's certificate must carry (default: --server's host).
    #[arg(long, global = true)]
    tls_name: Option<String>,
    /// Where the session (token) is kept.
    #[arg(long, global = true, env = "OURCHAT_SESSION")]
    session: Option<PathBuf>,
    /// One JSON object per line instead of text. 64-bit ids (users,
    /// groups, server message ids) are strings, as in proto3's JSON mapping:
    /// they exceed what a JavaScript number holds exactly.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum FriendsAction {
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
enum GroupsAction {
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

#[derive(Serialize, Deserialize)]
struct SavedSession {
    server: String,
    username: String,
    user_id: i64,
    device_id: String,
    token: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let session_path = cli.session.clone().unwrap_or_else(default_session_path);
    let out = Output { json: cli.json };
    let endpoint = Endpoint::from_cli(&cli)?;
    match &cli.command {
        Command::Register { username, password } => {
            let client = connect(&endpoint).await?;
            let user_id = client.register(username, password).await?;
            out.line(
                json!({"event": "registered", "username": username, "user_id": user_id.to_string()}),
                format!("registered {username} (user id {user_id})"),
            );
        }
        Command::Login {
            username,
            password,
            device,
        } => {
            let client = connect(&endpoint).await?;
            let device = device.as_deref().unwrap_or("");
            let session = client.login(username, password, device).await?;
            let saved = SavedSession {
                server: cli.server.clone(),
                username: username.clone(),
                user_id: session.user_id,
                device_id: session.device_id.clone(),
                token: session.token,
            };
            save_session(&session_path, &saved)?;
            out.line(
                json!({"event": "logged_in", "username": username, "user_id": session.user_id.to_string(),
                       "device_id": session.device_id, "expire_at": session.expire_at}),
                format!(
                    "logged in as {username} (user id {}, device {})",
                    session.user_id, session.device_id
                ),
            );
        }
        Command::Send {
            to,
            text,
            kind,
            url,
            mime,
            size,
            duration_ms,
            dims,
            file_name,
            location,
        } => {
            let (client, _) = resume(&endpoint, &session_path).await?;
            let peer = client.find_user(to).await?;
            let ack = if let Some(location) = location {
                let (lat, lon) = location
                    .split_once(',')
                    .context("--location takes LAT,LON")?;
                let location = pb::LocationPayload {
                    latitude: lat.trim().parse().context("--location: bad latitude")?,
                    longitude: lon.trim().parse().context("--location: bad longitude")?,
                    title: text.clone(),
                };
                client.send_location(peer.user_id, location).await?
            } else if let Some(kind) = kind {
                let message_type = match kind.as_str() {
                    "image" => MessageType::Image,
                    "voice" => MessageType::Voice,
                    "video" => MessageType::Video,
                    "file" => MessageType::File,
                    other => bail!("--type {other}: expected image, voice, video or file"),
                };
                let (width, height) = match dims {
                    Some(d) => {
                        let (w, h) = d.split_once('x').context("--dims takes WxH")?;
                        (
                            w.parse().context("--dims: bad width")?,
                            h.parse().context("--dims: bad height")?,
                        )
                    }
                    None => (0, 0),
                };
                let media = pb::MediaPayload {
                    url: url.clone().unwrap_or_default(),
                    size_bytes: size.unwrap_or(0),
                    mime: mime.clone().unwrap_or_default(),
                    duration_ms: duration_ms.unwrap_or(0),
                    width,
                    height,
                    file_name: file_name.clone().unwrap_or_default(),
                };
                client
                    .send_media(peer.user_id, message_type, media, text)
                    .await?
            } else {
                client.send_text(peer.user_id, text).await?
            };
            out.line(
                json!({"event": "sent", "to": to, "conversation_id": ack.conversation_id,
                       "seq": ack.seq, "server_msg_id": ack.server_msg_id.to_string()}),
                format!("sent to {to} (seq {})", ack.seq),
            );
        }
        Command::Read { with, seq } => {
            let (client, saved) = resume(&endpoint, &session_path).await?;
            let peer = client.find_user(with).await?;
            let conversation = direct_id(saved.user_id, peer.user_id)?;
            let seq = match seq {
                Some(seq) => *seq,
                None => client
                    .history(peer.user_id, 0, 1)
                    .await?
                    .messages
                    .first()
                    .map_or(0, |m| m.seq),
            };
            let read = client.mark_read(&conversation, seq).await?;
            out.line(
                json!({"event": "read", "conversation_id": read.conversation_id,
                       "read_seq": read.read_seq, "unread": read.unread}),
                format!(
                    "read {with} up to seq {} ({} unread)",
                    read.read_seq, read.unread
                ),
            );
        }
        Command::Recall { with, seq } => {
            let (client, saved) = resume(&endpoint, &session_path).await?;
            let peer = client.find_user(with).await?;
            let conversation = direct_id(saved.user_id, peer.user_id)?;
            client.recall(&conversation, *seq).await?;
            out.line(
                json!({"event": "recalled", "conversation_id": conversation, "seq": seq}),
                format!("recalled seq {seq} in the conversation with {with}"),
            );
        }
        Command::Groups { action } => {
            let (client, _) = resume(&endpoint, &session_path).await?;
            groups(
                &client,
                &out,
                action.as_ref().unwrap_or(&GroupsAction::List),
            )
            .await?;
        }
        Command::Friends { action } => {
            let (client, _) = resume(&endpoint, &session_path).await?;
            friends(
                &client,
                &out,
                action.as_ref().unwrap_or(&FriendsAction::List),
            )
            .await?;
        }
        Command::Presence { users, away } => {
            let (client, _) = resume(&endpoint, &session_path).await?;
            if *away {
                client.set_presence(pb::PresenceState::Away).await?;
            }
            let mut names = std::collections::HashMap::new();
            let ids = if users.is_empty() {
                client
                    .friends()
                    .await?
                    .friends
                    .iter()
                    .map(|f| f.user_id)
                    .collect()
            } else {
                let mut ids = Vec::new();
                for user in users {
                    ids.push(client.find_user(user).await?.user_id);
                }
                ids
            };
            for p in client.presence(&ids).await? {
                let who = name_of(&client, &mut names, p.user_id).await;
                let state = pb::PresenceState::try_from(p.state)
                    .map(|s| s.as_str_name().to_ascii_lowercase())
                    .unwrap_or_else(|_| "unknown".into());
                out.line(
                    json!({"event": "presence", "user": who, "state": state,
                           "devices_online": p.devices_online, "last_seen_ms": p.last_seen_ms}),
                    format!("{who:<16} {state} ({} devices)", p.devices_online),
                );
            }
        }
        Command::Conversations { limit } => {
            let (client, saved) = resume(&endpoint, &session_path).await?;
            let mut names = std::collections::HashMap::new();
            names.insert(saved.user_id, saved.username.clone());
            let page = client.conversations(*limit, None).await?;
            for c in &page.conversations {
                let peer = name_of(&client, &mut names, c.peer_id).await;
                let last = c.last_message.as_ref().map(describe).unwrap_or_default();
                out.line(
                    json!({"event": "conversation", "conversation_id": c.conversation_id,
                           "peer": peer, "unread": c.unread, "last_seq": c.last_seq,
                           "read_seq": c.read_seq, "peer_read_seq": c.peer_read_seq,
                           "last_at_ms": c.last_at_ms, "last": last}),
                    format!(
                        "{peer:<16} {:>3} unread  last #{}: {last}",
                        c.unread, c.last_seq
                    ),
                );
            }
        }
        Command::Listen { count } => {
            let (client, saved) = resume(&endpoint, &session_path).await?;
            listen(&client, &saved, &out, *count).await?;
        }
        Command::History {
            with,
            limit,
            before,
        } => {
            let (client, saved) = resume(&endpoint, &session_path).await?;
            let peer = client.find_user(with).await?;
            let page = client.history(peer.user_id, *before, *limit).await?;
            // Oldest first reads naturally in a terminal.
            for message in page.messages.iter().rev() {
                let from = if message.sender_id == saved.user_id {
                    saved.username.clone()
                } else {
                    peer.username.clone()
                };
                out.message(message, &from);
            }
            if page.has_more && !out.json {
                if let Some(oldest) = page.messages.last() {
                    println!("(older: --before {})", oldest.seq);
                }
            }
        }
    }
    Ok(())
}

async fn listen(
    client: &Client,
    saved: &SavedSession,
    out: &Output,
    count: Option<usize>,
) -> anyhow::Result<()> {
    let mut names = std::collections::HashMap::new();
    names.insert(saved.user_id, saved.username.clone());
    let mut tracker = SeqTracker::default();
    let mut printed = 0usize;
    let done = |printed: usize| count.is_some_and(|c| printed >= c);
    for message in client.sync_all(&mut tracker).await? {
        let from = name_of(client, &mut names, message.sender_id).await;
        out.message(&message, &from);
        printed += 1;
        if done(printed) {
            return Ok(());
        }
    }
    if !out.json {
        eprintln!("listening as {} (Ctrl-C to stop)", saved.username);
    }
    loop {
        let Some(push) = client.next_push(Duration::from_secs(20)).await else {
            client.heartbeat().await?;
            continue;
        };
        match push {
            Push::Message(message) => {
                if !tracker.accept(&message) {
                    continue;
                }
                let from = name_of(client, &mut names, message.sender_id).await;
                out.message(&message, &from);
                client.ack(&message.conversation_id, message.seq).await?;
                printed += 1;
                if done(printed) {
                    return Ok(());
                }
            }
            Push::ReadReceipt(r) => {
                let who = name_of(client, &mut names, r.reader_id).await;
                out.line(
                    json!({"event": "read_receipt", "conversation_id": r.conversation_id,
                           "reader": who, "seq": r.seq}),
                    format!("[{}] {who} read up to #{}", r.conversation_id, r.seq),
                );
            }
            Push::Recalled(r) => {
                let who = name_of(client, &mut names, r.recalled_by).await;
                out.line(
                    json!({"event": "recalled", "conversation_id": r.conversation_id,
                           "seq": r.seq, "by": who}),
                    format!("[{}#{}] recalled by {who}", r.conversation_id, r.seq),
                );
            }
            Push::Typing(t) => {
                let who = name_of(client, &mut names, t.user_id).await;
                let what = if t.typing {
                    "is typing"
                } else {
                    "stopped typing"
                };
                out.line(
                    json!({"event": "typing", "from": who, "typing": t.typing}),
                    format!("{who} {what}"),
                );
            }
            Push::Friend(e) => {
                let from = name_of(client, &mut names, e.from_user_id).await;
                let to = name_of(client, &mut names, e.to_user_id).await;
                let kind = pb::FriendEventKind::try_from(e.kind)
                    .map(|k| k.as_str_name().to_ascii_lowercase())
                    .unwrap_or_else(|_| "unknown".into());
                out.line(
                    json!({"event": kind, "from": from, "to": to, "note": e.note}),
                    format!("{kind}: {from} -> {to} {}", e.note),
                );
            }
            Push::Presence(p) => {
                let who = name_of(client, &mut names, p.user_id).await;
                let state = pb::PresenceState::try_from(p.state)
                    .map(|s| s.as_str_name().to_ascii_lowercase())
                    .unwrap_or_else(|_| "unknown".into());
                out.line(
                    json!({"event": "presence", "user": who, "state": state,
                           "devices_online": p.devices_online}),
                    format!("{who} is {state}"),
                );
            }
            Push::Notice(n) => out.line(
                json!({"event": "notice", "text": n.text, "sent_at_ms": n.sent_at_ms}),
                format!("notice: {}", n.text),
            ),
            Push::Kicked(reason) => bail!("disconnected by the server: {reason}"),
            Push::Error(error) => bail!("server error: {}", error.message),
            Push::Closed => bail!("connection closed"),
        }
    }
}

async fn groups(client: &Client, out: &Output, action: &GroupsAction) -> anyhow::Result<()> {
    let ids_of = |names: &[String]| {
        let names = names.to_vec();
        async move {
            let mut ids = Vec::with_capacity(names.len());
            for name in &names {
                ids.push(client.find_user(name).await?.user_id);
            }
            anyhow::Ok(ids)
        }
    };
    let role_name = |role: i32| {
        pb::GroupRole::try_from(role)
            .map(|r| r.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "member".into())
    };
    let print_group = |g: &pb::GroupInfo| {
        out.line(
            json!({"event": "group", "group_id": g.group_id.to_string(), "name": g.name,
                   "description": g.description, "owner_id": g.owner_id.to_string(),
                   "members": g.member_count, "my_role": role_name(g.my_role)}),
            format!(
                "{:<20} {:<24} {} members, I am {}",
                g.group_id,
                g.name,
                g.member_count,
                role_name(g.my_role)
            ),
        )
    };
    let (verb, group, seq) = match action {
        GroupsAction::List => {
            let mut after = 0;
            loop {
                let page = client.my_groups(after, 100).await?;
                for g in &page.groups {
                    print_group(g);
                    after = g.group_id;
                }
                if !page.has_more {
                    return Ok(());
                }
            }
        }
        GroupsAction::Create {
            name,
            members,
            description,
        } => {
            let ids = ids_of(members).await?;
            let group = client.create_group(name, &ids, description).await?;
            ("created", group, 1)
        }
        GroupsAction::Info { group } => {
            print_group(&client.group(*group).await?);
            return Ok(());
        }
        GroupsAction::Members { group } => {
            let mut names = std::collections::HashMap::new();
            let mut after = 0;
            loop {
                let page = client.group_members(*group, after, 500).await?;
                for m in &page.members {
                    let who = name_of(client, &mut names, m.user_id).await;
                    out.line(
                        json!({"event": "member", "user": who, "user_id": m.user_id.to_string(),
                               "role": role_name(m.role), "join_seq": m.join_seq}),
                        format!("{who:<16} {}", role_name(m.role)),
                    );
                    after = m.user_id;
                }
                if !page.has_more {
                    return Ok(());
                }
            }
        }
        GroupsAction::Add { group, users } => {
            let seq = client.add_members(*group, &ids_of(users).await?).await?;
            ("added", *group, seq)
        }
        GroupsAction::Remove { group, users } => {
            let seq = client.remove_members(*group, &ids_of(users).await?).await?;
            ("removed", *group, seq)
        }
        GroupsAction::Leave { group } => ("left", *group, client.leave_group(*group).await?),
        GroupsAction::Admin { group, user, unset } => {
            let user_id = client.find_user(user).await?.user_id;
            let seq = client.set_admin(*group, user_id, !unset).await?;
            ("role_changed", *group, seq)
        }
        GroupsAction::Transfer { group, user } => {
            let user_id = client.find_user(user).await?.user_id;
            let seq = client.transfer_owner(*group, user_id).await?;
            ("transferred", *group, seq)
        }
        GroupsAction::Update {
            group,
            name,
            description,
            avatar_url,
        } => {
            let request = pb::UpdateGroupRequest {
                group_id: *group,
                name: name.clone(),
                description: description.clone(),
                avatar_url: avatar_url.clone(),
            };
            let seq = client
                .group_change(ourchat_protocol::Body::UpdateGroup(request))
                .await?;
            ("updated", *group, seq)
        }
        GroupsAction::Dissolve { group } => {
            ("dissolved", *group, client.dissolve_group(*group).await?)
        }
        GroupsAction::Send { group, text } => {
            let ack = client.send_group_text(*group, text).await?;
            ("sent", *group, ack.seq)
        }
        GroupsAction::History { group, limit } => {
            let mut names = std::collections::HashMap::new();
            let request = pb::HistoryRequest {
                conversation_id: format!("sg_{group}"),
                limit: *limit,
                ..Default::default()
            };
            let page = client.history_of(request).await?;
            for message in page.messages.iter().rev() {
                let from = name_of(client, &mut names, message.sender_id).await;
                out.message(message, &from);
            }
            return Ok(());
        }
    };
    out.line(
        json!({"event": verb, "group_id": group.to_string(), "seq": seq}),
        format!("{verb}: group {group} (seq {seq})"),
    );
    Ok(())
}

async fn friends(client: &Client, out: &Output, action: &FriendsAction) -> anyhow::Result<()> {
    let id_of = |name: &str| {
        let name = name.to_string();
        async move { anyhow::Ok(client.find_user(&name).await?.user_id) }
    };
    let (verb, user) = match action {
        FriendsAction::List => {
            let listed = client.friends().await?;
            let mut names = std::collections::HashMap::new();
            for f in &listed.friends {
                let state = if f.online { "online" } else { "offline" };
                out.line(
                    json!({"event": "friend", "user": f.username, "user_id": f.user_id.to_string(), "online": f.online}),
                    format!("friend   {:<16} {state}", f.username),
                );
            }
            for r in &listed.incoming {
                let who = name_of(client, &mut names, r.from_user_id).await;
                out.line(
                    json!({"event": "request_in", "from": who, "note": r.note}),
                    format!("request  from {who}: {}", r.note),
                );
            }
            for r in &listed.outgoing {
                let who = name_of(client, &mut names, r.to_user_id).await;
                out.line(
                    json!({"event": "request_out", "to": who}),
                    format!("request  to {who} (pending)"),
                );
            }
            for id in &listed.blocked {
                let who = name_of(client, &mut names, *id).await;
                out.line(
                    json!({"event": "blocked", "user": who}),
                    format!("blocked  {who}"),
                );
            }
            return Ok(());
        }
        FriendsAction::Search { prefix } => {
            for u in client.search_users(prefix, 50, 0).await?.users {
                out.line(
                    json!({"event": "user", "user": u.username, "user_id": u.user_id.to_string(), "nickname": u.nickname}),
                    format!("{:<16} {}", u.username, u.nickname),
                );
            }
            return Ok(());
        }
        FriendsAction::Add { user, note } => {
            client.request_friend(id_of(user).await?, note).await?;
            ("requested", user)
        }
        FriendsAction::Accept { user } => {
            client.answer_friend(id_of(user).await?, true).await?;
            ("accepted", user)
        }
        FriendsAction::Reject { user } => {
            client.answer_friend(id_of(user).await?, false).await?;
            ("rejected", user)
        }
        FriendsAction::Delete { user } => {
            client.delete_friend(id_of(user).await?).await?;
            ("deleted", user)
        }
        FriendsAction::Block { user } => {
            client.block(id_of(user).await?, true).await?;
            ("blocked", user)
        }
        FriendsAction::Unblock { user } => {
            client.block(id_of(user).await?, false).await?;
            ("unblocked", user)
        }
    };
    out.line(
        json!({"event": verb, "user": user}),
        format!("{verb} {user}"),
    );
    Ok(())
}

async fn name_of(
    client: &Client,
    names: &mut std::collections::HashMap<i64, String>,
    user_id: i64,
) -> String {
    if let Some(name) = names.get(&user_id) {
        return name.clone();
    }
    let name = client
        .user(user_id)
        .await
        .map(|p| p.username)
        .unwrap_or_else(|_| user_id.to_string());
    names.insert(user_id, name.clone());
    name
}

struct Output {
    json: bool,
}

impl Output {
    fn line(&self, json: serde_json::Value, text: String) {
        if self.json {
            println!("{json}");
        } else {
            println!("{text}");
        }
    }

    fn message(&self, message: &ChatMessage, from: &str) {
        let kind = MessageType::try_from(message.message_type)
            .map(|t| t.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "unknown".into());
        self.line(
            json!({"event": "message", "conversation_id": message.conversation_id,
                   "seq": message.seq, "from": from, "sender_id": message.sender_id.to_string(),
                   "type": kind, "content": message.content,
                   "sent_at_ms": message.sent_at_ms}),
            format!(
                "[{}#{}] {from}: {}",
                message.conversation_id,
                message.seq,
                describe(message)
            ),
        );
    }
}

/// One line for a message of any type.
fn describe(message: &ChatMessage) -> String {
    if message.recalled {
        return "(recalled)".into();
    }
    if let Some(event) = &message.group_event {
        let kind = pb::group_event::Kind::try_from(event.kind)
            .map(|k| k.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| "event".into());
        return format!("({kind} {:?} by {})", event.user_ids, event.actor_id);
    }
    match (&message.media, &message.location) {
        (Some(m), _) => format!(
            "[{} {} {} B] {}",
            m.mime, m.url, m.size_bytes, message.content
        ),
        (_, Some(l)) => format!(
            "[location {:.5},{:.5}] {}",
            l.latitude, l.longitude, l.title
        ),
        _ => message.content.clone(),
    }
}

/// The 1:1 conversation id of two users.
fn direct_id(me: i64, peer: i64) -> anyhow::Result<String> {
    ourchat_protocol::ConversationId::direct(me, peer)
        .map(|c| c.to_string())
        .context("that is you")
}

/// Where to connect, and how.
struct Endpoint {
    server: String,
    tls: Option<TlsSettings>,
}

impl Endpoint {
    fn from_cli(cli: &Cli) -> anyhow::Result<Endpoint> {
        let tls = match &cli.ca_file {
            Some(ca_file) => {
                let host = match &cli.tls_name {
                    Some(name) => name.clone(),
                    None => host_of(&cli.server).to_string(),
                };
                Some(TlsSettings::from_ca_file(ca_file, &host)?)
            }
            None => None,
        };
        Ok(Endpoint {
            server: cli.server.clone(),
            tls,
        })
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

async fn connect(endpoint: &Endpoint) -> anyhow::Result<Client> {
    Client::connect_with(endpoint.server.as_str(), endpoint.tls.as_ref())
        .await
        .with_context(|| format!("cannot connect to {}", endpoint.server))
}

/// Connects and logs in with the saved token.
async fn resume(endpoint: &Endpoint, path: &PathBuf) -> anyhow::Result<(Client, SavedSession)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no session in {}: run `ourchat-cli login` first",
            path.display()
        )
    })?;
    let saved: SavedSession = serde_json::from_str(&text)
        .with_context(|| format!("corrupt session file {}", path.display()))?;
    let client = connect(endpoint).await?;
    client
        .login_token(&saved.token)
        .await
        .context("saved session refused: run `ourchat-cli login` again")?;
    Ok((client, saved))
}

fn save_session(path: &PathBuf, session: &SavedSession) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write session file {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(session)?.as_bytes())?;
    Ok(())
}

fn default_session_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    home.join(".ourchat").join("session.json")
}
