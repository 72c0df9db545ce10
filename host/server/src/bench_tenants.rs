//! `scripts/bench tenants`: one tenant's many busy pipelines against another tenant's
//! latency (issue 15). Tenant B runs one pipeline, fed live at a modest rate; its event →
//! result p99 on the output topic is measured (as in `scripts/bench pipeline`'s latency
//! run) three ways, interleaved in each repetition:
//!
//! - `alone`: B's pipeline is the only one on the host (in the CPU share, as `weir serve`
//!   runs it);
//! - `unshared`: tenant A runs its quota of running pipelines (4 by default) on the same
//!   host, each computing as much as its sandbox lets it (a model that runs every call to
//!   its deadline), and every worker competes for the CPU on its own (as `weir serve
//!   --no-fair-cpu`);
//! - `shared`: the same, with the tenants' CPU shares (`weir serve`'s default,
//!   [`weir_worker::CpuShare`]).
//!
//! The target: B's p99 with A at its quota stays within 2× of B alone.

use crate::bench_latency::latency;
use crate::bench_pipeline::{INPUT_PARTITIONS, WORKLOAD, pipeline, spread_key};
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use weir_engine::{Engine, EngineOptions};
use weir_stream::spec::PipelineSpec;
use weir_worker::kafka::{Broker, EmbeddedBroker, Producer};
use weir_worker::{CpuShare, Durability, TenantShare, WorkerOptions, WorkerReport};
use weir_workload::Generator;

/// Tenant A's pipelines, tenant 1; the measured pipeline is tenant 2's.
const TENANT_A: i64 = 1;
const TENANT_B: i64 = 2;

/// Another tenant's busy pipelines beside a measured one.
pub struct Neighbours {
    /// How many (the tenant's quota of running pipelines).
    pub pipelines: usize,
    /// Whether the tenants share the CPU fairly.
    pub fair: bool,
    /// Events each works through (enough to stay busy through the measurement).
    pub backlog: Arc<Vec<Vec<u8>>>,
}

/// The neighbours, running.
pub struct Busy {
    workers: Vec<JoinHandle<Result<WorkerReport>>>,
    stop: Arc<AtomicBool>,
    share: Option<Arc<CpuShare>>,
}

/// Tenant A's pipeline `i`: the workload on topics of its own, with a model that computes
/// until its call's deadline (the `spin` fixture): each batch is a second of CPU, then its
/// records become dead letters. As busy as a pipeline can be, all of it on the worker's
/// thread, and light on the broker (which the tenants share in this benchmark, and which
/// would be a cluster of its own in production).
fn heavy_spec(i: usize) -> Result<PipelineSpec> {
    let model = "plugin = \"logistic\"";
    let text = WORKLOAD
        .replace("name = \"workload\"", &format!("name = \"a{i}\""))
        .replace("topic = \"events\"", &format!("topic = \"a{i}-events\""))
        .replace("topic = \"scores\"", &format!("topic = \"a{i}-scores\""))
        .replace(
            "windows_topic = \"windows\"",
            &format!("windows_topic = \"a{i}-windows\""),
        )
        .replace(
            "late_topic = \"late-events\"",
            &format!("late_topic = \"a{i}-late\""),
        )
        .replace(
            "dead_letter_topic = \"dead-letters\"",
            &format!("dead_letter_topic = \"a{i}-dead\""),
        )
        .replace(
            model,
            // Fuel enough for the whole deadline.
            &format!(
                "plugin = {:?}\nlimits = {{ fuel_per_row = 10000000 }}",
                weir_guests::fixtures::SPIN
            ),
        );
    if !WORKLOAD.contains(model) {
        bail!("examples/workload.toml changed: the neighbours' model could not be set");
    }
    PipelineSpec::parse(&text).map_err(|e| anyhow!("neighbour spec: {e}"))
}

impl Neighbours {
    /// Loads each neighbour's backlog and starts its worker.
    pub fn start(&self, engine: &Engine, broker: &Arc<EmbeddedBroker>) -> Result<Busy> {
        let share = self.fair.then(CpuShare::of_this_machine);
        let stop = Arc::new(AtomicBool::new(false));
        let mut prod = Producer::new(&broker.bootstrap())?;
        let mut specs = Vec::new();
        for i in 0..self.pipelines {
            let spec = heavy_spec(i)?;
            let topic = spec.source.topic.get_ref().clone();
            broker.create_topic(&topic, INPUT_PARTITIONS)?;
            for (k, l) in self.backlog.iter().enumerate() {
                prod.send(&topic, &spread_key(k), l)?;
            }
            specs.push(spec);
        }
        prod.flush(Duration::from_secs(120))?;
        let mut workers = Vec::new();
        for spec in specs {
            let p = pipeline(engine, &spec)?;
            let opts = WorkerOptions {
                stop: stop.clone(),
                until_end: true,
                cpu_share: share.as_ref().map(|s| TenantShare {
                    share: s.clone(),
                    tenant: TENANT_A,
                }),
                ..WorkerOptions::new(Broker::Embedded(broker.clone()), Durability::KafkaOffsets)
            };
            workers.push(std::thread::spawn(move || -> Result<WorkerReport> {
                Ok(weir_worker::run(&spec, p, opts)?)
            }));
        }
        Ok(Busy {
            workers,
            stop,
            share,
        })
    }
}

impl Busy {
    /// The measured pipeline's place in the share, if the tenants share the CPU.
    pub fn share_of_measured(&self) -> Option<TenantShare> {
        self.share.as_ref().map(|s| TenantShare {
            share: s.clone(),
            tenant: TENANT_B,
        })
    }

    /// Stops the neighbours; an error if one ran out of work before the measurement ended
    /// (the measurement would not have had them busy throughout).
    pub fn finish(self) -> Result<()> {
        let idle = self.workers.iter().filter(|w| w.is_finished()).count();
        if let Some(s) = &self.share {
            let ((a, a_wait), (b, b_wait)) = (s.usage(TENANT_A), s.usage(TENANT_B));
            eprintln!(
                "  CPU charged: tenant A {:.1} s (waited {:.1} s), tenant B {:.1} s (waited {:.1} s)",
                a.as_secs_f64(),
                a_wait.as_secs_f64(),
                b.as_secs_f64(),
                b_wait.as_secs_f64()
            );
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut records = 0;
        for w in self.workers {
            records += w
                .join()
                .map_err(|_| anyhow!("a neighbour panicked"))??
                .records;
        }
        eprintln!("  neighbours processed {records} events");
        if idle > 0 {
            bail!("{idle} neighbour(s) ran out of backlog before the measurement ended");
        }
        Ok(())
    }
}

/// The benchmark: B at `rate` events/s for 10 s, `runs` repetitions of the three ways.
pub fn run(rate: f64, runs: usize) -> Result<()> {
    let engine = Engine::new(EngineOptions::default())?;
    let lines: Vec<Vec<u8>> = Generator::new((rate * 10.0) as u64, 42)
        .map(|e| weir_workload::to_json_line(&e).into_bytes())
        .collect();
    let backlog: Arc<Vec<Vec<u8>>> = Arc::new(
        Generator::new(
            std::env::var("WEIR_BENCH_BACKLOG")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000),
            7,
        )
        .map(|e| weir_workload::to_json_line(&e).into_bytes())
        .collect(),
    );
    let quota = weir_server::api::quotas::Quotas::default().running_pipelines as usize;
    let (mut alone, mut unshared, mut shared) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..runs.max(1) {
        for (way, out) in [
            ("alone", &mut alone),
            ("unshared", &mut unshared),
            ("shared", &mut shared),
        ] {
            // Alone, B runs as `weir serve` runs it: in the CPU share.
            let neighbours = Neighbours {
                pipelines: if way == "alone" { 0 } else { quota },
                fair: way != "unshared",
                backlog: backlog.clone(),
            };
            eprintln!("run {r}, {way}:");
            let ((p50, p99), _, achieved) =
                latency(&engine, &lines, rate, false, Some(&neighbours), None)
                    .with_context(|| format!("run {r}, {way}"))?;
            eprintln!("  tenant B at {achieved:.0}/s: p50 {p50:.0} ms, p99 {p99:.0} ms");
            out.push(p99);
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, u, s) = (med(alone), med(unshared), med(shared));
    println!(
        "tenant B at {rate:.0} events/s, tenant A running {quota} busy pipelines: p99 alone {a:.0} ms, beside A {u:.0} ms unshared, {s:.0} ms with the CPU shared ({:.2}x alone; target <= 2x)",
        s / a
    );
    println!(
        "tenant_b_p99_alone_ms={a:.0} tenant_b_p99_unshared_ms={u:.0} tenant_b_p99_shared_ms={s:.0} shared_vs_alone={:.2}",
        s / a
    );
    Ok(())
}
