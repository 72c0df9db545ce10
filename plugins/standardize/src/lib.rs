//! Job 1's feature extractor: standardises each input, `(x_j - mean_j) / std_j`, and adds
//! `log1p(|x_0|)`. Config: `{"mean": [..], "std": [..]}`.

use serde::Deserialize;
use weir_sdk::{Error, Event};

/// Validated at `init` (serde `try_from`), so a bad config is refused before any event.
#[derive(Deserialize)]
#[serde(try_from = "RawConfig")]
struct Config {
    mean: Vec<f64>,
    /// `1 / std`, computed once: a multiplication per input instead of a division.
    inv_std: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;
    fn try_from(c: RawConfig) -> Result<Self, String> {
        if c.mean.len() != c.std.len() || c.mean.is_empty() {
            return Err("`mean` and `std` must have the same, non-zero length".into());
        }
        if let Some(s) = c.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("every `std` must be finite and > 0, found {s}"));
        }
        Ok(Config {
            mean: c.mean,
            inv_std: c.std.iter().map(|s| 1.0 / s).collect(),
        })
    }
}

#[weir_sdk::extractor]
fn standardize(config: &Config, event: &Event<'_>, out: &mut Vec<f64>) -> weir_sdk::Result<()> {
    let x = event.inputs();
    if x.len() != config.mean.len() {
        return Err(Error::input(format!(
            "expected {} inputs, got {}",
            config.mean.len(),
            x.len()
        )));
    }
    out.extend(
        x.iter()
            .zip(&config.mean)
            .zip(&config.inv_std)
            .map(|((x, m), r)| (x - m) * r),
    );
    // The SDK's log1p inlines and has no branch on the common path; wasi-libc's cannot.
    out.push(weir_sdk::math::log1p(x[0].abs()));
    Ok(())
}
