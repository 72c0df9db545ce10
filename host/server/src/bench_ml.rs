//! `weir bench ml`: the host ML toolbox (weir-ml, on linfa) on the shared workload's
//! features.
//!
//! - Training time of each algorithm on a window of 50,000 rows × 9 features.
//! - A batch fit of linfa's logistic regression on the first 100,000 events, and its
//!   accuracy on the next 100,000 (both before the drift of a 1M-event stream).
//!
//! The streaming variants of job 3 (online SGD in the Wasm plugin, and periodic retraining
//! with champion/challenger swaps) are not part of this bench yet.

use anyhow::{Context, Result};
use ndarray::{Array1, Array2};
use std::time::Instant;
use weir_ml::{KMeans, Pca, Scaler};
use weir_workload::{Event, Generator, Models};

/// The workload's 9 features and the labels of `events`.
fn features(events: &[Event]) -> (Array2<f64>, Array1<f64>) {
    let m = Models::load();
    let mut x = Array2::zeros((events.len(), 9));
    let mut y = Array1::zeros(events.len());
    let mut f = [0.0; 9];
    for (i, e) in events.iter().enumerate() {
        weir_workload::native::features(&m.event_model, &e.x, &mut f);
        x.row_mut(i).iter_mut().zip(f).for_each(|(d, s)| *d = s);
        y[i] = f64::from(e.label);
    }
    (x, y)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs the bench on `events` (the first 200,000 are used; at least that many are needed).
pub fn run(events: Option<Vec<Event>>) -> Result<()> {
    // The first 200k events of a 1M stream: labels are all before the drift.
    let events = match events {
        Some(e) => e,
        None => Generator::new(1_000_000, 42).take(200_000).collect(),
    };
    if events.len() < 200_000 {
        anyhow::bail!(
            "the ml bench needs at least 200,000 events, got {}",
            events.len()
        );
    }
    let (x, y) = features(&events[..200_000]);
    let window = x.slice(ndarray::s![..50_000, ..]).to_owned();
    let wy = y.slice(ndarray::s![..50_000]).to_owned();

    println!("training time on a window of 50,000 rows × 9 features (ms):");
    let mut times = Vec::new();
    let mut time = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        f()?;
        let took = ms(t);
        println!("  {name:<34} {took:>9.1}");
        times.push((name.to_owned(), took));
        Ok(())
    };
    time("logistic regression (L-BFGS)", &mut || {
        weir_ml::fit_logistic(&window, &wy, 1.0, 100)?;
        Ok(())
    })?;
    time("linear regression (least squares)", &mut || {
        weir_ml::fit_linear(&window, &wy)?;
        Ok(())
    })?;
    time("standard scaler", &mut || {
        Scaler::standard(&window)?;
        Ok(())
    })?;
    time("min-max scaler", &mut || {
        Scaler::min_max(&window)?;
        Ok(())
    })?;
    time("PCA (3 components)", &mut || {
        Pca::fit(&window, 3)?;
        Ok(())
    })?;
    time("k-means (k = 8, 3 runs)", &mut || {
        KMeans::fit(&window, 8, 1)?;
        Ok(())
    })?;
    let small = window.slice(ndarray::s![..5_000, ..]).to_owned();
    time("DBSCAN (5,000 rows, eps 1.0)", &mut || {
        weir_ml::dbscan(&small, 1.0, 10)?;
        Ok(())
    })?;
    time("5-fold CV of logistic regression", &mut || {
        weir_ml::cross_validate(
            &window,
            &wy,
            5,
            |a, b| weir_ml::fit_logistic(a, b, 1.0, 100),
            weir_ml::accuracy,
        )?;
        Ok(())
    })?;
    time("grid search, 4 alphas × 5 folds", &mut || {
        weir_ml::grid_search(
            &window,
            &wy,
            5,
            &[0.01, 0.1, 1.0, 10.0],
            |a, x, y| weir_ml::fit_logistic(x, y, *a, 100),
            weir_ml::accuracy,
        )?;
        Ok(())
    })?;

    let train_x = x.slice(ndarray::s![..100_000, ..]).to_owned();
    let train_y = y.slice(ndarray::s![..100_000]).to_owned();
    let test_x = x.slice(ndarray::s![100_000..200_000, ..]).to_owned();
    let test_y: Vec<f64> = y.slice(ndarray::s![100_000..200_000]).to_vec();
    let t = Instant::now();
    // scikit-learn's default: C = 1, so alpha = 1.
    let model = weir_ml::fit_logistic(&train_x, &train_y, 1.0, 200).context("batch fit")?;
    let fit_ms = ms(t);
    let p = model.predict_all(test_x.view());
    let acc = weir_ml::accuracy(&p, &test_y);
    let auc = weir_ml::auc(&p, &test_y);
    println!();
    println!(
        "batch fit on the first 100,000 events: {fit_ms:.0} ms; on the next 100,000: accuracy {acc:.5}, AUC {auc:.5}"
    );
    println!(
        "  coef {:?}\n  intercept {:.6}",
        model
            .coef
            .iter()
            .map(|c| (c * 1e6).round() / 1e6)
            .collect::<Vec<_>>(),
        model.intercept
    );
    let logistic_ms = times.first().map_or(f64::NAN, |t| t.1);
    println!("batch_acc={acc:.5} batch_auc={auc:.5} logistic_50k_ms={logistic_ms:.1}");
    Ok(())
}
