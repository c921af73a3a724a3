//! The admin HTTP endpoint: `/metrics` (every core's counters summed and
//! rendered for Prometheus, with the store's, the process's and cluster
//! mode's), `/healthz` and `/readyz`. A few lines of blocking HTTP/1.0 on
//! its own thread: it must answer even when the reactors are saturated,
//! and it never touches them.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ourchat_protocol::ErrorCode;
use ourchat_workers::stats::AtomicHistogram;

use crate::core::Shared;
use crate::limits::Limit;
use crate::metrics::{CoreMetrics, ERROR_SLOTS};

/// Renders every metric in Prometheus text format.
pub fn render(shared: &Shared) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let cores = shared.metrics.all_cores();
    let per_core = |out: &mut String,
                    name: &str,
                    kind: &str,
                    help: &str,
                    get: &dyn Fn(&CoreMetrics) -> &AtomicU64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (id, core) in cores.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{core=\"{id}\"}} {}",
                get(core).load(Ordering::Relaxed)
            );
        }
    };
    per_core(
        &mut out,
        "ourchat_connections",
        "gauge",
        "Open client connections.",
        &|c| &c.connections,
    );
    per_core(
        &mut out,
        "ourchat_connections_parked",
        "gauge",
        "Idle client connections parked as their bare socket (no task, no buffer).",
        &|c| &c.parked,
    );
    per_core(
        &mut out,
        "ourchat_parked_heartbeats_total",
        "counter",
        "Heartbeats answered to parked connections without resuming them.",
        &|c| &c.parked_heartbeats,
    );
    per_core(
        &mut out,
        "ourchat_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        &|c| &c.accepted,
    );
    per_core(
        &mut out,
        "ourchat_connections_handed_over_total",
        "counter",
        "Plain-TCP connections this core moved to their user's core at login.",
        &|c| &c.handed_over,
    );
    per_core(
        &mut out,
        "ourchat_logins_total",
        "counter",
        "Successful logins.",
        &|c| &c.logins_ok,
    );
    per_core(
        &mut out,
        "ourchat_logins_failed_total",
        "counter",
        "Refused logins.",
        &|c| &c.logins_failed,
    );
    per_core(
        &mut out,
        "ourchat_registrations_total",
        "counter",
        "Accounts created.",
        &|c| &c.registrations,
    );
    per_core(
        &mut out,
        "ourchat_frames_in_total",
        "counter",
        "Frames read from clients.",
        &|c| &c.frames_in,
    );
    per_core(
        &mut out,
        "ourchat_frames_out_total",
        "counter",
        "Frames written to clients.",
        &|c| &c.frames_out,
    );
    per_core(
        &mut out,
        "ourchat_messages_accepted_total",
        "counter",
        "Messages sequenced and durable.",
        &|c| &c.messages_accepted,
    );
    per_core(
        &mut out,
        "ourchat_messages_delivered_total",
        "counter",
        "Pushes queued to connections.",
        &|c| &c.pushes,
    );
    per_core(
        &mut out,
        "ourchat_slow_reader_closes_total",
        "counter",
        "Connections closed for not reading.",
        &|c| &c.slow_reader_closes,
    );
    per_core(
        &mut out,
        "ourchat_mesh_messages_total",
        "counter",
        "Messages this core sent to another core (requests, answers, deliveries, pushes).",
        &|c| &c.mesh_sent,
    );
    per_core(
        &mut out,
        "ourchat_mesh_overflows_total",
        "counter",
        "Messages to another core queued behind its full channel.",
        &|c| &c.mesh_overflows,
    );
    per_core(
        &mut out,
        "ourchat_idle_closes_total",
        "counter",
        "Logged-in connections closed for silence (no heartbeat).",
        &|c| &c.idle_closes,
    );
    let _ = writeln!(out, "# HELP ourchat_limited_total Requests and connections refused by an abuse limit.\n# TYPE ourchat_limited_total counter");
    for (slot, limit) in Limit::ALL.iter().enumerate() {
        let total: u64 = cores
            .iter()
            .map(|c| c.limited.get(slot).map_or(0, |n| n.load(Ordering::Relaxed)))
            .sum();
        let _ = writeln!(
            out,
            "ourchat_limited_total{{limit=\"{}\"}} {total}",
            limit.label()
        );
    }
    per_core(
        &mut out,
        "ourchat_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or missed the login deadline.",
        &|c| &c.tls_handshake_failures,
    );
    per_core(
        &mut out,
        "ourchat_ws_upgrades_refused_total",
        "counter",
        "WebSocket upgrades refused (path, origin), failed, or past the login deadline.",
        &|c| &c.ws_upgrades_refused,
    );

    let _ = writeln!(out, "# HELP ourchat_errors_total Errors sent to clients, by code.\n# TYPE ourchat_errors_total counter");
    for code in 1..ERROR_SLOTS {
        let total: u64 = cores
            .iter()
            .map(|c| c.errors.get(code).map_or(0, |e| e.load(Ordering::Relaxed)))
            .sum();
        if let Ok(name) = ErrorCode::try_from(code as i32) {
            let _ = writeln!(
                out,
                "ourchat_errors_total{{code=\"{}\"}} {total}",
                name.as_str_name()
            );
        }
    }

    histogram(
        &mut out,
        "ourchat_send_ack_latency_us",
        "Send received to durable ack queued (µs).",
        cores.iter().map(|c| &c.send_ack_us),
    );
    histogram(
        &mut out,
        "ourchat_deliver_latency_us",
        "Commit to push queued on the recipient's connection (µs).",
        cores.iter().map(|c| &c.deliver_us),
    );

    let writer = shared.writer.stats();
    histogram(
        &mut out,
        "ourchat_store_commit_latency_us",
        "Store batch commit time, fsync included (µs).",
        [&writer.commit_us],
    );
    histogram(
        &mut out,
        "ourchat_store_batch_size",
        "Ops per store batch.",
        [&writer.batch_sizes],
    );
    counters(
        &mut out,
        &[
            (
                "ourchat_store_batches_total",
                "Store batches committed or failed.",
                &writer.batches,
            ),
            (
                "ourchat_store_ops_total",
                "Ops in those batches.",
                &writer.ops,
            ),
            (
                "ourchat_store_failed_batches_total",
                "Batches that failed after retries.",
                &writer.failed_batches,
            ),
        ],
    );
    let _ = writeln!(out, "# HELP ourchat_queue_depth Items waiting in a worker queue.\n# TYPE ourchat_queue_depth gauge");
    let mut queues = vec![
        ("writer", shared.writer.depth()),
        ("readers", shared.readers.depth()),
        ("hasher", shared.hasher.depth()),
    ];
    if let Some(cluster) = &shared.cluster {
        queues.push(("log_writer", cluster.log_writer.depth()));
        queues.push(("redis", cluster.redis.depth()));
    }
    for (queue, depth) in queues {
        let _ = writeln!(out, "ourchat_queue_depth{{queue=\"{queue}\"}} {depth}");
    }
    if let Some(cluster) = &shared.cluster {
        render_cluster(&mut out, cluster);
    }
    let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", resident_bytes());
    let _ = writeln!(out, "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}", open_fds());
    out
}

/// Cluster mode: the message log writer (Kafka acks), the MySQL feeder,
/// records from other nodes, Redis sequencing.
fn render_cluster(out: &mut String, cluster: &crate::cluster::ClusterShared) {
    let log = cluster.log_writer.stats();
    histogram(
        out,
        "ourchat_log_commit_latency_us",
        "Message log batch until Kafka acknowledged it (µs).",
        [&log.commit_us],
    );
    histogram(
        out,
        "ourchat_log_batch_size",
        "Messages per message log batch.",
        [&log.batch_sizes],
    );
    let stats = &cluster.stats;
    counters(
        out,
        &[
            (
                "ourchat_log_failed_batches_total",
                "Message log batches Kafka did not take.",
                &log.failed_batches,
            ),
            (
                "ourchat_feeder_records_total",
                "Log records the feeder wrote to MySQL.",
                &stats.stored_records,
            ),
            (
                "ourchat_feeder_batches_total",
                "MySQL batches the feeder wrote.",
                &stats.store_batches,
            ),
            (
                "ourchat_feeder_retries_total",
                "Feeder batches MySQL refused (retried).",
                &stats.store_retries,
            ),
            (
                "ourchat_remote_messages_total",
                "Messages from other nodes pushed here.",
                &stats.remote_messages,
            ),
            (
                "ourchat_remote_presence_total",
                "Presence changes from other nodes.",
                &stats.remote_presence,
            ),
            (
                "ourchat_seq_requests_total",
                "Redis seq requests.",
                &stats.seq_requests,
            ),
            (
                "ourchat_seq_sends_total",
                "Sends those requests sequenced.",
                &stats.seq_sends,
            ),
        ],
    );
    let _ = writeln!(
        out,
        "# HELP ourchat_feeder_partitions Message log partitions this node's feeder holds.\n\
         # TYPE ourchat_feeder_partitions gauge\nourchat_feeder_partitions {}",
        stats.feeder_partitions.load(Ordering::Relaxed)
    );
}

/// One Prometheus counter per row: (name, help, value).
fn counters(out: &mut String, rows: &[(&str, &str, &AtomicU64)]) {
    for (name, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
}

fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    parts: impl IntoIterator<Item = &'a AtomicHistogram> + Clone,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    AtomicHistogram::render_sum(name, "", parts, out);
}

/// Resident set size of this process, from `/proc/self/status`.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// How long the admin server waits on one slow scraper.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the admin endpoint and serves it on a thread until shutdown.
pub fn spawn_admin(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    // Non-blocking accept so the thread notices shutdown.
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("ourchat-admin".into())
        .spawn(move || {
            while !shared.shutdown.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &shared) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(local)
}

/// How long `/readyz` waits for the store to answer its probe.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready: every core listens, the node is not shutting down, and the store
/// answers a probe of every table and index (a damaged page shows here,
/// not only in the logins that fail on it).
pub(crate) fn readiness(shared: &Shared) -> Result<(), String> {
    if shared.shutdown.load(Ordering::Relaxed) {
        return Err("shutting down".into());
    }
    if !shared.ready.load(Ordering::Relaxed) {
        return Err("starting".into());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = shared.readers.try_run(move |store| {
        let _ = tx.send(store.check_health());
    });
    if queued.is_err() {
        return Err("store readers saturated".into());
    }
    match rx.recv_timeout(STORE_PROBE_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("store did not answer its probe in time".into()),
    }
}

fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut request = [0u8; 2048];
    let mut len = 0;
    while len < request.len() {
        let n = stream.read(&mut request[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&request[..len]);
    let path = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("");
    let (status, content_type, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(shared)),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" => match readiness(shared) {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
