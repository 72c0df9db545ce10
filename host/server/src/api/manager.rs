//! The pipelines the server runs: one durable worker thread per started pipeline, with the
//! stage slots, model variants and figures the API acts on.
//!
//! Tenancy reaches Kafka and the database through names: a tenant's pipeline `p` is stored
//! as `t<tenant id>.p` (its checkpoints, results, state and deployments), and every topic
//! its spec names is prefixed with `<tenant name>.`, so one tenant's spec cannot read or
//! write another tenant's topics.

use super::ApiConfig;
use super::ceilings;
use super::error::ApiError;
use super::quotas::{self, Quota, Quotas};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use weir_engine::{Deployment, Engine, Manifest, Plugin, PluginKind, Slot};
use weir_store::{NewDeployment, PipelineRecord, PluginRecord, Store, TenantRecord};
use weir_stream::metrics::{ModelVariants, PipelineMetrics};
use weir_stream::pipeline::{Pipeline, StageSlots};
use weir_stream::spec::{PipelineSpec, SpecBounds, StageSpec};
use weir_worker::kafka::Broker;
use weir_worker::{CpuShare, Durability, Progress, TenantShare, WorkerOptions, spec_topics};

/// Actions recorded in `deployments.actor` that change what a stage serves.
const SERVING_ACTIONS: [&str; 5] = [
    "api/deploy",
    "api/swap",
    "api/rollback",
    "api/promote canary",
    "api/promote shadow",
];

/// The name a tenant's pipeline has in the database.
pub fn internal_name(tenant: i64, name: &str) -> String {
    format!("t{tenant}.{name}")
}

/// Checks a pipeline or plugin name: 1–64 of `[A-Za-z0-9_-]`, starting with a letter or
/// digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// A stage of a spec: its name, spec and the kind of plugin it takes.
pub fn stages(spec: &PipelineSpec) -> Vec<(String, &StageSpec, PluginKind)> {
    let mut out = Vec::new();
    if let Some(s) = &spec.extractor {
        out.push(("extractor".to_owned(), s, PluginKind::Extractor));
    }
    if let Some(s) = &spec.model {
        out.push(("model".to_owned(), s, PluginKind::Model));
    }
    for (i, s) in spec.operators.iter().enumerate() {
        out.push((format!("operator-{i}"), s, PluginKind::Operator));
    }
    if let Some(s) = spec.window.as_ref().and_then(|w| w.operator.as_ref()) {
        out.push(("window".to_owned(), s, PluginKind::Operator));
    }
    out
}

/// The admin's stored overrides for a tenant (`{"sandbox": {..}}`; `{}` when none).
pub fn tenant_overrides(rec: &TenantRecord) -> Result<serde_json::Value, ApiError> {
    match &rec.limits {
        None => Ok(serde_json::json!({})),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| ApiError::internal(format!("tenant {}'s stored limits: {e}", rec.id))),
    }
}

/// Parses a spec as a tenant wrote it, within `bounds` (422 with line and column when it is
/// invalid or over a bound).
pub fn parse_spec(text: &str, bounds: &SpecBounds) -> Result<PipelineSpec, ApiError> {
    PipelineSpec::parse_bounded(text, bounds)
        .map_err(|e| ApiError::unprocessable("invalid_spec", e.to_string()))
}

/// The spec as the worker runs it: the internal name, and every topic in the tenant's
/// namespace (each still a valid Kafka topic with the prefix: 422 otherwise).
pub fn tenant_spec(
    text: &str,
    tenant: i64,
    tenant_name: &str,
    bounds: &SpecBounds,
) -> Result<PipelineSpec, ApiError> {
    let mut spec = parse_spec(text, bounds)?;
    let ns = |t: &str| format!("{tenant_name}.{t}");
    let name = internal_name(tenant, spec.name.get_ref());
    spec.name = toml::Spanned::new(spec.name.span(), name);
    spec.source.topic =
        toml::Spanned::new(spec.source.topic.span(), ns(spec.source.topic.get_ref()));
    let sink = &mut spec.sink;
    sink.shadow_topic = Some(ns(&sink.shadow_topic()));
    sink.topic = ns(&sink.topic);
    sink.dead_letter_topic = ns(&sink.dead_letter_topic);
    sink.windows_topic = sink.windows_topic.as_deref().map(ns);
    sink.late_topic = sink.late_topic.as_deref().map(ns);
    for t in spec_topics(&spec)
        .into_iter()
        .map(|(t, _)| t)
        .chain([spec.sink.shadow_topic()])
    {
        weir_stream::spec::check_topic(&t).map_err(|m| {
            ApiError::unprocessable(
                "invalid_spec",
                format!("with the tenant's prefix `{tenant_name}.`: {m}"),
            )
        })?;
    }
    Ok(spec)
}

/// A canary or shadow as the API shows it.
#[derive(Debug, Clone)]
pub struct VariantInfo {
    /// The plugin it runs.
    pub plugin: PluginRecord,
    /// Its version id.
    pub version: String,
    /// Canary only: the share of keys.
    pub percent: Option<f64>,
}

/// A started pipeline.
pub struct Running {
    /// Tenant id.
    pub tenant: i64,
    /// Pipeline id.
    pub pipeline_id: i64,
    /// The database name (`t<tenant>.<name>`).
    pub internal: String,
    /// The spec as the worker runs it.
    pub spec: PipelineSpec,
    /// Stage slots.
    pub slots: StageSlots,
    /// Per-stage figures.
    pub metrics: Arc<PipelineMetrics>,
    /// Training figures, when the model trains in the host.
    pub training: Option<Arc<weir_stream::training::TrainingShared>>,
    /// Worker progress.
    pub progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
    /// Set when the worker ended (stopped or failed).
    pub finished: Arc<AtomicBool>,
    /// The worker's error, if it failed.
    pub error: Arc<Mutex<Option<String>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Every plugin that served here, by version id (for names in listings).
    pub versions: Mutex<HashMap<String, PluginRecord>>,
    /// The model's canary.
    pub canary: Mutex<Option<VariantInfo>>,
    /// The model's shadow.
    pub shadow: Mutex<Option<VariantInfo>>,
}

impl Running {
    /// The slot of a stage (`extractor`, `model`, `operator-N`, `window`).
    pub fn slot(&self, stage: &str) -> Option<&Arc<Slot>> {
        match stage {
            "extractor" => self.slots.extractor.as_ref(),
            "model" => self.slots.model.as_ref(),
            "window" => self.slots.window_operator.as_ref(),
            s => s
                .strip_prefix("operator-")
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| self.slots.operators.get(i)),
        }
    }

    /// The model's variants.
    pub fn variants(&self) -> &Arc<ModelVariants> {
        &self.slots.variants
    }

    /// The plugin record of a version that served here.
    pub fn plugin_of(&self, version: &str) -> Option<PluginRecord> {
        let versions = lock(&self.versions);
        if let Some(r) = versions.get(version) {
            return Some(r.clone());
        }
        // A version the trainer made: the serving plugin with trained parameters.
        let sha = self.slot("model").and_then(|s| {
            s.history()
                .into_iter()
                .find(|d| d.version.0 == version)
                .map(|d| d.plugin.id().0.clone())
        })?;
        versions.values().find(|r| r.sha256 == sha).cloned()
    }

    /// True while the worker runs.
    pub fn is_alive(&self) -> bool {
        !self.finished.load(Ordering::Relaxed)
    }

    /// Every plugin sha256 this pipeline serves now (stages, canary, shadow).
    pub fn serving_plugins(&self) -> Vec<String> {
        let mut out: Vec<String> = [
            self.slots.extractor.as_ref(),
            self.slots.model.as_ref(),
            self.slots.window_operator.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(self.slots.operators.iter())
        .map(|s| s.current().plugin.id().0.clone())
        .collect();
        let v = self.slots.variants.get();
        if let Some(c) = v.canary {
            out.push(c.slot.current().plugin.id().0.clone());
        }
        if let Some(s) = v.shadow {
            out.push(s.current().plugin.id().0.clone());
        }
        out
    }
}

/// Locks a mutex, ignoring poisoning (the data is plain bookkeeping).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs and tracks the started pipelines.
pub struct Manager {
    store: Arc<Store>,
    engine: Engine,
    broker: Broker,
    compile_timeout: Duration,
    /// Compilations running at once, server-wide (a bounded pool: an abandoned compile
    /// holds its place until it really ends).
    compile_pool: Arc<tokio::sync::Semaphore>,
    ceiling: Manifest,
    quotas: Quotas,
    bounds: SpecBounds,
    /// The tenants' shares of the CPU (`None`: the OS's scheduling alone).
    cpu: Option<Arc<CpuShare>>,
    running: Mutex<HashMap<i64, Arc<Running>>>,
    /// One lock per tenant, held while a quota is checked and the object it counts is
    /// made: concurrent calls cannot both pass the check.
    tenant_locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// One lock per pipeline, held through each start, stop and delete: transitions of one
    /// pipeline happen one at a time, so concurrent calls cannot start a second worker or
    /// start one for a pipeline being deleted.
    transitions: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Manager {
    /// A manager running pipelines over `broker`.
    pub fn new(store: Arc<Store>, engine: Engine, broker: Broker, config: &ApiConfig) -> Self {
        Manager {
            store,
            engine,
            broker,
            compile_timeout: config.compile_timeout,
            compile_pool: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            ceiling: config.ceiling.clone(),
            quotas: config.quotas,
            bounds: config.spec_bounds.clone(),
            cpu: config.fair_cpu.then(CpuShare::of_this_machine),
            running: Mutex::default(),
            transitions: Mutex::default(),
            tenant_locks: Mutex::default(),
        }
    }

    /// Waits for the pipeline's transition lock.
    async fn transition(&self, pipeline_id: i64) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.transitions)
            .entry(pipeline_id)
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Waits for the tenant's quota lock: hold it from a quota check until the object it
    /// counts exists.
    pub async fn tenant_lock(&self, tenant: i64) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.tenant_locks).entry(tenant).or_default().clone();
        m.lock_owned().await
    }

    /// The Kafka bootstrap servers.
    pub fn kafka(&self) -> String {
        self.broker.bootstrap()
    }

    /// The running pipeline with this id, if any (callers check the tenant first).
    pub fn get(&self, pipeline_id: i64) -> Option<Arc<Running>> {
        lock(&self.running).get(&pipeline_id).cloned()
    }

    /// Every started pipeline.
    pub fn all(&self) -> Vec<Arc<Running>> {
        lock(&self.running).values().cloned().collect()
    }

    /// Compiles a plugin off the async executor, in the server's bounded compile pool, with
    /// the compile timeout (waiting for the pool counts). A compile that times out cannot
    /// be interrupted: it runs to its end in the background, holding its place in the pool
    /// and `permit` (the tenant's compile permit) until then, so neither limit can be
    /// exceeded by timing out. `fresh` compiles even when the plugin is cached (uploads).
    pub async fn load(
        &self,
        bytes: Vec<u8>,
        manifest: Manifest,
        fresh: bool,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Arc<Plugin>, ApiError> {
        let engine = self.engine.clone();
        let pool = self.compile_pool.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let gave_up = abandoned.clone();
        let job = async move {
            let slot = pool.acquire_owned().await.map_err(ApiError::internal)?;
            tokio::task::spawn_blocking(move || {
                let _held = (slot, permit);
                let id = weir_engine::PluginId::of(&bytes);
                let cached = engine.is_cached(&id);
                let loaded = if fresh {
                    engine.load_fresh(&bytes, manifest)
                } else {
                    engine.load(&bytes, manifest)
                };
                // Nobody will use what an abandoned compile leaves in the cache.
                if gave_up.load(Ordering::Relaxed) && !cached {
                    engine.evict(&id);
                }
                loaded
            })
            .await
            .map_err(ApiError::internal)
        };
        match tokio::time::timeout(self.compile_timeout, job).await {
            Err(_) => {
                abandoned.store(true, Ordering::Relaxed);
                Err(ApiError::unavailable(format!(
                    "compilation took longer than {} s",
                    self.compile_timeout.as_secs()
                )))
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(Err(e))) => Err(ApiError::unprocessable("invalid_plugin", e.to_string())),
            Ok(Ok(Ok(p))) => Ok(p),
        }
    }

    /// Drops a compiled plugin from the engine's cache once no tenant stores it and no
    /// running pipeline serves it (a worker's own handle keeps it alive meanwhile anyway).
    pub async fn release_compiled(&self, sha256: &str) {
        let served = self
            .all()
            .iter()
            .any(|r| r.is_alive() && r.serving_plugins().iter().any(|s| s == sha256));
        if served {
            return;
        }
        match self.store.sha256_stored(sha256).await {
            Ok(false) => self.engine.evict(&weir_engine::PluginId(sha256.to_owned())),
            Ok(true) => {}
            Err(e) => tracing::warn!("keeping a compiled plugin cached: {e}"),
        }
    }

    /// Resolves a tenant's plugin reference and checks it fits a stage of `kind`.
    pub async fn resolve(
        &self,
        tenant: i64,
        reference: &str,
        kind: PluginKind,
        stage: &str,
    ) -> Result<PluginRecord, ApiError> {
        let p = self
            .store
            .plugin_by_ref(tenant, reference)
            .await?
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "unknown_plugin",
                    format!("stage `{stage}`: no plugin `{reference}` (upload it first)"),
                )
            })?;
        if p.world != kind.as_str() {
            return Err(ApiError::unprocessable(
                "wrong_kind",
                format!(
                    "stage `{stage}` takes a {} plugin; {}@{} is a {}",
                    kind.as_str(),
                    p.name,
                    p.version,
                    p.world
                ),
            ));
        }
        Ok(p)
    }

    /// The bounds on tenants' specs.
    pub fn bounds(&self) -> &SpecBounds {
        &self.bounds
    }

    /// A tenant's sandbox ceiling: the server's, with the admin's overrides for it.
    pub async fn ceiling(&self, tenant: i64) -> Result<Manifest, ApiError> {
        self.ceiling_of(&self.tenant_record(tenant).await?)
    }

    /// A tenant's sandbox ceiling, from its record.
    pub fn ceiling_of(&self, rec: &TenantRecord) -> Result<Manifest, ApiError> {
        let overrides = tenant_overrides(rec)?;
        ceilings::effective(&self.ceiling, overrides.get("sandbox"))
            .map_err(|e| ApiError::internal(format!("tenant {}'s stored limits: {e}", rec.id)))
    }

    async fn tenant_record(&self, tenant: i64) -> Result<TenantRecord, ApiError> {
        self.store
            .tenant(tenant)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("tenant {tenant}")))
    }

    /// The server's default quotas.
    pub fn default_quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// A tenant's quotas, from its record: the server's, with the admin's overrides.
    pub fn quotas_of(&self, rec: &TenantRecord) -> Result<Quotas, ApiError> {
        let overrides = tenant_overrides(rec)?;
        ceilings::overlay(&self.quotas, overrides.get("quotas"))
            .map_err(|e| ApiError::internal(format!("tenant {}'s stored quotas: {e}", rec.id)))
    }

    /// What a tenant uses of its quotas now.
    pub async fn usage(&self, tenant: i64) -> Result<Quotas, ApiError> {
        let stored = self.store.tenant_usage(tenant).await?;
        let running = lock(&self.running)
            .values()
            .filter(|r| r.tenant == tenant && r.is_alive())
            .count() as u64;
        Ok(Quotas {
            pipelines: stored.pipelines,
            running_pipelines: running,
            plugins: stored.plugins,
            plugin_bytes: stored.plugin_bytes,
        })
    }

    /// Checks that a tenant may add `adding` of each `quota` (403 `quota_exceeded` naming
    /// the first one reached otherwise). Hold [`Manager::tenant_lock`] until the objects
    /// exist.
    pub async fn check_quota(&self, tenant: i64, adding: &[(Quota, u64)]) -> Result<(), ApiError> {
        let quotas = self.quotas_of(&self.tenant_record(tenant).await?)?;
        let usage = self.usage(tenant).await?;
        for &(quota, n) in adding {
            quotas::check(&quotas, &usage, quota, n)?;
        }
        Ok(())
    }

    /// The server's default sandbox ceiling.
    pub fn default_ceiling(&self) -> &Manifest {
        &self.ceiling
    }

    /// Checks every stage of a tenant's spec against the tenant's ceiling.
    pub async fn check_ceiling(&self, tenant: i64, spec: &PipelineSpec) -> Result<(), ApiError> {
        let ceiling = self.ceiling(tenant).await?;
        for (stage, s, _) in stages(spec) {
            ceilings::stage_manifest(&stage, s, &ceiling)?;
        }
        Ok(())
    }

    /// A deployment of a stored plugin with a stage's config and limits (within the
    /// tenant's ceiling).
    pub async fn deployment(
        &self,
        tenant: i64,
        record: &PluginRecord,
        stage_name: &str,
        stage: &StageSpec,
    ) -> Result<Arc<Deployment>, ApiError> {
        let ceiling = self.ceiling(tenant).await?;
        let manifest = ceilings::stage_manifest(stage_name, stage, &ceiling)?;
        let bytes = self
            .store
            .plugin_bytes(tenant, record.id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("plugin {}", record.id)))?;
        let plugin = self.load(bytes, manifest, false, None).await?;
        Ok(Deployment::new(plugin, stage.config_json()))
    }

    /// What each stage of a stored pipeline serves: the last serving change made through
    /// the API, or the spec's plugin.
    pub async fn effective_plugins(
        &self,
        tenant: i64,
        record: &PipelineRecord,
        spec: &PipelineSpec,
    ) -> Result<Vec<(String, PluginRecord)>, ApiError> {
        let history = self
            .store
            .deployments(&internal_name(tenant, &record.name))
            .await?;
        let mut out = Vec::new();
        for (stage, s, kind) in stages(spec) {
            let last = history.iter().rev().find(|d| {
                d.stage == stage
                    && d.partition.is_none()
                    && SERVING_ACTIONS.contains(&d.actor.as_str())
            });
            let reference = match last {
                Some(d) => format!("sha256:{}", d.plugin_sha256),
                None => s.plugin.get_ref().clone(),
            };
            out.push((
                stage.clone(),
                self.resolve(tenant, &reference, kind, &stage).await?,
            ));
        }
        Ok(out)
    }

    /// Starts a stored pipeline's worker.
    pub async fn start(
        &self,
        tenant: i64,
        tenant_name: &str,
        record: &PipelineRecord,
    ) -> Result<Arc<Running>, ApiError> {
        let _transition = self.transition(record.id).await;
        let _quota = self.tenant_lock(tenant).await;
        // Read again under the lock: a delete may have come first.
        let record = &self
            .store
            .pipeline(tenant, record.id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("pipeline {}", record.id)))?;
        if let Some(r) = self.get(record.id) {
            if r.is_alive() {
                return Err(ApiError::conflict("the pipeline is already running"));
            }
            self.reap(record.id).await;
        }
        self.check_quota(tenant, &[(Quota::RunningPipelines, 1)])
            .await?;
        let spec = tenant_spec(&record.spec, tenant, tenant_name, &self.bounds)?;
        let plugins = self.effective_plugins(tenant, record, &spec).await?;
        let mut versions = HashMap::new();
        let mut slots = StageSlots::default();
        for ((stage, s, _), (_, p)) in stages(&spec).into_iter().zip(plugins) {
            let d = self.deployment(tenant, &p, &stage, s).await?;
            versions.insert(d.version.0.clone(), p);
            let slot = Slot::new(d);
            match stage.as_str() {
                "extractor" => slots.extractor = Some(slot),
                "model" => slots.model = Some(slot),
                "window" => slots.window_operator = Some(slot),
                _ => slots.operators.push(slot),
            }
        }
        let (canary, shadow) = self
            .resume_variants(tenant, record, &spec, &slots, &mut versions)
            .await;
        let pipeline = Pipeline::new(&spec, slots.clone())
            .map_err(|e| ApiError::unprocessable("invalid_spec", e.to_string()))?;
        // The topics exist when `start` answers, so records produced right after it land
        // in the topic the pipeline reads, with its partitions.
        // A shadow can start at any time through the API: its topic exists from the start.
        let mut topics = spec_topics(&spec);
        if spec.model.is_some() {
            topics.push((spec.sink.shadow_topic(), 1));
        }
        let broker = self.broker.clone();
        tokio::task::spawn_blocking(move || broker.ensure_topics(&topics))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
        let running = Arc::new(Running {
            tenant,
            pipeline_id: record.id,
            internal: internal_name(tenant, &record.name),
            spec: spec.clone(),
            slots,
            metrics: pipeline.metrics(),
            training: pipeline.training(),
            progress: Arc::default(),
            stop: Arc::default(),
            finished: Arc::default(),
            error: Arc::default(),
            thread: Mutex::new(None),
            versions: Mutex::new(versions),
            canary: Mutex::new(canary),
            shadow: Mutex::new(shadow),
        });
        let (store, rt) = (self.store.clone(), Handle::current());
        let opts = WorkerOptions {
            stop: running.stop.clone(),
            progress: running.progress.clone(),
            group: Some(format!("weir-{}", running.internal)),
            cpu_share: self.cpu.as_ref().map(|share| TenantShare {
                share: share.clone(),
                tenant,
            }),
            ..WorkerOptions::new(
                self.broker.clone(),
                Durability::Database {
                    store: store.clone(),
                    rt: rt.clone(),
                    predictions: true,
                },
            )
        };
        let (finished, error, id) = (running.finished.clone(), running.error.clone(), record.id);
        let thread = std::thread::Builder::new()
            .name(format!("pipeline-{}", record.id))
            .spawn(move || {
                let result = weir_worker::run(&spec, pipeline, opts);
                if let Err(e) = result {
                    let message = format!("{e:#}");
                    tracing::error!("pipeline {id} failed: {message}");
                    *lock(&error) = Some(message.clone());
                    let _ = rt.block_on(store.set_pipeline_failed(tenant, id, &message));
                }
                finished.store(true, Ordering::Relaxed);
            })
            .map_err(ApiError::internal)?;
        *lock(&running.thread) = Some(thread);
        self.store
            .set_pipeline_status(tenant, record.id, "running")
            .await?;
        lock(&self.running).insert(record.id, running.clone());
        Ok(running)
    }

    /// The model's canary and shadow as the API left them (from the deployment history),
    /// set on `slots` so a restart resumes them. A variant whose plugin cannot be served
    /// any more is dropped with a warning; the pipeline still starts.
    async fn resume_variants(
        &self,
        tenant: i64,
        record: &PipelineRecord,
        spec: &PipelineSpec,
        slots: &StageSlots,
        versions: &mut HashMap<String, PluginRecord>,
    ) -> (Option<VariantInfo>, Option<VariantInfo>) {
        let Some(stage) = spec.model.as_ref() else {
            return (None, None);
        };
        let Ok(history) = self
            .store
            .deployments(&internal_name(tenant, &record.name))
            .await
        else {
            return (None, None);
        };
        let (mut canary, mut shadow): (Option<(String, f64)>, Option<String>) = (None, None);
        for d in history
            .iter()
            .filter(|d| d.stage == "model" && d.partition.is_none())
        {
            let a = d.actor.as_str();
            if let Some(p) = a
                .strip_prefix("api/canary ")
                .and_then(|p| p.strip_suffix('%'))
            {
                canary = p.parse().ok().map(|p| (d.plugin_sha256.clone(), p));
            } else if a == "api/shadow" {
                shadow = Some(d.plugin_sha256.clone());
            } else if a == "api/end-canary" || a == "api/promote canary" {
                canary = None;
            } else if a == "api/end-shadow" || a == "api/promote shadow" {
                shadow = None;
            }
        }
        let mut v = weir_stream::metrics::Variants::default();
        let mut load = async |sha: &str, percent: Option<f64>| {
            let loaded: Result<_, ApiError> = async {
                let rec = self
                    .resolve(tenant, &format!("sha256:{sha}"), PluginKind::Model, "model")
                    .await?;
                let d = self.deployment(tenant, &rec, "model", stage).await?;
                Ok((rec, d))
            }
            .await;
            match loaded {
                Ok((rec, d)) => {
                    versions.insert(d.version.0.clone(), rec.clone());
                    let info = VariantInfo {
                        plugin: rec,
                        version: d.version.0.clone(),
                        percent,
                    };
                    Some((info, Slot::new(d)))
                }
                Err(e) => {
                    tracing::warn!(
                        "pipeline {}: not resuming a variant: {}",
                        record.name,
                        e.message
                    );
                    None
                }
            }
        };
        let mut out = (None, None);
        if let Some((sha, p)) = canary
            && let Some((info, slot)) = load(&sha, Some(p)).await
        {
            v.canary = Some(weir_stream::metrics::Canary { slot, percent: p });
            out.0 = Some(info);
        }
        if let Some(sha) = shadow
            && let Some((info, slot)) = load(&sha, None).await
        {
            v.shadow = Some(slot);
            out.1 = Some(info);
        }
        slots.variants.set(v);
        out
    }

    /// Stops a pipeline's worker (it commits first) and waits for it.
    pub async fn stop(&self, tenant: i64, pipeline_id: i64) -> Result<bool, ApiError> {
        let _transition = self.transition(pipeline_id).await;
        let was = self.reap(pipeline_id).await;
        self.store
            .set_pipeline_status(tenant, pipeline_id, "stopped")
            .await?;
        Ok(was)
    }

    /// Deletes a pipeline and all its data: its worker is stopped first, and no start can
    /// slip in between (both hold the pipeline's transition lock).
    pub async fn delete(&self, tenant: i64, pipeline_id: i64, name: &str) -> Result<(), ApiError> {
        let _transition = self.transition(pipeline_id).await;
        self.reap(pipeline_id).await;
        self.store
            .reset_pipeline(&internal_name(tenant, name))
            .await?;
        self.store.delete_pipeline(tenant, pipeline_id).await?;
        lock(&self.transitions).remove(&pipeline_id);
        Ok(())
    }

    /// Stops and forgets a worker; true if there was one.
    async fn reap(&self, pipeline_id: i64) -> bool {
        let Some(r) = lock(&self.running).remove(&pipeline_id) else {
            return false;
        };
        r.stop.store(true, Ordering::Relaxed);
        let thread = lock(&r.thread).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        true
    }

    /// Stops every worker (server shutdown); their status stays `running` so they resume
    /// on the next start.
    pub async fn shutdown(&self) {
        let ids: Vec<i64> = lock(&self.running).keys().copied().collect();
        for id in ids {
            self.reap(id).await;
        }
    }

    /// Records a serving change (or a canary/shadow start) made through the API.
    pub async fn record(
        &self,
        running_or_internal: &str,
        stage: &str,
        plugin: &PluginRecord,
        version: &str,
        action: &str,
    ) -> Result<i64, ApiError> {
        Ok(self
            .store
            .record_deployment(NewDeployment {
                pipeline: running_or_internal.to_owned(),
                stage: stage.to_owned(),
                plugin_sha256: plugin.sha256.clone(),
                version_label: version.to_owned(),
                actor: action.to_owned(),
                at_ms: crate::run::now_ms() as i64,
                partition: None,
                offset: None,
            })
            .await?)
    }
}
