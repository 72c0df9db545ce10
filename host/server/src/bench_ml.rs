//! `weir bench ml`: the host ML toolbox (weir-ml, on linfa) on the shared workload's
//! features.
//!
//! - Training time of each algorithm on a window of 50,000 rows × 9 features.
//! - A batch fit of linfa's logistic regression on the first 100,000 events, and its
//!   accuracy on the next 100,000 (both before the drift of a 1M-event stream).
//!
//! - Job 3 through the real pipeline (embedded broker, durable worker, predictions in
//!   SQLite) in two variants: online SGD in the Wasm `logistic` plugin, and periodic linfa
//!   retraining with automatic champion/challenger swaps. Prequential accuracy over the
//!   whole stream and over the 100,000 events after the drift, with the Bayes-optimal
//!   classifier's (the labels' true model) beside them, and the time from "challenger wins"
//!   to "serving".
//!
//! The reference values of WORKLOAD.md hold for the shared generator's file
//! (`scripts/bench ml` generates it and passes `--events`); without `--events` the bench
//! uses weir's own generator, which is only statistically the same.

use anyhow::{Context, Result};
use ndarray::{Array1, Array2};
use std::time::Instant;
use weir_ml::{KMeans, Pca, Scaler};
use weir_server::job3::Variant;
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

/// Runs the bench on `events` (a whole stream: the batch fit uses its first 200,000, job 3
/// all of it).
pub fn run(events: Option<Vec<Event>>, skip_job3: bool) -> Result<()> {
    let events = match events {
        Some(e) => e,
        None => Generator::new(1_000_000, 42).collect(),
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
    if skip_job3 {
        return Ok(());
    }
    job3(&events)
}

/// Job 3, both variants, through the real pipeline.
fn job3(events: &[Event]) -> Result<()> {
    let n = events.len();
    let drift = n / 2;
    let post = 100_000.min(n - drift);
    let lines: Vec<String> = events.iter().map(weir_workload::to_json_line).collect();
    let labels: Vec<u8> = events.iter().map(|e| e.label).collect();
    // The Bayes-optimal classifier: the sign of the labels' true logit.
    let oracle: Vec<bool> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (weir_workload::true_logit(&e.x, i >= drift) > 0.0) == (e.label == 1))
        .collect();
    let share = |r: std::ops::Range<usize>| {
        let len = r.len().max(1) as f64;
        oracle[r].iter().filter(|c| **c).count() as f64 / len
    };
    println!();
    println!(
        "job 3 on {n} events, drift at {drift}; accuracy after the drift is over events {drift}..{}",
        drift + post
    );
    println!(
        "  Bayes-optimal (the labels' true model, switched at the drift): overall {:.6}, after the drift {:.5}",
        share(0..n),
        share(drift..drift + post)
    );
    let db = std::env::temp_dir().join(format!("weir-bench-job3-{}.db", std::process::id()));
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let mut last = None;
    for variant in [Variant::OnlineSgd, Variant::Retraining] {
        let r = weir_server::job3::run(variant, &lines, &labels, drift, post, &url)
            .with_context(|| format!("job 3, {}", variant.name()))?;
        println!(
            "  {:<11} prequential_acc {:.6}  post_drift_acc {:.5}  (before the drift {:.5}; {:.1} s, {:.0} events/s)",
            variant.name(),
            r.prequential_acc,
            r.post_drift_acc,
            r.pre_drift_acc,
            r.seconds,
            n as f64 / r.seconds
        );
        println!(
            "              by tenth: {}",
            r.by_tenth
                .iter()
                .map(|a| format!("{a:.4}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if let Some(t) = &r.training {
            println!(
                "              {} fits: {} promoted, {} rejected, {} failed; {} drifts detected; {} decisions stored ({} promoted); {} versions served",
                t.fits,
                t.promotions,
                t.rejections,
                t.failures,
                t.drifts,
                r.decisions_stored,
                r.promoted_stored,
                r.versions.len()
            );
            let mean = if t.promotions_served == 0 {
                f64::NAN
            } else {
                t.promotion_to_serving_sum_ms / t.promotions_served as f64
            };
            println!(
                "              challenger wins -> serving: mean {mean:.2} ms, max {:.2} ms over {} promotions; last fit {:.1} ms",
                t.promotion_to_serving_max_ms, t.promotions_served, t.last_fit_ms
            );
        }
        last = Some(r);
    }
    let _ = std::fs::remove_file(&db);
    let r = last.context("no job 3 run")?;
    let swaps = r.training.map_or(0, |t| t.promotions);
    println!(
        "prequential_acc={:.6} post_drift_acc={:.5} swaps={swaps}",
        r.prequential_acc, r.post_drift_acc
    );
    Ok(())
}
