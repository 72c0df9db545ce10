//! `weir`: real-time ML pipelines with user-written WebAssembly operators.

mod bench;
mod bench_pipeline;
mod bench_sink;
mod cmd_run;
mod up;

use weir_server::kafka;

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
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job: the example plugins scoring a live stream of workload events.
    Up(up::UpArgs),
    /// Run a pipeline spec over Kafka with its results, state and positions in a database
    /// (effectively once; restarts resume from the database).
    Run(cmd_run::RunArgs),
    /// Validate a plugin and print what it is (kind, WIT version, imports, compile time).
    Inspect {
        /// The component (.wasm).
        plugin: PathBuf,
    },
    /// Run a named benchmark (`engine`, `pipeline`, `sink`). Its last line is `key=value` pairs.
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
    match Cli::parse().command {
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
        n += 1;
        if n % 10_000 == 0 {
            producer.poll();
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
