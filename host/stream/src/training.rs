//! Training in the stream: the model stage retrains periodically in the host (weir-ml, on
//! linfa) over a bounded window of recent labelled rows, and a trained challenger replaces
//! the serving champion by a hot swap only if it wins on a held-out slice.
//!
//! ```toml
//! [training]
//! join = "event"           # labels: in the event itself (`source.label_field`), or
//!                          # "later": label records matched by key and `id_field`
//! algorithm = "logistic"   # served by the model plugin through `restore`; or "kmeans"
//! grid = { alpha = [0.1, 1.0, 10.0] }
//! scaler = "standard"      # none | standard | min_max, folded into the exported weights
//! pca = 0                  # principal components before the fit (0: none), folded too
//! window_rows = 20000      # the last N labelled rows ...
//! window_ms = 60000        # ... of at most the last T ms of event time (optional)
//! every_rows = 2000        # retrain every N labelled rows ...
//! every_ms = 30000         # ... or every T ms of processing time (optional)
//! holdout = 0.2            # the most recent share of the window, never trained on
//! metric = "accuracy"      # accuracy | auc | log_loss
//! margin = 0.0             # the challenger must beat the champion by more than this
//! drift = { recent = 100, z = 5.0 }
//! ```
//!
//! How it runs:
//! - Every labelled row the model scored joins the window: its features (the model's
//!   input), its label, and where it came from (partition, offset, event time).
//! - On schedule, a *job* (a copy of the window) goes to the trainer thread, so fits never
//!   stall the stream. Every point of the grid is fitted on the window minus its held-out
//!   tail (the scaler and PCA are fitted on the same rows) and scored on the tail; the best
//!   one is the challenger. Its weights, with the transforms folded in, are exported in
//!   the plugin's snapshot format, and a deployment of the serving plugin with that
//!   snapshot is instantiated: the exact code that would serve it. The challenger and the
//!   champion (an instance of the serving deployment) then score the held-out tail
//!   through Wasm. If the challenger wins by more than `margin`, its instance is swapped
//!   in; the worker moves to it at its next step.
//! - A drift detector watches the serving model's accuracy: when the last `recent`
//!   labelled rows score `z` standard errors below what the same version scored before,
//!   the window restarts at the change and a fit runs at once. While the window is short
//!   (after a start or a drift) fits are small and frequent (every time the window grew
//!   by half, and no more than `every_rows`), and the worker waits for each before its
//!   next step, so a recovering model serves as soon as it exists.
//! - Every decision (promoted, rejected, failed) is kept with its scores, parameters,
//!   window and lineage, for the durable worker to store.

use crate::spec::PipelineSpec;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use toml::Spanned;
use weir_engine::{Deployment, FeatureBatch, Instance, Slot, VersionId};

/// The `[training]` section of a pipeline spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// How labels reach their events: `event` (a field of the event itself,
    /// `source.label_field`) or `later` (label records carrying the key, `id_field` and
    /// the label field, matched to an earlier event with the same key and id).
    #[serde(default = "d_join")]
    pub join: Spanned<String>,
    /// With `join = "later"`: the field (string or integer) both the event and its label
    /// record carry.
    pub id_field: Option<String>,
    /// With `join = "later"`: how long (event time) an event waits for its label.
    #[serde(default = "d_label_wait")]
    pub label_wait_ms: i64,
    /// With `join = "later"`: most events waiting for a label (the oldest give way).
    #[serde(default = "d_max_pending")]
    pub max_pending: usize,
    /// `logistic` (logistic regression on labelled rows, served by a model plugin that
    /// restores `{"coef": [..], "intercept": ..}`, such as `logistic`), or `kmeans`
    /// (k-means on every scored row, no labels, served by a plugin that restores
    /// `{"centroids": [[..], ..]}`, such as `kmeans`: an anomaly score).
    #[serde(default = "d_algorithm")]
    pub algorithm: Spanned<String>,
    /// Hyperparameters: every combination is fitted, the best on the held-out slice wins.
    #[serde(default = "d_grid")]
    pub grid: Spanned<GridSpec>,
    /// `none`, `standard` or `min_max`: a scaler fitted on the training rows before the
    /// estimator (folded into the exported weights).
    #[serde(default = "d_scaler")]
    pub scaler: Spanned<String>,
    /// Principal components to project onto before the estimator (0: none; folded too).
    #[serde(default)]
    pub pca: usize,
    /// The window: at most this many of the latest labelled rows.
    #[serde(default = "d_window_rows")]
    pub window_rows: Spanned<usize>,
    /// The window: only rows at most this old (event time, against the newest row).
    pub window_ms: Option<i64>,
    /// Schedule: a fit every this many labelled rows.
    #[serde(default = "d_every_rows")]
    pub every_rows: Spanned<usize>,
    /// Schedule: also a fit when this long (processing time) passed since the last one
    /// and new rows arrived.
    pub every_ms: Option<u64>,
    /// No fit on fewer rows.
    #[serde(default = "d_min_rows")]
    pub min_rows: Spanned<usize>,
    /// The most recent share of the window held out from fitting: the grid and the
    /// champion/challenger comparison are scored on it.
    #[serde(default = "d_holdout")]
    pub holdout: Spanned<f64>,
    /// `accuracy` (the default for `logistic`), `auc` or `log_loss`; `inertia` for
    /// `kmeans` (its only one).
    pub metric: Option<Spanned<String>>,
    /// The challenger replaces the champion only if it beats it by more than this.
    #[serde(default = "d_margin")]
    pub margin: Spanned<f64>,
    /// The drift detector.
    #[serde(default = "d_drift")]
    pub drift: Spanned<DriftSpec>,
    /// Most events the pipeline scores between two training decisions (it splits larger
    /// batches), which bounds how long a stale model serves.
    #[serde(default = "d_step_rows")]
    pub step_rows: Spanned<usize>,
}

/// The hyperparameter grid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// L2 penalties (scikit-learn's `C` is `1 / alpha`).
    #[serde(default = "d_alpha")]
    pub alpha: Vec<f64>,
    /// L-BFGS iteration caps.
    #[serde(default = "d_max_iter")]
    pub max_iter: Vec<u64>,
    /// k-means: numbers of clusters.
    #[serde(default = "d_k")]
    pub k: Vec<usize>,
}

impl Default for GridSpec {
    fn default() -> Self {
        GridSpec {
            alpha: d_alpha(),
            max_iter: d_max_iter(),
            k: d_k(),
        }
    }
}

/// The drift detector's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSpec {
    /// Off with `false`.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// How many of the latest labelled rows are compared with the serving version's
    /// accuracy before them.
    #[serde(default = "d_recent")]
    pub recent: usize,
    /// How many standard errors below that accuracy signal a drift.
    #[serde(default = "d_z")]
    pub z: f64,
}

impl Default for DriftSpec {
    fn default() -> Self {
        DriftSpec {
            enabled: true,
            recent: d_recent(),
            z: d_z(),
        }
    }
}

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn d_grid() -> Spanned<GridSpec> {
    sp(GridSpec::default())
}
fn d_drift() -> Spanned<DriftSpec> {
    sp(DriftSpec::default())
}
fn d_join() -> Spanned<String> {
    sp("event".into())
}
fn d_label_wait() -> i64 {
    60_000
}
fn d_max_pending() -> usize {
    100_000
}
fn d_algorithm() -> Spanned<String> {
    sp("logistic".into())
}
fn d_scaler() -> Spanned<String> {
    sp("none".into())
}
fn d_window_rows() -> Spanned<usize> {
    sp(20_000)
}
fn d_every_rows() -> Spanned<usize> {
    sp(2_000)
}
fn d_min_rows() -> Spanned<usize> {
    sp(50)
}
fn d_holdout() -> Spanned<f64> {
    sp(0.2)
}
fn d_margin() -> Spanned<f64> {
    sp(0.0)
}
fn d_step_rows() -> Spanned<usize> {
    sp(256)
}
fn d_alpha() -> Vec<f64> {
    vec![1.0]
}
fn d_max_iter() -> Vec<u64> {
    vec![100]
}
fn d_k() -> Vec<usize> {
    vec![8]
}
fn d_true() -> bool {
    true
}
fn d_recent() -> usize {
    100
}
fn d_z() -> f64 {
    5.0
}

/// The validation metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of rows on the label's side of 0.5 (higher is better).
    Accuracy,
    /// Area under the ROC curve (higher is better).
    Auc,
    /// Mean negative log-likelihood (lower is better).
    LogLoss,
    /// k-means: mean distance of a row to its nearest centroid (lower is better).
    Inertia,
}

impl Metric {
    fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "accuracy" => Metric::Accuracy,
            "auc" => Metric::Auc,
            "log_loss" => Metric::LogLoss,
            "inertia" => Metric::Inertia,
            _ => return None,
        })
    }

    /// The metric's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Auc => "auc",
            Metric::LogLoss => "log_loss",
            Metric::Inertia => "inertia",
        }
    }

    /// The metric of scores `p` against labels `y`.
    pub fn score(self, p: &[f64], y: &[f64]) -> f64 {
        match self {
            Metric::Accuracy => weir_ml::accuracy(p, y),
            Metric::Auc => weir_ml::auc(p, y),
            Metric::LogLoss => weir_ml::log_loss(p, y),
            Metric::Inertia => p.iter().sum::<f64>() / p.len().max(1) as f64,
        }
    }

    /// How much better `a` is than `b` (positive when better).
    pub fn gain(self, a: f64, b: f64) -> f64 {
        match self {
            Metric::LogLoss | Metric::Inertia => b - a,
            _ => a - b,
        }
    }
}

/// The scaler before the estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalerKind {
    /// No scaler.
    None,
    /// Zero mean, unit variance.
    Standard,
    /// To [0, 1].
    MinMax,
}

impl TrainingSpec {
    /// The validation metric (the spec is validated, so this is known).
    pub fn metric(&self) -> Metric {
        match &self.metric {
            Some(m) => Metric::parse(m.get_ref()).unwrap_or(Metric::Accuracy),
            None if self.unsupervised() => Metric::Inertia,
            None => Metric::Accuracy,
        }
    }

    /// k-means: every scored row trains, labels play no part.
    pub fn unsupervised(&self) -> bool {
        self.algorithm.get_ref() == "kmeans"
    }

    /// The scaler.
    pub fn scaler(&self) -> ScalerKind {
        match self.scaler.get_ref().as_str() {
            "standard" => ScalerKind::Standard,
            "min_max" => ScalerKind::MinMax,
            _ => ScalerKind::None,
        }
    }

    /// Labels come in later records, matched by key and id.
    pub fn joins_later(&self) -> bool {
        self.join.get_ref() == "later"
    }

    /// Checks the section against the rest of the spec.
    pub(crate) fn validate(&self, spec: &PipelineSpec) -> Result<(), (Range<usize>, String)> {
        let Some(model) = &spec.model else {
            return Err((
                self.algorithm.span(),
                "[training] trains the model stage: add a [model] (for example the `logistic` plugin)".into(),
            ));
        };
        if model.train {
            return Err((
                model.plugin.span(),
                "model.train (online learning in the plugin) and [training] (retraining in the host) both update the model: use one".into(),
            ));
        }
        if spec.source.label_field.is_none() && !self.unsupervised() {
            return Err((
                self.join.span(),
                "[training] needs source.label_field (the field holding the label)".into(),
            ));
        }
        match self.join.get_ref().as_str() {
            "event" => {}
            "later" => {
                if self.id_field.as_deref().is_none_or(str::is_empty) {
                    return Err((
                        self.join.span(),
                        "join = \"later\" needs `id_field` (the field both an event and its label record carry)".into(),
                    ));
                }
                if self.label_wait_ms <= 0 || self.max_pending == 0 {
                    return Err((
                        self.join.span(),
                        "label_wait_ms and max_pending must be positive".into(),
                    ));
                }
            }
            other => {
                return Err((
                    self.join.span(),
                    format!("unknown join `{other}` (event, later)"),
                ));
            }
        }
        if !["logistic", "kmeans"].contains(&self.algorithm.get_ref().as_str()) {
            return Err((
                self.algorithm.span(),
                format!(
                    "unknown algorithm `{}` (logistic, kmeans)",
                    self.algorithm.get_ref()
                ),
            ));
        }
        if self.unsupervised() {
            if self.scaler.get_ref() != "none" || self.pca > 0 {
                return Err((
                    self.algorithm.span(),
                    "kmeans: the plugin measures distances on the model's inputs, so scaler and pca are not available".into(),
                ));
            }
            if self.grid.get_ref().k.is_empty() || self.grid.get_ref().k.contains(&0) {
                return Err((self.grid.span(), "grid: k needs values >= 1".into()));
            }
        }
        if !["none", "standard", "min_max"].contains(&self.scaler.get_ref().as_str()) {
            return Err((
                self.scaler.span(),
                format!(
                    "unknown scaler `{}` (none, standard, min_max)",
                    self.scaler.get_ref()
                ),
            ));
        }
        if let Some(m) = &self.metric {
            match (Metric::parse(m.get_ref()), self.unsupervised()) {
                (None, _) => {
                    return Err((
                        m.span(),
                        format!(
                            "unknown metric `{}` (accuracy, auc, log_loss; inertia for kmeans)",
                            m.get_ref()
                        ),
                    ));
                }
                (Some(Metric::Inertia), false) => {
                    return Err((m.span(), "inertia is the metric of kmeans".into()));
                }
                (Some(x), true) if x != Metric::Inertia => {
                    return Err((
                        m.span(),
                        "kmeans has no labels to score: its metric is inertia".into(),
                    ));
                }
                _ => {}
            }
        }
        let grid = self.grid.get_ref();
        if grid.alpha.is_empty()
            || grid.max_iter.is_empty()
            || grid.alpha.iter().any(|a| !a.is_finite() || *a < 0.0)
            || grid.max_iter.contains(&0)
        {
            return Err((
                self.grid.span(),
                "grid: alpha needs finite values >= 0 and max_iter values >= 1, at least one each"
                    .into(),
            ));
        }
        let h = *self.holdout.get_ref();
        if !(h > 0.0 && h < 0.9) {
            return Err((
                self.holdout.span(),
                "holdout must be a share between 0 and 0.9".into(),
            ));
        }
        if *self.min_rows.get_ref() < 10 {
            return Err((self.min_rows.span(), "min_rows must be at least 10".into()));
        }
        if *self.window_rows.get_ref() < *self.min_rows.get_ref() {
            return Err((
                self.window_rows.span(),
                "window_rows must be at least min_rows".into(),
            ));
        }
        if *self.every_rows.get_ref() == 0 {
            return Err((
                self.every_rows.span(),
                "every_rows must be at least 1".into(),
            ));
        }
        if *self.step_rows.get_ref() == 0 {
            return Err((self.step_rows.span(), "step_rows must be at least 1".into()));
        }
        if !self.margin.get_ref().is_finite() || *self.margin.get_ref() < 0.0 {
            return Err((self.margin.span(), "margin must be >= 0".into()));
        }
        if self.window_ms.is_some_and(|w| w <= 0) || self.every_ms == Some(0) {
            return Err((
                self.window_rows.span(),
                "window_ms and every_ms must be positive".into(),
            ));
        }
        let drift = self.drift.get_ref();
        if drift.enabled && (drift.recent < 10 || drift.z.is_nan() || drift.z <= 0.0) {
            return Err((
                self.drift.span(),
                "drift: recent must be at least 10 and z positive".into(),
            ));
        }
        Ok(())
    }
}

/// What one training decision found and did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// When it was decided, ms since the epoch.
    pub at_ms: i64,
    /// Why the fit ran: `first`, `schedule`, `timer` or `drift`.
    pub trigger: String,
    /// `promoted`, `rejected` or `failed`.
    pub outcome: String,
    /// In words.
    pub reason: String,
    /// The algorithm.
    pub algorithm: String,
    /// The winning grid point and the transforms: `{"alpha", "max_iter", "scaler", "pca"}`.
    pub params: serde_json::Value,
    /// Every grid point with its held-out score.
    pub grid: Vec<serde_json::Value>,
    /// The metric.
    pub metric: String,
    /// The challenger's held-out score (through the plugin).
    pub challenger_score: Option<f64>,
    /// The champion's held-out score (through the plugin).
    pub champion_score: Option<f64>,
    /// The margin the challenger had to beat.
    pub margin: f64,
    /// Rows fitted on.
    pub train_rows: usize,
    /// Rows held out.
    pub holdout_rows: usize,
    /// The window: event-time range and, per partition, the offset range.
    pub window: WindowMeta,
    /// The champion's version when the fit was judged.
    pub champion_version: String,
    /// The challenger's version (plugin, config and snapshot), when one was built.
    pub version: Option<String>,
    /// The plugin that serves (or would serve) the challenger.
    pub plugin_sha256: String,
    /// The challenger's parameters in the plugin's snapshot format.
    #[serde(skip)]
    pub snapshot: Option<Vec<u8>>,
    /// Time to fit and judge, ms.
    pub fit_ms: f64,
}

/// Where a training window's rows came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowMeta {
    /// Rows.
    pub rows: usize,
    /// Oldest event time.
    pub from_ts: i64,
    /// Newest event time.
    pub to_ts: i64,
    /// Per partition, the first and last offset.
    pub partitions: BTreeMap<i32, (i64, i64)>,
}

impl WindowMeta {
    /// The lowest first offset over the partitions.
    pub fn from_offset(&self) -> Option<i64> {
        self.partitions.values().map(|r| r.0).min()
    }
    /// The highest last offset over the partitions.
    pub fn to_offset(&self) -> Option<i64> {
        self.partitions.values().map(|r| r.1).max()
    }
}

/// Live training figures, shared with the control plane.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainingStatus {
    /// Labelled rows seen.
    pub labelled_rows: u64,
    /// Rows in the window now.
    pub window_rows: usize,
    /// Fits judged.
    pub fits: u64,
    /// Challengers promoted.
    pub promotions: u64,
    /// Challengers that lost.
    pub rejections: u64,
    /// Fits that failed (with the reason in their decision).
    pub failures: u64,
    /// Drifts detected.
    pub drifts: u64,
    /// Events waiting for their label (`join = "later"`).
    pub pending_labels: usize,
    /// Label records matched to their event.
    pub labels_joined: u64,
    /// Label records with no waiting event.
    pub labels_unmatched: u64,
    /// Events whose label never came in time (or that gave way to newer ones).
    pub labels_expired: u64,
    /// The last fit's duration, ms.
    pub last_fit_ms: f64,
    /// From "challenger wins" to the worker serving it, ms: the last one.
    pub promotion_to_serving_last_ms: f64,
    /// The same, the largest.
    pub promotion_to_serving_max_ms: f64,
    /// The same, summed (with `promotions_served`, the mean).
    pub promotion_to_serving_sum_ms: f64,
    /// Promotions the worker has served.
    pub promotions_served: u64,
    /// The latest decision.
    pub last_decision: Option<Decision>,
}

/// What the trainer shares with the worker and the control plane.
#[derive(Default)]
pub struct TrainingShared {
    status: Mutex<TrainingStatus>,
    /// Decisions not yet taken by a store writer.
    unsaved: Mutex<Vec<Decision>>,
    /// The last promotion: (version, when the challenger won).
    promoted: Mutex<Option<(VersionId, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TrainingShared {
    /// The live figures.
    pub fn status(&self) -> TrainingStatus {
        lock(&self.status).clone()
    }

    /// The decisions since the last call, oldest first (with their snapshots), for a
    /// store to record.
    pub fn take_decisions(&self) -> Vec<Decision> {
        std::mem::take(&mut *lock(&self.unsaved))
    }

    fn record(&self, d: Decision) {
        {
            let mut s = lock(&self.status);
            s.fits += 1;
            match d.outcome.as_str() {
                "promoted" => s.promotions += 1,
                "rejected" => s.rejections += 1,
                _ => s.failures += 1,
            }
            s.last_fit_ms = d.fit_ms;
            let mut last = d.clone();
            last.snapshot = None;
            s.last_decision = Some(last);
        }
        let mut u = lock(&self.unsaved);
        // Without a store writer, keep only the latest.
        if u.len() >= 10_000 {
            u.remove(0);
        }
        u.push(d);
    }

    /// Called by the worker with the version that served a step: closes the timing of a
    /// pending promotion when that version is it.
    fn served(&self, version: &VersionId) {
        let mut p = lock(&self.promoted);
        if let Some((v, won)) = p.as_ref()
            && v == version
        {
            let ms = won.elapsed().as_secs_f64() * 1e3;
            *p = None;
            drop(p);
            let mut s = lock(&self.status);
            s.promotion_to_serving_last_ms = ms;
            s.promotion_to_serving_max_ms = s.promotion_to_serving_max_ms.max(ms);
            s.promotion_to_serving_sum_ms += ms;
            s.promotions_served += 1;
        }
    }
}

struct Row {
    x: Vec<f64>,
    y: f64,
    partition: i32,
    offset: i64,
    ts: i64,
}

/// An event waiting for its label (`join = "later"`).
struct Waiting {
    x: Vec<f64>,
    score: f64,
    /// Counted by the drift detector (not a canary's row).
    detect: bool,
    served_by: Arc<(VersionId, String)>,
    partition: i32,
    offset: i64,
    ts: i64,
}

/// The serving model's accuracy test.
struct Detector {
    enabled: bool,
    recent_n: usize,
    z: f64,
    version: Option<VersionId>,
    recent: VecDeque<bool>,
    recent_ok: u64,
    ref_ok: u64,
    ref_n: u64,
}

impl Detector {
    fn new(spec: &DriftSpec) -> Detector {
        Detector {
            enabled: spec.enabled,
            recent_n: spec.recent,
            z: spec.z,
            version: None,
            recent: VecDeque::new(),
            recent_ok: 0,
            ref_ok: 0,
            ref_n: 0,
        }
    }

    fn reset(&mut self) {
        self.recent.clear();
        self.recent_ok = 0;
        self.ref_ok = 0;
        self.ref_n = 0;
    }

    /// One labelled row the serving `version` scored; true when it signals a drift.
    fn observe(&mut self, version: &VersionId, correct: bool) -> bool {
        if !self.enabled {
            return false;
        }
        if self.version.as_ref() != Some(version) {
            self.version = Some(version.clone());
            self.reset();
        }
        self.recent.push_back(correct);
        self.recent_ok += u64::from(correct);
        if self.recent.len() > self.recent_n
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_ok -= u64::from(old);
            self.ref_n += 1;
            self.ref_ok += u64::from(old);
        }
        if self.ref_n < 4 * self.recent_n as u64 || self.recent.len() < self.recent_n {
            return false;
        }
        let p0 = self.ref_ok as f64 / self.ref_n as f64;
        let pr = self.recent_ok as f64 / self.recent_n as f64;
        let se = (p0 * (1.0 - p0) / self.recent_n as f64).sqrt();
        if pr < p0 - self.z * se {
            self.reset();
            return true;
        }
        false
    }
}

struct Job {
    x: Array2<f64>,
    y: Array1<f64>,
    window: WindowMeta,
    trigger: &'static str,
    /// The drift generation the window belongs to.
    generation: u64,
}

/// One fitting thread's queue.
struct Lane {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<()>,
    busy: bool,
}

impl Lane {
    fn spawn(name: &str, fitter: Fitter) -> Lane {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut fitter = fitter;
                while let Ok(job) = job_rx.recv() {
                    fitter.run(job);
                    if done_tx.send(()).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the trainer thread {name}: {e}");
        }
        Lane {
            jobs,
            done,
            busy: false,
        }
    }

    fn send(&mut self, job: Job) {
        if self.jobs.send(job).is_ok() {
            self.busy = true;
        }
    }
}

/// The worker's side of training: collects labelled rows, detects drift, schedules fits
/// on the trainer thread, and waits for urgent ones.
pub struct Trainer {
    spec: TrainingSpec,
    dims: Option<usize>,
    window: VecDeque<Row>,
    seq: u64,
    next_fit_seq: u64,
    seq_at_last_fit: u64,
    last_fit: Instant,
    first_done: bool,
    drifted: bool,
    detector: Detector,
    waiting: HashMap<(String, String), Waiting>,
    waiting_order: VecDeque<(String, String, i64)>,
    newest_ts: i64,
    /// Fits on a full window, in the background.
    regular: Lane,
    /// Fits on a short window (after a start or a drift), which the worker waits for. A
    /// lane of its own, so a drift never waits behind a long fit of stale rows.
    urgent: Lane,
    /// Bumped at each drift: fits of older windows are never promoted.
    generation: Arc<AtomicU64>,
    shared: Arc<TrainingShared>,
}

impl Trainer {
    /// A trainer for the model in `slot`, with its own fitting thread.
    pub fn new(spec: &TrainingSpec, slot: Arc<Slot>) -> Trainer {
        let shared = Arc::new(TrainingShared::default());
        let generation = Arc::new(AtomicU64::new(0));
        let common = FitterCommon {
            spec: spec.clone(),
            slot,
            shared: shared.clone(),
            generation: generation.clone(),
            promoting: Mutex::new(()),
            warm: Mutex::new(None),
        };
        let common = Arc::new(common);
        let fitter = || Fitter {
            common: common.clone(),
            champion: None,
        };
        Trainer {
            spec: spec.clone(),
            dims: None,
            window: VecDeque::new(),
            seq: 0,
            next_fit_seq: *spec.min_rows.get_ref() as u64,
            seq_at_last_fit: 0,
            last_fit: Instant::now(),
            first_done: false,
            drifted: false,
            detector: Detector::new(spec.drift.get_ref()),
            waiting: HashMap::new(),
            waiting_order: VecDeque::new(),
            newest_ts: i64::MIN,
            regular: Lane::spawn("weir-trainer", fitter()),
            urgent: Lane::spawn("weir-trainer-urgent", fitter()),
            generation,
            shared,
        }
    }

    /// The figures and decisions, shared.
    pub fn shared(&self) -> Arc<TrainingShared> {
        self.shared.clone()
    }

    /// Most events per step.
    pub fn step_rows(&self) -> usize {
        *self.spec.step_rows.get_ref()
    }

    /// Labels join later, by key and this id field.
    pub fn id_field(&self) -> Option<&str> {
        if self.spec.joins_later() {
            self.spec.id_field.as_deref()
        } else {
            None
        }
    }

    /// Before a step: takes finished jobs, and waits for an urgent one (a fit on a short
    /// window, after a start or a drift), so a recovering model serves from this step.
    pub fn before_step(&mut self) {
        // A short-window fit takes milliseconds; the bound is for a stuck plugin.
        if self.urgent.busy
            && self
                .urgent
                .done
                .recv_timeout(Duration::from_secs(30))
                .is_ok()
        {
            self.urgent.busy = false;
        }
        if self.regular.busy && self.regular.done.try_recv().is_ok() {
            self.regular.busy = false;
        }
    }

    /// Waits (at most 30 s each) for running fits, so their decisions are recorded before
    /// the worker's last checkpoint.
    pub fn settle(&mut self) {
        for lane in [&mut self.urgent, &mut self.regular] {
            if lane.busy && lane.done.recv_timeout(Duration::from_secs(30)).is_ok() {
                lane.busy = false;
            }
        }
    }

    /// The version that served a step (closes a promotion's timing).
    pub fn served(&self, version: &VersionId) {
        self.shared.served(version);
    }

    /// A labelled row the model scored: `served_by` is the serving version (`None` for a
    /// canary's row, which the drift detector leaves out).
    #[allow(clippy::too_many_arguments)]
    pub fn labelled(
        &mut self,
        x: &[f64],
        label: f64,
        score: f64,
        served_by: Option<&VersionId>,
        partition: i32,
        offset: i64,
        ts: i64,
    ) {
        if !(label == 0.0 || label == 1.0) || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        if let Some(v) = served_by
            && self.detector.observe(v, (score > 0.5) == (label == 1.0))
        {
            self.drift();
        }
        self.push(x, label, partition, offset, ts);
    }

    fn push(&mut self, x: &[f64], label: f64, partition: i32, offset: i64, ts: i64) {
        if self.dims != Some(x.len()) {
            // New feature dims (an extractor swap): the old rows no longer fit.
            self.dims = Some(x.len());
            self.window.clear();
        }
        self.seq += 1;
        self.newest_ts = self.newest_ts.max(ts);
        self.window.push_back(Row {
            x: x.to_vec(),
            y: label,
            partition,
            offset,
            ts,
        });
        let cap = *self.spec.window_rows.get_ref();
        while self.window.len() > cap {
            self.window.pop_front();
        }
        if let Some(w) = self.spec.window_ms {
            while self
                .window
                .front()
                .is_some_and(|r| r.ts < self.newest_ts - w)
            {
                self.window.pop_front();
            }
        }
    }

    fn drift(&mut self) {
        // The change happened within the recent rows: keep the last half of them.
        let keep = self.spec.drift.get_ref().recent / 2;
        while self.window.len() > keep {
            self.window.pop_front();
        }
        self.drifted = true;
        self.next_fit_seq = self.seq;
        self.generation.fetch_add(1, Ordering::SeqCst);
        lock(&self.shared.status).drifts += 1;
    }

    /// k-means: learns from every scored row.
    pub fn unsupervised(&self) -> bool {
        self.spec.unsupervised()
    }

    /// k-means: a scored row joins the window (no label, no drift detector).
    pub fn row(&mut self, x: &[f64], partition: i32, offset: i64, ts: i64) {
        if x.iter().any(|v| !v.is_finite()) {
            return;
        }
        self.push(x, 0.0, partition, offset, ts);
    }

    /// An unlabelled event that waits for its label record (`join = "later"`).
    #[allow(clippy::too_many_arguments)]
    pub fn wait_for_label(
        &mut self,
        key: &str,
        id: String,
        x: &[f64],
        score: f64,
        served_by: Arc<(VersionId, String)>,
        detect: bool,
        partition: i32,
        offset: i64,
        ts: i64,
    ) {
        let k = (key.to_string(), id);
        self.waiting_order.push_back((k.0.clone(), k.1.clone(), ts));
        self.waiting.insert(
            k,
            Waiting {
                x: x.to_vec(),
                score,
                detect,
                served_by,
                partition,
                offset,
                ts,
            },
        );
        self.newest_ts = self.newest_ts.max(ts);
    }

    /// A label record: joins its waiting event. Returns the score the event got and the
    /// version (and plugin) that served it, for the quality metrics.
    pub fn label_arrived(
        &mut self,
        key: &str,
        id: &str,
        label: f64,
    ) -> Option<(f64, Arc<(VersionId, String)>)> {
        let Some(w) = self.waiting.remove(&(key.to_string(), id.to_string())) else {
            lock(&self.shared.status).labels_unmatched += 1;
            return None;
        };
        lock(&self.shared.status).labels_joined += 1;
        let served = w.served_by.clone();
        self.labelled(
            &w.x,
            label,
            w.score,
            w.detect.then_some(&served.0),
            w.partition,
            w.offset,
            w.ts,
        );
        Some((w.score, served))
    }

    /// After a step: expires events whose label is overdue, and starts a fit when one is
    /// due and none is running.
    pub fn after_step(&mut self) {
        self.expire();
        {
            let mut s = lock(&self.shared.status);
            s.labelled_rows = self.seq;
            s.window_rows = self.window.len();
            s.pending_labels = self.waiting.len();
        }
        let n = self.window.len();
        let min = *self.spec.min_rows.get_ref();
        if n < min {
            return;
        }
        let due_rows = self.seq >= self.next_fit_seq;
        let due_time = self
            .spec
            .every_ms
            .is_some_and(|ms| self.last_fit.elapsed() >= Duration::from_millis(ms))
            && self.seq > self.seq_at_last_fit;
        if !(due_rows || due_time) {
            return;
        }
        let trigger = if !self.first_done {
            "first"
        } else if self.drifted {
            "drift"
        } else if due_rows {
            "schedule"
        } else {
            "timer"
        };
        let every = *self.spec.every_rows.get_ref();
        // While the window is short, refit each time it grew by half.
        let short = n < 2 * every;
        let lane = if short { &self.urgent } else { &self.regular };
        if lane.busy {
            return;
        }
        self.next_fit_seq = self.seq + every.min(min.max(n / 2)) as u64;
        self.seq_at_last_fit = self.seq;
        self.last_fit = Instant::now();
        self.first_done = true;
        self.drifted = false;
        let job = self.job(trigger);
        if short {
            self.urgent.send(job);
        } else {
            self.regular.send(job);
        }
    }

    fn expire(&mut self) {
        let max = self.spec.max_pending;
        let cutoff = self.newest_ts.saturating_sub(self.spec.label_wait_ms);
        while let Some((k, id, ts)) = self.waiting_order.front() {
            let over = self.waiting.len() > max;
            if *ts >= cutoff && !over {
                break;
            }
            let key = (k.clone(), id.clone());
            // The entry may have been joined already, or replaced by a newer event with
            // the same key and id (then this mark is stale).
            let expired = match self.waiting.get(&key) {
                Some(w) if w.ts == *ts => self.waiting.remove(&key).is_some(),
                _ => false,
            };
            if expired {
                lock(&self.shared.status).labels_expired += 1;
            }
            self.waiting_order.pop_front();
        }
    }

    fn job(&self, trigger: &'static str) -> Job {
        let d = self.dims.unwrap_or(0);
        let n = self.window.len();
        let mut x = Array2::zeros((n, d));
        let mut y = Array1::zeros(n);
        let mut meta = WindowMeta {
            rows: n,
            from_ts: i64::MAX,
            to_ts: i64::MIN,
            partitions: BTreeMap::new(),
        };
        for (i, r) in self.window.iter().enumerate() {
            x.row_mut(i)
                .iter_mut()
                .zip(&r.x)
                .for_each(|(dst, v)| *dst = *v);
            y[i] = r.y;
            meta.from_ts = meta.from_ts.min(r.ts);
            meta.to_ts = meta.to_ts.max(r.ts);
            meta.partitions
                .entry(r.partition)
                .and_modify(|e| {
                    e.0 = e.0.min(r.offset);
                    e.1 = e.1.max(r.offset);
                })
                .or_insert((r.offset, r.offset));
        }
        Job {
            x,
            y,
            window: meta,
            trigger,
            generation: self.generation.load(Ordering::SeqCst),
        }
    }

    /// Serves a stored, earlier promoted model (for example after a restart): the
    /// serving plugin and config with `snapshot` restored.
    pub fn resume(slot: &Slot, snapshot: Vec<u8>) -> weir_engine::Result<VersionId> {
        let cur = slot.current();
        let dep = Deployment::with_snapshot(cur.plugin.clone(), cur.config.clone(), snapshot);
        let inst = Instance::new(dep)?;
        let version = inst.deployment().version.clone();
        slot.swap_instance(inst)?;
        Ok(version)
    }
}

/// What the fitting threads share.
struct FitterCommon {
    spec: TrainingSpec,
    slot: Arc<Slot>,
    shared: Arc<TrainingShared>,
    generation: Arc<AtomicU64>,
    /// Held from the last check of the serving version to the swap.
    promoting: Mutex<()>,
    /// The last promoted model (on the model's inputs), where the next fit starts.
    warm: Mutex<Option<weir_ml::LinearModel>>,
}

/// A fitting thread: fits, judges and promotes.
struct Fitter {
    common: Arc<FitterCommon>,
    /// An instance of the champion, kept while it serves.
    champion: Option<Instance>,
}

struct Candidate {
    model: weir_ml::LinearModel,
    alpha: f64,
    max_iter: u64,
    score: f64,
}

impl Fitter {
    fn run(&mut self, job: Job) {
        let started = Instant::now();
        let metric = self.common.spec.metric();
        let current = self.common.slot.current();
        let mut d = Decision {
            at_ms: now_ms(),
            trigger: job.trigger.into(),
            outcome: "failed".into(),
            reason: String::new(),
            algorithm: self.common.spec.algorithm.get_ref().clone(),
            params: serde_json::Value::Null,
            grid: Vec::new(),
            metric: metric.as_str().into(),
            challenger_score: None,
            champion_score: None,
            margin: *self.common.spec.margin.get_ref(),
            train_rows: 0,
            holdout_rows: 0,
            window: job.window.clone(),
            champion_version: current.version.to_string(),
            version: None,
            plugin_sha256: current.plugin.id().0.clone(),
            snapshot: None,
            fit_ms: 0.0,
        };
        if let Err(reason) = self.judge(&job, &current, &mut d) {
            d.outcome = "failed".into();
            d.reason = reason;
        }
        d.fit_ms = started.elapsed().as_secs_f64() * 1e3;
        self.common.shared.record(d);
    }

    fn judge(
        &mut self,
        job: &Job,
        current: &Arc<Deployment>,
        d: &mut Decision,
    ) -> Result<(), String> {
        let metric = self.common.spec.metric();
        let n = job.x.nrows();
        let dims = job.x.ncols();
        let h = ((n as f64 * *self.common.spec.holdout.get_ref()).round() as usize).clamp(1, n - 1);
        let cut = n - h;
        d.train_rows = cut;
        d.holdout_rows = h;
        let xt = job.x.slice(ndarray::s![..cut, ..]).to_owned();
        let yt = job.y.slice(ndarray::s![..cut]).to_owned();
        let xh = job.x.slice(ndarray::s![cut.., ..]).to_owned();
        let yh: Vec<f64> = job.y.slice(ndarray::s![cut..]).to_vec();

        if self.common.spec.unsupervised() {
            return self.judge_kmeans(&xt, &xh, job, current, d);
        }
        // The transforms, fitted on the training rows.
        let scaler = match self.common.spec.scaler() {
            ScalerKind::None => None,
            ScalerKind::Standard => {
                Some(weir_ml::Scaler::standard(&xt).map_err(|e| e.to_string())?)
            }
            ScalerKind::MinMax => Some(weir_ml::Scaler::min_max(&xt).map_err(|e| e.to_string())?),
        };
        let xs = match &scaler {
            Some(s) => s.transform(&xt),
            None => xt,
        };
        let pca = if self.common.spec.pca > 0 {
            if self.common.spec.pca > dims {
                return Err(format!(
                    "pca = {} but the model has {dims} features",
                    self.common.spec.pca
                ));
            }
            Some(weir_ml::Pca::fit(&xs, self.common.spec.pca).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let xf = match &pca {
            Some(p) => p.transform(&xs),
            None => xs,
        };

        // The grid, each point scored on the held-out rows (host-side, on raw features).
        // Without transforms, L-BFGS starts from the last promoted model.
        let warm = if scaler.is_none() && pca.is_none() {
            lock(&self.common.warm).clone()
        } else {
            None
        };
        let mut best: Option<Candidate> = None;
        let mut last_err = None;
        for &alpha in &self.common.spec.grid.get_ref().alpha {
            for &max_iter in &self.common.spec.grid.get_ref().max_iter {
                let fitted = weir_ml::fit_logistic_from(&xf, &yt, alpha, max_iter, warm.as_ref())
                    .map(|m| {
                        let m = match &pca {
                            Some(p) => m.before_pca(p),
                            None => m,
                        };
                        match &scaler {
                            Some(s) => m.before_scaler(s),
                            None => m,
                        }
                    });
                match fitted {
                    Ok(model) => {
                        let score = metric.score(&model.predict_all(xh.view()), &yh);
                        d.grid.push(serde_json::json!({
                            "alpha": alpha, "max_iter": max_iter, "score": finite(score)
                        }));
                        if best
                            .as_ref()
                            .is_none_or(|b| metric.gain(score, b.score) > 0.0)
                        {
                            best = Some(Candidate {
                                model,
                                alpha,
                                max_iter,
                                score,
                            });
                        }
                    }
                    Err(e) => last_err = Some(e.to_string()),
                }
            }
        }
        let Some(best) = best else {
            return Err(last_err.unwrap_or_else(|| "nothing fitted".into()));
        };
        d.params = serde_json::json!({
            "alpha": best.alpha,
            "max_iter": best.max_iter,
            "scaler": self.common.spec.scaler.get_ref(),
            "pca": self.common.spec.pca,
            "coef": best.model.coef,
            "intercept": best.model.intercept,
        });

        let warm_next = (scaler.is_none() && pca.is_none()).then(|| best.model.clone());
        let promoted = self.contest(best.model.snapshot(), &xh, &yh, job, current, d)?;
        if promoted && let Some(m) = warm_next {
            *lock(&self.common.warm) = Some(m);
        }
        Ok(())
    }

    /// Judges the challenger (the serving plugin and config restoring `snapshot`) against
    /// the champion on the held-out rows, both through Wasm, and swaps it in if it wins.
    /// Returns whether it was promoted.
    fn contest(
        &mut self,
        snapshot: Vec<u8>,
        xh: &Array2<f64>,
        yh: &[f64],
        job: &Job,
        current: &Arc<Deployment>,
        d: &mut Decision,
    ) -> Result<bool, String> {
        let metric = self.common.spec.metric();
        let h = xh.nrows();
        let dims = xh.ncols();
        // The challenger as it would serve: the serving plugin and config, restoring the
        // exported weights.
        let dep = Deployment::with_snapshot(
            current.plugin.clone(),
            current.config.clone(),
            snapshot.clone(),
        );
        d.version = Some(dep.version.to_string());
        d.snapshot = Some(snapshot);
        let holdout = FeatureBatch::new(
            h as u32,
            dims as u32,
            xh.as_standard_layout().iter().copied().collect(),
        );
        let mut challenger = Instance::new(dep)
            .map_err(|e| format!("the plugin does not serve the trained model: {e}"))?;
        let cs = challenger
            .predict(&holdout)
            .map_err(|e| format!("the challenger failed on the held-out rows: {e}"))?;
        let challenger_score = metric.score(&cs, yh);
        d.challenger_score = Some(finite(challenger_score));

        let champion = match self.champion.take() {
            Some(i) if Arc::ptr_eq(i.deployment(), current) => i,
            _ => Instance::new(current.clone())
                .map_err(|e| format!("instantiating the champion: {e}"))?,
        };
        let mut champion = champion;
        let ks = champion.predict(&holdout);
        self.champion = Some(champion);
        let champion_score = match ks {
            Ok(s) => metric.score(&s, yh),
            // A champion that cannot score the rows (other features, say) loses.
            Err(_) => match metric {
                Metric::LogLoss | Metric::Inertia => f64::INFINITY,
                _ => f64::NEG_INFINITY,
            },
        };
        d.champion_score = Some(finite(champion_score));
        let gain = metric.gain(challenger_score, champion_score);
        let margin = *self.common.spec.margin.get_ref();
        if gain.is_nan() || gain <= margin {
            d.outcome = "rejected".into();
            d.reason = format!(
                "the challenger's {} {:.5} does not beat the champion's {:.5} by more than {margin}",
                metric.as_str(),
                challenger_score,
                champion_score
            );
            return Ok(false);
        }
        let _promoting = lock(&self.common.promoting);
        if job.generation != self.common.generation.load(Ordering::SeqCst) {
            d.outcome = "rejected".into();
            d.reason = "superseded: a drift restarted the window while this fit ran".into();
            return Ok(false);
        }
        if !Arc::ptr_eq(&self.common.slot.current(), current) {
            d.outcome = "rejected".into();
            d.reason = "the serving version changed while the challenger was judged".into();
            return Ok(false);
        }
        let version = challenger.deployment().version.clone();
        *lock(&self.common.shared.promoted) = Some((version, Instant::now()));
        self.common
            .slot
            .swap_instance(challenger)
            .map_err(|e| format!("swapping the challenger in: {e}"))?;
        d.outcome = "promoted".into();
        d.reason = format!(
            "the challenger's {} {:.5} beats the champion's {:.5} by more than {margin}",
            metric.as_str(),
            challenger_score,
            champion_score
        );
        Ok(true)
    }

    /// k-means: every point of the grid's `k` is fitted on the training rows and scored by
    /// the mean distance of the held-out rows to their nearest centroid.
    fn judge_kmeans(
        &mut self,
        xt: &Array2<f64>,
        xh: &Array2<f64>,
        job: &Job,
        current: &Arc<Deployment>,
        d: &mut Decision,
    ) -> Result<(), String> {
        let mut best: Option<(weir_ml::KMeans, usize, f64)> = None;
        let mut last_err = None;
        for &k in &self.common.spec.grid.get_ref().k {
            match weir_ml::KMeans::fit(xt, k, 1) {
                Ok(m) => {
                    let dist: Vec<f64> = xh
                        .rows()
                        .into_iter()
                        .map(|r| m.anomaly_score(&r.to_vec()))
                        .collect();
                    let score = Metric::Inertia.score(&dist, &[]);
                    d.grid
                        .push(serde_json::json!({"k": k, "score": finite(score)}));
                    if best.as_ref().is_none_or(|b| score < b.2) {
                        best = Some((m, k, score));
                    }
                }
                Err(e) => last_err = Some(e.to_string()),
            }
        }
        let Some((model, k, _)) = best else {
            return Err(last_err.unwrap_or_else(|| "nothing fitted".into()));
        };
        let rows: Vec<Vec<f64>> = model
            .centroids
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect();
        d.params = serde_json::json!({ "k": k, "centroids": rows });
        let yh = vec![0.0; xh.nrows()];
        self.contest(model.snapshot(), xh, &yh, job, current, d)?;
        Ok(())
    }
}

/// Non-finite scores (no rows of one class for the AUC, say) are stored as 0.
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detector_fires_on_a_collapse_and_not_on_noise() {
        let mut d = Detector::new(&DriftSpec {
            enabled: true,
            recent: 100,
            z: 5.0,
        });
        let v = VersionId("a".into());
        // 80% correct, deterministic pattern: never a drift.
        for i in 0..20_000 {
            assert!(!d.observe(&v, i % 5 != 0), "false alarm at {i}");
        }
        // Then 30% correct: fires within the recent window.
        let mut fired = None;
        for i in 0..200 {
            if d.observe(&v, i % 10 < 3) {
                fired = Some(i);
                break;
            }
        }
        let at = fired.expect("no drift detected");
        assert!(at < 100, "detected after {at} rows");
        // Another version starts a fresh reference.
        let w = VersionId("b".into());
        for i in 0..300 {
            assert!(!d.observe(&w, i % 10 < 3));
        }
    }

    #[test]
    fn metrics_compare_in_the_right_direction() {
        assert!(Metric::Accuracy.gain(0.8, 0.7) > 0.0);
        assert!(Metric::Auc.gain(0.6, 0.7) < 0.0);
        assert!(Metric::LogLoss.gain(0.3, 0.5) > 0.0);
    }
}
