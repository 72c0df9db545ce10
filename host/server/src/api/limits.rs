//! `/v1/tenants/{id}/limits`: a tenant's sandbox ceiling and quotas, with its use of them.
//! The admin reads and sets them; a tenant reads its own (another tenant's id is 404, like
//! a missing one).

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::handlers::{caller, json, parse};
use super::manager::tenant_overrides;
use super::quotas::Quotas;
use super::{AppState, Reply, ceilings};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use utoipa::ToSchema;
use warp::http::StatusCode;

/// A tenant's limits.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantLimits {
    /// The tenant.
    pub tenant_id: i64,
    /// The sandbox ceiling in force: `{"limits": {"memory_bytes": .., "fuel_per_call": ..,
    /// "deadline_ms": .., ..}, "grants": {"clocks": ..}}`. A spec's stage asking for more is
    /// 422 `over_ceiling`.
    #[schema(value_type = Object)]
    pub sandbox: Value,
    /// The quotas in force (reaching one is 403 `quota_exceeded`).
    pub quotas: Quotas,
    /// What the tenant uses of them now.
    pub usage: Quotas,
    /// What the admin set for this tenant (`{}`: the server's defaults).
    #[schema(value_type = Object)]
    pub overrides: Value,
    /// The server's default ceiling.
    #[schema(value_type = Object)]
    pub defaults: Value,
    /// The server's default quotas.
    pub default_quotas: Quotas,
}

/// What `PUT` sets: overrides of the server's default ceiling and quotas, field by field
/// (`{"sandbox": {"limits": {"memory_bytes": 1073741824}, "grants": {"clocks": true}},
/// "quotas": {"pipelines": 50}}`). A `PUT` replaces the tenant's overrides: what it leaves
/// out is the server's default again (`{}`: every default). `weir tenant limits` keeps the
/// part it is not given.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimits {
    /// Partial `{"limits": {..}, "grants": {..}}`.
    #[schema(value_type = Object)]
    pub sandbox: Option<Value>,
    /// Partial quotas: `pipelines`, `running_pipelines`, `plugins`, `plugin_bytes`.
    #[schema(value_type = Object)]
    pub quotas: Option<Value>,
}

async fn show(state: &AppState, id: i64) -> Result<TenantLimits, ApiError> {
    let rec = state
        .store
        .tenant(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {id}")))?;
    let manager = &state.manager;
    let sandbox = manager.ceiling_of(&rec)?;
    Ok(TenantLimits {
        tenant_id: id,
        sandbox: serde_json::to_value(sandbox).map_err(ApiError::internal)?,
        quotas: manager.quotas_of(&rec)?,
        usage: manager.usage(id).await?,
        overrides: tenant_overrides(&rec)?,
        defaults: serde_json::to_value(manager.default_ceiling()).map_err(ApiError::internal)?,
        default_quotas: *manager.default_quotas(),
    })
}

/// A tenant's sandbox ceiling and quotas, with its use of them (the admin key, or the
/// tenant's own).
#[utoipa::path(get, path = "/v1/tenants/{id}/limits", tag = "tenants", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Tenant id", example = 1)),
    responses((status = 200, description = "The tenant's limits", body = TenantLimits),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 404, description = "No such tenant", body = ErrorBody)))]
pub async fn get(id: i64, authz: Option<String>, state: Arc<AppState>) -> Reply {
    match caller(&state, authz).await? {
        Caller::Admin => {}
        Caller::Tenant { id: own, .. } if own == id => {}
        Caller::Tenant { .. } => return Err(ApiError::not_found(format!("tenant {id}")).into()),
    }
    if id == weir_store::ADMIN_TENANT {
        return Err(ApiError::not_found(format!("tenant {id}")).into());
    }
    Ok(json(StatusCode::OK, &show(&state, id).await?))
}

/// Sets a tenant's sandbox ceiling and quotas (admin key only). The ceiling applies to
/// specs created, pipelines started and plugins deployed from now on (running stages keep
/// their sandbox until then); the quotas to what is made or started from now on (nothing
/// is stopped or deleted for being over a lowered quota).
#[utoipa::path(put, path = "/v1/tenants/{id}/limits", tag = "tenants", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Tenant id", example = 1)),
    request_body = SetLimits,
    responses((status = 200, description = "The tenant's limits now", body = TenantLimits),
              (status = 400, description = "Bad request: unknown field, or not a number", body = ErrorBody),
              (status = 401, description = "No valid key", body = ErrorBody),
              (status = 403, description = "Not the admin key", body = ErrorBody),
              (status = 404, description = "No such tenant", body = ErrorBody)))]
pub async fn set(
    id: i64,
    authz: Option<String>,
    body: bytes::Bytes,
    state: Arc<AppState>,
) -> Reply {
    match caller(&state, authz).await? {
        Caller::Admin => {}
        Caller::Tenant { .. } => return Err(ApiError::admin_only().into()),
    }
    let req: SetLimits = parse(&body)?;
    let mut stored = serde_json::Map::new();
    if let Some(sandbox) = req.sandbox {
        ceilings::effective(state.manager.default_ceiling(), Some(&sandbox))
            .map_err(ApiError::bad_request)?;
        stored.insert("sandbox".into(), sandbox);
    }
    if let Some(quotas) = req.quotas {
        ceilings::overlay(state.manager.default_quotas(), Some(&quotas))
            .map_err(|e| ApiError::bad_request(format!("quotas: {e}")))?;
        stored.insert("quotas".into(), quotas);
    }
    let stored = (!stored.is_empty()).then(|| Value::Object(stored).to_string());
    let found = id != weir_store::ADMIN_TENANT
        && state
            .store
            .set_tenant_limits(id, stored)
            .await
            .map_err(ApiError::from)?;
    if !found {
        return Err(ApiError::not_found(format!("tenant {id}")).into());
    }
    Ok(json(StatusCode::OK, &show(&state, id).await?))
}
