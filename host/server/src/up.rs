//! The main job. For now it runs the example plugins (standardize → logistic, and
//! window-stats) over weir's own event generator in-process and prints live progress and
//! scored events.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_engine::{Deployment, Engine, EngineOptions, EventBatch, Instance, Manifest, WindowBatch};
use weir_workload::{Generator, Models};

/// Options of `weir up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Events to generate (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    events: u64,
    /// Target rate in events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Events per batch handed to the plugins.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(args: UpArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let engine = Engine::new(EngineOptions::default())?;
    let models = Models::load();
    let load = |path: &str, config: String| -> Result<Instance> {
        let bytes = weir_guests::read(path).with_context(|| format!("reading {path}"))?;
        let plugin = engine.load(&bytes, Manifest::default())?;
        eprintln!(
            "loaded {:<13} {} ({} KiB, compiled in {:.0} ms)",
            plugin.kind().to_string(),
            &plugin.id().short(),
            plugin.size() / 1024,
            plugin.compile_time().as_secs_f64() * 1e3
        );
        Ok(Instance::new(Deployment::new(plugin, config))?)
    };
    let mut standardize = load(
        weir_guests::plugins::STANDARDIZE,
        models.standardize_config(),
    )?;
    let mut logistic = load(weir_guests::plugins::LOGISTIC, models.logistic_config())?;
    let mut windows = load(
        weir_guests::plugins::WINDOW_STATS,
        models.window_stats_config(),
    )?;

    let n = if args.events == 0 {
        u64::MAX
    } else {
        args.events
    };
    let mut source = Generator::new(n, args.seed).peekable();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let (mut total, mut since, mut windows_closed) = (0u64, 0u64, 0u64);
    let mut max_ts = i64::MIN;
    // Panes of the current and previous event-time seconds: a simple tumbling window that
    // closes a second once the watermark (max ts - 2 s lateness) has passed it.
    let mut panes: BTreeMap<i64, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut batch = EventBatch::with_dims(8);
    let mut sample = Vec::new();
    while !stop.load(Ordering::Relaxed) && source.peek().is_some() {
        batch.clear();
        for e in source.by_ref().take(args.batch) {
            batch.push(&e.key, e.ts, &e.x);
            panes
                .entry(e.ts.div_euclid(1000) * 1000)
                .or_default()
                .entry(e.key)
                .or_default()
                .push(e.x[0]);
            max_ts = max_ts.max(e.ts);
        }
        let features = standardize.extract(&batch)?;
        let scores = logistic.predict(&features)?;
        total += batch.len() as u64;
        since += batch.len() as u64;
        if sample.len() < 3 {
            sample.extend((0..batch.len().min(3)).map(|i| {
                (
                    batch.key(i).unwrap_or("?").to_string(),
                    batch.timestamps[i],
                    scores[i],
                )
            }));
        }
        let watermark = max_ts - 1;
        let closable: Vec<i64> = panes
            .keys()
            .copied()
            .take_while(|ws| ws + 999 + 2000 <= watermark)
            .collect();
        if !closable.is_empty() {
            let mut wb = WindowBatch::with_dims(1);
            for ws in closable {
                for (key, xs) in panes.remove(&ws).unwrap_or_default() {
                    wb.push(&key, ws, ws + 1000, &xs, true);
                }
            }
            windows_closed += windows.on_window(&wb)?.len() as u64;
        }
        if args.rate > 0 {
            let due = Duration::from_secs_f64(total as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let rate = since as f64 / last_report.elapsed().as_secs_f64();
            println!(
                "events {total:>10}  {rate:>9.0} ev/s  watermark {}  windows closed {windows_closed:>8}  late 0",
                watermark
            );
            for (k, ts, s) in sample.drain(..) {
                println!("    scored  key={k:<6} ts={ts}  score={s:.4}");
            }
            last_report = Instant::now();
            since = 0;
        }
    }
    println!(
        "stopped after {total} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
