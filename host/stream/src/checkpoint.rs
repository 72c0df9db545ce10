//! A checkpoint as a value: everything the stream core hands a worker for one cut, owned.
//!
//! With checkpoints enabled, a [`Pipeline`] tracks which partition owns each key, the
//! windower's changed panes, the keyed state of its Wasm operators, and keeps a durable copy
//! of the outputs a database stores (window results always, per-event results on request).
//! [`Pipeline::checkpoint`] then returns one [`Checkpoint`]: per partition its watermark and
//! state changes, the outputs since the previous cut, the model's snapshot when it trained,
//! the version switches and the training decisions. The worker adds what only it knows (the
//! source positions, their owner epochs, the gaps) and commits it, off the hot thread.

use crate::output::{Outputs, Records};
use crate::pipeline::{Pipeline, PipelineError, Switch};
use crate::state::TrackedState;
use crate::training::Decision;
use std::collections::BTreeMap;
use weir_engine::Runner;

/// The keyed-state namespace of a key's window header (see [`Windower::take_touched`]).
///
/// [`Windower::take_touched`]: crate::window::Windower::take_touched
pub const WINDOW_NAMESPACE: &str = "window";
/// The namespace of a key's window row chunk `N` is this prefix and `N`.
pub const WINDOW_ROWS_PREFIX: &str = "window#";

/// What a checkpoint carries besides the state (which it always carries).
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointOptions {
    /// Keep every per-event result for the checkpoint (window results are always kept).
    pub results: bool,
}

/// A keyed-state change since the previous cut, for a durable store.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// `window` for the windower's panes, `<stage>/<name>` for a plugin's entries.
    pub namespace: String,
    /// Record key.
    pub key: String,
    /// New value, `None` when deleted.
    pub value: Option<Vec<u8>>,
}

/// One partition's part of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionCut {
    /// The partition's watermark.
    pub watermark: i64,
    /// Keyed-state changes of the keys it owns, since the previous cut.
    pub state: Vec<StateChange>,
}

/// A trained model's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSnapshot {
    /// The sha256 of the plugin that wrote them.
    pub plugin_sha256: String,
    /// The plugin's `snapshot` bytes.
    pub bytes: Vec<u8>,
}

/// Everything the stream core hands over for one cut.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Per partition the pipeline knows: its watermark and state changes.
    pub partitions: BTreeMap<i32, PartitionCut>,
    /// State changes of keys no known partition owns (dropped; counted for a warning).
    pub orphaned: usize,
    /// Per-event results since the previous cut (with [`CheckpointOptions::results`]).
    pub results: Records,
    /// Window results since the previous cut.
    pub windows: Records,
    /// The model's parameters, when it trained since the previous cut.
    pub snapshot: Option<ModelSnapshot>,
    /// Version switches since the previous cut.
    pub switches: Vec<Switch>,
    /// Training decisions since the previous cut.
    pub decisions: Vec<Decision>,
}

/// What checkpointing tracks between cuts.
#[derive(Default)]
pub(crate) struct Tracking {
    pub(crate) options: CheckpointOptions,
    /// Which partition keeps each key's state: the one the key was first seen on (or, after
    /// a restore, the one that stored it). It never moves, so a key's rows live in one place.
    pub(crate) key_partition: crate::FastMap<String, i32>,
    /// `(stage name, its state)` for every stateful Wasm stage.
    pub(crate) states: Vec<(String, TrackedState)>,
    pub(crate) results: Records,
    pub(crate) windows: Records,
    /// How many of the pipeline's switches earlier cuts carried.
    pub(crate) switches_cut: usize,
}

impl Pipeline {
    /// Turns on checkpoint tracking: which partition each key belongs to, the windower's
    /// changed panes, the keyed state of the Wasm operators (held in a [`TrackedState`]
    /// each), and the outputs a database keeps. Call it before the first batch; then
    /// [`Pipeline::checkpoint`] hands over each cut.
    pub fn enable_checkpoints(&mut self, options: CheckpointOptions) {
        if self.checkpoints.is_some() {
            return;
        }
        let mut cp = Tracking {
            options,
            switches_cut: self.switches.len(),
            ..Tracking::default()
        };
        if let Some(w) = self.windows.stage.as_mut() {
            w.windower.track_changes();
            if let Some(op) = w.operator.take() {
                let st = TrackedState::default();
                cp.states.push(("window".into(), st.clone()));
                w.operator = Some(op.with_state(&st));
            }
        }
        for (i, op) in self.operators.iter_mut().enumerate() {
            let st = TrackedState::default();
            cp.states.push((format!("operator-{i}"), st.clone()));
            *op = Runner::new(op.slot().clone()).with_state(Box::new(st));
        }
        self.checkpoints = Some(cp);
    }

    /// Hands over everything since the previous cut (an empty checkpoint unless checkpoints
    /// are on). A model that trained is snapshotted; that call into the plugin can fail.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, PipelineError> {
        if self.pending_fires() > 0 {
            // Their rows left the windows' state but have not reached the operator's: a cut
            // now would lose them.
            return Err(PipelineError::Setup(format!(
                "a checkpoint cut with {} due windows not emitted (drain_fires first)",
                self.pending_fires()
            )));
        }
        let snapshot = self.take_snapshot()?;
        let mut out = Checkpoint {
            snapshot,
            decisions: self
                .trainer
                .as_ref()
                .map(|t| t.shared().take_decisions())
                .unwrap_or_default(),
            ..Checkpoint::default()
        };
        let Some(cp) = self.checkpoints.as_mut() else {
            return Ok(out);
        };
        for (p, watermark) in self.windows.watermarks.partitions() {
            out.partitions.insert(
                p,
                PartitionCut {
                    watermark,
                    state: Vec::new(),
                },
            );
        }
        let mut changes = Vec::new();
        if let Some(w) = self.windows.stage.as_mut() {
            for e in w.windower.take_touched() {
                let namespace = match e.chunk {
                    None => WINDOW_NAMESPACE.to_owned(),
                    Some(seq) => format!("{WINDOW_ROWS_PREFIX}{seq}"),
                };
                changes.push((namespace, e.key, e.value));
            }
        }
        for (stage, st) in &cp.states {
            for (key, name, value) in st.take_changes() {
                changes.push((format!("{stage}/{name}"), key, value));
            }
        }
        for (namespace, key, value) in changes {
            let cut = cp
                .key_partition
                .get(&key)
                .and_then(|p| out.partitions.get_mut(p));
            match cut {
                Some(cut) => cut.state.push(StateChange {
                    namespace,
                    key,
                    value,
                }),
                None => out.orphaned += 1,
            }
        }
        out.results = std::mem::take(&mut cp.results);
        out.windows = std::mem::take(&mut cp.windows);
        out.switches = self.switches[cp.switches_cut..].to_vec();
        cp.switches_cut = self.switches.len();
        Ok(out)
    }

    /// The model's parameters when it trained since the last call.
    fn take_snapshot(&mut self) -> Result<Option<ModelSnapshot>, PipelineError> {
        if !self.trained_since_snapshot {
            return Ok(None);
        }
        let Some(r) = self.model.as_mut() else {
            return Ok(None);
        };
        let inst = r.instance()?;
        let bytes = inst.snapshot()?;
        let plugin_sha256 = inst.deployment().plugin.id().0.clone();
        self.trained_since_snapshot = false;
        Ok(Some(ModelSnapshot {
            plugin_sha256,
            bytes,
        }))
    }

    /// Restores a partition from its checkpoint: its watermark and the keyed state it owns
    /// (`(namespace, key, value)` as its checkpoints stored them).
    pub fn restore_partition(
        &mut self,
        partition: i32,
        watermark: i64,
        entries: &[(String, String, Vec<u8>)],
        now_ms: u64,
    ) -> Result<(), PipelineError> {
        self.windows
            .watermarks
            .restore(partition, watermark, now_ms);
        let Some(cp) = self.checkpoints.as_mut() else {
            return Err(PipelineError::Setup(
                "restoring a partition needs checkpoints enabled".into(),
            ));
        };
        // A key's window state is its header and its row chunks, restored together.
        let mut headers: BTreeMap<&str, &[u8]> = BTreeMap::new();
        let mut chunks: BTreeMap<&str, Vec<(u64, &[u8])>> = BTreeMap::new();
        for (namespace, key, value) in entries {
            cp.key_partition.insert(key.clone(), partition);
            if namespace == WINDOW_NAMESPACE {
                headers.insert(key, value);
                continue;
            }
            if let Some(seq) = namespace.strip_prefix(WINDOW_ROWS_PREFIX) {
                let seq = seq.parse().map_err(|_| {
                    PipelineError::Setup(format!("unknown state namespace `{namespace}`"))
                })?;
                chunks.entry(key).or_default().push((seq, value));
                continue;
            }
            let (stage, name) = namespace.split_once('/').ok_or_else(|| {
                PipelineError::Setup(format!("unknown state namespace `{namespace}`"))
            })?;
            let st = cp
                .states
                .iter()
                .find(|(s, _)| s == stage)
                .map(|(_, st)| st)
                .ok_or_else(|| {
                    PipelineError::Setup(format!(
                        "the checkpoint has state for stage `{stage}`, which this pipeline lacks"
                    ))
                })?;
            st.load(key, name, value.clone());
        }
        if headers.is_empty() && chunks.is_empty() {
            return Ok(());
        }
        let w = self.windows.stage.as_mut().ok_or_else(|| {
            PipelineError::Setup(
                "the checkpoint has window state but the pipeline has no window".into(),
            )
        })?;
        if let Some(key) = chunks.keys().find(|k| !headers.contains_key(*k)) {
            return Err(PipelineError::Setup(format!(
                "key `{key}`: corrupt window state: row chunks without their header"
            )));
        }
        for (key, header) in headers {
            let rows = chunks.remove(key).unwrap_or_default();
            w.windower
                .restore_key(key, header, &rows)
                .map_err(|e| PipelineError::Setup(format!("key `{key}`: {e}")))?;
        }
        Ok(())
    }

    /// Keeps durable copies of the outputs from `mark` (results, windows) on for the next
    /// cut, as the options ask.
    pub(crate) fn keep_for_checkpoint(&mut self, out: &Outputs, mark: (usize, usize)) {
        if let Some(cp) = self.checkpoints.as_mut() {
            if cp.options.results {
                cp.results.extend_from(&out.results, mark.0);
            }
            cp.windows.extend_from(&out.windows, mark.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{SourceRecord, StageSlots};
    use crate::spec::PipelineSpec;

    fn pipeline() -> Pipeline {
        let spec = PipelineSpec::parse(
            "name = \"hops\"\n[source]\ntopic = \"in\"\ninputs_field = \"x\"\ninput_dims = 1\n\
             [window]\nkind = \"tumbling\"\nsize_ms = 1000\nlateness_ms = 2000\n\
             aggregates = [\"count\", \"max\"]\n[sink]\ntopic = \"out\"\ndead_letter_topic = \"dlq\"\n",
        )
        .unwrap();
        let mut p = Pipeline::new(&spec, StageSlots::default()).unwrap();
        p.enable_checkpoints(CheckpointOptions::default());
        p
    }

    /// `(partition, key, ts, x)` as one batch.
    fn feed(p: &mut Pipeline, events: &[(i32, &str, i64, f64)], out: &mut Outputs) {
        let payloads: Vec<String> = events
            .iter()
            .map(|(_, k, ts, x)| format!("{{\"key\":\"{k}\",\"ts\":{ts},\"x\":[{x}]}}"))
            .collect();
        let records: Vec<SourceRecord<'_>> = events
            .iter()
            .zip(&payloads)
            .enumerate()
            .map(|(i, ((partition, ..), payload))| SourceRecord {
                partition: *partition,
                offset: i as i64,
                payload: payload.as_bytes(),
            })
            .collect();
        p.process(&records, 0, out).unwrap();
        p.drain_fires(out).unwrap();
    }

    /// A store of the cuts so far: `(partition, namespace, key) -> value`.
    type Store = BTreeMap<(i32, String, String), Vec<u8>>;

    fn apply(store: &mut Store, marks: &mut BTreeMap<i32, i64>, cut: Checkpoint) {
        for (partition, pc) in cut.partitions {
            marks.insert(partition, pc.watermark);
            for c in pc.state {
                let id = (partition, c.namespace, c.key);
                match c.value {
                    Some(v) => store.insert(id, v),
                    None => store.remove(&id),
                };
            }
        }
    }

    fn windows(out: &Outputs) -> Vec<String> {
        let mut w: Vec<String> = out
            .windows
            .iter()
            .map(|r| r.payload_str().to_owned())
            .collect();
        w.sort();
        w
    }

    /// A key that arrives on several partitions keeps its state with the first one, so a
    /// restore finds one copy of it, the latest; counted in `key_hops`. (Its state used to
    /// follow the key's latest partition, leaving an old copy behind that a restore of the
    /// first partition brought back.)
    #[test]
    fn a_key_on_several_partitions_keeps_its_state_in_one() {
        let batches: [&[(i32, &str, i64, f64)]; 3] = [
            &[(1, "k", 100, 1.0), (0, "j", 100, 5.0)],
            &[(0, "k", 200, 2.0), (0, "j", 300, 6.0), (1, "k", 250, 3.0)],
            &[(0, "k", 400, 4.0), (1, "j", 500, 7.0)],
        ];
        let (mut whole, mut whole_out) = (pipeline(), Outputs::default());
        let (mut store, mut marks) = (Store::new(), BTreeMap::new());
        for b in batches {
            feed(&mut whole, b, &mut whole_out);
            let cut = whole.checkpoint().unwrap();
            assert_eq!(cut.orphaned, 0);
            for (partition, pc) in &cut.partitions {
                for c in &pc.state {
                    let home = if c.key == "k" { 1 } else { 0 };
                    assert_eq!(*partition, home, "{c:?}");
                }
            }
            apply(&mut store, &mut marks, cut);
        }
        assert_eq!(whole.stats().key_hops, 3);
        assert!(
            store
                .keys()
                .all(|(p, _, k)| *p == if k == "k" { 1 } else { 0 })
        );

        // Restored from the store, then the same tail: the same windows.
        let tail: &[(i32, &str, i64, f64)] = &[(1, "k", 900, 9.0), (0, "j", 5000, 1.0)];
        feed(&mut whole, tail, &mut whole_out);
        whole.flush(&mut whole_out).unwrap();
        let mut restored = pipeline();
        for (partition, watermark) in &marks {
            let entries: Vec<(String, String, Vec<u8>)> = store
                .iter()
                .filter(|((p, ..), _)| p == partition)
                .map(|((_, ns, k), v)| (ns.clone(), k.clone(), v.clone()))
                .collect();
            restored
                .restore_partition(*partition, *watermark, &entries, 0)
                .unwrap();
        }
        let mut out = Outputs::default();
        feed(&mut restored, tail, &mut out);
        restored.flush(&mut out).unwrap();
        let last = |w: Vec<String>| -> Vec<String> {
            w.into_iter()
                .filter(|s| s.contains("\"window_start\":0"))
                .collect()
        };
        let expect = last(windows(&whole_out));
        assert_eq!(expect.len(), 2, "{expect:?}");
        assert!(
            expect.iter().any(|s| s.contains("\"count\":5")),
            "{expect:?}"
        );
        assert_eq!(last(windows(&out)), expect);
    }
}
