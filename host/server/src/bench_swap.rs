//! `weir bench swap`: hot-swap cost under load, through the HTTP API.
//!
//! A server with the embedded broker and a SQLite database runs job 1 (standardize →
//! logistic). The bench measures the pipeline's maximum rate (a pre-loaded backlog drained
//! end to end), then feeds it at half that rate while it makes 100 swaps through the API,
//! alternating two versions of the model. For each swap it reports the processing pause
//! the worker took to move to the new version (instantiating it, between two batches), and
//! afterwards it checks every event has exactly one stored prediction. Last, it times
//! upload-to-serving for a ~1 MB component: upload (validation and compilation), swap, and
//! the first batch scored by it.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use weir_server::api::{ApiConfig, AppState};
use weir_worker::kafka::{Broker, EmbeddedBroker, Producer};
use weir_workload::{Generator, to_json_line};

const ADMIN: &str = "wk_b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

const SPEC: &str = r#"
name = "bench"

[source]
topic = "events"
inputs_field = "x"
input_dims = 8

[watermark]
idle_timeout_ms = 1000

[extractor]
plugin = "standardize"
config = { mean = [0.835525, -2.002768, 0.501294, 5.006266, -0.000425, 10.000836, -1.004835, 2.985891], std = [1.90274, 0.998788, 1.998198, 2.993294, 0.499558, 3.976339, 0.997564, 2.004694] }

[model]
plugin = "logistic@1.0.0"
config = { coef = [1.521876, -0.802983, 0.602322, -0.009225, 1.000721, -0.483541, 0.883641, 0.297362, 0.667308], intercept = -0.909968 }

[sink]
topic = "scores"
dead_letter_topic = "dead"
"#;

struct Http {
    agent: ureq::Agent,
    base: String,
    key: String,
}

impl Http {
    fn call(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Result<Value> {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", content_type)
            .body(body)?;
        let mut resp = self.agent.run(req)?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            bail!("{method} {path}: HTTP {status}: {text}");
        }
        Ok(v)
    }
    fn json(&self, method: &str, path: &str, body: Value) -> Result<Value> {
        self.call(
            method,
            path,
            "application/json",
            body.to_string().into_bytes(),
        )
    }
}

/// A distinct component (another sha256) that behaves like `bytes`: a custom section of
/// `pad` bytes is appended.
fn variant(bytes: &[u8], tag: &str, pad: usize) -> Vec<u8> {
    let mut payload = vec![tag.len() as u8];
    payload.extend_from_slice(tag.as_bytes());
    payload.resize(payload.len() + pad, 0x5a);
    let mut out = bytes.to_vec();
    out.push(0);
    let mut n = payload.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs the bench: `warm` events to find the maximum rate, then `swaps` swaps.
pub fn run(warm: u64, swaps: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let broker = Arc::new(EmbeddedBroker::start()?);
    // Each partition of the embedded broker keeps 5 MiB: spread the load over 16.
    broker.create_topic("bench.events", 16)?;
    broker.create_topic("bench.scores", 4)?;
    broker.create_topic("bench.dead", 1)?;
    let dir = std::env::temp_dir().join(format!("weir-bench-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = format!("sqlite://{}", dir.join("weir.db").display());
    let (state, addr) = rt.block_on(async {
        let store = Arc::new(weir_store::Store::connect(&db).await?);
        let engine = weir_engine::Engine::new(Default::default())?;
        let config = ApiConfig {
            rate_per_minute: 0.0,
            ..ApiConfig::default()
        };
        let (state, _) = AppState::new(
            store,
            engine,
            Broker::Embedded(broker.clone()),
            config,
            Some(ADMIN.into()),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(weir_server::api::serve(
            state.clone(),
            listener,
            std::future::pending(),
        ));
        anyhow::Ok((state, addr))
    })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let admin = Http {
        agent: agent.clone(),
        base: format!("http://{addr}"),
        key: ADMIN.into(),
    };
    let t = admin.json("POST", "/v1/tenants", json!({"name": "bench"}))?;
    let api = Http {
        agent,
        base: format!("http://{addr}"),
        key: t["api_key"].as_str().context("tenant key")?.to_owned(),
    };
    let std_bytes = std::fs::read(weir_guests::plugins::STANDARDIZE)?;
    let log_bytes = std::fs::read(weir_guests::plugins::LOGISTIC)?;
    let upload = |name: &str, version: &str, bytes: Vec<u8>| {
        api.call(
            "POST",
            &format!("/v1/plugins?name={name}&version={version}"),
            "application/wasm",
            bytes,
        )
    };
    upload("standardize", "1.0.0", std_bytes)?;
    upload("logistic", "1.0.0", log_bytes.clone())?;
    upload("logistic", "2.0.0", variant(&log_bytes, "v2", 0))?;
    let p = api.json("POST", "/v1/pipelines", json!({"spec": SPEC}))?;
    let id = p["id"].as_i64().context("pipeline id")?;
    api.json("POST", &format!("/v1/pipelines/{id}/start"), json!({}))?;
    let results = || -> Result<u64> {
        let v = api.json("GET", &format!("/v1/pipelines/{id}"), json!({}))?;
        Ok(v["counters"]["results_out"].as_u64().unwrap_or(0))
    };
    let wait_for = |n: u64, secs: u64| -> Result<()> {
        let t = Instant::now();
        while results()? < n {
            if t.elapsed() > Duration::from_secs(secs) {
                bail!("the pipeline did not reach {n} results in {secs} s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };

    // 1. The maximum rate: a backlog drained end to end.
    let total_events = warm + 2_000_000;
    let lines: Vec<(String, String)> = Generator::new(total_events, 42)
        .map(|e| (e.key.clone(), to_json_line(&e)))
        .collect();
    let mut producer = Producer::new(&broker.bootstrap())?;
    let started = Instant::now();
    for (k, l) in &lines[..warm as usize] {
        producer.send("bench.events", k, l.as_bytes())?;
    }
    producer.flush(Duration::from_secs(60))?;
    wait_for(warm, 300)?;
    let max_rate = warm as f64 / started.elapsed().as_secs_f64();
    let rate = max_rate / 2.0;
    println!("maximum rate (backlog of {warm} drained end to end): {max_rate:.0} events/s");
    println!("load during the swaps: {rate:.0} events/s (half)");

    // 2. Swaps under load.
    let sent = Arc::new(AtomicU64::new(warm));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (sent, stop, bootstrap) = (sent.clone(), stop.clone(), broker.bootstrap());
        std::thread::spawn(move || -> Result<()> {
            let mut producer = Producer::new(&bootstrap)?;
            let t0 = Instant::now();
            let mut i = warm as usize;
            while !stop.load(Ordering::Relaxed) && i < lines.len() {
                let due = warm as usize + (t0.elapsed().as_secs_f64() * rate) as usize;
                while i < due.min(lines.len()) {
                    producer.send("bench.events", &lines[i].0, lines[i].1.as_bytes())?;
                    i += 1;
                }
                sent.store(i as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            producer.flush(Duration::from_secs(60))?;
            sent.store(i as u64, Ordering::Relaxed);
            Ok(())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut api_ms = Vec::with_capacity(swaps);
    for i in 0..swaps {
        let to = if i % 2 == 0 {
            "logistic@2.0.0"
        } else {
            "logistic@1.0.0"
        };
        let t = Instant::now();
        api.json(
            "POST",
            &format!("/v1/pipelines/{id}/stages/model/swap"),
            json!({"plugin": to}),
        )?;
        api_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3. Upload to serving, for a ~1 MB component (5 runs, each a new component).
    let mut upload_ms = Vec::new();
    let (mut upload_only_ms, mut compile_ms) = (Vec::new(), Vec::new());
    let mut size = 0;
    for run in 0..5 {
        let big = variant(
            &log_bytes,
            &format!("big{run}"),
            (1 << 20) - log_bytes.len(),
        );
        size = big.len();
        let t = Instant::now();
        let version_name = format!("9.0.{run}");
        let up = upload("logistic", &version_name, big)?;
        upload_only_ms.push(t.elapsed().as_secs_f64() * 1e3);
        compile_ms.push(up["details"]["compile_ms"].as_f64().unwrap_or(f64::NAN));
        let v = api.json(
            "POST",
            &format!("/v1/pipelines/{id}/stages/model/swap"),
            json!({"plugin": format!("logistic@{version_name}")}),
        )?;
        let version = v["version"].as_str().context("version")?.to_owned();
        loop {
            let m = api.json("GET", &format!("/v1/pipelines/{id}/metrics"), json!({}))?;
            let serving =
                m.as_array().into_iter().flatten().any(|s| {
                    s["version"] == version.as_str() && s["calls"].as_u64().unwrap_or(0) > 0
                });
            if serving {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("the uploaded version never served");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        upload_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Relaxed);
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("the feeder panicked"))??;
    let total = sent.load(Ordering::Relaxed);
    wait_for(total, 300)?;
    let running = state
        .manager
        .get(id)
        .context("the pipeline is not running")?;
    api.json("POST", &format!("/v1/pipelines/{id}/stop"), json!({}))?;

    // 4. Pauses, and completeness of the stored predictions.
    let tenant = t["id"].as_i64().context("tenant id")?;
    let internal = weir_server::api::manager::internal_name(tenant, "bench");
    let preds = rt.block_on(state.store.predictions(&internal))?;
    let mut ids: Vec<(i32, i64)> = preds.iter().map(|p| (p.partition, p.offset)).collect();
    ids.sort_unstable();
    ids.dedup();
    let duplicates = preds.len() - ids.len();
    let lost = total.saturating_sub(ids.len() as u64);
    let unnamed = preds.iter().filter(|p| p.model_version.is_empty()).count();
    let pauses = running.metrics.switch_pauses().recent;
    let mut p_ms: Vec<f64> = pauses.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    p_ms.sort_by(f64::total_cmp);
    api_ms.sort_by(f64::total_cmp);
    upload_ms.sort_by(f64::total_cmp);
    upload_only_ms.sort_by(f64::total_cmp);
    compile_ms.sort_by(f64::total_cmp);
    println!();
    println!(
        "swaps through the API: {} ({swaps} under load, {} upload-to-serving); version switches made by the worker: {}",
        swaps + upload_ms.len(),
        upload_ms.len(),
        p_ms.len()
    );
    println!(
        "processing pause per switch (ms): min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        pct(&p_ms, 0.0),
        pct(&p_ms, 0.5),
        pct(&p_ms, 0.9),
        pct(&p_ms, 0.99),
        pct(&p_ms, 1.0)
    );
    println!(
        "swap API call (ms): p50 {:.2}  p99 {:.2}  max {:.2}",
        pct(&api_ms, 0.5),
        pct(&api_ms, 0.99),
        pct(&api_ms, 1.0)
    );
    println!(
        "upload to serving, {size}-byte component (ms): median {:.1}  max {:.1} (target <= 200)",
        pct(&upload_ms, 0.5),
        pct(&upload_ms, 1.0)
    );
    println!(
        "  of which the upload request (ms): median {:.1}, the compilation inside it: median {:.1}",
        pct(&upload_only_ms, 0.5),
        pct(&compile_ms, 0.5)
    );
    println!(
        "events: {total} sent, {} with a stored prediction, {duplicates} duplicates, {unnamed} without a version",
        ids.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "swap_pause_p99_ms={:.3} lost_events={lost}",
        pct(&p_ms, 0.99)
    );
    Ok(())
}
