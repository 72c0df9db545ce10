//! The main job: on a fresh machine, with no configuration, it starts the embedded Kafka
//! broker, loads the example plugins, starts the example pipeline for the shared workload
//! (`examples/workload.toml`), feeds it events from weir's own generator, and shows live
//! progress. `--kafka host:port` runs it against a real broker instead. Window results,
//! keyed state and positions go to the database (`--db`, SQLite by default); per-event
//! scores go to the output topic, and to the database too with `--store-predictions`.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_engine::{Engine, EngineOptions};
use weir_server::run::build_slots;
use weir_store::Store;
use weir_stream::pipeline::Pipeline;
use weir_stream::spec::PipelineSpec;
use weir_worker::kafka::{Broker, EMBEDDED_LIMITS, EmbeddedBroker, Producer};
use weir_worker::{Durability, Progress, WorkerOptions, spec_topics};
use weir_workload::{Generator, to_json_line};

const EXAMPLE_SPEC: &str = include_str!("../../../examples/workload.toml");

/// Options of `weir up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Kafka bootstrap servers; without it weir starts its embedded broker.
    #[arg(long)]
    kafka: Option<String>,
    #[command(flatten)]
    kafka_client: crate::kafka_args::KafkaClientArgs,
    /// Pipeline spec (default: the shared workload, examples/workload.toml).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Events to generate (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    events: u64,
    /// Generator rate in events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Partitions of the input topic when weir creates it (unless the spec sets
    /// `source.partitions`).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Database for results, state and positions: `sqlite://weir.db` (created on first run)
    /// or `mysql://root@127.0.0.1:3306/test`.
    #[arg(long, default_value = "sqlite://weir.db")]
    db: String,
    /// Also write every per-event score to the database (the output topic always gets
    /// them; at high rates the topic is the path to use).
    #[arg(long)]
    store_predictions: bool,
}

pub fn run(args: UpArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let spec_text = match &args.spec {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => EXAMPLE_SPEC.to_string(),
    };
    let spec =
        PipelineSpec::parse(&spec_text).map_err(|e| anyhow::anyhow!("pipeline spec: {e}"))?;

    args.kafka_client.apply()?;
    let broker = match &args.kafka {
        Some(b) => Broker::External(b.clone()),
        None => {
            let embedded = EmbeddedBroker::start()?;
            println!(
                "embedded Kafka broker at {} (try: kcat -b {} -C -t {} -o -5 -e)",
                embedded.bootstrap(),
                embedded.bootstrap(),
                spec.sink.topic
            );
            println!("note: {EMBEDDED_LIMITS}");
            Broker::Embedded(Arc::new(embedded))
        }
    };
    let bootstrap = broker.bootstrap();
    // The topics exist before the generator writes to them, the input one with
    // --partitions unless the spec says otherwise.
    let mut topics = spec_topics(&spec);
    if spec.source.partitions.is_none()
        && let Some(t) = topics.first_mut()
    {
        t.1 = args.partitions.max(1);
    }
    broker.ensure_topics(&topics)?;

    let engine = Engine::new(EngineOptions::default())?;
    let started_load = Instant::now();
    let slots = build_slots(&engine, &spec)?;
    println!(
        "pipeline `{}`: plugins compiled and pre-instantiated in {:.0} ms",
        spec.name.get_ref(),
        started_load.elapsed().as_secs_f64() * 1e3
    );
    for (stage, slot) in [
        ("extractor", &slots.extractor),
        ("model", &slots.model),
        ("window", &slots.window_operator),
    ] {
        if let Some(s) = slot {
            let d = s.current();
            println!(
                "  {stage:<9} {:<9} plugin {} version {}",
                d.plugin.kind().to_string(),
                d.plugin.id().short(),
                d.version
            );
        }
    }
    let pipeline = Pipeline::new(&spec, slots)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let store =
        Arc::new(rt.block_on(Store::connect(&args.db)).with_context(|| {
            format!("opening the database {}", crate::cmd_run::redact(&args.db))
        })?);
    if args.kafka.is_none() {
        // The generator starts the workload again from its first event, into an embedded
        // broker that starts empty: an earlier run's results and open windows for this
        // pipeline would mix with the new ones, so the main job starts afresh.
        rt.block_on(store.reset_pipeline(spec.name.get_ref()))?;
        println!(
            "pipeline `{}` starts afresh: its earlier results in {} are cleared (the generator \
             replays the workload from its start)",
            spec.name.get_ref(),
            crate::cmd_run::redact(&args.db)
        );
    }
    let inspect = match args.db.strip_prefix("sqlite://") {
        Some(path) => format!("sqlite3 {path} 'select * from window_results limit 5'"),
        None => "mariadb DATABASE -e 'select * from window_results limit 5'".to_string(),
    };
    println!(
        "results, state and positions in {} ({}); inspect with: {inspect}",
        crate::cmd_run::redact(&args.db),
        store.backend_name()
    );

    // The generator: weir's Rust port of the shared workload, produced to the input topic.
    let generated = Arc::new(AtomicU64::new(0));
    let gen_thread = {
        let (stop, generated, bootstrap, topic) = (
            stop.clone(),
            generated.clone(),
            bootstrap.clone(),
            spec.source.topic.get_ref().clone(),
        );
        let (n, rate, seed) = (
            if args.events == 0 {
                u64::MAX
            } else {
                args.events
            },
            args.rate,
            args.seed,
        );
        std::thread::Builder::new()
            .name("weir-generator".into())
            .spawn(move || -> Result<()> {
                let mut producer = Producer::new(&bootstrap)?;
                let start = Instant::now();
                for (i, e) in Generator::new(n, seed).enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    producer.send(&topic, &e.key, to_json_line(&e).as_bytes())?;
                    generated.store(i as u64 + 1, Ordering::Relaxed);
                    if rate > 0 && i % 256 == 0 {
                        let due = Duration::from_secs_f64(i as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                producer.flush(Duration::from_secs(30))
            })?
    };

    let progress = Arc::new(Mutex::new(Progress::default()));
    let training = pipeline.training();
    let worker = {
        let (stop, progress, broker, spec, handle) = (
            stop.clone(),
            progress.clone(),
            broker.clone(),
            spec.clone(),
            rt.handle().clone(),
        );
        let store_predictions = args.store_predictions;
        std::thread::Builder::new()
            .name("weir-worker".into())
            .spawn(move || {
                weir_worker::run(
                    &spec,
                    pipeline,
                    WorkerOptions {
                        stop,
                        progress,
                        ..WorkerOptions::new(
                            broker,
                            Durability::Database {
                                store,
                                rt: handle,
                                predictions: store_predictions,
                            },
                        )
                    },
                )
            })?
    };

    println!("streaming; Ctrl-C stops");
    let mut last = (Instant::now(), 0u64);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        if last.0.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let (stats, samples) = match progress.lock() {
            Ok(mut p) => (p.stats.clone(), std::mem::take(&mut p.samples)),
            Err(_) => break,
        };
        let rate = (stats.records_in - last.1) as f64 / last.0.elapsed().as_secs_f64();
        println!(
            "[{:>5.0}s] generated {:>9}  processed {:>9}  {:>8.0} ev/s  watermark {}  windows {:>8}  late {}  dead-letters {}",
            started.elapsed().as_secs_f64(),
            generated.load(Ordering::Relaxed),
            stats.records_in,
            rate,
            stats.watermark,
            stats.windows_out,
            stats.late,
            stats.dead
        );
        if let Some(t) = &training {
            let t = t.status();
            let last = t.last_decision.as_ref().map_or(String::new(), |d| {
                format!(
                    "; last: {} {} ({} {:.4} vs {:.4})",
                    d.trigger,
                    d.outcome,
                    d.metric,
                    d.challenger_score.unwrap_or(f64::NAN),
                    d.champion_score.unwrap_or(f64::NAN)
                )
            });
            println!(
                "          training: window {} rows, {} fits, {} promoted, {} drifts{last}",
                t.window_rows, t.fits, t.promotions, t.drifts
            );
        }
        for s in samples.iter().take(2) {
            println!("          {s}");
        }
        last = (Instant::now(), stats.records_in);
        if args.events > 0 && stats.records_in >= args.events && gen_thread.is_finished() {
            stop.store(true, Ordering::Relaxed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    match worker.join() {
        Ok(r) => {
            r?;
        }
        Err(_) => anyhow::bail!("the pipeline worker panicked"),
    }
    match gen_thread.join() {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the generator panicked"),
    }
    let p = progress.lock().map(|p| p.stats.clone()).unwrap_or_default();
    println!(
        "stopped: {} events processed, {} results, {} window results, {} late, {} dead letters",
        p.records_in, p.results_out, p.windows_out, p.late, p.dead
    );
    Ok(())
}
