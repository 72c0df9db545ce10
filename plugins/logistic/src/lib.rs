//! Logistic regression: predicts `sigmoid(intercept + coef · f)`, learns online with plain
//! SGD (`g = p - y; coef -= lr * g * f; intercept -= intercept_lr * g`), and snapshots its
//! parameters as JSON `{"coef": [..], "intercept": ..}` (the format host-side trainers
//! write too).
//!
//! Config: `{"coef": [..], "intercept": 0.0, "lr": 0.01, "intercept_lr": 0.01}`, or
//! `{"dims": 9, "lr": 0.01}` to start from zero.

use serde::{Deserialize, Serialize};
use weir_sdk::math::{sigmoid, sigmoid_all};
use weir_sdk::{Error, Model, Result, Rows};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    coef: Option<Vec<f64>>,
    dims: Option<usize>,
    #[serde(default)]
    intercept: f64,
    #[serde(default = "default_lr")]
    lr: f64,
    intercept_lr: Option<f64>,
}

fn default_lr() -> f64 {
    0.01
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    coef: Vec<f64>,
    intercept: f64,
}

struct Logistic {
    coef: Vec<f64>,
    intercept: f64,
    lr: f64,
    intercept_lr: f64,
}

impl Logistic {
    /// `intercept + coef · row`.
    fn z(&self, row: &[f64]) -> f64 {
        let mut z = self.intercept;
        for (w, f) in self.coef.iter().zip(row) {
            z += w * f;
        }
        z
    }

    fn check(&self, row: &[f64]) -> Result<()> {
        if row.len() != self.coef.len() {
            return Err(Error::input(format!(
                "expected {} features, got {}",
                self.coef.len(),
                row.len()
            )));
        }
        Ok(())
    }
}

#[weir_sdk::model]
impl Model for Logistic {
    type Config = Config;

    fn new(c: Config) -> Result<Self> {
        let coef = match (c.coef, c.dims) {
            (Some(coef), None) => coef,
            (None, Some(d)) => vec![0.0; d],
            (Some(coef), Some(d)) if coef.len() == d => coef,
            (Some(coef), Some(d)) => {
                return Err(Error::config(format!(
                    "`coef` has {} values but `dims` is {d}",
                    coef.len()
                )));
            }
            (None, None) => {
                return Err(Error::config(
                    "give `coef` (a trained model) or `dims` (start from zero)",
                ));
            }
        };
        if coef.is_empty() {
            return Err(Error::config("the model needs at least one coefficient"));
        }
        let intercept_lr = c.intercept_lr.unwrap_or(c.lr);
        if !(c.lr.is_finite() && c.lr >= 0.0 && intercept_lr.is_finite() && intercept_lr >= 0.0) {
            return Err(Error::config(
                "`lr` and `intercept_lr` must be finite and >= 0",
            ));
        }
        if !(c.intercept.is_finite() && coef.iter().all(|w| w.is_finite())) {
            return Err(Error::config("`coef` and `intercept` must be finite"));
        }
        weir_sdk::info!(
            "logistic: {} weights, learning rate {} (used when trained)",
            coef.len(),
            c.lr
        );
        Ok(Logistic {
            coef,
            intercept: c.intercept,
            lr: c.lr,
            intercept_lr,
        })
    }

    fn predict(&self, row: &[f64]) -> Result<f64> {
        self.check(row)?;
        Ok(sigmoid(self.z(row)))
    }

    /// The linear parts first, row by row, then one vectorised sigmoid over the batch.
    fn predict_batch(&self, rows: &Rows<'_>, out: &mut Vec<f64>) -> Result<()> {
        if rows.dims() != self.coef.len() {
            return Err(Error::input(format!(
                "expected {} features, got {}",
                self.coef.len(),
                rows.dims()
            )));
        }
        let start = out.len();
        out.extend(rows.iter().map(|row| self.z(row)));
        sigmoid_all(&mut out[start..]);
        Ok(())
    }

    fn learn(&mut self, row: &[f64], label: f64) -> Result<()> {
        if label != 0.0 && label != 1.0 {
            return Err(Error::input(format!("labels are 0 or 1, got {label}")));
        }
        let g = self.predict(row)? - label;
        for (w, f) in self.coef.iter_mut().zip(row) {
            *w -= self.lr * g * f;
        }
        self.intercept -= self.intercept_lr * g;
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&Snapshot {
            coef: self.coef.clone(),
            intercept: self.intercept,
        })?)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let s: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| Error::input(format!("bad snapshot: {e}")))?;
        if s.coef.len() != self.coef.len() {
            return Err(Error::input(format!(
                "snapshot has {} coefficients, the model {}",
                s.coef.len(),
                self.coef.len()
            )));
        }
        self.coef = s.coef;
        self.intercept = s.intercept;
        Ok(())
    }
}
