//! Wiring: resolves a spec's plugins, builds the stage slots, and runs a pipeline worker
//! over Kafka (consume → pipeline → produce, commit after delivery).

use crate::kafka::{Consumer, Owned, Producer, SendError};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_engine::{Deployment, Engine, Manifest, Slot};
use weir_stream::pipeline::{
    Outputs, Pipeline, SinkRecord, SourceRecord, StageSlots, Stats, Switch, push_json_str,
};
use weir_stream::spec::{PipelineSpec, SinkSpec, StageSpec};

/// Finds a plugin's bytes: a built-in example plugin by name, or a path to a `.wasm`.
pub fn resolve_plugin(name: &str) -> Result<Vec<u8>> {
    let builtin = match name {
        "standardize" => Some(weir_guests::plugins::STANDARDIZE),
        "logistic" => Some(weir_guests::plugins::LOGISTIC),
        "window-stats" => Some(weir_guests::plugins::WINDOW_STATS),
        "kmeans" => Some(weir_guests::plugins::KMEANS),
        _ => None,
    };
    let path = builtin.map(Path::new).unwrap_or_else(|| Path::new(name));
    if !path.exists() {
        bail!(
            "plugin `{name}` is neither a built-in example plugin (standardize, logistic, window-stats, kmeans) nor a file"
        );
    }
    std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))
}

/// Compiles a stage's plugin and wraps it in a slot.
pub fn stage_slot(engine: &Engine, stage: &StageSpec) -> Result<Arc<Slot>> {
    let bytes = resolve_plugin(stage.plugin.get_ref())?;
    let manifest: Manifest = serde_json::from_str(&stage.manifest_json())
        .with_context(|| format!("limits/grants of stage `{}`", stage.plugin.get_ref()))?;
    let plugin = engine
        .load(&bytes, manifest)
        .with_context(|| format!("loading plugin `{}`", stage.plugin.get_ref()))?;
    Ok(Slot::new(Deployment::new(plugin, stage.config_json())))
}

/// The slots of every Wasm stage of a spec.
pub fn build_slots(engine: &Engine, spec: &PipelineSpec) -> Result<StageSlots> {
    Ok(StageSlots {
        extractor: spec
            .extractor
            .as_ref()
            .map(|s| stage_slot(engine, s))
            .transpose()?,
        model: spec
            .model
            .as_ref()
            .map(|s| stage_slot(engine, s))
            .transpose()?,
        operators: spec
            .operators
            .iter()
            .map(|s| stage_slot(engine, s))
            .collect::<Result<_>>()?,
        window_operator: spec
            .window
            .as_ref()
            .and_then(|w| w.operator.as_ref())
            .map(|s| stage_slot(engine, s))
            .transpose()?,
        variants: Default::default(),
    })
}

/// Live figures of a running worker.
#[derive(Default)]
pub struct Progress {
    /// Pipeline counters.
    pub stats: Stats,
    /// A few recent results.
    pub samples: Vec<String>,
    /// Version switches.
    pub switches: Vec<Switch>,
    /// Messages produced.
    pub produced: u64,
    /// Partitions of the source owned now.
    pub partitions: usize,
    /// How long no partition has been owned, if none is.
    pub idle_for: Option<std::time::Duration>,
    /// Source records skipped as already processed (replays after a restart).
    pub skipped: u64,
    /// Consumer errors so far (the broker unreachable, for example).
    pub source_errors: u64,
}

/// Milliseconds since the Unix epoch (processing time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sends a batch's outputs to the sink's topics (results, windows, late events, dead
/// letters) and serves delivery reports. A result or window record too large for its topic
/// becomes a dead letter that says so (without the record); a dead letter that cannot be
/// written is an error.
pub fn produce_outputs(producer: &mut Producer, sink: &SinkSpec, out: &mut Outputs) -> Result<()> {
    let mut oversize = Vec::new();
    let mut send = |producer: &mut Producer, topic: &str, r: &SinkRecord| -> Result<()> {
        match producer.send(topic, &r.key, r.payload.as_bytes()) {
            Ok(()) => Ok(()),
            Err(SendError::TooLarge { topic, size }) => {
                oversize.push(too_large(&topic, size, r));
                Ok(())
            }
            Err(SendError::Failed(e)) => Err(e),
        }
    };
    for r in &out.results {
        send(producer, &sink.topic, r)?;
    }
    if let Some(t) = &sink.windows_topic {
        for r in &out.windows {
            send(producer, t, r)?;
        }
    }
    if let Some(t) = &sink.late_topic {
        for r in &out.late {
            send(producer, t, r)?;
        }
    }
    if !out.shadow.is_empty() {
        let topic = sink.shadow_topic();
        for r in &out.shadow {
            send(producer, &topic, r)?;
        }
    }
    out.dead.append(&mut oversize);
    for r in &out.dead {
        producer
            .send(&sink.dead_letter_topic, &r.key, r.payload.as_bytes())
            .with_context(|| {
                format!(
                    "writing a dead letter to `{}` (records that fail must not vanish)",
                    sink.dead_letter_topic
                )
            })?;
    }
    producer.poll();
    Ok(())
}

/// The dead letter for an output record its topic would not take.
fn too_large(topic: &str, size: usize, r: &SinkRecord) -> SinkRecord {
    let mut p = String::with_capacity(160);
    p.push_str("{\"reason\":\"output too large for its topic\",\"stage\":\"sink\",\"topic\":");
    push_json_str(&mut p, topic);
    let _ = write!(
        p,
        ",\"bytes\":{size},\"key\":{},\"partition\":{},\"offset\":{}}}",
        serde_json::Value::from(r.key.as_str()),
        r.meta.partition,
        r.meta.offset
    );
    SinkRecord {
        key: r.key.clone(),
        payload: p,
        meta: r.meta.clone(),
    }
}

/// How a worker runs.
#[derive(Default)]
pub struct WorkerOptions {
    /// Set to stop the worker.
    pub stop: Arc<AtomicBool>,
    /// Live figures, updated after every batch.
    pub progress: Arc<Mutex<Progress>>,
    /// Stop after this many source records, firing every open window first (a bounded
    /// input, for tests and benchmarks).
    pub max_records: Option<u64>,
    /// Records per poll (default 1024).
    pub batch: Option<usize>,
}

/// Runs one pipeline worker until stopped: consume a batch, process it, produce the
/// outputs, and commit offsets once their outputs are acknowledged (tracked through the
/// delivery reports, so the stream never waits for a flush). Returns the pipeline
/// (with its counters and version switches).
pub fn run_worker(
    spec: &PipelineSpec,
    mut pipeline: Pipeline,
    bootstrap: &str,
    opts: WorkerOptions,
) -> Result<Pipeline> {
    let WorkerOptions {
        stop,
        progress,
        max_records,
        batch,
    } = opts;
    let batch = batch.unwrap_or(1024);
    let mut consumer = Consumer::new(
        bootstrap,
        &format!("weir-{}", spec.name.get_ref()),
        spec.source.topic.get_ref(),
    )?;
    let mut producer = Producer::new(bootstrap)?;
    let sink = &spec.sink;
    let mut records: Vec<Owned> = Vec::with_capacity(1024);
    let mut out = Outputs::default();
    let mut last_commit = Instant::now();
    let mut pending_commits: std::collections::VecDeque<(
        u64,
        std::collections::BTreeMap<i32, i64>,
    )> = std::collections::VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        for (assigned, parts) in consumer.take_rebalances()? {
            for p in parts {
                if assigned {
                    pipeline.assign_partition(p, now_ms());
                } else {
                    pipeline.revoke_partition(p);
                }
            }
        }
        records.clear();
        let want = match max_records {
            Some(m) => (m.saturating_sub(pipeline.stats().records_in) as usize).min(batch),
            None => batch,
        };
        consumer.poll_batch(want.max(1), Duration::from_millis(50), &mut records)?;
        out.clear();
        let done =
            max_records.is_some_and(|m| pipeline.stats().records_in + records.len() as u64 >= m);
        if records.is_empty() {
            pipeline.tick(now_ms(), &mut out)?;
        } else {
            let batch: Vec<SourceRecord<'_>> = records
                .iter()
                .map(|r| SourceRecord {
                    partition: r.partition,
                    offset: r.offset,
                    payload: &r.payload,
                })
                .collect();
            pipeline.process(&batch, now_ms(), &mut out)?;
            if done {
                pipeline.flush(&mut out)?;
            }
        }
        produce_outputs(&mut producer, sink, &mut out)?;
        // At-least-once without stalling the stream: every second, note the offsets
        // consumed so far and how many messages had been sent for them; commit those
        // offsets once that many deliveries are acknowledged.
        if last_commit.elapsed() >= Duration::from_secs(1) {
            pending_commits.push_back((producer.sent(), consumer.positions()));
            last_commit = Instant::now();
        }
        if producer.failed() > 0 {
            producer.flush(Duration::from_secs(30))?;
        }
        while let Some((mark, _)) = pending_commits.front() {
            if producer.delivered() < *mark {
                break;
            }
            if let Some((_, offsets)) = pending_commits.pop_front() {
                consumer.commit_offsets(&offsets)?;
            }
        }
        if let Ok(mut p) = progress.lock() {
            p.stats = pipeline.stats().clone();
            p.produced = producer.sent();
            if p.samples.len() < 3 {
                p.samples
                    .extend(out.results.iter().take(3).map(|r| r.payload.clone()));
            }
            if p.switches.len() != pipeline.switches().len() {
                p.switches = pipeline.switches().to_vec();
            }
        }
        if done {
            break;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    consumer.commit()?;
    consumer.close(Duration::from_secs(5));
    Ok(pipeline)
}
