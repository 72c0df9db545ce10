//! `/v1/tenants/{id}/limits`: a tenant's sandbox ceiling. The admin reads and sets it; a
//! tenant reads its own (another tenant's id is 404, like a missing one).

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::handlers::{caller, json, parse};
use super::manager::tenant_overrides;
use super::{AppState, Reply, ceilings};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
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
    /// What the admin set for this tenant (`{}`: the server's defaults).
    #[schema(value_type = Object)]
    pub overrides: Value,
    /// The server's default ceiling.
    #[schema(value_type = Object)]
    pub defaults: Value,
}

/// What `PUT` sets: overrides of the server's default ceiling, field by field
/// (`{"sandbox": {"limits": {"memory_bytes": 1073741824}, "grants": {"clocks": true}}}`).
/// `{}` goes back to the defaults.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimits {
    /// Partial `{"limits": {..}, "grants": {..}}`.
    #[schema(value_type = Object)]
    pub sandbox: Option<Value>,
}

async fn show(state: &AppState, id: i64) -> Result<TenantLimits, ApiError> {
    let rec = state
        .store
        .tenant(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {id}")))?;
    let overrides = tenant_overrides(&rec)?;
    let defaults = state.manager.default_ceiling();
    let sandbox = state.manager.ceiling(id).await?;
    Ok(TenantLimits {
        tenant_id: id,
        sandbox: serde_json::to_value(sandbox).map_err(ApiError::internal)?,
        overrides,
        defaults: serde_json::to_value(defaults).map_err(ApiError::internal)?,
    })
}

/// A tenant's sandbox ceiling (the admin key, or the tenant's own).
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

/// Sets a tenant's sandbox ceiling (admin key only). Applies to specs created, pipelines
/// started and plugins deployed from now on; running stages keep their sandbox until then.
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
    let stored = match req.sandbox {
        None => None,
        Some(sandbox) => {
            ceilings::effective(state.manager.default_ceiling(), Some(&sandbox))
                .map_err(ApiError::bad_request)?;
            Some(json!({ "sandbox": sandbox }).to_string())
        }
    };
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
