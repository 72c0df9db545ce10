//! `weir run`: one durable pipeline worker over Kafka, with its results, keyed state,
//! model snapshots and positions in a database. Run it again (or several, in the same
//! consumer group) and it resumes from the database.

use anyhow::{Context, Result, anyhow};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_engine::{Engine, EngineOptions};
use weir_server::run::build_slots;
use weir_store::Store;
use weir_stream::pipeline::Pipeline;
use weir_stream::spec::PipelineSpec;
use weir_worker::kafka::{Broker, EMBEDDED_LIMITS, EmbeddedBroker, Membership};
use weir_worker::{Durability, WorkerOptions};

/// Options of `weir run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The pipeline spec (TOML; see examples/workload.toml).
    #[arg(long)]
    spec: PathBuf,
    /// Kafka bootstrap servers (for example the address `weir broker` printed). Without it,
    /// weir starts its embedded broker with the spec's topics and prints its address.
    #[arg(long)]
    kafka: Option<String>,
    #[command(flatten)]
    kafka_client: crate::kafka_args::KafkaClientArgs,
    /// Database: `sqlite://weir.db` (created on first run) or
    /// `mysql://root@127.0.0.1:3306/test`.
    #[arg(long, default_value = "sqlite://weir.db")]
    db: String,
    /// Stop once the input is consumed up to where it ended at start, firing every open
    /// window (for batch-like runs and tests).
    #[arg(long)]
    until_end: bool,
    /// Checkpoint interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    commit_ms: u64,
    /// Checkpoint once this many output rows are pending.
    #[arg(long, default_value_t = 50_000)]
    commit_rows: usize,
    /// Do not write per-event predictions to the database (the output topic still gets
    /// them); window results are always written.
    #[arg(long)]
    no_predictions: bool,
    /// Share the topic's partitions with the other workers of this Kafka consumer group.
    /// Without it the worker takes every partition itself: no group join, so it starts and
    /// restarts at once (a second worker of the pipeline takes over from the first, which
    /// its checkpoints then fence).
    #[arg(long)]
    group: Option<String>,
    /// Delete the pipeline's stored results, state and positions first.
    #[arg(long)]
    reset: bool,
    /// Directory for compiled plugin artifacts, so a restart loads them instead of compiling
    /// (default: `$XDG_CACHE_HOME/weir` or `~/.cache/weir`; `--cache-dir ''` turns it off).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// With --until-end: fail when no partition is assigned within this many seconds.
    #[arg(long, default_value_t = 60)]
    assign_timeout_s: u64,
}

pub fn run(args: RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {}", args.spec.display()))?;
    let spec = PipelineSpec::parse(&text).map_err(|e| anyhow!("{}: {e}", args.spec.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut store = rt
        .block_on(Store::connect(&args.db))
        .with_context(|| format!("opening the database {}", redact(&args.db)))?;
    // Test failpoint: hold every checkpoint transaction open this long before it commits,
    // so that a kill lands inside one.
    if let Ok(ms) = std::env::var("WEIR_FAILPOINT_COMMIT_PAUSE_MS") {
        let ms: u64 = ms
            .parse()
            .context("WEIR_FAILPOINT_COMMIT_PAUSE_MS must be a number of milliseconds")?;
        store.set_commit_pause(Duration::from_millis(ms));
    }
    let store = Arc::new(store);
    if args.reset {
        rt.block_on(store.reset_pipeline(spec.name.get_ref()))?;
    }
    args.kafka_client.apply()?;
    let broker = match &args.kafka {
        Some(b) => Broker::External(b.clone()),
        None => {
            let embedded = EmbeddedBroker::start()?;
            println!("embedded Kafka broker at {}", embedded.bootstrap());
            eprintln!("note: {EMBEDDED_LIMITS}");
            Broker::Embedded(Arc::new(embedded))
        }
    };
    let bootstrap = broker.bootstrap();
    let engine = Engine::new(EngineOptions {
        cache_dir: cache_dir(args.cache_dir.clone()),
        ..EngineOptions::default()
    })?;
    let slots = build_slots(&engine, &spec)?;
    let pipeline = Pipeline::new(&spec, slots)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    eprintln!(
        "running `{}` from {} into {} ({})",
        spec.name.get_ref(),
        bootstrap,
        redact(&args.db),
        store.backend_name()
    );
    let started = Instant::now();
    let membership = if args.group.is_some() {
        Membership::Group
    } else {
        Membership::All
    };
    let report = weir_worker::run(
        &spec,
        pipeline,
        WorkerOptions {
            stop,
            until_end: args.until_end,
            commit_interval: Duration::from_millis(args.commit_ms.max(1)),
            commit_rows: args.commit_rows.max(1),
            group: args.group.clone(),
            membership,
            assign_timeout: args
                .until_end
                .then(|| Duration::from_secs(args.assign_timeout_s.max(1))),
            ..WorkerOptions::new(
                broker,
                Durability::Database {
                    store,
                    rt: rt.handle().clone(),
                    predictions: !args.no_predictions,
                },
            )
        },
    )?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "processed {} records in {secs:.1}s ({:.0}/s); {} checkpoints wrote {} rows ({:.1}s in commits, off the worker's thread); {} redelivered records skipped; {} input gaps recorded",
        report.records,
        report.records as f64 / secs.max(1e-9),
        report.commits.commits,
        report.commits.rows,
        report.commits.commit_time.as_secs_f64(),
        report.skipped,
        report.commits.gaps
    );
    Ok(())
}

/// The artifact cache: the one given (none when empty), else the user's cache directory.
pub fn cache_dir(given: Option<PathBuf>) -> Option<PathBuf> {
    match given {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("weir")),
    }
}

/// The URL without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
