//! The real plugins in `plugins/` against the workload's native reference.

use crate::common::*;
use std::sync::{Arc, Mutex};
use weir_engine::{Deployment, Error, Instance, KeyedState, MemoryState, PluginError, WindowBatch};
use weir_guests::plugins;
use weir_workload::native::{self, OnlineSgd};

#[test]
fn job1_scores_match_the_native_reference() {
    let evs = events(10_000);
    let engine = engine();
    let mut std = instance(
        &engine,
        plugins::STANDARDIZE,
        &models().standardize_config(),
    );
    let mut lr = instance(&engine, plugins::LOGISTIC, &models().logistic_config());
    let mut scores = Vec::new();
    for chunk in evs.chunks(1024) {
        let f = std.extract(&batch(chunk)).unwrap();
        assert_eq!((f.rows as usize, f.dims), (chunk.len(), 9));
        scores.extend(lr.predict(&f).unwrap());
    }
    assert_close(&scores, &native_scores(&evs), 1e-9);
}

#[test]
fn prequential_training_matches_native_sgd() {
    let evs = events(20_000);
    let m = models();
    let mut std = instance(&engine(), plugins::STANDARDIZE, &m.standardize_config());
    let mut lr = instance(&engine(), plugins::LOGISTIC, &m.online_config());
    let mut reference = OnlineSgd::new(m.online_model.lr, m.online_model.intercept_lr);
    let (mut correct, mut correct_ref) = (0, 0);
    for chunk in evs.chunks(500) {
        let f = std.extract(&batch(chunk)).unwrap();
        let labels: Vec<f64> = chunk.iter().map(|e| e.label as f64).collect();
        let got = lr.train(&f, &labels).unwrap();
        for (i, e) in chunk.iter().enumerate() {
            let mut row = [0.0; 9];
            native::features(&m.event_model, &e.x, &mut row);
            let want = reference.step(&row, e.label as f64);
            assert!((got[i] - want).abs() < 1e-9, "{} vs {}", got[i], want);
            correct += usize::from((got[i] > 0.5) == (e.label == 1));
            correct_ref += usize::from((want > 0.5) == (e.label == 1));
        }
    }
    assert_eq!(correct, correct_ref);
    assert!(
        correct as f64 / evs.len() as f64 > 0.75,
        "the online model learns"
    );
}

#[test]
fn snapshot_restore_carries_learned_weights() {
    let evs = events(5_000);
    let m = models();
    let mut std = instance(&engine(), plugins::STANDARDIZE, &m.standardize_config());
    let f = std.extract(&batch(&evs)).unwrap();
    let labels: Vec<f64> = evs.iter().map(|e| e.label as f64).collect();

    let mut a = instance(&engine(), plugins::LOGISTIC, &m.online_config());
    a.train(&f, &labels).unwrap();
    let snap = a.snapshot().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    assert_eq!(doc["coef"].as_array().unwrap().len(), 9);
    assert!(doc["intercept"].is_f64());

    let mut b = instance(&engine(), plugins::LOGISTIC, &m.online_config());
    let fresh = b.predict(&f).unwrap();
    assert!(
        fresh.iter().all(|&p| p == 0.5),
        "an untrained model scores 0.5"
    );
    b.restore(&snap).unwrap();
    assert_eq!(b.predict(&f).unwrap(), a.predict(&f).unwrap());

    assert!(matches!(
        b.restore(b"{\"coef\":[1.0],\"intercept\":0}"),
        Err(Error::Plugin { .. })
    ));
    assert!(matches!(b.restore(b"not json"), Err(Error::Plugin { .. })));
}

/// `scaled-logistic` (job 1 fused) refuses bad shapes at `init` and rows of another width,
/// and scores as standardize → logistic do, whatever the batch size.
#[test]
fn the_fused_model_checks_its_config_and_scores_as_the_two_stages() {
    let engine = engine();
    let p = load(&engine, plugins::SCALED_LOGISTIC);
    for (config, why) in [
        (r#"{"mean":[0.0],"std":[0.0],"coef":[1.0]}"#, "`std` > 0"),
        (
            r#"{"mean":[0.0],"std":[1.0],"coef":[1.0,2.0]}"#,
            "one weight per input",
        ),
        (
            r#"{"mean":[0.0],"std":[1.0],"log1p_abs":[1],"coef":[1.0,2.0]}"#,
            "a log feature of a missing input",
        ),
        (r#"{"mean":[],"std":[],"coef":[]}"#, "no inputs"),
        (
            r#"{"mean":[0.0],"std":[1.0],"coef":[1.0],"x":1}"#,
            "an unknown key",
        ),
    ] {
        let bad = Instance::new(Deployment::new(p.clone(), config));
        assert!(
            matches!(
                bad,
                Err(Error::Plugin {
                    func: "init",
                    error: PluginError::InvalidConfig(_),
                    ..
                })
            ),
            "{why}: {:?}",
            bad.as_ref().err()
        );
    }
    let mut fused = instance(
        &engine,
        plugins::SCALED_LOGISTIC,
        &models().scaled_logistic_config(),
    );
    assert!(matches!(
        fused.predict(&rows(1, 9, vec![0.0; 9])),
        Err(Error::Plugin {
            error: PluginError::InvalidInput(_),
            ..
        })
    ));
    // 700 rows: two full blocks of 256 and a partial one.
    let evs = events(700);
    let inputs: Vec<f64> = evs.iter().flat_map(|e| e.x).collect();
    let scores = fused.predict(&rows(700, 8, inputs.clone())).unwrap();
    assert_close(&scores, &native_scores(&evs), 1e-15);
    // A row scores the same alone as inside a batch of 700.
    for (i, x) in inputs.chunks(8).take(20).enumerate() {
        let one = fused.predict(&rows(1, 8, x.to_vec())).unwrap();
        assert_close(&one, &scores[i..=i], 0.0);
    }
}

#[test]
fn bad_configs_and_inputs_are_plugin_errors() {
    let engine = engine();
    let p = load(&engine, plugins::STANDARDIZE);
    let bad = Instance::new(Deployment::new(p.clone(), r#"{"mean":[0.0],"std":[0.0]}"#));
    assert!(matches!(
        bad,
        Err(Error::Plugin {
            func: "init",
            error: PluginError::InvalidConfig(_),
            ..
        })
    ));
    let bad = Instance::new(Deployment::new(p, "not json"));
    assert!(matches!(
        bad,
        Err(Error::Plugin {
            func: "init",
            error: PluginError::InvalidConfig(_),
            ..
        })
    ));

    let mut std = instance(
        &engine,
        plugins::STANDARDIZE,
        &models().standardize_config(),
    );
    let mut short = weir_engine::EventBatch::with_dims(3);
    short.push("u1", 1, &[1.0, 2.0, 3.0]);
    assert!(matches!(
        std.extract(&short),
        Err(Error::Plugin {
            error: PluginError::InvalidInput(_),
            ..
        })
    ));

    let mut lr = instance(&engine, plugins::LOGISTIC, &models().logistic_config());
    assert!(matches!(
        lr.predict(&rows(1, 2, vec![1.0, 2.0])),
        Err(Error::Plugin {
            error: PluginError::InvalidInput(_),
            ..
        })
    ));
    let f = rows(1, 9, vec![0.0; 9]);
    assert!(matches!(
        lr.train(&f, &[0.5]),
        Err(Error::Plugin {
            error: PluginError::InvalidInput(_),
            ..
        })
    ));
}

/// Keyed state the test can look into after handing it to an instance.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<MemoryState>>);

impl KeyedState for Shared {
    fn get(&mut self, key: &str, name: &str) -> Option<Vec<u8>> {
        self.0.lock().unwrap().get(key, name)
    }
    fn put(&mut self, key: &str, name: &str, value: Vec<u8>) {
        self.0.lock().unwrap().put(key, name, value)
    }
    fn delete(&mut self, key: &str, name: &str) {
        self.0.lock().unwrap().delete(key, name)
    }
}

#[test]
fn window_stats_folds_refires_and_releases_state() {
    let m = models();
    let state = Shared::default();
    let plugin = load(&engine(), plugins::WINDOW_STATS);
    let mut op = Instance::with_state(
        Deployment::new(plugin, m.window_stats_config()),
        Box::new(state.clone()),
    )
    .unwrap();
    let w = &m.window_model;

    // Two panes fire: rows are [x0, ...] with 2 dims.
    let mut panes = WindowBatch::with_dims(2);
    panes.push("u1", 1000, 2000, &[1.0, 9.0, 3.0, 9.0], false);
    panes.push("u2", 1000, 2000, &[-2.0, 9.0], false);
    let out = op.on_window(&panes).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out.input_dims, 4);
    assert_eq!((out.key(0), out.timestamps[0]), (Some("u1"), 1000));
    let want = [2.0, 2.0, 3.0, native::window_score(w, 2.0, 2.0, 3.0)];
    assert_close(out.inputs_of(0).unwrap(), &want, 1e-12);
    assert_eq!(
        state.0.lock().unwrap().len(),
        2,
        "one accumulator per open pane"
    );

    // A late event re-fires u1's pane with only the new row; the result covers all three.
    let mut late = WindowBatch::with_dims(2);
    late.push("u1", 1000, 2000, &[5.0, 0.0], false);
    let out = op.on_window(&late).unwrap();
    let want = [3.0, 3.0, 5.0, native::window_score(w, 3.0, 3.0, 5.0)];
    assert_close(out.inputs_of(0).unwrap(), &want, 1e-12);

    // Closing panes with no new rows emit nothing and release their state.
    let mut closing = WindowBatch::with_dims(2);
    closing.push("u1", 1000, 2000, &[], true);
    closing.push("u2", 1000, 2000, &[], true);
    assert_eq!(op.on_window(&closing).unwrap().len(), 0);
    assert!(state.0.lock().unwrap().is_empty());
}

#[test]
fn window_stats_matches_the_groupby_reference() {
    let evs = events(20_000);
    let m = models();
    let mut op = instance(&engine(), plugins::WINDOW_STATS, &m.window_stats_config());
    let reference = native::job2_groupby(
        &m.window_model,
        evs.iter().map(|e| (e.key.as_str(), e.ts, e.x[0])),
    );
    // Fire every pane once with all its rows (what the host's window stage does when
    // nothing is late).
    let mut grouped: std::collections::BTreeMap<(String, i64), Vec<f64>> = Default::default();
    for e in &evs {
        grouped
            .entry((e.key.clone(), e.ts.div_euclid(1000) * 1000))
            .or_default()
            .push(e.x[0]);
    }
    let mut panes = WindowBatch::with_dims(1);
    for ((k, ws), xs) in &grouped {
        panes.push(k, *ws, ws + 1000, xs, true);
    }
    let out = op.on_window(&panes).unwrap();
    assert_eq!(out.len(), reference.len());
    for i in 0..out.len() {
        let key = out.key(i).unwrap().to_string();
        let r = reference[&(key, out.timestamps[i])];
        let got = out.inputs_of(i).unwrap();
        assert_eq!(got[0], r.count as f64);
        assert_close(&got[1..], &[r.mean_x0, r.max_x0, r.score], 1e-9);
    }
}
