//! k-means as an anomaly score: predicts the distance from a row to its nearest centroid
//! (larger is more unusual). Learns online by sequential k-means (`train`: the first `k`
//! rows seed the centroids, then the nearest centroid moves `lr` of the way to each row),
//! and snapshots its centroids as JSON `{"centroids": [[..], ..]}`, the format weir's host
//! trainer (`[training] algorithm = "kmeans"`) writes, so a model fitted in the host with
//! linfa serves here through `restore`.
//!
//! Config: `{"dims": 9, "k": 8, "lr": 0.05}`, or `{"centroids": [[..], ..]}` to start from
//! trained centroids. Until it has a centroid it scores the distance to the origin.

use serde::{Deserialize, Serialize};
use weir_sdk::{Error, Model, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    centroids: Option<Vec<Vec<f64>>>,
    dims: Option<usize>,
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_lr")]
    lr: f64,
}

fn default_k() -> usize {
    8
}

fn default_lr() -> f64 {
    0.05
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    centroids: Vec<Vec<f64>>,
}

struct KMeans {
    dims: usize,
    k: usize,
    lr: f64,
    centroids: Vec<Vec<f64>>,
}

fn check_centroids(c: &[Vec<f64>], dims: usize) -> std::result::Result<(), String> {
    for (i, row) in c.iter().enumerate() {
        if row.len() != dims {
            return Err(format!(
                "centroid {i} has {} values, the model {dims}",
                row.len()
            ));
        }
        if row.iter().any(|v| !v.is_finite()) {
            return Err(format!("centroid {i} is not finite"));
        }
    }
    Ok(())
}

impl KMeans {
    fn nearest(&self, row: &[f64]) -> Option<(usize, f64)> {
        self.centroids
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let d2: f64 = c.iter().zip(row).map(|(a, b)| (a - b) * (a - b)).sum();
                (i, d2)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, d2)| (i, d2.sqrt()))
    }

    fn check(&self, row: &[f64]) -> Result<()> {
        if row.len() != self.dims {
            return Err(Error::input(format!(
                "expected {} features, got {}",
                self.dims,
                row.len()
            )));
        }
        Ok(())
    }
}

#[weir_sdk::model]
impl Model for KMeans {
    type Config = Config;

    fn new(c: Config) -> Result<Self> {
        if !(c.lr.is_finite() && c.lr > 0.0 && c.lr <= 1.0) {
            return Err(Error::config("`lr` must be in (0, 1]"));
        }
        let (dims, centroids) = match (c.centroids, c.dims) {
            (Some(cs), d) => {
                let dims = d.or_else(|| cs.first().map(Vec::len)).unwrap_or(0);
                check_centroids(&cs, dims).map_err(Error::config)?;
                (dims, cs)
            }
            (None, Some(d)) => (d, Vec::new()),
            (None, None) => {
                return Err(Error::config(
                    "give `centroids` (a trained model) or `dims` (learn from the stream)",
                ));
            }
        };
        if dims == 0 || c.k == 0 {
            return Err(Error::config("`dims` and `k` must be at least 1"));
        }
        weir_sdk::info!("kmeans: {dims} features, up to {} centroids", c.k);
        Ok(KMeans {
            dims,
            k: c.k.max(centroids.len()),
            lr: c.lr,
            centroids,
        })
    }

    fn predict(&self, row: &[f64]) -> Result<f64> {
        self.check(row)?;
        let origin = || row.iter().map(|v| v * v).sum::<f64>().sqrt();
        Ok(self.nearest(row).map_or_else(origin, |(_, d)| d))
    }

    fn learn(&mut self, row: &[f64], _label: f64) -> Result<()> {
        self.check(row)?;
        if self.centroids.len() < self.k {
            self.centroids.push(row.to_vec());
            return Ok(());
        }
        if let Some((i, _)) = self.nearest(row) {
            for (c, x) in self.centroids[i].iter_mut().zip(row) {
                *c += self.lr * (x - *c);
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&Snapshot {
            centroids: self.centroids.clone(),
        })?)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let s: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| Error::input(format!("bad snapshot: {e}")))?;
        check_centroids(&s.centroids, self.dims).map_err(Error::input)?;
        self.k = self.k.max(s.centroids.len());
        self.centroids = s.centroids;
        Ok(())
    }
}
