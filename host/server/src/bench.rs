//! Benchmarks, run as `scripts/bench NAME` (a thin wrapper around `weir bench NAME`).
//! Each prints its figures and ends with one line of `key=value` pairs.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use weir_engine::{
    Deployment, Engine, EngineOptions, EventBatch, FeatureBatch, Instance, Manifest, Plugin,
    Runner, Slot,
};
use weir_workload::{Event, Generator, Models};

/// Options of `weir bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: `engine`, `pipeline`, `sink`, `swap`, `tenants` or `ml`.
    name: String,
    /// Read events from this JSON Lines file (the shared generator's format) instead of
    /// generating them.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Number of events to generate when no file is given (default: 200,000 for `engine`,
    /// 1,000,000 for `pipeline`).
    #[arg(long)]
    n: Option<u64>,
    /// Repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// `ml`: only the training times and the batch fit, not job 3.
    #[arg(long)]
    batch_only: bool,
    /// `pipeline-mode`: which run (passthrough, e2e, sqlite, mysql, every).
    #[arg(long)]
    mode: Option<String>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.name.as_str() {
        "engine" => engine(&args),
        "pipeline" => {
            let events = match &args.events {
                Some(_) => Some(load_events(&args)?),
                None => None,
            };
            crate::bench_pipeline::run(args.n.unwrap_or(1_000_000), events, args.runs.min(3))
        }
        "sink" => crate::bench_sink::run(args.n.unwrap_or(200_000), 200_000),
        "swap" => crate::bench_swap::run(args.n.unwrap_or(200_000), 100),
        "tenants" => crate::bench_tenants::run(args.n.unwrap_or(5_000) as f64, args.runs.min(5)),
        "ml" => crate::bench_ml::run(
            match &args.events {
                Some(_) => Some(load_events(&args)?),
                None => None,
            },
            args.batch_only,
        ),
        // For profilers: the pipeline in memory, nothing else.
        "pipeline-engine" => {
            let events = load_events(&args)?;
            let lines: Vec<Vec<u8>> = events
                .iter()
                .map(|e| weir_workload::to_json_line(e).into_bytes())
                .collect();
            let rate = crate::bench_pipeline::engine_only(&lines, args.runs)?.0;
            println!("engine_events_per_s={rate:.0}");
            Ok(())
        }
        // One mode of `pipeline` alone (`--mode`), for profilers.
        "pipeline-mode" => {
            let mode = args.mode.as_deref().unwrap_or("sqlite");
            let rate =
                crate::bench_pipeline::one_mode(args.n.unwrap_or(1_000_000), mode, args.runs)?;
            println!("{mode}_events_per_s={rate:.0}");
            Ok(())
        }
        // The latency figure alone, at `--n` events per second (for profiling).
        "pipeline-latency" => {
            let rate = args.n.unwrap_or(40_000) as f64;
            let lines: Vec<Vec<u8>> = Generator::new((rate * 10.0) as u64, 42)
                .map(|e| weir_workload::to_json_line(&e).into_bytes())
                .collect();
            let engine = Engine::new(EngineOptions::default())?;
            let passthrough = std::env::var_os("WEIR_BENCH_PASSTHROUGH").is_some();
            // Through another Kafka-protocol broker (for example tansu) instead of the
            // embedded one.
            let kafka = std::env::var("WEIR_BENCH_KAFKA").ok();
            let ((p50, p99), db, achieved) = crate::bench_latency::latency(
                &engine,
                &lines,
                rate,
                passthrough,
                None,
                kafka.as_deref(),
            )?;
            let (db50, db99) = db.unwrap_or_default();
            println!(
                "at {achieved:.0}/s: topic p50 {p50:.0} ms p99 {p99:.0} ms; checkpoint p50 {db50:.0} ms p99 {db99:.0} ms"
            );
            Ok(())
        }
        // For profilers: job 1's extract stage in a loop, nothing else.
        "extract-loop" => {
            let events = load_events(&args)?;
            let engine = Engine::new(EngineOptions::default())?;
            let (ext, _) =
                wasm_breakdown(&engine, &Models::load(), &batches(&events, 1024), args.runs)?;
            println!(
                "extract_ns_per_event={:.1}",
                ext * 1e9 / events.len() as f64
            );
            Ok(())
        }
        // For profilers: job 1 fused into one model (`scaled-logistic`), in a loop.
        "fused-loop" => {
            let events = load_events(&args)?;
            let fuel = std::env::var_os("WEIR_BENCH_NO_FUEL").is_none();
            let engine = Engine::new(EngineOptions {
                fuel,
                cache_dir: std::env::var_os("WEIR_CACHE_DIR").map(PathBuf::from),
                ..EngineOptions::default()
            })?;
            let inputs: Vec<f64> = events.iter().flat_map(|e| e.x).collect();
            let (secs, _) =
                Job1::fused(&engine, &Models::load(), &inputs, 1024)?.time(args.runs)?;
            println!("fused_ns_per_event={:.1}", secs * 1e9 / events.len() as f64);
            Ok(())
        }
        other => bail!(
            "unknown benchmark `{other}` (available: engine, pipeline, sink, swap, tenants, ml)"
        ),
    }
}

fn load_events(args: &BenchArgs) -> Result<Vec<Event>> {
    match &args.events {
        Some(path) => {
            weir_workload::read_jsonl(path).with_context(|| format!("reading {}", path.display()))
        }
        None => Ok(Generator::new(args.n.unwrap_or(200_000), 42).collect()),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn time_runs(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut secs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        secs.push(t.elapsed().as_secs_f64());
    }
    Ok(median(secs))
}

fn batches(events: &[Event], size: usize) -> Vec<EventBatch> {
    events
        .chunks(size)
        .map(|chunk| {
            let mut b = EventBatch::with_dims(8);
            for e in chunk {
                b.push(&e.key, e.ts, &e.x);
            }
            b
        })
        .collect()
}

/// Job 1 in Wasm over prepared batches, ready to be timed: either the two stages
/// (`standardize` → `logistic`, as examples/workload.toml runs it) or the fused model
/// (`scaled-logistic` over the raw inputs, as examples/workload-fused.toml runs it: the
/// features never leave the guest).
enum Job1 {
    TwoStage {
        std: Instance,
        lr: Instance,
        batches: Vec<EventBatch>,
    },
    Fused {
        model: Instance,
        batches: Vec<FeatureBatch>,
    },
}

impl Job1 {
    fn two_stage(engine: &Engine, models: &Models, batches: Vec<EventBatch>) -> Result<Self> {
        let (std, lr) = two_stages(engine, models)?;
        Ok(Job1::TwoStage { std, lr, batches })
    }

    fn fused(engine: &Engine, models: &Models, inputs: &[f64], size: usize) -> Result<Self> {
        let plugin = load_guest(engine, weir_guests::plugins::SCALED_LOGISTIC)?;
        Ok(Job1::Fused {
            model: Instance::new(Deployment::new(plugin, models.scaled_logistic_config()))?,
            batches: inputs
                .chunks(size * 8)
                .map(|c| FeatureBatch::new((c.len() / 8) as u32, 8, c.to_vec()))
                .collect(),
        })
    }

    /// Scores every batch once, into `scores`.
    fn run(&mut self, scores: &mut Vec<f64>) -> Result<()> {
        scores.clear();
        match self {
            Job1::TwoStage { std, lr, batches } => {
                for b in batches.iter() {
                    let f = std.extract(b)?;
                    scores.extend(lr.predict(&f)?);
                }
            }
            Job1::Fused { model, batches } => {
                for b in batches.iter() {
                    scores.extend(model.predict(b)?);
                }
            }
        }
        Ok(())
    }

    /// The median time of `runs` runs, and the scores.
    fn time(&mut self, runs: usize) -> Result<(f64, Vec<f64>)> {
        let mut scores = Vec::new();
        let secs = time_runs(runs, || self.run(&mut scores))?;
        Ok((secs, scores))
    }
}

/// Instances of job 1's two stages: `standardize` and `logistic` with the fixed models.
fn two_stages(engine: &Engine, models: &Models) -> Result<(Instance, Instance)> {
    let std = load_guest(engine, weir_guests::plugins::STANDARDIZE)?;
    let lr = load_guest(engine, weir_guests::plugins::LOGISTIC)?;
    Ok((
        Instance::new(Deployment::new(std, models.standardize_config()))?,
        Instance::new(Deployment::new(lr, models.logistic_config()))?,
    ))
}

fn load_guest(engine: &Engine, path: &str) -> Result<Arc<Plugin>> {
    let bytes = weir_guests::read(path).with_context(|| format!("reading {path}"))?;
    Ok(engine.load(&bytes, Manifest::default())?)
}

/// Times `a` and `b` in `pairs` alternating pairs (which goes first alternates too), so
/// both see the same moments of a noisy machine. Returns the median time of each and the
/// median of the per-pair ratios `b / a`.
fn paired(
    pairs: usize,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, f64)> {
    a()?;
    b()?;
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64())
    };
    for i in 0..pairs {
        let (x, y) = if i % 2 == 0 {
            let x = timed(&mut a)?;
            (x, timed(&mut b)?)
        } else {
            let y = timed(&mut b)?;
            (timed(&mut a)?, y)
        };
        ta.push(x);
        tb.push(y);
        ratios.push(y / x);
    }
    Ok((median(ta), median(tb), median(ratios)))
}

/// Times the two stages separately (batch 1024).
fn wasm_breakdown(
    engine: &Engine,
    models: &Models,
    batches: &[EventBatch],
    runs: usize,
) -> Result<(f64, f64)> {
    let (mut std, mut lr) = two_stages(engine, models)?;
    let features: Vec<_> = batches
        .iter()
        .map(|b| std.extract(b))
        .collect::<Result<_, _>>()?;
    let ext = time_runs(runs, || {
        for b in batches {
            std::hint::black_box(std.extract(b)?);
        }
        Ok(())
    })?;
    let pred = time_runs(runs, || {
        for f in &features {
            std::hint::black_box(lr.predict(f)?);
        }
        Ok(())
    })?;
    Ok((ext, pred))
}

fn engine(args: &BenchArgs) -> Result<()> {
    let events = load_events(args)?;
    let n = events.len();
    let models = Models::load();
    println!(
        "bench engine: job 1 (standardize + logistic) over {n} events, median of {} runs; Wasm under the default sandbox (fuel + epoch deadline). The ratio is the fused model's (scaled-logistic, examples/workload-fused.toml); the two-stage ratio follows it",
        args.runs
    );

    // Native Rust on the same flat inputs.
    let inputs: Vec<f64> = events.iter().flat_map(|e| e.x).collect();
    // The reference (as WORKLOAD.md writes it) for the scores, and the fastest plain Rust
    // for the time.
    let mut native = Vec::new();
    weir_workload::native::job1(&models.event_model, &inputs, &mut native);
    let mut fast = Vec::new();
    weir_workload::native::job1_fast(&models.event_model, &inputs, &mut fast);
    let fast_diff = native
        .iter()
        .zip(&fast)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    if fast_diff > 1e-12 {
        bail!("the optimised native job 1 is {fast_diff} from the reference");
    }
    let ns = |s: f64| s * 1e9 / n as f64;
    let mut native_job = || {
        weir_workload::native::job1_fast(
            &models.event_model,
            std::hint::black_box(&inputs),
            &mut fast,
        );
        Ok(())
    };

    let engine = Engine::new(EngineOptions::default())?;
    let mut fused = Job1::fused(&engine, &models, &inputs, 1024)?;
    let mut two = Job1::two_stage(&engine, &models, batches(&events, 1024))?;
    // Each Wasm form against native in alternating pairs: the ratios on the last line.
    let pairs = args.runs.max(15);
    let mut scratch = Vec::new();
    let (native_s, wfused, fused_ratio) =
        paired(pairs, &mut native_job, || fused.run(&mut scratch))?;
    let (native2_s, w1024, two_ratio) = paired(pairs, &mut native_job, || two.run(&mut scratch))?;
    println!(
        "  native, folded weights      {:>8.1} ns/event (median of both pairings: {:.1}, {:.1})",
        ns(native_s.min(native2_s)),
        ns(native_s),
        ns(native2_s)
    );
    println!(
        "  wasm, fused model, batch 1024 {:>6.1} ns/event (scaled-logistic: no extractor), {fused_ratio:.3}x native in {pairs} pairs",
        ns(wfused)
    );
    println!(
        "  wasm, two stages, batch 1024 {:>7.1} ns/event (standardize -> logistic), {two_ratio:.3}x native",
        ns(w1024)
    );
    let (ext, pred) = wasm_breakdown(&engine, &models, &batches(&events, 1024), args.runs)?;
    println!("    of which extract          {:>8.1} ns/event", ns(ext));
    println!("    of which predict          {:>8.1} ns/event", ns(pred));
    let (w1, s1) =
        Job1::two_stage(&engine, &models, batches(&events, 1))?.time(args.runs.min(3))?;
    println!("  wasm, two stages, batch 1   {:>8.1} ns/event", ns(w1));
    let (_, s1024) = two.time(1)?;
    let (_, sfused) = fused.time(1)?;
    let max_diff = native
        .iter()
        .zip(&s1024)
        .chain(native.iter().zip(&s1))
        .chain(native.iter().zip(&sfused))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("  max |wasm - native| score   {max_diff:.2e} (must be <= 1e-9)");
    if max_diff > 1e-9 {
        bail!("wasm and native scores disagree by {max_diff}");
    }

    let no_fuel = Engine::new(EngineOptions {
        fuel: false,
        ..EngineOptions::default()
    })?;
    let (wf, _) = Job1::two_stage(&no_fuel, &models, batches(&events, 1024))?.time(args.runs)?;
    println!(
        "  wasm, two stages, no fuel   {:>8.1} ns/event (epoch deadline only)",
        ns(wf)
    );
    let (wff, _) = Job1::fused(&no_fuel, &models, &inputs, 1024)?.time(args.runs)?;
    println!(
        "  wasm, fused, no fuel        {:>8.1} ns/event (epoch deadline only)",
        ns(wff)
    );

    // Swap figures.
    println!("swap:");
    let fresh = Engine::new(EngineOptions::default())?;
    let lr_bytes = weir_guests::read(weir_guests::plugins::LOGISTIC)?;
    let t = Instant::now();
    let lr = fresh.load(&lr_bytes, Manifest::default())?;
    println!(
        "  compile (Component::new + InstancePre, off the hot path)  {:>8.2} ms  ({} KiB)",
        t.elapsed().as_secs_f64() * 1e3,
        lr_bytes.len() / 1024
    );
    let t = Instant::now();
    fresh.load(&lr_bytes, Manifest::default())?;
    println!(
        "  load again (in-memory cache hit)                          {:>8.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let cache_dir = std::env::temp_dir().join(format!("weir-bench-cache-{}", std::process::id()));
    let disk = Engine::new(EngineOptions {
        cache_dir: Some(cache_dir.clone()),
        ..EngineOptions::default()
    })?;
    disk.load(&lr_bytes, Manifest::default())?;
    let disk2 = Engine::new(EngineOptions {
        cache_dir: Some(cache_dir.clone()),
        ..EngineOptions::default()
    })?;
    let cached = disk2.load(&lr_bytes, Manifest::default())?;
    println!(
        "  load from the on-disk artifact cache (new engine)         {:>8.2} ms  (from cache: {})",
        cached.compile_time().as_secs_f64() * 1e3,
        cached.from_disk_cache()
    );
    let _ = std::fs::remove_dir_all(&cache_dir);

    let a = Deployment::new(lr.clone(), models.logistic_config());
    let b = Deployment::new(lr.clone(), models.online_config());
    let slot = Slot::new(a.clone());
    let swaps = 100_000;
    let t = Instant::now();
    for i in 0..swaps {
        slot.swap(if i % 2 == 0 { b.clone() } else { a.clone() })?;
    }
    println!(
        "  pointer swap (Slot::swap)                                 {:>8.0} ns",
        t.elapsed().as_nanos() as f64 / swaps as f64
    );

    let inst_on_demand = instantiate_us(&lr, 2_000)?;
    let pooled_engine = Engine::new(EngineOptions {
        pooling: true,
        ..EngineOptions::default()
    })?;
    let pooled = pooled_engine.load(&lr_bytes, Manifest::default())?;
    let inst_pooled = instantiate_us(&pooled, 2_000)?;
    println!(
        "  Pre::instantiate, on-demand allocator                     {inst_on_demand:>8.1} µs"
    );
    println!("  Pre::instantiate, pooling allocator                       {inst_pooled:>8.1} µs");

    // Publish to first call on the new version, as a worker sees it.
    let feats = weir_engine::FeatureBatch::new(1, 9, vec![0.1; 9]);
    let mut runner = Runner::new(slot.clone());
    runner.call(|i| i.predict(&feats))?;
    let mut lat = Vec::new();
    for i in 0..200 {
        let next = if i % 2 == 0 { b.clone() } else { a.clone() };
        let t = Instant::now();
        slot.swap(next)?;
        runner.call(|i| i.predict(&feats))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "  swap -> first call on the new version (p50)               {:>8.1} µs",
        median(lat)
    );

    println!(
        "wasm_vs_native_ratio_batch1024={fused_ratio:.3} wasm_two_stage_vs_native_ratio_batch1024={two_ratio:.3}"
    );
    Ok(())
}

fn instantiate_us(plugin: &Arc<Plugin>, n: usize) -> Result<f64> {
    let mut xs = plugin.time_instantiate(n)?;
    xs.sort();
    Ok(xs[xs.len() / 2].as_secs_f64() * 1e6)
}

/// Nanoseconds since the epoch, for unique names.
pub fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Milliseconds since the epoch (Kafka timestamps' clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
