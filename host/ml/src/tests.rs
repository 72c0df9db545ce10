//! Each estimator, transformer and clusterer against known results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use ndarray::array;
use rand::Rng;

/// `n` rows of `dims` uniform features in [-2, 2), with labels drawn from a logistic model
/// with weights `w` and intercept `b`.
fn logistic_data(n: usize, w: &[f64], b: f64, seed: u64) -> (Array2<f64>, Array1<f64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut x = Array2::zeros((n, w.len()));
    let mut y = Array1::zeros(n);
    for i in 0..n {
        let mut z = b;
        for j in 0..w.len() {
            let v: f64 = rng.gen_range(-2.0..2.0);
            x[[i, j]] = v;
            z += w[j] * v;
        }
        let p = 1.0 / (1.0 + (-z).exp());
        y[i] = if rng.gen_bool(p) { 1.0 } else { 0.0 };
    }
    (x, y)
}

#[test]
fn logistic_regression_recovers_known_weights() {
    let w = [2.0, -1.0, 0.5];
    let (x, y) = logistic_data(20_000, &w, -0.5, 1);
    let m = fit_logistic(&x, &y, 1e-6, 200).unwrap();
    for (got, want) in m.coef.iter().zip(w) {
        assert!((got - want).abs() < 0.1, "{:?}", m.coef);
    }
    assert!((m.intercept + 0.5).abs() < 0.1, "{}", m.intercept);
    // P(label = 1), whichever class is the more frequent.
    let (x2, y2) = logistic_data(20_000, &w, 2.0, 2);
    let flipped = y2.mapv(|v| 1.0 - v);
    let m2 = fit_logistic(&x2, &flipped, 1e-6, 200).unwrap();
    assert!(m2.coef[0] < -1.5 && m2.intercept < -1.5, "{m2:?}");
    let p = m.predict_all(x.view());
    assert!(accuracy(&p, y.as_slice().unwrap()) > 0.75);
    // The snapshot is the logistic plugin's format.
    let snap: serde_json::Value = serde_json::from_slice(&m.snapshot()).unwrap();
    assert_eq!(snap["coef"].as_array().unwrap().len(), 3);
    assert!(snap["intercept"].is_f64());
}

#[test]
fn logistic_regression_refuses_one_class() {
    let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
    let y = array![1.0, 1.0, 1.0];
    assert!(matches!(
        fit_logistic(&x, &y, 1.0, 50),
        Err(MlError::NotEnoughData(_))
    ));
    let bad = array![[1.0, f64::NAN], [3.0, 4.0]];
    assert!(matches!(
        fit_logistic(&bad, &array![0.0, 1.0], 1.0, 50),
        Err(MlError::InvalidData(_))
    ));
}

#[test]
fn linear_regression_is_exact_on_a_plane() {
    let x = array![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 3.0]];
    let y = x
        .rows()
        .into_iter()
        .map(|r| 3.0 + 2.0 * r[0] - r[1])
        .collect::<Array1<f64>>();
    let m = fit_linear(&x, &y).unwrap();
    assert!((m.intercept - 3.0).abs() < 1e-9);
    assert!(
        (m.coef[0] - 2.0).abs() < 1e-9 && (m.coef[1] + 1.0).abs() < 1e-9,
        "{m:?}"
    );
    assert!((m.predict(&[4.0, 1.0]) - 10.0).abs() < 1e-9);
}

#[test]
fn scalers() {
    let x = array![[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]];
    let s = Scaler::standard(&x).unwrap();
    let t = s.transform(&x);
    for col in t.columns() {
        let mean = col.mean().unwrap();
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
        assert!(mean.abs() < 1e-12, "{t}");
        assert!((var - 1.0).abs() < 0.35, "{t}"); // population or sample variance
    }
    let m = Scaler::min_max(&x).unwrap();
    let t = m.transform(&x);
    assert!(
        (t[[0, 0]]).abs() < 1e-12 && (t[[3, 1]] - 1.0).abs() < 1e-12,
        "{t}"
    );
    let mut row = [2.5, 25.0];
    m.apply(&mut row);
    assert!((row[0] - 0.5).abs() < 1e-12 && (row[1] - 0.5).abs() < 1e-12);
}

#[test]
fn pca_explained_variance_on_a_known_matrix() {
    // Points on the line y = 2x plus a small orthogonal wobble: the first component
    // carries almost all the variance, in the direction (1, 2)/√5.
    let mut rows = Vec::new();
    for i in 0..100 {
        let t = i as f64 - 50.0;
        let e = if i % 2 == 0 { 0.1 } else { -0.1 };
        rows.push([t - 2.0 * e / 5f64.sqrt(), 2.0 * t + e / 5f64.sqrt()]);
    }
    let x = Array2::from_shape_vec((100, 2), rows.concat()).unwrap();
    let pca = Pca::fit(&x, 2).unwrap();
    let ratio = pca.explained_variance_ratio();
    assert!(ratio[0] > 0.9999, "{ratio:?}");
    assert!((ratio.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{ratio:?}");
    let z = pca.transform(&x);
    // The projection onto the first component is ±√5·(t - mean t), mean t = -0.5; the
    // second is the ±0.1 wobble (up to the slight tilt the wobble gives the first axis).
    assert!(
        (z[[0, 0]].abs() - 49.5 * 5f64.sqrt()).abs() < 1e-2,
        "{}",
        z[[0, 0]]
    );
    assert!(
        z.column(1).iter().all(|v| (v.abs() - 0.1).abs() < 1e-2),
        "{z}"
    );
    assert!(Pca::fit(&x, 3).is_err());
}

#[test]
fn kmeans_finds_well_separated_blobs() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let centers = [[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]];
    let mut rows = Vec::new();
    for c in &centers {
        for _ in 0..200 {
            rows.push([
                c[0] + rng.gen_range(-1.0..1.0),
                c[1] + rng.gen_range(-1.0..1.0),
            ]);
        }
    }
    let x = Array2::from_shape_vec((600, 2), rows.concat()).unwrap();
    let km = KMeans::fit(&x, 3, 7).unwrap();
    for c in &centers {
        let (_, d) = km.nearest(c);
        assert!(d < 0.3, "no centroid near {c:?}: {}", km.centroids);
    }
    assert!(km.anomaly_score(&[0.2, -0.1]) < 1.5);
    assert!(km.anomaly_score(&[5.0, -20.0]) > 15.0);
    let labels = dbscan(&x, 1.5, 5).unwrap();
    let clusters: std::collections::BTreeSet<usize> = labels.iter().flatten().copied().collect();
    assert_eq!(clusters.len(), 3, "DBSCAN finds the three blobs");
    let mut with_outlier = x.clone();
    with_outlier
        .push_row(ndarray::ArrayView1::from(&[50.0, 50.0]))
        .unwrap();
    let labels = dbscan(&with_outlier, 1.5, 5).unwrap();
    assert_eq!(labels.last(), Some(&None), "an isolated point is noise");
}

#[test]
fn k_fold_sizes() {
    let folds = k_fold(10, 3);
    let sizes: Vec<usize> = folds.iter().map(|(_, t)| t.len()).collect();
    assert_eq!(sizes, [3, 3, 4]);
    let mut all: Vec<usize> = folds.iter().flat_map(|(_, t)| t.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    for (train, test) in &folds {
        assert_eq!(train.len() + test.len(), 10);
        assert!(train.iter().all(|i| !test.contains(i)));
    }
    assert_eq!(k_fold(5, 10).len(), 5, "no empty folds");
}

#[test]
fn grid_search_picks_the_known_best_penalty() {
    // Strong penalties shrink the weights towards 0: on clean data the weakest wins.
    let (x, y) = logistic_data(4_000, &[3.0, -3.0], 0.0, 5);
    let grid = [1000.0, 100.0, 0.01];
    let r = grid_search(
        &x,
        &y,
        4,
        &grid,
        |alpha, x, y| fit_logistic(x, y, *alpha, 100),
        |p, y| -log_loss(p, y),
    )
    .unwrap();
    assert_eq!(r.best, 0.01, "{:?}", r.scores);
    assert_eq!(r.scores.len(), 3);
    assert!(r.scores[0].1 < r.scores[2].1);
}

#[test]
fn metrics_on_known_values() {
    assert_eq!(accuracy(&[0.9, 0.2, 0.6, 0.4], &[1.0, 0.0, 0.0, 1.0]), 0.5);
    assert!((log_loss(&[0.5, 0.5], &[1.0, 0.0]) - 2f64.ln()).abs() < 1e-12);
    assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
    assert_eq!(auc(&[0.5, 0.5], &[0.0, 1.0]), 0.5);
    assert!(auc(&[0.1], &[1.0]).is_nan());
}

#[test]
fn training_window_keeps_the_last_rows() {
    let mut w = TrainingWindow::new(3, 2);
    for i in 0..5 {
        w.push(&[i as f64, 0.0], (i % 2) as f64).unwrap();
    }
    let (x, y) = w.arrays();
    assert_eq!(x.column(0).to_vec(), [2.0, 3.0, 4.0]);
    assert_eq!(y.to_vec(), [0.0, 1.0, 0.0]);
    assert!(w.push(&[1.0], 0.0).is_err());
    assert!(w.push(&[1.0, f64::INFINITY], 0.0).is_err());
}

#[test]
fn scaler_and_pca_fold_into_the_exported_weights() {
    let (x, y) = logistic_data(2_000, &[1.0, -2.0, 0.5], 0.3, 7);
    let x = x.mapv(|v| v * 3.0 + 10.0);
    // Scaler, then PCA (all 3 components), then logistic regression on the transformed rows.
    let scaler = Scaler::standard(&x).unwrap();
    let xs = scaler.transform(&x);
    let pca = Pca::fit(&xs, 3).unwrap();
    let xp = pca.transform(&xs);
    let model = fit_logistic(&xp, &y, 1.0, 200).unwrap();
    let folded = model.before_pca(&pca).before_scaler(&scaler);
    for i in 0..50 {
        let raw = x.row(i).to_vec();
        let through = model.predict(xp.row(i).as_slice().unwrap());
        let direct = folded.predict(&raw);
        assert!(
            (through - direct).abs() < 1e-9,
            "row {i}: {through} vs {direct}"
        );
    }
    // A projection onto fewer components folds too.
    let pca2 = Pca::fit(&xs, 2).unwrap();
    let xp2 = pca2.transform(&xs);
    let m2 = fit_logistic(&xp2, &y, 1.0, 200).unwrap();
    let f2 = m2.before_pca(&pca2).before_scaler(&scaler);
    assert_eq!(f2.coef.len(), 3);
    let a = m2.predict(xp2.row(3).as_slice().unwrap());
    assert!((a - f2.predict(&x.row(3).to_vec())).abs() < 1e-9);
}

#[test]
fn a_warm_start_reaches_the_same_optimum() {
    let (x, y) = logistic_data(5_000, &[1.5, -0.5, 0.25], 0.2, 11);
    let cold = fit_logistic(&x, &y, 1.0, 200).unwrap();
    let near = LinearModel {
        coef: cold.coef.iter().map(|c| c * 0.8).collect(),
        intercept: cold.intercept * 0.8,
        link: LinkKind::Logistic,
    };
    let warm = fit_logistic_from(&x, &y, 1.0, 200, Some(&near)).unwrap();
    for (a, b) in cold.coef.iter().zip(&warm.coef) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    assert!((cold.intercept - warm.intercept).abs() < 1e-3);
    // Starting from the negative class's side (first label 0) gives the same model too.
    let mut y0 = y.clone();
    let first_zero = y.iter().position(|v| *v == 0.0).unwrap();
    y0.swap(0, first_zero);
    let mut x0 = x.clone();
    for j in 0..3 {
        let (a, b) = (x[[0, j]], x[[first_zero, j]]);
        x0[[0, j]] = b;
        x0[[first_zero, j]] = a;
    }
    let warm0 = fit_logistic_from(&x0, &y0, 1.0, 200, Some(&near)).unwrap();
    assert!((warm0.coef[0] - cold.coef[0]).abs() < 1e-3);
}
