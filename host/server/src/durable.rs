//! The durable worker: a pipeline over Kafka whose results, keyed state, model snapshots
//! and positions live in a database (MySQL/MariaDB or SQLite), written effectively once.
//!
//! How it holds together:
//! - At start, the topics the spec names are created when missing.
//! - On assignment, each partition is *claimed* in the database: its owner epoch goes up by
//!   one, and the consumer starts the partition at the database's position, after checking
//!   it against the broker's log (see [`crate::gaps`]: a missing stretch of input stops the
//!   pipeline, or with `on_gap = "skip"` is recorded and skipped; Kafka's committed offsets
//!   are only updated afterwards, for monitoring). The partition's watermark and keyed
//!   state are restored, and the model's latest snapshot is restored at start.
//! - Records are processed in batches; their outputs and state changes accumulate until the
//!   next checkpoint (every `commit_interval` or `commit_rows`). A checkpoint is one
//!   transaction: the epoch-guarded position update of every partition first
//!   (`UPDATE … WHERE owner_epoch = ?`: a stale owner is fenced and writes nothing), then
//!   idempotent upserts of predictions and window results, the keyed-state changes, the
//!   model's snapshot when it trained, and the gaps the new positions move past. Before it,
//!   every output sent so far is delivered to its topic, so the topics never hold less than
//!   a checkpoint says was done; a record the broker refuses fails the worker.
//! - A crash at any point loses only uncommitted work, which the next owner redoes from the
//!   stored offsets with the stored state: the database ends up exactly as after a
//!   crash-free run. Records at offsets below the stored position are skipped if the broker
//!   redelivers them.
//!
//! Outputs to Kafka topics (results, windows, late events, dead letters) are at-least-once:
//! a replay after a crash can produce some of them again. The database is the
//! effectively-once copy.

use crate::kafka::{Broker, DELIVERY_TIMEOUT, Owned, Producer};
use crate::run::{Progress, now_ms, produce_outputs};
use crate::source::{Change, Owning, Source, SourceOptions};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use weir_store::{
    CommitBatch, NewDeployment, NewGap, NewSnapshot, NewTrainingRun, PartitionCommit, Prediction,
    StateChange, Store, StoreError, WindowResult,
};
use weir_stream::pipeline::{Outputs, Pipeline, SourceRecord};
use weir_stream::spec::PipelineSpec;
use weir_stream::training::{Decision, TrainingShared};

/// How a durable worker runs.
pub struct DurableOptions {
    /// Set to stop the worker (it commits what it has first).
    pub stop: Arc<AtomicBool>,
    /// Live figures.
    pub progress: Arc<Mutex<Progress>>,
    /// Stop once every assigned partition is consumed up to the offset it had at start
    /// (its high watermark then), firing every open window first.
    pub until_end: bool,
    /// Checkpoint at least this often.
    pub commit_interval: Duration,
    /// Checkpoint once this many output rows are pending.
    pub commit_rows: usize,
    /// Records per poll.
    pub batch: usize,
    /// Write per-event predictions to the database (window results always are).
    pub store_predictions: bool,
    /// Consumer group (default `weir-<pipeline name>`).
    pub group: Option<String>,
    /// The broker (its topics are created at start when missing).
    pub broker: Broker,
    /// Fail when no partition is assigned for this long (`None`: wait, warning every 30 s).
    pub assign_timeout: Option<Duration>,
}

impl DurableOptions {
    /// The defaults, on `broker`.
    pub fn new(broker: Broker) -> Self {
        DurableOptions {
            stop: Arc::default(),
            progress: Arc::default(),
            until_end: false,
            commit_interval: Duration::from_millis(1000),
            commit_rows: 20_000,
            batch: 2048,
            store_predictions: true,
            group: None,
            broker,
            assign_timeout: None,
        }
    }
}

/// What a durable worker did.
#[derive(Debug, Default, Clone)]
pub struct DurableReport {
    /// Records processed (not counting skipped replays).
    pub records: u64,
    /// Records skipped because the database already had them.
    pub skipped: u64,
    /// Checkpoints committed.
    pub commits: u64,
    /// Rows written by those commits.
    pub rows: u64,
    /// Time spent inside commits.
    pub commit_time: Duration,
    /// Version switches recorded in the `deployments` table.
    pub switches_recorded: usize,
    /// Input gaps recorded (`on_gap = "skip"`, or a restarted embedded broker).
    pub gaps: u64,
}

/// Runs a durable worker until stopped (or, with `until_end`, until the input is consumed).
pub fn run_durable(
    spec: &PipelineSpec,
    mut pipeline: Pipeline,
    store: Arc<Store>,
    rt: Handle,
    opts: DurableOptions,
) -> Result<DurableReport> {
    let name = spec.name.get_ref().clone();
    pipeline.enable_checkpoints();
    let mut parent_snapshot = None;
    let mut trained: HashMap<String, i64> = HashMap::new();
    if spec.training.is_some() {
        // Serve the model that was promoted last, as it was promoted.
        if let Some((run, snap)) = rt.block_on(store.latest_promoted(&name, "model"))? {
            let version = pipeline
                .resume_trained(snap.bytes)
                .with_context(|| format!("serving the trained model of snapshot {}", snap.id))?;
            tracing::info!(
                "serving the model promoted by training run {} (snapshot {}, version {version})",
                run.id,
                snap.id
            );
            trained.insert(version.to_string(), snap.id);
        }
    } else if spec.model.is_some()
        && let Some(snap) = rt.block_on(store.latest_snapshot(&name, "model"))?
    {
        pipeline
            .restore_model(&snap.bytes)
            .with_context(|| format!("restoring model snapshot {}", snap.id))?;
        tracing::info!(
            "restored the model from snapshot {} ({} bytes)",
            snap.id,
            snap.bytes.len()
        );
        parent_snapshot = Some(snap.id);
    }

    let broker = &opts.broker;
    broker.ensure_topics(&spec_topics(spec))?;
    let bootstrap = broker.bootstrap();
    let group = opts.group.clone().unwrap_or_else(|| format!("weir-{name}"));
    let mut source = Source::open(
        SourceOptions {
            bootstrap: &bootstrap,
            group: &group,
            topic: spec.source.topic.get_ref(),
            pipeline: &name,
            on_gap: spec.source.on_gap,
            embedded: broker.is_embedded(),
            until_end: opts.until_end,
        },
        store.clone(),
        rt.clone(),
    )?;
    let mut producer = Producer::new(&bootstrap)?;
    let sink = &spec.sink;
    let mut records: Vec<Owned> = Vec::with_capacity(opts.batch);
    let mut kept: Vec<(usize, i64)> = Vec::with_capacity(opts.batch);
    let mut out = Outputs::default();
    let mut pending = Outputs::default();
    let mut ck = Checkpointer {
        rt: &rt,
        store: &store,
        name: &name,
        store_predictions: opts.store_predictions,
        parent_snapshot,
        training: pipeline.training(),
        trained,
        report: DurableReport::default(),
    };
    let mut last_commit = Instant::now();
    let mut last_idle_warning = Instant::now();
    let mut finished = false;
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            break;
        }
        records.clear();
        // Partition changes come with the poll: apply them before looking at the records,
        // which may come from a partition assigned during this very poll.
        for change in source.poll(opts.batch, Duration::from_millis(50), &mut records)? {
            match change {
                Change::Assigned {
                    partition,
                    watermark,
                    state,
                } => {
                    let entries: Vec<(String, String, Vec<u8>)> = state
                        .into_iter()
                        .map(|e| (e.namespace, e.key, e.value))
                        .collect();
                    pipeline.restore_partition(partition, watermark, &entries, now_ms())?;
                }
                Change::Revoked(p) => {
                    // Commit what we have for it while we may still own it; if another
                    // worker claimed it already, the commit is fenced and its work redone.
                    ck.commit(&mut pipeline, source.parts_mut(), &mut pending, &producer)?;
                    last_commit = Instant::now();
                    pipeline.revoke_partition(p);
                }
            }
        }
        if let Some(idle) = source.idle_for() {
            if let Some(limit) = opts.assign_timeout
                && idle >= limit
            {
                bail!(
                    "no partition of `{}` was assigned to this worker within {} s: another \
                     worker of group `{group}` holds them all, or the topic has none",
                    spec.source.topic.get_ref(),
                    limit.as_secs()
                );
            }
            if last_idle_warning.elapsed() >= Duration::from_secs(30)
                && idle >= Duration::from_secs(30)
            {
                tracing::warn!(
                    "{name}: no partition of `{}` assigned for {} s (group `{group}`)",
                    spec.source.topic.get_ref(),
                    idle.as_secs()
                );
                last_idle_warning = Instant::now();
            }
        }
        kept.clear();
        source.admit(&records, &mut kept)?;
        out.clear();
        if kept.is_empty() {
            pipeline.tick(now_ms(), &mut out)?;
        } else {
            let batch: Vec<SourceRecord<'_>> = kept
                .iter()
                .map(|&(i, pos)| SourceRecord {
                    partition: records[i].partition,
                    offset: pos,
                    payload: &records[i].payload,
                })
                .collect();
            pipeline.process(&batch, now_ms(), &mut out)?;
            ck.report.records += batch.len() as u64;
        }
        source.judge_alerts()?;
        if opts.until_end && source.at_end() {
            pipeline.flush(&mut out)?;
            finished = true;
        }
        produce_outputs(&mut producer, sink, &mut out)?;
        producer.check()?;
        if let Ok(mut p) = opts.progress.lock()
            && p.samples.len() < 3
        {
            p.samples
                .extend(out.results.iter().take(3).map(|r| r.payload.clone()));
        }
        pending.results.append(&mut out.results);
        pending.windows.append(&mut out.windows);
        if pending.len() >= opts.commit_rows
            || last_commit.elapsed() >= opts.commit_interval
            || finished
        {
            ck.commit(&mut pipeline, source.parts_mut(), &mut pending, &producer)?;
            last_commit = Instant::now();
            if let Err(e) = source.consumer().commit_offsets(&source.broker_offsets()) {
                tracing::debug!("committing offsets to Kafka (monitoring only): {e:#}");
            }
        }
        if let Ok(mut p) = opts.progress.lock() {
            p.stats = pipeline.stats().clone();
            p.produced = producer.sent();
            p.partitions = source.parts().len();
            p.idle_for = source.idle_for();
            p.skipped = source.skipped;
            p.source_errors = source.consumer().errors().0;
            if p.switches.len() != pipeline.switches().len() {
                p.switches = pipeline.switches().to_vec();
            }
        }
        if finished {
            break;
        }
    }
    // Fits still running record their decisions with the last checkpoint.
    pipeline.settle_training();
    ck.commit(&mut pipeline, source.parts_mut(), &mut pending, &producer)?;
    producer.flush(DELIVERY_TIMEOUT)?;
    ck.report.skipped = source.skipped;
    source.into_consumer().close(Duration::from_secs(5));
    Ok(ck.report)
}

/// Every topic a spec reads or writes, with the partitions weir creates it with when it is
/// missing: the source's `partitions` (default 1) and one for each output. (A shadow's topic
/// is created when a shadow starts.)
pub fn spec_topics(spec: &PipelineSpec) -> Vec<(String, i32)> {
    let source = spec
        .source
        .partitions
        .as_ref()
        .map_or(1, |p| i32::try_from(*p.get_ref()).unwrap_or(1));
    let mut out = vec![(spec.source.topic.get_ref().clone(), source)];
    for t in [
        Some(spec.sink.topic.clone()),
        spec.sink.windows_topic.clone(),
        spec.sink.late_topic.clone(),
        Some(spec.sink.dead_letter_topic.clone()),
    ]
    .into_iter()
    .flatten()
    {
        if !out.iter().any(|(n, _)| *n == t) {
            out.push((t, 1));
        }
    }
    out
}

/// Writes checkpoints for one worker, and keeps what they need between calls.
struct Checkpointer<'a> {
    rt: &'a Handle,
    store: &'a Store,
    name: &'a str,
    store_predictions: bool,
    /// The model snapshot the next one descends from.
    parent_snapshot: Option<i64>,
    /// The trainer's decisions, when the model trains in the host.
    training: Option<Arc<TrainingShared>>,
    /// Snapshot ids of the trained versions promoted so far (the parents of later ones).
    trained: HashMap<String, i64>,
    report: DurableReport,
}

impl Checkpointer<'_> {
    /// One checkpoint: everything pending, the state changes and the positions, in one
    /// transaction.
    ///
    /// The outputs sent so far are delivered first: the topics always hold at least what a
    /// checkpoint says was done, so a crash right after it loses no output.
    fn commit(
        &mut self,
        pipeline: &mut Pipeline,
        parts: &mut BTreeMap<i32, Owning>,
        pending: &mut Outputs,
        producer: &Producer,
    ) -> Result<()> {
        let Checkpointer {
            rt,
            store,
            name,
            store_predictions,
            parent_snapshot,
            training,
            trained,
            report,
        } = self;
        let (rt, store, name) = (*rt, *store, *name);
        if parts.is_empty() {
            pending.clear();
            return Ok(());
        }
        let mut by_part: BTreeMap<i32, Vec<StateChange>> = BTreeMap::new();
        for c in pipeline.take_changes() {
            let p = if parts.contains_key(&c.partition) {
                c.partition
            } else {
                tracing::warn!(
                    "state of key `{}` belongs to no owned partition ({}); dropped",
                    c.key,
                    c.partition
                );
                continue;
            };
            by_part.entry(p).or_default().push(StateChange {
                namespace: c.namespace,
                key: c.key,
                value: c.value,
            });
        }
        let partitions = parts
            .iter()
            .map(|(&p, s)| PartitionCommit {
                partition: p,
                epoch: s.epoch,
                next_offset: s.position.next,
                source: s.position.source.clone(),
                offset_base: s.position.base,
                watermark: pipeline.partition_watermark(p),
                state: by_part.remove(&p).unwrap_or_default(),
            })
            .collect();
        let gaps: Vec<NewGap> = parts
            .values()
            .flat_map(|s| s.gaps.iter().cloned())
            .collect();
        let predictions = if *store_predictions {
            pending
                .results
                .iter()
                .filter(|r| r.meta.offset >= 0)
                .map(|r| Prediction {
                    partition: r.meta.partition,
                    offset: r.meta.offset,
                    key: r.key.clone(),
                    ts: r.meta.ts,
                    score: r.meta.score,
                    output: r.payload.clone(),
                    model_version: r.meta.version.clone(),
                    extractor_version: r.meta.extractor_version.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let window_results = pending
            .windows
            .iter()
            .map(|r| WindowResult {
                key: r.key.clone(),
                window_start: r.meta.ts,
                window_end: r.meta.window_end,
                partition: r.meta.partition,
                output: r.payload.clone(),
                version: r.meta.version.clone(),
            })
            .collect();
        let snapshot = pipeline.model_snapshot()?.map(|(sha, bytes)| NewSnapshot {
            stage: "model".into(),
            plugin_sha256: sha,
            parent_id: *parent_snapshot,
            bytes,
            from_offset: None,
            to_offset: None,
            metrics: "{}".into(),
        });
        producer
            .flush(DELIVERY_TIMEOUT)
            .context("delivering outputs before a checkpoint")?;
        let started = Instant::now();
        let result = rt.block_on(store.commit(CommitBatch {
            pipeline: name.to_string(),
            partitions,
            predictions,
            window_results,
            snapshot,
            gaps,
        }));
        report.commit_time += started.elapsed();
        match result {
            Ok(stats) => {
                // Record where each stage's version took effect, per partition (the switches
                // up to this checkpoint).
                for sw in &pipeline.switches()[report.switches_recorded..] {
                    rt.block_on(store.record_deployment(NewDeployment {
                        pipeline: name.to_string(),
                        stage: sw.stage.clone(),
                        plugin_sha256: sw.plugin.clone(),
                        version_label: sw.version.to_string(),
                        actor: "weir run".into(),
                        at_ms: crate::run::now_ms() as i64,
                        partition: Some(sw.partition),
                        offset: Some(sw.offset),
                    }))
                    .context("recording a deployment")?;
                }
                report.switches_recorded = pipeline.switches().len();
                if let Some(t) = training {
                    for d in t.take_decisions() {
                        record_decision(rt, store, name, trained, d)?;
                    }
                }
                report.commits += 1;
                report.rows += stats.rows_written;
                for s in parts.values_mut() {
                    report.gaps += s.gaps.len() as u64;
                    s.gaps.clear();
                }
                if stats.snapshot_id.is_some() {
                    *parent_snapshot = stats.snapshot_id;
                }
                pending.clear();
                Ok(())
            }
            Err(e @ StoreError::Fenced { .. }) => {
                bail!(
                    "{e}: another worker owns the partition now; this worker stops and its uncommitted work is redone by the owner"
                )
            }
            Err(e) => Err(e).context("committing a checkpoint"),
        }
    }
}

/// Stores one training decision with its candidate's snapshot, whose parent is the
/// champion's snapshot (when the champion was itself trained).
fn record_decision(
    rt: &Handle,
    store: &Store,
    name: &str,
    trained: &mut HashMap<String, i64>,
    d: Decision,
) -> Result<()> {
    let detail = serde_json::to_string(&d).context("encoding a training decision")?;
    let run = rt
        .block_on(store.record_training(NewTrainingRun {
            pipeline: name.to_string(),
            stage: "model".into(),
            outcome: d.outcome.clone(),
            trigger: d.trigger.clone(),
            version: d.version.clone().unwrap_or_default(),
            champion_version: d.champion_version.clone(),
            plugin_sha256: d.plugin_sha256.clone(),
            metric: d.metric.clone(),
            challenger_score: d.challenger_score,
            champion_score: d.champion_score,
            detail,
            at_ms: d.at_ms,
            snapshot: d.snapshot,
            from_offset: d.window.from_offset(),
            to_offset: d.window.to_offset(),
            parent_snapshot_id: trained.get(&d.champion_version).copied(),
        }))
        .context("recording a training decision")?;
    if d.outcome == "promoted"
        && let (Some(v), Some(sid)) = (d.version, run.snapshot_id)
    {
        trained.insert(v, sid);
    }
    Ok(())
}
