//! Per-stage figures of a running pipeline, and the model stage's canary and shadow
//! variants.
//!
//! [`PipelineMetrics`] is shared between the worker (which records one entry per Wasm call)
//! and the control plane (which renders it as Prometheus text or JSON). Entries are keyed
//! by stage, role (`serving`, `canary`, `shadow`) and version, so two versions of a stage are
//! always side by side.
//!
//! [`ModelVariants`] is what the control plane sets to run a canary (a share of keys, chosen
//! by a hash of the key, so a key always sees one version) or a shadow (a candidate scoring
//! the same events beside the serving version, whose outputs go to the shadow output only).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_engine::Slot;

/// Upper bounds of the latency histogram buckets, seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Count per bucket (not cumulative); the last entry counts observations above every
    /// bound.
    pub counts: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations, seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += s;
        self.count += 1;
    }

    /// The smallest bucket bound at or below which at least `q` of the observations lie
    /// (`f64::INFINITY` when they are above every bound, NaN when empty).
    pub fn quantile_bound(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let want = (q * self.count as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            }
        }
        f64::INFINITY
    }
}

/// The role a version plays in its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The version whose outputs are the pipeline's outputs.
    Serving,
    /// A version serving a share of keys.
    Canary,
    /// A candidate scoring the same events; its outputs go to the shadow output only.
    Shadow,
}

impl Role {
    /// `serving`, `canary` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serving => "serving",
            Role::Canary => "canary",
            Role::Shadow => "shadow",
        }
    }
}

/// Figures of one (stage, role, version).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageStats {
    /// Plugin sha256 of the version.
    pub plugin: String,
    /// Calls into the plugin.
    pub calls: u64,
    /// Rows those calls covered.
    pub rows: u64,
    /// Calls that failed (a trap, a limit, a bad output).
    pub errors: u64,
    /// Fuel consumed (0 when the engine does not meter fuel).
    pub fuel: u64,
    /// Call latency.
    pub latency: Histogram,
    /// Labelled rows scored (model stages with a label field).
    pub labelled: u64,
    /// Of those, rows whose score was on the label's side of 0.5.
    pub correct: u64,
    /// Sum of the log-loss of the labelled rows.
    pub log_loss: f64,
    /// Labelled scores by score bin (1,000 bins over [0, 1]), for the AUC:
    /// `(negatives, positives)` per bin.
    pub score_bins: Vec<(u64, u64)>,
    /// The last [`RECENT_LABELS`] labelled rows, `(score, positive)`, for the
    /// sliding-window figures that show drift.
    pub recent: std::collections::VecDeque<(f64, bool)>,
}

/// Labelled rows kept for the sliding-window figures.
pub const RECENT_LABELS: usize = 10_000;

/// Score bins of the AUC.
const AUC_BINS: usize = 1000;

/// AUC from per-bin `(negatives, positives)` counts, ties within a bin counting half.
fn auc_of_bins(bins: &[(u64, u64)]) -> f64 {
    let (neg, pos): (u64, u64) = bins
        .iter()
        .fold((0, 0), |(n, p), (bn, bp)| (n + bn, p + bp));
    if neg == 0 || pos == 0 {
        return f64::NAN;
    }
    let mut below = 0u64;
    let mut wins = 0.0;
    for (bn, bp) in bins {
        wins += *bp as f64 * (below as f64 + *bn as f64 / 2.0);
        below += bn;
    }
    wins / (neg as f64 * pos as f64)
}

fn bin_of(score: f64) -> usize {
    ((score.clamp(0.0, 1.0) * AUC_BINS as f64) as usize).min(AUC_BINS - 1)
}

impl StageStats {
    /// Prequential accuracy (NaN before the first label).
    pub fn accuracy(&self) -> f64 {
        if self.labelled == 0 {
            f64::NAN
        } else {
            self.correct as f64 / self.labelled as f64
        }
    }

    /// Mean log-loss (NaN before the first label).
    pub fn mean_log_loss(&self) -> f64 {
        if self.labelled == 0 {
            f64::NAN
        } else {
            self.log_loss / self.labelled as f64
        }
    }

    /// Area under the ROC curve of every labelled row so far (binned scores; NaN until
    /// both classes were seen).
    pub fn auc(&self) -> f64 {
        auc_of_bins(&self.score_bins)
    }

    /// Accuracy over the last [`RECENT_LABELS`] labelled rows.
    pub fn recent_accuracy(&self) -> f64 {
        if self.recent.is_empty() {
            return f64::NAN;
        }
        let right = self
            .recent
            .iter()
            .filter(|(s, pos)| (*s > 0.5) == *pos)
            .count();
        right as f64 / self.recent.len() as f64
    }

    /// AUC over the last [`RECENT_LABELS`] labelled rows.
    pub fn recent_auc(&self) -> f64 {
        let mut bins = vec![(0u64, 0u64); AUC_BINS];
        for (s, pos) in &self.recent {
            let b = &mut bins[bin_of(*s)];
            if *pos {
                b.1 += 1;
            } else {
                b.0 += 1;
            }
        }
        auc_of_bins(&bins)
    }

    /// Scores labelled rows against their labels (NaN labels are skipped). A row counts as
    /// right when `score > 0.5` is its label, the workload's definition.
    pub fn score_labels(&mut self, scores: &[f64], labels: &[f64]) {
        if self.score_bins.is_empty() {
            self.score_bins = vec![(0, 0); AUC_BINS];
        }
        for (s, y) in scores.iter().zip(labels) {
            if y.is_nan() {
                continue;
            }
            let positive = *y >= 0.5;
            self.labelled += 1;
            if (*s > 0.5) == positive {
                self.correct += 1;
            }
            let p = s.clamp(1e-15, 1.0 - 1e-15);
            self.log_loss -= if positive { p.ln() } else { (1.0 - p).ln() };
            let b = &mut self.score_bins[bin_of(*s)];
            if positive {
                b.1 += 1;
            } else {
                b.0 += 1;
            }
            if self.recent.len() == RECENT_LABELS {
                self.recent.pop_front();
            }
            self.recent.push_back((*s, positive));
        }
    }
}

/// Identifies a [`StageStats`] entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageKey {
    /// `extractor`, `model`, `operator-N` or `window`.
    pub stage: String,
    /// The role of the version.
    pub role: Role,
    /// The version id.
    pub version: String,
}

/// Log lines kept per (stage, role, version).
pub const LOG_LINES_KEPT: usize = 500;

/// A plugin's log line as the pipeline captured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedLog {
    /// When the call that wrote it ended, UTC ms.
    pub at_ms: i64,
    /// `info`, `warn`, … (`stdout` is `info`, `stderr` is `warn`).
    pub level: &'static str,
    /// The text.
    pub message: String,
}

/// Per-stage figures of one pipeline, shared with the control plane.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    stages: Mutex<BTreeMap<StageKey, StageStats>>,
    logs: Mutex<BTreeMap<StageKey, std::collections::VecDeque<CapturedLog>>>,
    switches: Mutex<SwitchPauses>,
}

/// How long the worker paused to move a stage to a new version (instantiating it and
/// carrying its state over), between two batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwitchPauses {
    /// Every pause, as a histogram.
    pub histogram: Histogram,
    /// The most recent pauses (at most 10,000), oldest first.
    pub recent: std::collections::VecDeque<Duration>,
}

impl PipelineMetrics {
    /// Keeps a call's log lines (the newest [`LOG_LINES_KEPT`] per stage version).
    pub fn push_logs(&self, key: StageKey, lines: Vec<weir_engine::LogLine>) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut map = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let ring = map.entry(key).or_default();
        for l in lines {
            if ring.len() == LOG_LINES_KEPT {
                ring.pop_front();
            }
            ring.push_back(CapturedLog {
                at_ms,
                level: l.level,
                message: l.message,
            });
        }
    }

    /// The kept log lines of every stage version, oldest first within each.
    pub fn logs(&self) -> Vec<(StageKey, Vec<CapturedLog>)> {
        let map = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }

    /// Runs `f` on the entry of (stage, role, version), creating it.
    pub fn with<R>(
        &self,
        stage: &str,
        role: Role,
        version: &str,
        plugin: &str,
        f: impl FnOnce(&mut StageStats) -> R,
    ) -> R {
        let mut map = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        let key = StageKey {
            stage: stage.to_owned(),
            role,
            version: version.to_owned(),
        };
        let e = map.entry(key).or_insert_with(|| StageStats {
            plugin: plugin.to_owned(),
            ..StageStats::default()
        });
        f(e)
    }

    /// Records a version switch's pause.
    pub fn record_switch(&self, pause: Duration) {
        let mut s = self.switches.lock().unwrap_or_else(|p| p.into_inner());
        s.histogram.observe(pause);
        if s.recent.len() == 10_000 {
            s.recent.pop_front();
        }
        s.recent.push_back(pause);
    }

    /// The switch pauses so far.
    pub fn switch_pauses(&self) -> SwitchPauses {
        self.switches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A copy of every entry, ordered by stage, role and version.
    pub fn snapshot(&self) -> Vec<(StageKey, StageStats)> {
        let map = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A canary: `slot` serves the keys whose hash falls under `percent`.
#[derive(Clone)]
pub struct Canary {
    /// What the canary serves.
    pub slot: Arc<Slot>,
    /// Share of keys, 0 to 100.
    pub percent: f64,
}

/// The model stage's variants beside its serving slot.
#[derive(Clone, Default)]
pub struct Variants {
    /// A canary, if one runs.
    pub canary: Option<Canary>,
    /// A shadow, if one runs.
    pub shadow: Option<Arc<Slot>>,
}

/// The control plane's handle on a pipeline's model variants; the pipeline reads it at each
/// batch, so a change takes effect at the next batch boundary.
#[derive(Default)]
pub struct ModelVariants {
    current: Mutex<Variants>,
}

impl ModelVariants {
    /// The variants now set.
    pub fn get(&self) -> Variants {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the variants.
    pub fn set(&self, v: Variants) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// Whether `key` belongs to a canary of `percent` (0–100): the key's FNV-1a 64-bit hash,
/// modulo 10,000, is below `percent × 100`. Stable across processes and restarts, so a key
/// always sees one version.
pub fn in_canary(key: &str, percent: f64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((h % 10_000) as f64) < percent * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_share_follows_the_percentage() {
        let n = 100_000;
        let inside = (0..n)
            .filter(|i| in_canary(&format!("user-{i}"), 20.0))
            .count();
        let share = inside as f64 / n as f64;
        assert!((share - 0.20).abs() < 0.01, "share {share}");
        assert!(!(0..1000).any(|i| in_canary(&format!("k{i}"), 0.0)));
        assert!((0..1000).all(|i| in_canary(&format!("k{i}"), 100.0)));
        // Stable: the same key, the same answer.
        assert_eq!(in_canary("user-7", 20.0), in_canary("user-7", 20.0));
    }

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let mut h = Histogram::default();
        for _ in 0..99 {
            h.observe(Duration::from_micros(80));
        }
        h.observe(Duration::from_millis(30));
        assert_eq!(h.count, 100);
        assert_eq!(h.quantile_bound(0.5), 0.000_1);
        assert_eq!(h.quantile_bound(0.99), 0.000_1);
        assert_eq!(h.quantile_bound(1.0), 0.05);
    }

    #[test]
    fn accuracy_and_log_loss() {
        let mut s = StageStats::default();
        s.score_labels(&[0.9, 0.2, 0.6, 0.5], &[1.0, 0.0, 0.0, f64::NAN]);
        assert_eq!(s.labelled, 3);
        assert_eq!(s.correct, 2);
        let expect = -(0.9f64.ln() + 0.8f64.ln() + 0.4f64.ln()) / 3.0;
        assert!((s.mean_log_loss() - expect).abs() < 1e-12);
        // Positives {0.9}, negatives {0.2, 0.6}: 0.9 beats both.
        assert_eq!(s.auc(), 1.0);
        assert_eq!(s.recent_auc(), 1.0);
        assert!((s.recent_accuracy() - 2.0 / 3.0).abs() < 1e-12);
        // Exactly 0.5 predicts 0 (the workload's `p > 0.5`).
        let mut t = StageStats::default();
        t.score_labels(&[0.5, 0.5], &[0.0, 1.0]);
        assert_eq!(t.correct, 1);
        assert_eq!(t.auc(), 0.5);
    }

    #[test]
    fn the_sliding_window_shows_drift() {
        let mut s = StageStats::default();
        let right: Vec<f64> = (0..RECENT_LABELS)
            .map(|i| if i % 2 == 0 { 0.9 } else { 0.1 })
            .collect();
        let labels: Vec<f64> = (0..RECENT_LABELS)
            .map(|i| if i % 2 == 0 { 1.0 } else { 0.0 })
            .collect();
        s.score_labels(&right, &labels);
        let flipped: Vec<f64> = labels.iter().map(|y| 1.0 - y).collect();
        s.score_labels(&right, &flipped);
        assert_eq!(s.accuracy(), 0.5);
        assert_eq!(
            s.recent_accuracy(),
            0.0,
            "the window holds only the drifted rows"
        );
        assert_eq!(s.recent_auc(), 0.0);
        assert!((s.auc() - 0.5).abs() < 1e-12);
    }
}
