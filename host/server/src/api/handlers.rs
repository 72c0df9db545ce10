//! Handlers for operations, tenants and plugins.

use super::auth::{self, Caller};
use super::error::{ApiError, ErrorBody};
use super::manager::{lock, valid_name};
use super::quotas::Quota;
use super::{AppState, Reply};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use warp::Reply as _;
use warp::http::StatusCode;
use warp::reply::Response;
use weir_store::{NewPlugin, PluginRecord};
use weir_stream::metrics::LATENCY_BUCKETS;
use weir_stream::training::TrainingStatus;

/// A JSON response with a status.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// Parses a JSON request body; an empty body is `{}`.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The caller, or 401. The key's last use is recorded (at most once a minute per key).
pub async fn caller(state: &AppState, authz: Option<String>) -> Result<Caller, ApiError> {
    let (caller, key_id) = auth::authenticate(&state.store, authz.as_deref()).await?;
    state.touch_key(key_id).await;
    Ok(caller)
}

/// The caller, which must be a tenant (admin is 403, nobody is 401).
pub async fn tenant(state: &AppState, authz: Option<String>) -> Result<(i64, String), ApiError> {
    let c = caller(state, authz).await?;
    let (id, name) = c.tenant()?;
    Ok((id, name.to_owned()))
}

async fn admin(state: &AppState, authz: Option<String>) -> Result<(), ApiError> {
    match caller(state, authz).await? {
        Caller::Admin => Ok(()),
        Caller::Tenant { .. } => Err(ApiError::admin_only()),
    }
}

/// `{"status": "ok"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `starting`/`stopping` for readiness.
    pub status: String,
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The server is alive", body = Health)))]
pub async fn healthz(_state: Arc<AppState>) -> Reply {
    Ok(json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    ))
}

/// Readiness: the database answers and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "Not ready", body = ErrorBody)))]
pub async fn readyz(state: Arc<AppState>) -> Reply {
    if !state.is_ready() {
        return Err(ApiError::unavailable("shutting down").into());
    }
    state
        .store
        .connection()
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(format!("database: {e}")))?;
    Ok(json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    ))
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Reply {
    Ok(warp::reply::json(&super::openapi::document()).into_response())
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A training series of `/metrics`: name, type, help, and its value from the figures.
type TrainingSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TrainingStatus) -> f64,
);

/// Prometheus text: per pipeline (events in and out, late events, dead letters) and per
/// stage version (calls, rows, errors, fuel, latency histogram; accuracy and log-loss for
/// labelled models). The admin key sees every tenant; a tenant's key sees its own.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
              (status = 401, description = "No valid key", body = ErrorBody)))]
pub async fn metrics(authz: Option<String>, state: Arc<AppState>) -> Reply {
    let who = caller(&state, authz).await?;
    let names: std::collections::HashMap<i64, String> = state
        .store
        .tenants()
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    let mut running = state.manager.all();
    running.retain(|r| match &who {
        Caller::Admin => true,
        Caller::Tenant { id, .. } => r.tenant == *id,
    });
    running.sort_by_key(|r| r.pipeline_id);
    let mut o = String::with_capacity(4096);
    let counters = [
        ("weir_events_in_total", "Source records read."),
        ("weir_results_out_total", "Per-event results produced."),
        ("weir_windows_out_total", "Window results produced."),
        (
            "weir_late_events_total",
            "Events too late for every window.",
        ),
        (
            "weir_dead_letters_total",
            "Records sent to the dead-letter topic.",
        ),
    ];
    for (i, (name, help)) in counters.iter().enumerate() {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for r in &running {
            let st = lock(&r.progress).stats.clone();
            let v = [
                st.records_in,
                st.results_out,
                st.windows_out,
                st.late,
                st.dead,
            ][i];
            let t = names.get(&r.tenant).map_or("", String::as_str);
            let pipeline = r.spec.name.get_ref().split_once('.').map_or("", |x| x.1);
            let _ = writeln!(
                o,
                "{name}{{tenant=\"{}\",pipeline=\"{}\"}} {v}",
                label(t),
                label(pipeline)
            );
        }
    }
    // Input gaps come from the database, so they outlive restarts and failed workers.
    let visible: Vec<(i64, String)> = match &who {
        Caller::Admin => names.iter().map(|(i, n)| (*i, n.clone())).collect(),
        Caller::Tenant { id, name } => vec![(*id, name.clone())],
    };
    let mut shown: std::collections::HashMap<String, (String, String)> = Default::default();
    for (tid, tname) in &visible {
        for p in state.store.pipelines(*tid).await.map_err(ApiError::from)? {
            shown.insert(
                super::manager::internal_name(*tid, &p.name),
                (tname.clone(), p.name),
            );
        }
    }
    let internal: Vec<String> = shown.keys().cloned().collect();
    let mut gap_totals: std::collections::BTreeMap<(String, String, String), (u64, u64)> =
        Default::default();
    for g in state
        .store
        .gaps_of(&internal)
        .await
        .map_err(ApiError::from)?
    {
        let Some((t, p)) = shown.get(&g.pipeline) else {
            continue;
        };
        let e = gap_totals
            .entry((t.clone(), p.clone(), g.gap.reason.clone()))
            .or_default();
        e.0 += 1;
        e.1 += g.gap.records.unwrap_or(0).max(0) as u64;
    }
    for (i, (name, help)) in [
        (
            "weir_input_gaps_total",
            "Gaps recorded in a pipeline's input, by reason.",
        ),
        (
            "weir_input_gap_records_total",
            "Input records lost in recorded gaps, where the broker could tell.",
        ),
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for ((t, p, reason), (count, records)) in &gap_totals {
            let v = if i == 0 { *count } else { *records };
            let _ = writeln!(
                o,
                "{name}{{tenant=\"{}\",pipeline=\"{}\",reason=\"{}\"}} {v}",
                label(t),
                label(p),
                label(reason)
            );
        }
    }
    let stage_series = [
        (
            "weir_stage_calls_total",
            "counter",
            "Calls into a stage's plugin.",
        ),
        (
            "weir_stage_rows_total",
            "counter",
            "Rows handed to a stage's plugin.",
        ),
        (
            "weir_stage_errors_total",
            "counter",
            "Failed calls (traps, limits, bad output).",
        ),
        (
            "weir_stage_fuel_total",
            "counter",
            "Fuel consumed by a stage's plugin.",
        ),
        (
            "weir_model_labelled_total",
            "counter",
            "Labelled events a model version scored.",
        ),
        (
            "weir_model_accuracy",
            "gauge",
            "Prequential accuracy of a model version.",
        ),
        (
            "weir_model_log_loss",
            "gauge",
            "Mean prequential log-loss of a model version.",
        ),
        (
            "weir_model_auc",
            "gauge",
            "Prequential AUC of a model version.",
        ),
        (
            "weir_model_accuracy_recent",
            "gauge",
            "Accuracy over the last 10,000 labelled events.",
        ),
        (
            "weir_model_auc_recent",
            "gauge",
            "AUC over the last 10,000 labelled events.",
        ),
    ];
    let all: Vec<_> = running
        .iter()
        .map(|r| (r.clone(), r.metrics.snapshot()))
        .collect();
    let labels_of = |r: &super::manager::Running, k: &weir_stream::metrics::StageKey| {
        let t = names.get(&r.tenant).map_or("", String::as_str);
        let pipeline = r.spec.name.get_ref().split_once('.').map_or("", |x| x.1);
        let plugin = r
            .plugin_of(&k.version)
            .map(|p| format!("{}@{}", p.name, p.version))
            .unwrap_or_default();
        format!(
            "tenant=\"{}\",pipeline=\"{}\",stage=\"{}\",role=\"{}\",version=\"{}\",plugin=\"{}\"",
            label(t),
            label(pipeline),
            label(&k.stage),
            k.role.as_str(),
            label(&k.version),
            label(&plugin)
        )
    };
    for (i, (name, kind, help)) in stage_series.iter().enumerate() {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (r, snap) in &all {
            for (k, s) in snap {
                if i >= 4 && s.labelled == 0 {
                    continue;
                }
                let v = match i {
                    0 => s.calls as f64,
                    1 => s.rows as f64,
                    2 => s.errors as f64,
                    3 => s.fuel as f64,
                    4 => s.labelled as f64,
                    5 => s.accuracy(),
                    6 => s.mean_log_loss(),
                    7 => s.auc(),
                    8 => s.recent_accuracy(),
                    _ => s.recent_auc(),
                };
                let _ = writeln!(o, "{name}{{{}}} {v}", labels_of(r, k));
            }
        }
    }
    let name = "weir_stage_latency_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Latency of calls into a stage's plugin.\n# TYPE {name} histogram"
    );
    for (r, snap) in &all {
        for (k, s) in snap {
            let l = labels_of(r, k);
            let mut cum = 0;
            for (b, c) in LATENCY_BUCKETS.iter().zip(s.latency.counts.iter()) {
                cum += c;
                let _ = writeln!(o, "{name}_bucket{{{l},le=\"{b}\"}} {cum}");
            }
            let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {}", s.latency.count);
            let _ = writeln!(o, "{name}_sum{{{l}}} {}", s.latency.sum);
            let _ = writeln!(o, "{name}_count{{{l}}} {}", s.latency.count);
        }
    }
    let name = "weir_swap_pause_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Pause of a worker moving a stage to a new version.\n# TYPE {name} histogram"
    );
    for r in &running {
        let t = names.get(&r.tenant).map_or("", String::as_str);
        let pipeline = r.spec.name.get_ref().split_once('.').map_or("", |x| x.1);
        let l = format!("tenant=\"{}\",pipeline=\"{}\"", label(t), label(pipeline));
        let h = r.metrics.switch_pauses().histogram;
        let mut cum = 0;
        for (b, c) in LATENCY_BUCKETS.iter().zip(h.counts.iter()) {
            cum += c;
            let _ = writeln!(o, "{name}_bucket{{{l},le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "{name}_sum{{{l}}} {}", h.sum);
        let _ = writeln!(o, "{name}_count{{{l}}} {}", h.count);
    }
    let training: [TrainingSeries; 6] = [
        (
            "weir_training_fits_total",
            "counter",
            "Training decisions (promoted, rejected or failed).",
            |s| s.fits as f64,
        ),
        (
            "weir_training_promotions_total",
            "counter",
            "Challengers promoted to serving.",
            |s| s.promotions as f64,
        ),
        (
            "weir_training_drifts_total",
            "counter",
            "Drifts the detector signalled.",
            |s| s.drifts as f64,
        ),
        (
            "weir_training_window_rows",
            "gauge",
            "Labelled rows in the training window.",
            |s| s.window_rows as f64,
        ),
        (
            "weir_training_fit_seconds",
            "gauge",
            "Duration of the last fit and judgement.",
            |s| s.last_fit_ms / 1e3,
        ),
        (
            "weir_training_promotion_to_serving_seconds",
            "gauge",
            "From the last challenger winning to the worker serving it.",
            |s| s.promotion_to_serving_last_ms / 1e3,
        ),
    ];
    for (name, kind, help, get) in training {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in &running {
            let Some(t) = &r.training else { continue };
            let s = t.status();
            let tn = names.get(&r.tenant).map_or("", String::as_str);
            let pipeline = r.spec.name.get_ref().split_once('.').map_or("", |x| x.1);
            let _ = writeln!(
                o,
                "{name}{{tenant=\"{}\",pipeline=\"{}\"}} {}",
                label(tn),
                label(pipeline),
                get(&s)
            );
        }
    }
    let mut r =
        warp::reply::with_header(o, "content-type", "text/plain; version=0.0.4").into_response();
    *r.status_mut() = StatusCode::OK;
    Ok(r)
}

/// A new tenant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewTenant {
    /// Name: 1–32 of `[a-z0-9-]`, starting with a letter. It prefixes the tenant's topics.
    pub name: String,
}

/// A tenant, with a key when one was just created.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantInfo {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Creation time, UTC ms.
    pub created_at: i64,
    /// A new API key: shown once, stored only as a hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// A new API key (shown once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    /// The tenant.
    pub tenant_id: i64,
    /// The key.
    pub api_key: String,
}

fn valid_tenant(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Creates a tenant and its first API key (admin key only).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    request_body = NewTenant,
    responses((status = 201, description = "Created, with the tenant's first key", body = TenantInfo),
              (status = 400, description = "Bad request", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 403, description = "Not the admin key", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody)))]
pub async fn create_tenant(
    authz: Option<String>,
    body: bytes::Bytes,
    state: Arc<AppState>,
) -> Reply {
    admin(&state, authz).await?;
    let req: NewTenant = parse(&body)?;
    if !valid_tenant(&req.name) {
        return Err(ApiError::bad_request(
            "tenant names are 1-32 of [a-z0-9-], starting with a letter",
        )
        .into());
    }
    let t = state
        .store
        .create_tenant_checked(&req.name)
        .await
        .map_err(ApiError::from)?;
    let key = auth::new_key();
    state
        .store
        .insert_api_key(t.id, &auth::hash_key(&key), "first key")
        .await
        .map_err(ApiError::from)?;
    Ok(json(
        StatusCode::CREATED,
        &TenantInfo {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            api_key: Some(key),
        },
    ))
}

/// Lists tenants (admin key only).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, description = "Every tenant", body = [TenantInfo]),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 403, description = "Not the admin key", body = ErrorBody)))]
pub async fn list_tenants(authz: Option<String>, state: Arc<AppState>) -> Reply {
    admin(&state, authz).await?;
    let list: Vec<TenantInfo> = state
        .store
        .tenants()
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|t| TenantInfo {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            api_key: None,
        })
        .collect();
    Ok(json(StatusCode::OK, &list))
}

/// Creates another API key for a tenant (the admin key, or the tenant's own).
#[utoipa::path(post, path = "/v1/tenants/{id}/keys", tag = "tenants", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Tenant id", example = 1)),
    responses((status = 201, description = "The new key, shown once", body = KeyInfo),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such tenant", body = ErrorBody)))]
pub async fn create_key(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    super::keys::admin_or_own(&state, authz, id).await?;
    let key = auth::new_key();
    let ok = state
        .store
        .add_tenant_key(id, &auth::hash_key(&key), "api")
        .await
        .map_err(ApiError::from)?;
    if !ok || id == weir_store::ADMIN_TENANT {
        return Err(ApiError::not_found(format!("tenant {id}")).into());
    }
    Ok(json(
        StatusCode::CREATED,
        &KeyInfo {
            tenant_id: id,
            api_key: key,
        },
    ))
}

/// Who the key belongs to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// `admin` or `tenant`.
    pub role: String,
    /// The tenant's id (absent for admin).
    pub tenant_id: Option<i64>,
    /// The tenant's name.
    pub tenant: Option<String>,
}

/// Tells who the key belongs to.
#[utoipa::path(get, path = "/v1/whoami", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = WhoAmI),
              (status = 401, description = "No valid key", body = ErrorBody)))]
pub async fn whoami(authz: Option<String>, state: Arc<AppState>) -> Reply {
    let w = match caller(&state, authz).await? {
        Caller::Admin => WhoAmI {
            role: "admin".into(),
            tenant_id: None,
            tenant: None,
        },
        Caller::Tenant { id, name } => WhoAmI {
            role: "tenant".into(),
            tenant_id: Some(id),
            tenant: Some(name),
        },
    };
    Ok(json(StatusCode::OK, &w))
}

/// Where an upload goes.
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Plugin name: 1–64 of `[A-Za-z0-9_-]`.
    pub name: String,
    /// Version: `MAJOR.MINOR.PATCH`, optionally `-PRERELEASE`.
    pub version: String,
}

/// A stored plugin.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PluginInfo {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the component, computed by the server. Deploy with `sha256:<this>`.
    pub sha256: String,
    /// `extractor`, `model` or `operator`.
    pub kind: String,
    /// Size, bytes.
    pub size: i64,
    /// Upload time, UTC ms.
    pub created_at: i64,
    /// Validation and compilation details.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<PluginRecord> for PluginInfo {
    fn from(p: PluginRecord) -> Self {
        PluginInfo {
            id: p.id,
            name: p.name,
            version: p.version,
            sha256: p.sha256,
            kind: p.world,
            size: p.size,
            created_at: p.created_at,
            details: serde_json::from_str(&p.manifest).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A component's bytes, in request and response bodies.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // describes a body in the OpenAPI document; handlers stream the bytes
pub struct WasmBytes(Vec<u8>);

/// `MAJOR.MINOR.PATCH[-PRERELEASE]`, each number without leading zeros.
pub fn valid_version(v: &str) -> bool {
    if v.len() > 64 {
        return false;
    }
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    let num_ok = |n: &&str| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && (n.len() == 1 || !n.starts_with('0'))
    };
    nums.len() == 3
        && nums.iter().all(num_ok)
        && pre.is_none_or(|p| {
            !p.is_empty()
                && p.split('.').all(|id| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        })
}

/// Uploads a plugin: the raw component as the body (`application/wasm`). The body streams
/// in with a size limit (413 as soon as it is passed, or at once from `Content-Length`); the
/// engine validates it (422 with the reason) and compiles it off the async executor, with a
/// timeout and a per-tenant cap on concurrent compilations (429).
#[utoipa::path(post, path = "/v1/plugins", tag = "plugins", security(("bearer" = [])),
    params(UploadQuery),
    request_body(content = WasmBytes, content_type = "application/octet-stream", description = "The component's bytes (any content type is accepted; `application/wasm` is usual)"),
    responses((status = 201, description = "Stored and compiled", body = PluginInfo),
              (status = 400, description = "Bad name or version", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 403, description = "The tenant's `plugins` or `plugin_bytes` quota is reached", body = ErrorBody),
              (status = 409, description = "This name and version exist", body = ErrorBody),
              (status = 413, description = "Too large", body = ErrorBody),
              (status = 422, description = "Not a valid weir plugin", body = ErrorBody),
              (status = 429, description = "Rate limited", body = ErrorBody)))]
pub async fn upload_plugin(
    authz: Option<String>,
    q: UploadQuery,
    content_length: Option<u64>,
    body: impl Stream<Item = Result<impl bytes::Buf, warp::Error>> + Unpin,
    state: Arc<AppState>,
) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    if !valid_name(&q.name) {
        return Err(ApiError::bad_request(
            "plugin names are 1-64 of [A-Za-z0-9_-], starting with a letter or digit",
        )
        .into());
    }
    if !valid_version(&q.version) {
        return Err(ApiError::bad_request(
            "versions are MAJOR.MINOR.PATCH with an optional -PRERELEASE, e.g. 1.2.0 or 2.0.0-rc.1",
        )
        .into());
    }
    let limit = state.config.max_plugin_bytes;
    if content_length.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit).into());
    }
    state.limiter.check(tenant, "uploads")?;
    let mut body = body;
    let mut bytes = Vec::with_capacity(content_length.unwrap_or(0).min(limit) as usize);
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        while bytes::Buf::has_remaining(&chunk) {
            let part = bytes::Buf::chunk(&chunk);
            if (bytes.len() + part.len()) as u64 > limit {
                return Err(ApiError::too_large(limit).into());
            }
            hasher.update(part);
            bytes.extend_from_slice(part);
            let n = part.len();
            bytes::Buf::advance(&mut chunk, n);
        }
    }
    let sha256 = hex::encode(hasher.finalize());
    // Checked before the compile (fails fast) and again, under the tenant's lock, where
    // the row is written.
    let size = bytes.len() as u64;
    let adding = [(Quota::Plugins, 1), (Quota::PluginBytes, size)];
    state.manager.check_quota(tenant, &adding).await?;
    let info = weir_engine::inspect(&bytes, &weir_engine::Grants { clocks: true })
        .map_err(|e| ApiError::unprocessable("invalid_plugin", e.to_string()))?;
    let permit = state.compile_permit(tenant)?;
    let plugin = state
        .manager
        .load(
            bytes.clone(),
            weir_engine::Manifest {
                grants: weir_engine::Grants { clocks: true },
                ..Default::default()
            },
            true,
            Some(permit),
        )
        .await?;
    let details = serde_json::json!({
        "wit_version": info.version,
        "imports": info.imports,
        "compile_ms": (plugin.compile_time().as_secs_f64() * 1e3 * 10.0).round() / 10.0,
    });
    let _quota = state.manager.tenant_lock(tenant).await;
    state.manager.check_quota(tenant, &adding).await?;
    let rec = state
        .store
        .insert_plugin(NewPlugin {
            tenant_id: tenant,
            name: q.name,
            version: q.version,
            sha256,
            world: info.kind.as_str().to_owned(),
            manifest: details.to_string(),
            bytes,
        })
        .await
        .map_err(ApiError::from)?;
    Ok(json(StatusCode::CREATED, &PluginInfo::from(rec)))
}

/// Lists the caller's plugins.
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", security(("bearer" = [])),
    responses((status = 200, description = "The tenant's plugins", body = [PluginInfo]),
              (status = 401, description = "No valid key", body = ErrorBody)))]
pub async fn list_plugins(authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let list: Vec<PluginInfo> = state
        .store
        .plugins(tenant)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(PluginInfo::from)
        .collect();
    Ok(json(StatusCode::OK, &list))
}

async fn own_plugin(state: &AppState, tenant: i64, id: i64) -> Result<PluginRecord, ApiError> {
    state
        .store
        .plugin(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("plugin {id}")))
}

/// A plugin's metadata.
#[utoipa::path(get, path = "/v1/plugins/{id}", tag = "plugins", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Plugin id", example = 1)),
    responses((status = 200, description = "The plugin", body = PluginInfo),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such plugin", body = ErrorBody)))]
pub async fn get_plugin(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own_plugin(&state, tenant, id).await?;
    Ok(json(StatusCode::OK, &PluginInfo::from(p)))
}

/// Downloads a plugin's component.
#[utoipa::path(get, path = "/v1/plugins/{id}/download", tag = "plugins", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Plugin id", example = 1)),
    responses((status = 200, description = "The component", content_type = "application/wasm", body = WasmBytes),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such plugin", body = ErrorBody)))]
pub async fn download_plugin(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own_plugin(&state, tenant, id).await?;
    let bytes = state
        .store
        .plugin_bytes(tenant, id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found(format!("plugin {id}")))?;
    let mut r = Response::new(bytes.into());
    let h = r.headers_mut();
    h.insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/wasm"),
    );
    if let Ok(v) = warp::http::HeaderValue::from_str(&format!("\"{}\"", p.sha256)) {
        h.insert("etag", v);
    }
    Ok(r)
}

/// A captured plugin log line.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// Pipeline id.
    pub pipeline_id: i64,
    /// Stage.
    pub stage: String,
    /// `serving`, `canary` or `shadow`.
    pub role: String,
    /// Version id.
    pub version: String,
    /// UTC ms.
    pub at_ms: i64,
    /// Level.
    pub level: String,
    /// Text.
    pub message: String,
}

/// The log lines a plugin wrote (stdout, stderr and the `log` import) in the caller's
/// running pipelines, the newest 500 per stage version.
#[utoipa::path(get, path = "/v1/plugins/{id}/logs", tag = "plugins", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Plugin id", example = 1)),
    responses((status = 200, description = "Log lines, oldest first per stage", body = [LogEntry]),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such plugin", body = ErrorBody)))]
pub async fn plugin_logs(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own_plugin(&state, tenant, id).await?;
    let mut out = Vec::new();
    for r in state
        .manager
        .all()
        .into_iter()
        .filter(|r| r.tenant == tenant)
    {
        let plugins: std::collections::HashMap<_, _> = r
            .metrics
            .snapshot()
            .into_iter()
            .map(|(k, s)| (k, s.plugin))
            .collect();
        for (k, lines) in r.metrics.logs() {
            if plugins.get(&k).is_none_or(|sha| *sha != p.sha256) {
                continue;
            }
            out.extend(lines.into_iter().map(|l| LogEntry {
                pipeline_id: r.pipeline_id,
                stage: k.stage.clone(),
                role: k.role.as_str().to_owned(),
                version: k.version.clone(),
                at_ms: l.at_ms,
                level: l.level.to_owned(),
                message: l.message,
            }));
        }
    }
    Ok(json(StatusCode::OK, &out))
}

/// Deletes a plugin, unless a pipeline of the tenant serves it (409).
#[utoipa::path(delete, path = "/v1/plugins/{id}", tag = "plugins", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Plugin id", example = 1)),
    responses((status = 204, description = "Deleted"),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such plugin", body = ErrorBody),
              (status = 409, description = "Deployed in a pipeline", body = ErrorBody)))]
pub async fn delete_plugin(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    let (tenant, _) = tenant(&state, authz).await?;
    let p = own_plugin(&state, tenant, id).await?;
    for r in state
        .manager
        .all()
        .into_iter()
        .filter(|r| r.tenant == tenant && r.is_alive())
    {
        if r.serving_plugins().contains(&p.sha256) {
            return Err(ApiError::conflict(format!(
                "{}@{} is deployed in running pipeline {}",
                p.name, p.version, r.pipeline_id
            ))
            .into());
        }
    }
    for pl in state
        .store
        .pipelines(tenant)
        .await
        .map_err(ApiError::from)?
    {
        let Ok(spec) =
            super::manager::parse_spec(&pl.spec, &weir_stream::spec::SpecBounds::unlimited())
        else {
            continue;
        };
        if let Ok(list) = state.manager.effective_plugins(tenant, &pl, &spec).await
            && list.iter().any(|(_, x)| x.id == p.id)
        {
            return Err(ApiError::conflict(format!(
                "{}@{} is deployed in pipeline {} ({})",
                p.name, p.version, pl.id, pl.name
            ))
            .into());
        }
    }
    state
        .store
        .delete_plugin(tenant, id)
        .await
        .map_err(ApiError::from)?;
    state.manager.release_compiled(&p.sha256).await;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_semver_like() {
        for ok in ["0.1.0", "1.2.3", "10.0.0-rc.1", "2.0.0-beta-2"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in [
            "1",
            "1.2",
            "01.2.3",
            "1.2.3-",
            "1.2.3-a..b",
            "v1.2.3",
            "1.2.3.4",
            "",
        ] {
            assert!(!valid_version(bad), "{bad}");
        }
        assert!(valid_tenant("acme-2"));
        assert!(!valid_tenant("Acme") && !valid_tenant("2acme") && !valid_tenant(""));
    }
}
