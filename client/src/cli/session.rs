//! Where the CLI connects (plain or TLS) and the session it keeps between
//! commands: the token saved after `login`, private to its user.

use std::path::PathBuf;

use anyhow::Context;
use ourchat_client::{Client, TlsSettings};
use serde::{Deserialize, Serialize};

use crate::args::Cli;

/// What `login` saves: enough to log in again by token.
#[derive(Serialize, Deserialize)]
pub(crate) struct SavedSession {
    pub(crate) server: String,
    pub(crate) username: String,
    pub(crate) user_id: i64,
    pub(crate) device_id: String,
    pub(crate) token: String,
}

/// Where to connect, and how.
pub(crate) struct Endpoint {
    server: String,
    tls: Option<TlsSettings>,
}

impl Endpoint {
    pub(crate) fn from_cli(cli: &Cli) -> anyhow::Result<Endpoint> {
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
pub(crate) fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

pub(crate) async fn connect(endpoint: &Endpoint) -> anyhow::Result<Client> {
    Client::connect_with(endpoint.server.as_str(), endpoint.tls.as_ref())
        .await
        .with_context(|| format!("cannot connect to {}", endpoint.server))
}

/// Connects and logs in with the saved token.
pub(crate) async fn resume(
    endpoint: &Endpoint,
    path: &PathBuf,
) -> anyhow::Result<(Client, SavedSession)> {
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

pub(crate) fn save_session(path: &PathBuf, session: &SavedSession) -> anyhow::Result<()> {
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

pub(crate) fn default_session_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    home.join(".ourchat").join("session.json")
}
