//! The durable worker: a pipeline over Kafka whose results, keyed state, model snapshots
//! and positions live in a database (MySQL/MariaDB or SQLite), written effectively once.
//!
//! How it holds together:
//! - On assignment, each partition is *claimed* in the database: its owner epoch goes up by
//!   one, and the consumer starts the partition at the database's next offset (Kafka's
//!   committed offsets are only updated afterwards, for monitoring). The partition's
//!   watermark and keyed state are restored, and the model's latest snapshot is restored at
//!   start.
//! - Records are processed in batches; their outputs and state changes accumulate until the
//!   next checkpoint (every `commit_interval` or `commit_rows`). A checkpoint is one
//!   transaction: the epoch-guarded position update of every partition first
//!   (`UPDATE … WHERE owner_epoch = ?`: a stale owner is fenced and writes nothing), then
//!   idempotent upserts of predictions and window results, the keyed-state changes, and the
//!   model's snapshot when it trained.
//! - A crash at any point loses only uncommitted work, which the next owner redoes from the
//!   stored offsets with the stored state: the database ends up exactly as after a
//!   crash-free run. Records at offsets below the stored position are skipped if the broker
//!   redelivers them.
//!
//! Outputs to Kafka topics (results, windows, late events, dead letters) are at-least-once:
//! a replay after a crash can produce some of them again. The database is the
//! effectively-once copy.

use crate::kafka::{AssignHook, Consumer, Owned, Producer};
use crate::run::{Progress, now_ms, produce_outputs};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use weir_store::{
    Claim, CommitBatch, NewDeployment, NewSnapshot, NewTrainingRun, PartitionCommit, Prediction,
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
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            stop: Arc::default(),
            progress: Arc::default(),
            until_end: false,
            commit_interval: Duration::from_millis(1000),
            commit_rows: 20_000,
            batch: 2048,
            store_predictions: true,
            group: None,
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
}

struct Part {
    epoch: i64,
    next_offset: i64,
    /// Offset where the run stops (`until_end`).
    end: Option<i64>,
}

/// Runs a durable worker until stopped (or, with `until_end`, until the input is consumed).
pub fn run_durable(
    spec: &PipelineSpec,
    mut pipeline: Pipeline,
    bootstrap: &str,
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

    // Claims happen on the consumer's thread inside the rebalance; the worker loop picks
    // them up to restore state.
    let claims: Arc<Mutex<HashMap<i32, Claim>>> = Arc::default();
    let hook: AssignHook = {
        let (store, rt, claims, name) = (store.clone(), rt.clone(), claims.clone(), name.clone());
        Arc::new(move |parts: &[i32]| {
            let mut offsets = BTreeMap::new();
            for &p in parts {
                let claim = rt
                    .block_on(store.claim(&name, p))
                    .with_context(|| format!("claiming partition {p}"))?;
                tracing::info!(
                    "claimed {name}/{p}: epoch {}, next offset {}",
                    claim.epoch,
                    claim.next_offset
                );
                offsets.insert(p, claim.next_offset);
                claims
                    .lock()
                    .map_err(|_| anyhow!("claims lock poisoned"))?
                    .insert(p, claim);
            }
            Ok(offsets)
        })
    };
    let mut consumer = Consumer::with_hook(
        bootstrap,
        &opts.group.clone().unwrap_or_else(|| format!("weir-{name}")),
        spec.source.topic.get_ref(),
        Some(hook),
    )?;
    let mut producer = Producer::new(bootstrap)?;
    let sink = &spec.sink;
    let mut parts: BTreeMap<i32, Part> = BTreeMap::new();
    let mut records: Vec<Owned> = Vec::with_capacity(opts.batch);
    let mut kept: Vec<usize> = Vec::with_capacity(opts.batch);
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
    let mut ever_assigned = false;
    let mut finished = false;
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            break;
        }
        records.clear();
        consumer.poll_batch(opts.batch, Duration::from_millis(50), &mut records)?;
        // Rebalances run inside poll: take them before looking at the records, which may
        // come from a partition assigned during this very poll.
        for (assigned, ps) in consumer.take_rebalances()? {
            for p in ps {
                if assigned {
                    let claim = claims
                        .lock()
                        .map_err(|_| anyhow!("claims lock poisoned"))?
                        .remove(&p)
                        .ok_or_else(|| anyhow!("partition {p} was assigned without a claim"))?;
                    let entries: Vec<(String, String, Vec<u8>)> = claim
                        .state
                        .into_iter()
                        .map(|e| (e.namespace, e.key, e.value))
                        .collect();
                    pipeline.restore_partition(p, claim.watermark, &entries, now_ms())?;
                    let end = if opts.until_end {
                        Some(consumer.watermarks(p, Duration::from_secs(10))?.1)
                    } else {
                        None
                    };
                    tracing::debug!("partition {p}: start {}, end {end:?}", claim.next_offset);
                    parts.insert(
                        p,
                        Part {
                            epoch: claim.epoch,
                            next_offset: claim.next_offset,
                            end,
                        },
                    );
                    ever_assigned = true;
                } else if parts.contains_key(&p) {
                    // Commit what we have for it while we may still own it; if another
                    // worker claimed it already, the commit is fenced and its work redone.
                    ck.commit(&mut pipeline, &parts, &mut pending)?;
                    last_commit = Instant::now();
                    pipeline.revoke_partition(p);
                    parts.remove(&p);
                }
            }
        }
        // Skip what the database already has (a broker may redeliver below the position
        // the partition was assigned at) and records of partitions we do not own.
        kept.clear();
        for (i, r) in records.iter().enumerate() {
            let Some(part) = parts.get_mut(&r.partition) else {
                ck.report.skipped += 1;
                continue;
            };
            if r.offset != part.next_offset {
                tracing::debug!(
                    "partition {}: expected offset {}, got {}",
                    r.partition,
                    part.next_offset,
                    r.offset
                );
            }
            if r.offset >= part.next_offset {
                part.next_offset = r.offset + 1;
                kept.push(i);
            } else {
                ck.report.skipped += 1;
            }
        }
        out.clear();
        if kept.is_empty() {
            pipeline.tick(now_ms(), &mut out)?;
        } else {
            let batch: Vec<SourceRecord<'_>> = kept
                .iter()
                .map(|&i| SourceRecord {
                    partition: records[i].partition,
                    offset: records[i].offset,
                    payload: &records[i].payload,
                })
                .collect();
            pipeline.process(&batch, now_ms(), &mut out)?;
            ck.report.records += batch.len() as u64;
        }
        let at_end = opts.until_end
            && ever_assigned
            && parts
                .values()
                .all(|p| p.end.is_some_and(|e| p.next_offset >= e));
        if at_end {
            pipeline.flush(&mut out)?;
            finished = true;
        }
        produce_outputs(&mut producer, sink, &out)?;
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
            ck.commit(&mut pipeline, &parts, &mut pending)?;
            last_commit = Instant::now();
            let next: BTreeMap<i32, i64> = parts.iter().map(|(p, s)| (*p, s.next_offset)).collect();
            if let Err(e) = consumer.commit_offsets(&next) {
                tracing::debug!("committing offsets to Kafka (monitoring only): {e:#}");
            }
        }
        if let Ok(mut p) = opts.progress.lock() {
            p.stats = pipeline.stats().clone();
            p.produced = producer.sent();
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
    ck.commit(&mut pipeline, &parts, &mut pending)?;
    producer.flush(Duration::from_secs(30))?;
    consumer.close(Duration::from_secs(5));
    Ok(ck.report)
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
    fn commit(
        &mut self,
        pipeline: &mut Pipeline,
        parts: &BTreeMap<i32, Part>,
        pending: &mut Outputs,
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
                next_offset: s.next_offset,
                watermark: pipeline.partition_watermark(p),
                state: by_part.remove(&p).unwrap_or_default(),
            })
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
        let started = Instant::now();
        let result = rt.block_on(store.commit(CommitBatch {
            pipeline: name.to_string(),
            partitions,
            predictions,
            window_results,
            snapshot,
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
