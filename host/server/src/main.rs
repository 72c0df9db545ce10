//! `weir`: real-time ML pipelines with user-written WebAssembly operators.

mod bench;
mod bench_latency;
mod bench_ml;
mod bench_pipeline;
mod bench_sink;
mod bench_swap;
mod bench_tenants;
mod cli;
mod cmd_run;
mod cmd_serve;
mod kafka_args;
mod up;

use weir_worker::kafka;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Real-time ML pipelines with user-written WebAssembly operators"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: cli::ClientArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job: the example plugins scoring a live stream of workload events.
    Up(up::UpArgs),
    /// Run a pipeline spec over Kafka with its results, state and positions in a database
    /// (effectively once; restarts resume from the database).
    Run(cmd_run::RunArgs),
    /// Serve the HTTP API (tenants, plugins, pipelines, deployments, results) and run the
    /// pipelines created through it.
    Serve(cmd_serve::ServeArgs),
    /// Manage tenants and their keys (admin key).
    #[command(subcommand)]
    Tenant(cli::TenantCmd),
    /// Create, build, upload and manage plugins.
    #[command(subcommand)]
    Plugin(cli::PluginCmd),
    /// Create, start, stop and inspect pipelines.
    #[command(subcommand)]
    Pipeline(cli::PipelineCmd),
    /// Deploy a plugin to a stage (hot-swapped when running, applied at start otherwise).
    Deploy(cli::StageArgs),
    /// Hot-swap a stage to a plugin (the pipeline must run).
    Swap(cli::StageArgs),
    /// Roll a stage back to the previous version, or to `--version`.
    Rollback {
        /// Pipeline id or name.
        pipeline: String,
        /// The stage.
        #[arg(long, default_value = "model")]
        stage: String,
        /// The version id to return to.
        #[arg(long)]
        version: Option<String>,
    },
    /// Run a canary: the plugin serves a share of keys, chosen by a hash of the key.
    Canary {
        #[command(flatten)]
        stage: cli::StageArgs,
        /// Share of keys, percent.
        #[arg(long)]
        percent: f64,
    },
    /// Run a shadow: the plugin scores the same events beside the serving version; its
    /// scores go to the shadow topic only.
    Shadow(cli::StageArgs),
    /// Make the canary or shadow the serving version.
    Promote {
        /// Pipeline id or name.
        pipeline: String,
        /// `canary` or `shadow` (default: whichever runs).
        #[arg(long)]
        from: Option<String>,
    },
    /// Print a pipeline's stored predictions, following new ones.
    Tail {
        /// Pipeline id or name.
        pipeline: String,
        /// Stop after this many.
        #[arg(long)]
        limit: Option<u64>,
        /// Only the records with this key.
        #[arg(long)]
        record_key: Option<String>,
    },
    /// Validate a plugin and print what it is (kind, WIT version, imports, compile time).
    Inspect {
        /// The component (.wasm).
        plugin: PathBuf,
    },
    /// Run a named benchmark (`engine`, `pipeline`, `sink`, `swap`, `ml`). Its last line is `key=value` pairs.
    Bench(bench::BenchArgs),
    /// Run only the embedded Kafka broker (librdkafka's mock cluster) until Ctrl-C.
    Broker {
        /// Topics to create, as NAME or NAME:PARTITIONS.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// Load a JSON Lines file of events into a topic.
    Produce {
        /// The file (for example from shared/bench/gen_events.py).
        #[arg(long)]
        file: PathBuf,
        /// Target topic.
        #[arg(long)]
        topic: String,
        /// Kafka bootstrap servers (for example the address `weir broker` printed).
        #[arg(long)]
        kafka: String,
        /// JSON field used as the message key.
        #[arg(long, default_value = "key")]
        key_field: String,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weir=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let c = &cli.client;
    match cli.command {
        Command::Serve(args) => cmd_serve::run(args),
        Command::Tenant(cmd) => cli::tenant(c, cmd),
        Command::Plugin(cmd) => cli::plugin(c, cmd),
        Command::Pipeline(cmd) => cli::pipeline(c, cmd),
        Command::Deploy(a) => cli::stage(c, "deploy", &a, serde_json::json!({})),
        Command::Swap(a) => cli::stage(c, "swap", &a, serde_json::json!({})),
        Command::Rollback {
            pipeline,
            stage,
            version,
        } => cli::stage_plain(
            c,
            "rollback",
            &pipeline,
            &stage,
            serde_json::json!({ "version": version }),
        ),
        Command::Canary { stage, percent } => cli::stage(
            c,
            "canary",
            &stage,
            serde_json::json!({ "percent": percent }),
        ),
        Command::Shadow(a) => cli::stage(c, "shadow", &a, serde_json::json!({})),
        Command::Promote { pipeline, from } => cli::stage_plain(
            c,
            "promote",
            &pipeline,
            "model",
            serde_json::json!({ "from": from }),
        ),
        Command::Tail {
            pipeline,
            limit,
            record_key,
        } => cli::tail(c, &pipeline, limit, record_key),
        Command::Up(args) => up::run(args),
        Command::Run(args) => cmd_run::run(args),
        Command::Inspect { plugin } => inspect(&plugin),
        Command::Bench(args) => bench::run(args),
        Command::Broker { topics } => broker(&topics),
        Command::Produce {
            file,
            topic,
            kafka,
            key_field,
        } => produce(&file, &topic, &kafka, &key_field),
    }
}

fn inspect(path: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let engine = weir_engine::Engine::new(Default::default())?;
    let plugin = engine.load(&bytes, Default::default())?;
    println!("plugin   {}", plugin.id());
    println!(
        "kind     {} (world weir:operator/{}@{})",
        plugin.kind(),
        plugin.kind().world(),
        plugin.info().version
    );
    println!("size     {} bytes", plugin.size());
    println!(
        "compile  {:.1} ms",
        plugin.compile_time().as_secs_f64() * 1e3
    );
    println!("imports");
    for i in &plugin.info().imports {
        println!("  {i}");
    }
    Ok(())
}

fn broker(topics: &[String]) -> Result<()> {
    let broker = kafka::EmbeddedBroker::start()?;
    for t in topics {
        let (name, parts) = match t.split_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<i32>()
                    .with_context(|| format!("partitions of `{t}`"))?,
            ),
            None => (t.as_str(), 1),
        };
        broker.create_topic(name, parts)?;
    }
    println!("{}", broker.bootstrap());
    eprintln!(
        "embedded Kafka broker listening at {}; Ctrl-C stops it",
        broker.bootstrap()
    );
    eprintln!("note: {}", kafka::EMBEDDED_LIMITS);
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    let _ = rx.recv();
    Ok(())
}

fn produce(file: &std::path::Path, topic: &str, kafka: &str, key_field: &str) -> Result<()> {
    use std::io::BufRead;
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
    let mut producer = kafka::Producer::new(kafka)?;
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let (mut n, mut bad) = (0u64, 0u64);
    for line in reader.lines() {
        let line = line?;
        bar.inc(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let key = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| {
                v.get(key_field)
                    .map(|k| k.as_str().map_or_else(|| k.to_string(), str::to_string))
            });
        if key.is_none() {
            bad += 1;
        }
        producer.send(topic, key.as_deref().unwrap_or(""), line.as_bytes())?;
        producer.check()?;
        n += 1;
        if n % 10_000 == 0 {
            bar.set_message(format!("{n} records"));
        }
    }
    producer.flush(std::time::Duration::from_secs(60))?;
    bar.finish_with_message(format!("{n} records"));
    println!(
        "produced {n} records to {topic} in {:.1}s ({bad} without a `{key_field}` field, sent without a key)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
