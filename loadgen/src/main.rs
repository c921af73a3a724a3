//! `ourchat-loadgen`: drives OurChat nodes with many connections over the
//! real client protocol and reports what it measured.
//!
//! One process may hold only ~19,900 sockets on these machines (hard
//! open-files limit 20000), so the parent spawns `--procs` child processes
//! (itself, with `--child N`), gives each a share of the users, starts the
//! measured phase in all of them at once (they print `Ready`, the parent
//! writes `go`), prints a merged progress line every second, and merges
//! their histograms into one report. Runs are bounded in time and stop by
//! themselves; only the `--targets` given are ever contacted.

mod child;
mod parent;
mod report;
mod run;
mod summary;

use anyhow::{bail, Context};
use child::child_main;
use clap::Parser;
use parent::parent_main;
use run::Scenario;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Sockets one process may open: the hard open-files limit is 20000 here,
/// minus room for the runtime, pipes and the token file.
const MAX_CONNS_PER_PROC: usize = 19_800;

#[derive(Parser, Debug, Clone)]
#[command(name = "ourchat-loadgen", version, about = "OurChat load generator")]
struct Args {
    /// idle | p2p | storm | group
    #[arg(value_enum)]
    scenario: Scenario,
    /// Gateway client addresses, comma-separated; users are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50003")]
    targets: Vec<SocketAddr>,
    /// Token file from `ourchat admin provision` ("user_id token" lines).
    #[arg(long)]
    tokens: PathBuf,
    /// Use only the first N users of the file (default: all).
    #[arg(long)]
    users: Option<usize>,
    /// Processes (each holds at most 19,800 connections).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Runtime threads per process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Local addresses to connect from, comma-separated. Default for
    /// loopback targets: 127.0.0.1-127.0.0.250, to get past the ephemeral
    /// port range of one address.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// New connections per second, all processes together.
    #[arg(long, default_value_t = 5_000.0)]
    ramp: f64,
    /// Seconds of the measured phase (idle hold, p2p sending; storm: cap).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// p2p: messages per second, all processes together.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// p2p: contacts per user (each sends to the next N users of the token
    /// file). 0: every send to a random user, so nearly every send opens a
    /// new conversation (worst case for the sequencer and the store).
    #[arg(long, default_value_t = 10)]
    peers: usize,
    /// group: members per group; users are grouped in token-file order
    /// and the first of each group creates it before the run.
    #[arg(long, default_value_t = 5_000)]
    group_size: usize,
    /// Internal: the groups the parent created, in order.
    #[arg(long, hide = true, value_delimiter = ',')]
    group_ids: Vec<i64>,
    /// Seconds after the phase to wait for late acks and deliveries; then,
    /// while deliveries still come, on until every acked send is delivered
    /// or none came for 2 s (at most 60 s more): a send acked but not yet
    /// delivered when counting stops is not lost, only late.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Heartbeat interval in seconds.
    #[arg(long, default_value_t = 30.0)]
    heartbeat: f64,
    /// What to speak: OurChat, or MQTT 3.1.1 QoS 1 to a broker (Mosquitto)
    /// for a side-by-side run (the token file then only gives the user
    /// count; `--server-pid` gives the broker's memory and CPU).
    #[arg(long, value_enum, default_value_t = run::Protocol::Ourchat)]
    protocol: run::Protocol,
    /// Speak OurChat over WebSocket: the targets are `server.ws_listen`
    /// listeners (one binary message per envelope).
    #[arg(long)]
    ws: bool,
    /// Answer every pushed message with a DeliveryAck, as real clients do
    /// (the server then moves and stores the device's cursor).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    delivery_acks: bool,
    /// Connect over TLS (the targets are TLS listeners), trusting the CA
    /// certificates in this PEM file.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Name the servers' certificates must carry.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// Admin addresses (host:port) of the targets, to read server memory.
    #[arg(long, value_delimiter = ',')]
    admin: Vec<SocketAddr>,
    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The server's process id, when it runs on this machine: its CPU time
    /// from "go" to the last report is divided by the messages delivered.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Internal: run as child number N.
    #[arg(long, hide = true)]
    child: Option<usize>,
}

/// The longest a drain waits, past `--drain`, for deliveries still coming.
const LATE_DRAIN_CAP: Duration = Duration::from_secs(60);

/// A drain past `--drain` ends once no delivery came for this long.
const LATE_DRAIN_QUIET: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.child {
        Some(index) => child_main(&args, index),
        None => parent_main(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ourchat-loadgen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

struct TokenFile {
    ids: Vec<i64>,
    tokens: Vec<String>,
}

/// Reads ids of every user, and tokens of the users `keep` selects.
fn read_tokens(args: &Args, keep: impl Fn(usize) -> bool) -> anyhow::Result<TokenFile> {
    let file = std::fs::File::open(&args.tokens)
        .with_context(|| format!("cannot open token file {}", args.tokens.display()))?;
    let limit = args.users.unwrap_or(usize::MAX);
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        if index >= limit {
            break;
        }
        let line = line?;
        let (id, token) = line.split_once(' ').with_context(|| {
            format!("token file line {}: expected \"user_id token\"", index + 1)
        })?;
        ids.push(
            id.parse()
                .with_context(|| format!("token file line {}: bad user id", index + 1))?,
        );
        tokens.push(if keep(index) {
            token.to_string()
        } else {
            String::new()
        });
    }
    if ids.is_empty() {
        bail!("token file {} has no users", args.tokens.display());
    }
    Ok(TokenFile { ids, tokens })
}

fn source_ips(args: &Args) -> Vec<Option<IpAddr>> {
    if !args.source_ips.is_empty() {
        return args.source_ips.iter().copied().map(Some).collect();
    }
    if args
        .targets
        .iter()
        .all(|t| t.ip().is_loopback() && t.is_ipv4())
    {
        return (1..=250u8)
            .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))))
            .collect();
    }
    vec![None]
}

/// Members added per request: keeps each request and its event push well
/// under the server's 64 KiB frame limit.
const MEMBERS_PER_REQUEST: usize = 4_000;

/// TLS settings from `--ca-file`, when given.
fn tls_settings(args: &Args) -> anyhow::Result<Option<ourchat_client::TlsSettings>> {
    args.ca_file
        .as_deref()
        .map(|ca| ourchat_client::TlsSettings::from_ca_file(ca, &args.tls_name))
        .transpose()
        .context("--ca-file")
}

/// Creates the run's groups (users in token-file order, `--group-size`
/// each; the first member owns it) and returns their ids.
fn create_groups(args: &Args) -> anyhow::Result<Vec<i64>> {
    let size = args.group_size.max(2);
    let file = read_tokens(args, |i| i % size == 0)?;
    let target = args.targets[0];
    let tls = tls_settings(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut groups = Vec::new();
        for (number, members) in file.ids.chunks(size).enumerate() {
            let owner = ourchat_client::Client::connect_with(target, tls.as_ref()).await?;
            owner
                .login_token(&file.tokens[number * size])
                .await
                .context("group owner login")?;
            let others = &members[1..];
            let first = others.len().min(MEMBERS_PER_REQUEST);
            let group = owner
                .create_group(&format!("loadgen {number}"), &others[..first], "")
                .await
                .context("create group")?;
            for chunk in others[first..].chunks(MEMBERS_PER_REQUEST) {
                owner
                    .add_members(group, chunk)
                    .await
                    .context("add members")?;
            }
            groups.push(group);
        }
        anyhow::Ok(groups)
    })
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Idle => "idle",
        Scenario::P2p => "p2p",
        Scenario::Storm => "storm",
        Scenario::Group => "group",
    }
}
