//! Native Rust reference implementations of the workload's jobs, for correctness checks
//! and for the native side of benchmarks.

use crate::models::{EventModel, WindowModel};
use std::collections::BTreeMap;

/// The logistic function.
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Job 1's features: `(x_j - m_j)/s_j` for j in 0..8, then `log1p(|x0|)`.
#[inline]
pub fn features(m: &EventModel, x: &[f64], out: &mut [f64; 9]) {
    for j in 0..8 {
        out[j] = (x[j] - m.x_mean[j]) / m.x_std[j];
    }
    out[8] = x[0].abs().ln_1p();
}

/// Logistic score of one feature row.
#[inline]
pub fn score(coef: &[f64], intercept: f64, f: &[f64]) -> f64 {
    let mut z = intercept;
    for (w, v) in coef.iter().zip(f) {
        z += w * v;
    }
    sigmoid(z)
}

/// Job 1 over a flat row-major `n x 8` input matrix, writing one score per row.
pub fn job1(m: &EventModel, inputs: &[f64], out: &mut Vec<f64>) {
    out.clear();
    let mut f = [0.0; 9];
    for x in inputs.chunks_exact(8) {
        features(m, x, &mut f);
        out.push(score(&m.coef, m.intercept, &f));
    }
}

/// Job 1 as one would write it by hand for speed: the standardisation folded into the
/// weights once (`a_j = w_j / s_j`, `c = b - Σ a_j m_j`), so each row costs eight
/// multiply-adds, one `ln_1p` and one `exp`, with no division but the sigmoid's. Equal to
/// [`job1`] within a few ulps (the benchmark checks 1e-12).
pub fn job1_fast(m: &EventModel, inputs: &[f64], out: &mut Vec<f64>) {
    let mut a = [0.0; 8];
    let mut c = m.intercept;
    for j in 0..8 {
        a[j] = m.coef[j] / m.x_std[j];
        c -= a[j] * m.x_mean[j];
    }
    let w8 = m.coef[8];
    out.clear();
    out.reserve(inputs.len() / 8);
    for x in inputs.chunks_exact(8) {
        let x: &[f64; 8] = x.try_into().unwrap_or(&[0.0; 8]);
        let mut z = c + w8 * x[0].abs().ln_1p();
        for j in 0..8 {
            z += a[j] * x[j];
        }
        out.push(1.0 / (1.0 + (-z).exp()));
    }
}

/// Job 2's per-(key, window) aggregates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowAgg {
    /// Events in the window.
    pub count: u64,
    /// Mean of x0.
    pub mean_x0: f64,
    /// Max of x0.
    pub max_x0: f64,
    /// Window model score.
    pub score: f64,
}

/// Window model score of `[count, mean_x0, max_x0]`.
pub fn window_score(w: &WindowModel, count: f64, mean: f64, max: f64) -> f64 {
    let a = [count, mean, max];
    let mut z = w.intercept;
    for j in 0..3 {
        z += w.coef[j] * (a[j] - w.agg_mean[j]) / w.agg_std[j];
    }
    sigmoid(z)
}

/// Job 2 as a plain group-by over (key, floor(ts/1000)*1000): what the windowed pipeline
/// must produce when nothing is too late.
pub fn job2_groupby<'a>(
    w: &WindowModel,
    events: impl IntoIterator<Item = (&'a str, i64, f64)>,
) -> BTreeMap<(String, i64), WindowAgg> {
    let mut acc: BTreeMap<(String, i64), (u64, f64, f64)> = BTreeMap::new();
    for (key, ts, x0) in events {
        let ws = ts.div_euclid(1000) * 1000;
        let e = acc
            .entry((key.to_string(), ws))
            .or_insert((0, 0.0, f64::NEG_INFINITY));
        e.0 += 1;
        e.1 += x0;
        e.2 = e.2.max(x0);
    }
    acc.into_iter()
        .map(|(k, (c, s, m))| {
            let mean = s / c as f64;
            (
                k,
                WindowAgg {
                    count: c,
                    mean_x0: mean,
                    max_x0: m,
                    score: window_score(w, c as f64, mean, m),
                },
            )
        })
        .collect()
}

/// Job 3: prequential plain SGD logistic regression from zero.
#[derive(Debug, Clone)]
pub struct OnlineSgd {
    /// Weights.
    pub w: [f64; 9],
    /// Bias.
    pub b: f64,
    /// Learning rate (weights).
    pub lr: f64,
    /// Learning rate (bias).
    pub intercept_lr: f64,
}

impl OnlineSgd {
    /// A model at zero.
    pub fn new(lr: f64, intercept_lr: f64) -> Self {
        OnlineSgd {
            w: [0.0; 9],
            b: 0.0,
            lr,
            intercept_lr,
        }
    }

    /// Predicts, then learns; returns the pre-update probability.
    pub fn step(&mut self, f: &[f64; 9], label: f64) -> f64 {
        let p = score(&self.w, self.b, f);
        let g = p - label;
        for j in 0..9 {
            self.w[j] -= self.lr * g * f[j];
        }
        self.b -= self.intercept_lr * g;
        p
    }
}
