//! `scripts/bench pipeline`: jobs 1 and 2 of the workload through the one worker loop, as
//! users run it. Every figure is timed from the pipeline's start (the worker's call: topics,
//! consumer, claims included; plugin compilation excluded) to the last output acknowledged
//! by the broker, and is the median of several runs, all in this one invocation:
//!
//! - `passthrough`: rdkafka alone, through weir's consumer and producer: every input record
//!   produced again unchanged. The broker's (and the clients') limit in the same run.
//! - `e2e`: the pipeline, results to topics, no database (Kafka offsets, at least once).
//! - `durable_sqlite`, `durable_mysql`: the same with every window result, the keyed state
//!   and the positions committed to the database (effectively once); per-event predictions
//!   go to the topic. The variant with every prediction in the database too is printed.
//! - `engine`: the pipeline in memory, no Kafka.
//! - latency at half the durable (SQLite) rate: event → result on the output topic, and
//!   event → its checkpoint committed;
//! - `recovery_s`: a `weir run` killed with SIGKILL and started again, from the kill to the
//!   first result of the new process.
//!
//! The input is produced once, without keys, over 64 partitions: the embedded broker keeps
//! only the last 5 MiB of each partition, and a keyed topic would put the hottest key's 15%
//! of a million events (about 8 MB compressed) in one partition.

use crate::bench_latency::latency;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_engine::{Engine, EngineOptions};
use weir_server::run::build_slots;
use weir_store::Store;
use weir_stream::pipeline::{Outputs, Pipeline, SourceRecord};
use weir_stream::spec::PipelineSpec;
use weir_worker::kafka::{
    AssignHook, Broker, Consumer, EmbeddedBroker, Membership, Owned, Producer, SourceLog,
};
use weir_worker::{Durability, WorkerOptions};
use weir_workload::{Event, to_json_line};

pub(crate) const WORKLOAD: &str = include_str!("../../../examples/workload.toml");
pub(crate) const INPUT_PARTITIONS: i32 = 64;
const MARIADB: &str = "mysql://root@127.0.0.1:3306";
/// The key of the latency run's warm-up events.
pub(crate) const WARM_UP: &str = "warm-up";

pub(crate) fn spec(name: &str) -> Result<PipelineSpec> {
    PipelineSpec::parse(&WORKLOAD.replace("name = \"workload\"", &format!("name = \"{name}\"")))
        .map_err(|e| anyhow!("examples/workload.toml: {e}"))
}

pub(crate) fn pipeline(engine: &Engine, spec: &PipelineSpec) -> Result<Pipeline> {
    Ok(Pipeline::new(spec, build_slots(engine, spec)?)?)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Engine only: in-memory source and sink, one worker.
pub fn engine_only(lines: &[Vec<u8>], runs: usize) -> Result<(f64, u64, u64)> {
    let engine = Engine::new(EngineOptions::default())?;
    let spec = spec("workload")?;
    let mut rates = Vec::new();
    let (mut results, mut windows) = (0, 0);
    for _ in 0..runs {
        let mut p = pipeline(&engine, &spec)?;
        let mut out = Outputs::default();
        let started = Instant::now();
        let (mut r, mut w) = (0u64, 0u64);
        for (ci, chunk) in lines.chunks(2048).enumerate() {
            let batch: Vec<SourceRecord<'_>> = chunk
                .iter()
                .enumerate()
                .map(|(i, l)| SourceRecord {
                    partition: 0,
                    offset: (ci * 2048 + i) as i64,
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
    Ok((median(rates), results, windows))
}

/// The embedded broker with the input produced into it.
/// The Kafka key of input record `i`: a distinct key per record spreads the input evenly
/// over the partitions, each partition's records spread over the whole event time. Keying by
/// the event's key would put the hot key's 15% into one partition, more than the embedded
/// broker keeps (5 MiB); empty keys stick to one partition for 10 ms at a time and leave
/// some partitions empty, and an input partition without data holds the watermark back.
pub(crate) fn spread_key(i: usize) -> String {
    i.to_string()
}

fn loaded_broker(lines: &[Vec<u8>]) -> Result<(Arc<EmbeddedBroker>, f64)> {
    let b = EmbeddedBroker::start()?;
    b.create_topic("events", INPUT_PARTITIONS)?;
    for t in [
        "scores",
        "windows",
        "late-events",
        "dead-letters",
        "passthrough",
    ] {
        b.create_topic(t, 4)?;
    }
    let mut p = Producer::new(&b.bootstrap())?;
    let t = Instant::now();
    for (i, l) in lines.iter().enumerate() {
        p.send("events", &spread_key(i), l)?;
    }
    p.flush(Duration::from_secs(120))?;
    Ok((Arc::new(b), lines.len() as f64 / t.elapsed().as_secs_f64()))
}

/// Every record of the input produced again unchanged, by weir's consumer (every partition
/// assigned at its start, no group join) and producer. Returns events/s.
fn passthrough(bootstrap: &str, n: u64) -> Result<f64> {
    let started = Instant::now();
    let mut c = every_partition(bootstrap, "passthrough", "events")?;
    let mut producer = Producer::new(bootstrap)?;
    let mut records: Vec<Owned> = Vec::with_capacity(2048);
    let mut seen = 0u64;
    while seen < n {
        records.clear();
        c.poll_batch(2048, Duration::from_millis(50), &mut records)?;
        for r in &records {
            producer.send("passthrough", "", &r.payload)?;
        }
        seen += records.len() as u64;
        if started.elapsed() > Duration::from_secs(300) {
            bail!("passthrough stalled at {seen} of {n}");
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let secs = started.elapsed().as_secs_f64();
    c.close(Duration::from_secs(5));
    Ok(n as f64 / secs)
}

/// A consumer of every partition of `events`, from the start of each, with no group join
/// (the passthrough runs' consumer, like the worker's).
pub(crate) fn every_partition(bootstrap: &str, name: &str, topic: &str) -> Result<Consumer> {
    let hook: AssignHook = Arc::new(|parts: &[i32], log: &SourceLog| {
        Ok(parts
            .iter()
            .map(|p| (*p, log.bounds.get(p).map_or(0, |b| b.low)))
            .collect::<BTreeMap<i32, i64>>())
    });
    let mut c = Consumer::with_hook(
        bootstrap,
        &format!("{name}-{}", crate::bench::nanos()),
        topic,
        hook,
        &Membership::All,
    )?;
    let all = c.partitions()?;
    c.take_partitions(&all, &BTreeMap::new())?;
    Ok(c)
}

/// A database for the durable runs.
pub(crate) enum Db {
    Sqlite(std::path::PathBuf),
    Mysql(String, String),
}

impl Db {
    pub(crate) fn url(&self) -> String {
        match self {
            Db::Sqlite(p) => format!("sqlite://{}", p.display()),
            Db::Mysql(url, _) => url.clone(),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        match self {
            Db::Sqlite(p) => {
                for s in ["", "-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(format!("{}{s}", p.display()));
                }
            }
            Db::Mysql(_, name) => {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(weir_store::drop_mysql_database(MARIADB, name));
                }
            }
        }
    }
}

pub(crate) fn sqlite_db(tag: &str) -> Db {
    Db::Sqlite(std::env::temp_dir().join(format!(
        "weir-bench-{tag}-{}-{}.db",
        std::process::id(),
        crate::bench::nanos()
    )))
}

fn mysql_db(rt: &tokio::runtime::Runtime, tag: &str) -> Result<Db> {
    let name = format!("weir_bench_{tag}_{}", std::process::id());
    let url = rt
        .block_on(weir_store::create_mysql_database(MARIADB, &name))
        .context("MariaDB on 127.0.0.1:3306 (scripts/bench starts it when it can)")?;
    Ok(Db::Mysql(url, name))
}

/// One run of the pipeline through the broker: from the worker's start to its last output
/// acknowledged (and, with a database, its last checkpoint committed). Returns events/s.
fn through_kafka(
    engine: &Engine,
    broker: &Arc<EmbeddedBroker>,
    n: u64,
    durability: Durability,
    name: &str,
) -> Result<f64> {
    let spec = spec(name)?;
    let p = pipeline(engine, &spec)?;
    let started = Instant::now();
    let report = weir_worker::run(
        &spec,
        p,
        WorkerOptions {
            until_end: true,
            // For comparing budgets (`0`: none); the default is the worker's.
            fire_budget: match std::env::var("WEIR_BENCH_FIRE_BUDGET") {
                Ok(v) => v.parse().ok().filter(|b| *b > 0),
                Err(_) => Some(weir_worker::DEFAULT_FIRE_BUDGET),
            },
            ..WorkerOptions::new(Broker::Embedded(broker.clone()), durability)
        },
    )?;
    let secs = started.elapsed().as_secs_f64();
    if report.stats.results_out != n {
        bail!("{} results for {n} events", report.stats.results_out);
    }
    Ok(n as f64 / secs)
}

/// Kills a `weir run` with SIGKILL while events stream in, starts it again, and measures
/// from the kill to the new process's first result on the output topic. Returns seconds,
/// one per kill.
fn recovery(lines: &[Vec<u8>], kills: usize) -> Result<Vec<f64>> {
    let exe = std::env::current_exe().context("locating the weir binary")?;
    let (_broker_proc, bootstrap) = spawn_broker(&exe)?;
    let dir = std::env::temp_dir().join(format!("weir-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let spec_path = dir.join("spec.toml");
    std::fs::write(
        &spec_path,
        WORKLOAD
            .replace("name = \"workload\"", "name = \"recovery\"")
            .replace("input_dims = 8", "input_dims = 8\npartitions = 8"),
    )?;
    let db = format!("sqlite://{}", dir.join("weir.db").display());
    let cache = dir.join("cache");
    let start = || -> Result<std::process::Child> {
        std::process::Command::new(&exe)
            .args(["run", "--spec"])
            .arg(&spec_path)
            .args(["--kafka", &bootstrap, "--db", &db, "--cache-dir"])
            .arg(&cache)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting weir run")
    };
    // The first start compiles the plugins into the artifact cache, as any first start does.
    let mut child = start()?;
    // Events stream in at 20,000/s for the whole measurement.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, bootstrap, lines) = (stop.clone(), bootstrap.clone(), lines.to_vec());
        std::thread::spawn(move || -> Result<()> {
            let mut p = Producer::new(&bootstrap)?;
            let t = Instant::now();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let l = &lines[i % lines.len()];
                p.send("events", &spread_key(i), l)?;
                i += 1;
                if i.is_multiple_of(64) {
                    let due = Duration::from_secs_f64(i as f64 / 20_000.0);
                    if let Some(wait) = due.checked_sub(t.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            p.flush(Duration::from_secs(30))
        })
    };
    let mut results = Consumer::new(&bootstrap, "bench-recovery-reader", "scores")?;
    let mut chunk = Vec::new();
    // The newest result's timestamp, reading everything so far.
    let mut newest = |wait: Duration| -> Result<Option<i64>> {
        chunk.clear();
        results.poll_batch(100_000, wait, &mut chunk)?;
        Ok(chunk.iter().filter_map(|r| r.timestamp).max())
    };
    let mut times = Vec::new();
    let warm = Instant::now();
    while newest(Duration::from_millis(200))?.is_none() {
        if warm.elapsed() > Duration::from_secs(60) {
            bail!("the first weir run produced nothing");
        }
    }
    for _ in 0..kills {
        // Run a while, then kill.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            newest(Duration::from_millis(100))?;
        }
        child.kill().context("SIGKILL")?;
        let killed = crate::bench::now_ms();
        let killed_at = Instant::now();
        let _ = child.wait();
        // Whatever it wrote before the kill is read and dropped.
        while newest(Duration::from_millis(20))?.is_some_and(|ts| ts < killed) {}
        child = start()?;
        loop {
            if newest(Duration::from_millis(20))?.is_some_and(|ts| ts >= killed) {
                break;
            }
            if killed_at.elapsed() > Duration::from_secs(120) {
                bail!("no result within 120 s of a restart");
            }
        }
        times.push(killed_at.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    match producer.join() {
        Ok(r) => r?,
        Err(_) => bail!("the producer panicked"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(times)
}

/// `weir broker` as a child process (so a killed worker does not take it along).
fn spawn_broker(exe: &std::path::Path) -> Result<(KillOnDrop, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(exe)
        .args(["broker", "--topic", "events:8", "--topic", "scores:4"])
        .args([
            "--topic",
            "windows",
            "--topic",
            "late-events",
            "--topic",
            "dead-letters",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting weir broker")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    Ok((KillOnDrop(child), line.trim().to_owned()))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Database durability on `db` (the effectively-once checkpoints).
fn database(rt: &tokio::runtime::Runtime, db: &Db, predictions: bool) -> Result<Durability> {
    Ok(Durability::Database {
        store: Arc::new(rt.block_on(Store::connect(&db.url()))?),
        rt: rt.handle().clone(),
        predictions,
    })
}

/// One mode of the Kafka runs alone, `runs` times (for profilers): `passthrough`, `e2e`,
/// `sqlite`, `mysql` or `every`. Returns the median rate.
pub fn one_mode(n: u64, mode: &str, runs: usize) -> Result<f64> {
    let lines: Vec<Vec<u8>> = weir_workload::Generator::new(n, 42)
        .map(|e| to_json_line(&e).into_bytes())
        .collect();
    let n = lines.len() as u64;
    let engine = Engine::new(EngineOptions::default())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (broker, _) = loaded_broker(&lines)?;
    drop(lines);
    let mut rates = Vec::new();
    for i in 0..runs.max(1) {
        let (db, predictions) = match mode {
            "passthrough" => {
                rates.push(passthrough(&broker.bootstrap(), n)?);
                continue;
            }
            "e2e" => (None, false),
            "sqlite" => (Some(sqlite_db("one")), false),
            "mysql" => (Some(mysql_db(&rt, "one")?), false),
            "every" => (Some(sqlite_db("one")), true),
            other => bail!("unknown mode `{other}` (passthrough, e2e, sqlite, mysql, every)"),
        };
        let d = match &db {
            Some(db) => database(&rt, db, predictions)?,
            None => Durability::KafkaOffsets,
        };
        rates.push(through_kafka(&engine, &broker, n, d, &format!("one{i}"))?);
    }
    Ok(median(rates))
}

pub fn run(n: u64, events: Option<Vec<Event>>, runs: usize) -> Result<()> {
    let evs = match events {
        Some(e) => e,
        None => weir_workload::Generator::new(n, 42).collect(),
    };
    let lines: Vec<Vec<u8>> = evs.iter().map(|e| to_json_line(e).into_bytes()).collect();
    drop(evs);
    let n = lines.len() as u64;
    let runs = runs.max(3);
    println!(
        "bench pipeline: jobs 1 + 2 of the workload (examples/workload.toml) over {n} events, medians of {runs} runs"
    );
    let (engine_rate, results, windows) = engine_only(&lines, runs).context("engine-only run")?;
    println!(
        "  engine only (in memory, 1 worker)                       {engine_rate:>10.0} events/s  ({results} results, {windows} window results)"
    );

    let engine = Engine::new(EngineOptions::default())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (broker, produce_rate) = loaded_broker(&lines)?;
    println!(
        "  producing the input (acks=all, idempotent)              {produce_rate:>10.0} events/s"
    );
    let (mut pass, mut e2e, mut lite, mut maria, mut every) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        pass.push(passthrough(&broker.bootstrap(), n).context("passthrough")?);
        e2e.push(
            through_kafka(
                &engine,
                &broker,
                n,
                Durability::KafkaOffsets,
                &format!("e2e{i}"),
            )
            .context("end to end")?,
        );
        for (db, out, predictions) in [
            (sqlite_db("sqlite"), &mut lite, false),
            (mysql_db(&rt, "mysql")?, &mut maria, false),
            (sqlite_db("every"), &mut every, true),
        ] {
            let durability = database(&rt, &db, predictions)?;
            out.push(
                through_kafka(&engine, &broker, n, durability, &format!("durable{i}"))
                    .with_context(|| format!("durable run on {}", db.url()))?,
            );
        }
    }
    let (pass, e2e, lite, maria, every) = (
        median(pass),
        median(e2e),
        median(lite),
        median(maria),
        median(every),
    );
    println!("  passthrough (rdkafka consume -> produce, no pipeline)   {pass:>10.0} events/s");
    println!("  end to end, results to topics, no database              {e2e:>10.0} events/s");
    println!("  durable, SQLite (windows, state, positions)             {lite:>10.0} events/s");
    println!("  durable, MariaDB (windows, state, positions)            {maria:>10.0} events/s");
    println!("  durable, SQLite, every prediction stored too            {every:>10.0} events/s");
    drop(broker);

    let half = (lite / 2.0).max(1_000.0);
    let n_lat = (lines.len() as f64).min(half * 10.0) as usize;
    let ((p50, p99), db, achieved) =
        latency(&engine, &lines[..n_lat], half, false, None, None).context("latency run")?;
    let (db50, db99) = db.unwrap_or_default();
    println!(
        "  latency at {achieved:.0} events/s (half the durable SQLite rate), {n_lat} events: to the output topic p50 {p50:.0} ms, p99 {p99:.0} ms; to the committed checkpoint p50 {db50:.0} ms, p99 {db99:.0} ms"
    );
    let ((pass50, pass99), _, pass_rate) =
        latency(&engine, &lines[..n_lat], half, true, None, None)
            .context("passthrough latency run")?;
    println!(
        "  latency of the passthrough copier at {pass_rate:.0} events/s (no pipeline, no database; the broker's and clients' own): p50 {pass50:.0} ms, p99 {pass99:.0} ms"
    );
    let rec = recovery(&lines[..200_000.min(lines.len())], 3).context("recovery run")?;
    let recovery_s = median(rec.clone());
    println!(
        "  recovery after SIGKILL (kill -> first new result): {} s",
        rec.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "passthrough_events_per_s={pass:.0} e2e_events_per_s={e2e:.0} durable_sqlite_events_per_s={lite:.0} durable_mysql_events_per_s={maria:.0} engine_events_per_s={engine_rate:.0} p99_latency_ms={p99:.0} p99_latency_passthrough_ms={pass99:.0} recovery_s={recovery_s:.2} e2e_vs_passthrough={:.3} durable_sqlite_vs_e2e={:.3} durable_mysql_vs_e2e={:.3}",
        e2e / pass,
        lite / e2e,
        maria / e2e
    );
    Ok(())
}
