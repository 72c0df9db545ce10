//! # weir-ml
//!
//! The host side of weir's machine learning, on ndarray and linfa: what scikit-learn offers a
//! batch job, offered on a bounded window of a stream's recent labelled rows.
//!
//! - **Estimators**: logistic regression ([`fit_logistic`], linfa-logistic, L-BFGS) and
//!   linear regression ([`fit_linear`], linfa-linear).
//! - **Transformers**: [`Scaler::standard`], [`Scaler::min_max`] (linfa-preprocessing) and
//!   [`Pca`] (linfa-reduction).
//! - **Clustering**: [`KMeans`] with an anomaly score (the distance to the nearest
//!   centroid) and [`dbscan`] (linfa-clustering).
//! - **Model selection**: [`k_fold`] splits, [`cross_validate`] and [`grid_search`].
//! - **Metrics**: [`accuracy`], [`log_loss`] and [`auc`].
//!
//! A trained linear model exports its parameters in the `logistic` plugin's snapshot format
//! ([`LinearModel::snapshot`]: `{"coef": [..], "intercept": ..}`), so the host trains and the
//! sandboxed plugin serves it through `restore`.

use linfa::prelude::*;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use std::collections::VecDeque;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// Not enough rows, classes or features for the algorithm.
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    /// Rows of different widths, or a NaN/infinite value.
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// The algorithm itself failed.
    #[error("{algorithm}: {message}")]
    Algorithm {
        /// Which algorithm.
        algorithm: &'static str,
        /// linfa's message.
        message: String,
    },
}

fn algo(algorithm: &'static str) -> impl Fn(String) -> MlError {
    move |message| MlError::Algorithm { algorithm, message }
}

/// The most recent labelled rows of a stream, at most `capacity` of them.
#[derive(Debug, Clone)]
pub struct TrainingWindow {
    capacity: usize,
    dims: usize,
    rows: VecDeque<(Vec<f64>, f64)>,
}

impl TrainingWindow {
    /// An empty window of rows `dims` wide, keeping the last `capacity`.
    pub fn new(capacity: usize, dims: usize) -> Self {
        TrainingWindow {
            capacity: capacity.max(1),
            dims,
            rows: VecDeque::new(),
        }
    }

    /// Adds a row (the oldest goes when full). Rows of the wrong width or with a non-finite
    /// value are refused.
    pub fn push(&mut self, row: &[f64], label: f64) -> Result<(), MlError> {
        if row.len() != self.dims {
            return Err(MlError::InvalidData(format!(
                "a row of {} values in a window of {}",
                row.len(),
                self.dims
            )));
        }
        if !label.is_finite() || row.iter().any(|v| !v.is_finite()) {
            return Err(MlError::InvalidData("a non-finite value".into()));
        }
        if self.rows.len() == self.capacity {
            self.rows.pop_front();
        }
        self.rows.push_back((row.to_vec(), label));
        Ok(())
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows as a matrix and the labels as a vector, oldest first.
    pub fn arrays(&self) -> (Array2<f64>, Array1<f64>) {
        let n = self.rows.len();
        let mut x = Array2::zeros((n, self.dims));
        let mut y = Array1::zeros(n);
        for (i, (row, label)) in self.rows.iter().enumerate() {
            x.row_mut(i).iter_mut().zip(row).for_each(|(d, s)| *d = *s);
            y[i] = *label;
        }
        (x, y)
    }
}

/// What a linear model's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// `sigmoid(b + w·x)`: a probability.
    Logistic,
    /// `b + w·x`.
    Identity,
}

/// A trained linear model: weights, intercept and link.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearModel {
    /// One weight per feature.
    pub coef: Vec<f64>,
    /// The intercept.
    pub intercept: f64,
    /// The link.
    pub link: LinkKind,
}

impl LinearModel {
    /// The model's output for one row.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let z = self.intercept + self.coef.iter().zip(row).map(|(w, x)| w * x).sum::<f64>();
        match self.link {
            LinkKind::Logistic => 1.0 / (1.0 + (-z).exp()),
            LinkKind::Identity => z,
        }
    }

    /// Outputs for every row of `x`.
    pub fn predict_all(&self, x: ArrayView2<'_, f64>) -> Vec<f64> {
        x.rows()
            .into_iter()
            .map(|r| self.predict(r.as_slice().unwrap_or(&r.to_vec())))
            .collect()
    }

    /// The same model on untransformed rows: folds a scaler applied before it into the
    /// weights, since `w · (x - o) / s + b = (w / s) · x + (b - Σ w o / s)`. The plugin
    /// that serves the model then needs no scaler.
    pub fn before_scaler(&self, scaler: &Scaler) -> LinearModel {
        let mut coef = Vec::with_capacity(self.coef.len());
        let mut intercept = self.intercept;
        for ((w, o), s) in self.coef.iter().zip(&scaler.offsets).zip(&scaler.scales) {
            coef.push(w / s);
            intercept -= w * o / s;
        }
        LinearModel {
            coef,
            intercept,
            link: self.link,
        }
    }

    /// The same model on rows before a PCA projection: `w · P (x - m) + b` is
    /// `(Pᵀ w) · x + (b - (Pᵀ w) · m)`.
    pub fn before_pca(&self, pca: &Pca) -> LinearModel {
        let comps = pca.model.components();
        let w = Array1::from(self.coef.clone());
        let back = comps.t().dot(&w);
        let intercept = self.intercept - back.dot(pca.model.mean());
        LinearModel {
            coef: back.to_vec(),
            intercept,
            link: self.link,
        }
    }

    /// The parameters in the `logistic` plugin's snapshot format: `{"coef": [..],
    /// "intercept": ..}` (JSON), for its `restore`.
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::json!({ "coef": self.coef, "intercept": self.intercept })
            .to_string()
            .into_bytes()
    }
}

fn check(x: &Array2<f64>, y: &Array1<f64>) -> Result<(), MlError> {
    if x.nrows() != y.len() {
        return Err(MlError::InvalidData(format!(
            "{} rows but {} labels",
            x.nrows(),
            y.len()
        )));
    }
    if x.nrows() < 2 || x.ncols() == 0 {
        return Err(MlError::NotEnoughData(format!(
            "{} rows of {} features",
            x.nrows(),
            x.ncols()
        )));
    }
    if x.iter().chain(y.iter()).any(|v| !v.is_finite()) {
        return Err(MlError::InvalidData("a non-finite value".into()));
    }
    Ok(())
}

/// Logistic regression for labels 0/1 (a label ≥ 0.5 is positive), by L-BFGS with L2
/// penalty `alpha` (scikit-learn's `C` is `1 / alpha`). Both classes must be present.
pub fn fit_logistic(
    x: &Array2<f64>,
    y: &Array1<f64>,
    alpha: f64,
    max_iterations: u64,
) -> Result<LinearModel, MlError> {
    fit_logistic_from(x, y, alpha, max_iterations, None)
}

/// [`fit_logistic`] with L-BFGS starting from `start` (a model on the same features, for
/// example the one serving): the optimum is the same, and near it far fewer iterations
/// are needed.
pub fn fit_logistic_from(
    x: &Array2<f64>,
    y: &Array1<f64>,
    alpha: f64,
    max_iterations: u64,
    start: Option<&LinearModel>,
) -> Result<LinearModel, MlError> {
    check(x, y)?;
    let classes: Array1<bool> = y.mapv(|v| v >= 0.5);
    if classes.iter().all(|c| *c) || classes.iter().all(|c| !*c) {
        return Err(MlError::NotEnoughData(
            "only one class in the window".into(),
        ));
    }
    let data = Dataset::new(x.clone(), classes);
    let mut params = linfa_logistic::LogisticRegression::default()
        .alpha(alpha)
        .max_iterations(max_iterations)
        .gradient_tolerance(1e-6);
    if let Some(m) = start.filter(|m| m.coef.len() == x.ncols() && m.link == LinkKind::Logistic) {
        // linfa's positive class is the first label of the data; the start is P(label = 1).
        let sign = if y[0] >= 0.5 { 1.0 } else { -1.0 };
        let mut w: Vec<f64> = m.coef.iter().map(|c| sign * c).collect();
        w.push(sign * m.intercept);
        params = params.initial_params(Array1::from(w));
    }
    let fitted = params
        .fit(&data)
        .map_err(|e| algo("logistic regression")(e.to_string()))?;
    // linfa models P(its positive class), which is the more frequent class: flip the signs
    // when that is `false`, so the exported model is P(label = 1).
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    Ok(LinearModel {
        coef: fitted.params().iter().map(|w| sign * w).collect(),
        intercept: sign * fitted.intercept(),
        link: LinkKind::Logistic,
    })
}

/// Ordinary least squares.
pub fn fit_linear(x: &Array2<f64>, y: &Array1<f64>) -> Result<LinearModel, MlError> {
    check(x, y)?;
    let data = Dataset::new(x.clone(), y.clone());
    let fitted = linfa_linear::LinearRegression::new()
        .fit(&data)
        .map_err(|e| algo("linear regression")(e.to_string()))?;
    Ok(LinearModel {
        coef: fitted.params().to_vec(),
        intercept: fitted.intercept(),
        link: LinkKind::Identity,
    })
}

/// A per-feature affine transform `(x - offset) / scale`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scaler {
    /// Subtracted from each feature.
    pub offsets: Vec<f64>,
    /// Each feature is divided by this.
    pub scales: Vec<f64>,
}

impl Scaler {
    /// Zero mean, unit variance (linfa's standard scaler).
    pub fn standard(x: &Array2<f64>) -> Result<Scaler, MlError> {
        Self::fit(
            x,
            linfa_preprocessing::linear_scaling::LinearScaler::standard(),
        )
    }

    /// Each feature to [0, 1] (linfa's min-max scaler).
    pub fn min_max(x: &Array2<f64>) -> Result<Scaler, MlError> {
        Self::fit(
            x,
            linfa_preprocessing::linear_scaling::LinearScaler::min_max(),
        )
    }

    fn fit(
        x: &Array2<f64>,
        params: linfa_preprocessing::linear_scaling::LinearScalerParams<f64>,
    ) -> Result<Scaler, MlError> {
        if x.nrows() == 0 {
            return Err(MlError::NotEnoughData("no rows".into()));
        }
        let data = DatasetBase::from(x.clone());
        let s = params
            .fit(&data)
            .map_err(|e| algo("scaler")(e.to_string()))?;
        // linfa multiplies by `scales`; store the divisor. A constant feature gets 1.
        Ok(Scaler {
            offsets: s.offsets().to_vec(),
            scales: s
                .scales()
                .iter()
                .map(|m| {
                    if *m == 0.0 || !m.is_finite() {
                        1.0
                    } else {
                        1.0 / m
                    }
                })
                .collect(),
        })
    }

    /// Transforms one row in place.
    pub fn apply(&self, row: &mut [f64]) {
        for ((v, o), s) in row.iter_mut().zip(&self.offsets).zip(&self.scales) {
            *v = (*v - o) / s;
        }
    }

    /// Transforms a matrix.
    pub fn transform(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut out = x.clone();
        for mut row in out.rows_mut() {
            if let Some(r) = row.as_slice_mut() {
                self.apply(r);
            }
        }
        out
    }
}

/// Principal components.
#[derive(Debug, Clone)]
pub struct Pca {
    model: linfa_reduction::Pca<f64>,
}

impl Pca {
    /// The first `components` principal components of `x`.
    pub fn fit(x: &Array2<f64>, components: usize) -> Result<Pca, MlError> {
        if components == 0 || components > x.ncols() || x.nrows() < 2 {
            return Err(MlError::NotEnoughData(format!(
                "{components} components of {} rows × {} features",
                x.nrows(),
                x.ncols()
            )));
        }
        let data = DatasetBase::from(x.clone());
        let model = linfa_reduction::Pca::params(components)
            .fit(&data)
            .map_err(|e| algo("PCA")(e.to_string()))?;
        Ok(Pca { model })
    }

    /// The share of the variance each component explains.
    pub fn explained_variance_ratio(&self) -> Vec<f64> {
        self.model.explained_variance_ratio().to_vec()
    }

    /// Projects rows onto the components.
    pub fn transform(&self, x: &Array2<f64>) -> Array2<f64> {
        let centered = x - &self.model.mean().view().insert_axis(Axis(0));
        centered.dot(&self.model.components().t())
    }
}

/// k-means centroids, with the distance to the nearest centroid as an anomaly score.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// One centroid per row.
    pub centroids: Array2<f64>,
}

impl KMeans {
    /// k-means++ with `k` clusters, seeded for reproducibility.
    pub fn fit(x: &Array2<f64>, k: usize, seed: u64) -> Result<KMeans, MlError> {
        if k == 0 || x.nrows() < k {
            return Err(MlError::NotEnoughData(format!(
                "{k} clusters of {} rows",
                x.nrows()
            )));
        }
        let rng = rand::rngs::StdRng::seed_from_u64(seed);
        let data = DatasetBase::from(x.clone());
        let model = linfa_clustering::KMeans::params_with_rng(k, rng)
            .n_runs(3)
            .max_n_iterations(300)
            .tolerance(1e-6)
            .fit(&data)
            .map_err(|e| algo("k-means")(e.to_string()))?;
        Ok(KMeans {
            centroids: model.centroids().clone(),
        })
    }

    /// The nearest centroid of a row, and the (Euclidean) distance to it.
    pub fn nearest(&self, row: &[f64]) -> (usize, f64) {
        let mut best = (0, f64::INFINITY);
        for (i, c) in self.centroids.rows().into_iter().enumerate() {
            let d = c
                .iter()
                .zip(row)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            if d < best.1 {
                best = (i, d);
            }
        }
        best
    }

    /// The centroids in the `kmeans` plugin's snapshot format: `{"centroids": [[..], ..]}`
    /// (JSON), for its `restore`.
    pub fn snapshot(&self) -> Vec<u8> {
        let rows: Vec<Vec<f64>> = self
            .centroids
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect();
        serde_json::json!({ "centroids": rows })
            .to_string()
            .into_bytes()
    }

    /// The anomaly score of a row: its distance to the nearest centroid.
    pub fn anomaly_score(&self, row: &[f64]) -> f64 {
        self.nearest(row).1
    }
}

/// DBSCAN cluster of every row (`None`: noise).
pub fn dbscan(x: &Array2<f64>, eps: f64, min_points: usize) -> Result<Vec<Option<usize>>, MlError> {
    if eps.is_nan() || eps <= 0.0 || min_points == 0 {
        return Err(MlError::InvalidData(
            "eps must be > 0 and min_points ≥ 1".into(),
        ));
    }
    let labels = linfa_clustering::Dbscan::params(min_points)
        .tolerance(eps)
        .transform(x)
        .map_err(|e| algo("DBSCAN")(e.to_string()))?;
    Ok(labels.to_vec())
}

/// `k` folds over `n` rows in order: each is (training rows, held-out rows); the held-out
/// parts partition `0..n`, their sizes differ by at most one.
pub fn k_fold(n: usize, k: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    let k = k.clamp(1, n.max(1));
    (0..k)
        .map(|f| {
            let start = f * n / k;
            let end = (f + 1) * n / k;
            let test: Vec<usize> = (start..end).collect();
            let train: Vec<usize> = (0..start).chain(end..n).collect();
            (train, test)
        })
        .collect()
}

/// The mean of `score(model fitted on the training rows, held-out rows)` over `k` folds.
pub fn cross_validate(
    x: &Array2<f64>,
    y: &Array1<f64>,
    k: usize,
    mut fit: impl FnMut(&Array2<f64>, &Array1<f64>) -> Result<LinearModel, MlError>,
    score: impl Fn(&[f64], &[f64]) -> f64,
) -> Result<f64, MlError> {
    let folds = k_fold(x.nrows(), k);
    let mut total = 0.0;
    for (train, test) in &folds {
        let model = fit(&x.select(Axis(0), train), &y.select(Axis(0), train))?;
        let xt = x.select(Axis(0), test);
        let predicted = model.predict_all(xt.view());
        let truth: Vec<f64> = test.iter().map(|i| y[*i]).collect();
        total += score(&predicted, &truth);
    }
    Ok(total / folds.len() as f64)
}

/// A grid search's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct GridResult<P> {
    /// The best parameter.
    pub best: P,
    /// Its cross-validated score.
    pub best_score: f64,
    /// Every parameter with its score, in grid order.
    pub scores: Vec<(P, f64)>,
}

/// Cross-validates `fit(param)` for every parameter of the grid and keeps the highest
/// score (ties: the earlier parameter).
pub fn grid_search<P: Clone>(
    x: &Array2<f64>,
    y: &Array1<f64>,
    k: usize,
    grid: &[P],
    fit: impl Fn(&P, &Array2<f64>, &Array1<f64>) -> Result<LinearModel, MlError>,
    score: impl Fn(&[f64], &[f64]) -> f64 + Copy,
) -> Result<GridResult<P>, MlError> {
    let mut scores = Vec::with_capacity(grid.len());
    for p in grid {
        let s = cross_validate(x, y, k, |a, b| fit(p, a, b), score)?;
        scores.push((p.clone(), s));
    }
    let (best, best_score) = scores
        .iter()
        .fold(None::<&(P, f64)>, |acc, e| match acc {
            Some(a) if a.1 >= e.1 => Some(a),
            _ => Some(e),
        })
        .cloned()
        .ok_or_else(|| MlError::NotEnoughData("an empty grid".into()))?;
    Ok(GridResult {
        best,
        best_score,
        scores,
    })
}

/// Share of rows whose probability is on the label's side of 0.5.
pub fn accuracy(p: &[f64], y: &[f64]) -> f64 {
    if p.is_empty() {
        return f64::NAN;
    }
    let right = p
        .iter()
        .zip(y)
        .filter(|(p, y)| (**p > 0.5) == (**y >= 0.5))
        .count();
    right as f64 / p.len() as f64
}

/// Mean log-loss (probabilities clamped to [1e-15, 1 - 1e-15]).
pub fn log_loss(p: &[f64], y: &[f64]) -> f64 {
    if p.is_empty() {
        return f64::NAN;
    }
    let total: f64 = p
        .iter()
        .zip(y)
        .map(|(p, y)| {
            let p = p.clamp(1e-15, 1.0 - 1e-15);
            if *y >= 0.5 { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / p.len() as f64
}

/// Area under the ROC curve (the Mann–Whitney statistic; ties count half). NaN without
/// both classes.
pub fn auc(p: &[f64], y: &[f64]) -> f64 {
    let mut pairs: Vec<(f64, bool)> = p.iter().zip(y).map(|(p, y)| (*p, *y >= 0.5)).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    // Sum of the positives' ranks, with tied scores sharing their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += pairs[i..=j].iter().filter(|p| p.1).count() as f64 * avg;
        i = j + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests;
