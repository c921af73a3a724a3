//! `ourchat-cli`: a terminal client over the SDK. `login` keeps the session
//! token in a file so later commands (`send`, `listen`, `history`) log in
//! by token. `--json` prints one JSON object per line for scripts.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ourchat_client::{Client, Push, SeqTracker};
use ourchat_protocol::pb::{self, MessageType};
use serde_json::json;

mod args;
mod output;
mod session;
mod social;

use args::{Cli, Command, FriendsAction, GroupsAction};
use output::{describe, name_of, Output};
use session::{connect, default_session_path, resume, save_session, Endpoint, SavedSession};
use social::{friends, groups};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

/// The 1:1 conversation id of two users.
fn direct_id(me: i64, peer: i64) -> anyhow::Result<String> {
    ourchat_protocol::ConversationId::direct(me, peer)
        .map(|c| c.to_string())
        .context("that is you")
}
