//! `scripts/bench pipeline`: jobs 1 and 2 of the workload through the full pipeline, in
//! memory (engine only) and end to end through the embedded Kafka broker.

use anyhow::{Context, Result, bail};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_engine::{Engine, EngineOptions};
use weir_server::kafka::{Consumer, EmbeddedBroker, Producer};
use weir_server::run::{Progress, WorkerOptions, build_slots, run_worker};
use weir_stream::pipeline::{Outputs, Pipeline, SourceRecord};
use weir_stream::spec::PipelineSpec;
use weir_workload::{Event, to_json_line};

const WORKLOAD: &str = include_str!("../../../examples/workload.toml");

fn spec() -> Result<PipelineSpec> {
    PipelineSpec::parse(WORKLOAD).map_err(|e| anyhow::anyhow!("examples/workload.toml: {e}"))
}

fn pipeline(engine: &Engine, spec: &PipelineSpec) -> Result<Pipeline> {
    Ok(Pipeline::new(spec, build_slots(engine, spec)?)?)
}

/// Engine only: in-memory source and sink, one worker.
fn engine_only(lines: &[Vec<u8>], runs: usize) -> Result<(f64, u64, u64)> {
    let engine = Engine::new(EngineOptions::default())?;
    let spec = spec()?;
    let mut rates = Vec::new();
    let (mut results, mut windows) = (0, 0);
    for _ in 0..runs {
        let mut p = pipeline(&engine, &spec)?;
        let mut out = Outputs::default();
        let started = Instant::now();
        let (mut r, mut w) = (0u64, 0u64);
        for (ci, chunk) in lines.chunks(1024).enumerate() {
            let batch: Vec<SourceRecord<'_>> = chunk
                .iter()
                .enumerate()
                .map(|(i, l)| SourceRecord {
                    partition: 0,
                    offset: (ci * 1024 + i) as i64,
                    payload: l,
                })
                .collect();
            out.clear();
            p.process(&batch, 0, &mut out)?;
            r += out.results.len() as u64;
            w += out.windows.len() as u64;
        }
        out.clear();
        p.flush(&mut out)?;
        w += out.windows.len() as u64;
        rates.push(lines.len() as f64 / started.elapsed().as_secs_f64());
        (results, windows) = (r, w);
    }
    rates.sort_by(f64::total_cmp);
    Ok((rates[rates.len() / 2], results, windows))
}

fn produce_all(bootstrap: &str, lines: &[Vec<u8>]) -> Result<f64> {
    let mut p = Producer::new(bootstrap)?;
    let t = Instant::now();
    for l in lines {
        p.send("events", "", l)?;
    }
    p.flush(Duration::from_secs(120))?;
    Ok(lines.len() as f64 / t.elapsed().as_secs_f64())
}

/// Partitions of the input topic. The embedded broker keeps only the last 5 MiB of each
/// partition, and the end-to-end run loads all its events before it starts: 1M events are
/// about 129 MB before compression, so they are spread without keys over 64 partitions (a single
/// worker's results do not depend on how the input is partitioned).
const INPUT_PARTITIONS: i32 = 64;

fn fresh_broker() -> Result<EmbeddedBroker> {
    let b = EmbeddedBroker::start()?;
    b.create_topic("events", INPUT_PARTITIONS)?;
    for t in ["scores", "windows", "late-events", "dead-letters"] {
        b.create_topic(t, 4)?;
    }
    Ok(b)
}

/// End to end through Kafka: everything produced first, then consume → pipeline → produce.
fn end_to_end(lines: &[Vec<u8>]) -> Result<(f64, f64, f64)> {
    let broker = fresh_broker()?;
    let produce_rate = produce_all(&broker.bootstrap(), lines)?;
    let engine = Engine::new(EngineOptions::default())?;
    let spec = spec()?;
    let p = pipeline(&engine, &spec)?;
    let progress = Arc::new(Mutex::new(Progress::default()));
    let started = Instant::now();
    let first = Arc::new(Mutex::new(None::<Instant>));
    let watcher = {
        let (progress, first) = (progress.clone(), first.clone());
        std::thread::spawn(move || {
            while started.elapsed() < Duration::from_secs(60) {
                if progress
                    .lock()
                    .map(|p| p.stats.records_in > 0)
                    .unwrap_or(false)
                {
                    if let Ok(mut f) = first.lock() {
                        *f = Some(Instant::now());
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let opts = WorkerOptions {
        progress,
        max_records: Some(lines.len() as u64),
        ..WorkerOptions::default()
    };
    let p = run_worker(&spec, p, &broker.bootstrap(), opts)?;
    let total = started.elapsed().as_secs_f64();
    let _ = watcher.join();
    let since_first = first
        .lock()
        .ok()
        .and_then(|f| *f)
        .map_or(total, |f| f.elapsed().as_secs_f64());
    if p.stats().results_out != lines.len() as u64 {
        bail!(
            "{} results for {} events",
            p.stats().results_out,
            lines.len()
        );
    }
    Ok((
        lines.len() as f64 / total,
        lines.len() as f64 / since_first,
        produce_rate,
    ))
}

/// Event-to-result latency while events are produced live at `rate` per second.
fn latency(lines: &[Vec<u8>], keys: &[String], rate: f64) -> Result<(f64, f64, f64)> {
    let broker = fresh_broker()?;
    let engine = Engine::new(EngineOptions::default())?;
    let spec = spec()?;
    let p = pipeline(&engine, &spec)?;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (spec, bootstrap, stop) = (spec.clone(), broker.bootstrap(), stop.clone());
        let n = lines.len() as u64;
        std::thread::spawn(move || {
            run_worker(
                &spec,
                p,
                &bootstrap,
                WorkerOptions {
                    stop,
                    max_records: Some(n),
                    ..WorkerOptions::default()
                },
            )
        })
    };
    // Readers of the input and the results run alongside (the embedded broker keeps only
    // the last 5 MiB of a partition, so reading afterwards would miss the start).
    let reader = |topic: &'static str, n: usize| {
        let bootstrap = broker.bootstrap();
        std::thread::spawn(move || -> Result<Vec<(i32, i64, i64)>> {
            let mut c = Consumer::new(
                &bootstrap,
                &format!("bench-latency-{topic}-{}", std::process::id()),
                topic,
            )?;
            let mut out = Vec::with_capacity(n);
            let mut chunk = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(300);
            while out.len() < n && Instant::now() < deadline {
                chunk.clear();
                c.poll_batch(10_000, Duration::from_millis(100), &mut chunk)?;
                for r in &chunk {
                    let ts = r.timestamp.unwrap_or(0);
                    if topic == "scores" {
                        let v: serde_json::Value = serde_json::from_slice(&r.payload)?;
                        out.push((
                            v["partition"].as_i64().unwrap_or(-1) as i32,
                            v["offset"].as_i64().unwrap_or(-1),
                            ts,
                        ));
                    } else {
                        out.push((r.partition, r.offset, ts));
                    }
                }
            }
            c.close(Duration::from_secs(5));
            if out.len() < n {
                bail!("read {} of {n} records from {topic}", out.len());
            }
            Ok(out)
        })
    };
    let inputs_reader = reader("events", lines.len());
    let results_reader = reader("scores", lines.len());
    // Let the worker and the readers join their groups before the clock starts.
    std::thread::sleep(Duration::from_secs(4));
    let mut prod = Producer::new(&broker.bootstrap())?;
    let t = Instant::now();
    for (i, (l, k)) in lines.iter().zip(keys).enumerate() {
        prod.send("events", k, l)?;
        if i % 64 == 0 {
            prod.poll();
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    prod.flush(Duration::from_secs(60))?;
    let achieved = lines.len() as f64 / t.elapsed().as_secs_f64();
    match worker.join() {
        Ok(r) => drop(r?),
        Err(_) => bail!("worker panicked"),
    }
    stop.store(true, Ordering::Relaxed);
    let join = |h: std::thread::JoinHandle<Result<Vec<(i32, i64, i64)>>>| match h.join() {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("a reader panicked")),
    };
    let inputs = join(inputs_reader)?;
    let results = join(results_reader)?;
    let sent: std::collections::HashMap<(i32, i64), i64> =
        inputs.iter().map(|&(p, o, ts)| ((p, o), ts)).collect();
    let mut lat: Vec<f64> = Vec::with_capacity(results.len());
    for &(p, o, ts) in &results {
        let Some(t0) = sent.get(&(p, o)) else {
            bail!("result for an unknown input {:?}", (p, o))
        };
        lat.push((ts - t0) as f64);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    Ok((pct(0.5), pct(0.99), achieved))
}

pub fn run(n: u64, events: Option<Vec<Event>>, runs: usize) -> Result<()> {
    let evs = match events {
        Some(e) => e,
        None => weir_workload::Generator::new(n, 42).collect(),
    };
    let lines: Vec<Vec<u8>> = evs.iter().map(|e| to_json_line(e).into_bytes()).collect();
    let keys: Vec<String> = evs.iter().map(|e| e.key.clone()).collect();
    drop(evs);
    println!(
        "bench pipeline: jobs 1 + 2 of the workload (examples/workload.toml) over {} events",
        lines.len()
    );

    let (engine_rate, results, windows) = engine_only(&lines, runs).context("engine-only run")?;
    println!(
        "  engine only (in-memory source and sink, 1 worker)   {engine_rate:>10.0} events/s  ({results} results, {windows} window results)"
    );

    let (e2e, e2e_after_join, produce_rate) = end_to_end(&lines).context("end-to-end run")?;
    println!("  produce the input first (acks=all, idempotent)      {produce_rate:>10.0} events/s");
    println!(
        "  end to end through Kafka, from pipeline start       {e2e:>10.0} events/s  (includes the ~3 s consumer-group join)"
    );
    println!(
        "  end to end through Kafka, from the first record     {e2e_after_join:>10.0} events/s"
    );

    let half = (e2e_after_join / 2.0).max(1_000.0);
    let n_lat = (lines.len() as f64).min(half * 10.0) as usize;
    let (p50, p99, achieved) =
        latency(&lines[..n_lat], &keys[..n_lat], half).context("latency run")?;
    println!(
        "  event-to-result latency at {achieved:.0} events/s (half the e2e rate), {n_lat} events: p50 {p50:.0} ms, p99 {p99:.0} ms"
    );
    println!(
        "e2e_events_per_s={e2e_after_join:.0} engine_events_per_s={engine_rate:.0} p99_latency_ms={p99:.0}"
    );
    Ok(())
}
