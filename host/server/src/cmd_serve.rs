//! `weir serve`: the HTTP API, with the pipelines it runs, over a Kafka broker (the embedded
//! one unless `--kafka` names another) and a database.

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use weir_server::api::{self, ApiConfig, AppState};
use weir_worker::kafka::{Broker, EMBEDDED_LIMITS, EmbeddedBroker};

/// Arguments of `weir serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Database: `sqlite://weir.db` or `mysql://user:password@host:port/database`.
    #[arg(long, default_value = "sqlite://weir.db")]
    db: String,
    /// Kafka bootstrap servers; without it, an embedded broker starts in-process.
    #[arg(long)]
    kafka: Option<String>,
    #[command(flatten)]
    kafka_client: crate::kafka_args::KafkaClientArgs,
    /// Directory for compiled plugin artifacts (faster restarts).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Largest plugin upload, MiB.
    #[arg(long, default_value_t = 16)]
    max_plugin_mib: u64,
    /// Uploads and swaps per tenant per minute (0: unlimited).
    #[arg(long, default_value_t = 60.0)]
    rate_per_minute: f64,
    /// Burst of uploads or swaps a tenant may make at once.
    #[arg(long, default_value_t = 20.0)]
    rate_burst: f64,
    /// Every tenant's default quotas, as JSON over the built-in ones
    /// (`{"pipelines": 20, "running_pipelines": 4, "plugins": 100, "plugin_bytes": 1073741824}`);
    /// the admin sets other quotas per tenant (`weir tenant limits ID --quotas …`).
    #[arg(long)]
    quotas: Option<String>,
    /// Let each pipeline's worker compete for the CPU on its own, instead of sharing the
    /// CPU fairly between tenants.
    #[arg(long)]
    no_fair_cpu: bool,
    /// Seconds a connection has to send a request's headers (an idle kept-alive one, its
    /// next request's).
    #[arg(long, default_value_t = 10)]
    header_timeout_s: u64,
    /// Seconds a request's body has to arrive (408 otherwise).
    #[arg(long, default_value_t = 30)]
    body_timeout_s: u64,
    /// Most open connections; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds open requests get to finish on shutdown.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_s: u64,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    args.kafka_client.apply()?;
    let broker = match &args.kafka {
        Some(k) => Broker::External(k.clone()),
        None => Broker::Embedded(Arc::new(EmbeddedBroker::start()?)),
    };
    let kafka = broker.bootstrap();
    let store = Arc::new(
        weir_store::Store::connect(&args.db)
            .await
            .with_context(|| format!("opening the database {}", args.db))?,
    );
    let engine = weir_engine::Engine::new(weir_engine::EngineOptions {
        cache_dir: args.cache_dir.clone(),
        ..Default::default()
    })?;
    let defaults = ApiConfig::default();
    let quotas = match &args.quotas {
        None => defaults.quotas,
        Some(text) => {
            let v: serde_json::Value = serde_json::from_str(text)
                .context("--quotas takes JSON, such as '{\"pipelines\": 50}'")?;
            api::ceilings::overlay(&defaults.quotas, Some(&v))
                .map_err(|e| anyhow::anyhow!("--quotas: {e}"))?
        }
    };
    let config = ApiConfig {
        quotas,
        fair_cpu: !args.no_fair_cpu,
        header_timeout: std::time::Duration::from_secs(args.header_timeout_s.max(1)),
        body_timeout: std::time::Duration::from_secs(args.body_timeout_s.max(1)),
        max_connections: args.max_connections.max(1),
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_s),
        max_plugin_bytes: args.max_plugin_mib << 20,
        rate_per_minute: args.rate_per_minute,
        rate_burst: args.rate_burst,
        ..defaults
    };
    let admin = std::env::var("WEIR_ADMIN_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    if let Some(k) = &admin
        && !(k.len() == 67 && k.starts_with("wk_") && k[3..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        anyhow::bail!(
            "WEIR_ADMIN_KEY must be `wk_` and 64 hex digits (for example from `openssl rand -hex 32`)"
        );
    }
    let (state, printed) = AppState::new(store, engine, broker.clone(), config, admin)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if let Some(k) = printed {
        println!("admin key (printed once, stored hashed; set WEIR_ADMIN_KEY to choose it): {k}");
    }
    state.resume().await;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("kafka {kafka}");
    if broker.is_embedded() {
        println!("note: {EMBEDDED_LIMITS}");
    }
    println!("listening on http://{addr}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down: stopping pipelines (they commit first)");
    };
    api::serve(state, listener, shutdown).await;
    drop(broker);
    Ok(())
}
