//! `ourchat-cli`: a terminal client over the SDK. `login` keeps the session
//! token in a file so later commands (`send`, `listen`, `history`) log in
//! by token. `--json` prints one JSON object per line for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ourchat_client::{Client, Push, SeqTracker};
use ourchat_protocol::pb::{ChatMessage, MessageType};
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
    /// Where the session (token) is kept.
    #[arg(long, global = true, env = "OURCHAT_SESSION")]
    session: Option<PathBuf>,
    /// One JSON object per line instead of text.
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
    /// Send a text message.
    Send {
        /// Recipient's username.
        #[arg(long)]
        to: String,
        text: String,
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
    match &cli.command {
        Command::Register { username, password } => {
            let client = connect(&cli.server).await?;
            let user_id = client.register(username, password).await?;
            out.line(
                json!({"event": "registered", "username": username, "user_id": user_id}),
                format!("registered {username} (user id {user_id})"),
            );
        }
        Command::Login {
            username,
            password,
            device,
        } => {
            let client = connect(&cli.server).await?;
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
                json!({"event": "logged_in", "username": username, "user_id": session.user_id,
                       "device_id": session.device_id, "expire_at": session.expire_at}),
                format!(
                    "logged in as {username} (user id {}, device {})",
                    session.user_id, session.device_id
                ),
            );
        }
        Command::Send { to, text } => {
            let (client, _) = resume(&cli.server, &session_path).await?;
            let peer = client.find_user(to).await?;
            let ack = client.send_text(peer.user_id, text).await?;
            out.line(
                json!({"event": "sent", "to": to, "conversation_id": ack.conversation_id,
                       "seq": ack.seq, "server_msg_id": ack.server_msg_id}),
                format!("sent to {to} (seq {})", ack.seq),
            );
        }
        Command::Listen { count } => {
            let (client, saved) = resume(&cli.server, &session_path).await?;
            listen(&client, &saved, &out, *count).await?;
        }
        Command::History {
            with,
            limit,
            before,
        } => {
            let (client, saved) = resume(&cli.server, &session_path).await?;
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
            Push::Kicked(reason) => bail!("disconnected by the server: {reason}"),
            Push::Error(error) => bail!("server error: {}", error.message),
            Push::Closed => bail!("connection closed"),
        }
    }
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
                   "seq": message.seq, "from": from, "sender_id": message.sender_id,
                   "type": kind, "content": message.content,
                   "sent_at_ms": message.sent_at_ms}),
            format!(
                "[{}#{}] {from}: {}",
                message.conversation_id, message.seq, message.content
            ),
        );
    }
}

async fn connect(server: &str) -> anyhow::Result<Client> {
    Client::connect(server)
        .await
        .with_context(|| format!("cannot connect to {server}"))
}

/// Connects and logs in with the saved token.
async fn resume(server: &str, path: &PathBuf) -> anyhow::Result<(Client, SavedSession)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no session in {}: run `ourchat-cli login` first",
            path.display()
        )
    })?;
    let saved: SavedSession = serde_json::from_str(&text)
        .with_context(|| format!("corrupt session file {}", path.display()))?;
    let client = connect(server).await?;
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
