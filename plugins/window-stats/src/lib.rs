//! Job 2's window aggregates as a stateful operator: per key and window it folds
//! `[count, sum, max]` of one input into host keyed state (so a late event that re-fires a
//! window adds to what was already counted), emits `[count, mean, max, score]` with the
//! window model's score, and releases the state when the window closes. It reads and writes
//! the state of all the panes of a call in one batch each way.
//!
//! Config: `{"field": 0, "window_model": {"agg_mean": [3], "agg_std": [3], "coef": [3],
//! "intercept": ..}}`.

use serde::Deserialize;
use weir_sdk::{Error, Operator, Output, Panes, Result, state};

/// `model.json`'s `window_model`; its descriptive keys (`fitted_on`, `features`, …) are
/// ignored, so the object can be passed as it is.
#[derive(Deserialize)]
struct WindowModel {
    agg_mean: [f64; 3],
    agg_std: [f64; 3],
    coef: [f64; 3],
    intercept: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    field: usize,
    window_model: WindowModel,
}

struct WindowStats {
    field: usize,
    model: WindowModel,
}

#[weir_sdk::operator]
impl Operator for WindowStats {
    type Config = Config;

    fn open(c: Config) -> Result<Self> {
        if c.window_model
            .agg_std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(Error::config("every `agg_std` must be finite and > 0"));
        }
        Ok(WindowStats {
            field: c.field,
            model: c.window_model,
        })
    }

    fn on_window(&mut self, panes: &Panes<'_>, out: &mut Output) -> Result<()> {
        // The accumulators of every pane in one host call, and back in one more, with no
        // buffer per pane.
        let mut batch = state::Batch::new();
        for pane in panes.iter() {
            batch.entry_fmt(pane.key(), format_args!("w{}", pane.start()));
        }
        let stored = batch.read();
        let mut writes = state::Writes::with_capacity(panes.len(), 24 * panes.len());
        for (i, pane) in panes.iter().enumerate() {
            let mut acc = match stored.get(i) {
                Some(bytes) => decode(bytes).ok_or_else(|| {
                    Error::internal(format!(
                        "corrupt accumulator for {} w{}",
                        pane.key(),
                        pane.start()
                    ))
                })?,
                None => [0.0, 0.0, f64::NEG_INFINITY],
            };
            for row in pane.rows() {
                let x = *row
                    .get(self.field)
                    .ok_or_else(|| Error::input(format!("rows have no field {}", self.field)))?;
                acc[0] += 1.0;
                acc[1] += x;
                acc[2] = acc[2].max(x);
            }
            if pane.closing() {
                writes.remove();
            } else {
                writes.set_f64s(&acc);
            }
            if pane.row_count() > 0 {
                let (count, mean, max) = (acc[0], acc[1] / acc[0], acc[2]);
                let m = &self.model;
                let mut z = m.intercept;
                for (j, a) in [count, mean, max].into_iter().enumerate() {
                    z += m.coef[j] * (a - m.agg_mean[j]) / m.agg_std[j];
                }
                out.emit(
                    pane.key(),
                    pane.start(),
                    &[count, mean, max, weir_sdk::math::sigmoid(z)],
                )?;
            }
        }
        batch.write(&writes);
        Ok(())
    }
}

/// An accumulator `[count, sum, max]` as `Writes::set_f64s` stored it: 24 bytes.
fn decode(bytes: &[u8]) -> Option<[f64; 3]> {
    let b: &[u8; 24] = bytes.try_into().ok()?;
    let f = |i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i * 8..i * 8 + 8]);
        f64::from_le_bytes(x)
    };
    Some([f(0), f(1), f(2)])
}
