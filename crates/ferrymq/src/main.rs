//! The `ferrymq` command.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrymq::config::Config;
use std::path::PathBuf;

// mimalloc over the system allocator: no per-allocation header and size classes that fit the
// broker's small per-message allocations, which is what keeps deep queues small (ADR 0004).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ferrymq", version, about = "FerryMQ message broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Server(ServerArgs),
    /// Measure a broker (FerryMQ or any AMQP 0-9-1 broker) with load scenarios.
    Perf {
        #[command(subcommand)]
        scenario: ferrymq::perf::Scenario,
    },
    /// Administer a broker (FerryMQ or RabbitMQ) through its management HTTP API.
    Ctl(ferrymq::ctl::CtlArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: ::, IPv6 and IPv4].
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// AMQP port; 0 picks a free port [default: 5672].
    #[arg(long, value_name = "PORT")]
    amqp_port: Option<u16>,
    /// Run the plain (non-TLS) AMQP listener; false leaves only AMQPS [default: true].
    #[arg(long, value_name = "BOOL")]
    plain_listener: Option<bool>,
    /// AMQPS port; 0 picks a free port [default: 5671]. AMQPS is on when --tls-certfile and
    /// --tls-keyfile are given.
    #[arg(long, value_name = "PORT")]
    tls_port: Option<u16>,
    /// PEM certificate chain for AMQPS, the server's certificate first.
    #[arg(long, value_name = "FILE")]
    tls_certfile: Option<PathBuf>,
    /// PEM private key of the AMQPS certificate.
    #[arg(long, value_name = "FILE")]
    tls_keyfile: Option<PathBuf>,
    /// PEM bundle of the CAs client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    tls_cacertfile: Option<PathBuf>,
    /// Ask AMQPS clients for a certificate and verify it (verify_peer) or not (verify_none)
    /// [default: verify_none].
    #[arg(long, value_name = "MODE")]
    tls_verify: Option<ferrymq::config::VerifySetting>,
    /// With verify_peer, refuse AMQPS clients that send no certificate [default: false].
    #[arg(long, value_name = "BOOL")]
    tls_fail_if_no_peer_cert: Option<bool>,
    /// HTTP API (management) port; 0 picks a free port [default: 15672].
    #[arg(long, value_name = "PORT")]
    management_port: Option<u16>,
    /// Run the HTTP API (management) listener [default: true].
    #[arg(long, value_name = "BOOL")]
    management_listener: Option<bool>,
    /// Prometheus metrics port; 0 picks a free port [default: 15692].
    #[arg(long, value_name = "PORT")]
    prometheus_port: Option<u16>,
    /// Run the Prometheus metrics listener [default: true].
    #[arg(long, value_name = "BOOL")]
    prometheus_listener: Option<bool>,
    /// Data directory [default: ./ferrymq-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log level or filter, e.g. info, debug, ferrymq_amqp=trace [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// When persistent messages are confirmed: after fsync (always) or after the write
    /// (never: survives a broker crash, not a power loss) [default: always].
    #[arg(long, value_name = "POLICY")]
    fsync: Option<ferrymq::config::FsyncSetting>,
    /// Size at which a queue's segment file rolls over, in bytes [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    segment_size: Option<u64>,
    /// Bytes of ready messages each queue keeps in RAM before paging to disk [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    queue_ram_budget: Option<usize>,
    /// Fraction of RAM the broker may use before publishers are blocked [default: 0.4].
    #[arg(long, value_name = "FRACTION")]
    memory_high_watermark: Option<f64>,
    /// Free disk bytes below which publishers are blocked [default: 50000000].
    #[arg(long, value_name = "BYTES")]
    disk_free_limit: Option<u64>,
    /// Milliseconds a consumer may hold a delivery unacknowledged before its channel is
    /// closed; 0 disables [default: 1800000].
    #[arg(long, value_name = "MS")]
    consumer_timeout: Option<u64>,
    /// Import a definitions file (RabbitMQ's JSON format: users, vhosts, permissions,
    /// limits, policies, exchanges, queues, bindings) at start.
    #[arg(long, value_name = "FILE")]
    load_definitions: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(a) => server(a),
        Command::Ctl(a) => std::process::exit(i32::from(ferrymq::ctl::run(a))),
        Command::Perf { scenario } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            rt.block_on(ferrymq::perf::run(scenario))
        }
    }
}

fn server(a: ServerArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.bind {
        cfg.bind = v;
    }
    if let Some(v) = a.amqp_port {
        cfg.amqp_port = v;
    }
    if let Some(v) = a.plain_listener {
        cfg.plain_listener = v;
    }
    if let Some(v) = a.tls_port {
        cfg.tls.port = v;
    }
    if let Some(v) = a.tls_certfile {
        cfg.tls.certfile = Some(v);
    }
    if let Some(v) = a.tls_keyfile {
        cfg.tls.keyfile = Some(v);
    }
    if let Some(v) = a.tls_cacertfile {
        cfg.tls.cacertfile = Some(v);
    }
    if let Some(v) = a.tls_verify {
        cfg.tls.verify = v;
    }
    if let Some(v) = a.tls_fail_if_no_peer_cert {
        cfg.tls.fail_if_no_peer_cert = v;
    }
    if let Some(v) = a.management_port {
        cfg.management.port = v;
    }
    if let Some(v) = a.management_listener {
        cfg.management.listener = v;
    }
    if let Some(v) = a.prometheus_port {
        cfg.prometheus.port = v;
    }
    if let Some(v) = a.prometheus_listener {
        cfg.prometheus.listener = v;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = a.log_level {
        cfg.log_level = v;
    }
    if let Some(v) = a.fsync {
        cfg.fsync = v;
    }
    if let Some(v) = a.segment_size {
        cfg.segment_size = v;
    }
    if let Some(v) = a.queue_ram_budget {
        cfg.queue_ram_budget = v;
    }
    if let Some(v) = a.memory_high_watermark {
        cfg.memory_high_watermark = v;
    }
    if let Some(v) = a.disk_free_limit {
        cfg.disk_free_limit = v;
    }
    if let Some(v) = a.consumer_timeout {
        cfg.consumer_timeout = v;
    }
    if let Some(v) = a.load_definitions {
        cfg.load_definitions = Some(v);
    }
    cfg.validate()?;
    // Thousands of clients need thousands of file descriptors.
    ferrymq::perf::raise_fd_limit();
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("invalid --log-level '{}'", cfg.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async {
        let running = ferrymq::start(&cfg).await?;
        tracing::info!(
            "FerryMQ {} started, data dir {}",
            env!("CARGO_PKG_VERSION"),
            cfg.data_dir.display()
        );
        wait_for_signal(&running).await?;
        tracing::info!("shutting down: closing client connections");
        running.shutdown().await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Waits for SIGINT or SIGTERM; SIGHUP meanwhile reloads the TLS certificate.
async fn wait_for_signal(running: &ferrymq::Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            r = &mut ctrl_c => return r.context("cannot install SIGINT handler"),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => {
                // The outcome is logged by the reload itself.
                if running.reload_tls("SIGHUP").is_none() {
                    tracing::info!("SIGHUP: TLS is off, nothing to reload");
                }
            }
        }
    }
}
