//! Job 2's side of a step: the keyed windows, the watermarks that close them, and the window
//! results. It reads the step's parsed events and touches nothing the scoring side does, so
//! the two sides of a batch run side by side (see [`Pipeline::process`](super::Pipeline)).

use super::{Parsed, PipelineError, SourceRecord, timed};
use crate::FastMap;
use crate::aggregate::AggKind;
use crate::metrics::{PipelineMetrics, Role};
use crate::output::{RecordMeta, Records, push_f64, push_i64, push_json_str};
use crate::watermark::Watermarks;
use crate::window::{Fired, Lateness, Windower};
use std::collections::VecDeque;
use std::sync::Arc;
use weir_engine::{KeyedState, Runner, Slot, WindowBatch};

/// Most windows handed to one `on-window` call.
const WINDOW_CALL_MAX: usize = 2048;

/// The `[window]` stage: its windower, what it aggregates, and its operator.
pub(crate) struct WindowStage {
    pub(crate) windower: Windower,
    pub(super) aggs: Vec<AggKind>,
    pub(super) value_index: usize,
    /// The inputs an operator's rows carry (`window.row_inputs`), when not all of them,
    /// and the row being built from them.
    pub(super) row_inputs: Option<Vec<usize>>,
    pub(super) row: Vec<f64>,
    pub(crate) operator: Option<HalvedOperator>,
    pub(super) outputs: Vec<String>,
    /// Windows due but not emitted yet (with a fire budget: see
    /// [`Pipeline::set_fire_budget`](super::Pipeline::set_fire_budget)), oldest first.
    pub(super) pending: VecDeque<Fired>,
}

/// The window side of a pipeline: the stage (if the spec has one), the watermarks (kept
/// without a window too: they are checkpointed and reported), and its counters.
pub(crate) struct Windowing {
    pub(crate) stage: Option<WindowStage>,
    pub(crate) watermarks: Watermarks,
    /// Most due windows one call emits.
    pub(super) fire_budget: Option<usize>,
    metrics: Arc<PipelineMetrics>,
    pub(super) late: u64,
    pub(super) windows_out: u64,
    pub(super) watermark: i64,
    /// The second half's window results, before they follow the first's (kept buffer).
    second_out: Records,
}

impl Default for Windowing {
    /// An empty side: what stands in the pipeline while its side runs on another thread.
    fn default() -> Self {
        Windowing::new(None, Watermarks::new(0, 0), Arc::default())
    }
}

impl Windowing {
    pub(super) fn new(
        stage: Option<WindowStage>,
        watermarks: Watermarks,
        metrics: Arc<PipelineMetrics>,
    ) -> Self {
        Windowing {
            stage,
            watermarks,
            fire_budget: None,
            metrics,
            late: 0,
            windows_out: 0,
            watermark: i64::MIN,
            second_out: Records::default(),
        }
    }

    /// A step's first half: its events into their windows, then the windows the watermark
    /// closes out, to hand to [`Windowing::emit`].
    pub(super) fn collect(
        &mut self,
        step: &Parsed,
        records: &[SourceRecord<'_>],
        now_ms: u64,
        late: &mut Records,
    ) -> Vec<Fired> {
        if !step.batch.is_empty() {
            self.events(step, records, now_ms, late);
        }
        self.due(now_ms)
    }

    /// Advances the watermarks event by event and assigns events to windows. Lateness is
    /// judged against the watermark of the event's own partition *at its arrival*
    /// (including the event itself), exactly as if records were processed one by one, and
    /// independent of how partitions interleave (so a replay decides the same way);
    /// windows fire at the step's end, on the watermark combined across partitions.
    fn events(
        &mut self,
        step: &Parsed,
        records: &[SourceRecord<'_>],
        now_ms: u64,
        out: &mut Records,
    ) {
        let batch = &step.batch;
        let Some(w) = self.stage.as_mut() else {
            for (i, p) in step.positions.iter().enumerate() {
                self.watermarks
                    .observe(p.partition, batch.timestamps[i], now_ms);
            }
            return;
        };
        for i in 0..batch.len() {
            let (Some(key), Some(row)) = (batch.key(i), batch.inputs_of(i)) else {
                continue;
            };
            let ts = batch.timestamps[i];
            let partition = step.positions[i].partition;
            self.watermarks.observe(partition, ts, now_ms);
            let judge = self.watermarks.partition_watermark(partition);
            let value = row[w.value_index];
            let row = match &w.row_inputs {
                Some(inputs) => {
                    w.row.clear();
                    w.row.extend(inputs.iter().map(|&j| row[j]));
                    &w.row[..]
                }
                None => row,
            };
            if w.windower.add_judged(key, ts, value, row, judge) == Lateness::TooLate {
                w.windower.count_late();
                self.late += 1;
                let r = &records[step.raw[i]];
                let watermark = w.windower.watermark();
                out.push_with(
                    key,
                    RecordMeta {
                        partition: r.partition,
                        offset: r.offset,
                        ts,
                        ..RecordMeta::default()
                    },
                    |p| {
                        p.extend_from_slice(b"{\"reason\":\"too late for every window\",\"key\":");
                        push_json_str(p, key);
                        p.extend_from_slice(b",\"ts\":");
                        push_i64(p, ts);
                        p.extend_from_slice(b",\"watermark\":");
                        push_i64(p, watermark);
                        p.extend_from_slice(b",\"partition\":");
                        push_i64(p, i64::from(r.partition));
                        p.extend_from_slice(b",\"offset\":");
                        push_i64(p, r.offset);
                        p.extend_from_slice(b",\"payload\":");
                        push_json_str(p, &String::from_utf8_lossy(r.payload));
                        p.push(b'}');
                    },
                );
            }
        }
    }

    /// Advances the combined watermark and emits the windows it closes out (within the
    /// fire budget, if one is set).
    pub(super) fn fire(
        &mut self,
        now_ms: u64,
        key_partition: Option<&FastMap<String, i32>>,
        out: &mut Records,
    ) -> Result<(), PipelineError> {
        let fired = self.due(now_ms);
        self.emit(fired, key_partition, out)
    }

    /// Advances the combined watermark: the windows it closes out (within the fire budget,
    /// if one is set).
    fn due(&mut self, now_ms: u64) -> Vec<Fired> {
        let wm = self.watermarks.advance(now_ms);
        self.watermark = wm;
        let Some(w) = self.stage.as_mut() else {
            return Vec::new();
        };
        let fired = w.windower.advance(wm);
        let Some(budget) = self.fire_budget else {
            return fired;
        };
        w.pending.extend(fired);
        // The budget, and an eighth of what waits beyond it: a burst is spread over a few
        // calls, and a steady excess cannot pile up.
        let n = w.pending.len().min(budget + w.pending.len() / 8);
        w.pending.drain(..n).collect()
    }

    /// Due windows not emitted yet.
    pub(super) fn pending(&self) -> usize {
        self.stage.as_ref().map_or(0, |w| w.pending.len())
    }

    /// Emits every due window kept back by the fire budget.
    pub(super) fn drain(
        &mut self,
        key_partition: Option<&FastMap<String, i32>>,
        out: &mut Records,
    ) -> Result<(), PipelineError> {
        let Some(w) = self.stage.as_mut() else {
            return Ok(());
        };
        let fired: Vec<Fired> = w.pending.drain(..).collect();
        self.emit(fired, key_partition, out)
    }

    /// End of a bounded input: fires and releases every window.
    pub(super) fn flush(
        &mut self,
        key_partition: Option<&FastMap<String, i32>>,
        out: &mut Records,
    ) -> Result<(), PipelineError> {
        let Some(w) = self.stage.as_mut() else {
            return Ok(());
        };
        let mut fired: Vec<Fired> = w.pending.drain(..).collect();
        fired.extend(w.windower.flush());
        self.emit(fired, key_partition, out)
    }

    /// Emits fired windows: with the window operator, each half of the keys through its
    /// own instance, the first half's results first.
    pub(super) fn emit(
        &mut self,
        fired: Vec<Fired>,
        key_partition: Option<&FastMap<String, i32>>,
        out: &mut Records,
    ) -> Result<(), PipelineError> {
        let Some(w) = self.stage.as_mut() else {
            return Ok(());
        };
        if fired.is_empty() {
            return Ok(());
        }
        let partition_of = |key: &str| partition_of(key_partition, key);
        let Some(op) = w.operator.as_mut() else {
            let fired = crate::window::merge_firings(fired);
            let builtin: Arc<str> = Arc::from("builtin");
            for f in fired.iter().filter(|f| f.updated) {
                let meta = RecordMeta {
                    partition: partition_of(&f.key),
                    ts: f.span.start,
                    window_end: f.span.end,
                    version: builtin.clone(),
                    ..RecordMeta::default()
                };
                let aggs = &w.aggs;
                out.push_with(&f.key, meta, |p| {
                    p.extend_from_slice(b"{\"key\":");
                    push_json_str(p, &f.key);
                    p.extend_from_slice(b",\"window_start\":");
                    push_i64(p, f.span.start);
                    p.extend_from_slice(b",\"window_end\":");
                    push_i64(p, f.span.end);
                    for a in aggs {
                        let name = match a {
                            AggKind::Count => "count",
                            AggKind::Sum => "sum",
                            AggKind::Mean => "mean",
                            AggKind::Min => "min",
                            AggKind::Max => "max",
                            AggKind::Variance => "variance",
                        };
                        p.extend_from_slice(b",\"");
                        p.extend_from_slice(name.as_bytes());
                        p.extend_from_slice(b"\":");
                        push_f64(p, f.agg.get(*a));
                    }
                    p.push(b'}');
                });
                self.windows_out += 1;
            }
            return Ok(());
        };
        let (first, second) = split_halves(fired);
        let call = OperatorCall {
            metrics: &self.metrics,
            names: &w.outputs,
            dims: w.windower.dims(),
            partition_of: &partition_of,
        };
        let [op_first, op_second] = &mut op.halves;
        let a = call.run(op_first, first, out);
        let b = call.run(op_second, second, out);
        self.windows_out += a.as_ref().map_or(0, |n| *n) + b.as_ref().map_or(0, |n| *n);
        a?;
        b?;
        Ok(())
    }

    /// A big step's window side, on `thread`, while `score` runs here.
    ///
    /// There, the step's events go into their windows and the due windows are collected;
    /// the first half of the keys' windows then run through the operator's first instance
    /// there, while the second half's, handed over, run through the second instance here
    /// once `score` is done. The first half's results come first, as in
    /// [`Windowing::emit`]. Without an operator, the windows are emitted here after both.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_beside<R>(
        &mut self,
        thread: &rayon::ThreadPool,
        step: &Parsed,
        records: &[SourceRecord<'_>],
        now_ms: u64,
        late: &mut Records,
        key_partition: Option<&FastMap<String, i32>>,
        out: &mut Records,
        score: impl FnOnce() -> R,
    ) -> (R, Result<(), PipelineError>) {
        // What the calls need, owned here: the side itself is busy on the other thread.
        let parts = self
            .stage
            .as_mut()
            .and_then(|w| Some((w.operator.take()?, w.outputs.clone(), w.windower.dims())));
        let Some((mut op, names, dims)) = parts else {
            let mut fired = Vec::new();
            let scored = thread.in_place_scope(|s| {
                s.spawn(|_| fired = self.collect(step, records, now_ms, late));
                score()
            });
            return (scored, self.emit(fired, key_partition, out));
        };
        let metrics = self.metrics.clone();
        let partition_of = |key: &str| partition_of(key_partition, key);
        let call = OperatorCall {
            metrics: &metrics,
            names: &names,
            dims,
            partition_of: &partition_of,
        };
        let mut rest = std::mem::take(&mut self.second_out);
        let [op_first, op_second] = &mut op.halves;
        // The second half's windows, handed over; a panic over there drops the sender, so
        // this side never waits for good (the scope then passes the panic on).
        let (hand, handed) = std::sync::mpsc::sync_channel::<Vec<Fired>>(1);
        let mut a = Ok(0);
        let (scored, b) = {
            let (side, a, call, out) = (&mut *self, &mut a, &call, &mut *out);
            thread.in_place_scope(|s| {
                s.spawn(move |_| {
                    let fired = side.collect(step, records, now_ms, late);
                    let (first, second) = split_halves(fired);
                    let _ = hand.send(second);
                    *a = call.run(op_first, first, out);
                });
                let scored = score();
                let second = handed.recv().unwrap_or_default();
                (scored, call.run(op_second, second, &mut rest))
            })
        };
        if let Some(w) = self.stage.as_mut() {
            w.operator = Some(op);
        }
        out.extend_from(&rest, 0);
        rest.clear();
        self.second_out = rest;
        self.windows_out += a.as_ref().map_or(0, |n| *n) + b.as_ref().map_or(0, |n| *n);
        (scored, a.and(b).map(|_| ()))
    }
}

/// The partition a key's window results go to: the one its events came from (with
/// checkpoints), or -1.
fn partition_of(key_partition: Option<&FastMap<String, i32>>, key: &str) -> i32 {
    key_partition
        .and_then(|m| m.get(key).copied())
        .unwrap_or(-1)
}

/// A step's firings by half of the keys ([`half_of`]). A pane's firings all go to its key's
/// half, so each half merges its own (see [`OperatorCall::run`]).
fn split_halves(fired: Vec<Fired>) -> (Vec<Fired>, Vec<Fired>) {
    fired.into_iter().partition(|f| half_of(&f.key) == 0)
}

/// Which half of the keys a key's windows go to: a fixed hash, so a key stays with one
/// instance of the window operator, and with its state there, for good.
///
/// FNV-1a, then MurmurHash3's 64-bit finaliser. FNV-1a alone mixes a string's last bytes
/// into its low bits only: its bit 32 depended on the prefix of keys like `u123`, and the
/// workload's 10,000 keys split 27/73 by firings.
fn half_of(key: &str) -> usize {
    let mut h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 63) as usize
}

/// The window operator, as two instances of the one deployment: each serves the windows
/// of half of the keys (as an operator at parallelism 2 does in Flink), so the two halves
/// of a step's firings run at once. Both use one keyed-state store; a key's entries are
/// only ever touched by its own half.
pub(crate) struct HalvedOperator {
    pub(crate) halves: [Runner; 2],
}

impl HalvedOperator {
    pub(super) fn new(slot: Arc<Slot>) -> Self {
        HalvedOperator {
            halves: [Runner::new(slot.clone()), Runner::new(slot)],
        }
    }

    /// Gives both instances `state` as their keyed-state store.
    pub(crate) fn with_state<S: KeyedState + Clone + 'static>(self, state: &S) -> Self {
        let [a, b] = self.halves;
        let fresh = |r: Runner| Runner::new(r.slot().clone()).with_state(Box::new(state.clone()));
        HalvedOperator {
            halves: [fresh(a), fresh(b)],
        }
    }
}

/// What one half's `on-window` calls need besides its instance and its windows.
struct OperatorCall<'a> {
    metrics: &'a PipelineMetrics,
    names: &'a [String],
    dims: usize,
    partition_of: &'a (dyn Fn(&str) -> i32 + Sync),
}

impl OperatorCall<'_> {
    /// Runs `fired` (its firings of one pane merged first) through `op` and renders its
    /// outputs into `out`: how many.
    fn run(
        &self,
        op: &mut Runner,
        fired: Vec<Fired>,
        out: &mut Records,
    ) -> Result<u64, PipelineError> {
        let fired = crate::window::merge_firings(fired);
        let mut emitted = 0;
        // Bounded calls: a watermark jump can fire many windows at once, and one
        // `on-window` call per chunk keeps each batch well inside the plugin's memory.
        for chunk in fired.chunks(WINDOW_CALL_MAX) {
            let mut wb = WindowBatch::with_dims(self.dims as u32);
            for f in chunk {
                wb.push(&f.key, f.span.start, f.span.end, &f.new_rows, f.closing);
            }
            let (v, _, o) = timed(
                self.metrics,
                "window",
                Role::Serving,
                op,
                chunk.len(),
                |i| i.on_window(&wb),
            )?;
            let version: Arc<str> = Arc::from(v.0.as_str());
            let mut ends = Ends::new(chunk);
            let names = self.names;
            for i in 0..o.len() {
                let key = o.key(i).unwrap_or_default();
                let start = o.timestamps[i];
                let end = ends.end(key, start);
                let meta = RecordMeta {
                    partition: (self.partition_of)(key),
                    ts: start,
                    window_end: end,
                    version: version.clone(),
                    ..RecordMeta::default()
                };
                out.push_with(key, meta, |p| {
                    p.extend_from_slice(b"{\"key\":");
                    push_json_str(p, key);
                    p.extend_from_slice(b",\"window_start\":");
                    push_i64(p, start);
                    p.extend_from_slice(b",\"window_end\":");
                    push_i64(p, end);
                    for (j, x) in o.inputs_of(i).unwrap_or_default().iter().enumerate() {
                        p.push(b',');
                        match names.get(j) {
                            Some(name) => push_json_str(p, name),
                            None => {
                                p.extend_from_slice(b"\"v");
                                push_i64(p, j as i64);
                                p.push(b'"');
                            }
                        }
                        p.push(b':');
                        push_f64(p, *x);
                    }
                    p.extend_from_slice(b",\"operator_version\":\"");
                    p.extend_from_slice(v.0.as_bytes());
                    p.extend_from_slice(b"\"}");
                });
                emitted += 1;
            }
        }
        Ok(emitted)
    }
}

/// The end of each window an operator's output names, from the windows it was handed. An
/// operator usually emits in the order of its panes (skipping some), so the next pane is
/// looked at first; an output out of that order builds the map once.
struct Ends<'c> {
    chunk: &'c [Fired],
    next: usize,
    map: Option<FastMap<(&'c str, i64), i64>>,
}

impl<'c> Ends<'c> {
    fn new(chunk: &'c [Fired]) -> Self {
        Ends {
            chunk,
            next: 0,
            map: None,
        }
    }

    /// The end of the window (`key`, `start`), or `start` when no pane of the call has it.
    fn end(&mut self, key: &str, start: i64) -> i64 {
        if self.map.is_none() {
            let ahead = self.chunk[self.next..]
                .iter()
                .position(|f| f.span.start == start && &*f.key == key);
            if let Some(j) = ahead {
                self.next += j + 1;
                return self.chunk[self.next - 1].span.end;
            }
        }
        let chunk = self.chunk;
        self.map
            .get_or_insert_with(|| {
                chunk
                    .iter()
                    .map(|f| ((&*f.key, f.span.start), f.span.end))
                    .collect()
            })
            .get(&(key, start))
            .copied()
            .unwrap_or(start)
    }
}

#[cfg(test)]
mod tests {
    use super::half_of;

    /// Keys that differ only in their last characters (`u0` … `u9999`, as in the shared
    /// workload) split evenly between the operator's two instances; FNV-1a's bit 32 alone
    /// put 27% of the workload's firings in one half.
    #[test]
    fn keys_split_evenly_between_the_halves() {
        for prefix in ["u", "user-", "sensor/"] {
            let first = (0..10_000)
                .filter(|i| half_of(&format!("{prefix}{i}")) == 0)
                .count();
            assert!(
                (4_900..=5_100).contains(&first),
                "{prefix}…: {first} of 10,000 keys in the first half"
            );
        }
    }
}
