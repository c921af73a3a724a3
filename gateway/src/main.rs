//! `ourchat`: parses flags, loads the config, runs the node until SIGINT or
//! SIGTERM. All behaviour lives in the library.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ourchat_gateway::Config;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read before the first allocation (the
/// `_RJEM_MALLOC_CONF` environment variable still overrides them). A
/// background thread returns freed pages to the kernel within about a
/// second; without one, purging waits for the next allocation in the same
/// arena, and a node whose connections went idle and were parked kept the
/// pages they had freed. Purged pages are unmapped at once (`muzzy` 0), not
/// left for the kernel to take back lazily, so RSS shows what the node
/// uses. The hot path's CPU per message was the same with and without
/// (BENCHMARKS.md, "Parked connections").
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Flushes the calling thread's jemalloc cache into its arenas, where
/// the background thread can purge what is free.
fn flush_jemalloc_thread_cache() {
    // SAFETY: "thread.tcache.flush" reads and writes nothing through the
    // pointers (all null, length 0) and acts on the calling thread only.
    // Its result is not needed: it fails only when the caches are off
    // (`_RJEM_MALLOC_CONF=tcache:false`), and then there is nothing to give.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[derive(Parser)]
#[command(name = "ourchat", version, about = "OurChat instant-messaging server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default when no command is given).
    Serve(ServeArgs),
    /// Print the effective configuration as TOML and exit.
    PrintConfig(ServeArgs),
    /// Write a development CA and a server certificate signed by it
    /// (ca.pem, cert.pem, key.pem) for `tls.cert_file`/`tls.key_file`;
    /// clients trust ca.pem.
    GenCert {
        /// Directory to write into.
        #[arg(long, default_value = "./data/tls")]
        out: PathBuf,
        /// Names the certificate is valid for (DNS names or IPs).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        names: Vec<String>,
    },
    /// Operator tools working directly on the store.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Retire the token key kept in the data directory (jwt.secret moves
    /// to jwt.retired, where it still verifies the tokens it signed) and
    /// create a new one; restart the node to sign with it.
    RotateKey {
        #[command(flatten)]
        config: ServeArgs,
    },
    /// Create users <prefix>0..<prefix>N-1 with one shared password hash
    /// and write "user_id token" lines (for the loadgen). Rerunnable.
    Provision {
        /// Users to create.
        #[arg(long)]
        count: usize,
        /// Username prefix.
        #[arg(long, default_value = "lg")]
        prefix: String,
        /// Password of every provisioned user.
        #[arg(long, default_value = "loadgen-password")]
        password: String,
        /// Token file to write ("-" = stdout).
        #[arg(long, default_value = "-")]
        out: PathBuf,
        #[command(flatten)]
        config: ServeArgs,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML config file; every key is optional.
    #[arg(long, env = "OURCHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Embedded store directory (storage.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client TCP address (server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Reactor cores, 0 = all (server.cores).
    #[arg(long)]
    cores: Option<usize>,
    /// Any config key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut overrides = Vec::new();
        if let Some(dir) = &self.data_dir {
            overrides.push(("storage.data_dir".into(), dir.display().to_string()));
        }
        if let Some(listen) = &self.listen {
            overrides.push(("server.listen".into(), listen.clone()));
        }
        if let Some(cores) = self.cores {
            overrides.push(("server.cores".into(), cores.to_string()));
        }
        for pair in &self.set {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--set {pair}: expected KEY=VALUE"))?;
            overrides.push((key.trim().to_string(), value.trim().to_string()));
        }
        Ok(Config::load(
            self.config.as_deref(),
            std::env::vars(),
            &overrides,
        )?)
    }
}

/// Errors reach an operator as one line, cause chain included and no
/// backtrace: they are about the setup (a port taken, a damaged file), not
/// about the code.
fn main() -> std::process::ExitCode {
    ourchat_gateway::memory::set_thread_cache_release(flush_jemalloc_thread_cache);
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ourchat: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::PrintConfig(args) => {
            let config = args.load()?;
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
        Command::GenCert { out, names } => {
            let pair = ourchat_gateway::tls::generate_dev_pair(&out, &names)?;
            println!(
                "wrote {} (clients: --ca-file), {} and {} (server: tls.cert_file, tls.key_file)",
                pair.ca_cert.display(),
                pair.cert.display(),
                pair.key.display()
            );
            Ok(())
        }
        Command::Admin(AdminCommand::RotateKey { config }) => {
            let config = config.load()?;
            if !config.auth.jwt_secret.is_empty() {
                anyhow::bail!("auth.jwt_secret is configured: rotate it in the config (move it to auth.jwt_retired_secrets)");
            }
            let kid = ourchat_gateway::auth::rotate_data_dir_key(&config.storage.data_dir)?;
            println!(
                "new token key {kid}; the old one still verifies its tokens (see jwt.retired)"
            );
            Ok(())
        }
        Command::Admin(AdminCommand::Provision {
            count,
            prefix,
            password,
            out,
            config,
        }) => {
            init_logging(false);
            let config = config.load()?;
            let started = std::time::Instant::now();
            let mut sink: Box<dyn std::io::Write> = if out.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                let file = std::fs::File::create(&out)
                    .with_context(|| format!("cannot create {}", out.display()))?;
                Box::new(std::io::BufWriter::new(file))
            };
            let report =
                ourchat_gateway::admin::provision(&config, &prefix, count, &password, &mut sink)?;
            eprintln!(
                "provisioned {count} users ({} new, {} existing) in {:.1} s",
                report.created,
                report.existing,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Serve(args) => {
            init_logging(args.log_json);
            let config = args.load()?;
            let data_dir = config.storage.data_dir.clone();
            let shutdown = Arc::new(AtomicBool::new(false));
            let flag = shutdown.clone();
            let mut signals = signal_hook::iterator::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
            ])?;
            std::thread::spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    tracing::info!(signal, "shutting down: closing connections, flushing store");
                    flag.store(true, Ordering::SeqCst);
                }
            });
            let web_scheme = match (config.server.web_root.is_empty(), config.tls.ws) {
                (true, _) => None,
                (false, false) => Some("http"),
                (false, true) => Some("https"),
            };
            ourchat_gateway::serve(config, shutdown, |listening| {
                let admin = listening
                    .admin
                    .map_or("off".to_string(), |a| format!("http://{a}/metrics"));
                let grpc = listening.grpc.map_or("off".to_string(), |a| a.to_string());
                let tls = listening.tls.map_or("off".to_string(), |a| a.to_string());
                let ws = listening
                    .ws
                    .map_or("off".to_string(), |a| format!("ws://{a}/ws"));
                println!(
                    "ourchat listening: client tcp {} on {} cores; tls {tls}; websocket {ws}; grpc {grpc}; admin {admin}; data in {}",
                    listening.client,
                    listening.cores,
                    data_dir.display()
                );
                if let (Some(scheme), Some(ws)) = (web_scheme, listening.ws) {
                    println!("web app: open {}", web_address(scheme, ws));
                }
            })?;
            Ok(())
        }
    }
}

/// Where a person on this machine opens the web app: an unspecified bind
/// address (0.0.0.0, ::) is reached as localhost.
fn web_address(scheme: &str, ws: std::net::SocketAddr) -> String {
    if ws.ip().is_unspecified() {
        format!("{scheme}://localhost:{}/", ws.port())
    } else {
        format!("{scheme}://{ws}/")
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
