//! The one worker loop: a pipeline between a Kafka source and Kafka sinks, with its
//! checkpoints committed off the hot thread. `weir up`, `weir run`, `weir serve`, the
//! benchmarks and the tests all run this loop.
//!
//! Each round: poll a batch (partition changes come with it: an assigned partition's
//! watermark and keyed state are restored), admit the records (replays and gaps are judged
//! by the [`Source`]), process them, send the outputs, and every `commit_interval` (or
//! `commit_rows` outputs) cut a checkpoint: the pipeline's [`Checkpoint`] value plus the
//! positions, epochs and gaps, handed to the checkpointer (see [`Durability`]).
//!
//! [`Checkpoint`]: weir_stream::checkpoint::Checkpoint

use crate::checkpointer::{Checkpointer, CommitStats, Cut, Durability};
use crate::kafka::{Broker, DELIVERY_TIMEOUT, Membership, Owned, Producer};
use crate::sink::produce_outputs;
use crate::source::{Change, Positions, Source, SourceOptions};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_stream::checkpoint::CheckpointOptions;
use weir_stream::pipeline::{Outputs, Pipeline, SourceRecord, Stats, Switch};
use weir_stream::spec::{PipelineSpec, SinkSpec};

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
    pub idle_for: Option<Duration>,
    /// Source records skipped as already processed (replays after a restart).
    pub skipped: u64,
    /// Consumer errors so far (the broker unreachable, for example).
    pub source_errors: u64,
    /// What the checkpoints did so far.
    pub commits: CommitStats,
}

/// While a commit runs, outputs may pile up to this many times `commit_rows` before the
/// worker cuts anyway (and waits for the database when two cuts are queued).
const DEFER_ROWS: usize = 4;

/// The default [`WorkerOptions::fire_budget`].
pub const DEFAULT_FIRE_BUDGET: usize = 256;

/// How a worker runs.
pub struct WorkerOptions {
    /// The broker (the spec's topics are created at start when missing).
    pub broker: Broker,
    /// Where checkpoints go.
    pub durability: Durability,
    /// How it gets its partitions: all of them ([`Membership::All`], the default: no group
    /// join, fast restarts), or a share from a consumer group.
    pub membership: Membership,
    /// The consumer group (default `weir-<pipeline name>`).
    pub group: Option<String>,
    /// Set to stop the worker (it checkpoints what it has first).
    pub stop: Arc<AtomicBool>,
    /// Live figures.
    pub progress: Arc<Mutex<Progress>>,
    /// Stop once every assigned partition is consumed up to where its log ended when it was
    /// assigned, firing every open window first.
    pub until_end: bool,
    /// Stop after this many source records, firing every open window first.
    pub max_records: Option<u64>,
    /// Checkpoint at least this often.
    pub commit_interval: Duration,
    /// Checkpoint once this many outputs wait.
    pub commit_rows: usize,
    /// Records per poll.
    pub batch: usize,
    /// Most due windows emitted per round (the rest wait for the next rounds, which then
    /// poll without waiting): a watermark that closes thousands of windows at once delays
    /// the events of one round by a few hundred windows' work, not by all of it. `None`
    /// emits every due window at once.
    pub fire_budget: Option<usize>,
    /// Fail when no partition is assigned for this long (`None`: wait, warning every 30 s).
    pub assign_timeout: Option<Duration>,
    /// The tenant's share of the host's CPU, where tenants share a host: each round's CPU
    /// time is charged to the tenant, and a tenant over its share pauses (see
    /// [`CpuShare`](crate::CpuShare)). `None`: never paused.
    pub cpu_share: Option<crate::TenantShare>,
}

impl WorkerOptions {
    /// The defaults: on `broker`, checkpoints to `durability`.
    pub fn new(broker: Broker, durability: Durability) -> Self {
        WorkerOptions {
            broker,
            durability,
            membership: Membership::All,
            group: None,
            stop: Arc::default(),
            progress: Arc::default(),
            until_end: false,
            max_records: None,
            commit_interval: Duration::from_millis(1000),
            commit_rows: 50_000,
            batch: 2048,
            fire_budget: Some(DEFAULT_FIRE_BUDGET),
            assign_timeout: None,
            cpu_share: None,
        }
    }
}

/// What a worker did.
#[derive(Debug, Default, Clone)]
pub struct WorkerReport {
    /// Records processed (not counting skipped replays).
    pub records: u64,
    /// Records skipped because they were processed before.
    pub skipped: u64,
    /// What the checkpoints did.
    pub commits: CommitStats,
    /// The pipeline's counters at the end.
    pub stats: Stats,
    /// Every version switch the worker made.
    pub switches: Vec<Switch>,
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

/// Waits until the tenant's CPU share lets the next round run, or the worker is stopped.
fn wait_turn(share: &crate::TenantShare, expected: Duration, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let wait = share.share.admit(share.tenant, expected);
        if wait.is_zero() {
            break;
        }
        std::thread::sleep(wait.min(Duration::from_millis(20)));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs a worker until stopped (or, with `until_end` or `max_records`, until its input is
/// consumed).
pub fn run(
    spec: &PipelineSpec,
    mut pipeline: Pipeline,
    opts: WorkerOptions,
) -> Result<WorkerReport> {
    let name = spec.name.get_ref().clone();
    let (positions, parent_snapshot, trained) = match &opts.durability {
        Durability::Database {
            store,
            rt,
            predictions,
        } => {
            pipeline.enable_checkpoints(CheckpointOptions {
                results: *predictions,
            });
            let (parent, trained) = resume_model(spec, &mut pipeline, &opts.durability)?;
            (
                Positions::Database {
                    store: store.clone(),
                    rt: rt.clone(),
                    pipeline: name.clone(),
                },
                parent,
                trained,
            )
        }
        Durability::KafkaOffsets => (Positions::Kafka, None, HashMap::new()),
    };
    pipeline.set_fire_budget(opts.fire_budget);
    // Under a CPU share a tenant's rounds are charged by this thread's CPU time: its windows
    // must not run on another thread, out of the account.
    pipeline.set_windows_beside(opts.cpu_share.is_none());
    let broker = &opts.broker;
    broker.ensure_topics(&spec_topics(spec))?;
    let bootstrap = broker.bootstrap();
    let group = opts.group.clone().unwrap_or_else(|| format!("weir-{name}"));
    let mut source = Source::open(SourceOptions {
        bootstrap: &bootstrap,
        group: &group,
        membership: opts.membership.clone(),
        topic: spec.source.topic.get_ref(),
        positions,
        on_gap: spec.source.on_gap,
        embedded: broker.is_embedded(),
        until_end: opts.until_end,
    })?;
    let mut producer = Producer::new(&bootstrap)?;
    let mut checkpointer = Checkpointer::new(
        &opts.durability,
        &name,
        producer.deliveries(),
        parent_snapshot,
        trained,
    )?;
    let sink = &spec.sink;
    let mut records: Vec<Owned> = Vec::with_capacity(opts.batch);
    let mut kept: Vec<(usize, i64)> = Vec::with_capacity(opts.batch);
    let mut out = Outputs::default();
    let mut waiting = 0usize;
    let mut last_cut = Instant::now();
    let mut last_idle_warning = Instant::now();
    let mut report = WorkerReport::default();
    let mut finished = false;
    if opts.cpu_share.is_some() {
        crate::share::lower_this_thread();
    }
    // The last round's CPU time: what the next is expected to take (see `CpuShare`).
    let mut expected_cpu = Duration::ZERO;
    loop {
        if let Some(share) = &opts.cpu_share {
            wait_turn(share, expected_cpu, &opts.stop);
        }
        if opts.stop.load(Ordering::Relaxed) {
            break;
        }
        let cpu_at_start = opts.cpu_share.as_ref().map(|_| crate::share::thread_cpu());
        records.clear();
        let want = match opts.max_records {
            Some(m) => (m.saturating_sub(report.records) as usize).clamp(1, opts.batch),
            None => opts.batch,
        };
        // Partition changes come with the poll: apply them before looking at the records,
        // which may come from a partition assigned during this very poll.
        // Windows still due: look for records, but do not wait for them.
        let wait = if pipeline.pending_fires() > 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        for change in source.poll(want, wait, &mut records)? {
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
                    if matches!(opts.durability, Durability::Database { .. }) {
                        pipeline.restore_partition(partition, watermark, &entries, now_ms())?;
                    } else {
                        pipeline.assign_partition(partition, now_ms());
                    }
                }
                Change::Revoked(p) => {
                    // Checkpoint what we have for it while we may still own it; if another
                    // worker claimed it already, the commit is fenced and its work redone.
                    cut(
                        &mut pipeline,
                        &mut source,
                        &mut producer,
                        sink,
                        &mut checkpointer,
                    )?;
                    waiting = 0;
                    last_cut = Instant::now();
                    source.release(p);
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
        let t_poll = Instant::now();
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
            report.records += batch.len() as u64;
        }
        source.judge_alerts()?;
        let ended = (opts.until_end && source.at_end())
            || opts.max_records.is_some_and(|m| report.records >= m);
        if ended {
            pipeline.flush(&mut out)?;
            finished = true;
        }
        produce_outputs(&mut producer, sink, &mut out)?;
        producer.check()?;
        waiting += out.results.len() + out.windows.len();
        let t_out = Instant::now();
        // A cut is due by time or by outputs; while the last one is still committing it
        // waits (the next covers more), unless outputs pile up past `DEFER_ROWS` cuts'
        // worth, which bounds what the pipeline keeps for it.
        let due = waiting >= opts.commit_rows || last_cut.elapsed() >= opts.commit_interval;
        if due && (!checkpointer.busy() || waiting >= opts.commit_rows * DEFER_ROWS) {
            cut(
                &mut pipeline,
                &mut source,
                &mut producer,
                sink,
                &mut checkpointer,
            )?;
            waiting = 0;
            last_cut = Instant::now();
        }
        let (work, cutting) = (t_out - t_poll, t_out.elapsed());
        if work + cutting > Duration::from_millis(20) {
            tracing::debug!(
                records = records.len(),
                "slow round: process and produce {work:?}, checkpoint cut {cutting:?}"
            );
        }
        checkpointer.poll(source.consumer())?;
        if let Ok(mut p) = opts.progress.lock() {
            if p.samples.len() < 3 {
                p.samples.extend(
                    out.results
                        .iter()
                        .take(3)
                        .map(|r| r.payload_str().to_owned()),
                );
            }
            p.stats = pipeline.stats();
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
        if let (Some(share), Some(at_start)) = (&opts.cpu_share, cpu_at_start) {
            let spent = crate::share::thread_cpu().saturating_sub(at_start);
            share.share.settle(share.tenant, expected_cpu, spent);
            expected_cpu = spent;
        }
    }
    // Fits still running record their decisions with the last checkpoint.
    pipeline.settle_training();
    cut(
        &mut pipeline,
        &mut source,
        &mut producer,
        sink,
        &mut checkpointer,
    )?;
    let commits = checkpointer.finish(source.consumer())?;
    producer.flush(DELIVERY_TIMEOUT)?;
    if let Ok(mut p) = opts.progress.lock() {
        p.commits = commits.clone();
    }
    report.commits = commits;
    report.skipped = source.skipped;
    report.stats = pipeline.stats();
    report.switches = pipeline.switches().to_vec();
    source.into_consumer().close(Duration::from_secs(5));
    Ok(report)
}

/// Cuts a checkpoint and hands it to the checkpointer, emitting the due windows the fire
/// budget kept back first (a cut holds no half-fired window). Gaps travel with their cut.
fn cut(
    pipeline: &mut Pipeline,
    source: &mut Source,
    producer: &mut Producer,
    sink: &SinkSpec,
    checkpointer: &mut Checkpointer,
) -> Result<()> {
    if pipeline.pending_fires() > 0 {
        let mut out = Outputs::default();
        pipeline.drain_fires(&mut out)?;
        produce_outputs(producer, sink, &mut out)?;
    }
    let checkpoint = pipeline.checkpoint()?;
    let parts = source.cut();
    checkpointer.submit(
        Cut {
            checkpoint,
            parts,
            sent: producer.sent(),
        },
        source.consumer(),
    )
}

/// Serves the model as the database last had it: the last promoted snapshot when the model
/// trains in the host, or its latest online-learnt snapshot. Returns the snapshot the next
/// one descends from, and the trained versions' snapshot ids.
fn resume_model(
    spec: &PipelineSpec,
    pipeline: &mut Pipeline,
    durability: &Durability,
) -> Result<(Option<i64>, HashMap<String, i64>)> {
    let Durability::Database { store, rt, .. } = durability else {
        return Ok((None, HashMap::new()));
    };
    let name = spec.name.get_ref();
    let mut trained = HashMap::new();
    if spec.training.is_some() {
        if let Some((run, snap)) = rt.block_on(store.latest_promoted(name, "model"))? {
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
        return Ok((None, trained));
    }
    if spec.model.is_some()
        && let Some(snap) = rt.block_on(store.latest_snapshot(name, "model"))?
    {
        pipeline
            .restore_model(&snap.bytes)
            .with_context(|| format!("restoring model snapshot {}", snap.id))?;
        tracing::info!(
            "restored the model from snapshot {} ({} bytes)",
            snap.id,
            snap.bytes.len()
        );
        return Ok((Some(snap.id), trained));
    }
    Ok((None, trained))
}
