//! The latency figures of `scripts/bench pipeline` (and `weir bench pipeline-latency`):
//! events produced live at a fixed rate, and for each, the time to its result on the output
//! topic and to the checkpoint that covers it.

use crate::bench_pipeline::{
    INPUT_PARTITIONS, WARM_UP, WORKLOAD, every_partition, pipeline, spec, spread_key,
};
use anyhow::{Result, anyhow, bail};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weir_engine::Engine;
use weir_store::Store;
use weir_stream::spec::PipelineSpec;
use weir_worker::kafka::{Broker, Consumer, EmbeddedBroker, Owned, Producer};
use weir_worker::{Durability, WorkerOptions};

/// (p50, p99) in ms.
type Percentiles = (f64, f64);

/// (p50, p99) to the output topic, (p50, p99) to the committed checkpoint (ms), and the
/// rate achieved.
pub type Latency = (Percentiles, Option<Percentiles>, f64);

/// When each checkpoint landed (ms since the start) and the positions it committed.
type Committed = Arc<Mutex<Vec<(i64, BTreeMap<i32, i64>)>>>;

/// (partition, offset, broker timestamp in ms) of each record read.
type Seen = Vec<(i32, i64, i64)>;

/// Event-to-result latency while events are produced live at `rate` per second, through the
/// durable worker (SQLite). Returns (p50, p99) to the output topic and (p50, p99) to the
/// committed checkpoint, in ms, and the rate achieved.
///
/// With `passthrough`, a plain copier (weir's consumer and producer, no pipeline, no
/// database) stands in for the worker: the latency the broker and the clients give on their
/// own, on the same machine and load (no checkpoint figures then). With
/// `WEIR_BENCH_KAFKA_OFFSETS` set, the worker runs without the database (positions as Kafka
/// offsets; no checkpoint figures either), to show what the database adds.
///
/// With `neighbours`, another tenant's busy pipelines run on the same host meanwhile
/// (see [`crate::bench_tenants`]); the measured pipeline is the other tenant's.
///
/// With `kafka` (bootstrap servers), the run goes through that broker instead of the
/// embedded one, on topics of its own (`events-N`, `scores-N`, …, created with the run's
/// partition counts), so runs on one broker do not see each other's records.
pub fn latency(
    engine: &Engine,
    lines: &[Vec<u8>],
    rate: f64,
    passthrough: bool,
    neighbours: Option<&crate::bench_tenants::Neighbours>,
    kafka: Option<&str>,
) -> Result<Latency> {
    let (broker, run) = match kafka {
        Some(bootstrap) => (
            Broker::External(bootstrap.to_owned()),
            format!("-{}", crate::bench::nanos()),
        ),
        None => (
            Broker::Embedded(Arc::new(EmbeddedBroker::start()?)),
            String::new(),
        ),
    };
    let (events_topic, scores_topic) = (format!("events{run}"), format!("scores{run}"));
    broker.ensure_topics(&[
        (events_topic.clone(), INPUT_PARTITIONS),
        (scores_topic.clone(), INPUT_PARTITIONS),
    ])?;
    let busy = match (neighbours, &broker) {
        (Some(n), Broker::Embedded(b)) => Some(n.start(engine, b)?),
        (Some(_), Broker::External(_)) => bail!("neighbours run on the embedded broker only"),
        (None, _) => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let db = crate::bench_pipeline::sqlite_db("latency");
    let store = Arc::new(rt.block_on(Store::connect(&db.url()))?);
    let offsets_only = std::env::var_os("WEIR_BENCH_KAFKA_OFFSETS").is_some();
    let stop = Arc::new(AtomicBool::new(false));
    let bootstrap = broker.bootstrap();
    let worker = if passthrough {
        copier(&bootstrap, &events_topic, &scores_topic, stop.clone())?
    } else {
        let spec = latency_spec(&run)?;
        let p = pipeline(engine, &spec)?;
        let opts = WorkerOptions {
            stop: stop.clone(),
            cpu_share: busy.as_ref().and_then(|b| b.share_of_measured()),
            ..WorkerOptions::new(
                broker.clone(),
                if offsets_only {
                    Durability::KafkaOffsets
                } else {
                    Durability::Database {
                        store: store.clone(),
                        rt: rt.handle().clone(),
                        predictions: false,
                    }
                },
            )
        };
        std::thread::spawn(move || -> Result<()> {
            weir_worker::run(&spec, p, opts)?;
            Ok(())
        })
    };
    // Readers of the input and the results run alongside (the embedded broker keeps only
    // the last 5 MiB of a partition, so reading afterwards would miss the start).
    let inputs = read_live(&bootstrap, &events_topic, false, lines.len());
    let results = read_live(&bootstrap, &scores_topic, true, lines.len());
    let (committed, poller) = poll_committed(&store, &rt, &stop);
    let achieved = produce_live(&bootstrap, &events_topic, lines, rate)?;
    let join = |h: JoinHandle<Result<Seen>>| match h.join() {
        Ok(r) => r,
        Err(_) => Err(anyhow!("a reader panicked")),
    };
    let (inputs, results) = (join(inputs)?, join(results)?);
    // Two more checkpoints land every event in the database.
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    match worker.join() {
        Ok(r) => r?,
        Err(_) => bail!("worker panicked"),
    }
    let _ = poller.join();
    if let Some(b) = busy {
        b.finish()?;
    }
    let committed = committed.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let with_db = !(passthrough || offsets_only);
    let (to_topic, to_db) = summarize(&inputs, &results, &committed, with_db)?;
    Ok((to_topic, to_db, achieved))
}

/// The workload's spec for a latency run, on the run's own topics when it has a suffix.
fn latency_spec(run: &str) -> Result<PipelineSpec> {
    if run.is_empty() {
        return spec("latency");
    }
    let text = WORKLOAD.replace("name = \"workload\"", "name = \"latency\"");
    let text = ["events", "scores", "windows", "late-events", "dead-letters"]
        .iter()
        .fold(text, |t, topic| {
            t.replace(&format!("\"{topic}\""), &format!("\"{topic}{run}\""))
        });
    PipelineSpec::parse(&text).map_err(|e| anyhow!("examples/workload.toml: {e}"))
}

/// Reads `n` records of `topic` as they arrive, skipping the warm-up events. For the
/// results (`results`), the partition and offset are those of the input each one answers.
fn read_live(bootstrap: &str, topic: &str, results: bool, n: usize) -> JoinHandle<Result<Seen>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    std::thread::spawn(move || -> Result<Seen> {
        let mut c = Consumer::new(
            &bootstrap,
            &format!("bench-latency-{topic}-{}", std::process::id()),
            &topic,
        )?;
        let mut out = Vec::with_capacity(n);
        let mut chunk = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while out.len() < n && Instant::now() < deadline {
            chunk.clear();
            c.poll_batch(10_000, Duration::from_millis(100), &mut chunk)?;
            for r in &chunk {
                let ts = r.timestamp.unwrap_or(0);
                let v: serde_json::Value = serde_json::from_slice(&r.payload)?;
                if v["key"] == WARM_UP {
                    continue;
                }
                if results {
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
}

/// Polls the committed positions every 2 ms until `stop`: when each event's checkpoint
/// landed.
fn poll_committed(
    store: &Arc<Store>,
    rt: &tokio::runtime::Runtime,
    stop: &Arc<AtomicBool>,
) -> (Committed, JoinHandle<()>) {
    let committed: Committed = Arc::default();
    let (store, c, stop, handle) = (
        store.clone(),
        committed.clone(),
        stop.clone(),
        rt.handle().clone(),
    );
    let poller = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(cps) = handle.block_on(store.checkpoints("latency")) {
                let at = crate::bench::now_ms();
                let m = cps.iter().map(|c| (c.partition, c.next_offset)).collect();
                if let Ok(mut g) = c.lock() {
                    g.push((at, m));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    (committed, poller)
}

/// Produces the lines to `topic` at `rate` per second, after a 4 s warm-up at the same rate
/// (the readers join their groups meanwhile: the first records of each partition wait for
/// the producer's and consumers' first round trips to it, which says nothing about the
/// steady state measured next). Returns the rate achieved.
fn produce_live(bootstrap: &str, topic: &str, lines: &[Vec<u8>], rate: f64) -> Result<f64> {
    let mut prod = Producer::new(bootstrap)?;
    let pace = |t: Instant, i: usize| {
        if i.is_multiple_of(64) {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    };
    let t = Instant::now();
    let mut i = 0;
    while t.elapsed() < Duration::from_secs(4) {
        let line =
            format!("{{\"key\":\"{WARM_UP}\",\"ts\":1600000000000,\"x\":[0,0,0,0,0,0,0,0]}}");
        // Spread like the rest: every partition's first records go through here.
        prod.send(topic, &spread_key(i), line.as_bytes())?;
        i += 1;
        pace(t, i);
    }
    let t = Instant::now();
    for (i, l) in lines.iter().enumerate() {
        prod.send(topic, &spread_key(i), l)?;
        pace(t, i);
    }
    prod.flush(Duration::from_secs(60))?;
    Ok(lines.len() as f64 / t.elapsed().as_secs_f64())
}

/// (p50, p99) of event → result, and of event → checkpoint when `with_db`.
fn summarize(
    inputs: &Seen,
    results: &Seen,
    committed: &[(i64, BTreeMap<i32, i64>)],
    with_db: bool,
) -> Result<(Percentiles, Option<Percentiles>)> {
    let sent: HashMap<(i32, i64), i64> = inputs.iter().map(|&(p, o, ts)| ((p, o), ts)).collect();
    let mut to_topic: Vec<f64> = Vec::with_capacity(results.len());
    for &(p, o, ts) in results {
        let Some(t0) = sent.get(&(p, o)) else {
            bail!("result for an unknown input {:?}", (p, o))
        };
        to_topic.push((ts - t0) as f64);
    }
    let pct = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * q) as usize]
    };
    if std::env::var_os("WEIR_BENCH_LATENCY_DETAIL").is_some() {
        let qs = [0.5, 0.9, 0.95, 0.99, 0.999, 1.0];
        let t: Vec<String> = qs
            .iter()
            .map(|q| format!("{q}:{:.0}", pct(&mut to_topic, *q)))
            .collect();
        eprintln!("to topic: {}", t.join(" "));
    }
    let topic = (pct(&mut to_topic, 0.5), pct(&mut to_topic, 0.99));
    if !with_db {
        return Ok((topic, None));
    }
    let mut to_db: Vec<f64> = Vec::with_capacity(inputs.len());
    for &(p, o, t0) in inputs {
        // The first poll that saw the position past this event.
        let i = committed.partition_point(|(_, m)| m.get(&p).is_none_or(|&next| next <= o));
        if let Some((at, _)) = committed.get(i) {
            to_db.push((at - t0) as f64);
        }
    }
    if to_db.len() < inputs.len() {
        bail!(
            "{} of {} events reached a checkpoint",
            to_db.len(),
            inputs.len()
        );
    }
    Ok((topic, Some((pct(&mut to_db, 0.5), pct(&mut to_db, 0.99)))))
}

/// The latency run's stand-in for the worker: every input record (but the warm-up's) copied
/// from `from` to `to` as `{"partition", "offset"}`, as it arrives, until `stop`.
fn copier(
    bootstrap: &str,
    from: &str,
    to: &str,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Result<()>>> {
    let mut c = every_partition(bootstrap, "copier", from)?;
    let to = to.to_owned();
    let mut producer = Producer::new(bootstrap)?;
    let warm_up = format!("{{\"key\":\"{WARM_UP}\"");
    Ok(std::thread::spawn(move || {
        let mut records: Vec<Owned> = Vec::with_capacity(2048);
        let mut payload = String::new();
        while !stop.load(Ordering::Relaxed) {
            records.clear();
            c.poll_batch(2048, Duration::from_millis(50), &mut records)?;
            for r in &records {
                if r.payload.starts_with(warm_up.as_bytes()) {
                    continue;
                }
                payload.clear();
                use std::fmt::Write;
                let _ = write!(
                    payload,
                    "{{\"partition\":{},\"offset\":{}}}",
                    r.partition, r.offset
                );
                producer.send(&to, "", payload.as_bytes())?;
            }
        }
        producer.flush(Duration::from_secs(60))?;
        c.close(Duration::from_secs(5));
        Ok(())
    }))
}
