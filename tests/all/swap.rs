//! Hot swap: atomic, attributable to exactly one version, rollback without recompiling.

use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use weir_engine::{Deployment, Error, Runner, Slot};
use weir_guests::plugins;

fn two_versions() -> (Arc<Deployment>, Arc<Deployment>) {
    let engine = engine();
    let p = load(&engine, plugins::LOGISTIC);
    let m = &models().event_model;
    let a = Deployment::new(p.clone(), models().logistic_config());
    let neg: Vec<f64> = m.coef.iter().map(|c| -c).collect();
    let b = Deployment::new(
        p,
        serde_json::json!({ "coef": neg, "intercept": 0.25 }).to_string(),
    );
    assert_ne!(a.version, b.version);
    (a, b)
}

#[test]
fn a_thousand_swaps_under_a_tight_loop() {
    let (a, b) = two_versions();
    let evs = events(64);
    let mut std = instance(
        &engine(),
        plugins::STANDARDIZE,
        &models().standardize_config(),
    );
    let features = std.extract(&batch(&evs)).unwrap();
    // What each version must answer.
    let want_a = weir_engine::Instance::new(a.clone())
        .unwrap()
        .predict(&features)
        .unwrap();
    let want_b = weir_engine::Instance::new(b.clone())
        .unwrap()
        .predict(&features)
        .unwrap();
    assert_ne!(want_a, want_b);

    let slot = Slot::new(a.clone());
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(2));
    let caller = {
        let (slot, done, start, a, b) = (
            slot.clone(),
            done.clone(),
            start.clone(),
            a.clone(),
            b.clone(),
        );
        std::thread::spawn(move || {
            let mut runner = Runner::new(slot);
            let (mut calls, mut seen_a, mut seen_b) = (0u64, 0u64, 0u64);
            start.wait();
            while !done.load(Ordering::Acquire) || calls < 100 {
                let (version, scores) = runner
                    .call(|i| i.predict(&features))
                    .expect("no call fails");
                if version == a.version {
                    assert_eq!(scores, want_a, "a result tagged A must be A's");
                    seen_a += 1;
                } else if version == b.version {
                    assert_eq!(scores, want_b, "a result tagged B must be B's");
                    seen_b += 1;
                } else {
                    panic!("unknown version {version}");
                }
                calls += 1;
            }
            (calls, seen_a, seen_b, runner.switches())
        })
    };
    start.wait();
    for i in 0..1000 {
        slot.swap(if i % 2 == 0 { b.clone() } else { a.clone() })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
    done.store(true, Ordering::Release);
    let (calls, seen_a, seen_b, switches) = caller.join().expect("caller thread");
    assert_eq!(slot.swaps(), 1000);
    assert_eq!(calls, seen_a + seen_b);
    assert!(
        seen_a > 0 && seen_b > 0,
        "both versions served ({seen_a}/{seen_b})"
    );
    assert!(
        switches > 10,
        "the runner followed the swaps ({switches} switches)"
    );
}

#[test]
fn rollback_is_a_pointer_swap_without_recompiling() {
    let (a, b) = two_versions();
    let slot = Slot::new(a.clone());
    slot.swap(b.clone()).unwrap();
    assert_eq!(slot.current().version, b.version);
    let back = slot.rollback().unwrap();
    assert_eq!(back.version, a.version);
    assert!(
        Arc::ptr_eq(&back.plugin, &a.plugin),
        "the compiled plugin is reused"
    );
    slot.rollback_to(&b.version).unwrap();
    assert_eq!(slot.current().version, b.version);
    assert_eq!(slot.history().len(), 4);
    assert!(
        slot.rollback_to(&weir_engine::VersionId("nope".into()))
            .is_err()
    );
}

#[test]
fn a_slot_refuses_a_plugin_of_another_kind() {
    let (a, _) = two_versions();
    let slot = Slot::new(a);
    let ext = Deployment::new(
        load(&engine(), plugins::STANDARDIZE),
        models().standardize_config(),
    );
    assert!(matches!(slot.swap(ext), Err(Error::WrongKind { .. })));
}

#[test]
fn learned_weights_can_follow_a_swap() {
    let m = models();
    let p = load(&engine(), plugins::LOGISTIC);
    let v1 = Deployment::new(p.clone(), m.online_config());
    let v2 = Deployment::new(p, serde_json::json!({"dims": 9, "lr": 0.05}).to_string());
    let evs = events(2_000);
    let mut std = instance(&engine(), plugins::STANDARDIZE, &m.standardize_config());
    let f = std.extract(&batch(&evs)).unwrap();
    let labels: Vec<f64> = evs.iter().map(|e| e.label as f64).collect();

    let slot = Slot::new(v1);
    let mut runner = Runner::new(slot.clone()).carry_model_state(true);
    runner.call(|i| i.train(&f, &labels)).unwrap();
    let (_, before) = runner.call(|i| i.predict(&f)).unwrap();
    slot.swap(v2.clone()).unwrap();
    let (version, after) = runner.call(|i| i.predict(&f)).unwrap();
    assert_eq!(version, v2.version);
    assert_eq!(
        before, after,
        "the new version starts from the old one's weights"
    );
}
