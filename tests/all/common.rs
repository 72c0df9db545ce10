//! Shared helpers: one engine per test binary is enough, and compiled plugins are cached
//! by sha256 inside it.

use std::sync::{Arc, OnceLock};
use weir_engine::{
    Deployment, Engine, EngineOptions, EventBatch, FeatureBatch, Instance, Manifest, Plugin,
};
use weir_workload::{Event, Models};

pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::new(EngineOptions::default()).expect("engine"))
        .clone()
}

/// An engine without fuel metering (epoch deadline only).
pub fn unmetered_engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::new(EngineOptions {
                fuel: false,
                ..EngineOptions::default()
            })
            .expect("engine")
        })
        .clone()
}

pub fn load(engine: &Engine, path: &str) -> Arc<Plugin> {
    let bytes = weir_guests::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    engine
        .load(&bytes, Manifest::default())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn instance(engine: &Engine, path: &str, config: &str) -> Instance {
    Instance::new(Deployment::new(load(engine, path), config))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(Models::load)
}

pub fn events(n: u64) -> Vec<Event> {
    weir_workload::Generator::new(n, 42).collect()
}

pub fn batch(events: &[Event]) -> EventBatch {
    let mut b = EventBatch::with_dims(8);
    for e in events {
        b.push(&e.key, e.ts, &e.x);
    }
    b
}

/// Standardize + logistic with the fixed event model, natively.
pub fn native_scores(events: &[Event]) -> Vec<f64> {
    let m = &models().event_model;
    let inputs: Vec<f64> = events.iter().flat_map(|e| e.x).collect();
    let mut out = Vec::new();
    weir_workload::native::job1(m, &inputs, &mut out);
    out
}

/// A good pipeline (standardize + logistic) that must keep working after hostile plugins.
pub fn assert_good_plugins_work(engine: &Engine) {
    let evs = events(300);
    let mut std = instance(
        engine,
        weir_guests::plugins::STANDARDIZE,
        &models().standardize_config(),
    );
    let mut lr = instance(
        engine,
        weir_guests::plugins::LOGISTIC,
        &models().logistic_config(),
    );
    let f = std.extract(&batch(&evs)).expect("extract");
    let scores = lr.predict(&f).expect("predict");
    assert_close(&scores, &native_scores(&evs), 1e-9);
}

pub fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "index {i}: {x} vs {y}");
    }
}

pub fn rows(rows: u32, dims: u32, values: Vec<f64>) -> FeatureBatch {
    FeatureBatch::new(rows, dims, values)
}
