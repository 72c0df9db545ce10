//! Handlers for pipelines: lifecycle, deployments (swap, rollback, canary, shadow,
//! promote), figures and results.

use super::auth::CursorBody;
use super::error::{ApiError, ErrorBody};
use super::gaps::GapSummary;
use super::handlers::{json, parse, tenant};
use super::manager::{VariantInfo, internal_name, lock, parse_spec, stages, valid_name};
use super::quotas::Quota;
use super::{AppState, Reply};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use warp::Reply as _;
use warp::http::StatusCode;
use weir_engine::VersionId;
use weir_store::{PipelineRecord, ResultFilter};
use weir_stream::metrics::{Canary, Variants};
use weir_stream::spec::SpecBounds;

/// A new pipeline.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewPipeline {
    /// The spec, TOML (see `examples/workload.toml`). Stage plugins name the tenant's
    /// uploads: `name`, `name@version` or `sha256:<hex>`. Topics are the tenant's own.
    pub spec: String,
}

/// What a stage serves.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StageInfo {
    /// `extractor`, `model`, `operator-N` or `window`.
    pub stage: String,
    /// The plugin (`name@version`).
    pub plugin: String,
    /// Its sha256.
    pub sha256: String,
    /// The serving version id (plugin and config), when running.
    pub version: Option<String>,
    /// Versions that served before, oldest first (rollback targets), when running.
    pub history: Vec<String>,
}

/// A canary or shadow.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VariantView {
    /// The plugin (`name@version`).
    pub plugin: String,
    /// Its sha256.
    pub sha256: String,
    /// Version id.
    pub version: String,
    /// Canary only: share of keys, percent.
    pub percent: Option<f64>,
}

impl From<&VariantInfo> for VariantView {
    fn from(v: &VariantInfo) -> Self {
        VariantView {
            plugin: format!("{}@{}", v.plugin.name, v.plugin.version),
            sha256: v.plugin.sha256.clone(),
            version: v.version.clone(),
            percent: v.percent,
        }
    }
}

/// Live counters of a running pipeline.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Counters {
    /// Source records read.
    pub records_in: u64,
    /// Per-event results.
    pub results_out: u64,
    /// Window results.
    pub windows_out: u64,
    /// Late events.
    pub late: u64,
    /// Dead letters.
    pub dead: u64,
    /// Current watermark, ms.
    pub watermark: i64,
    /// Partitions of the source topic this worker owns.
    pub partitions: usize,
    /// Seconds without any partition assigned, while none is (another worker of the group
    /// holds them all, or the topic has none).
    pub unassigned_s: Option<f64>,
    /// Records skipped because they were processed before (replays after a restart).
    pub skipped: u64,
    /// Errors the consumer reported (the broker unreachable, for example).
    pub source_errors: u64,
    /// Events whose key's state is kept with another partition (the one the key was first
    /// seen on). Fine with one worker; with several, the input must be keyed by the event's
    /// key.
    pub key_hops: u64,
}

/// A pipeline.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineInfo {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// `created`, `running`, `stopped` or `failed`.
    pub status: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// The spec as submitted.
    pub spec: String,
    /// The Kafka topic it reads (in the tenant's namespace).
    pub source_topic: String,
    /// The topic its per-event results go to.
    pub sink_topic: String,
    /// The topic a shadow's scores go to.
    pub shadow_topic: String,
    /// What each stage serves.
    pub stages: Vec<StageInfo>,
    /// The model's canary.
    pub canary: Option<VariantView>,
    /// The model's shadow.
    pub shadow: Option<VariantView>,
    /// Counters, when running.
    pub counters: Option<Counters>,
    /// Input lost or skipped (see `GET /v1/pipelines/{id}/gaps`).
    pub gaps: GapSummary,
    /// Why it failed.
    pub error: Option<String>,
}

pub(super) async fn own(
    state: &AppState,
    tenant: i64,
    id: i64,
) -> Result<PipelineRecord, ApiError> {
    state
        .store
        .pipeline(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pipeline {id}")))
}

async fn info(
    state: &AppState,
    tenant: i64,
    tname: &str,
    p: PipelineRecord,
) -> Result<PipelineInfo, ApiError> {
    let spec = super::manager::tenant_spec(&p.spec, tenant, tname, &SpecBounds::unlimited())?;
    let running = state.manager.get(p.id).filter(|r| r.tenant == tenant);
    let mut stage_list = Vec::new();
    if let Some(r) = running.as_ref() {
        for (stage, _, _) in stages(&spec) {
            let Some(slot) = r.slot(&stage) else { continue };
            let cur = slot.current();
            let rec = r.plugin_of(&cur.version.0);
            stage_list.push(StageInfo {
                stage,
                plugin: rec
                    .as_ref()
                    .map(|x| format!("{}@{}", x.name, x.version))
                    .unwrap_or_default(),
                sha256: cur.plugin.id().0.clone(),
                version: Some(cur.version.0.clone()),
                history: slot.history().iter().map(|d| d.version.0.clone()).collect(),
            });
        }
    } else if let Ok(list) = state.manager.effective_plugins(tenant, &p, &spec).await {
        for (stage, rec) in list {
            stage_list.push(StageInfo {
                stage,
                plugin: format!("{}@{}", rec.name, rec.version),
                sha256: rec.sha256,
                version: None,
                history: Vec::new(),
            });
        }
    }
    let (canary, shadow, counters, error) = match running.as_ref() {
        Some(r) => {
            let pr = lock(&r.progress);
            let st = &pr.stats;
            (
                lock(&r.canary).as_ref().map(VariantView::from),
                lock(&r.shadow).as_ref().map(VariantView::from),
                Some(Counters {
                    records_in: st.records_in,
                    results_out: st.results_out,
                    windows_out: st.windows_out,
                    late: st.late,
                    dead: st.dead,
                    watermark: st.watermark,
                    partitions: pr.partitions,
                    unassigned_s: pr.idle_for.map(|d| d.as_secs_f64()),
                    skipped: pr.skipped,
                    source_errors: pr.source_errors,
                    key_hops: st.key_hops,
                }),
                lock(&r.error).clone().or_else(|| p.error.clone()),
            )
        }
        None => (None, None, None, p.error.clone()),
    };
    let gaps = super::gaps::summary(state, tenant, &p).await?;
    Ok(PipelineInfo {
        id: p.id,
        name: p.name,
        status: p.status,
        created_at: p.created_at,
        spec: p.spec,
        source_topic: spec.source.topic.get_ref().clone(),
        sink_topic: spec.sink.topic.clone(),
        shadow_topic: spec.sink.shadow_topic(),
        stages: stage_list,
        canary,
        shadow,
        counters,
        gaps,
        error,
    })
}

/// Creates a pipeline from a spec (422 with line and column when the spec is invalid, or
/// when a stage names a plugin the tenant does not have or of the wrong kind).
#[utoipa::path(post, path = "/v1/pipelines", tag = "pipelines", security(("bearer" = [])),
    request_body = NewPipeline,
    responses((status = 201, description = "Created (not started)", body = PipelineInfo),
              (status = 400, description = "Bad request", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 403, description = "The tenant's `pipelines` quota is reached", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 422, description = "Invalid spec", body = ErrorBody)))]
pub async fn create(authz: Option<String>, body: bytes::Bytes, state: Arc<AppState>) -> Reply {
    let (tenant, tname) = tenant(&state, authz).await?;
    let req: NewPipeline = parse(&body)?;
    // Within the server's bounds, every topic valid with the tenant's prefix, every stage
    // within the tenant's sandbox ceiling.
    super::manager::tenant_spec(&req.spec, tenant, &tname, state.manager.bounds())?;
    let spec = parse_spec(&req.spec, state.manager.bounds())?;
    state.manager.check_ceiling(tenant, &spec).await?;
    let name = spec.name.get_ref().clone();
    if !valid_name(&name) {
        return Err(ApiError::unprocessable(
            "invalid_spec",
            "pipeline names are 1-64 of [A-Za-z0-9_-], starting with a letter or digit",
        )
        .into());
    }
    for (stage, s, kind) in stages(&spec) {
        state
            .manager
            .resolve(tenant, s.plugin.get_ref(), kind, &stage)
            .await?;
        if s.train && kind != weir_engine::PluginKind::Model {
            return Err(ApiError::unprocessable(
                "invalid_spec",
                format!("stage `{stage}`: only a model trains"),
            )
            .into());
        }
    }
    let rec = {
        let _quota = state.manager.tenant_lock(tenant).await;
        state
            .manager
            .check_quota(tenant, &[(Quota::Pipelines, 1)])
            .await?;
        state
            .store
            .insert_pipeline(tenant, &name, &req.spec)
            .await
            .map_err(ApiError::from)?
    };
    let body = info(&state, tenant, &tname, rec).await?;
    Ok(json(StatusCode::CREATED, &body))
}

/// Lists the caller's pipelines.
#[utoipa::path(get, path = "/v1/pipelines", tag = "pipelines", security(("bearer" = [])),
    responses((status = 200, description = "The tenant's pipelines", body = [PipelineInfo]),
              (status = 401, description = "No valid key", body = ErrorBody)))]
pub async fn list(authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, tname) = tenant(&state, authz).await?;
    let mut out = Vec::new();
    for p in state
        .store
        .pipelines(tenant)
        .await
        .map_err(ApiError::from)?
    {
        out.push(info(&state, tenant, &tname, p).await?);
    }
    Ok(json(StatusCode::OK, &out))
}

/// A pipeline: status, what each stage serves, canary and shadow, counters.
#[utoipa::path(get, path = "/v1/pipelines/{id}", tag = "pipelines", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1)),
    responses((status = 200, description = "The pipeline", body = PipelineInfo),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn get(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, tname) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    Ok(json(
        StatusCode::OK,
        &info(&state, tenant, &tname, p).await?,
    ))
}

/// Starts a pipeline: it resumes from its stored positions and state.
#[utoipa::path(post, path = "/v1/pipelines/{id}/start", tag = "pipelines", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1)),
    responses((status = 200, description = "Running", body = PipelineInfo),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 403, description = "The tenant's `running_pipelines` quota is reached", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody),
              (status = 409, description = "Already running", body = ErrorBody),
              (status = 422, description = "A stage cannot be served", body = ErrorBody),
              (status = 503, description = "The broker cannot be reached, or refused to create the pipeline's topics", body = ErrorBody)))]
pub async fn start(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, tname) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    state.manager.start(tenant, &tname, &p).await?;
    let p = own(&state, tenant, id).await?;
    Ok(json(
        StatusCode::OK,
        &info(&state, tenant, &tname, p).await?,
    ))
}

/// Stops a pipeline (it commits its last checkpoint first).
#[utoipa::path(post, path = "/v1/pipelines/{id}/stop", tag = "pipelines", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1)),
    responses((status = 200, description = "Stopped", body = PipelineInfo),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn stop(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, tname) = tenant(&state, authz).await?;
    own(&state, tenant, id).await?;
    state.manager.stop(tenant, id).await?;
    let p = own(&state, tenant, id).await?;
    Ok(json(
        StatusCode::OK,
        &info(&state, tenant, &tname, p).await?,
    ))
}

/// Deletes a pipeline and all its data (results, state, checkpoints, history); it is
/// stopped first.
#[utoipa::path(delete, path = "/v1/pipelines/{id}", tag = "pipelines", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1)),
    responses((status = 204, description = "Deleted"),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn delete(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    state.manager.delete(tenant, id, &p.name).await?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}

/// A recorded deployment event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentInfo {
    /// Id (increasing).
    pub id: i64,
    /// Stage (`model-canary` for a canary's first rows).
    pub stage: String,
    /// Plugin sha256.
    pub sha256: String,
    /// Version id.
    pub version: String,
    /// What made it: `api/deploy`, `api/swap`, `api/rollback`, `api/canary`,
    /// `api/shadow`, `api/promote`, or the worker (`weir run`) recording where a version
    /// took effect.
    pub action: String,
    /// UTC ms.
    pub at_ms: i64,
    /// The partition where the version took effect (worker rows).
    pub partition: Option<i32>,
    /// The first offset of that partition the version processed (worker rows).
    pub offset: Option<i64>,
}

/// The deployment history: API actions, and where (partition, offset) each version took
/// effect.
#[utoipa::path(get, path = "/v1/pipelines/{id}/deployments", tag = "deployments", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1)),
    responses((status = 200, description = "Oldest first", body = [DeploymentInfo]),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn deployments(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    let list: Vec<DeploymentInfo> = state
        .store
        .deployments(&internal_name(tenant, &p.name))
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|d| DeploymentInfo {
            id: d.id,
            stage: d.stage,
            sha256: d.plugin_sha256,
            version: d.version_label,
            action: d.actor,
            at_ms: d.at_ms,
            partition: d.partition,
            offset: d.offset,
        })
        .collect();
    Ok(json(StatusCode::OK, &list))
}

/// Figures of one stage version, side by side with the others of its stage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StageFigures {
    /// Stage.
    pub stage: String,
    /// `serving`, `canary` or `shadow`.
    pub role: String,
    /// Version id.
    pub version: String,
    /// Plugin sha256.
    pub sha256: String,
    /// Calls.
    pub calls: u64,
    /// Rows.
    pub rows: u64,
    /// Failed calls.
    pub errors: u64,
    /// Fuel used.
    pub fuel: u64,
    /// Mean call latency, ms.
    pub latency_mean_ms: f64,
    /// p99 call latency (bucket bound), ms.
    pub latency_p99_ms: Option<f64>,
    /// Labelled rows scored.
    pub labelled: u64,
    /// Prequential accuracy.
    pub accuracy: Option<f64>,
    /// Mean log-loss.
    pub log_loss: Option<f64>,
    /// Area under the ROC curve.
    pub auc: Option<f64>,
    /// Accuracy over the last 10,000 labelled rows (shows drift).
    pub accuracy_recent: Option<f64>,
    /// AUC over the last 10,000 labelled rows.
    pub auc_recent: Option<f64>,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Per stage version: latency, fuel, errors and, once labels arrive, accuracy. A shadow or
/// canary appears beside the serving version.
#[utoipa::path(get, path = "/v1/pipelines/{id}/metrics", tag = "deployments", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1)),
    responses((status = 200, description = "Empty unless running", body = [StageFigures]),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn metrics(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    own(&state, tenant, id).await?;
    let mut out = Vec::new();
    if let Some(r) = state.manager.get(id).filter(|r| r.tenant == tenant) {
        for (k, s) in r.metrics.snapshot() {
            out.push(StageFigures {
                stage: k.stage,
                role: k.role.as_str().to_owned(),
                version: k.version,
                sha256: s.plugin.clone(),
                calls: s.calls,
                rows: s.rows,
                errors: s.errors,
                fuel: s.fuel,
                latency_mean_ms: if s.latency.count == 0 {
                    0.0
                } else {
                    s.latency.sum / s.latency.count as f64 * 1e3
                },
                latency_p99_ms: finite(s.latency.quantile_bound(0.99) * 1e3),
                labelled: s.labelled,
                accuracy: finite(s.accuracy()),
                log_loss: finite(s.mean_log_loss()),
                auc: finite(s.auc()),
                accuracy_recent: finite(s.recent_accuracy()),
                auc_recent: finite(s.recent_auc()),
            });
        }
    }
    Ok(json(StatusCode::OK, &out))
}

/// A stage action's request.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    /// deploy, swap, canary, shadow: the plugin (`name`, `name@version` or
    /// `sha256:<hex>`).
    #[serde(default)]
    pub plugin: Option<String>,
    /// rollback: the version id to return to (default: the previous one).
    #[serde(default)]
    pub version: Option<String>,
    /// canary: the share of keys, percent (0 < p ≤ 100).
    #[serde(default)]
    pub percent: Option<f64>,
    /// promote: `canary` or `shadow` (default: whichever runs).
    #[serde(default)]
    pub from: Option<String>,
}

/// A stage action's outcome.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StageOutcome {
    /// The action.
    pub action: String,
    /// The stage.
    pub stage: String,
    /// The version id now serving (or running as canary/shadow).
    pub version: String,
    /// Its plugin (`name@version`).
    pub plugin: String,
    /// The version it replaced, if any.
    pub previous: Option<String>,
    /// The recorded deployment event.
    pub deployment_id: i64,
    /// False when the pipeline is stopped: the change applies at its next start.
    pub live: bool,
}

/// Acts on a stage: `deploy` (serve a plugin; hot-swapped when running, applied at start
/// otherwise), `swap` (hot swap; needs the pipeline running), `rollback` (to the previous
/// version or `version`), `canary` (model stage: a share of keys by hash), `shadow` (model
/// stage: a candidate beside the serving version), `promote` (the canary or shadow becomes
/// the serving version). Swaps are atomic between batches; every result names the version
/// that made it, and `/deployments` shows where each version took effect.
#[utoipa::path(post, path = "/v1/pipelines/{id}/stages/{stage}/{action}", tag = "deployments", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1),
           ("stage" = String, Path, description = "extractor, model, operator-N or window"),
           ("action" = String, Path, description = "deploy, swap, rollback, canary, shadow or promote")),
    request_body = StageRequest,
    responses((status = 200, description = "Done", body = StageOutcome),
              (status = 400, description = "Bad request", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline, stage or action", body = ErrorBody),
              (status = 409, description = "Not possible in this state", body = ErrorBody),
              (status = 422, description = "Unknown plugin or wrong kind", body = ErrorBody),
              (status = 429, description = "Rate limited", body = ErrorBody)))]
pub async fn stage_action(
    id: i64,
    stage: String,
    action: String,
    authz: Option<String>,
    body: bytes::Bytes,
    state: Arc<AppState>,
) -> Reply {
    let (tenant, tname) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    if !["deploy", "swap", "rollback", "canary", "shadow", "promote"].contains(&action.as_str()) {
        return Err(ApiError::not_found(format!("no action `{action}`")).into());
    }
    let req: StageRequest = parse(&body)?;
    let spec = super::manager::tenant_spec(&p.spec, tenant, &tname, state.manager.bounds())?;
    let Some((_, stage_spec, kind)) = stages(&spec).into_iter().find(|(s, _, _)| *s == stage)
    else {
        return Err(ApiError::not_found(format!("pipeline {id} has no stage `{stage}`")).into());
    };
    state.limiter.check(tenant, "swaps")?;
    let internal = internal_name(tenant, &p.name);
    let running = state
        .manager
        .get(id)
        .filter(|r| r.tenant == tenant && r.is_alive());
    let need_plugin = || {
        req.plugin
            .clone()
            .ok_or_else(|| ApiError::bad_request(format!("`{action}` needs `plugin`")))
    };
    if matches!(action.as_str(), "canary" | "shadow" | "promote") && stage != "model" {
        return Err(ApiError::unprocessable(
            "model_only",
            format!("`{action}` applies to the model stage"),
        )
        .into());
    }
    let outcome = match (action.as_str(), running) {
        ("deploy", None) => {
            let rec = state
                .manager
                .resolve(tenant, &need_plugin()?, kind, &stage)
                .await?;
            let d = state
                .manager
                .deployment(tenant, &rec, &stage, stage_spec)
                .await?;
            let dep = state
                .manager
                .record(&internal, &stage, &rec, &d.version.0, "api/deploy")
                .await?;
            StageOutcome {
                action,
                stage,
                version: d.version.0.clone(),
                plugin: format!("{}@{}", rec.name, rec.version),
                previous: None,
                deployment_id: dep,
                live: false,
            }
        }
        (_, None) => {
            return Err(ApiError::conflict(format!(
                "`{action}` needs the pipeline running (start it, or use `deploy`)"
            ))
            .into());
        }
        ("deploy" | "swap", Some(r)) => {
            let rec = state
                .manager
                .resolve(tenant, &need_plugin()?, kind, &stage)
                .await?;
            let d = state
                .manager
                .deployment(tenant, &rec, &stage, stage_spec)
                .await?;
            lock(&r.versions).insert(d.version.0.clone(), rec.clone());
            let slot = r
                .slot(&stage)
                .ok_or_else(|| ApiError::not_found(format!("stage `{stage}`")))?;
            let prev = swap_prepared(slot, d.clone()).await?;
            let dep = state
                .manager
                .record(
                    &internal,
                    &stage,
                    &rec,
                    &d.version.0,
                    &format!("api/{action}"),
                )
                .await?;
            StageOutcome {
                action,
                stage,
                version: d.version.0.clone(),
                plugin: format!("{}@{}", rec.name, rec.version),
                previous: Some(prev.version.0.clone()),
                deployment_id: dep,
                live: true,
            }
        }
        ("rollback", Some(r)) => {
            let slot = r
                .slot(&stage)
                .ok_or_else(|| ApiError::not_found(format!("stage `{stage}`")))?;
            let prev = slot.current();
            let to = slot
                .rollback_target(req.version.clone().map(VersionId).as_ref())
                .map_err(|e| ApiError::conflict(e.to_string()))?;
            swap_prepared(slot, to.clone()).await?;
            let rec = r
                .plugin_of(&to.version.0)
                .ok_or_else(|| ApiError::internal("a rolled-back version has no plugin record"))?;
            let dep = state
                .manager
                .record(&internal, &stage, &rec, &to.version.0, "api/rollback")
                .await?;
            StageOutcome {
                action,
                stage,
                version: to.version.0.clone(),
                plugin: format!("{}@{}", rec.name, rec.version),
                previous: Some(prev.version.0.clone()),
                deployment_id: dep,
                live: true,
            }
        }
        ("canary" | "shadow", Some(r)) => {
            let rec = state
                .manager
                .resolve(tenant, &need_plugin()?, kind, &stage)
                .await?;
            let percent = if action == "canary" {
                let p = req
                    .percent
                    .ok_or_else(|| ApiError::bad_request("`canary` needs `percent`"))?;
                if !(p > 0.0 && p <= 100.0) {
                    return Err(ApiError::bad_request("`percent` must be in (0, 100]").into());
                }
                Some(p)
            } else {
                None
            };
            let d = state
                .manager
                .deployment(tenant, &rec, &stage, stage_spec)
                .await?;
            lock(&r.versions).insert(d.version.0.clone(), rec.clone());
            let slot = weir_engine::Slot::new(d.clone());
            let mut v = r.variants().get();
            let info = VariantInfo {
                plugin: rec.clone(),
                version: d.version.0.clone(),
                percent,
            };
            let previous = if action == "canary" {
                v.canary = Some(Canary {
                    slot,
                    percent: percent.unwrap_or(0.0),
                });
                lock(&r.canary).replace(info)
            } else {
                v.shadow = Some(slot);
                lock(&r.shadow).replace(info)
            };
            r.variants().set(v);
            let label = match percent {
                Some(p) => format!("api/canary {p}%"),
                None => "api/shadow".into(),
            };
            let dep = state
                .manager
                .record(&internal, &stage, &rec, &d.version.0, &label)
                .await?;
            StageOutcome {
                action,
                stage,
                version: d.version.0.clone(),
                plugin: format!("{}@{}", rec.name, rec.version),
                previous: previous.map(|p| p.version),
                deployment_id: dep,
                live: true,
            }
        }
        ("promote", Some(r)) => {
            let v = r.variants().get();
            let from = match req.from.as_deref() {
                Some("canary") => "canary",
                Some("shadow") => "shadow",
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "`from` is canary or shadow, not `{other}`"
                    ))
                    .into());
                }
                None => match (v.canary.is_some(), v.shadow.is_some()) {
                    (true, false) => "canary",
                    (false, true) => "shadow",
                    (false, false) => {
                        return Err(ApiError::conflict("no canary or shadow to promote").into());
                    }
                    (true, true) => {
                        return Err(ApiError::bad_request(
                            "both a canary and a shadow run: say `from`",
                        )
                        .into());
                    }
                },
            };
            let candidate = if from == "canary" {
                v.canary.as_ref().map(|c| c.slot.current())
            } else {
                v.shadow.as_ref().map(|s| s.current())
            }
            .ok_or_else(|| ApiError::conflict(format!("no {from} to promote")))?;
            let slot = r
                .slot(&stage)
                .ok_or_else(|| ApiError::not_found(format!("stage `{stage}`")))?;
            let prev = swap_prepared(slot, candidate.clone()).await?;
            let mut v = v;
            if from == "canary" {
                v.canary = None;
                lock(&r.canary).take();
            } else {
                v.shadow = None;
                lock(&r.shadow).take();
            }
            r.variants().set(v);
            let rec = r
                .plugin_of(&candidate.version.0)
                .ok_or_else(|| ApiError::internal("a promoted version has no plugin record"))?;
            let dep = state
                .manager
                .record(
                    &internal,
                    &stage,
                    &rec,
                    &candidate.version.0,
                    &format!("api/promote {from}"),
                )
                .await?;
            StageOutcome {
                action,
                stage,
                version: candidate.version.0.clone(),
                plugin: format!("{}@{}", rec.name, rec.version),
                previous: Some(prev.version.0.clone()),
                deployment_id: dep,
                live: true,
            }
        }
        _ => return Err(ApiError::not_found(format!("no action `{action}`")).into()),
    };
    Ok(json(StatusCode::OK, &outcome))
}

/// Swaps a slot to `next` with its instance built first, on the blocking pool, so the
/// worker only hands its state over.
async fn swap_prepared(
    slot: &Arc<weir_engine::Slot>,
    next: Arc<weir_engine::Deployment>,
) -> Result<Arc<weir_engine::Deployment>, ApiError> {
    let slot = slot.clone();
    tokio::task::spawn_blocking(move || slot.swap_prepared(next))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::unprocessable("wrong_kind", e.to_string()))
}

/// Ends a canary or shadow without promoting it: `DELETE .../stages/model/canary` or
/// `.../shadow`.
#[utoipa::path(delete, path = "/v1/pipelines/{id}/stages/{stage}/{action}", tag = "deployments", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1),
           ("stage" = String, Path, description = "model"),
           ("action" = String, Path, description = "canary or shadow: the variant to end")),
    responses((status = 204, description = "Ended"),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline, stage, or variant running", body = ErrorBody)))]
pub async fn stage_abort(
    id: i64,
    stage: String,
    variant: String,
    authz: Option<String>,
    state: Arc<AppState>,
) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    let r = state
        .manager
        .get(id)
        .filter(|r| r.tenant == tenant && r.is_alive() && stage == "model")
        .ok_or_else(|| ApiError::not_found(format!("no {variant} runs in stage `{stage}`")))?;
    let mut v: Variants = r.variants().get();
    let ended = match variant.as_str() {
        "canary" => v.canary.take().and(lock(&r.canary).take()),
        "shadow" => v.shadow.take().and(lock(&r.shadow).take()),
        _ => None,
    };
    let Some(ended) = ended else {
        return Err(ApiError::not_found(format!("no {variant} runs in stage `{stage}`")).into());
    };
    r.variants().set(v);
    state
        .manager
        .record(
            &internal_name(tenant, &p.name),
            &stage,
            &ended.plugin,
            &ended.version,
            &format!("api/end-{variant}"),
        )
        .await?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}

/// Result query parameters.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct ResultQuery {
    /// Only this key.
    pub key: Option<String>,
    /// Event time (window start) at or after, ms.
    pub from: Option<i64>,
    /// Event time (window start) before, ms.
    pub to: Option<i64>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<u64>,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
}

/// A stored prediction.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PredictionRow {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Key.
    pub key: String,
    /// Event time, ms.
    pub ts: i64,
    /// Score.
    pub score: Option<f64>,
    /// Model version id that made it.
    pub model_version: String,
    /// Extractor version id.
    pub extractor_version: String,
    /// The full output record.
    #[schema(value_type = Object)]
    pub output: serde_json::Value,
}

impl From<weir_store::Prediction> for PredictionRow {
    fn from(r: weir_store::Prediction) -> Self {
        PredictionRow {
            partition: r.partition,
            offset: r.offset,
            key: r.key,
            ts: r.ts,
            score: r.score,
            model_version: r.model_version,
            extractor_version: r.extractor_version,
            output: serde_json::from_str(&r.output).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A page of predictions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PredictionPage {
    /// Rows, in (partition, offset) order.
    pub items: Vec<PredictionRow>,
    /// Cursor just after this page's last row (absent when the page is empty): follow it
    /// until a page comes back empty, or keep it to poll for new rows. Opaque, and valid
    /// only for this tenant and pipeline.
    pub next: Option<String>,
}

/// A stored window result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WindowRow {
    /// Key.
    pub key: String,
    /// Window start, ms.
    pub window_start: i64,
    /// Window end, ms.
    pub window_end: i64,
    /// Version id of the window operator.
    pub version: String,
    /// The output record.
    #[schema(value_type = Object)]
    pub output: serde_json::Value,
}

/// A page of window results.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WindowPage {
    /// Rows, in (key, window start) order.
    pub items: Vec<WindowRow>,
    /// Cursor just after this page's last row (absent when the page is empty).
    pub next: Option<String>,
}

/// A page size: 1-1000, 100 when not given.
fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be 1-1000"));
    }
    Ok(limit)
}

fn filter_of(q: &ResultQuery) -> Result<ResultFilter, ApiError> {
    let limit = page_limit(q.limit)?;
    Ok(ResultFilter {
        key: q.key.clone(),
        from_ts: q.from,
        to_ts: q.to,
        limit,
    })
}

/// Predictions by key and time range, paged.
#[utoipa::path(get, path = "/v1/pipelines/{id}/predictions", tag = "results", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1), ResultQuery),
    responses((status = 200, description = "A page", body = PredictionPage),
              (status = 400, description = "Bad query or cursor", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn predictions(
    id: i64,
    authz: Option<String>,
    q: ResultQuery,
    state: Arc<AppState>,
) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    let filter = filter_of(&q)?;
    let after = match &q.cursor {
        Some(c) => state.cursors.open(c, tenant, id, "predictions")?.po,
        None => None,
    };
    let rows = state
        .store
        .predictions_page(&internal_name(tenant, &p.name), &filter, after)
        .await
        .map_err(ApiError::from)?;
    let next = rows.last().map(|r| {
        state.cursors.sign(&CursorBody {
            t: tenant,
            p: id,
            k: "predictions".into(),
            po: Some((r.partition, r.offset)),
            kw: None,
            pos: None,
        })
    });
    let items = rows.into_iter().map(PredictionRow::from).collect();
    Ok(json(StatusCode::OK, &PredictionPage { items, next }))
}

/// Window results by key and window-start range, paged.
#[utoipa::path(get, path = "/v1/pipelines/{id}/windows", tag = "results", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1), ResultQuery),
    responses((status = 200, description = "A page", body = WindowPage),
              (status = 400, description = "Bad query or cursor", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn windows(
    id: i64,
    authz: Option<String>,
    q: ResultQuery,
    state: Arc<AppState>,
) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    let filter = filter_of(&q)?;
    let after = match &q.cursor {
        Some(c) => state.cursors.open(c, tenant, id, "windows")?.kw,
        None => None,
    };
    let rows = state
        .store
        .window_results_page(&internal_name(tenant, &p.name), &filter, after)
        .await
        .map_err(ApiError::from)?;
    let next = rows.last().map(|r| {
        state.cursors.sign(&CursorBody {
            t: tenant,
            p: id,
            k: "windows".into(),
            po: None,
            kw: Some((r.key.clone(), r.window_start)),
            pos: None,
        })
    });
    let items = rows
        .into_iter()
        .map(|r| WindowRow {
            key: r.key,
            window_start: r.window_start,
            window_end: r.window_end,
            version: r.version,
            output: serde_json::from_str(&r.output).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(json(StatusCode::OK, &WindowPage { items, next }))
}

/// Paging of training decisions.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct TrainingQuery {
    /// Decisions per page, 1-1000 (default 100).
    pub limit: Option<u64>,
    /// Only decisions with a smaller id (the previous page's `next`).
    pub before: Option<i64>,
}

/// One training decision, with the lineage of its candidate.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrainingDecision {
    /// Decision id (increasing).
    pub id: i64,
    /// When, ms.
    pub at_ms: i64,
    /// `promoted`, `rejected` or `failed`.
    pub outcome: String,
    /// `first`, `schedule`, `timer` or `drift`.
    pub trigger: String,
    /// The candidate's version id (empty when the fit failed).
    pub version: String,
    /// The champion it was judged against.
    pub champion_version: String,
    /// The validation metric.
    pub metric: String,
    /// The candidate's held-out score.
    pub challenger_score: Option<f64>,
    /// The champion's held-out score.
    pub champion_score: Option<f64>,
    /// The candidate's stored snapshot.
    pub snapshot_id: Option<i64>,
    /// The champion's snapshot, when the champion was itself trained.
    pub parent_snapshot_id: Option<i64>,
    /// Everything else: reason, parameters, grid scores, training window (event-time and
    /// offset ranges), row counts and fit time.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// A pipeline's training: its settings, live figures and decisions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrainingInfo {
    /// The spec's `[training]` section (null when the model does not train in the host).
    #[schema(value_type = Option<Object>)]
    pub spec: Option<serde_json::Value>,
    /// Live figures of the running worker (null when stopped).
    #[schema(value_type = Option<Object>)]
    pub status: Option<serde_json::Value>,
    /// Decisions, newest first.
    pub decisions: Vec<TrainingDecision>,
    /// `before` for the next page (absent on the last).
    pub next: Option<i64>,
}

/// Training decisions (champion/challenger) and live training figures, paged.
#[utoipa::path(get, path = "/v1/pipelines/{id}/training", tag = "results", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Pipeline id", example = 1), TrainingQuery),
    responses((status = 200, description = "Settings, figures and a page of decisions", body = TrainingInfo),
              (status = 400, description = "Bad query", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn training(
    id: i64,
    authz: Option<String>,
    q: TrainingQuery,
    state: Arc<AppState>,
) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own(&state, tenant, id).await?;
    let limit = page_limit(q.limit)?;
    let spec = parse_spec(&p.spec, &SpecBounds::unlimited())?;
    let status = state
        .manager
        .get(id)
        .filter(|r| r.tenant == tenant)
        .and_then(|r| r.training.as_ref().map(|t| t.status()))
        .and_then(|s| serde_json::to_value(s).ok());
    let rows = state
        .store
        .training_runs(&internal_name(tenant, &p.name), "model", limit, q.before)
        .await
        .map_err(ApiError::from)?;
    let next = (rows.len() as u64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let decisions = rows
        .into_iter()
        .map(|r| TrainingDecision {
            id: r.id,
            at_ms: r.at_ms,
            outcome: r.outcome,
            trigger: r.trigger,
            version: r.version,
            champion_version: r.champion_version,
            metric: r.metric,
            challenger_score: r.challenger_score,
            champion_score: r.champion_score,
            snapshot_id: r.snapshot_id,
            parent_snapshot_id: r.parent_snapshot_id,
            detail: serde_json::from_str(&r.detail).unwrap_or_default(),
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &TrainingInfo {
            spec: spec
                .training
                .as_ref()
                .and_then(|t| serde_json::to_value(t).ok()),
            status,
            decisions,
            next,
        },
    ))
}
