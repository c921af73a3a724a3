//! The report: the merged histograms and counters printed as lines and
//! written as JSON, with the server's memory and CPU per message.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::parent::Measured;
use crate::report::{new_histogram, CounterSnapshot, Percentiles, ProcResult};
use crate::run::Scenario;
use crate::{scenario_name, Args};

/// Prints the run's report and writes its JSON; fails the exit status
/// when anything acked was lost, duplicated or out of order, or a
/// connection failed.
pub(crate) fn summarize(
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
pub(crate) fn server_rss(args: &Args) -> Option<u64> {
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
