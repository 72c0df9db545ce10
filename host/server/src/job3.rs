//! Job 3 of the shared workload (online learning, prequential: test, then train) through
//! the real pipeline: events produced in file order to one partition of a Kafka broker,
//! consumed by the durable worker, every prediction stored in the database, and accuracy
//! computed from the stored predictions against the events' labels.
//!
//! Two variants:
//! - [`Variant::OnlineSgd`]: the Wasm `logistic` plugin learns by plain SGD in the stream
//!   (`model.train = true`), exactly as WORKLOAD.md defines job 3.
//! - [`Variant::Retraining`]: the host retrains logistic regression (linfa) on a window of
//!   recent labelled events and swaps a challenger in when it beats the serving model
//!   (`[training]`), with drift detection.

use crate::run::build_slots;
use anyhow::{Context, Result, bail};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_engine::{Engine, EngineOptions};
use weir_store::Store;
use weir_stream::pipeline::Pipeline;
use weir_stream::spec::PipelineSpec;
use weir_stream::training::TrainingStatus;
use weir_worker::kafka::{Broker, EmbeddedBroker, Producer};
use weir_worker::{Durability, WorkerOptions, spec_topics};
use weir_workload::Models;

/// Which job 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Plain SGD inside the Wasm `logistic` plugin.
    OnlineSgd,
    /// Periodic retraining in the host with champion/challenger swaps.
    Retraining,
}

impl Variant {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::OnlineSgd => "online-sgd",
            Variant::Retraining => "retraining",
        }
    }
}

/// The `[training]` section job 3's retraining variant uses.
pub const RETRAINING: &str = r#"
[training]
join = "event"
algorithm = "logistic"
grid = { alpha = [1.0], max_iter = [100] }
window_rows = 20000
every_rows = 2000
min_rows = 50
holdout = 0.2
metric = "accuracy"
margin = 0.0
drift = { recent = 100, z = 5.0 }
step_rows = 256
"#;

/// The pipeline spec of a variant: the workload's standardize extractor, and the
/// `logistic` model starting from zero.
pub fn spec_text(variant: Variant) -> String {
    let m = Models::load();
    let e = &m.event_model;
    let head = format!(
        r#"name = "job3-{name}"

[source]
topic = "events"
inputs_field = "x"
input_dims = 8
label_field = "label"

[extractor]
plugin = "standardize"
config = {{ mean = {mean:?}, std = {std:?} }}
"#,
        name = variant.name(),
        mean = e.x_mean,
        std = e.x_std,
    );
    let model = match variant {
        Variant::OnlineSgd => format!(
            "\n[model]\nplugin = \"logistic\"\nconfig = {{ dims = 9, lr = {:?}, intercept_lr = {:?} }}\ntrain = true\n",
            m.online_model.lr, m.online_model.intercept_lr
        ),
        Variant::Retraining => {
            "\n[model]\nplugin = \"logistic\"\nconfig = { dims = 9 }\n".to_string() + RETRAINING
        }
    };
    head + &model + "\n[sink]\ntopic = \"scores\"\ndead_letter_topic = \"dead-letters\"\n"
}

/// What a job 3 run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Events.
    pub events: usize,
    /// Accuracy over every event.
    pub prequential_acc: f64,
    /// Accuracy over the `post_drift_len` events from the drift on.
    pub post_drift_acc: f64,
    /// Accuracy over the events before the drift.
    pub pre_drift_acc: f64,
    /// Accuracy over each tenth of the stream.
    pub by_tenth: Vec<f64>,
    /// Seconds from the worker's start to the last event processed.
    pub seconds: f64,
    /// The trainer's figures (retraining only).
    pub training: Option<TrainingStatus>,
    /// Training decisions stored in the database.
    pub decisions_stored: usize,
    /// Stored decisions that promoted a challenger.
    pub promoted_stored: usize,
    /// Model versions that served, in order of first use.
    pub versions: Vec<String>,
}

/// Most events produced ahead of the worker: the embedded broker keeps about 5 MiB per
/// partition, so the stream is fed as it is consumed.
const AHEAD: u64 = 20_000;

/// Runs job 3 on `lines` (JSON events in stream order, with labels `labels`), through a
/// fresh embedded broker and the durable worker writing to `db_url`. Accuracy after the
/// drift is over `drift_at .. drift_at + post_drift_len`. The pipeline's rows (named
/// `job3-<variant>`) are cleared first and left in the database afterwards.
pub fn run(
    variant: Variant,
    lines: &[String],
    labels: &[u8],
    drift_at: usize,
    post_drift_len: usize,
    db_url: &str,
) -> Result<Report> {
    let n = lines.len();
    if labels.len() != n || drift_at >= n {
        bail!("job 3 needs a label per event and a drift inside the stream");
    }
    let spec =
        PipelineSpec::parse(&spec_text(variant)).map_err(|e| anyhow::anyhow!("job 3 spec: {e}"))?;
    let name = spec.name.get_ref().clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let store = Arc::new(rt.block_on(Store::connect(db_url))?);
    rt.block_on(store.reset_pipeline(&name))?;
    let broker = Broker::Embedded(Arc::new(EmbeddedBroker::start()?));
    let engine = Engine::new(EngineOptions::default())?;
    let pipeline = Pipeline::new(&spec, build_slots(&engine, &spec)?)?;
    let training = pipeline.training();
    let opts = WorkerOptions {
        batch: 2048,
        ..WorkerOptions::new(
            broker.clone(),
            Durability::Database {
                store: store.clone(),
                rt: rt.handle().clone(),
                predictions: true,
            },
        )
    };
    // The feeder writes before the worker starts: the topics must exist first.
    broker.ensure_topics(&spec_topics(&spec))?;
    let (stop, progress) = (opts.stop.clone(), opts.progress.clone());
    let consumed = move || -> u64 {
        progress
            .lock()
            .map(|p| p.stats.records_in)
            .unwrap_or_default()
    };
    // The feeder: in order, to the one partition, never more than AHEAD in front of the
    // worker; it stops the worker once every event was consumed.
    let bootstrap = broker.bootstrap();
    let feed: Vec<(String, Vec<u8>)> = lines
        .iter()
        .map(|l| {
            let key = serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("key").and_then(|k| k.as_str().map(str::to_owned)))
                .unwrap_or_default();
            (key, l.as_bytes().to_vec())
        })
        .collect();
    let feeder_error = Arc::new(Mutex::new(None::<String>));
    let feeder = {
        let (stop, err) = (stop.clone(), feeder_error.clone());
        std::thread::spawn(move || {
            let result = (|| -> Result<()> {
                let mut p = Producer::new(&bootstrap)?;
                for (i, (key, payload)) in feed.iter().enumerate() {
                    while i as u64 >= consumed() + AHEAD {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    p.send("events", key, payload)?;
                }
                p.flush(Duration::from_secs(60))?;
                let waited = Instant::now();
                while consumed() < feed.len() as u64 {
                    if waited.elapsed() > Duration::from_secs(300) {
                        bail!(
                            "the worker stalled at {} of {} events",
                            consumed(),
                            feed.len()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            })();
            if let Err(e) = result
                && let Ok(mut g) = err.lock()
            {
                *g = Some(format!("{e:#}"));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let worker = weir_worker::run(&spec, pipeline, opts);
    let seconds = started.elapsed().as_secs_f64();
    let _ = feeder.join();
    worker.context("the durable worker")?;
    if let Some(e) = feeder_error.lock().ok().and_then(|g| g.clone()) {
        bail!("feeding the events: {e}");
    }

    let predictions = rt.block_on(store.predictions(&name))?;
    if predictions.len() != n {
        bail!("{} stored predictions for {n} events", predictions.len());
    }
    let mut correct = vec![false; n];
    let mut seen = vec![false; n];
    let mut versions: Vec<String> = Vec::new();
    for p in &predictions {
        let i = usize::try_from(p.offset).context("a negative offset")?;
        if i >= n || seen[i] {
            bail!("prediction for offset {i} is out of range or repeated");
        }
        seen[i] = true;
        let score = p.score.context("a prediction without a score")?;
        correct[i] = (score > 0.5) == (labels[i] == 1);
        if !versions.contains(&p.model_version) {
            versions.push(p.model_version.clone());
        }
    }
    let acc = |r: std::ops::Range<usize>| -> f64 {
        let len = r.len().max(1);
        correct[r].iter().filter(|c| **c).count() as f64 / len as f64
    };
    let runs = rt.block_on(store.training_runs(&name, "model", 1_000_000, None))?;
    let report = Report {
        events: n,
        prequential_acc: acc(0..n),
        post_drift_acc: acc(drift_at..(drift_at + post_drift_len).min(n)),
        pre_drift_acc: acc(0..drift_at),
        by_tenth: (0..10).map(|t| acc(t * n / 10..(t + 1) * n / 10)).collect(),
        seconds,
        training: training.map(|t| t.status()),
        decisions_stored: runs.len(),
        promoted_stored: runs.iter().filter(|r| r.outcome == "promoted").count(),
        versions,
    };
    Ok(report)
}
