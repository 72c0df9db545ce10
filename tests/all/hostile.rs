//! The hostile suite: every misbehaving or malformed plugin gets a clear, typed error, and
//! the same engine then still runs a good plugin correctly.

use crate::common::*;
use weir_engine::{Deployment, Error, Instance, Limits, Manifest, TrapKind, ValidationError};
use weir_guests::fixtures;

fn manifest(f: impl FnOnce(&mut Limits)) -> Manifest {
    let mut m = Manifest::default();
    f(&mut m.limits);
    m
}

fn fixture(path: &str, manifest: Manifest) -> Instance {
    let engine = engine();
    let plugin = engine
        .load(&weir_guests::read(path).unwrap(), manifest)
        .unwrap();
    Instance::new(Deployment::new(plugin, "{}")).unwrap()
}

fn one_row() -> weir_engine::FeatureBatch {
    rows(1, 2, vec![1.0, 2.0])
}

fn trap(err: Error) -> TrapKind {
    match err {
        Error::Trap { kind, func, plugin } => {
            assert_eq!(func, "predict");
            assert_eq!(
                plugin.len(),
                12,
                "errors name the plugin by its sha256 prefix"
            );
            kind
        }
        other => panic!("expected a trap, got {other}"),
    }
}

fn rejected(path: &str) -> ValidationError {
    match engine().load(&weir_guests::read(path).unwrap(), Manifest::default()) {
        Err(Error::Invalid(e)) => e,
        Err(other) => panic!("expected a validation error, got {other}"),
        Ok(_) => panic!("{path} was accepted"),
    }
}

#[test]
fn infinite_loop_hits_the_deadline() {
    // Without fuel metering, the wall-clock deadline (epochs) stops it.
    let engine = unmetered_engine();
    let m = manifest(|l| l.deadline_ms = 100);
    let mut i = Instance::new(Deployment::new(
        engine
            .load(&weir_guests::read(fixtures::SPIN).unwrap(), m)
            .unwrap(),
        "{}",
    ))
    .unwrap();
    let started = std::time::Instant::now();
    let kind = trap(i.predict(&one_row()).unwrap_err());
    assert_eq!(kind, TrapKind::Timeout);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_good_plugins_work(&engine);
}

#[test]
fn infinite_loop_runs_out_of_fuel_on_a_metered_engine() {
    let engine = engine();
    let m = manifest(|l| {
        l.fuel_per_call = 1_000_000;
        l.fuel_per_row = 0;
    });
    let plugin = engine
        .load(&weir_guests::read(fixtures::SPIN).unwrap(), m)
        .unwrap();
    let mut i = Instance::new(Deployment::new(plugin, "{}")).unwrap();
    assert_eq!(
        trap(i.predict(&one_row()).unwrap_err()),
        TrapKind::OutOfFuel
    );
    assert_good_plugins_work(&engine);
}

#[test]
fn memory_bomb_is_capped() {
    // Enough fuel that the memory cap, not the instruction budget, stops it.
    let mut i = fixture(
        fixtures::MEMBOMB,
        manifest(|l| {
            l.memory_bytes = 16 << 20;
            l.fuel_per_call = 10_000_000_000;
        }),
    );
    assert_eq!(
        trap(i.predict(&one_row()).unwrap_err()),
        TrapKind::OutOfMemory
    );
    assert_good_plugins_work(&engine());
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let mut i = fixture(fixtures::RECURSE, Manifest::default());
    assert_eq!(
        trap(i.predict(&one_row()).unwrap_err()),
        TrapKind::StackOverflow
    );
    assert_good_plugins_work(&engine());
}

#[test]
fn panic_is_reported_with_its_message_and_the_instance_is_rebuilt() {
    let mut i = fixture(fixtures::PANIC, Manifest::default());
    assert_eq!(
        i.predict(&rows(2, 2, vec![1.0, 2.0, 3.0, 4.0])).unwrap(),
        vec![3.0, 7.0]
    );
    let kind = trap(i.predict(&rows(1, 2, vec![13.0, 0.0])).unwrap_err());
    assert_eq!(kind, TrapKind::Panic("unlucky record: 13".into()));
    // A trapped component cannot be re-entered; the next call runs on a fresh instance.
    assert_eq!(i.predict(&rows(1, 2, vec![5.0, 6.0])).unwrap(), vec![11.0]);
    assert_eq!(i.rebuilds(), 1);
    assert!(
        i.logs()
            .lines()
            .iter()
            .any(|l| l.message.contains("unlucky record"))
    );
    assert_good_plugins_work(&engine());
}

#[test]
fn oversized_output_is_refused() {
    let mut i = fixture(
        fixtures::BIG_OUTPUT,
        manifest(|l| {
            l.output_bytes = 1 << 20;
            l.fuel_per_call = 10_000_000_000;
        }),
    );
    match i.predict(&one_row()).unwrap_err() {
        Error::BadOutput { reason, .. } => {
            assert!(reason.contains("exceeds the limit"), "{reason}")
        }
        other => panic!("expected BadOutput, got {other}"),
    }
    assert_good_plugins_work(&engine());
}

#[test]
fn wrong_row_count_is_refused() {
    let mut i = fixture(fixtures::WRONG_COUNT, Manifest::default());
    match i.predict(&one_row()).unwrap_err() {
        Error::BadOutput { reason, .. } => assert_eq!(reason, "2 scores for 1 rows"),
        other => panic!("expected BadOutput, got {other}"),
    }
    assert_good_plugins_work(&engine());
}

#[test]
fn log_spam_is_capped_and_counted() {
    let mut i = fixture(
        fixtures::LOG_SPAM,
        manifest(|l| {
            l.deadline_ms = 20_000;
            l.fuel_per_call = 10_000_000_000;
        }),
    );
    assert_eq!(i.predict(&one_row()).unwrap(), vec![1.0]);
    let lines = i.logs().lines();
    assert_eq!(lines.len(), Limits::default().log_lines_per_call);
    assert!(
        i.logs().dropped() >= 199_000,
        "dropped {}",
        i.logs().dropped()
    );
    assert!(
        lines
            .iter()
            .all(|l| l.message.len() <= Limits::default().log_line_bytes + 3)
    );
    // The cap is per call: the next call logs again.
    i.predict(&one_row()).unwrap();
    assert_eq!(
        i.logs().lines().len(),
        2 * Limits::default().log_lines_per_call
    );
    assert_good_plugins_work(&engine());
}

#[test]
fn filesystem_and_socket_imports_are_refused() {
    match rejected(fixtures::FS_IMPORT) {
        ValidationError::ForbiddenImport { import, reason } => {
            assert!(import.starts_with("wasi:filesystem/"), "{import}");
            assert!(reason.contains("filesystem"), "{reason}");
        }
        other => panic!("{other}"),
    }
    match rejected(fixtures::NET_IMPORT) {
        ValidationError::ForbiddenImport { import, .. } => {
            assert!(
                import.starts_with("wasi:sockets/") || import.starts_with("wasi:filesystem/"),
                "{import}"
            )
        }
        other => panic!("{other}"),
    }
    assert_good_plugins_work(&engine());
}

#[test]
fn wrong_world_and_unsupported_version_are_refused() {
    assert!(
        matches!(rejected(fixtures::WRONG_WORLD), ValidationError::WrongWorld(list) if list.contains("acme:other/thing"))
    );
    match rejected(fixtures::FUTURE_VERSION) {
        ValidationError::UnsupportedVersion { found, supported } => {
            assert_eq!(found, "0.2.0");
            assert_eq!(supported, "0.1.0");
        }
        other => panic!("{other}"),
    }
    assert_good_plugins_work(&engine());
}

#[test]
fn core_module_garbage_and_truncation_are_refused() {
    let engine = engine();
    let core =
        wat::parse_str(r#"(module (func (export "predict") (result f64) f64.const 1))"#).unwrap();
    let err = engine.load(&core, Manifest::default()).unwrap_err();
    assert!(matches!(err, Error::Invalid(ValidationError::CoreModule)));
    assert!(err.to_string().contains("not a component"), "{err}");

    assert!(matches!(
        engine.load(b"", Manifest::default()),
        Err(Error::Invalid(ValidationError::Empty))
    ));
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    assert!(matches!(
        engine.load(&garbage, Manifest::default()),
        Err(Error::Invalid(ValidationError::Malformed(_)))
    ));

    let good = weir_guests::read(weir_guests::plugins::LOGISTIC).unwrap();
    // A bare 8-byte header is a valid, empty component (refused for exporting nothing).
    assert!(matches!(
        engine.load(&good[..8], Manifest::default()),
        Err(Error::Invalid(ValidationError::WrongWorld(_)))
    ));
    for cut in [6, good.len() / 3, good.len() - 1] {
        let err = engine.load(&good[..cut], Manifest::default()).unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ValidationError::Malformed(_))),
            "cut at {cut}: {err}"
        );
    }
    // Flipping bytes in the middle: either rejected up front or by the compiler, never a panic.
    let mut flipped = good.clone();
    for b in flipped.iter_mut().skip(good.len() / 2).take(64) {
        *b ^= 0xa5;
    }
    assert!(engine.load(&flipped, Manifest::default()).is_err());
    assert_good_plugins_work(&engine);
}

#[test]
fn bad_config_is_a_plugin_error_not_a_trap() {
    let engine = engine();
    let plugin = load(&engine, fixtures::BAD_CONFIG);
    match Instance::new(Deployment::new(plugin, r#"{"x":1}"#)) {
        Err(Error::Plugin {
            func: "init",
            error: weir_engine::PluginError::InvalidConfig(m),
            ..
        }) => {
            assert!(m.contains("expected {}"), "{m}")
        }
        Err(other) => panic!("expected an init error, got {other}"),
        Ok(_) => panic!("bad config accepted"),
    }
    assert_good_plugins_work(&engine);
}

#[test]
fn calling_a_function_of_another_world_is_a_typed_error() {
    let mut std = instance(
        &engine(),
        weir_guests::plugins::STANDARDIZE,
        &models().standardize_config(),
    );
    assert!(matches!(
        std.predict(&one_row()),
        Err(Error::WrongKind {
            func: "predict",
            ..
        })
    ));
}

/// Issue 15, row 3: a batch whose model runs past its deadline costs one deadline, not one
/// per record: its records become dead letters naming the trap, and the pipeline goes on.
#[test]
fn a_batch_that_times_out_is_not_retried_record_by_record() {
    use std::time::Instant;
    use weir_stream::pipeline::{Outputs, Pipeline, SourceRecord, StageSlots};
    let engine = unmetered_engine();
    let spec = weir_stream::spec::PipelineSpec::parse(
        "name = \"spin\"\n[source]\ntopic = \"in\"\ninputs_field = \"x\"\ninput_dims = 2\n\
         [model]\nplugin = \"spin\"\n[sink]\ntopic = \"out\"\ndead_letter_topic = \"dlq\"\n",
    )
    .unwrap();
    let spin = engine
        .load(
            &weir_guests::read(fixtures::SPIN).unwrap(),
            manifest(|l| l.deadline_ms = 200),
        )
        .unwrap();
    let slots = StageSlots {
        model: Some(weir_engine::Slot::new(Deployment::new(spin, "{}"))),
        ..StageSlots::default()
    };
    let mut p = Pipeline::new(&spec, slots).unwrap();
    let payloads: Vec<String> = (0..500)
        .map(|i| format!("{{\"key\":\"k{i}\",\"ts\":{i},\"x\":[1,2]}}"))
        .collect();
    let batch: Vec<SourceRecord<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, l)| SourceRecord {
            partition: 0,
            offset: i as i64,
            payload: l.as_bytes(),
        })
        .collect();
    let mut out = Outputs::default();
    let t = Instant::now();
    p.process(&batch, 0, &mut out).unwrap();
    let took = t.elapsed();
    // One deadline (200 ms) and the instance's rebuild, not 501 deadlines (100 s).
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    assert_eq!(out.results.len(), 0);
    assert_eq!(out.dead.len(), 500);
    let first = out.dead.iter().next().unwrap();
    let text = first.payload_str();
    assert!(
        text.contains("deadline exceeded (the whole batch of 500 records)"),
        "{text}"
    );
    assert_eq!(p.stats().dead, 500);
}
