//! The fixed models of `model.json` (copied from `shared/bench/model.json`; the numbers in
//! it are the model).

use serde::Deserialize;

const MODEL_JSON: &str = include_str!("../model.json");

/// The event model: standardise x, add log1p(|x0|), logistic regression.
#[derive(Debug, Clone, Deserialize)]
pub struct EventModel {
    /// Per-feature means.
    pub x_mean: Vec<f64>,
    /// Per-feature standard deviations.
    pub x_std: Vec<f64>,
    /// 9 coefficients.
    pub coef: Vec<f64>,
    /// Bias.
    pub intercept: f64,
}

/// The window model over `[count, mean_x0, max_x0]`.
#[derive(Debug, Clone, Deserialize)]
pub struct WindowModel {
    /// Aggregate means.
    pub agg_mean: Vec<f64>,
    /// Aggregate standard deviations.
    pub agg_std: Vec<f64>,
    /// 3 coefficients.
    pub coef: Vec<f64>,
    /// Bias.
    pub intercept: f64,
}

/// The online model's settings.
#[derive(Debug, Clone, Deserialize)]
pub struct OnlineModel {
    /// Learning rate of the weights.
    pub lr: f64,
    /// Learning rate of the bias.
    pub intercept_lr: f64,
}

/// All three.
#[derive(Debug, Clone, Deserialize)]
pub struct Models {
    /// Job 1's model.
    pub event_model: EventModel,
    /// Job 2's model.
    pub window_model: WindowModel,
    /// Job 3's settings.
    pub online_model: OnlineModel,
}

impl Models {
    /// The embedded `model.json`.
    pub fn load() -> Self {
        // The file is part of this crate and checked by a unit test, so a parse failure is
        // a build defect, not an input error.
        #[allow(clippy::expect_used)]
        serde_json::from_str(MODEL_JSON).expect("embedded model.json is valid")
    }

    /// Config JSON for the `standardize` plugin.
    pub fn standardize_config(&self) -> String {
        serde_json::json!({ "mean": self.event_model.x_mean, "std": self.event_model.x_std })
            .to_string()
    }

    /// Config JSON for the `logistic` plugin serving the fixed event model.
    pub fn logistic_config(&self) -> String {
        serde_json::json!({ "coef": self.event_model.coef, "intercept": self.event_model.intercept })
            .to_string()
    }

    /// Config JSON for the `scaled-logistic` plugin: job 1 (standardize → logistic) fused
    /// into one model over the raw inputs, `log1p(|x0|)` as the ninth feature.
    pub fn scaled_logistic_config(&self) -> String {
        let m = &self.event_model;
        serde_json::json!({
            "mean": m.x_mean, "std": m.x_std, "log1p_abs": [0],
            "coef": m.coef, "intercept": m.intercept,
        })
        .to_string()
    }

    /// Config JSON for the `logistic` plugin learning online from zero (job 3).
    pub fn online_config(&self) -> String {
        serde_json::json!({
            "dims": 9,
            "lr": self.online_model.lr,
            "intercept_lr": self.online_model.intercept_lr,
        })
        .to_string()
    }

    /// Config JSON for the `window-stats` plugin (x0 at index 0 of each row).
    pub fn window_stats_config(&self) -> String {
        let w = &self.window_model;
        serde_json::json!({
            "field": 0,
            "window_model": {
                "agg_mean": w.agg_mean, "agg_std": w.agg_std, "coef": w.coef, "intercept": w.intercept,
            },
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_model_parses() {
        let m = super::Models::load();
        assert_eq!(m.event_model.coef.len(), 9);
        assert_eq!(m.event_model.x_mean.len(), 8);
        assert_eq!(m.window_model.coef.len(), 3);
        assert_eq!(m.online_model.lr, 0.01);
    }
}
