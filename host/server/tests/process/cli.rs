//! End to end through the CLI: `weir serve` (MariaDB) and `weir broker` as child processes,
//! driven by `weir tenant|plugin|pipeline|swap|rollback|canary|shadow|promote|tail` exactly
//! as a user would, over the shared workload.

use crate::support::{Proc, TempDir, TestDb, start_broker, weir};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use weir_workload::{Generator, to_json_line};

const ADMIN: &str = "wk_5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const PHASE: usize = 3000;

struct Cli {
    api: String,
    key: String,
}

impl Cli {
    /// Runs `weir <args> --json`; returns its JSON output, or panics with its stderr.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args, true);
        let text = String::from_utf8_lossy(&out);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("weir {args:?}: {e}: {text}"))
    }

    fn run(&self, args: &[&str], json: bool) -> Vec<u8> {
        let mut c = weir();
        c.args(args)
            .env("WEIR_API", &self.api)
            .env("WEIR_API_KEY", &self.key);
        if json {
            c.arg("--json");
        }
        let out = c.output().expect("running weir");
        assert!(
            out.status.success(),
            "weir {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Like `run`, but expects failure and returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = weir()
            .args(args)
            .env("WEIR_API", &self.api)
            .env("WEIR_API_KEY", &self.key)
            .output()
            .expect("running weir");
        assert!(!out.status.success(), "weir {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn results_out(&self) -> u64 {
        let v = self.json(&["pipeline", "status", "scores"]);
        v["pipeline"]["counters"]["results_out"]
            .as_u64()
            .unwrap_or(0)
    }

    fn wait_results(&self, n: usize) {
        let t = Instant::now();
        while self.results_out() < n as u64 {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "waiting for {n} results"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The component with a custom section appended: another plugin (another sha256) with the
/// same behaviour.
fn variant(path: &str, tag: &str, dir: &Path) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let payload: Vec<u8> = [&[tag.len() as u8][..], tag.as_bytes()].concat();
    bytes.push(0);
    bytes.push(payload.len() as u8);
    bytes.extend_from_slice(&payload);
    let out = dir.join(format!("logistic-{tag}.wasm"));
    std::fs::write(&out, bytes).unwrap();
    out.display().to_string()
}

/// The versions that made a phase's outputs.
fn only(m: &BTreeMap<String, usize>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn cli_end_to_end_with_swap_rollback_canary_shadow_promote() {
    let db = TestDb::mysql("cli");
    let dir = TempDir::new("cli");
    let (_broker, kafka) = start_broker(&[
        "acme.events:1",
        "acme.scores:2",
        "acme.dead:1",
        "acme.scores.shadow:2",
    ]);
    let mut serve = weir()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &db.url,
            "--kafka",
            &kafka,
        ])
        .env("WEIR_ADMIN_KEY", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning weir serve");
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let api = loop {
        let line = lines.next().expect("weir serve exited").unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_owned();
        }
    };
    let _serve = Proc(serve);

    let admin = Cli {
        api: api.clone(),
        key: ADMIN.into(),
    };
    let t = admin.json(&["tenant", "create", "acme"]);
    let cli = Cli {
        api,
        key: t["api_key"].as_str().unwrap().to_owned(),
    };
    assert!(
        cli.fails(&["tenant", "create", "evil"])
            .contains("admin key")
    );

    let std_path = weir_guests::plugins::STANDARDIZE;
    let log_path = weir_guests::plugins::LOGISTIC;
    let p = cli.json(&[
        "plugin",
        "push",
        std_path,
        "--name",
        "standardize",
        "--version",
        "1.0.0",
    ]);
    assert_eq!(p["kind"], "extractor");
    cli.json(&[
        "plugin",
        "push",
        log_path,
        "--name",
        "logistic",
        "--version",
        "1.0.0",
    ]);
    let dirp = dir.0.clone();
    cli.json(&[
        "plugin",
        "push",
        &variant(log_path, "v2", &dirp),
        "--name",
        "logistic",
        "--version",
        "2.0.0",
    ]);
    cli.json(&[
        "plugin",
        "push",
        &variant(log_path, "v3", &dirp),
        "--name",
        "logistic",
        "--version",
        "3.0.0",
    ]);
    let err = cli.fails(&[
        "plugin",
        "push",
        std_path,
        "--name",
        "logistic",
        "--version",
        "1.0.0",
    ]);
    assert!(err.contains("exists"), "{err}");
    let list = cli.json(&["plugin", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 4);
    // The human table lists them too.
    let table = String::from_utf8(cli.run(&["plugin", "list"], false)).unwrap();
    assert!(
        table.starts_with("ID") && table.contains("logistic") && table.contains("3.0.0"),
        "{table}"
    );

    let spec = include_str!("../../../../examples/workload.toml")
        .replace("plugin = \"standardize\"", "plugin = \"standardize@1.0.0\"")
        .replace("plugin = \"logistic\"", "plugin = \"logistic@1.0.0\"")
        .replace("name = \"workload\"", "name = \"scores\"");
    // This test is about the scoring path: drop the window stage.
    let spec: String = spec.split("\n[window]").next().unwrap().to_owned()
        + "\n[sink]\ntopic = \"scores\"\ndead_letter_topic = \"dead\"\n";
    let spec_path = dir.0.join("scores.toml");
    std::fs::write(&spec_path, spec).unwrap();
    let created = cli.json(&["pipeline", "create", spec_path.to_str().unwrap(), "--start"]);
    assert_eq!(created["status"], "running", "{created}");

    let events: Vec<_> = Generator::new(6 * PHASE as u64, 42).collect();
    let produce = |phase: usize| {
        let f = dir.0.join(format!("phase{phase}.jsonl"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&f).unwrap());
        for e in &events[phase * PHASE..(phase + 1) * PHASE] {
            writeln!(w, "{}", to_json_line(e)).unwrap();
        }
        drop(w);
        let out = weir()
            .args([
                "produce",
                "--file",
                f.to_str().unwrap(),
                "--topic",
                "acme.events",
                "--kafka",
                &kafka,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cli.wait_results((phase + 1) * PHASE);
    };

    produce(0);
    let v2 = cli.json(&["swap", "scores", "logistic@2.0.0"]);
    let (ver1, ver2) = (
        v2["previous"].as_str().unwrap().to_owned(),
        v2["version"].as_str().unwrap().to_owned(),
    );
    produce(1);
    let back = cli.json(&["rollback", "scores"]);
    assert_eq!(back["version"], ver1.as_str());
    produce(2);
    let canary = cli.json(&["canary", "scores", "logistic@3.0.0", "--percent", "20"]);
    let ver3 = canary["version"].as_str().unwrap().to_owned();
    produce(3);
    cli.json(&["shadow", "scores", "logistic@2.0.0"]);
    produce(4);
    let status = cli.json(&["pipeline", "status", "scores"]);
    let shadow_rows: u64 = status["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "shadow")
        .map(|m| m["rows"].as_u64().unwrap())
        .sum();
    assert!(
        shadow_rows >= PHASE as u64,
        "the shadow scored phase 4: {status}"
    );
    let promoted = cli.json(&["promote", "scores", "--from", "canary"]);
    assert_eq!(promoted["version"], ver3.as_str());
    produce(5);
    let human = String::from_utf8(cli.run(&["pipeline", "status", "scores"], false)).unwrap();
    assert!(
        human.contains("logistic@3.0.0") && human.contains("shadow"),
        "{human}"
    );
    cli.json(&["pipeline", "stop", "scores"]);

    // Every event has exactly one stored prediction, naming the version of its phase.
    let out = cli.run(
        &["tail", "scores", "--limit", &(6 * PHASE).to_string()],
        true,
    );
    let mut seen = BTreeMap::new();
    for line in String::from_utf8(out).unwrap().lines() {
        let p: Value = serde_json::from_str(line).unwrap();
        let id = (
            p["partition"].as_i64().unwrap(),
            p["offset"].as_i64().unwrap(),
        );
        assert!(seen.insert(id, p).is_none(), "duplicate prediction {id:?}");
    }
    assert_eq!(seen.len(), 6 * PHASE, "one prediction per event");
    let mut by_phase: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); 6];
    let mut canary_keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((_, offset), p) in &seen {
        let phase = *offset as usize / PHASE;
        let v = p["model_version"].as_str().unwrap().to_owned();
        assert_eq!(
            p["output"]["model_version"],
            v.as_str(),
            "each output names its version"
        );
        let e = &events[*offset as usize];
        assert_eq!(
            (p["key"].as_str().unwrap(), p["ts"].as_i64().unwrap()),
            (e.key.as_str(), e.ts)
        );
        if phase == 3 || phase == 4 {
            canary_keys
                .entry(e.key.clone())
                .or_default()
                .insert(v.clone());
        }
        *by_phase[phase].entry(v).or_default() += 1;
    }
    assert_eq!(only(&by_phase[0]), [ver1.as_str()]);
    assert_eq!(only(&by_phase[1]), [ver2.as_str()]);
    assert_eq!(only(&by_phase[2]), [ver1.as_str()]);
    assert_eq!(only(&by_phase[5]), [ver3.as_str()]);
    for phase in [3, 4] {
        let share = by_phase[phase].get(&ver3).copied().unwrap_or(0) as f64 / PHASE as f64;
        assert!(
            (0.12..0.28).contains(&share),
            "phase {phase}: canary share {share}"
        );
        assert_eq!(by_phase[phase].values().sum::<usize>(), PHASE);
    }
    assert!(
        canary_keys.values().all(|v| v.len() == 1),
        "a key sees one version during the canary"
    );

    // The history shows each action and where each serving version took effect.
    let history = cli.json(&["pipeline", "history", "scores"]);
    let took_effect: Vec<(String, i64)> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["stage"] == "model" && !d["partition"].is_null())
        .map(|d| {
            (
                d["version"].as_str().unwrap().to_owned(),
                d["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let p = PHASE as i64;
    assert_eq!(
        took_effect,
        [(ver1.clone(), 0), (ver2, p), (ver1, 2 * p), (ver3, 5 * p)]
    );
}

#[test]
fn plugin_templates_build_into_valid_components() {
    let dir = TempDir::new("templates");
    let target = dir.0.join("target");
    for kind in ["extractor", "model", "operator"] {
        let name = format!("my-{kind}");
        let out = weir()
            .args(["plugin", "new", &name, "--kind", kind])
            .current_dir(&dir.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = weir()
            .args(["plugin", "build", &name])
            .current_dir(&dir.0)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wasm = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(wasm.ends_with(&format!("my_{kind}.wasm")), "{wasm}");
        let out = weir().args(["inspect", &wasm]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("kind     {kind}")),
            "{text}"
        );
    }
    let out = weir()
        .args(["plugin", "new", "my-model", "--kind", "model"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an existing directory is not overwritten"
    );
    let out = weir()
        .args(["plugin", "new", "x", "--kind", "reducer"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown kind"));
}
