//! A Rust port of `shared/bench/gen_events.py`.

use crate::Event;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, StandardNormal};

/// Number of distinct keys.
pub const N_KEYS: usize = 10_000;
/// Event time of the first event (2023-11-14T22:13:20Z).
pub const T0_MS: i64 = 1_700_000_000_000;
const ZIPF_S: f64 = 1.1;
const MEAN_GAP_MS: f64 = 0.1;
const LATE_FRAC: f64 = 0.05;
const MAX_JITTER_MS: i64 = 2000;
const MU: [f64; 8] = [1.0, -2.0, 0.5, 5.0, 0.0, 10.0, -1.0, 3.0];
const SD: [f64; 8] = [1.5, 1.0, 2.0, 3.0, 0.5, 4.0, 1.0, 2.0];
const W_PRE: [f64; 8] = [1.2, -0.8, 0.6, 0.0, 1.0, -0.5, 0.9, 0.3];
const C_PRE: f64 = 0.7;
const B_PRE: f64 = -0.1;
const W_POST: [f64; 8] = [-0.9, 0.4, 0.6, 1.1, -0.7, 0.0, -1.0, 0.3];
const C_POST: f64 = -0.5;
const B_POST: f64 = 0.2;

/// An endless (or `n`-long) deterministic stream of workload events. The labels switch to
/// the post-drift model at index `n / 2`.
pub struct Generator {
    rng: StdRng,
    offsets: Vec<f64>,
    cdf: Vec<f64>,
    gap: Exp<f64>,
    t: f64,
    index: u64,
    n: u64,
}

impl Generator {
    /// `n` events from `seed`.
    pub fn new(n: u64, seed: u64) -> Self {
        let mut key_rng = StdRng::seed_from_u64(seed ^ 999_999_999);
        let offsets = (0..N_KEYS)
            .map(|_| key_rng.sample::<f64, _>(StandardNormal))
            .collect();
        let mut cdf: Vec<f64> = (0..N_KEYS)
            .map(|k| 1.0 / ((k + 1) as f64).powf(ZIPF_S))
            .collect();
        let total: f64 = cdf.iter().sum();
        let mut acc = 0.0;
        for p in &mut cdf {
            acc += *p / total;
            *p = acc;
        }
        #[allow(clippy::unwrap_used)] // the mean is a positive constant
        let gap = Exp::new(1.0 / MEAN_GAP_MS).unwrap();
        Generator {
            rng: StdRng::seed_from_u64(seed),
            offsets,
            cdf,
            gap,
            t: 0.0,
            index: 0,
            n,
        }
    }

    /// Index of the next event.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The drift point (N/2).
    pub fn drift_at(&self) -> u64 {
        self.n / 2
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.index >= self.n {
            return None;
        }
        let r = &mut self.rng;
        let u: f64 = r.r#gen();
        let k = self.cdf.partition_point(|&c| c <= u).min(N_KEYS - 1);
        self.t += self.gap.sample(r);
        let base = self.t.floor() as i64;
        let late = r.r#gen::<f64>() < LATE_FRAC;
        let jitter = r.gen_range(1..=MAX_JITTER_MS);
        let ts = T0_MS + base - if late { jitter } else { 0 };
        let mut x = [0.0; 8];
        for j in 0..8 {
            let z: f64 = r.sample(StandardNormal);
            x[j] = MU[j] + SD[j] * z;
        }
        x[0] += self.offsets[k];
        for v in &mut x {
            *v = (*v * 1e4).round() / 1e4;
        }
        let logit = true_logit(&x, self.index >= self.n / 2);
        let p = 1.0 / (1.0 + (-logit).exp());
        let label = u8::from(r.r#gen::<f64>() < p);
        self.index += 1;
        Some(Event {
            key: format!("u{k}"),
            ts,
            x,
            label,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.n - self.index) as usize;
        (left, Some(left))
    }
}

/// The logit of the model the labels are drawn from (before or after the drift). A
/// classifier predicting `logit > 0` is the Bayes-optimal one: no model of `x` can be
/// expected to score better.
pub fn true_logit(x: &[f64; 8], post_drift: bool) -> f64 {
    let (w, c, b) = if post_drift {
        (W_POST, C_POST, B_POST)
    } else {
        (W_PRE, C_PRE, B_PRE)
    };
    let mut logit = b + c * (x[0].abs().ln_1p() - 1.0);
    for j in 0..8 {
        logit += w[j] * (x[j] - MU[j]) / SD[j];
    }
    logit
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn matches_the_workload_spec_statistically() {
        let n = 200_000u64;
        let events: Vec<Event> = Generator::new(n, 42).collect();
        assert_eq!(events.len(), n as usize);
        let mut keys: HashMap<&str, usize> = HashMap::new();
        for e in &events {
            *keys.entry(e.key.as_str()).or_default() += 1;
        }
        let hot = keys["u0"] as f64 / n as f64;
        assert!((0.12..0.18).contains(&hot), "u0 share {hot}");
        // ~10,000 events per event-time second.
        let span = events.iter().map(|e| e.ts).max().unwrap() - T0_MS;
        assert!((18_000..22_000).contains(&span), "span {span} ms");
        // Out of order by at most 2 s, about 5% late.
        let mut max_ts = i64::MIN / 2;
        let mut ooo = 0;
        for e in &events {
            // Too late means ws + 999 + 2000 <= W, with W = max ts so far - 1.
            let ws = e.ts.div_euclid(1000) * 1000;
            assert!(
                ws + 999 + 2000 > max_ts - 1,
                "event later than the allowed lateness"
            );
            if e.ts < max_ts {
                ooo += 1;
            }
            max_ts = max_ts.max(e.ts);
        }
        let frac = ooo as f64 / n as f64;
        assert!((0.03..0.06).contains(&frac), "out-of-order fraction {frac}");
        // Labels: the pre-drift model is learnable; the drift changes the relationship.
        let rate = events.iter().map(|e| e.label as f64).sum::<f64>() / n as f64;
        assert!((0.3..0.7).contains(&rate), "label rate {rate}");
    }

    #[test]
    fn deterministic() {
        let a: Vec<Event> = Generator::new(1000, 7).collect();
        let b: Vec<Event> = Generator::new(1000, 7).collect();
        assert_eq!(a, b);
    }
}
