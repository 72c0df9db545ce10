//! The streaming pipeline over the embedded Kafka broker: window correctness against an
//! independent reference, hot swaps under load, and dead letters.

use crate::common::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_server::run::build_slots;
use weir_store::Store;
use weir_stream::pipeline::Pipeline;
use weir_stream::spec::PipelineSpec;
use weir_worker::kafka::{Broker, Consumer, EmbeddedBroker, Owned, Producer};
use weir_worker::{Durability, Progress, WorkerOptions, WorkerReport};
use weir_workload::{Event, to_json_line};

const WORKLOAD: &str = include_str!("../../examples/workload.toml");
const FUSED: &str = include_str!("../../examples/workload-fused.toml");

/// An embedded broker with the workload's topics. Its partitions keep only their last
/// 5 MiB (see `EmbeddedBroker`), and these tests load a topic before reading it, so the
/// big topics get enough partitions: the input (keyed; the hottest key is 15% of the
/// events) and the per-event scores (about 250 bytes each).
fn broker(partitions: i32) -> EmbeddedBroker {
    let b = EmbeddedBroker::start().unwrap();
    b.create_topic("events", partitions).unwrap();
    b.create_topic("scores", 16).unwrap();
    b.create_topic("windows", 4).unwrap();
    for t in ["late-events", "dead-letters"] {
        b.create_topic(t, 1).unwrap();
    }
    b
}

/// Reads a whole topic back as `(partition, offset, payload)`, in offset order per
/// partition.
fn read_raw(bootstrap: &str, topic: &str, n: u64) -> Vec<Owned> {
    let mut c = Consumer::new(
        bootstrap,
        &format!("raw-reader-{topic}-{}", std::process::id()),
        topic,
    )
    .unwrap();
    let mut out: Vec<Owned> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as u64) < n && Instant::now() < deadline {
        let mut chunk = Vec::new();
        c.poll_batch(10_000, Duration::from_millis(200), &mut chunk)
            .unwrap();
        out.append(&mut chunk);
    }
    c.close(Duration::from_secs(5));
    assert_eq!(out.len() as u64, n, "records on {topic}");
    out
}

fn produce(bootstrap: &str, lines: impl IntoIterator<Item = (String, String)>) {
    let mut p = Producer::new(bootstrap).unwrap();
    for (key, line) in lines {
        p.send("events", &key, line.as_bytes()).unwrap();
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Reads exactly `n` records of `topic` (or fails after a minute).
/// Produces the events to `events`, keyed by their keys.
fn produce_events(bootstrap: &str, evs: &[Event]) {
    produce(
        bootstrap,
        evs.iter().map(|e| (e.key.clone(), to_json_line(e))),
    );
}

/// The first `n` records of `events` read back and parsed, with their partition and offset.
fn read_events(bootstrap: &str, n: u64) -> Vec<(i32, i64, Event)> {
    read_raw(bootstrap, "events", n)
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            let x: Vec<f64> = v["x"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let e = Event {
                key: v["key"].as_str().unwrap().to_string(),
                ts: v["ts"].as_i64().unwrap(),
                x: x.try_into().unwrap(),
                label: v["label"].as_u64().unwrap() as u8,
            };
            (r.partition, r.offset, e)
        })
        .collect()
}

fn read(bootstrap: &str, topic: &str, n: u64) -> Vec<serde_json::Value> {
    let mut c = Consumer::new(
        bootstrap,
        &format!("reader-{topic}-{}", std::process::id()),
        topic,
    )
    .unwrap();
    let mut out: Vec<Owned> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as u64) < n && Instant::now() < deadline {
        let mut chunk = Vec::new();
        c.poll_batch(10_000, Duration::from_millis(200), &mut chunk)
            .unwrap();
        out.append(&mut chunk);
    }
    c.close(Duration::from_secs(5));
    assert_eq!(out.len() as u64, n, "records on {topic}");
    out.iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect()
}

/// The worker as users run it: checkpoints (every prediction, window results, keyed state
/// and positions) in a database, here SQLite in memory on a runtime of its own.
struct Db {
    rt: tokio::runtime::Runtime,
    store: Arc<Store>,
}

impl Db {
    fn new() -> Db {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store = Arc::new(rt.block_on(Store::connect("sqlite::memory:")).unwrap());
        Db { rt, store }
    }

    fn options(&self, bootstrap: &str, n: u64, batch: usize) -> WorkerOptions {
        WorkerOptions {
            max_records: Some(n),
            batch,
            ..WorkerOptions::new(
                Broker::External(bootstrap.to_owned()),
                Durability::Database {
                    store: self.store.clone(),
                    rt: self.rt.handle().clone(),
                    predictions: true,
                },
            )
        }
    }
}

fn run(db: &Db, spec: &PipelineSpec, bootstrap: &str, n: u64, batch: usize) -> WorkerReport {
    let slots = build_slots(&engine(), spec).unwrap();
    let pipeline = Pipeline::new(spec, slots).unwrap();
    weir_worker::run(spec, pipeline, db.options(bootstrap, n, batch)).unwrap()
}

#[test]
fn window_results_equal_an_independent_reference() {
    let b = broker(8);
    let mut evs: Vec<Event> = events(200_000);
    // The workload has no event beyond the allowed lateness; add some that are.
    for i in 0..40usize {
        let mut late = evs[i * 7].clone();
        late.key = format!("late{i}");
        evs.insert(120_000 + i * 1_000, late);
    }
    produce_events(&b.bootstrap(), &evs);

    let spec = PipelineSpec::parse(WORKLOAD).unwrap();
    let db = Db::new();
    let p = run(&db, &spec, &b.bootstrap(), evs.len() as u64, 1024);
    let stats = p.stats.clone();
    assert_eq!(stats.records_in, evs.len() as u64);
    assert_eq!(stats.dead, 0);

    // Reference: each event's lateness is judged by its own partition's watermark
    // W = (max ts of the partition so far, this event included) - 1: too late when
    // ws + 999 + 2000 <= W. Everything else is a plain group-by. The partitions come from
    // reading the input topic back, in offset order.
    let m = &models().window_model;
    let parsed = read_events(&b.bootstrap(), evs.len() as u64);
    let mut max_ts: HashMap<i32, i64> = HashMap::new();
    let mut late = Vec::new();
    let mut on_time = Vec::new();
    for (partition, _, e) in &parsed {
        let mx = max_ts.entry(*partition).or_insert(i64::MIN);
        *mx = (*mx).max(e.ts);
        let ws = e.ts.div_euclid(1000) * 1000;
        let watermark = *mx - 1;
        if ws + 999 + 2000 <= watermark {
            late.push(e.key.clone());
        } else {
            on_time.push((e.key.as_str(), e.ts, e.x[0]));
        }
    }
    let reference = weir_workload::native::job2_groupby(m, on_time);
    assert_eq!(
        late.len(),
        40,
        "the reference sees exactly the injected late events"
    );
    assert!(reference.len() > 43_000, "{} windows", reference.len());

    let windows = read(&b.bootstrap(), "windows", stats.windows_out);
    let mut last: BTreeMap<(String, i64), serde_json::Value> = BTreeMap::new();
    for w in windows {
        let k = (
            w["key"].as_str().unwrap().to_string(),
            w["window_start"].as_i64().unwrap(),
        );
        assert_eq!(w["window_end"].as_i64().unwrap(), k.1 + 1000);
        let keep = last
            .get(&k)
            .is_none_or(|prev| prev["count"].as_f64() < w["count"].as_f64());
        if keep {
            last.insert(k, w);
        }
    }
    assert_eq!(
        last.len(),
        reference.len(),
        "one final result per (key, window)"
    );
    for ((key, ws), r) in &reference {
        let got = &last[&(key.clone(), *ws)];
        assert_eq!(got["count"].as_f64().unwrap(), r.count as f64, "{key} {ws}");
        for (field, want) in [
            ("mean_x0", r.mean_x0),
            ("max_x0", r.max_x0),
            ("score", r.score),
        ] {
            let v = got[field].as_f64().unwrap();
            assert!(
                (v - want).abs() <= 1e-9,
                "{key} {ws} {field}: {v} vs {want}"
            );
        }
    }

    assert_eq!(stats.late, 40);
    let late_out = read(&b.bootstrap(), "late-events", stats.late);
    let mut got: Vec<String> = late_out
        .iter()
        .map(|l| l["key"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    late.sort();
    assert_eq!(got, late);
    assert!(
        late_out
            .iter()
            .all(|l| l["reason"] == "too late for every window")
    );

    // Job 1 ran on every event, late ones included.
    assert_eq!(stats.results_out, evs.len() as u64);
}

/// `examples/workload-fused.toml`: job 1 as one model component over the raw inputs
/// (`scaled-logistic`, no extractor) scores every event as standardize → logistic does.
#[test]
fn a_fused_model_scores_every_event_like_the_two_stages() {
    let b = broker(8);
    let n = 20_000u64;
    let evs = events(n);
    produce_events(&b.bootstrap(), &evs);
    let spec = PipelineSpec::parse(FUSED).unwrap();
    assert!(spec.extractor.is_none());
    let p = run(&Db::new(), &spec, &b.bootstrap(), n, 1024);
    assert_eq!(p.stats.results_out, n);

    // The reference score of each input record, by (partition, offset).
    let m = &models().event_model;
    let mut want: HashMap<(i64, i64), f64> = HashMap::new();
    for (partition, offset, e) in read_events(&b.bootstrap(), n) {
        let mut score = Vec::new();
        weir_workload::native::job1(m, &e.x, &mut score);
        want.insert((i64::from(partition), offset), score[0]);
    }
    let results = read(&b.bootstrap(), "scores", n);
    let mut seen = std::collections::HashSet::new();
    let mut worst = 0.0f64;
    for r in &results {
        let at = (
            r["partition"].as_i64().unwrap(),
            r["offset"].as_i64().unwrap(),
        );
        assert!(seen.insert(at), "two results for {at:?}");
        let got = r["score"].as_f64().unwrap();
        worst = worst.max((got - want[&at]).abs());
        assert!(r.get("extractor_version").is_none(), "{r}");
    }
    assert_eq!(seen.len() as u64, n, "one result per input record");
    assert!(
        worst <= 1e-9,
        "largest difference from the reference: {worst:e}"
    );
}

#[test]
fn fifty_swaps_under_load_lose_and_duplicate_nothing() {
    let b = broker(8);
    let n = 200_000u64;
    let evs = events(n);
    produce_events(&b.bootstrap(), &evs);

    let spec = PipelineSpec::parse(WORKLOAD).unwrap();
    let slots = build_slots(&engine(), &spec).unwrap();
    let model = slots.model.clone().unwrap();
    let a = model.current();
    let neg: Vec<f64> = models().event_model.coef.iter().map(|c| -c).collect();
    let b_version = weir_engine::Deployment::new(
        a.plugin.clone(),
        serde_json::json!({"coef": neg, "intercept": 0.5}).to_string(),
    );
    let pipeline = Pipeline::new(&spec, slots).unwrap();
    let progress = Arc::new(Mutex::new(Progress::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let db = Db::new();
    let worker = {
        let (spec, progress, stop) = (spec.clone(), progress.clone(), stop.clone());
        let opts = WorkerOptions {
            stop,
            progress,
            ..db.options(&b.bootstrap(), n, 256)
        };
        std::thread::spawn(move || weir_worker::run(&spec, pipeline, opts))
    };
    // Swap 50 times, spread over the stream by progress.
    let mut swaps = 0;
    let started = Instant::now();
    while swaps < 50 && started.elapsed() < Duration::from_secs(120) {
        let seen = progress.lock().unwrap().stats.records_in;
        if seen >= n {
            break;
        }
        if seen >= (swaps + 1) * n / 52 {
            model
                .swap(if swaps % 2 == 0 {
                    b_version.clone()
                } else {
                    a.clone()
                })
                .unwrap();
            swaps += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let p = worker.join().unwrap().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(swaps, 50, "all swaps happened while events were flowing");
    assert_eq!(model.swaps(), 50);

    let results = read(&b.bootstrap(), "scores", p.stats.results_out);
    assert_eq!(results.len() as u64, n, "one result per input");
    // Exactly one output per (partition, offset), each naming one of the two versions.
    let mut by_partition: BTreeMap<i64, BTreeMap<i64, String>> = BTreeMap::new();
    for r in &results {
        let v = r["model_version"].as_str().unwrap().to_string();
        assert!(
            v == a.version.0 || v == b_version.version.0,
            "unknown version {v}"
        );
        let prev = by_partition
            .entry(r["partition"].as_i64().unwrap())
            .or_default()
            .insert(r["offset"].as_i64().unwrap(), v);
        assert!(prev.is_none(), "duplicate output for {r}");
    }
    let total: usize = by_partition.values().map(BTreeMap::len).sum();
    assert_eq!(total as u64, n);
    // Per partition, the version changes exactly at the recorded switch offsets.
    let mut recorded: HashMap<i64, Vec<(i64, String)>> = HashMap::new();
    for s in p.switches.iter().filter(|s| s.stage == "model") {
        recorded
            .entry(s.partition as i64)
            .or_default()
            .push((s.offset, s.version.0.clone()));
    }
    let mut changes_seen = 0;
    for (partition, outputs) in &by_partition {
        let mut observed = Vec::new();
        let mut prev: Option<&String> = None;
        for (offset, v) in outputs {
            if prev != Some(v) {
                observed.push((*offset, v.clone()));
            }
            prev = Some(v);
        }
        // Offsets are contiguous from 0: nothing missing.
        assert_eq!(
            outputs.keys().copied().collect::<Vec<_>>(),
            (0..outputs.len() as i64).collect::<Vec<_>>()
        );
        let rec = &recorded[partition];
        // The log may also record a switch to the version already serving this partition
        // (a swap and its undo between two batches); collapse those.
        let mut collapsed: Vec<(i64, String)> = Vec::new();
        for (o, v) in rec {
            if collapsed.last().map(|l| &l.1) != Some(v) {
                collapsed.push((*o, v.clone()));
            }
        }
        assert_eq!(observed, collapsed, "partition {partition}");
        changes_seen += observed.len() - 1;
    }
    assert!(
        changes_seen >= 20,
        "the swaps reached the outputs ({changes_seen} version changes)"
    );
}

#[test]
fn bad_records_and_a_trapping_plugin_go_to_dead_letters() {
    let b = broker(1);
    let spec = format!(
        r#"
name = "dlq"
[source]
topic = "events"
inputs_field = "x"
input_dims = 2
[model]
plugin = "{}"
[sink]
topic = "scores"
dead_letter_topic = "dead-letters"
"#,
        weir_guests::fixtures::PANIC
    );
    let spec = PipelineSpec::parse(&spec).unwrap();
    let lines = [
        r#"{"key":"a","ts":1,"x":[1.0,2.0]}"#,
        r#"{"key":"b","ts":2,"x":[1.0,2.0"#,
        r#"{"ts":3,"x":[1.0,2.0]}"#,
        r#"{"key":"d","x":[1.0,2.0]}"#,
        r#"{"key":"e","ts":5,"x":[13.0,2.0]}"#,
        r#"{"key":"f","ts":6,"x":[3.0,4.0],"extra":{"kept":true}}"#,
    ];
    produce(
        &b.bootstrap(),
        lines.iter().map(|l| (String::new(), l.to_string())),
    );
    let p = run(&Db::new(), &spec, &b.bootstrap(), lines.len() as u64, 1024);
    assert_eq!(p.stats.dead, 4);
    assert_eq!(p.stats.results_out, 2);

    let scores = read(&b.bootstrap(), "scores", 2);
    let keys: Vec<_> = scores
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_string(),
                s["score"].as_f64().unwrap(),
            )
        })
        .collect();
    let mut keys = keys;
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(keys, vec![("a".to_string(), 3.0), ("f".to_string(), 7.0)]);

    let dead = read(&b.bootstrap(), "dead-letters", 4);
    let reasons: Vec<(i64, String)> = dead
        .iter()
        .map(|d| {
            (
                d["offset"].as_i64().unwrap(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(reasons[0].1.starts_with("malformed record"), "{reasons:?}");
    assert_eq!(reasons[1].1, "missing field `key`");
    assert_eq!(reasons[2].1, "missing field `ts`");
    assert_eq!(reasons[3].0, 4);
    assert!(
        reasons[3].1.contains("panicked: unlucky record: 13"),
        "{reasons:?}"
    );
    assert_eq!(dead[3]["stage"], "plugin");
    assert_eq!(dead[1]["payload"], lines[2]);
}
