//! No silent loss at the Kafka edges, on the real binaries:
//! (a) input deleted by the embedded broker's retention before it was read, at the start
//!     and in the middle of a run: the default stops with the gap named, `on_gap = "skip"`
//!     records gaps whose ranges are exactly what was lost;
//! (b) `weir serve` restarted on the embedded broker: every event produced after the
//!     restart is processed, none collides with one from before, and the restart is
//!     recorded;
//! (c) a stored pipeline pointed at a fresh external broker: an error by default.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use weir_store::Store;
use weir_worker::kafka::Consumer;
use weir_workload::{Generator, to_json_line};

/// The scoring part of the workload (no window: these tests are about the source).
fn scoring_spec(name: &str, on_gap: &str) -> String {
    let spec = include_str!("../../../../examples/workload.toml")
        .replace("name = \"workload\"", &format!("name = \"{name}\""))
        .replace(
            "input_dims = 8",
            &format!("input_dims = 8\non_gap = \"{on_gap}\""),
        );
    spec.split("\n[window]").next().unwrap().to_owned()
        + "\n[sink]\ntopic = \"scores\"\ndead_letter_topic = \"dead-letters\"\n"
}

/// Where partition 0 of `topic` starts and ends now.
fn bounds(kafka: &str, topic: &str) -> (i64, i64) {
    let c = Consumer::new(kafka, "weir-test-bounds", topic).unwrap();
    c.watermarks(0, Duration::from_secs(10)).unwrap()
}

fn gaps(store: &Store, pipeline: &str) -> Vec<weir_store::NewGap> {
    block_on(store.gaps(pipeline))
        .unwrap()
        .into_iter()
        .map(|g| g.gap)
        .collect()
}

/// The stream positions of the stored predictions, checked to be unique.
fn positions(store: &Store, pipeline: &str) -> Vec<i64> {
    let p = block_on(store.predictions(pipeline)).unwrap();
    let set: BTreeSet<i64> = p.iter().map(|p| p.offset).collect();
    assert_eq!(set.len(), p.len(), "one prediction per position");
    set.into_iter().collect()
}

#[test]
fn retention_at_the_start_stops_by_default_and_is_recorded_exactly_when_skipped() {
    let (_broker, kafka) = start_broker(&["events:1", "scores", "dead-letters"]);
    // Far more than the embedded broker keeps of one partition (5 MiB).
    produce_workload(&kafka, "events", 0, 300_000);
    let (low, high) = bounds(&kafka, "events");
    assert!(low > 0 && high == 300_000, "the broker kept {low}..{high}");
    let dir = TempDir::new("gaps-a");
    let db = TestDb::sqlite("gaps-a");

    let spec = write_spec(&dir.0, &scoring_spec("retention", "fail"));
    let args = [
        "--spec",
        spec.to_str().unwrap(),
        "--kafka",
        &kafka,
        "--db",
        &db.url,
    ];
    let (status, out) = run_to_end(&args, &[], Duration::from_secs(120));
    assert!(!status.success(), "a gap must fail the run:\n{out}");
    let want = format!(
        "input lost: topic `events` partition 0: offsets 0..{} ({low} records) are no longer on the broker, whose log starts at {low}",
        low - 1
    );
    assert!(out.contains(&want), "want: {want}\n--- got:\n{out}");
    assert!(
        out.contains("last 5 MiB") && out.contains("on_gap = \"skip\""),
        "{out}"
    );
    let store = db.store();
    assert!(positions(&store, "retention").is_empty());

    std::fs::write(&spec, scoring_spec("retention", "skip")).unwrap();
    let (status, out) = run_to_end(&args, &[], Duration::from_secs(300));
    assert!(status.success(), "{out}");
    assert!(
        out.contains(&format!("processed {} records", high - low))
            && out.contains("1 input gaps recorded"),
        "{out}"
    );
    let g = gaps(&store, "retention");
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(
        (
            g[0].partition,
            g[0].from_offset,
            g[0].to_offset,
            g[0].records
        ),
        (0, 0, low, Some(low))
    );
    assert_eq!(g[0].reason, "retention");
    let pos = positions(&store, "retention");
    assert_eq!(pos, (low..high).collect::<Vec<_>>());

    // A later start neither forgets the gap nor records it again, even without `skip`.
    std::fs::write(&spec, scoring_spec("retention", "fail")).unwrap();
    let (status, out) = run_to_end(&args, &[], Duration::from_secs(120));
    assert!(status.success(), "{out}");
    assert!(out.contains("processed 0 records"), "{out}");
    assert_eq!(gaps(&store, "retention").len(), 1);
}

/// A worker that reads, stalls (each checkpoint held open by the failpoint) while far more
/// is produced than the broker keeps, then reads on: the records deleted under it are found
/// on the fetch that fails, not at an assignment.
#[test]
fn retention_under_a_running_worker_is_found_on_the_fetch() {
    for on_gap in ["skip", "fail"] {
        let (_broker, kafka) = start_broker(&["events:1", "scores", "dead-letters"]);
        let dir = TempDir::new("gaps-run");
        let db = TestDb::sqlite("gaps-run");
        let spec = write_spec(&dir.0, &scoring_spec("running", on_gap));
        produce_workload(&kafka, "events", 0, 1_000);
        // Migrated before the worker starts (two migrations at once would lock SQLite).
        let store = db.store();
        let mut worker = Proc(
            weir()
                .args([
                    "run",
                    "--spec",
                    spec.to_str().unwrap(),
                    "--kafka",
                    &kafka,
                    "--db",
                    &db.url,
                ])
                // Small cuts, each 2.5 s in its commit: the worker defers cuts while one
                // commits only up to four cuts' worth of outputs, then waits for the database.
                .args(["--commit-rows", "1000"])
                .env("WEIR_FAILPOINT_COMMIT_PAUSE_MS", "2500")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.0.join("run.err")).unwrap())
                .spawn()
                .unwrap(),
        );
        let log = || std::fs::read_to_string(dir.0.join("run.err")).unwrap_or_default();
        let started = Instant::now();
        while positions(&store, "running").len() < 1_000 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the worker never started:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The worker spends most of its time in 2.5 s checkpoints, and librdkafka
        // prefetches at most 100,000 records for it: meanwhile the broker, which keeps about
        // 100,000 of these records, drops most of a million before they are fetched.
        produce_workload(&kafka, "events", 1_000, 1_000_000);
        let (low, high) = bounds(&kafka, "events");
        assert!(low > 500_000, "the broker kept {low}..{high}");
        if on_gap == "fail" {
            let started = Instant::now();
            let status = loop {
                if let Some(s) = worker.0.try_wait().unwrap() {
                    break s;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "the worker did not stop:\n{}",
                    log()
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            let err = log();
            assert!(!status.success(), "{err}");
            assert!(
                err.contains("input lost: topic `events` partition 0: offsets")
                    && err.contains("are no longer on the broker"),
                "{err}"
            );
            continue;
        }
        // Wait until everything the broker still has is read.
        let started = Instant::now();
        while positions(&store, "running").last() != Some(&(high - 1)) {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the worker fell behind:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = worker.0.kill();
        // The broker's log start moves while the producer writes, so one stretch of lost
        // records can be found in more than one piece; together they are exactly what the
        // worker never saw.
        let g = gaps(&store, "running");
        assert!(
            !g.is_empty() && g.iter().all(|g| g.reason == "retention"),
            "{g:?}"
        );
        for w in g.windows(2) {
            assert!(w[0].to_offset <= w[1].from_offset, "gaps in order: {g:?}");
        }
        assert!(g[0].from_offset >= 1_000, "{g:?}");
        // The last gap ends where the broker's log started when the worker fetched: at
        // most the start seen after producing (a worker that catches up while the producer
        // still writes finds an earlier one, and reads on from there before it moves).
        let end = g.last().map_or(0, |g| g.to_offset);
        assert!(end > 500_000 && end <= low, "log start {low}: {g:?}");
        let mut lost = 0;
        for g in &g {
            assert_eq!(Some(g.to_offset - g.from_offset), g.records, "{g:?}");
            lost += g.to_offset - g.from_offset;
        }
        // Every record is either processed once or inside a recorded gap.
        let pos = positions(&store, "running");
        assert_eq!(
            pos.len() as i64 + lost,
            high,
            "processed {} + lost {lost}",
            pos.len()
        );
        assert!(
            pos.iter()
                .all(|p| g.iter().all(|g| !(g.from_offset..g.to_offset).contains(p)))
        );
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(started.elapsed() < timeout, "the process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const ADMIN: &str = "wk_6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a6a";

/// `weir serve` on the embedded broker; returns it, its API and its broker's address.
fn serve(db: &str, log: &std::path::Path) -> (Proc, String, String) {
    let mut child = weir()
        .args(["serve", "--listen", "127.0.0.1:0", "--db", db])
        .env("WEIR_ADMIN_KEY", ADMIN)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut kafka, mut api) = (None, None);
    while api.is_none() {
        let line = lines.next().expect("weir serve exited").unwrap();
        if let Some(k) = line.strip_prefix("kafka ") {
            kafka = Some(k.to_owned());
        }
        if let Some(a) = line.strip_prefix("listening on ") {
            api = Some(a.to_owned());
        }
    }
    (
        Proc(child),
        api.unwrap(),
        kafka.expect("weir serve printed its broker"),
    )
}

fn cli(api: &str, key: &str, args: &[&str]) -> Value {
    let out = weir()
        .args(args)
        .arg("--json")
        .env("WEIR_API", api)
        .env("WEIR_API_KEY", key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weir {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn produce_events(kafka: &str, topic: &str, events: &[weir_workload::Event]) {
    let mut p = weir_worker::kafka::Producer::new(kafka).unwrap();
    for e in events {
        p.send(topic, &e.key, to_json_line(e).as_bytes()).unwrap();
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

#[test]
fn a_restarted_server_on_the_embedded_broker_processes_every_new_event() {
    let dir = TempDir::new("gaps-serve");
    let db = format!("sqlite://{}", dir.0.join("weir.db").display());
    let events: Vec<_> = Generator::new(4_000, 42).collect();
    let (mut first, api, kafka) = serve(&db, &dir.0.join("serve1.log"));
    let t = cli(&api, ADMIN, &["tenant", "create", "acme"]);
    let key = t["api_key"].as_str().unwrap().to_owned();
    for (name, path) in [
        ("standardize", weir_guests::plugins::STANDARDIZE),
        ("logistic", weir_guests::plugins::LOGISTIC),
    ] {
        cli(
            &api,
            &key,
            &["plugin", "push", path, "--name", name, "--version", "1.0.0"],
        );
    }
    let spec = dir.0.join("scores.toml");
    std::fs::write(&spec, scoring_spec("scores", "fail")).unwrap();
    cli(
        &api,
        &key,
        &["pipeline", "create", spec.to_str().unwrap(), "--start"],
    );
    produce_events(&kafka, "acme.events", &events[..2_000]);
    let results = |api: &str| -> u64 {
        cli(api, &key, &["pipeline", "status", "scores"])["pipeline"]["counters"]["results_out"]
            .as_u64()
            .unwrap_or(0)
    };
    let started = Instant::now();
    while results(&api) < 2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "first 2,000 events"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Ctrl-C: the worker commits, the server stops, and its in-memory broker is gone.
    let pid = first.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_exit(&mut first.0, Duration::from_secs(60)).success());

    let log2 = dir.0.join("serve2.log");
    let (_second, api, kafka2) = serve(&db, &log2);
    assert_ne!(kafka, kafka2, "a new embedded broker");
    produce_events(&kafka2, "acme.events", &events[2_000..]);
    let started = Instant::now();
    while results(&api) < 2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after the restart: {}",
            cli(&api, &key, &["pipeline", "status", "scores"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every event has one stored prediction: the 2,000 after the restart continue the
    // stream at position 2,000 instead of overwriting the first 2,000.
    let mut rows: Vec<(i64, String, i64)> = Vec::new();
    let out = weir()
        .args(["tail", "scores", "--limit", "4000", "--json"])
        .env("WEIR_API", &api)
        .env("WEIR_API_KEY", &key)
        .output()
        .unwrap();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let p: Value = serde_json::from_str(line).unwrap();
        rows.push((
            p["offset"].as_i64().unwrap(),
            p["key"].as_str().unwrap().to_owned(),
            p["ts"].as_i64().unwrap(),
        ));
    }
    rows.sort();
    assert_eq!(rows.len(), 4_000);
    for (i, (pos, k, ts)) in rows.iter().enumerate() {
        assert_eq!(
            (*pos, k.as_str(), *ts),
            (i as i64, events[i].key.as_str(), events[i].ts)
        );
    }
    let status = cli(&api, &key, &["pipeline", "status", "scores"]);
    let gaps = &status["pipeline"]["gaps"];
    assert_eq!(gaps["count"], 1, "{status}");
    assert_eq!(gaps["last"]["reason"], "broker_restarted", "{status}");
    assert_eq!(gaps["last"]["from_offset"], 2_000, "{status}");
    let metrics = ureq::get(&format!("{api}/metrics"))
        .header("authorization", &format!("Bearer {key}"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(
            "weir_input_gaps_total{tenant=\"acme\",pipeline=\"scores\",reason=\"broker_restarted\"} 1"
        ),
        "{metrics}"
    );
    // The topics existed before the worker started: no unknown-topic errors.
    let log = std::fs::read_to_string(&log2).unwrap();
    assert!(!log.to_lowercase().contains("unknown topic"), "{log}");
    assert!(log.contains("broker_restarted"), "{log}");
}

#[test]
fn a_stored_pipeline_on_a_fresh_external_broker_is_an_error_by_default() {
    let dir = TempDir::new("gaps-c");
    let db = TestDb::sqlite("gaps-c");
    let (_a, kafka_a) = start_broker(&["events:1", "scores", "dead-letters"]);
    produce_workload(&kafka_a, "events", 0, 3_000);
    let spec = write_spec(&dir.0, &scoring_spec("moved", "fail"));
    let spec = spec.to_str().unwrap().to_owned();
    let run = |kafka: &str| {
        run_to_end(
            &["--spec", &spec, "--kafka", kafka, "--db", &db.url],
            &[],
            Duration::from_secs(120),
        )
    };
    let (status, out) = run(&kafka_a);
    assert!(
        status.success() && out.contains("processed 3000 records"),
        "{out}"
    );

    // Another broker, with a topic of the same name: its offsets 0.. are other records.
    let (_b, kafka_b) = start_broker(&["events:1", "scores", "dead-letters"]);
    produce_workload(&kafka_b, "events", 3_000, 5_000);
    let (status, out) = run(&kafka_b);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("input lost: topic `events` partition 0: the stored position, offset 3000, belongs to another log")
            && out.contains("the broker was replaced or the topic recreated")
            && out.contains("on_gap = \"skip\""),
        "{out}"
    );
    let store = db.store();
    assert_eq!(positions(&store, "moved").len(), 3_000);

    std::fs::write(&spec, scoring_spec("moved", "skip")).unwrap();
    let (status, out) = run(&kafka_b);
    assert!(
        status.success() && out.contains("processed 5000 records"),
        "{out}"
    );
    let g = gaps(&store, "moved");
    assert_eq!(g.len(), 1);
    assert_eq!(
        (g[0].reason.as_str(), g[0].from_offset, g[0].records),
        ("source_replaced", 3_000, None)
    );
    assert_eq!(positions(&store, "moved"), (0..8_000).collect::<Vec<_>>());
}

/// Another member of the group holds the only partition: a `--until-end` run that never
/// gets one says so and fails, instead of waiting forever in silence.
#[test]
fn a_worker_that_gets_no_partition_says_so() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let (_broker, kafka) = start_broker(&["events:1", "scores", "dead-letters"]);
    let dir = TempDir::new("gaps-idle");
    let db = TestDb::sqlite("gaps-idle");
    let spec = write_spec(&dir.0, &scoring_spec("idle", "fail"));
    // librdkafka's range assignor gives partition 0 to the member whose id sorts first:
    // `a-holder-…` before weir's `rdkafka-…`.
    let holder: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .set("group.id", "shared")
        .set("client.id", "a-holder")
        .set("partition.assignment.strategy", "range")
        .create()
        .unwrap();
    holder.subscribe(&["events"]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let polling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = holder.poll(Duration::from_millis(50));
            }
        })
    };
    let (status, out) = run_to_end(
        &[
            "--spec",
            spec.to_str().unwrap(),
            "--kafka",
            &kafka,
            "--db",
            &db.url,
            "--group",
            "shared",
            "--assign-timeout-s",
            "8",
        ],
        &[],
        Duration::from_secs(120),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    polling.join().unwrap();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(
            "no partition of `events` was assigned to this worker within 8 s: another worker of group `shared` holds them all"
        ),
        "{out}"
    );
}
