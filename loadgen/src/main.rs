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

mod report;
mod run;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;

use report::{new_histogram, ChildLine, CounterSnapshot, Percentiles, ProcResult, Recorded};
use run::{Assigned, Phase, ProcPlan, Scenario, Shared};

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

fn child_main(args: &Args, index: usize) -> anyhow::Result<std::process::ExitCode> {
    let procs = args.procs.max(1);
    let file = read_tokens(args, |i| i % procs == index)?;
    let total = file.ids.len();
    let sources = source_ips(args);
    let mine: Vec<Assigned> = (index..total)
        .step_by(procs)
        .map(|i| Assigned {
            index: i,
            target: args.targets[i % args.targets.len()],
            source: sources[i % sources.len()],
            token: file.tokens[i].clone(),
        })
        .collect();
    let threads = args.threads.max(1);
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Connect);
    let shared = Arc::new(Shared {
        counters: Default::default(),
        attempted: Default::default(),
        phase: phase_rx,
    });
    let plan = Arc::new(ProcPlan {
        scenario: args.scenario,
        protocol: args.protocol,
        all_user_ids: Arc::new(file.ids),
        ramp_per_sec: args.ramp / procs as f64,
        send_period: Duration::from_secs_f64(total as f64 / args.rate.max(0.001)),
        peers: args.peers,
        heartbeat: Duration::from_secs_f64(args.heartbeat.max(1.0)),
        delivery_acks: args.delivery_acks,
        groups: (args.scenario == Scenario::Group).then(|| run::GroupPlan {
            size: args.group_size.max(2),
            ids: args.group_ids.clone(),
            users: total,
        }),
        tls: tls_settings(args)?,
        ws: args.ws,
    });
    let my_count = mine.len();
    let mut per_thread: Vec<Vec<Assigned>> = vec![Vec::new(); threads];
    for (i, user) in mine.into_iter().enumerate() {
        per_thread[i % threads].push(user);
    }
    let mut handles = Vec::new();
    let mut hists = Vec::new();
    for users in per_thread {
        let h = run::thread_histograms();
        hists.push(h.clone());
        let (plan, shared) = (plan.clone(), shared.clone());
        let ramp = plan.ramp_per_sec / threads as f64;
        handles.push(std::thread::spawn(move || {
            run::run_thread(plan, shared, users, h, ramp)
        }));
    }

    // The parent's two words: "go" starts the phase, "end" ends the drain.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (end_tx, end_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let sent = match line.as_deref().map(str::trim) {
                Ok("go") => go_tx.send(()),
                Ok("end") => end_tx.send(()),
                _ => Ok(()),
            };
            if line.is_err() || sent.is_err() {
                break;
            }
        }
    });
    let emit = |line: &ChildLine| -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", serde_json::to_string(line)?)?;
        stdout.flush()?;
        Ok(())
    };
    let progress = |hists: &[Arc<Mutex<run::Histograms>>]| {
        let mut deliver = new_histogram();
        for h in hists {
            if let Ok(h) = h.lock() {
                let _ = deliver.add(&h.deliver);
            }
        }
        ChildLine::Progress {
            counters: shared.counters.snapshot(),
            deliver_p99_us: deliver.value_at_quantile(0.99),
        }
    };
    // Connect phase: until every user has had its login attempt.
    while shared.attempted.load(std::sync::atomic::Ordering::Relaxed) < my_count {
        emit(&progress(&hists))?;
        std::thread::sleep(Duration::from_millis(1000));
    }
    emit(&ChildLine::Ready)?;
    // The parent says go once every process is ready (bounded wait).
    let _ = go_rx.recv_timeout(Duration::from_secs(600));
    let go = tokio::time::Instant::now();
    let _ = phase_tx.send(Phase::Go(go));
    let phase_end = Instant::now() + Duration::from_secs_f64(args.duration.max(0.0));
    while Instant::now() < phase_end {
        emit(&progress(&hists))?;
        if args.scenario == Scenario::Storm {
            let c = shared.counters.snapshot();
            if c.logins >= 2 * my_count as u64 || c.logins + c.connect_errors >= 2 * my_count as u64
            {
                break;
            }
        }
        std::thread::sleep(
            Duration::from_millis(250).min(phase_end.saturating_duration_since(Instant::now())),
        );
    }
    let mut phase_secs = go.elapsed().as_secs_f64();
    let _ = phase_tx.send(Phase::Drain);
    std::thread::sleep(Duration::from_secs_f64(args.drain.max(0.0)));
    // Rates count what came by here; losses wait for the late ones. A
    // delivery is counted by its receiver's process, its ack by its
    // sender's: only the parent sees both sums, and says when to stop.
    let counters = shared.counters.snapshot();
    emit(&ChildLine::Draining)?;
    let give_up = Instant::now() + LATE_DRAIN_CAP;
    while Instant::now() < give_up {
        emit(&progress(&hists))?;
        if end_rx.recv_timeout(Duration::from_millis(250)).is_ok() {
            break;
        }
    }
    let settled = shared.counters.snapshot();
    let _ = phase_tx.send(Phase::Exit);
    for handle in handles {
        let _ = handle.join();
    }
    let mut ack = new_histogram();
    let mut deliver = new_histogram();
    let mut login = new_histogram();
    for h in &hists {
        if let Ok(h) = h.lock() {
            let _ = ack.add(&h.ack);
            let _ = deliver.add(&h.deliver);
            let _ = login.add(&h.login);
        }
    }
    // Every reconnect is timed from the go, so the slowest one ends the
    // storm; the loop above only looks every 250 ms.
    if args.scenario == Scenario::Storm && !login.is_empty() {
        phase_secs = login.max() as f64 / 1e6;
    }
    let mut result = ProcResult {
        counters,
        settled,
        phase_secs,
        ..Default::default()
    };
    result.ack_us = Recorded::of(&ack);
    result.deliver_us = Recorded::of(&deliver);
    result.login_us = Recorded::of(&login);
    emit(&ChildLine::Done(Box::new(result)))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Every process's latest counters, added up.
fn sum_of(latest: &[CounterSnapshot]) -> CounterSnapshot {
    let mut sum = CounterSnapshot::default();
    latest.iter().for_each(|c| sum.add(c));
    sum
}

/// A word to every child on its stdin ("go", "end").
fn tell_children(children: &mut [std::process::Child], word: &str) {
    for child in children {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = writeln!(stdin, "{word}");
            let _ = stdin.flush();
        }
    }
}

enum FromChild {
    Line(usize, ChildLine),
    Gone,
}

fn parent_main(args: &Args) -> anyhow::Result<std::process::ExitCode> {
    let procs = args.procs.max(1);
    let users = read_tokens(args, |_| false)?.ids.len();
    let per_proc = users.div_ceil(procs);
    if per_proc > MAX_CONNS_PER_PROC {
        bail!(
            "{users} users over {procs} processes is {per_proc} sockets each; one process may hold \
             at most {MAX_CONNS_PER_PROC} here: use --procs {}",
            users.div_ceil(MAX_CONNS_PER_PROC)
        );
    }
    if args.targets.is_empty() {
        bail!("no --targets");
    }
    let rss_before = server_rss(args);
    let exe = std::env::current_exe()?;
    let mut raw: Vec<String> = std::env::args().skip(1).collect();
    if args.scenario == Scenario::Group {
        let groups = match args.protocol {
            run::Protocol::Ourchat => create_groups(args)?,
            // A broker's "group" is a topic: g/<number>.
            run::Protocol::Mqtt => (0..users.div_ceil(args.group_size.max(2)) as i64).collect(),
        };
        println!(
            "created {} groups of up to {} members",
            groups.len(),
            args.group_size
        );
        raw.push("--group-ids".into());
        raw.push(
            groups
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    let (tx, rx) = mpsc::channel();
    let mut children = Vec::new();
    for index in 0..procs {
        let mut child = Command::new(&exe)
            .args(&raw)
            .arg("--child")
            .arg(index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a loadgen child process")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(parsed) = serde_json::from_str::<ChildLine>(&line) {
                    let _ = tx.send(FromChild::Line(index, parsed));
                }
            }
            let _ = tx.send(FromChild::Gone);
        });
        children.push(child);
    }
    drop(tx);

    let started = Instant::now();
    let mut latest = vec![CounterSnapshot::default(); procs];
    let mut p99 = vec![0u64; procs];
    let mut ready = 0;
    let mut results: Vec<ProcResult> = Vec::new();
    let mut gone = 0;
    let mut connect_secs = 0.0;
    let mut rss_connected = None;
    let mut rss_held = None;
    let mut cpu_at_go = None;
    let mut loadgen_at_go: Option<(Instant, f64)> = None;
    let mut last_print = Instant::now();
    let mut last_sum = CounterSnapshot::default();
    let mut draining = 0;
    let mut drain_ended = false;
    let mut last_delivery = (0u64, Instant::now());
    println!(
        "{} scenario: {users} users over {procs} processes -> {:?}",
        scenario_name(args.scenario),
        args.targets
    );
    while gone < procs {
        let message = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match message {
            Some(FromChild::Line(
                i,
                ChildLine::Progress {
                    counters,
                    deliver_p99_us,
                },
            )) => {
                latest[i] = counters;
                p99[i] = deliver_p99_us;
                // Memory once held a while (a server may shed per-connection
                // state from idle connections): sampled in the idle scenario
                // only, while every user still reports online, and no later
                // than a second before the hold ends (a process done early
                // would be closing its connections meanwhile).
                let online: u64 = latest.iter().map(|c| c.online).sum();
                let holding = loadgen_at_go
                    .is_some_and(|(go, _)| go.elapsed().as_secs_f64() + 1.0 < args.duration);
                if args.scenario == Scenario::Idle && holding && online == users as u64 {
                    rss_held = server_rss(args).or(rss_held);
                }
            }
            Some(FromChild::Line(_, ChildLine::Ready)) => {
                ready += 1;
                if ready == procs {
                    connect_secs = started.elapsed().as_secs_f64();
                    // Let the last logins settle on the server before measuring memory.
                    std::thread::sleep(Duration::from_millis(500));
                    rss_connected = server_rss(args);
                    cpu_at_go = args.server_pid.and_then(cpu_seconds);
                    loadgen_at_go = Some((Instant::now(), children_cpu(&children)));
                    tell_children(&mut children, "go");
                }
            }
            Some(FromChild::Line(_, ChildLine::Draining)) => draining += 1,
            Some(FromChild::Line(_, ChildLine::Done(result))) => results.push(*result),
            Some(FromChild::Gone) => gone += 1,
            None => {}
        }
        if draining == procs && !drain_ended {
            let sum = sum_of(&latest);
            if sum.delivered != last_delivery.0 {
                last_delivery = (sum.delivered, Instant::now());
            }
            if sum.delivered >= sum.expected || last_delivery.1.elapsed() >= LATE_DRAIN_QUIET {
                drain_ended = true;
                tell_children(&mut children, "end");
            }
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let sum = sum_of(&latest);
            let dt = last_print.elapsed().as_secs_f64();
            println!(
                "[{:>5.1}s] online {:>7}  logins/s {:>7.0}  sends/s {:>8.0}  acks/s {:>8.0}  deliveries/s {:>8.0}  p99 deliver {:>7} µs  errors {}",
                started.elapsed().as_secs_f64(),
                sum.online,
                (sum.logins - last_sum.logins.min(sum.logins)) as f64 / dt,
                (sum.sent - last_sum.sent.min(sum.sent)) as f64 / dt,
                (sum.acked - last_sum.acked.min(sum.acked)) as f64 / dt,
                (sum.delivered - last_sum.delivered.min(sum.delivered)) as f64 / dt,
                p99.iter().max().copied().unwrap_or(0),
                sum.connect_errors + sum.send_errors + sum.kicked,
            );
            last_sum = sum;
            last_print = Instant::now();
        }
    }
    let server_cpu_secs = match (cpu_at_go, args.server_pid.and_then(cpu_seconds)) {
        (Some(go), Some(end)) => Some(end - go),
        _ => None,
    };
    // The loadgen's own CPU, as a share of the machine's over the same
    // span: it shares the cores with the server it measures.
    let loadgen_share = loadgen_at_go.map(|(at, go)| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = children_cpu(&children) - go;
        (busy, busy / (at.elapsed().as_secs_f64() * cpus).max(1e-9))
    });
    for mut child in children {
        let _ = child.wait();
    }
    if results.len() < procs {
        bail!(
            "{} of {procs} loadgen processes did not report",
            procs - results.len()
        );
    }
    let measured = Measured {
        connect_secs,
        rss_before,
        rss_connected,
        rss_held,
        server_cpu_secs,
        loadgen_share,
    };
    summarize(args, users, &measured, &results)
}

/// What the parent measured around the run, beside the children's reports.
struct Measured {
    connect_secs: f64,
    rss_before: Option<u64>,
    /// Half a second after the last login.
    rss_connected: Option<u64>,
    /// The last sample while every connection was still held.
    rss_held: Option<u64>,
    server_cpu_secs: Option<f64>,
    /// The loadgen's CPU seconds and its share of the machine.
    loadgen_share: Option<(f64, f64)>,
}

/// The CPU time of the child processes still running, seconds.
fn children_cpu(children: &[std::process::Child]) -> f64 {
    children.iter().filter_map(|c| cpu_seconds(c.id())).sum()
}

/// A local process's CPU time (user + system), seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // CLK_TCK is 100 on Linux (the kernel ABI since 2.6).
    Some(ticks / 100.0)
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

fn summarize(
    args: &Args,
    users: usize,
    measured: &Measured,
    results: &[ProcResult],
) -> anyhow::Result<std::process::ExitCode> {
    let Measured {
        connect_secs,
        rss_before,
        rss_connected,
        rss_held,
        server_cpu_secs,
        loadgen_share,
    } = *measured;
    let mut counters = CounterSnapshot::default();
    let mut settled = CounterSnapshot::default();
    let mut ack = new_histogram();
    let mut deliver = new_histogram();
    let mut login = new_histogram();
    let mut phase_secs: f64 = 0.0;
    for r in results {
        counters.add(&r.counters);
        settled.add(&r.settled);
        r.ack_us.merge_into(&mut ack);
        r.deliver_us.merge_into(&mut deliver);
        r.login_us.merge_into(&mut login);
        phase_secs = phase_secs.max(r.phase_secs);
    }
    // Acked and never delivered, however late (the drain waited for it).
    let lost = settled.expected.saturating_sub(settled.delivered);
    let per_sec = |n: u64| {
        if phase_secs > 0.0 {
            n as f64 / phase_secs
        } else {
            0.0
        }
    };
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(before), Some(after)) if users > 0 => {
            Some((after.saturating_sub(before)) as f64 / users as f64)
        }
        _ => None,
    };
    // The figure reported is the held one: what idle connections cost
    // once idle, not in the wake of their logins.
    let bytes_connected = per_conn(rss_connected);
    let bytes_per_conn = per_conn(rss_held).or(bytes_connected);
    println!("\n== {} summary ==", scenario_name(args.scenario));
    println!(
        "users {users}, processes {}, connected+logged in {} ({} failed) in {connect_secs:.1} s",
        args.procs,
        counters.logins.min(users as u64),
        counters.connect_errors
    );
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        println!(
            "server RSS {:.1} MiB before, {:.1} MiB just connected ({:.0} bytes per connection)",
            mib(before),
            mib(after),
            bytes_connected.unwrap_or(0.0)
        );
    }
    if let (Some(before), Some(held)) = (rss_before, rss_held) {
        println!(
            "server RSS {:.1} MiB before, {:.1} MiB held to the end: {:.0} bytes per connection",
            mib(before),
            mib(held),
            bytes_per_conn.unwrap_or(0.0)
        );
    }
    print_latency("login (connect+token login)", &login);
    match args.scenario {
        Scenario::P2p | Scenario::Group => {
            if args.scenario == Scenario::Group {
                println!(
                    "groups of {} members: every acked send owes {} deliveries in all",
                    args.group_size, counters.expected
                );
            }
            println!("phase {phase_secs:.1} s: sent {} ({:.0}/s), acked {} ({:.0}/s), delivered {} ({:.0}/s)", counters.sent, per_sec(counters.sent), counters.acked, per_sec(counters.acked), counters.delivered, per_sec(counters.delivered));
            print_latency("send -> ack", &ack);
            print_latency("send -> deliver", &deliver);
            if let Some((busy, share)) = loadgen_share {
                println!(
                    "loadgen CPU {busy:.2} s over the same span: {:.0}% of the machine",
                    share * 100.0
                );
            }
            if let Some(cpu) = server_cpu_secs {
                println!(
                    "server CPU {cpu:.2} s from go to the last report: {:.1} µs per delivered message",
                    cpu * 1e6 / settled.delivered.max(1) as f64
                );
            }
            println!("correctness: lost {lost}, duplicated {}, out of order {}, send errors {}, kicked {}", settled.duplicates, settled.out_of_order, settled.send_errors, settled.kicked);
        }
        Scenario::Storm => {
            let reconnected = counters.logins.saturating_sub(users as u64);
            println!(
                "storm: {reconnected} of {users} reconnected in {phase_secs:.2} s = {:.0} logins/s",
                per_sec(reconnected)
            );
        }
        Scenario::Idle => println!(
            "held {} connections for {phase_secs:.1} s, {} dropped",
            counters.online.max(counters.logins.min(users as u64)),
            counters.kicked
        ),
    }
    let report = json!({
        "scenario": scenario_name(args.scenario),
        "users": users, "procs": args.procs, "threads": args.threads, "targets": args.targets,
        "rate": args.rate, "peers": args.peers, "group_size": args.group_size, "duration": args.duration, "phase_secs": phase_secs,
        "connect_secs": connect_secs, "counters": counters,
        "lost": lost, "server_rss_before": rss_before, "server_rss_connected": rss_connected,
        "server_rss_held": rss_held, "server_bytes_per_connection": bytes_per_conn,
        "server_bytes_per_connection_just_connected": bytes_connected,
        "server_cpu_secs": server_cpu_secs,
        "loadgen_cpu_secs": loadgen_share.map(|(busy, _)| busy),
        "loadgen_cpu_share": loadgen_share.map(|(_, share)| share),
        "server_cpu_us_per_delivered": server_cpu_secs.map(|cpu| cpu * 1e6 / settled.delivered.max(1) as f64),
        "send_to_ack_us": Percentiles::of(&ack), "send_to_deliver_us": Percentiles::of(&deliver),
        "login_us": Percentiles::of(&login),
        "acks_per_sec": per_sec(counters.acked), "deliveries_per_sec": per_sec(counters.delivered),
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let clean = lost == 0
        && settled.duplicates == 0
        && settled.out_of_order == 0
        && counters.connect_errors == 0;
    Ok(if clean {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

fn print_latency(name: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    let p = Percentiles::of(h);
    println!(
        "{name:<28} n={:<9} p50 {:>8} µs  p90 {:>8} µs  p99 {:>8} µs  p99.9 {:>8} µs  max {:>8} µs",
        p.count, p.p50, p.p90, p.p99, p.p999, p.max
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The server's resident memory: from `/proc` for a local server
/// (`--server-pid`, OurChat or a broker), else summed over the nodes'
/// `/metrics` (`--admin`). `/proc` first: it is sampled every second while
/// idle connections are held, and a node's `/metrics` costs it a listing
/// of `/proc/self/fd` (thousands of entries).
fn server_rss(args: &Args) -> Option<u64> {
    args.server_pid
        .and_then(local_rss)
        .or_else(|| scrape_rss(&args.admin))
}

fn local_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn scrape_rss(admins: &[SocketAddr]) -> Option<u64> {
    if admins.is_empty() {
        return None;
    }
    let mut total = 0;
    for admin in admins {
        total += scrape_metric(*admin, "process_resident_memory_bytes")?;
    }
    Some(total)
}

fn scrape_metric(admin: SocketAddr, name: &str) -> Option<u64> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
