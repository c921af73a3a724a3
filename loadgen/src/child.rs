//! One child process: its share of the users on its threads, the phases
//! as the parent starts and ends them, and its progress and final result
//! as lines on stdout for the parent.

use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::report::{new_histogram, ChildLine, ProcResult, Recorded};
use crate::run::{self, Assigned, Phase, ProcPlan, Scenario, Shared};
use crate::{read_tokens, source_ips, tls_settings, Args, LATE_DRAIN_CAP};

/// Runs child `index`: its users, from connect to its final result line.
pub(crate) fn child_main(args: &Args, index: usize) -> anyhow::Result<std::process::ExitCode> {
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
