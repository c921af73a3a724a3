//! The parent process: spawns the children with their shares of the users,
//! starts the measured phase in all at once, merges their progress lines
//! each second, samples the server's memory and CPU around the run, and
//! waits out late deliveries before the report.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::report::{ChildLine, CounterSnapshot, ProcResult};
use crate::run::{self, Scenario};
use crate::summary::{server_rss, summarize};
use crate::{
    create_groups, read_tokens, scenario_name, Args, LATE_DRAIN_QUIET, MAX_CONNS_PER_PROC,
};

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

/// Runs the whole load: the children, the measured phase, the report.
pub(crate) fn parent_main(args: &Args) -> anyhow::Result<std::process::ExitCode> {
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
pub(crate) struct Measured {
    pub(crate) connect_secs: f64,
    pub(crate) rss_before: Option<u64>,
    /// Half a second after the last login.
    pub(crate) rss_connected: Option<u64>,
    /// The last sample while every connection was still held.
    pub(crate) rss_held: Option<u64>,
    pub(crate) server_cpu_secs: Option<f64>,
    /// The loadgen's CPU seconds and its share of the machine.
    pub(crate) loadgen_share: Option<(f64, f64)>,
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
