//! Job 1's feature extractor: standardises each input, `(x_j - mean_j) / std_j`, and adds
//! `log1p(|x_0|)`. Config: `{"mean": [..], "std": [..]}`.

use serde::Deserialize;
use weir_sdk::{Error, Event, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mean: Vec<f64>,
    std: Vec<f64>,
}

#[weir_sdk::extractor]
fn standardize(config: &Config, event: &Event<'_>, out: &mut Vec<f64>) -> Result<()> {
    let x = event.inputs();
    if x.len() != config.mean.len() {
        return Err(Error::input(format!("expected {} inputs, got {}", config.mean.len(), x.len())));
    }
    if config.mean.len() != config.std.len() || config.mean.is_empty() {
        return Err(Error::config("`mean` and `std` must have the same, non-zero length"));
    }
    if let Some(s) = config.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::config(format!("every `std` must be finite and > 0, found {s}")));
    }
    for ((x, m), s) in x.iter().zip(&config.mean).zip(&config.std) {
        out.push((x - m) / s);
    }
    out.push(x[0].abs().ln_1p());
    Ok(())
}
