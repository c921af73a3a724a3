//! Start-up and shutdown of a node. Start: open the store, start the worker
//! pools, start one glommio executor per core (pinned), join the channel
//! mesh, bind one SO_REUSEPORT listener per core (the kernel hashes each
//! connection to a core). Shutdown, on SIGINT/SIGTERM, in phases: stop
//! accepting, tell every connection and close it, let in-flight commits
//! finish (bounded by a grace period), stop the gRPC server, then flush the
//! writer queue and close the store.
//!
//! `store` opens the configured store; `ports` checks the client ports
//! before and after the cores bind them.

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use ourchat_storage::{ReadStore, StoreError};
use ourchat_workers::{JobPool, WriterConfig, WriterPool};

use crate::auth::TokenKeys;
use crate::cluster::{ClusterNode, InboxEnds};
use crate::config::Config;
use crate::core::{Core, CoreMsg, Shared};
use crate::grpc::{Bridge, BridgeCall};
use crate::metrics::Metrics;

mod ports;
mod store;
use ports::{bind, client_listeners, refuse_shared_listeners, refuse_taken_ports};
pub use store::{durability_of, open_account_store, open_store};

/// io_uring memory each executor registers. Sockets do not use it (only
/// file I/O does), and the machine allows 8 MiB of locked memory per
/// process, so glommio's 10 MiB default would not even fit one core.
const IO_MEMORY: usize = 256 << 10;

/// Jobs waiting for reader or hashing threads before reactors wait.
const JOB_QUEUE: usize = 16_384;

/// How often a core looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A thread or file could not be created.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key is unusable.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// An executor could not start or bind.
    #[error("core start-up failed: {0}")]
    Core(String),
    /// The data directory does not hold the store it was initialised with.
    #[error("data directory: {0}")]
    DataDir(#[from] crate::data_dir::DataDirError),
    /// The web app's files could not be read.
    #[error("{0}")]
    Web(#[from] crate::web::WebError),
    /// Cluster mode could not start.
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A listener could not be opened.
    #[error("cannot serve {what} on {addr}: {source}")]
    Listen {
        /// Which listener, and the setting that names its address.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

/// A running node's addresses, reported once every core listens.
#[derive(Debug, Clone)]
pub struct Listening {
    /// Client TCP address.
    pub client: SocketAddr,
    /// Admin HTTP address, if enabled.
    pub admin: Option<SocketAddr>,
    /// gRPC address, if enabled.
    pub grpc: Option<SocketAddr>,
    /// Client TLS address, if enabled.
    pub tls: Option<SocketAddr>,
    /// WebSocket address (upgrade at `/ws`), if enabled.
    pub ws: Option<SocketAddr>,
    /// Reactor cores.
    pub cores: usize,
}

/// Each core's end of the gRPC bridge, taken once by the core at start.
type BridgeEnds = Arc<std::sync::Mutex<Vec<Option<futures::channel::mpsc::Receiver<BridgeCall>>>>>;

/// Runs a node until `shutdown` is set, calling `on_ready` once every core
/// listens. Returns after the phased shutdown.
pub fn serve(
    config: Config,
    shutdown: Arc<AtomicBool>,
    on_ready: impl FnOnce(&Listening),
) -> Result<(), ServeError> {
    let cores = config.core_count();
    refuse_taken_ports(&config)?;
    let server = &config.server;
    if server.park_after_ms > 0 && server.park_after_ms >= u64::from(server.heartbeat_secs) * 1000 {
        // Allowed (tests shorten the heartbeat), but an operator should know.
        tracing::warn!(
            park_after_ms = server.park_after_ms,
            heartbeat_secs = server.heartbeat_secs,
            "server.park_after_ms is not below the heartbeat interval: clients that \
             heartbeat as told are never silent long enough to park"
        );
    }
    // Certificates first: a bad path should fail before the store opens.
    let tls = match config.tls.enabled() {
        true => Some(crate::tls::server_config(
            &config.tls.cert_file,
            &config.tls.key_file,
        )?),
        false => None,
    };
    let storage = &config.storage;
    let (backend, checkpointer) = open_store(storage)?;
    let writer = WriterPool::start(
        backend.writer()?,
        WriterConfig {
            queue_capacity: storage.writer_queue,
            max_batch: storage.max_batch,
            cpus: storage.worker_cpus.clone(),
            linger: std::time::Duration::from_micros(storage.commit_linger_us),
        },
    )?;
    let workers_on = &storage.worker_cpus;
    let readers = JobPool::start(
        "ourchat-reader",
        storage.readers,
        JOB_QUEUE,
        workers_on,
        |_| backend.reader().map(|r| -> Box<dyn ReadStore> { r }),
    )?;
    let hash_threads = match config.auth.hash_threads {
        0 => cores,
        n => n,
    };
    let hasher = JobPool::start("ourchat-hash", hash_threads, JOB_QUEUE, workers_on, |_| {
        Ok::<(), std::io::Error>(())
    })?;
    let tokens = TokenKeys::load(
        &config.auth.jwt_secret,
        &config.auth.jwt_retired_secrets,
        &storage.data_dir,
        config.auth.token_ttl_secs,
    )?;
    let (cluster, inbox_ends) = match config.cluster.enabled {
        true => {
            let (node, ends) = ClusterNode::start(&config, backend.as_ref(), cores, JOB_QUEUE)?;
            (Some(node), ends)
        }
        false => (None, InboxEnds::default()),
    };
    let web = match config.server.web_root.as_str() {
        "" => None,
        root => Some(Arc::new(crate::web::WebAssets::load(Path::new(root))?)),
    };
    let shared = Arc::new(Shared {
        web,
        memory: cluster.is_none().then(|| backend.memory_reads()).flatten(),
        cluster: cluster.as_ref().map(|node| node.shared.clone()),
        cores,
        writer: writer.handle(),
        readers: readers.handle(),
        hasher: hasher.handle(),
        tokens,
        shutdown: shutdown.clone(),
        ready: AtomicBool::new(false),
        metrics: Metrics::new(cores),
        tls,
        limits: crate::limits::NodeLimits::new(config.limits.clone()),
        config,
    });
    let admin = match shared.config.server.admin_listen.parse::<SocketAddr>() {
        Ok(addr) => {
            let listener = bind("the admin HTTP endpoint (server.admin_listen)", addr)?;
            Some(crate::admin_http::spawn_admin(listener, shared.clone())?)
        }
        Err(_) => None,
    };
    let (bridge, ends) = Bridge::new(cores);
    let grpc = match shared.config.server.grpc_listen.as_str() {
        "" => None,
        listen => {
            let addr = listen
                .parse::<SocketAddr>()
                .map_err(|e| ServeError::Core(format!("server.grpc_listen {listen:?}: {e}")))?;
            let admin_token = crate::auth::load_or_create_secret(
                &shared.config.storage.data_dir.join("admin.token"),
            )?;
            let listener = bind("gRPC (server.grpc_listen)", addr)?;
            crate::grpc::remove_dead_stream_dirs();
            Some(crate::grpc::spawn(
                listener,
                bridge,
                shared.clone(),
                admin_token.into(),
            )?)
        }
    };
    let ends: BridgeEnds = Arc::new(std::sync::Mutex::new(ends.into_iter().map(Some).collect()));

    let grpc_addr = grpc.as_ref().map(|g| g.addr);
    let result = run_cores(shared.clone(), admin, grpc_addr, ends, inbox_ends, on_ready);
    // The gRPC server stops with the flag; it holds store handles, so it
    // goes before the store.
    shutdown.store(true, Ordering::SeqCst);
    if let Some(grpc) = grpc {
        grpc.join();
        // The cores' sockets for gRPC streams.
        if let Some(dir) = crate::grpc::stream_socket(0).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    drop(shared);
    // Every core has stopped: flush the message log's writer (Kafka has
    // every acked message) and stop the cluster threads.
    if let Some(cluster) = cluster {
        cluster.stop();
    }
    // Every core has stopped, so these are the last handles: the writer
    // commits what is queued before its thread ends.
    writer.shutdown();
    readers.shutdown();
    hasher.shutdown();
    // Last: one final checkpoint folds the WAL into the database file.
    drop(checkpointer);
    tracing::info!("store flushed and closed");
    result
}

/// Where the reactors run: the operator's CPU list, one reactor per CPU
/// spread over the machine, or unpinned (sharing a box with a loadgen).
/// Pinning needs no io_uring locked memory beyond `IO_MEMORY` per core.
fn placement(config: &Config, cores: usize) -> Result<PoolPlacement, ServeError> {
    let server = &config.server;
    if !server.reactor_cpus.is_empty() {
        let online = CpuSet::online().map_err(|e| ServeError::Core(e.to_string()))?;
        let sets = server
            .reactor_cpus
            .iter()
            .map(|cpu| {
                let set = online.clone().filter(|l| l.cpu == *cpu);
                if set.is_empty() {
                    Err(ServeError::Core(format!("cpu {cpu} is not online")))
                } else {
                    Ok(set)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(PoolPlacement::Custom(sets));
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Pinning more reactors than CPUs would stack two on one CPU.
    Ok(if server.pin_cores && cores <= available {
        PoolPlacement::MaxSpread(cores, None)
    } else {
        PoolPlacement::Unbound(cores)
    })
}

fn run_cores(
    shared: Arc<Shared>,
    admin: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    bridge_ends: BridgeEnds,
    inbox_ends: InboxEnds,
    on_ready: impl FnOnce(&Listening),
) -> Result<(), ServeError> {
    let cores = shared.cores;
    let placement = placement(&shared.config, cores)?;
    let mesh: MeshBuilder<CoreMsg, Full> =
        MeshBuilder::full(cores, shared.config.server.mesh_capacity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<CoreAddrs, String>>();
    let executor_shared = shared.clone();
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("ourchat-core")
        .io_memory(IO_MEMORY)
        .ring_depth(shared.config.server.ring_depth)
        .on_all_shards(move || {
            let shared = executor_shared.clone();
            let mesh = mesh.clone();
            let ready = ready_tx.clone();
            let ends = (bridge_ends.clone(), inbox_ends.clone());
            async move { run_core(shared, mesh, ends, ready).await }
        })
        .map_err(|e| ServeError::Core(e.to_string()))?;

    let mut outcome = Ok(());
    let mut bound = Vec::with_capacity(cores);
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(addrs)) => bound.push(addrs),
            Ok(Err(e)) => {
                outcome = Err(ServeError::Core(e));
                break;
            }
            Err(_) => {
                outcome = Err(ServeError::Core("a core exited during start-up".into()));
                break;
            }
        }
    }
    if outcome.is_ok() {
        outcome = refuse_shared_listeners(&bound);
    }
    match (&outcome, bound.pop()) {
        (Ok(()), Some(addrs)) => {
            shared.ready.store(true, Ordering::SeqCst);
            on_ready(&Listening {
                client: addrs.plain,
                admin,
                grpc,
                tls: addrs.tls,
                ws: addrs.ws,
                cores,
            })
        }
        _ => shared.shutdown.store(true, Ordering::SeqCst),
    }
    for result in handles.join_all() {
        if let Err(e) = result {
            tracing::error!(error = %e, "core ended with an error");
        }
    }
    outcome
}

async fn run_core(
    shared: Arc<Shared>,
    mesh: MeshBuilder<CoreMsg, Full>,
    (bridge_ends, inbox_ends): (BridgeEnds, InboxEnds),
    ready: std::sync::mpsc::Sender<Result<CoreAddrs, String>>,
) {
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            let _ = ready.send(Err(format!("channel mesh join failed: {e}")));
            return;
        }
    };
    let id = senders.peer_id();
    let lot = parking_lot(&shared);
    let (core, pending) = Core::new(id, shared.clone(), senders, lot.as_ref());
    for (_, stream) in receivers.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = stream.recv().await {
                core.handle(msg);
            }
        })
        .detach();
    }
    glommio::spawn_local(core.clone().run_commit_pump(pending)).detach();
    let bridge_end = bridge_ends
        .lock()
        .ok()
        .and_then(|mut ends| ends.get_mut(id).and_then(Option::take));
    let bridge = bridge_end
        .map(|calls| glommio::spawn_local(crate::grpc::serve_bridge(core.clone(), calls)).detach());
    let inbox_end = inbox_ends
        .lock()
        .ok()
        .and_then(|mut ends| ends.get_mut(id).and_then(Option::take));
    let inbox = inbox_end.map(|inbox| {
        glommio::spawn_local(crate::cluster::serve_inbox(core.clone(), inbox)).detach()
    });

    let (plain, tls) = match bind_listeners(&shared) {
        Ok(listeners) => listeners,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let ws = match shared.config.server.ws_listen.as_str() {
        "" => None,
        listen => match TcpListener::bind(listen) {
            Ok(listener) => Some(listener),
            Err(e) => {
                let _ = ready.send(Err(format!(
                    "cannot listen on {listen} (server.ws_listen): {e}"
                )));
                return;
            }
        },
    };
    let addrs = CoreAddrs {
        plain: plain.local_addr().unwrap_or(shared.config.server.listen),
        tls: tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        ws: ws.as_ref().and_then(|l| l.local_addr().ok()),
    };
    let _ = ready.send(Ok(addrs));
    let resumer = lot
        .clone()
        .map(|lot| glommio::spawn_local(crate::connection::resume_parked(lot)).detach());
    let mut listeners = vec![(plain, Speaks::Plain(lot))];
    if let Some((listener, config)) = tls {
        let acceptor = futures_rustls::TlsAcceptor::from(config);
        listeners.push((listener, Speaks::Tls(acceptor)));
    }
    let wss = match (&shared.tls, shared.config.tls.ws) {
        (Some(config), true) => Some(futures_rustls::TlsAcceptor::from(config.clone())),
        _ => None,
    };
    listeners.extend(ws.map(|listener| (listener, Speaks::WebSocket(wss))));
    let mut acceptors: Vec<_> = listeners
        .into_iter()
        .map(|(listener, speaks)| {
            glommio::spawn_local(accept_loop(core.clone(), listener, speaks)).detach()
        })
        .collect();
    if bridge.is_some() {
        // gRPC `Subscribe` streams reach this core through a local socket.
        match bind_stream_socket(id) {
            Ok(listener) => acceptors
                .push(glommio::spawn_local(accept_local_loop(core.clone(), listener)).detach()),
            Err(e) => tracing::error!(error = %e, core = id, "gRPC stream socket unusable"),
        }
    }
    let sweeper = glommio::spawn_local(sweep_deadlines(core.clone())).detach();

    while !shared.shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
    }
    for acceptor in acceptors {
        acceptor.cancel();
    }
    sweeper.cancel();
    if let Some(bridge) = bridge {
        bridge.cancel();
    }
    if let Some(inbox) = inbox {
        inbox.cancel();
    }
    core.close_all("server shutting down");
    let deadline = Instant::now() + Duration::from_secs(shared.config.server.shutdown_grace_secs);
    while (core.connection_count() > 0 || core.commits_pending() > 0) && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    // Only now: closing a parked connection resumes it to say goodbye.
    if let Some(resumer) = resumer {
        resumer.cancel();
    }
    tracing::debug!(core = id, "core stopped");
}

/// Enforces login deadlines and idle timeouts on this core's connections.
/// Sweeping a few times per deadline keeps lateness to a fraction of it.
async fn sweep_deadlines(core: Rc<Core>) {
    let server = &core.shared.config.server;
    let login = Duration::from_millis(server.login_timeout_ms);
    let idle = Duration::from_secs(server.idle_timeout_secs);
    let park_after = Some(Duration::from_millis(server.park_after_ms)).filter(|d| !d.is_zero());
    let shortest = park_after.map_or(login.min(idle), |park| login.min(idle).min(park));
    let period = (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        glommio::timer::sleep(period).await;
        core.sweep_deadlines(login, idle, park_after);
        crate::memory::release_thread_cache();
    }
}

/// Where one core listens.
struct CoreAddrs {
    plain: SocketAddr,
    tls: Option<SocketAddr>,
    ws: Option<SocketAddr>,
}

impl CoreAddrs {
    /// Where this core listens, named as the settings are.
    fn client_listeners(&self) -> [(&'static str, Option<SocketAddr>); 3] {
        client_listeners(self.plain, self.tls, self.ws)
    }
}

/// This core's plain listener and, when configured, its TLS listener with
/// the server configuration.
#[allow(clippy::type_complexity)]
fn bind_listeners(
    shared: &Shared,
) -> Result<
    (
        TcpListener,
        Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    ),
    String,
> {
    let listen = shared.config.server.listen;
    let plain = TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let tls = match (&shared.tls, shared.config.tls.listen.as_str()) {
        (Some(config), listen) if !listen.is_empty() => {
            let listener = TcpListener::bind(listen)
                .map_err(|e| format!("cannot listen on {listen} (tls.listen): {e}"))?;
            Some((listener, config.clone()))
        }
        _ => None,
    };
    Ok((plain, tls))
}

/// This core's local socket for gRPC `Subscribe` streams (a stale one from
/// an earlier process with the same pid is replaced).
fn bind_stream_socket(core: usize) -> std::io::Result<glommio::net::UnixListener> {
    let path = crate::grpc::stream_socket(core);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(&path);
    glommio::net::UnixListener::bind(&path).map_err(|e| std::io::Error::other(e.to_string()))
}

async fn accept_local_loop(core: Rc<Core>, listener: glommio::net::UnixListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let connection = crate::connection::accept_local(core.clone(), Box::new(stream));
                glommio::spawn_local(connection).detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, core = core.id, "local accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// This core's parking lot for idle plain-TCP connections; `None` when
/// parking is off (`server.park_after_ms = 0`) or the kernel refuses an
/// epoll set (then connections simply stay tasks).
fn parking_lot(shared: &Shared) -> Option<Rc<crate::connection::Lot>> {
    if shared.config.server.park_after_ms == 0 {
        return None;
    }
    match crate::parking::ParkingLot::new() {
        Ok(lot) => Some(Rc::new(lot)),
        Err(error) => {
            tracing::warn!(%error, "no epoll set: idle connections will not be parked");
            None
        }
    }
}

/// What a client listener speaks.
enum Speaks {
    /// The client protocol over TCP; idle connections park in the lot.
    Plain(Option<Rc<crate::connection::Lot>>),
    /// The client protocol over TLS.
    Tls(futures_rustls::TlsAcceptor),
    /// WebSocket (browsers); WSS with an acceptor.
    WebSocket(Option<futures_rustls::TlsAcceptor>),
}

async fn accept_loop(core: Rc<Core>, listener: TcpListener, speaks: Speaks) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                // Boxed: an async fn keeps its arguments for its whole life,
                // moved-out or not, and a glommio stream is the largest.
                let stream = Box::new(stream);
                let core = core.clone();
                match &speaks {
                    Speaks::Plain(lot) => {
                        let connection = crate::connection::accept(core, stream, None, lot.clone());
                        glommio::spawn_local(connection).detach()
                    }
                    Speaks::Tls(tls) => {
                        let connection =
                            crate::connection::accept(core, stream, Some(tls.clone()), None);
                        glommio::spawn_local(connection).detach()
                    }
                    Speaks::WebSocket(tls) => {
                        let connection = crate::websocket::accept(core, stream, tls.clone());
                        glommio::spawn_local(connection).detach()
                    }
                };
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, core = core.id, "accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose one core listens on a port a stranger's SO_REUSEPORT
    /// listener joined after the connect probe: refused, naming the port.
    #[test]
    fn a_port_shared_with_another_process_is_refused() {
        glommio::LocalExecutor::default().run(async {
            let ours = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = ours.local_addr().unwrap();
            let bound = [CoreAddrs {
                plain: addr,
                tls: None,
                ws: None,
            }];
            assert!(refuse_shared_listeners(&bound).is_ok());
            let stranger = TcpListener::bind(addr).unwrap();
            let refused = refuse_shared_listeners(&bound).unwrap_err().to_string();
            assert!(refused.contains(&addr.to_string()), "{refused}");
            assert!(refused.contains("server.listen"), "{refused}");
            assert!(
                refused.contains("another process listens on it too"),
                "{refused}"
            );
            drop(stranger);
            assert!(refuse_shared_listeners(&bound).is_ok());
        });
    }
}
