//! Job 1 fused into one model: standardize the raw inputs, add `log1p(|x_j|)` features, and
//! score with a logistic regression, in one component. It is `standardize` → `logistic` for
//! a pipeline with no `[extractor]` (the model then reads the raw inputs), so the features
//! never leave the guest. The standardisation is folded into the weights once, at `init`
//! (`a_j = coef_j / std_j`, `c = intercept - Σ a_j mean_j`): a row costs one multiply-add per
//! input, one `log1p` per log feature and one `exp`.
//!
//! Config: `{"mean": [..], "std": [..], "log1p_abs": [0], "coef": [..], "intercept": ..}`.
//! `coef` has one weight per input, then one per `log1p_abs` index, the order `standardize`
//! emits its features in. Predict only: it does not learn, and a host-side trainer (which
//! fits on an extractor's features) cannot retrain it.

use serde::Deserialize;
use weir_sdk::math::{log1p, log1p_all, sigmoid, sigmoid_all};
use weir_sdk::{Error, Model, Result, Rows};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mean: Vec<f64>,
    std: Vec<f64>,
    #[serde(default)]
    log1p_abs: Vec<usize>,
    coef: Vec<f64>,
    #[serde(default)]
    intercept: f64,
}

struct ScaledLogistic {
    /// `coef_j / std_j`, one per input.
    a: Vec<f64>,
    /// `intercept - Σ a_j mean_j`.
    c: f64,
    /// `(input index, weight)` of each `log1p(|x|)` feature.
    logs: Vec<(usize, f64)>,
}

#[weir_sdk::model]
impl Model for ScaledLogistic {
    type Config = Config;

    fn new(c: Config) -> Result<Self> {
        let dims = c.mean.len();
        if dims == 0 || c.std.len() != dims {
            return Err(Error::config(
                "`mean` and `std` must have the same, non-zero length",
            ));
        }
        if let Some(s) = c.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::config(format!(
                "every `std` must be finite and > 0, found {s}"
            )));
        }
        if let Some(j) = c.log1p_abs.iter().find(|j| **j >= dims) {
            return Err(Error::config(format!(
                "`log1p_abs` names input {j}, but there are {dims} inputs"
            )));
        }
        if c.coef.len() != dims + c.log1p_abs.len() {
            return Err(Error::config(format!(
                "`coef` needs {} weights ({dims} inputs + {} log features), got {}",
                dims + c.log1p_abs.len(),
                c.log1p_abs.len(),
                c.coef.len()
            )));
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !(finite(&c.mean) && finite(&c.coef) && c.intercept.is_finite()) {
            return Err(Error::config(
                "`mean`, `coef` and `intercept` must be finite",
            ));
        }
        let a: Vec<f64> = (0..dims).map(|j| c.coef[j] / c.std[j]).collect();
        let folded = a.iter().zip(&c.mean).map(|(a, m)| a * m).sum::<f64>();
        Ok(ScaledLogistic {
            c: c.intercept - folded,
            logs: c
                .log1p_abs
                .iter()
                .zip(&c.coef[dims..])
                .map(|(j, w)| (*j, *w))
                .collect(),
            a,
        })
    }

    fn predict(&self, x: &[f64]) -> Result<f64> {
        self.check(x.len())?;
        let mut z = self.c;
        for (j, w) in &self.logs {
            z += w * log1p(x[*j].abs());
        }
        for (a, x) in self.a.iter().zip(x) {
            z += a * x;
        }
        Ok(sigmoid(z))
    }

    /// One loop over the batch. Widths up to 16 inputs get a loop body with the width
    /// fixed at compile time, fully unrolled, with no call per row.
    fn predict_batch(&self, rows: &Rows<'_>, out: &mut Vec<f64>) -> Result<()> {
        self.check(rows.dims())?;
        macro_rules! fixed {
            ($($n:literal)*) => {
                match self.a.len() {
                    $($n => self.score_all::<$n>(rows.values(), out),)*
                    _ => {
                        for row in rows.iter() {
                            out.push(self.predict(row)?);
                        }
                    }
                }
            };
        }
        fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
        Ok(())
    }
}

impl ScaledLogistic {
    fn check(&self, dims: usize) -> Result<()> {
        if dims != self.a.len() {
            return Err(Error::input(format!(
                "expected {} inputs, got {dims}",
                self.a.len()
            )));
        }
        Ok(())
    }

    /// Scores every row of `values` (rows of `N` inputs; `N` is the model's width), in
    /// blocks of rows, a pass per step: the dot products, then each `log1p` feature, then
    /// the sigmoid. Each pass is a short loop with independent iterations, which the
    /// compiler vectorises and the processor overlaps.
    fn score_all<const N: usize>(&self, values: &[f64], out: &mut Vec<f64>) {
        const BLOCK: usize = 256;
        let Ok(a) = <&[f64; N]>::try_from(self.a.as_slice()) else {
            return;
        };
        let mut z = [0.0; BLOCK];
        let mut l = [0.0; BLOCK];
        for block in values.chunks(BLOCK * N) {
            let rows = block.chunks_exact(N);
            let z = &mut z[..rows.len()];
            let l = &mut l[..rows.len()];
            for (z, x) in z.iter_mut().zip(rows.clone()) {
                let mut s = self.c;
                for i in 0..N {
                    s += a[i] * x[i];
                }
                *z = s;
            }
            for &(j, w) in &self.logs {
                for (l, x) in l.iter_mut().zip(rows.clone()) {
                    *l = x.get(j).map_or(f64::NAN, |v| v.abs());
                }
                log1p_all(l);
                for (z, l) in z.iter_mut().zip(l.iter()) {
                    *z += w * l;
                }
            }
            sigmoid_all(z);
            out.extend_from_slice(z);
        }
    }
}
