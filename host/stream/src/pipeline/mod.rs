//! The pipeline executor: `source → extractor → model → operators → sink`, with a keyed
//! window branch over the events' inputs. It is I/O-free: the caller feeds batches of source
//! records and gets the records to produce back, so the same code runs over Kafka, in
//! memory, and in tests.
//!
//! Wasm stages run through `weir_engine::Runner`s, so a swap published on a stage's
//! [`Slot`] takes effect at the next batch boundary. The pipeline records, per stage and
//! partition, the offset where each version took over, and every result names the version
//! that produced it. A record that cannot be parsed, or that makes a plugin fail, goes to
//! the dead-letter output with the reason; the rest of its batch is processed normally.

use crate::SourcePos;
pub use crate::checkpoint::StateChange;
use crate::checkpoint::Tracking;
use crate::metrics::{ModelVariants, PipelineMetrics, Role, in_canary};
pub use crate::output::{
    Outputs, Record, RecordMeta, Records, fmt_f64, push_f64, push_i64, push_json_str,
};
use crate::parse::RecordParser;
use crate::spec::PipelineSpec;

use crate::training::{Trainer, TrainingShared};
use crate::watermark::Watermarks;
use crate::window::Windower;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use weir_engine::{EventBatch, FeatureBatch, Instance, Runner, Slot, TrapKind, VersionId};

mod parsed;
mod windows;
use parsed::{ParseOptions, Parsed};
pub(crate) use windows::{HalvedOperator, WindowStage, Windowing};

/// A record read from the source.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The raw JSON value.
    pub payload: &'a [u8],
}

/// Where a stage switched version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// Stage name (`extractor`, `model`, `operator-N`, `window`).
    pub stage: String,
    /// The version that took over.
    pub version: VersionId,
    /// Its plugin's sha256.
    pub plugin: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the partition processed by that version.
    pub offset: i64,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Source records seen.
    pub records_in: u64,
    /// Per-event results produced.
    pub results_out: u64,
    /// Window results produced.
    pub windows_out: u64,
    /// Events too late for every window.
    pub late: u64,
    /// Dead letters.
    pub dead: u64,
    /// Batches processed.
    pub batches: u64,
    /// Current watermark.
    pub watermark: i64,
    /// Events (with checkpoints on) whose key's state is kept with another partition: the
    /// partition the key was first seen on. Harmless while one worker owns every
    /// partition; with several workers, input must be keyed by the event's key (the
    /// README's "Persistence" section).
    pub key_hops: u64,
}

/// The slots of a pipeline's Wasm stages.
#[derive(Clone, Default)]
pub struct StageSlots {
    /// Extractor.
    pub extractor: Option<Arc<Slot>>,
    /// Model.
    pub model: Option<Arc<Slot>>,
    /// General operators, in order.
    pub operators: Vec<Arc<Slot>>,
    /// The window's `on-window` operator.
    pub window_operator: Option<Arc<Slot>>,
    /// The model stage's canary and shadow, set by the control plane.
    pub variants: Arc<ModelVariants>,
}

/// Why building or running a pipeline failed (not a per-record problem: those become dead
/// letters).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The spec and the slots disagree.
    #[error("pipeline setup: {0}")]
    Setup(String),
    /// The engine failed in a way that is not one record's fault.
    #[error(transparent)]
    Engine(#[from] weir_engine::Error),
}

/// The fewest events a step needs for its windows to run on the pipeline's second thread
/// (see `Pipeline::run_sides`): below it, waking that thread costs more than it saves.
const BESIDE_MIN: usize = 256;

/// A running pipeline (one worker).
pub struct Pipeline {
    parser: RecordParser,
    with_payload: bool,
    dims: usize,
    extractor: Option<Runner>,
    pub(crate) model: Option<Runner>,
    pub(crate) operators: Vec<Runner>,
    /// Job 2: the windows and the watermarks.
    pub(crate) windows: Windowing,
    /// The thread job 2 runs on beside the scoring, made at the first step that needs it.
    beside: Option<rayon::ThreadPool>,
    /// Job 2 may run on that thread (see [`Pipeline::set_windows_beside`]); off once the
    /// system refused the thread.
    beside_allowed: bool,
    stats: Stats,
    /// The version that last served each (stage, partition).
    versions: HashMap<(String, i32), VersionId>,
    pub(crate) switches: Vec<Switch>,
    /// The current step's events, parsed (its buffers kept across steps).
    parsed: Parsed,
    /// The second half of a big step, parsed on the second thread.
    parsed_tail: Parsed,
    /// Prequential training of the model stage.
    train: bool,
    /// The source has a label field: labels are collected and scored against.
    has_labels: bool,
    /// Per-stage figures, shared with the control plane.
    metrics: Arc<PipelineMetrics>,
    /// The model's canary and shadow, as the control plane set them.
    variants: Arc<ModelVariants>,
    canary: Option<Runner>,
    shadow: Option<Runner>,
    pub(crate) trained_since_snapshot: bool,
    /// Set by [`Pipeline::enable_checkpoints`].
    pub(crate) checkpoints: Option<Tracking>,
    /// Host-side training of the model stage (`[training]`).
    pub(crate) trainer: Option<Trainer>,
}

impl Pipeline {
    /// Builds a pipeline from its spec and the slots of its stages.
    pub fn new(spec: &PipelineSpec, slots: StageSlots) -> Result<Self, PipelineError> {
        let need = |present: bool, slot: bool, what: &str| -> Result<(), PipelineError> {
            if present != slot {
                return Err(PipelineError::Setup(format!(
                    "the spec and the slots disagree about the {what} stage"
                )));
            }
            Ok(())
        };
        need(
            spec.extractor.is_some(),
            slots.extractor.is_some(),
            "extractor",
        )?;
        need(spec.model.is_some(), slots.model.is_some(), "model")?;
        if spec.operators.len() != slots.operators.len() {
            return Err(PipelineError::Setup(
                "the spec and the slots disagree about the operators".into(),
            ));
        }
        let dims = *spec.source.input_dims.get_ref() as usize;
        let window = match &spec.window {
            Some(w) => {
                need(
                    w.operator.is_some(),
                    slots.window_operator.is_some(),
                    "window operator",
                )?;
                let kind = w.kind_checked().map_err(PipelineError::Setup)?;
                let keep_rows = w.operator.is_some();
                let row_inputs: Option<Vec<usize>> = w
                    .row_inputs
                    .as_ref()
                    .map(|r| r.iter().map(|i| *i.get_ref() as usize).collect());
                let row_dims = row_inputs.as_ref().map_or(dims, Vec::len);
                Some(WindowStage {
                    windower: Windower::new(kind, *w.lateness_ms.get_ref(), row_dims, keep_rows),
                    aggs: w.aggregate_kinds(),
                    value_index: *w.value_index.get_ref() as usize,
                    row_inputs,
                    row: Vec::with_capacity(row_dims),
                    operator: slots.window_operator.map(HalvedOperator::new),
                    outputs: w.outputs.clone(),
                    pending: VecDeque::new(),
                })
            }
            None => None,
        };
        let variants = slots.variants.clone();
        let metrics = Arc::<PipelineMetrics>::default();
        let trainer = match (&spec.training, &slots.model) {
            (Some(t), Some(slot)) => Some(Trainer::new(t, slot.clone())),
            _ => None,
        };
        let id_field = trainer
            .as_ref()
            .and_then(|t| t.id_field().map(str::to_owned));
        Ok(Pipeline {
            parser: RecordParser {
                key_field: spec.source.key_field.clone(),
                time_field: spec.source.time_field.clone(),
                inputs_field: spec.source.inputs_field.clone(),
                dims,
                label_field: spec.source.label_field.clone(),
                id_field,
            },
            with_payload: spec.source.with_payload,
            dims,
            extractor: slots.extractor.map(Runner::new),
            // A model learning online keeps what it learnt across swaps; one trained in the
            // host serves the parameters of its own deployment.
            model: slots.model.map(|s| {
                Runner::new(s).carry_model_state(spec.model.as_ref().is_some_and(|m| m.train))
            }),
            operators: slots.operators.into_iter().map(Runner::new).collect(),
            windows: Windowing::new(
                window,
                Watermarks::new(
                    *spec.watermark.out_of_orderness_ms.get_ref(),
                    spec.watermark.idle_timeout_ms,
                ),
                metrics.clone(),
            ),
            beside: None,
            beside_allowed: true,
            stats: Stats::default(),
            versions: HashMap::new(),
            switches: Vec::new(),
            parsed: Parsed::new(dims),
            parsed_tail: Parsed::new(dims),
            train: spec.model.as_ref().is_some_and(|m| m.train),
            has_labels: spec.source.label_field.is_some(),
            metrics,
            variants,
            canary: None,
            shadow: None,
            trained_since_snapshot: false,
            checkpoints: None,
            trainer,
        })
    }

    /// Restores the model's parameters from a snapshot.
    pub fn restore_model(&mut self, bytes: &[u8]) -> Result<(), PipelineError> {
        let Some(r) = self.model.as_mut() else {
            return Err(PipelineError::Setup(
                "the pipeline has no model stage".into(),
            ));
        };
        r.instance()?.restore(bytes)?;
        Ok(())
    }

    /// The training figures and decisions, when the model trains in the host.
    pub fn training(&self) -> Option<Arc<TrainingShared>> {
        self.trainer.as_ref().map(Trainer::shared)
    }

    /// Serves an earlier promoted model again (after a restart): the model's plugin and
    /// config, restoring `snapshot`. Returns its version.
    pub fn resume_trained(&mut self, snapshot: Vec<u8>) -> Result<VersionId, PipelineError> {
        let Some(r) = self.model.as_ref() else {
            return Err(PipelineError::Setup(
                "the pipeline has no model stage".into(),
            ));
        };
        Ok(Trainer::resume(r.slot(), snapshot)?)
    }

    /// Waits for running fits of the trainer (before a last checkpoint).
    pub fn settle_training(&mut self) {
        if let Some(t) = self.trainer.as_mut() {
            t.settle();
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            windows_out: self.windows.windows_out,
            late: self.windows.late,
            watermark: self.windows.watermark,
            ..self.stats.clone()
        }
    }

    /// Per-stage figures (latency, fuel, errors, and for the model, accuracy), shared.
    pub fn metrics(&self) -> Arc<PipelineMetrics> {
        self.metrics.clone()
    }

    /// Every version switch seen, in order.
    pub fn switches(&self) -> &[Switch] {
        &self.switches
    }

    /// Registers a source partition (it holds the watermark back until idle).
    pub fn assign_partition(&mut self, partition: i32, now_ms: u64) {
        self.windows.watermarks.assign(partition, now_ms);
    }

    /// Forgets a revoked partition, and, with checkpoints on, the state of its keys (its
    /// next owner restores them from the checkpoint).
    pub fn revoke_partition(&mut self, partition: i32) {
        self.windows.watermarks.revoke(partition);
        if let Some(cp) = self.checkpoints.as_mut() {
            let keys: Vec<String> = cp
                .key_partition
                .iter()
                .filter(|(_, p)| **p == partition)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                cp.key_partition.remove(&k);
                if let Some(w) = self.windows.stage.as_mut() {
                    w.windower.remove_key(&k);
                }
                for (_, st) in &cp.states {
                    st.remove_key(&k);
                }
            }
        }
    }

    /// Processes a batch of source records at processing time `now_ms`. With training on,
    /// the batch runs in steps of at most `training.step_rows` records, with training
    /// decisions between them.
    pub fn process(
        &mut self,
        records: &[SourceRecord<'_>],
        now_ms: u64,
        out: &mut Outputs,
    ) -> Result<(), PipelineError> {
        let mark = (out.results.len(), out.windows.len());
        let step = self.trainer.as_ref().map_or(usize::MAX, Trainer::step_rows);
        let done = if records.len() <= step {
            self.process_step(records, now_ms, out)
        } else {
            records
                .chunks(step)
                .try_for_each(|chunk| self.process_step(chunk, now_ms, out))
        };
        self.keep_for_checkpoint(out, mark);
        done
    }

    fn process_step(
        &mut self,
        records: &[SourceRecord<'_>],
        now_ms: u64,
        out: &mut Outputs,
    ) -> Result<(), PipelineError> {
        if let Some(t) = self.trainer.as_mut() {
            t.before_step();
        }
        self.stats.records_in += records.len() as u64;
        self.stats.batches += 1;
        let mut parsed = std::mem::take(&mut self.parsed);
        parsed.clear();
        self.parse_step(&mut parsed, records, out);
        let done = self.run_sides(&parsed, records, now_ms, out);
        self.parsed = parsed;
        done
    }

    /// Parses a step's records into `parsed` (a step of twice [`BESIDE_MIN`] records or more
    /// in two halves at once, the second on the pipeline's second thread). Then, in record
    /// order, a record that does not parse becomes a dead letter, and with checkpoints on,
    /// each event's key stays with the partition it was first seen on.
    fn parse_step(&mut self, parsed: &mut Parsed, records: &[SourceRecord<'_>], out: &mut Outputs) {
        let half = records.len() / 2;
        let beside = if half >= BESIDE_MIN {
            self.beside_thread()
        } else {
            None
        };
        let how = ParseOptions {
            parser: &self.parser,
            with_payload: self.with_payload,
            has_labels: self.has_labels,
        };
        match &beside {
            Some(thread) => {
                let tail = &mut self.parsed_tail;
                thread.in_place_scope(|s| {
                    s.spawn(|_| tail.parse(&how, &records[half..], half));
                    parsed.parse(&how, &records[..half], 0);
                });
                parsed.append(tail);
            }
            None => parsed.parse(&how, records, 0),
        }
        self.beside = beside;
        for (i, reason) in &parsed.failed {
            self.stats.dead += 1;
            dead_letter(&mut out.dead, &records[*i], "parse", reason);
        }
        let Some(cp) = self.checkpoints.as_mut() else {
            return;
        };
        for (i, pos) in parsed.positions.iter().enumerate() {
            let Some(key) = parsed.batch.key(i) else {
                continue;
            };
            // A key's state stays with the partition it was first seen on: its rows must
            // live in one partition, or a restore would find an old copy in the partition
            // it left.
            match cp.key_partition.get(key) {
                Some(&owner) if owner != pos.partition => {
                    if self.stats.key_hops == 0 {
                        tracing::warn!(
                            "key `{key}` arrived on partition {} but its state is kept with \
                             partition {owner}, where it was first seen; fine while one worker \
                             owns every partition, but workers that share the topic need it \
                             keyed by the event's key (counted in `key_hops`, warned once)",
                            pos.partition
                        );
                    }
                    self.stats.key_hops += 1;
                }
                Some(_) => {}
                None => {
                    cp.key_partition.insert(key.to_owned(), pos.partition);
                }
            }
        }
    }

    /// Runs a step's two sides: job 1 (scoring) and job 2 (the windows, see [`Windowing`]).
    /// They share nothing but the parsed events, so a step of at least [`BESIDE_MIN`] events
    /// runs job 2 on the pipeline's second thread while this one scores: there, the events
    /// go into their windows, the due ones are collected and the first half of the keys'
    /// windows runs through the window operator's first instance; the second half's are
    /// handed here, to the second instance, once the scoring is done
    /// ([`Windowing::run_beside`]). Smaller steps run it all here, as the hand-overs would
    /// cost more than they save.
    fn run_sides(
        &mut self,
        parsed: &Parsed,
        records: &[SourceRecord<'_>],
        now_ms: u64,
        out: &mut Outputs,
    ) -> Result<(), PipelineError> {
        // Job 2's state and outputs leave the pipeline for the step, and come back after.
        let mut side = std::mem::take(&mut self.windows);
        let key_partition = self
            .checkpoints
            .as_mut()
            .map(|c| std::mem::take(&mut c.key_partition));
        let mut late = std::mem::take(&mut out.late);
        let mut windows = std::mem::take(&mut out.windows);
        let beside = if side.stage.is_some() && parsed.batch.len() >= BESIDE_MIN {
            self.beside_thread()
        } else {
            None
        };
        let kp = key_partition.as_ref();
        let (scored, windowed) = match &beside {
            Some(thread) => side.run_beside(
                thread,
                parsed,
                records,
                now_ms,
                &mut late,
                kp,
                &mut windows,
                || self.score_side(parsed, records, out),
            ),
            None => {
                let fired = side.collect(parsed, records, now_ms, &mut late);
                let scored = self.score_side(parsed, records, out);
                (scored, side.emit(fired, kp, &mut windows))
            }
        };
        self.beside = beside;
        self.windows = side;
        if let (Some(cp), Some(kp)) = (self.checkpoints.as_mut(), key_partition) {
            cp.key_partition = kp;
        }
        out.late = late;
        out.windows = windows;
        scored.and(windowed)
    }

    /// The pipeline's second thread, made on first use. Without it (the system refused a
    /// thread), steps run both sides on the caller's thread.
    fn beside_thread(&mut self) -> Option<rayon::ThreadPool> {
        if let Some(t) = self.beside.take() {
            return Some(t);
        }
        if !self.beside_allowed {
            return None;
        }
        match rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "weir-windows".into())
            .build()
        {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("no second thread for the windows ({e}): they run in line");
                self.beside_allowed = false;
                None
            }
        }
    }

    /// Job 1 over a step: scores its events, joins its label records, and lets the trainer
    /// decide.
    fn score_side(
        &mut self,
        parsed: &Parsed,
        records: &[SourceRecord<'_>],
        out: &mut Outputs,
    ) -> Result<(), PipelineError> {
        if !parsed.batch.is_empty() {
            self.score(parsed, records, out)?;
        }
        self.join_labels(&parsed.label_records);
        if let Some(t) = self.trainer.as_mut() {
            t.after_step();
        }
        Ok(())
    }

    /// Joins the step's label records to their waiting events, and scores each joined
    /// event's prediction against its label in the version's metrics.
    fn join_labels(&mut self, label_records: &[(String, String, f64)]) {
        let Some(t) = self.trainer.as_mut() else {
            return;
        };
        for &(ref key, ref id, label) in label_records {
            if let Some((score, served)) = t.label_arrived(key, id, label) {
                self.metrics
                    .with("model", Role::Serving, &served.0.0, &served.1, |s| {
                        s.score_labels(&[score], &[label])
                    });
            }
        }
    }

    /// Advances the watermark with no new records (idle partitions stop holding it back)
    /// and fires due windows.
    pub fn tick(&mut self, now_ms: u64, out: &mut Outputs) -> Result<(), PipelineError> {
        let mark = (out.results.len(), out.windows.len());
        let kp = self.checkpoints.as_ref().map(|c| &c.key_partition);
        let done = self.windows.fire(now_ms, kp, &mut out.windows);
        self.keep_for_checkpoint(out, mark);
        done
    }

    /// End of a bounded input: fires and releases every window.
    pub fn flush(&mut self, out: &mut Outputs) -> Result<(), PipelineError> {
        let mark = (out.results.len(), out.windows.len());
        let kp = self.checkpoints.as_ref().map(|c| &c.key_partition);
        let done = self.windows.flush(kp, &mut out.windows);
        self.keep_for_checkpoint(out, mark);
        done
    }

    /// Records, per partition, the first offset a stage's version served, whenever that
    /// version differs from the one that last served the partition.
    fn note_version(
        &mut self,
        positions: &[SourcePos],
        stage: &str,
        version: &VersionId,
        plugin: &str,
        first: usize,
        len: usize,
    ) {
        let mut firsts: BTreeMap<i32, i64> = BTreeMap::new();
        for p in &positions[first..first + len] {
            firsts
                .entry(p.partition)
                .and_modify(|o| *o = (*o).min(p.offset))
                .or_insert(p.offset);
        }
        for (partition, offset) in firsts {
            let served = self.versions.entry((stage.to_string(), partition));
            match served {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if e.get() == version {
                        continue;
                    }
                    e.insert(version.clone());
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(version.clone());
                }
            }
            self.switches.push(Switch {
                stage: stage.to_string(),
                version: version.clone(),
                plugin: plugin.to_string(),
                partition,
                offset,
            });
        }
    }

    /// Runs the scoring path over the batch; on a failure, retries record by record so one
    /// bad record goes to the dead-letter output and the rest go on. A batch that ran out of
    /// time, fuel or memory is not retried: each retry could cost as much again (a batch of
    /// n rows would take n + 1 deadlines), so every record of it becomes a dead letter
    /// naming the trap, and the worker stays responsive to stop and shutdown.
    fn score(
        &mut self,
        parsed: &Parsed,
        records: &[SourceRecord<'_>],
        out: &mut Outputs,
    ) -> Result<(), PipelineError> {
        let (batch, labels) = (&parsed.batch, &parsed.labels[..]);
        match self.score_batch(batch, labels) {
            Ok(scored) => self.emit_results(parsed, batch, &scored, 0, labels, out),
            Err(e)
                if matches!(
                    e.trap_kind(),
                    Some(TrapKind::Timeout | TrapKind::OutOfFuel | TrapKind::OutOfMemory)
                ) =>
            {
                let reason = format!("{e} (the whole batch of {} records)", batch.len());
                for &i in &parsed.raw {
                    self.stats.dead += 1;
                    dead_letter(&mut out.dead, &records[i], "plugin", &reason);
                }
            }
            Err(e) if e.fault() == weir_engine::Fault::Plugin => {
                for i in 0..batch.len() {
                    let mut one = EventBatch::with_dims(self.dims as u32);
                    let (Some(key), Some(row)) = (batch.key(i), batch.inputs_of(i)) else {
                        continue;
                    };
                    one.push(key, batch.timestamps[i], row);
                    let label = labels.get(i..i + 1).unwrap_or_default();
                    match self.score_batch(&one, label) {
                        Ok(scored) => self.emit_results(parsed, &one, &scored, i, label, out),
                        Err(e) => {
                            self.stats.dead += 1;
                            dead_letter(
                                &mut out.dead,
                                &records[parsed.raw[i]],
                                "plugin",
                                &e.to_string(),
                            );
                        }
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Runs extractor → model → operators over a batch. With training on, `labels` holds
    /// each row's label (NaN when unlabelled): runs of labelled rows go through the model's
    /// prequential `train` (each row scored by the model as it was, then learnt), the rest
    /// through `predict`, in row order. A canary scores its share of keys instead of the
    /// serving model; a shadow scores every row beside it, and its failures only count in
    /// its metrics.
    fn score_batch(
        &mut self,
        batch: &EventBatch,
        labels: &[f64],
    ) -> Result<Scored, weir_engine::Error> {
        let mut scored = Scored::default();
        let features = match self.extractor.as_mut() {
            Some(r) => {
                let (v, plugin, f) = timed(
                    &self.metrics,
                    "extractor",
                    Role::Serving,
                    r,
                    batch.len(),
                    |i| i.extract(batch),
                )?;
                scored.extractor = Some((v, plugin));
                f
            }
            None => FeatureBatch::new(batch.len, batch.input_dims, batch.inputs.clone()),
        };
        if let Some(main) = self.model.as_mut() {
            let n = features.rows as usize;
            let labels = if labels.len() == n { labels } else { &[] };
            let train = self.train && !labels.is_empty();
            let variants = self.variants.get();
            sync_runner(&mut self.canary, variants.canary.as_ref().map(|c| &c.slot));
            sync_runner(&mut self.shadow, variants.shadow.as_ref());
            let mask: Option<Vec<bool>> = match (&variants.canary, self.canary.is_some()) {
                (Some(c), true) => {
                    let m: Vec<bool> = (0..n)
                        .map(|i| in_canary(batch.key(i).unwrap_or_default(), c.percent))
                        .collect();
                    m.iter().any(|x| *x).then_some(m)
                }
                _ => None,
            };
            match (mask, self.canary.as_mut()) {
                (Some(mask), Some(canary)) => {
                    let (on, off): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| mask[*i]);
                    let mut scores = vec![f64::NAN; n];
                    // Scores the rows `idx` with one runner, in place.
                    let metrics = &self.metrics;
                    let mut score_rows =
                        |r: &mut Runner,
                         role: Role,
                         idx: &[usize]|
                         -> weir_engine::Result<(VersionId, String)> {
                            let labels: Vec<f64> = if labels.is_empty() {
                                Vec::new()
                            } else {
                                idx.iter().map(|i| labels[*i]).collect()
                            };
                            let f = select_rows(&features, idx);
                            let (v, plugin, s) = run_model(metrics, role, r, &f, &labels, train)?;
                            for (k, i) in idx.iter().enumerate() {
                                scores[*i] = s[k];
                            }
                            Ok((v, plugin))
                        };
                    if !off.is_empty() {
                        scored.model = Some(score_rows(main, Role::Serving, &off)?);
                    }
                    scored.canary = Some(score_rows(canary, Role::Canary, &on)?);
                    if scored.model.is_none() {
                        let inst = main.instance()?;
                        let d = inst.deployment();
                        scored.model = Some((d.version.clone(), d.plugin.id().0.clone()));
                    }
                    scored.canary_rows = mask;
                    scored.scores = Some(scores);
                }
                _ => {
                    let (v, plugin, s) =
                        run_model(&self.metrics, Role::Serving, main, &features, labels, train)?;
                    scored.model = Some((v, plugin));
                    scored.scores = Some(s);
                }
            }
            if train {
                self.trained_since_snapshot = true;
            }
            if let Some(shadow) = self.shadow.as_mut() {
                // A failing shadow must not touch the real output: its error is counted in
                // its own metrics and the batch goes on.
                if let Ok((v, plugin, s)) = run_model(
                    &self.metrics,
                    Role::Shadow,
                    shadow,
                    &features,
                    labels,
                    train,
                ) {
                    scored.shadow = Some((v, plugin, s));
                }
            }
            if self.trainer.is_some() {
                scored.model_features = Some(features);
            }
        } else {
            scored.features = Some(features);
        }
        for (k, r) in self.operators.iter_mut().enumerate() {
            let stage = format!("operator-{k}");
            let (v, _, o) = timed(&self.metrics, &stage, Role::Serving, r, batch.len(), |i| {
                i.process(batch)
            })?;
            scored.operator_outputs.push((v, o));
        }
        Ok(scored)
    }

    fn emit_results(
        &mut self,
        parsed: &Parsed,
        batch: &EventBatch,
        s: &Scored,
        first_index: usize,
        labels: &[f64],
        out: &mut Outputs,
    ) {
        self.train_on(parsed, batch, s, first_index, labels);
        if let Some((v, plugin)) = &s.extractor {
            self.note_version(
                &parsed.positions,
                "extractor",
                v,
                plugin,
                first_index,
                batch.len(),
            );
        }
        if let Some((v, plugin)) = &s.model {
            self.note_version(
                &parsed.positions,
                "model",
                v,
                plugin,
                first_index,
                batch.len(),
            );
        }
        if let Some((v, plugin)) = &s.canary {
            self.note_version(
                &parsed.positions,
                "model-canary",
                v,
                plugin,
                first_index,
                batch.len(),
            );
        }
        // Versions go into each record's metadata: shared, not copied per record.
        let arc = |v: &Option<(VersionId, String)>| -> Arc<str> {
            v.as_ref()
                .map_or_else(|| Arc::from(""), |(v, _)| Arc::from(v.0.as_str()))
        };
        let (serving, canary, extractor) = (arc(&s.model), arc(&s.canary), arc(&s.extractor));
        for i in 0..batch.len() {
            let on_canary = s.canary_rows.get(i).copied().unwrap_or(false);
            let (model, version) = if on_canary {
                (&s.canary, &canary)
            } else {
                (&s.model, &serving)
            };
            let key = batch.key(i).unwrap_or_default();
            let pos = parsed.positions[first_index + i];
            let ts = batch.timestamps[i];
            let score = s.scores.as_ref().and_then(|x| x.get(i).copied());
            let meta = RecordMeta {
                partition: pos.partition,
                offset: pos.offset,
                ts,
                window_end: 0,
                score,
                version: version.clone(),
                extractor_version: extractor.clone(),
            };
            out.results.push_with(key, meta, |p| {
                push_event_head(p, key, ts, pos);
                if let Some(x) = score {
                    p.extend_from_slice(b",\"score\":");
                    push_f64(p, x);
                } else if let Some(f) = &s.features {
                    p.extend_from_slice(b",\"features\":[");
                    for (j, v) in f.row(i).unwrap_or_default().iter().enumerate() {
                        if j > 0 {
                            p.push(b',');
                        }
                        push_f64(p, *v);
                    }
                    p.push(b']');
                }
                if let Some((v, _)) = model {
                    p.extend_from_slice(b",\"model_version\":\"");
                    p.extend_from_slice(v.0.as_bytes());
                    p.push(b'"');
                    if on_canary {
                        p.extend_from_slice(b",\"model_role\":\"canary\"");
                    }
                }
                if let Some((v, _)) = &s.extractor {
                    p.extend_from_slice(b",\"extractor_version\":\"");
                    p.extend_from_slice(v.0.as_bytes());
                    p.push(b'"');
                }
                p.push(b'}');
            });
        }
        self.stats.results_out += batch.len() as u64;
        if let (Some((v, _, shadow)), Some(scores)) = (&s.shadow, &s.scores) {
            let version: Arc<str> = Arc::from(v.0.as_str());
            for i in 0..batch.len() {
                let key = batch.key(i).unwrap_or_default();
                let pos = parsed.positions[first_index + i];
                let ts = batch.timestamps[i];
                let meta = RecordMeta {
                    partition: pos.partition,
                    offset: pos.offset,
                    ts,
                    score: Some(shadow[i]),
                    version: version.clone(),
                    ..RecordMeta::default()
                };
                out.shadow.push_with(key, meta, |p| {
                    push_event_head(p, key, ts, pos);
                    p.extend_from_slice(b",\"score\":");
                    push_f64(p, shadow[i]);
                    p.extend_from_slice(b",\"serving_score\":");
                    push_f64(p, scores[i]);
                    p.extend_from_slice(b",\"model_version\":\"");
                    p.extend_from_slice(v.0.as_bytes());
                    p.extend_from_slice(b"\",\"model_role\":\"shadow\"}");
                });
            }
        }
        for (v, o) in &s.operator_outputs {
            let version: Arc<str> = Arc::from(v.0.as_str());
            for i in 0..o.len() {
                let key = o.key(i).unwrap_or_default();
                let meta = RecordMeta {
                    ts: o.timestamps[i],
                    version: version.clone(),
                    ..RecordMeta::default()
                };
                out.results.push_with(key, meta, |p| {
                    p.extend_from_slice(b"{\"key\":");
                    push_json_str(p, key);
                    p.extend_from_slice(b",\"ts\":");
                    push_i64(p, o.timestamps[i]);
                    p.extend_from_slice(b",\"values\":[");
                    for (j, x) in o.inputs_of(i).unwrap_or_default().iter().enumerate() {
                        if j > 0 {
                            p.push(b',');
                        }
                        push_f64(p, *x);
                    }
                    p.extend_from_slice(b"],\"operator_version\":\"");
                    p.extend_from_slice(v.0.as_bytes());
                    p.extend_from_slice(b"\"}");
                });
            }
        }
    }

    /// Hands the scored rows to the trainer: labelled rows join its window, and with
    /// `join = "later"` unlabelled rows with an id wait for their label record.
    fn train_on(
        &mut self,
        parsed: &Parsed,
        batch: &EventBatch,
        s: &Scored,
        first_index: usize,
        labels: &[f64],
    ) {
        let (Some(t), Some(f), Some(scores), Some(model)) = (
            self.trainer.as_mut(),
            &s.model_features,
            &s.scores,
            &s.model,
        ) else {
            return;
        };
        t.served(&model.0);
        if t.unsupervised() {
            for i in 0..batch.len() {
                if let Some(x) = f.row(i) {
                    let pos = parsed.positions[first_index + i];
                    t.row(x, pos.partition, pos.offset, batch.timestamps[i]);
                }
            }
            return;
        }
        // Shared by the rows that wait for a label (built only when labels join later).
        let later = t.id_field().is_some();
        let serving = later.then(|| Arc::new(model.clone()));
        let canary = s
            .canary
            .as_ref()
            .filter(|_| later)
            .map(|c| Arc::new(c.clone()));
        for i in 0..batch.len() {
            let Some(x) = f.row(i) else {
                continue;
            };
            let on_canary = s.canary_rows.get(i).copied().unwrap_or(false);
            let pos = parsed.positions[first_index + i];
            let ts = batch.timestamps[i];
            let label = labels.get(i).copied().unwrap_or(f64::NAN);
            if !label.is_nan() {
                let by = (!on_canary).then_some(&model.0);
                t.labelled(x, label, scores[i], by, pos.partition, pos.offset, ts);
            } else if let Some(serving) = &serving
                && let Some(Some(id)) = parsed.ids.get(first_index + i)
            {
                let served = match (&canary, on_canary) {
                    (Some(c), true) => c.clone(),
                    _ => serving.clone(),
                };
                t.wait_for_label(
                    batch.key(i).unwrap_or_default(),
                    id.clone(),
                    x,
                    scores[i],
                    served,
                    !on_canary,
                    pos.partition,
                    pos.offset,
                    ts,
                );
            }
        }
    }

    /// Limits how many due windows one `process` or `tick` call emits (with an eighth of
    /// the rest on top, so a backlog drains), keeping the others for the next calls: a
    /// watermark that crosses the end of many windows at once then delays the events of one
    /// call by that many windows' work, not all of it. `None` (the default) emits every due
    /// window at once. [`Pipeline::checkpoint`] needs none pending: emit them first with
    /// [`Pipeline::drain_fires`].
    pub fn set_fire_budget(&mut self, budget: Option<usize>) {
        self.windows.fire_budget = budget.map(|b| b.max(1));
    }

    /// Whether a step's windows may run on a second thread of the pipeline's own while this
    /// one scores (on by default; only steps of at least 256 events do). Turn it off where
    /// all of the pipeline's work must stay on the caller's thread, for example when that
    /// thread's CPU time is what a tenant is charged.
    pub fn set_windows_beside(&mut self, on: bool) {
        self.beside_allowed = on;
        if !on {
            self.beside = None;
        }
    }

    /// Due windows not emitted yet.
    pub fn pending_fires(&self) -> usize {
        self.windows.pending()
    }

    /// Emits every due window kept back by the fire budget.
    pub fn drain_fires(&mut self, out: &mut Outputs) -> Result<(), PipelineError> {
        if self.windows.pending() == 0 {
            return Ok(());
        }
        let mark = (out.results.len(), out.windows.len());
        let kp = self.checkpoints.as_ref().map(|c| &c.key_partition);
        let done = self.windows.drain(kp, &mut out.windows);
        self.keep_for_checkpoint(out, mark);
        done
    }
}

/// Calls into a runner's instance, recording latency, fuel and failures under (stage,
/// role, version). Returns the version and plugin sha256 with the result.
fn timed<R>(
    metrics: &PipelineMetrics,
    stage: &str,
    role: Role,
    runner: &mut Runner,
    rows: usize,
    f: impl FnOnce(&mut Instance) -> weir_engine::Result<R>,
) -> weir_engine::Result<(VersionId, String, R)> {
    let switches = runner.switches();
    let switching = Instant::now();
    runner.instance()?;
    if runner.switches() != switches {
        metrics.record_switch(switching.elapsed());
    }
    let inst = runner.instance()?;
    let version = inst.deployment().version.clone();
    let plugin = inst.deployment().plugin.id().0.clone();
    let started = Instant::now();
    let result = f(inst);
    let elapsed = started.elapsed();
    let fuel = inst.last_fuel_used();
    let logs = inst.logs().drain();
    if !logs.is_empty() {
        metrics.push_logs(
            crate::metrics::StageKey {
                stage: stage.to_owned(),
                role,
                version: version.0.clone(),
            },
            logs,
        );
    }
    metrics.with(stage, role, &version.0, &plugin, |s| {
        s.calls += 1;
        s.rows += rows as u64;
        s.fuel += fuel;
        s.latency.observe(elapsed);
        if result.is_err() {
            s.errors += 1;
        }
    });
    result.map(|r| (version, plugin, r))
}

/// Scores `features` with a model runner: runs of labelled rows through the prequential
/// `train` when `train` is set, the rest through `predict`, in row order. Scores labelled
/// rows against their labels in the metrics.
fn run_model(
    metrics: &PipelineMetrics,
    role: Role,
    r: &mut Runner,
    features: &FeatureBatch,
    labels: &[f64],
    train: bool,
) -> weir_engine::Result<(VersionId, String, Vec<f64>)> {
    let n = features.rows as usize;
    let (v, plugin, scores) = if train && labels.len() == n && n > 0 {
        let d = features.dims as usize;
        let mut scores = Vec::with_capacity(n);
        let mut version = None;
        let mut i = 0;
        while i < n {
            let labelled = !labels[i].is_nan();
            let mut j = i + 1;
            while j < n && labels[j].is_nan() != labelled {
                j += 1;
            }
            let part;
            let rows = if i == 0 && j == n {
                features
            } else {
                part = FeatureBatch::new(
                    (j - i) as u32,
                    features.dims,
                    features.values[i * d..j * d].to_vec(),
                );
                &part
            };
            let (v, plugin, s) = if labelled {
                timed(metrics, "model", role, r, j - i, |inst| {
                    inst.train(rows, &labels[i..j])
                })?
            } else {
                timed(metrics, "model", role, r, j - i, |inst| inst.predict(rows))?
            };
            scores.extend(s);
            version = Some((v, plugin));
            i = j;
        }
        match version {
            Some((v, plugin)) => (v, plugin, scores),
            None => timed(metrics, "model", role, r, n, |inst| inst.predict(features))?,
        }
    } else {
        timed(metrics, "model", role, r, n, |inst| inst.predict(features))?
    };
    if !labels.is_empty() {
        metrics.with("model", role, &v.0, &plugin, |s| {
            s.score_labels(&scores, labels)
        });
    }
    Ok((v, plugin, scores))
}

/// The rows `idx` of a feature batch.
fn select_rows(f: &FeatureBatch, idx: &[usize]) -> FeatureBatch {
    let d = f.dims as usize;
    let mut values = Vec::with_capacity(idx.len() * d);
    for i in idx {
        values.extend_from_slice(&f.values[i * d..(i + 1) * d]);
    }
    FeatureBatch::new(idx.len() as u32, f.dims, values)
}

/// Keeps a variant's runner on the variant's slot: a new runner when the slot changed,
/// none when the variant ended.
fn sync_runner(runner: &mut Option<Runner>, slot: Option<&Arc<Slot>>) {
    match (runner.as_ref(), slot) {
        (Some(r), Some(s)) if Arc::ptr_eq(r.slot(), s) => {}
        (_, Some(s)) => *runner = Some(Runner::new(s.clone())),
        (_, None) => *runner = None,
    }
}

/// Opens a per-event output record: `{"key":…,"ts":…,"partition":…,"offset":…` (the
/// caller adds its fields and the closing brace).
fn push_event_head(p: &mut Vec<u8>, key: &str, ts: i64, pos: SourcePos) {
    p.extend_from_slice(b"{\"key\":");
    push_json_str(p, key);
    p.extend_from_slice(b",\"ts\":");
    push_i64(p, ts);
    p.extend_from_slice(b",\"partition\":");
    push_i64(p, i64::from(pos.partition));
    p.extend_from_slice(b",\"offset\":");
    push_i64(p, pos.offset);
}

#[derive(Default)]
struct Scored {
    extractor: Option<(VersionId, String)>,
    model: Option<(VersionId, String)>,
    /// The canary's version, and which rows it scored.
    canary: Option<(VersionId, String)>,
    canary_rows: Vec<bool>,
    /// The shadow's version and scores.
    shadow: Option<(VersionId, String, Vec<f64>)>,
    scores: Option<Vec<f64>>,
    features: Option<FeatureBatch>,
    /// The model's input rows, kept for training.
    model_features: Option<FeatureBatch>,
    operator_outputs: Vec<(VersionId, EventBatch)>,
}

/// The most of a failed record's payload a dead letter carries: the dead letter of a record
/// near the topic's size limit must still fit in the dead-letter topic. The partition and
/// offset always point at the whole record.
pub const DEAD_LETTER_PAYLOAD_MAX: usize = 256 << 10;

fn dead_letter(out: &mut Records, r: &SourceRecord<'_>, stage: &str, reason: &str) {
    let kept = r.payload.len().min(DEAD_LETTER_PAYLOAD_MAX);
    let meta = RecordMeta {
        partition: r.partition,
        offset: r.offset,
        ..RecordMeta::default()
    };
    out.push_with("", meta, |p| {
        p.extend_from_slice(b"{\"reason\":");
        push_json_str(p, reason);
        p.extend_from_slice(b",\"stage\":");
        push_json_str(p, stage);
        p.extend_from_slice(b",\"partition\":");
        push_i64(p, i64::from(r.partition));
        p.extend_from_slice(b",\"offset\":");
        push_i64(p, r.offset);
        p.push(b',');
        if kept < r.payload.len() {
            p.extend_from_slice(b"\"payload_bytes\":");
            push_i64(p, r.payload.len() as i64);
            p.extend_from_slice(b",\"truncated\":true,");
        }
        p.extend_from_slice(b"\"payload\":");
        push_json_str(p, &String::from_utf8_lossy(&r.payload[..kept]));
        p.push(b'}');
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointOptions;

    /// Every output record as (key, payload), in order.
    fn all(r: &Records) -> Vec<(String, String)> {
        r.iter()
            .map(|x| {
                let payload = String::from_utf8_lossy(x.payload).into_owned();
                (x.key.to_owned(), payload)
            })
            .collect()
    }

    /// Big steps are parsed in two halves at once and run their windows beside the scoring:
    /// every output, every counter and the checkpoint are the same as all in line.
    #[test]
    fn windows_beside_the_scoring_change_nothing() {
        let spec = PipelineSpec::parse(
            "name = \"beside\"\n[source]\ntopic = \"in\"\nkey_field = \"k\"\n\
             time_field = \"t\"\ninputs_field = \"x\"\ninput_dims = 2\n\
             [window]\nkind = \"tumbling\"\nsize_ms = 100\nlateness_ms = 200\n\
             aggregates = [\"count\", \"mean\", \"max\"]\n\
             [sink]\ntopic = \"out\"\ndead_letter_topic = \"dlq\"\n",
        )
        .unwrap();
        // 3,000 events of 40 keys over 3 partitions, every 7th 150 ms late (some of them
        // too late), and a record that does not parse every 500.
        let payloads: Vec<String> = (0..3000i64)
            .map(|i| match i {
                _ if i % 500 == 499 => "{\"k\":".to_owned(),
                _ => {
                    let t = i * 5 - if i % 7 == 0 { 150 + i % 300 } else { 0 };
                    format!("{{\"k\":\"k{}\",\"t\":{t},\"x\":[{i}.5,-1]}}", i % 40)
                }
            })
            .collect();
        let records: Vec<SourceRecord<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| SourceRecord {
                partition: (i % 3) as i32,
                offset: (i / 3) as i64,
                payload: p.as_bytes(),
            })
            .collect();
        let run = |beside: bool| {
            let mut p = Pipeline::new(&spec, StageSlots::default()).unwrap();
            p.enable_checkpoints(CheckpointOptions::default());
            p.set_windows_beside(beside);
            let mut out = Outputs::default();
            // Steps of 600: parsed in two halves, and windows beside the scoring.
            for chunk in records.chunks(2 * BESIDE_MIN + 88) {
                p.process(chunk, 0, &mut out).unwrap();
            }
            let cut = p.checkpoint().unwrap();
            (out, p.stats(), cut)
        };
        let (beside, beside_stats, beside_cut) = run(true);
        let (inline, inline_stats, inline_cut) = run(false);
        assert!(beside.windows.len() > 100, "{}", beside.windows.len());
        assert!(beside.late.len() > 10, "{}", beside.late.len());
        assert_eq!(beside.dead.len(), 6);
        assert_eq!(beside.results.len(), 2994);
        for (a, b) in [
            (&beside.results, &inline.results),
            (&beside.windows, &inline.windows),
            (&beside.late, &inline.late),
            (&beside.dead, &inline.dead),
        ] {
            assert_eq!(all(a), all(b));
        }
        assert_eq!(beside_stats, inline_stats);
        assert_eq!(beside_stats.windows_out, beside.windows.len() as u64);
        assert_eq!(beside_stats.late, beside.late.len() as u64);
        assert_eq!(beside_cut.partitions, inline_cut.partitions);
        assert_eq!(all(&beside_cut.windows), all(&beside.windows));
    }

    #[test]
    fn dead_letters_keep_a_bounded_part_of_huge_records() {
        let small = SourceRecord {
            partition: 2,
            offset: 7,
            payload: b"{\"bad\":1",
        };
        let mut out = Records::default();
        dead_letter(&mut out, &small, "parse", "no key");
        let v: serde_json::Value = serde_json::from_slice(out.get(0).unwrap().payload).unwrap();
        assert_eq!(v["payload"], "{\"bad\":1");
        assert!(v.get("truncated").is_none());
        assert_eq!(
            (v["partition"].as_i64(), v["offset"].as_i64()),
            (Some(2), Some(7))
        );

        let huge = vec![b'x'; 3 << 20];
        let big = SourceRecord {
            partition: 0,
            offset: 9,
            payload: &huge,
        };
        let mut out = Records::default();
        dead_letter(&mut out, &big, "parse", "not JSON");
        let d = out.get(0).unwrap().payload;
        assert!(d.len() < DEAD_LETTER_PAYLOAD_MAX + 200, "{}", d.len());
        let v: serde_json::Value = serde_json::from_slice(d).unwrap();
        assert_eq!(v["truncated"], true);
        assert_eq!(v["payload_bytes"].as_u64(), Some(3 << 20));
        assert_eq!(
            v["payload"].as_str().map(str::len),
            Some(DEAD_LETTER_PAYLOAD_MAX)
        );
    }
}
