//! Where checkpoints go, and the thread that commits them while the worker goes on.
//!
//! The worker cuts a checkpoint every `commit_interval` (or `commit_rows` outputs): the
//! pipeline's [`Checkpoint`] value plus the source positions, owner epochs and gaps. A cut
//! goes to the checkpointer and the worker carries on with the next batches. While a cut is
//! being committed the worker defers the next one (it covers more when it comes), unless
//! outputs pile up past a bound; then one more may wait, and a third blocks the worker
//! (back-pressure, never a drop). Before a cut commits, every output record queued before it
//! is acknowledged by Kafka, so the topics always hold at least what a checkpoint says was
//! done.

use crate::kafka::{Consumer, DELIVERY_TIMEOUT, Deliveries};
use crate::source::Owning;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use weir_store::{
    CommitBatch, NewDeployment, NewGap, NewSnapshot, NewTrainingRun, PartitionCommit, Prediction,
    StateChange, Store, StoreError, WindowResult,
};
use weir_stream::checkpoint::Checkpoint;
use weir_stream::training::Decision;

/// Where a worker's checkpoints go.
#[derive(Clone)]
pub enum Durability {
    /// Effectively once: each checkpoint is one database transaction (the epoch-fenced
    /// positions first, then window results, keyed state, the model's snapshot, the gaps,
    /// and per-event predictions when `predictions` is set); version switches and training
    /// decisions are recorded right after it.
    Database {
        /// The store.
        store: Arc<Store>,
        /// The runtime its calls run on.
        rt: Handle,
        /// Store every per-event prediction too (the output topic always gets them).
        predictions: bool,
    },
    /// At least once: positions are committed to the consumer group once every output
    /// before them is acknowledged. No state or results are kept: a restart replays from
    /// the committed offsets with empty windows.
    KafkaOffsets,
}

/// One cut, as the worker hands it over.
pub(crate) struct Cut {
    pub(crate) checkpoint: Checkpoint,
    /// The owned partitions, as they stood at the cut.
    pub(crate) parts: BTreeMap<i32, Owning>,
    /// Output records queued before the cut.
    pub(crate) sent: u64,
}

/// What the commits did, for the worker's report.
#[derive(Debug, Default, Clone)]
pub struct CommitStats {
    /// Checkpoints committed.
    pub commits: u64,
    /// Rows they wrote.
    pub rows: u64,
    /// Time spent inside commits (on the checkpointer's thread).
    pub commit_time: Duration,
    /// The longest a commit took, from the cut to its end.
    pub max_lag: Duration,
    /// Gaps recorded.
    pub gaps: u64,
    /// Version switches recorded.
    pub switches: u64,
}

/// A checkpointer, by durability.
pub(crate) enum Checkpointer {
    Database(DatabaseLane),
    Kafka(KafkaLane),
}

impl Checkpointer {
    pub(crate) fn new(
        durability: &Durability,
        pipeline: &str,
        deliveries: Arc<Deliveries>,
        parent_snapshot: Option<i64>,
        trained: HashMap<String, i64>,
    ) -> Result<Checkpointer> {
        Ok(match durability {
            Durability::Database {
                store,
                rt,
                predictions,
            } => Checkpointer::Database(DatabaseLane::start(Committer {
                store: store.clone(),
                rt: rt.clone(),
                pipeline: pipeline.to_owned(),
                predictions: *predictions,
                deliveries,
                parent_snapshot,
                trained,
                stats: CommitStats::default(),
            })?),
            Durability::KafkaOffsets => Checkpointer::Kafka(KafkaLane {
                deliveries,
                pending: VecDeque::new(),
                stats: CommitStats::default(),
            }),
        })
    }

    /// Hands a cut over; blocks only while a cut is committing and another waits.
    pub(crate) fn submit(&mut self, cut: Cut, consumer: &Consumer) -> Result<()> {
        match self {
            Checkpointer::Database(d) => d.submit(cut),
            Checkpointer::Kafka(k) => {
                k.submit(cut);
                k.poll(consumer)
            }
        }
    }

    /// Whether a cut is still being committed (checked after [`Checkpointer::poll`]). The
    /// worker then defers its next cut rather than queueing one behind it, as Flink does
    /// with one concurrent checkpoint: the next cut covers more, state written twice in
    /// the meantime is written once, and processing does not wait for the database.
    pub(crate) fn busy(&self) -> bool {
        match self {
            Checkpointer::Database(d) => d.submitted > d.completed,
            Checkpointer::Kafka(_) => false,
        }
    }

    /// Collects finished commits; fails with the first commit that failed.
    pub(crate) fn poll(&mut self, consumer: &Consumer) -> Result<()> {
        match self {
            Checkpointer::Database(d) => d.poll(),
            Checkpointer::Kafka(k) => k.poll(consumer),
        }
    }

    /// Waits for every cut handed over, and returns what the commits did.
    pub(crate) fn finish(self, consumer: &Consumer) -> Result<CommitStats> {
        match self {
            Checkpointer::Database(d) => d.finish(),
            Checkpointer::Kafka(mut k) => {
                if let Some((sent, _)) = k.pending.back()
                    && !k.deliveries.wait_settled(*sent, DELIVERY_TIMEOUT)
                {
                    bail!(
                        "outputs were not acknowledged within {} s",
                        DELIVERY_TIMEOUT.as_secs()
                    );
                }
                k.poll(consumer)?;
                Ok(k.stats)
            }
        }
    }
}

/// At least once: offsets go to the group once their outputs are acknowledged.
pub(crate) struct KafkaLane {
    deliveries: Arc<Deliveries>,
    /// `(outputs queued before the cut, broker offsets of the cut)`, oldest first.
    pending: VecDeque<(u64, BTreeMap<i32, i64>)>,
    stats: CommitStats,
}

impl KafkaLane {
    fn submit(&mut self, cut: Cut) {
        let offsets = cut
            .parts
            .iter()
            .map(|(p, s)| (*p, s.position.broker_offset()))
            .collect();
        self.pending.push_back((cut.sent, offsets));
    }

    fn poll(&mut self, consumer: &Consumer) -> Result<()> {
        self.deliveries.check()?;
        let settled = self.deliveries.settled();
        let mut last = None;
        while self
            .pending
            .front()
            .is_some_and(|(sent, _)| *sent <= settled)
        {
            last = self.pending.pop_front().map(|(_, o)| o);
        }
        if let Some(offsets) = last {
            consumer
                .commit_offsets(&offsets)
                .context("committing offsets to the consumer group")?;
            self.stats.commits += 1;
        }
        Ok(())
    }
}

/// Effectively once: a thread of its own commits each cut in one transaction.
pub(crate) struct DatabaseLane {
    cuts: Option<SyncSender<(Cut, Instant)>>,
    done: Receiver<Result<CommitStats, String>>,
    thread: Option<JoinHandle<()>>,
    stats: CommitStats,
    /// Cuts handed over, and commits reported done.
    submitted: u64,
    completed: u64,
}

impl DatabaseLane {
    fn start(mut committer: Committer) -> Result<DatabaseLane> {
        // One cut may wait while another commits: the worker blocks on a third.
        let (cuts, inbox) = sync_channel::<(Cut, Instant)>(1);
        let (report, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("weir-checkpointer".into())
            .spawn(move || {
                while let Ok((cut, at)) = inbox.recv() {
                    let result = committer.commit(cut, at).map_err(|e| format!("{e:#}"));
                    let failed = result.is_err();
                    if report.send(result).is_err() || failed {
                        return;
                    }
                }
            })
            .context("starting the checkpointer thread")?;
        Ok(DatabaseLane {
            cuts: Some(cuts),
            done,
            thread: Some(thread),
            stats: CommitStats::default(),
            submitted: 0,
            completed: 0,
        })
    }

    fn submit(&mut self, cut: Cut) -> Result<()> {
        self.poll()?;
        let cuts = self
            .cuts
            .as_ref()
            .ok_or_else(|| anyhow!("the checkpointer has stopped"))?;
        if cuts.send((cut, Instant::now())).is_err() {
            // The thread ended: its last report says why.
            self.poll()?;
            bail!("the checkpointer has stopped");
        }
        self.submitted += 1;
        Ok(())
    }

    fn poll(&mut self) -> Result<()> {
        loop {
            match self.done.try_recv() {
                Ok(Ok(s)) => {
                    self.stats = s;
                    self.completed += 1;
                }
                Ok(Err(e)) => return Err(anyhow!(e)),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    fn finish(mut self) -> Result<CommitStats> {
        drop(self.cuts.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            bail!("the checkpointer thread panicked");
        }
        self.poll()?;
        Ok(self.stats)
    }
}

/// The checkpointer thread's state.
struct Committer {
    store: Arc<Store>,
    rt: Handle,
    pipeline: String,
    predictions: bool,
    deliveries: Arc<Deliveries>,
    /// The model snapshot the next one descends from.
    parent_snapshot: Option<i64>,
    /// Snapshot ids of the trained versions promoted so far (the parents of later ones).
    trained: HashMap<String, i64>,
    stats: CommitStats,
}

impl Committer {
    fn commit(&mut self, cut: Cut, at: Instant) -> Result<CommitStats> {
        let Cut {
            checkpoint,
            parts,
            sent,
        } = cut;
        if !self.deliveries.wait_settled(sent, DELIVERY_TIMEOUT) {
            bail!(
                "outputs before a checkpoint were not acknowledged within {} s",
                DELIVERY_TIMEOUT.as_secs()
            );
        }
        self.deliveries
            .check()
            .context("delivering outputs before a checkpoint")?;
        let Checkpoint {
            mut partitions,
            orphaned,
            results,
            windows,
            snapshot,
            switches,
            decisions,
        } = checkpoint;
        if orphaned > 0 {
            tracing::warn!("{orphaned} state changes of keys of no known partition were dropped");
        }
        let mut gaps: Vec<NewGap> = Vec::new();
        let mut commits = Vec::with_capacity(parts.len());
        for (p, s) in parts {
            let cut = partitions.remove(&p).unwrap_or_default();
            gaps.extend(s.gaps);
            commits.push(PartitionCommit {
                partition: p,
                epoch: s.epoch,
                next_offset: s.position.next,
                source: s.position.source,
                offset_base: s.position.base,
                watermark: cut.watermark,
                state: cut
                    .state
                    .into_iter()
                    .map(|c| StateChange {
                        namespace: c.namespace,
                        key: c.key,
                        value: c.value,
                    })
                    .collect(),
            });
        }
        let dropped: usize = partitions.values().map(|c| c.state.len()).sum();
        if dropped > 0 {
            tracing::warn!("{dropped} state changes of partitions no longer owned were dropped");
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let predictions = if self.predictions {
            results
                .iter()
                .filter(|r| r.meta.offset >= 0)
                .map(|r| Prediction {
                    partition: r.meta.partition,
                    offset: r.meta.offset,
                    ts: r.meta.ts,
                    score: r.meta.score,
                    model_version: r.meta.version.to_string(),
                    extractor_version: r.meta.extractor_version.to_string(),
                    key: r.key.to_owned(),
                    output: text(r.payload),
                })
                .collect()
        } else {
            Vec::new()
        };
        let window_results: Vec<WindowResult> = windows
            .iter()
            .map(|r| WindowResult {
                window_start: r.meta.ts,
                window_end: r.meta.window_end,
                partition: r.meta.partition,
                version: r.meta.version.to_string(),
                key: r.key.to_owned(),
                output: text(r.payload),
            })
            .collect();
        let snapshot = snapshot.map(|s| NewSnapshot {
            stage: "model".into(),
            plugin_sha256: s.plugin_sha256,
            parent_id: self.parent_snapshot,
            bytes: s.bytes,
            from_offset: None,
            to_offset: None,
            metrics: "{}".into(),
        });
        let gap_count = gaps.len() as u64;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let states: Vec<&StateChange> = commits.iter().flat_map(|c| &c.state).collect();
            tracing::debug!(
                predictions = predictions.len(),
                windows = window_results.len(),
                state_puts = states.iter().filter(|s| s.value.is_some()).count(),
                state_deletes = states.iter().filter(|s| s.value.is_none()).count(),
                state_bytes = states
                    .iter()
                    .map(|s| s.value.as_ref().map_or(0, Vec::len))
                    .sum::<usize>(),
                partitions = commits.len(),
                min_watermark = commits
                    .iter()
                    .map(|c| c.watermark)
                    .min()
                    .unwrap_or(i64::MIN),
                max_watermark = commits
                    .iter()
                    .map(|c| c.watermark)
                    .max()
                    .unwrap_or(i64::MIN),
                "committing a checkpoint"
            );
        }
        // Without a partition there is no position to commit (nor anything it covers).
        if !commits.is_empty() {
            let started = Instant::now();
            let result = self.rt.block_on(self.store.commit(CommitBatch {
                pipeline: self.pipeline.clone(),
                partitions: commits,
                predictions,
                window_results,
                snapshot,
                gaps,
            }));
            self.stats.commit_time += started.elapsed();
            let stats = match result {
                Ok(s) => s,
                Err(e @ StoreError::Fenced { .. }) => bail!(
                    "{e}: another worker owns the partition now; this worker stops and its uncommitted work is redone by the owner"
                ),
                Err(e) => return Err(e).context("committing a checkpoint"),
            };
            self.stats.commits += 1;
            self.stats.rows += stats.rows_written;
            self.stats.gaps += gap_count;
            if stats.snapshot_id.is_some() {
                self.parent_snapshot = stats.snapshot_id;
            }
        }
        // Where each stage's version took effect, per partition, and the trainer's
        // decisions, once the positions they belong to are committed.
        for sw in &switches {
            self.rt
                .block_on(self.store.record_deployment(NewDeployment {
                    pipeline: self.pipeline.clone(),
                    stage: sw.stage.clone(),
                    plugin_sha256: sw.plugin.clone(),
                    version_label: sw.version.to_string(),
                    actor: "worker".into(),
                    at_ms: now_ms(),
                    partition: Some(sw.partition),
                    offset: Some(sw.offset),
                }))
                .context("recording a deployment")?;
        }
        for d in decisions {
            self.record_decision(d)?;
        }
        self.stats.switches += switches.len() as u64;
        self.stats.max_lag = self.stats.max_lag.max(at.elapsed());
        Ok(self.stats.clone())
    }

    /// Stores one training decision with its candidate's snapshot, whose parent is the
    /// champion's snapshot (when the champion was itself trained).
    fn record_decision(&mut self, d: Decision) -> Result<()> {
        let detail = serde_json::to_string(&d).context("encoding a training decision")?;
        let run = self
            .rt
            .block_on(self.store.record_training(NewTrainingRun {
                pipeline: self.pipeline.clone(),
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
                parent_snapshot_id: self.trained.get(&d.champion_version).copied(),
            }))
            .context("recording a training decision")?;
        if d.outcome == "promoted"
            && let (Some(v), Some(sid)) = (d.version, run.snapshot_id)
        {
            self.trained.insert(v, sid);
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
