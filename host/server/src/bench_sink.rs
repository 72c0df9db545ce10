//! `scripts/bench sink`: how fast the effectively-once sink writes, into MariaDB and SQLite,
//! and what that does to the pipeline end to end.
//!
//! 1. Raw sink: prediction rows and window-result rows committed through
//!    [`Store::commit`] (one transaction per batch, with the epoch-guarded checkpoint
//!    update), on each database.
//! 2. End to end through the embedded broker with the durable worker: job 1 with every
//!    prediction written to MariaDB, and jobs 1 + 2 with the window results (and keyed
//!    state) written to MariaDB while the predictions go to the output topic.

use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_engine::{Engine, EngineOptions};
use weir_server::run::build_slots;
use weir_store::{CommitBatch, PartitionCommit, Prediction, Store, WindowResult};
use weir_stream::pipeline::Pipeline;
use weir_stream::spec::PipelineSpec;
use weir_worker::kafka::{Broker, EmbeddedBroker, Producer};
use weir_worker::{Durability, WorkerOptions};
use weir_workload::{Generator, to_json_line};

const WORKLOAD: &str = include_str!("../../../examples/workload.toml");
const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

fn job1_spec() -> Result<PipelineSpec> {
    // Job 1 alone: the workload spec without its window stage.
    let text = WORKLOAD
        .split("\n[window]")
        .next()
        .unwrap_or(WORKLOAD)
        .to_string()
        + "\n[sink]\ntopic = \"scores\"\ndead_letter_topic = \"dead-letters\"\n";
    PipelineSpec::parse(&text.replace("name = \"workload\"", "name = \"job1\""))
        .map_err(|e| anyhow::anyhow!("job 1 spec: {e}"))
}

/// Rows per second through `Store::commit`, in batches of `batch` rows.
fn raw_sink(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    rows: usize,
    batch: usize,
    windows: bool,
) -> Result<f64> {
    let pipeline = if windows {
        "bench-windows"
    } else {
        "bench-predictions"
    };
    rt.block_on(store.reset_pipeline(pipeline))?;
    let claim = rt.block_on(store.claim(pipeline, 0))?;
    let started = Instant::now();
    let mut written = 0usize;
    while written < rows {
        let n = batch.min(rows - written);
        let mut b = CommitBatch {
            pipeline: pipeline.into(),
            partitions: vec![PartitionCommit {
                partition: 0,
                epoch: claim.epoch,
                next_offset: (written + n) as i64,
                watermark: 0,
                state: Vec::new(),
                source: Default::default(),
                offset_base: 0,
            }],
            predictions: Vec::new(),
            window_results: Vec::new(),
            snapshot: None,
            gaps: Vec::new(),
        };
        for i in written..written + n {
            let key = format!("u{}", i % 1000);
            if windows {
                let start = (i / 1000) as i64 * 1000;
                b.window_results.push(WindowResult {
                    output: format!(
                        "{{\"key\":\"{key}\",\"window_start\":{start},\"window_end\":{},\"count\":4,\"mean_x0\":0.5,\"max_x0\":2.25,\"score\":0.61}}",
                        start + 1000
                    ),
                    key,
                    window_start: start,
                    window_end: start + 1000,
                    partition: 0,
                    version: "0123456789abcdef".into(),
                });
            } else {
                b.predictions.push(Prediction {
                    partition: 0,
                    offset: i as i64,
                    output: format!(
                        "{{\"key\":\"{key}\",\"ts\":{},\"partition\":0,\"offset\":{i},\"score\":0.4123456789}}",
                        1_700_000_000_000u64 + i as u64
                    ),
                    key,
                    ts: 1_700_000_000_000 + i as i64,
                    score: Some(0.412_345_678_9),
                    model_version: "0123456789abcdef".into(),
                    extractor_version: "fedcba9876543210".into(),
                });
            }
        }
        rt.block_on(store.commit(b))?;
        written += n;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    rt.block_on(store.reset_pipeline(pipeline))?;
    Ok(rate)
}

/// End to end: `n` workload events produced first, then the durable worker from start to
/// the end of the input. Returns events/s.
fn end_to_end(
    rt: &tokio::runtime::Runtime,
    store: Arc<Store>,
    spec: &PipelineSpec,
    lines: &[(String, String)],
    store_predictions: bool,
) -> Result<(f64, u64)> {
    let broker = EmbeddedBroker::start()?;
    broker.create_topic("events", 4)?;
    let mut p = Producer::new(&broker.bootstrap())?;
    for (k, l) in lines {
        p.send("events", k, l.as_bytes())?;
    }
    p.flush(Duration::from_secs(120))?;
    rt.block_on(store.reset_pipeline(spec.name.get_ref()))?;
    let engine = Engine::new(EngineOptions::default())?;
    let pipeline = Pipeline::new(spec, build_slots(&engine, spec)?)?;
    let started = Instant::now();
    let report = weir_worker::run(
        spec,
        pipeline,
        WorkerOptions {
            until_end: true,
            ..WorkerOptions::new(
                Broker::Embedded(Arc::new(broker)),
                Durability::Database {
                    store: store.clone(),
                    rt: rt.handle().clone(),
                    predictions: store_predictions,
                },
            )
        },
    )?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.records == lines.len() as u64,
        "processed {} of {} events",
        report.records,
        lines.len()
    );
    rt.block_on(store.reset_pipeline(spec.name.get_ref()))?;
    Ok((lines.len() as f64 / secs, report.commits.rows))
}

/// Runs the benchmark over `n` events (end to end) and `rows` rows (raw sink).
pub fn run(n: u64, rows: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let db_name = format!("weir_bench_{}", std::process::id());
    let mysql_url = rt
        .block_on(weir_store::create_mysql_database(MARIADB, &db_name))
        .context("creating the MariaDB bench database (is MariaDB up on 127.0.0.1:3306?)")?;
    let dir = std::env::temp_dir().join(format!("weir-bench-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sqlite_url = format!("sqlite://{}", dir.join("bench.db").display());
    let result = (|| -> Result<()> {
        let mysql = Arc::new(rt.block_on(Store::connect(&mysql_url))?);
        let sqlite = Arc::new(rt.block_on(Store::connect(&sqlite_url))?);
        let batch = 5_000;
        println!("bench sink: {rows} rows per figure, {batch} rows per transaction");
        let mut figures = Vec::new();
        for (name, store) in [("MariaDB", &mysql), ("SQLite", &sqlite)] {
            let p = raw_sink(&rt, store, rows, batch, false)?;
            let w = raw_sink(&rt, store, rows, batch, true)?;
            println!("  {name:<8} predictions {p:>10.0} rows/s   window results {w:>10.0} rows/s");
            figures.push(p.min(w));
        }

        let events: Vec<(String, String)> = Generator::new(n, 42)
            .map(|e| (e.key.clone(), to_json_line(&e)))
            .collect();
        let job1 = job1_spec()?;
        let (rate, written) = end_to_end(&rt, mysql.clone(), &job1, &events, true)?;
        println!(
            "  end to end, job 1, every prediction into MariaDB       {rate:>10.0} events/s ({written} rows)"
        );
        let full = PipelineSpec::parse(WORKLOAD).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (rate, written) = end_to_end(&rt, mysql.clone(), &full, &events, false)?;
        println!(
            "  end to end, jobs 1 + 2, window results into MariaDB   {rate:>10.0} events/s ({written} rows incl. keyed state; scores to the topic)"
        );
        let (rate, written) = end_to_end(&rt, sqlite.clone(), &full, &events, false)?;
        println!(
            "  end to end, jobs 1 + 2, window results into SQLite    {rate:>10.0} events/s ({written} rows incl. keyed state; scores to the topic)"
        );
        println!(
            "mysql_sink_rows_per_s={:.0} sqlite_sink_rows_per_s={:.0}",
            figures[0], figures[1]
        );
        Ok(())
    })();
    let _ = rt.block_on(weir_store::drop_mysql_database(MARIADB, &db_name));
    let _ = std::fs::remove_dir_all(&dir);
    result
}
